//! What `kubectl attach` reaches of a running container: its stdin (a pipe the supervisor holds
//! open, or the terminal) and its output, which the log copier hands to every attached client
//! besides writing it to the log. A container with `tty: true` gets its terminal from the
//! runtime over a console socket (`--console-socket`); the supervisor keeps the master.

use std::fs::File;
use std::io::{BufReader, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::Duration;

use nodeless_sandbox_node::shim_proto::attach::{self, CLOSE_STDIN, RESIZE, STDIN};

/// Chunks of output queued for one attached client; a client this far behind misses output
/// (the log keeps all of it) rather than holding up every other container's logs.
const CLIENT_QUEUE: usize = 1024;

/// How long the supervisor waits for the runtime to hand over a container's terminal.
const CONSOLE_WAIT: Duration = Duration::from_secs(10);

type Client = (u64, mpsc::SyncSender<(u8, Vec<u8>)>);

pub struct Io {
    stdin: Mutex<Option<File>>,
    /// The terminal's master, for resizes.
    terminal: Option<OwnedFd>,
    clients: Mutex<Vec<Client>>,
    /// Output streams that have not reached their end.
    open: AtomicUsize,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Io {
    /// `stdin`: where attach's input goes (None: the container reads no stdin); `terminal`:
    /// the master of its terminal; `streams`: how many output streams feed `send`.
    pub fn new(stdin: Option<File>, terminal: Option<OwnedFd>, streams: usize) -> Self {
        Self {
            stdin: Mutex::new(stdin),
            terminal,
            clients: Mutex::default(),
            open: AtomicUsize::new(streams),
            next: AtomicU64::new(0),
        }
    }

    /// Output the container printed, to every attached client.
    pub fn send(&self, kind: u8, data: &[u8]) {
        let mut clients = lock(&self.clients);
        if clients.is_empty() {
            return;
        }
        clients.retain(|(_, tx)| {
            !matches!(
                tx.try_send((kind, data.to_vec())),
                Err(mpsc::TrySendError::Disconnected(_))
            )
        });
    }

    /// One output stream reached its end; after the last, every client is let go.
    pub fn stream_ended(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            lock(&self.clients).clear();
        }
    }

    fn resize(&self, data: &[u8]) {
        let (Some(master), Some((w, h))) = (&self.terminal, attach::parse_size(data)) else {
            return;
        };
        if w == 0 || h == 0 {
            return;
        }
        // The kernel signals the terminal's foreground process group (SIGWINCH) itself.
        let _ = rustix::termios::tcsetwinsize(
            master,
            rustix::termios::Winsize {
                ws_row: h,
                ws_col: w,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        );
    }

    /// Serve an attached client on `conn` (answered `ok` already) until the container's output
    /// ends or the client hangs up.
    pub fn serve(&self, conn: UnixStream) {
        let Ok(mut out) = conn.try_clone() else { return };
        let (tx, rx) = mpsc::sync_channel::<(u8, Vec<u8>)>(CLIENT_QUEUE);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if self.open.load(Ordering::Acquire) == 0 {
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        lock(&self.clients).push((id, tx));
        let writer = std::thread::Builder::new().name("attach-out".into()).spawn(move || {
            for (kind, data) in rx {
                if out.write_all(&attach::frame(kind, &data)).is_err() {
                    break;
                }
            }
            // The output ended or the client went: either way the connection is done.
            let _ = out.shutdown(Shutdown::Both);
        });
        if writer.is_err() {
            lock(&self.clients).retain(|(n, _)| *n != id);
            return;
        }
        let mut input = BufReader::new(conn);
        while let Ok(Some((kind, data))) = attach::read_frame(&mut input) {
            match kind {
                STDIN => {
                    let mut stdin = lock(&self.stdin);
                    if stdin.as_mut().is_some_and(|f| f.write_all(&data).is_err()) {
                        *stdin = None;
                    }
                }
                CLOSE_STDIN => {
                    // A terminal stays: end of input there is the client's Ctrl-D, typed.
                    if self.terminal.is_none() {
                        *lock(&self.stdin) = None;
                    }
                }
                RESIZE => self.resize(&data),
                _ => break,
            }
        }
        lock(&self.clients).retain(|(n, _)| *n != id);
        let _ = input.get_ref().shutdown(Shutdown::Both);
    }
}

/// The socket the runtime hands a container's terminal over (`--console-socket`).
pub struct ConsoleSocket {
    path: PathBuf,
    got: mpsc::Receiver<Result<OwnedFd, String>>,
}

impl ConsoleSocket {
    /// Listen at a fresh path; a thread takes the first connection of the supervisor's own uid
    /// and the descriptor it carries.
    pub fn listen() -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!("nodeless-console-{:016x}.sock", rand::random::<u64>()));
        let listener = UnixListener::bind(&path).map_err(|e| format!("console socket {}: {e}", path.display()))?;
        let _ = nodeless_sandbox_node::private::restrict(&path);
        let (tx, got) = mpsc::channel();
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    match nodeless_sandbox_node::private::peer_uid(&conn) {
                        Ok(uid) if nodeless_sandbox_node::private::peer_allowed(uid) => {}
                        _ => continue,
                    }
                    let _ = tx.send(receive_fd(&conn));
                    return;
                }
            })
            .map_err(|e| format!("console socket thread: {e}"))?;
        Ok(Self { path, got })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The terminal's master, once the runtime has sent it.
    pub fn master(&self) -> Result<OwnedFd, String> {
        match self.got.recv_timeout(CONSOLE_WAIT) {
            Ok(r) => r,
            Err(_) => Err(format!(
                "the runtime did not hand over the container's terminal within {CONSOLE_WAIT:?}"
            )),
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        // A thread still waiting (the runtime failed first) is let go by a connection of ours.
        if matches!(self.got.try_recv(), Err(mpsc::TryRecvError::Empty)) {
            let _ = UnixStream::connect(&self.path);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn receive_fd(conn: &UnixStream) -> Result<OwnedFd, String> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 256];
    rustix::net::recvmsg(
        conn,
        &mut [std::io::IoSliceMut::new(&mut name)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| format!("receiving the container's terminal: {e}"))?;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err("the runtime's console message carried no terminal".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_sent_over_the_console_socket_arrives() {
        let console = ConsoleSocket::listen().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let conn = UnixStream::connect(console.path()).unwrap();
        let fds = [std::os::fd::AsFd::as_fd(&w)];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &conn,
            &[std::io::IoSlice::new(b"pty")],
            &mut control,
            rustix::net::SendFlags::empty(),
        )
        .unwrap();
        let got = console.master().unwrap();
        drop(w);
        nix::unistd::write(&got, b"hi").unwrap();
        let mut buf = [0u8; 2];
        nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&r), &mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn attached_clients_get_output_and_type_into_stdin_until_the_output_ends() {
        let (in_r, in_w) = nix::unistd::pipe().unwrap();
        let io = std::sync::Arc::new(Io::new(Some(File::from(in_w)), None, 1));
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = io.clone();
        let t = std::thread::spawn(move || server.serve(theirs));
        // Wait until the client is registered.
        while lock(&io.clients).is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        (&ours).write_all(&attach::frame(STDIN, b"typed")).unwrap();
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut File::from(in_r), &mut buf).unwrap();
        assert_eq!(&buf, b"typed");
        io.send(attach::STDOUT, b"printed");
        let mut reader = BufReader::new(ours.try_clone().unwrap());
        assert_eq!(
            attach::read_frame(&mut reader).unwrap(),
            Some((attach::STDOUT, b"printed".to_vec()))
        );
        io.stream_ended();
        assert_eq!(
            attach::read_frame(&mut reader).unwrap(),
            None,
            "the connection ends with the output"
        );
        t.join().unwrap();
    }
}
