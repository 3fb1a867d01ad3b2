//! `kubectl attach` (and `kubectl run -it`, `kubectl debug -it`): the session's channels joined
//! to a running container's stdin and output, which the node's supervisor holds (see
//! [`crate::shim_proto::attach`]). The session ends when the container's output does (it ended)
//! or when the client goes; a container with `stdinOnce` has its stdin closed when the first
//! session with stdin ends, as kubelet does.

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::exec::{ExecOptions, exit_status};
use super::{ERROR, Input, Output, RESIZE, STDERR, STDIN, STDOUT};
use crate::shim_proto::attach as frames;

/// What the container itself offers: a stdin to write to, whether it closes after the first
/// session, and a terminal.
#[derive(Clone, Copy, Debug, Default)]
pub struct Offered {
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

/// Why a session cannot attach as asked, in kubectl's words.
pub fn refusal(container: &str, o: &ExecOptions, offered: Offered) -> Option<String> {
    if o.tty && !offered.tty {
        return Some(format!(
            "container {container} did not allocate a TTY; attach without -t"
        ));
    }
    if o.stdin && !offered.stdin {
        return Some(format!(
            "container {container} does not read stdin (its spec has no stdin: true); attach without -i"
        ));
    }
    if !(o.stdin || o.stdout || o.stderr) {
        return Some("you must specify at least one of stdin, stdout or stderr".into());
    }
    None
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 5];
    r.read_exact(&mut h).await.ok()?;
    let (kind, len) = frames::header(h).ok()?;
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await.ok()?;
    Some((kind, data))
}

pub async fn run(conn: BufReader<UnixStream>, o: ExecOptions, offered: Offered, out: Output, mut input: Input) {
    let (mut from, mut to) = tokio::io::split(conn);
    let printer = {
        let out = out.clone();
        let o = o.clone();
        async move {
            while let Some((kind, data)) = read_frame(&mut from).await {
                let channel = match kind {
                    frames::STDOUT if o.stdout => STDOUT,
                    // With a terminal there is one stream; without stderr asked for, none.
                    frames::STDERR if o.stderr && !o.tty => STDERR,
                    _ => continue,
                };
                if out.write(channel, &data).await.is_err() {
                    return;
                }
            }
        }
    };
    let typist = async move {
        while let Some((channel, data)) = input.recv().await {
            let frame = match (channel, data) {
                (STDIN, Some(d)) if o.stdin => frames::frame(frames::STDIN, &d),
                (STDIN, None) if o.stdin && offered.stdin_once => frames::frame(frames::CLOSE_STDIN, &[]),
                (RESIZE, Some(d)) => {
                    let v: serde_json::Value = serde_json::from_slice(&d).unwrap_or_default();
                    let (w, h) = (v["Width"].as_u64().unwrap_or(0), v["Height"].as_u64().unwrap_or(0));
                    frames::frame(frames::RESIZE, &frames::size(w as u16, h as u16))
                }
                _ => continue,
            };
            if to.write_all(&frame).await.is_err() {
                return;
            }
        }
        // The client went: a stdinOnce container reads no more.
        if o.stdin && offered.stdin_once {
            let _ = to.write_all(&frames::frame(frames::CLOSE_STDIN, &[])).await;
        }
    };
    let ended = tokio::select! {
        _ = printer => true,
        _ = typist => false,
    };
    if ended {
        // The container's output ended with it.
        let _ = out
            .write(ERROR, exit_status(Some(0), None).to_string().as_bytes())
            .await;
    }
    out.finish().await;
}
