//! What the node and its supervisor (`nodeless-shim keep`) say to each other about containers:
//! the request that starts one, and the exit record the supervisor leaves behind, written once,
//! atomically, when the container's init process has exited (or could not be started).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use nodeless_guest_agent::records::{
    ExitRecord, LOG_MAX_BYTES, LOG_MAX_FILES, LogLine, START_FAILED_EXIT_CODE, cri_line, now_rfc3339, parse_cri_line,
    rotated_log,
};

/// `run <this as JSON>` on a connection to the supervisor: run the container with `<runtime> run
/// --detach`, become its parent, copy its stdout and stderr into `log` as CRI lines and write
/// `exit` when it ends. The supervisor answers `started <pid>` once it runs and `exited` once the
/// exit record is written, or `failed <why>` (with the exit record written) if it never ran.
///
/// The request names no program: the supervisor runs the runtime it was started with
/// ([`RuntimeIdentity`]), so whoever reaches its socket cannot have it exec something else as
/// root. Unknown fields (an older node's `runtime`) are refused, not ignored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
    pub exit: PathBuf,
    /// The container reads a stdin the supervisor holds open (`stdin: true` in the pod), which
    /// `attach` writes to. Left out when false, so a plain request reads as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// The container's process has a terminal (`tty: true`): the runtime hands its master to the
    /// supervisor (`--console-socket`), which logs what it prints and lets `attach` type into it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
}

/// `attach <id>` on a connection to the supervisor: answered `ok`, after which the connection
/// carries frames both ways until the container's output ends or either side hangs up; or
/// `failed <why>`. A frame is its kind, the length of its data (u32, big-endian) and the data.
pub mod attach {
    use std::io::Read;

    /// To the supervisor: bytes for the container's stdin.
    pub const STDIN: u8 = 0;
    /// From the supervisor: what the container printed on stdout (or its terminal) and stderr.
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// To the supervisor: close the container's stdin (end of input; `stdinOnce`).
    pub const CLOSE_STDIN: u8 = 3;
    /// To the supervisor: the terminal's new size, width then height, u16 big-endian each.
    pub const RESIZE: u8 = 4;
    /// From the node's exec proxy for microVM pods (`nodeless-shim vm-exec`): the process's
    /// exit code, i32 big-endian; the last frame.
    pub const EXIT: u8 = 5;
    /// A frame's data is never longer (a peer sending more is hung up on).
    pub const MAX_FRAME: usize = 1 << 20;

    pub fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + data.len());
        out.push(kind);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    /// The 5-byte header's kind and length, if the length is allowed.
    pub fn header(h: [u8; 5]) -> std::io::Result<(u8, usize)> {
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("an attach frame of {len} bytes (at most {MAX_FRAME})"),
            ));
        }
        Ok((h[0], len))
    }

    /// The next frame, or `None` at the end of the stream.
    pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        let mut h = [0u8; 5];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let (kind, len) = header(h)?;
        let mut data = vec![0u8; len];
        r.read_exact(&mut data)?;
        Ok(Some((kind, data)))
    }

    /// A resize frame's data.
    pub fn size(width: u16, height: u16) -> [u8; 4] {
        let (w, h) = (width.to_be_bytes(), height.to_be_bytes());
        [w[0], w[1], h[0], h[1]]
    }

    /// Width and height from a resize frame's data.
    pub fn parse_size(data: &[u8]) -> Option<(u16, u16)> {
        match data {
            [a, b, c, d] => Some((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
            _ => None,
        }
    }
}

/// The OCI runtime a supervisor runs every container with and its state directory (`--root`),
/// fixed by its command line (`nodeless-shim keep --socket S --runtime R --root D`). `runtime`
/// on a connection is answered `ok <this as JSON>`: a node finding a supervisor left by an
/// earlier start checks that it runs the runtime the node was configured with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeIdentity {
    pub runtime: PathBuf,
    pub root: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_frames_round_trip_and_an_oversized_one_is_refused() {
        let mut bytes = attach::frame(attach::STDIN, b"ls\n");
        bytes.extend(attach::frame(attach::RESIZE, &attach::size(80, 24)));
        let mut r = &bytes[..];
        assert_eq!(
            attach::read_frame(&mut r).unwrap(),
            Some((attach::STDIN, b"ls\n".to_vec()))
        );
        let (kind, data) = attach::read_frame(&mut r).unwrap().unwrap();
        assert_eq!((kind, attach::parse_size(&data)), (attach::RESIZE, Some((80, 24))));
        assert_eq!(attach::read_frame(&mut r).unwrap(), None);
        let mut big = vec![attach::STDIN];
        big.extend(((attach::MAX_FRAME + 1) as u32).to_be_bytes());
        assert!(attach::read_frame(&mut &big[..]).is_err());
    }

    #[test]
    fn a_plain_run_request_reads_as_before_and_stdin_and_tty_round_trip() {
        let plain = RunRequest {
            id: "a".into(),
            bundle: "/b".into(),
            log: "/l".into(),
            exit: "/e".into(),
            stdin: false,
            tty: false,
        };
        let text = serde_json::to_string(&plain).unwrap();
        assert!(!text.contains("stdin") && !text.contains("tty"), "{text}");
        let both = RunRequest {
            stdin: true,
            tty: true,
            ..plain
        };
        let back: RunRequest = serde_json::from_str(&serde_json::to_string(&both).unwrap()).unwrap();
        assert_eq!(back, both);
    }

    #[test]
    fn cri_lines_round_trip() {
        let l = cri_line("2026-01-01T00:00:00.000000001Z", "stderr", true, b"hello world");
        let s = String::from_utf8(l).unwrap();
        let p = parse_cri_line(s.trim_end_matches('\n')).unwrap();
        assert_eq!(
            p,
            LogLine {
                timestamp: "2026-01-01T00:00:00.000000001Z",
                stream: "stderr",
                full: true,
                text: "hello world"
            }
        );
        let partial = String::from_utf8(cri_line("t", "stdout", false, b"")).unwrap();
        assert!(!parse_cri_line(partial.trim_end()).unwrap().full);
    }

    #[test]
    fn a_run_request_cannot_name_a_program() {
        let ok = r#"{"id":"c","bundle":"/b","log":"/l","exit":"/e"}"#;
        assert_eq!(serde_json::from_str::<RunRequest>(ok).unwrap().id, "c");
        for extra in [r#""runtime":"/bin/sh""#, r#""root":"/tmp""#] {
            let bad = format!(r#"{{"id":"c","bundle":"/b","log":"/l","exit":"/e",{extra}}}"#);
            assert!(serde_json::from_str::<RunRequest>(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_records_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("exit");
        let r = ExitRecord {
            exit_code: 1,
            signal: None,
            reason: "Error".into(),
            message: String::new(),
            finished_at: now_rfc3339(),
        };
        r.write(&p).unwrap();
        assert_eq!(ExitRecord::read(&p), Some(r));
        assert!(!dir.path().join("exit.tmp").exists());
    }
}
