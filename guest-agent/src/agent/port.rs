//! The node's connection over the virtio-serial port. QEMU holds the host end as a Unix socket;
//! the guest sees the node connect and hang up. Each time the node connects, the agent gets a
//! fresh byte stream (one HTTP/2 connection); when it hangs up (a node restarting), reads return
//! end-of-file and the stream ends, so the next connection starts clean.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// The character device of the virtio-serial port named `name`, once the driver has it.
pub fn find(name: &str, wait: Duration) -> Result<PathBuf, String> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let named = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if named.trim() == name {
                    return Ok(Path::new("/dev").join(e.file_name()));
                }
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("no virtio-serial port named {name:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every connection of the node, as a stream for the gRPC server.
pub fn sessions(path: &Path, rt: Handle) -> Result<mpsc::Receiver<std::io::Result<DuplexStream>>, String> {
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (tx, rx) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("port".into())
        .spawn(move || pump(port, rt, tx))
        .map_err(|e| e.to_string())?;
    Ok(rx)
}

fn pump(mut port: File, rt: Handle, incoming: mpsc::Sender<std::io::Result<DuplexStream>>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut session: Option<tokio::io::WriteHalf<DuplexStream>> = None;
    loop {
        let n = match port.read(&mut buf) {
            Ok(n) => n,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if n == 0 {
            // No node on the other end: end the stream of the one that left, wait for the next.
            session = None;
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if session.is_none() {
            let (agent_side, bridge) = tokio::io::duplex(256 * 1024);
            let (mut from_agent, to_agent) = tokio::io::split(bridge);
            if rt.block_on(incoming.send(Ok(agent_side))).is_err() {
                return;
            }
            let Ok(mut out) = port.try_clone() else { return };
            let rt2 = rt.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match rt2.block_on(from_agent.read(&mut buf)) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if out.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            session = Some(to_agent);
        }
        if let Some(s) = session.as_mut()
            && rt.block_on(s.write_all(&buf[..n])).is_err()
        {
            session = None;
        }
    }
}
