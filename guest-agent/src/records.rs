//! What a container leaves behind, written the same way by the node's supervisor on the host and
//! by the agent in a microVM: its log as CRI lines (rotated as kubelet does) and its exit record,
//! written once, atomically, when its init process has exited (or could not be started).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

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

/// A container's log file, rotated as kubelet rotates it (`containerLogMaxSize`,
/// `containerLogMaxFiles`): past [`LOG_MAX_BYTES`] the file becomes `log.1` (older ones move up,
/// the oldest goes) and a new one starts, so a pod that prints without end fills neither the
/// node's disk nor, through `kubectl logs`, its memory.
pub struct LogFile {
    path: std::path::PathBuf,
    file: File,
    size: u64,
}

impl LogFile {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
        })
    }

    pub fn write(&mut self, bytes: &[u8]) {
        if self.size > 0 && self.size + bytes.len() as u64 > LOG_MAX_BYTES {
            if let Err(e) = self.rotate() {
                eprintln!("rotating the log {}: {e}", self.path.display());
            }
        }
        if (&self.file).write_all(bytes).is_ok() {
            self.size += bytes.len() as u64;
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let nth = |n: u32| rotated_log(&self.path, n);
        let _ = std::fs::remove_file(nth(LOG_MAX_FILES - 1));
        for n in (1..LOG_MAX_FILES - 1).rev() {
            let _ = std::fs::rename(nth(n), nth(n + 1));
        }
        std::fs::rename(&self.path, nth(1))?;
        *self = Self::open(&self.path)?;
        Ok(())
    }
}

/// Lines longer than this are written in parts (`P`), as CRI runtimes cut them.
pub const MAX_LINE: usize = 16 * 1024;

/// One output stream of a container (`stdout` or `stderr`) cut into CRI lines: complete lines
/// as they end, overlong ones in [`MAX_LINE`] parts, the rest kept until more arrives.
pub struct CriLines {
    stream: &'static str,
    pending: Vec<u8>,
}

impl CriLines {
    pub fn new(stream: &'static str) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Append what was read; returns the log bytes of every line it completes.
    pub fn take(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        let ts = now_rfc3339();
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|b| *b == b'\n') {
            out.extend(cri_line(&ts, self.stream, true, &self.pending[start..start + pos]));
            start += pos + 1;
        }
        while self.pending.len() - start >= MAX_LINE {
            out.extend(cri_line(
                &ts,
                self.stream,
                false,
                &self.pending[start..start + MAX_LINE],
            ));
            start += MAX_LINE;
        }
        self.pending.drain(..start);
        if self.pending.capacity() > MAX_LINE * 2 {
            self.pending.shrink_to(MAX_LINE);
        }
        out
    }

    /// At the end of the stream: the last line, if it had no newline.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let out = cri_line(&now_rfc3339(), self.stream, true, &self.pending);
        self.pending.clear();
        out
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}
