//! Containers under the supervisor: every container's parent (child subreaper) for the whole
//! node. It runs the OCI runtime's `run --detach`, copies every container's stdout and stderr
//! into its CRI-format log file from one epoll thread, reaps every process from one thread, and
//! writes each container's exit record when its init process ends. Because the supervisor, not
//! the node, holds the pipes and reaps the processes, a node can restart while containers run
//! and lose nothing; because there is one supervisor and not a process per container, a
//! container costs the node two pipes, a socket and a few hundred bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, mpsc};
use std::time::Duration;

use crate::attach::{ConsoleSocket, Io};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use nodeless_guest_agent::records::{CriLines, LogFile};
use nodeless_sandbox_node::shim_proto::attach as attach_proto;
use nodeless_sandbox_node::shim_proto::{ExitRecord, RunRequest, RuntimeIdentity, START_FAILED_EXIT_CODE, now_rfc3339};

/// Reaped processes nobody has claimed yet are forgotten beyond this many.
const UNCLAIMED: usize = 1024;

/// How a process ended: its exit code (128 + the signal for a signal) and the signal.
#[derive(Clone, Copy, Debug)]
struct Ended {
    code: i32,
    signal: Option<i32>,
}

/// A running container, waiting for its init process to end.
struct Container {
    exit: std::path::PathBuf,
    /// The node's connection, told `exited` at the end (it may be gone after a node restart).
    conn: UnixStream,
    /// Disconnected once both of the container's streams reached end of file.
    drained: mpsc::Receiver<()>,
    /// Its id, under which `attach` finds it.
    id: String,
}

#[derive(Default)]
struct State {
    /// Bumped on every spawn, so the reaper knows a child may exist again.
    spawns: u64,
    /// Bumped on every reaped process.
    reaps: u64,
    /// Processes reaped before anyone claimed them, with the `reaps` count at the time.
    reaped: HashMap<i32, (u64, Ended)>,
    /// Running containers by their init process.
    running: HashMap<i32, Container>,
    /// `run` requests under way.
    starting: usize,
    /// What `attach` reaches of each running container, by its id.
    attachable: HashMap<String, Arc<Io>>,
}

pub struct Supervisor {
    /// The only program it runs containers with, and its state directory.
    runtime: RuntimeIdentity,
    state: Mutex<State>,
    changed: Condvar,
    logs: Logs,
    /// Called when a container's end leaves nothing running.
    on_idle: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl Supervisor {
    /// Start the reaper and the log copier. The process must be a child subreaper already.
    pub fn start(runtime: RuntimeIdentity) -> std::io::Result<Arc<Self>> {
        let sup = Arc::new(Self {
            runtime,
            state: Mutex::default(),
            changed: Condvar::new(),
            logs: Logs::new()?,
            on_idle: OnceLock::new(),
        });
        let reaper = sup.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reaper.reap())?;
        let copier = sup.clone();
        std::thread::Builder::new()
            .name("logs".into())
            .spawn(move || copier.logs.copy())?;
        Ok(sup)
    }

    /// The runtime it runs every container with.
    pub fn identity(&self) -> &RuntimeIdentity {
        &self.runtime
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Call `f` whenever a container's end leaves nothing running or starting.
    pub fn when_idle(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_idle.set(Box::new(f));
    }

    /// Nothing running and nothing starting.
    pub fn is_idle(&self) -> bool {
        let s = self.lock();
        s.running.is_empty() && s.starting == 0
    }

    /// Serve one `run` request on `conn`, which is kept until the container ends.
    pub fn run(&self, req: RunRequest, mut conn: UnixStream) {
        self.lock().starting += 1;
        let outcome = self.start_container(&req);
        let mut s = self.lock();
        s.starting -= 1;
        match outcome {
            Ok((pid, after, drained, io)) => {
                let _ = writeln!(conn, "started {pid}");
                s.attachable.insert(req.id.clone(), io);
                let container = Container {
                    exit: req.exit,
                    conn,
                    drained,
                    id: req.id,
                };
                // Its init may have ended (and been reaped) already.
                match s.reaped.get(&pid) {
                    Some((at, ended)) if *at > after => {
                        let ended = *ended;
                        s.reaped.remove(&pid);
                        drop(s);
                        self.finish(container, ended);
                    }
                    _ => {
                        s.running.insert(pid, container);
                    }
                }
            }
            Err(message) => {
                drop(s);
                let record = ExitRecord {
                    exit_code: START_FAILED_EXIT_CODE,
                    signal: None,
                    reason: "StartError".into(),
                    message,
                    finished_at: now_rfc3339(),
                };
                let written = record
                    .write(&req.exit)
                    .err()
                    .map(|e| format!(" (writing {}: {e})", req.exit.display()))
                    .unwrap_or_default();
                let _ = writeln!(conn, "failed {}{written}", record.message.replace('\n', " "));
            }
        }
    }

    /// Serve `attach <id>` on `conn`: `ok` and the container's streams, or `failed <why>`.
    pub fn attach(&self, id: &str, mut conn: UnixStream) {
        let io = self.lock().attachable.get(id).cloned();
        match io {
            Some(io) => {
                if writeln!(conn, "ok").is_ok() {
                    io.serve(conn);
                }
            }
            None => {
                let _ = writeln!(conn, "failed no running container {id}");
            }
        }
    }

    /// Run the runtime and wait for it: the container's init PID, the reap count before the
    /// runtime started, the container's drain signal and what `attach` reaches of it.
    fn start_container(&self, req: &RunRequest) -> Result<Started, String> {
        let log = Arc::new(Mutex::new(
            LogFile::open(&req.log).map_err(|e| format!("{}: {e}", req.log.display()))?,
        ));
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        // A container with stdin (and no terminal) reads a pipe whose write end stays here.
        let (stdin, stdin_keep) = if req.stdin && !req.tty {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
            (Stdio::from(r), Some(File::from(w)))
        } else {
            (Stdio::null(), None)
        };
        let console = if req.tty { Some(ConsoleSocket::listen()?) } else { None };
        let runtime_log = req.bundle.join("runtime.log");
        let pid_file = req.bundle.join("pid");
        let (program, arg0) = nodeless_sandbox_node::sealed_binary::program(&self.runtime.runtime);
        let mut cmd = Command::new(program);
        cmd.arg0(arg0)
            .arg("--root")
            .arg(&self.runtime.root)
            .arg("--log")
            .arg(&runtime_log)
            .args(["--log-format", "json", "run", "--detach", "--bundle"])
            .arg(&req.bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some(c) = &console {
            cmd.arg("--console-socket").arg(c.path());
        }
        cmd.arg(&req.id)
            .stdin(stdin)
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        // Spawned under the lock, so the reaper cannot report the runtime before it is known.
        let (runtime_pid, after) = {
            let mut s = self.lock();
            let child = cmd
                .spawn()
                .map_err(|e| format!("{}: {e}", self.runtime.runtime.display()))?;
            s.spawns += 1;
            self.changed.notify_all();
            (child.id() as i32, s.reaps)
        };
        // The write ends live on in the container only.
        drop(cmd);
        let ended = self.wait_for(runtime_pid);
        // Without a terminal the container prints into the pipes; with one, into the terminal
        // (and the pipes carry only what the runtime itself says).
        let plain = |name| if req.tty { None } else { Some(name) };
        let mut streams = vec![
            (out_r, "stdout", plain(attach_proto::STDOUT)),
            (err_r, "stderr", plain(attach_proto::STDERR)),
        ];
        let master = match &console {
            Some(c) if ended.code == 0 => Some(c.master()?),
            _ => None,
        };
        let io = Arc::new(Io::new(
            stdin_keep.or(master.as_ref().and_then(|m| m.try_clone().ok()).map(File::from)),
            master.as_ref().and_then(|m| m.try_clone().ok()),
            if req.tty { 1 } else { 2 },
        ));
        if let Some(m) = master {
            streams.push((m, "stdout", Some(attach_proto::STDOUT)));
        }
        let drained = self
            .logs
            .add(log, streams, &io)
            .map_err(|e| format!("watching the container's output: {e}"))?;
        if ended.code != 0 {
            return Err(runtime_error(&runtime_log));
        }
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(|e| format!("{}: {e}", pid_file.display()))?
            .trim()
            .parse()
            .map_err(|e| format!("pid file: {e}"))?;
        Ok((pid, after, drained, io))
    }

    /// Wait until the reaper has reaped `pid`, a child of ours.
    fn wait_for(&self, pid: i32) -> Ended {
        let mut s = self.lock();
        loop {
            if let Some((_, ended)) = s.reaped.remove(&pid) {
                return ended;
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Reap every process that ends under us: containers' init processes (their containers
    /// finish) and the runtime's processes (their `run` waits for them).
    fn reap(self: Arc<Self>) {
        loop {
            let spawns = self.lock().spawns;
            let (pid, ended) = match waitpid(None::<Pid>, None) {
                Ok(WaitStatus::Exited(p, c)) => (p.as_raw(), Ended { code: c, signal: None }),
                Ok(WaitStatus::Signaled(p, sig, _)) => (
                    p.as_raw(),
                    Ended {
                        code: 128 + sig as i32,
                        signal: Some(sig as i32),
                    },
                ),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => {
                    // No children: sleep until something is spawned.
                    let mut s = self.lock();
                    while s.spawns == spawns {
                        s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                    }
                    continue;
                }
            };
            let mut s = self.lock();
            s.reaps += 1;
            if let Some(container) = s.running.remove(&pid) {
                drop(s);
                // Waiting for its output to drain must not hold up reaping.
                let sup = self.clone();
                let _ = std::thread::Builder::new().name("finish".into()).spawn(move || {
                    sup.finish(container, ended);
                    if sup.is_idle()
                        && let Some(f) = sup.on_idle.get()
                    {
                        f();
                    }
                });
                continue;
            }
            let at = s.reaps;
            s.reaped.insert(pid, (at, ended));
            if s.reaped.len() > UNCLAIMED {
                s.reaped.retain(|_, (n, _)| *n + UNCLAIMED as u64 / 2 > at);
            }
            self.changed.notify_all();
        }
    }
}

impl Supervisor {
    /// The container's init has ended: let its output drain, write the exit record, tell the
    /// node.
    fn finish(&self, c: Container, ended: Ended) {
        // Every process of the container has gone with its init; give the copier a moment.
        let _ = c.drained.recv_timeout(Duration::from_secs(2));
        self.lock().attachable.remove(&c.id);
        finish(c, ended);
    }
}

/// Write the exit record of a container whose output has drained, and tell the node.
fn finish(mut c: Container, ended: Ended) {
    let record = ExitRecord {
        exit_code: ended.code,
        signal: ended.signal,
        reason: if ended.code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        },
        message: String::new(),
        finished_at: now_rfc3339(),
    };
    if let Err(e) = record.write(&c.exit) {
        eprintln!("nodeless-shim keep: writing {}: {e}", c.exit.display());
    }
    let _ = writeln!(c.conn, "exited");
}

/// The first error the runtime logged: runc and crun write JSON lines `{"level": "error",
/// "msg": …}` with `--log-format json`, youki `{"level": "ERROR", "message": …}`.
fn runtime_error(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"].as_str().is_some_and(|l| l.eq_ignore_ascii_case("error")))
        .find_map(|v| v["msg"].as_str().or(v["message"].as_str()).map(str::to_string))
        .unwrap_or_else(|| "the OCI runtime failed to start the container".to_string())
}

/// A started container: its init's PID, the reap count before the runtime started, its drain
/// signal, and what `attach` reaches of it.
type Started = (i32, u64, mpsc::Receiver<()>, Arc<Io>);

/// One of a container's output streams.
struct Stream {
    pipe: File,
    log: Arc<Mutex<LogFile>>,
    /// Attached clients get what it carries, as this kind of frame.
    attach: Option<(Arc<Io>, u8)>,
    /// The stream's text, cut into CRI lines.
    lines: CriLines,
    /// Dropped at end of file; the container has drained when both of its streams dropped theirs.
    _open: mpsc::Sender<()>,
}

/// Every container's output, copied into its log by one thread.
struct Logs {
    epoll: Epoll,
    streams: Mutex<HashMap<u64, Stream>>,
    next: AtomicU64,
}

impl Logs {
    fn new() -> std::io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        Ok(Self {
            epoll,
            streams: Mutex::default(),
            next: AtomicU64::new(0),
        })
    }

    /// Watch a container's output streams (each a descriptor, its name in the log, and the
    /// frame attached clients get it in, if they do); the receiver disconnects when all have
    /// ended.
    fn add(
        &self,
        log: Arc<Mutex<LogFile>>,
        fds: Vec<(OwnedFd, &'static str, Option<u8>)>,
        io: &Arc<Io>,
    ) -> std::io::Result<mpsc::Receiver<()>> {
        let (open, drained) = mpsc::channel();
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        for (fd, name, kind) in fds {
            let key = self.next.fetch_add(1, Ordering::Relaxed);
            let stream = Stream {
                pipe: File::from(fd),
                log: log.clone(),
                attach: kind.map(|k| (io.clone(), k)),
                lines: CriLines::new(name),
                _open: open.clone(),
            };
            self.epoll
                .add(stream.pipe.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, key))?;
            streams.insert(key, stream);
        }
        Ok(drained)
    }

    fn copy(&self) {
        let mut events = vec![EpollEvent::empty(); 64];
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("nodeless-shim keep: epoll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            for ev in &events[..n] {
                let key = ev.data();
                let Some(s) = streams.get_mut(&key) else { continue };
                match s.pipe.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let rest = s.lines.finish();
                        if !rest.is_empty() {
                            s.log.lock().unwrap_or_else(|e| e.into_inner()).write(&rest);
                        }
                        let _ = self.epoll.delete(s.pipe.as_fd());
                        if let Some((io, _)) = &s.attach {
                            io.stream_ended();
                        }
                        streams.remove(&key);
                    }
                    Ok(n) => {
                        s.take(&buf[..n]);
                        if let Some((io, kind)) = &s.attach {
                            io.send(*kind, &buf[..n]);
                        }
                    }
                }
            }
        }
    }
}

impl Stream {
    /// Append what was read; write out every complete line, and overlong partial ones.
    fn take(&mut self, data: &[u8]) {
        let out = self.lines.take(data);
        if !out.is_empty() {
            self.log.lock().unwrap_or_else(|e| e.into_inner()).write(&out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeless_guest_agent::records::{LOG_MAX_BYTES, LOG_MAX_FILES, MAX_LINE, rotated_log};

    fn stream(log: &Path) -> (Stream, mpsc::Receiver<()>) {
        let (open, drained) = mpsc::channel();
        let (r, _w) = nix::unistd::pipe().unwrap();
        let log = Arc::new(Mutex::new(LogFile::open(log).unwrap()));
        (
            Stream {
                pipe: File::from(r),
                log,
                attach: None,
                lines: CriLines::new("stdout"),
                _open: open,
            },
            drained,
        )
    }

    fn records(log: &Path) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(log).unwrap();
        text.lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let (_ts, stream, tag, body) = (
                    f.next().unwrap(),
                    f.next().unwrap(),
                    f.next().unwrap(),
                    f.next().unwrap_or(""),
                );
                (format!("{stream} {tag}"), body.to_string())
            })
            .collect()
    }

    #[test]
    fn output_becomes_cri_lines_with_partial_lines_kept_and_long_ones_split() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let (mut s, _drained) = stream(&log);
        s.take(b"one\ntw");
        assert_eq!(records(&log), vec![("stdout F".to_string(), "one".to_string())]);
        s.take(b"o\n");
        s.take(&vec![b'x'; MAX_LINE + 5]);
        s.take(b"\n");
        let r = records(&log);
        assert_eq!(r.len(), 4, "{r:?}");
        assert_eq!(r[1], ("stdout F".to_string(), "two".to_string()));
        assert_eq!(r[2].0, "stdout P");
        assert_eq!(r[2].1.len(), MAX_LINE);
        assert_eq!(r[3], ("stdout F".to_string(), "xxxxx".to_string()));
        assert_eq!(s.lines.pending(), 0);
    }

    #[test]
    fn a_container_has_drained_when_both_streams_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new().unwrap();
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();
        let log = Arc::new(Mutex::new(LogFile::open(&dir.path().join("log")).unwrap()));
        let io = Arc::new(Io::new(None, None, 2));
        let drained = logs
            .add(log, vec![(out_r, "stdout", Some(1)), (err_r, "stderr", Some(2))], &io)
            .unwrap();
        let logs = Arc::new(logs);
        let copier = logs.clone();
        std::thread::spawn(move || copier.copy());
        nix::unistd::write(&out_w, b"hello\n").unwrap();
        nix::unistd::write(&err_w, b"oops").unwrap();
        drop(out_w);
        assert!(
            matches!(
                drained.recv_timeout(Duration::from_millis(300)),
                Err(mpsc::RecvTimeoutError::Timeout)
            ),
            "stderr is still open"
        );
        drop(err_w);
        assert!(matches!(
            drained.recv_timeout(Duration::from_secs(5)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        ));
        let r = records(&dir.path().join("log"));
        assert!(r.contains(&("stdout F".to_string(), "hello".to_string())), "{r:?}");
        assert!(r.contains(&("stderr F".to_string(), "oops".to_string())), "{r:?}");
    }

    #[test]
    fn a_log_rotates_at_its_size_and_keeps_its_count_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = LogFile::open(&path).unwrap();
        let line = vec![b'x'; 64 * 1024];
        let lines = (LOG_MAX_BYTES / line.len() as u64) * (LOG_MAX_FILES as u64 + 2);
        for _ in 0..lines {
            log.write(&line);
        }
        let mut total = 0;
        for n in 0..LOG_MAX_FILES + 2 {
            let p = if n == 0 { path.clone() } else { rotated_log(&path, n) };
            let len = std::fs::metadata(&p).map(|m| m.len()).ok();
            if n < LOG_MAX_FILES {
                let len = len.unwrap_or_else(|| panic!("{} is missing", p.display()));
                assert!(len <= LOG_MAX_BYTES, "{}: {len}", p.display());
                total += len;
            } else {
                assert!(len.is_none(), "{} should be gone", p.display());
            }
        }
        assert!(total <= LOG_MAX_BYTES * LOG_MAX_FILES as u64);
        assert!(total >= LOG_MAX_BYTES * (LOG_MAX_FILES as u64 - 1));
    }
}
