//! What the node and its supervisor (`nodeless-shim keep`) say to each other about containers:
//! the request that starts one, and the exit record the supervisor leaves behind, written once,
//! atomically, when the container's init process has exited (or could not be started).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A container's log is rotated past this size (kubelet's `containerLogMaxSize` default).
pub const LOG_MAX_BYTES: u64 = 10 << 20;
/// How many files of a container's log are kept, the current one included (kubelet's
/// `containerLogMaxFiles` default).
pub const LOG_MAX_FILES: u32 = 5;

/// The `n`th older file of the log at `path` (`log.1` is the newest of them).
pub fn rotated_log(path: &std::path::Path, n: u32) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{n}"));
    path.with_file_name(name)
}

/// The exit code kubelet reports for a container that never started (the runtime failed).
pub const START_FAILED_EXIT_CODE: i32 = 128;

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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub exit_code: i32,
    /// The signal that ended the process, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// `Completed`, `Error` or `StartError`, as kubelet names them.
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// RFC 3339 with nanoseconds.
    pub finished_at: String,
}

impl ExitRecord {
    pub fn read(path: &Path) -> Option<ExitRecord> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Write through a temporary file and a rename, so a reader sees all of it or none.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(tmp, path)
    }
}

/// One line of the CRI log format that kubelet and `kubectl logs` use:
/// `<RFC 3339 nano timestamp> <stream> <F|P> <text>`; `P` marks a line split for length.
pub fn cri_line(timestamp: &str, stream: &str, full: bool, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 48);
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// A parsed CRI log line.
#[derive(Debug, PartialEq, Eq)]
pub struct LogLine<'a> {
    pub timestamp: &'a str,
    pub stream: &'a str,
    pub full: bool,
    pub text: &'a str,
}

pub fn parse_cri_line(line: &str) -> Option<LogLine<'_>> {
    let mut parts = line.splitn(4, ' ');
    let timestamp = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or("");
    Some(LogLine {
        timestamp,
        stream,
        full: tag != "P",
        text,
    })
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use super::*;

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
