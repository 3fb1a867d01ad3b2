//! `nodeless-shim vm-exec --socket <vm dir>/exec.sock --id <container> [--tty] -- <args...>`:
//! a process in a microVM pod's container, for the node's exec probes, hooks and `kubectl
//! exec`. It speaks to the node's exec proxy (a header line, then attach frames) and behaves
//! as `runc exec` would for its caller: the process's output on its stdout and stderr, its
//! stdin forwarded, its exit code as its own. On a terminal it goes raw (the guest's terminal
//! does the line discipline) and passes size changes on.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use nodeless_sandbox_node::shim_proto::attach;
use nodeless_sandbox_node::vm::runtime::ExecHeader;

fn size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    (ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

pub fn run(socket: &std::path::Path, id: &str, tty: bool, args: Vec<String>) -> ExitCode {
    let mut conn = match UnixStream::connect(socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nodeless-shim vm-exec: {}: {e}", socket.display());
            return ExitCode::from(126);
        }
    };
    let (cols, rows) = if tty { size().unwrap_or((80, 24)) } else { (0, 0) };
    let header = ExecHeader {
        id: id.to_string(),
        args,
        tty,
        stdin: true,
        cols,
        rows,
    };
    let mut line = serde_json::to_vec(&header).unwrap_or_default();
    line.push(b'\n');
    if conn.write_all(&line).is_err() {
        return ExitCode::from(126);
    }
    let saved = if tty {
        rustix::termios::tcgetattr(std::io::stdin()).ok().inspect(|t| {
            let mut raw = t.clone();
            raw.make_raw();
            let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, &raw);
        })
    } else {
        None
    };
    let Ok(mut up) = conn.try_clone() else {
        return ExitCode::from(126);
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = up.write_all(&attach::frame(attach::CLOSE_STDIN, b""));
                    return;
                }
                Ok(n) => {
                    if up.write_all(&attach::frame(attach::STDIN, &buf[..n])).is_err() {
                        return;
                    }
                }
            }
        }
    });
    if tty && let Ok(mut resizes) = conn.try_clone() {
        std::thread::spawn(move || {
            let mut last = size();
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let now = size();
                if now != last {
                    if let Some((w, h)) = now
                        && resizes
                            .write_all(&attach::frame(attach::RESIZE, &attach::size(w, h)))
                            .is_err()
                    {
                        return;
                    }
                    last = now;
                }
            }
        });
    }
    let mut code = 255;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Ok(Some((kind, data))) = attach::read_frame(&mut conn) {
        match kind {
            attach::STDOUT => {
                let _ = out.write_all(&data).and_then(|()| out.flush());
            }
            attach::STDERR => {
                let _ = err.write_all(&data).and_then(|()| err.flush());
            }
            attach::EXIT => {
                code = data
                    .get(..4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(255);
                break;
            }
            _ => {}
        }
    }
    if let Some(t) = saved {
        let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, &t);
    }
    ExitCode::from(code.clamp(0, 255) as u8)
}
