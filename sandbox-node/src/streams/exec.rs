//! `kubectl exec`: run a command in a running container through the OCI runtime, wired to the
//! session's channels; with a TTY, through a pseudo-terminal that follows resize messages.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ERROR, Input, Output, RESIZE, STDERR, STDIN, STDOUT};
use crate::runtime::{ContainerRef, Runtime};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    pub fn from_query(pairs: &[(String, String)]) -> Self {
        let flag = |k: &str| pairs.iter().any(|(n, v)| n == k && (v == "1" || v == "true"));
        ExecOptions {
            command: pairs
                .iter()
                .filter(|(n, _)| n == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        }
    }

    /// The channels the client opens for these options.
    pub fn channels(&self) -> Vec<u8> {
        let mut c = vec![ERROR];
        if self.stdin {
            c.push(STDIN);
        }
        if self.stdout {
            c.push(STDOUT);
        }
        if self.stderr && !self.tty {
            c.push(STDERR);
        }
        if self.tty {
            c.push(RESIZE);
        }
        c
    }
}

/// The `Status` the error channel carries when the command ends.
pub fn exit_status(code: Option<i32>, failure: Option<String>) -> serde_json::Value {
    match (code, failure) {
        (_, Some(message)) => {
            json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
        }
        (Some(0), None) => json!({"metadata": {}, "status": "Success"}),
        (code, None) => {
            let c = code.unwrap_or(137);
            json!({"metadata": {}, "status": "Failure", "message": format!("command terminated with non-zero exit code: exit status {c}"),
                "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]}})
        }
    }
}

async fn pump(mut from: impl tokio::io::AsyncRead + Unpin, out: Output, channel: u8) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.write(channel, &buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

pub async fn run(runtime: Arc<dyn Runtime>, c: ContainerRef, o: ExecOptions, out: Output, input: Input) {
    let result = if o.tty {
        with_tty(runtime, &c, &o, out.clone(), input).await
    } else {
        plain(runtime, &c, &o, out.clone(), input).await
    };
    let status = match result {
        Ok(code) => exit_status(code, None),
        Err(e) => exit_status(None, Some(e)),
    };
    let _ = out.write(ERROR, status.to_string().as_bytes()).await;
    out.finish().await;
}

async fn plain(
    runtime: Arc<dyn Runtime>,
    c: &ContainerRef,
    o: &ExecOptions,
    out: Output,
    mut input: Input,
) -> Result<Option<i32>, String> {
    let mut cmd = runtime.exec(c, &o.command, false).map_err(|e| e.to_string())?;
    cmd.stdin(if o.stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("starting the command: {e}"))?;
    let mut stdin = child.stdin.take();
    let outs = [
        tokio::spawn(pump(child.stdout.take().ok_or("no stdout")?, out.clone(), STDOUT)),
        tokio::spawn(pump(
            child.stderr.take().ok_or("no stderr")?,
            out.clone(),
            if o.stderr { STDERR } else { STDOUT },
        )),
    ];
    let feeder = tokio::spawn(async move {
        while let Some((ch, data)) = input.recv().await {
            if ch != STDIN {
                continue;
            }
            let Some(d) = data else {
                stdin = None;
                continue;
            };
            let failed = match stdin.as_mut() {
                Some(s) => s.write_all(&d).await.is_err(),
                None => false,
            };
            if failed {
                stdin = None;
            }
        }
    });
    let status = child.wait().await.map_err(|e| e.to_string())?;
    for t in outs {
        let _ = t.await;
    }
    feeder.abort();
    Ok(status.code())
}

fn resize(master: &OwnedFd, pid: Option<u32>, msg: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(msg).unwrap_or_default();
    let (w, h) = (
        v["Width"].as_u64().unwrap_or(0) as u16,
        v["Height"].as_u64().unwrap_or(0) as u16,
    );
    if w == 0 || h == 0 {
        return;
    }
    let size = rustix::termios::Winsize {
        ws_row: h,
        ws_col: w,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    if rustix::termios::tcsetwinsize(master, size).is_ok() {
        // The runtime passes its terminal's size on to the container's on SIGWINCH.
        if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::WINCH);
        }
    }
}

/// How long a TTY exec waits for the client's terminal size before it starts the command.
const FIRST_SIZE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn with_tty(
    runtime: Arc<dyn Runtime>,
    c: &ContainerRef,
    o: &ExecOptions,
    out: Output,
    mut input: Input,
) -> Result<Option<i32>, String> {
    let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
    // Clients send the terminal's size first: size the terminal before the command starts, so
    // it never sees a resize race at its start. Anything else that came early is replayed.
    // Under load the size came later than 500 ms, and a command that read it at once found
    // 0x0 (busybox `stty size` then fails with a stale errno, "No child processes"): so wait
    // up to 2 s for it; a client that sends none starts that much later, and resizes still
    // apply while the command runs.
    let mut early = Vec::new();
    let deadline = tokio::time::Instant::now() + FIRST_SIZE_WAIT;
    while let Ok(Some((ch, data))) = tokio::time::timeout_at(deadline, input.recv()).await {
        if ch == RESIZE {
            if let Some(d) = data {
                resize(&pty.master, None, &d);
            }
            break;
        }
        early.push((ch, data));
    }
    let slave = pty.slave;
    let mut cmd = runtime.exec(c, &o.command, true).map_err(|e| e.to_string())?;
    let fd = |f: &OwnedFd| f.try_clone().map(Stdio::from).map_err(|e| e.to_string());
    cmd.stdin(fd(&slave)?).stdout(fd(&slave)?).stderr(fd(&slave)?);
    let mut child = cmd.spawn().map_err(|e| format!("starting the command: {e}"))?;
    drop(slave);
    let pid = child.id();
    let master = Arc::new(pty.master);
    let reader = {
        let master = master.try_clone().map_err(|e| e.to_string())?;
        let out = out.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::from(master);
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if handle.block_on(out.write(STDOUT, &buf[..n])).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let writer_fd = master.try_clone().map_err(|e| e.to_string())?;
    let master_for_resize = master.clone();
    let feeder = tokio::spawn(async move {
        let mut w = std::fs::File::from(writer_fd);
        for (ch, data) in early {
            if let (STDIN, Some(d)) = (ch, data) {
                let _ = w.write_all(&d);
            }
        }
        while let Some((ch, data)) = input.recv().await {
            match (ch, data) {
                (STDIN, Some(d)) => {
                    let _ = w.write_all(&d);
                }
                (RESIZE, Some(d)) => resize(&master_for_resize, pid, &d),
                _ => {}
            }
        }
    });
    let status = child.wait().await.map_err(|e| e.to_string())?;
    drop(master);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), reader).await;
    feeder.abort();
    Ok(status.code())
}
