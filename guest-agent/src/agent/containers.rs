//! The pod's containers in the VM. The agent is PID 1: one thread reaps every process (the
//! containers', execs', and orphans the guest hands it), one thread per output stream copies it
//! into the container's CRI log on the host's share, and the exit record is written once the
//! output has drained, as the node's supervisor does on the host.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{WaitStatus, waitpid};
use tokio::sync::watch;

use super::setup::{SETUP_FAILED, start_error_file};
use nodeless_guest_agent::records::{CriLines, ExitRecord, LogFile, START_FAILED_EXIT_CODE, now_rfc3339};

/// How a process ended: its exit code and the signal that ended it (0 for none).
pub type Ended = (i32, i32);

struct Container {
    pid: i32,
    bundle: PathBuf,
    exit: PathBuf,
    ended: watch::Sender<Option<Ended>>,
    /// Held open so a container with `stdin: true` reads until it is removed.
    _stdin: Option<File>,
    /// Disconnects once the container's output has been copied out.
    drained: Option<mpsc::Receiver<()>>,
}

enum Waiter {
    Container(String),
    Exec(tokio::sync::oneshot::Sender<Ended>),
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    pids: HashMap<i32, Waiter>,
}

pub struct Containers {
    state: Mutex<State>,
}

/// What a process gets as stdin, stdout and stderr, and where its output is read.
pub struct Stdio3 {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// (reader, stream name): one for a terminal, stdout and stderr otherwise.
    pub outputs: Vec<(File, &'static str)>,
    /// The writing end of stdin, when the caller feeds it.
    pub input: Option<File>,
}

/// A terminal: the master for the agent, the slave as the process's three streams. With
/// `ptmx`, from that devpts instance (a container's own, so the process finds its terminal
/// under its /dev/pts), else from the guest's.
pub fn terminal(ptmx: Option<&Path>) -> Result<(File, Stdio3), String> {
    use rustix::pty::OpenptFlags;
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master: std::os::fd::OwnedFd = match ptmx {
        Some(path) => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits())
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .into(),
        None => rustix::pty::openpt(flags).map_err(|e| format!("openpt: {e}"))?,
    };
    rustix::pty::grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    rustix::pty::unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let slave = File::from(rustix::pty::ioctl_tiocgptpeer(&master, flags).map_err(|e| format!("TIOCGPTPEER: {e}"))?);
    let master = File::from(master);
    let dup = |f: &File| f.try_clone().map_err(|e| e.to_string());
    let io = Stdio3 {
        stdin: Stdio::from(dup(&slave)?),
        stdout: Stdio::from(dup(&slave)?),
        stderr: Stdio::from(slave),
        outputs: vec![(dup(&master)?, "stdout")],
        input: Some(dup(&master)?),
    };
    Ok((master, io))
}

/// Pipes: stdout and stderr read apart; stdin a pipe when `stdin`, else nothing.
pub fn pipes(stdin: bool) -> Result<Stdio3, String> {
    let pipe = || -> Result<(File, File), String> {
        let (r, w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
        Ok((File::from(r), File::from(w)))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (stdin_io, input) = if stdin {
        let (r, w) = pipe()?;
        (Stdio::from(r), Some(w))
    } else {
        (Stdio::null(), None)
    };
    Ok(Stdio3 {
        stdin: stdin_io,
        stdout: Stdio::from(out_w),
        stderr: Stdio::from(err_w),
        outputs: vec![(out_r, "stdout"), (err_r, "stderr")],
        input,
    })
}

fn ended_of(status: WaitStatus) -> Option<(i32, Ended)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), (code, 0))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), (128 + sig as i32, sig as i32))),
        _ => None,
    }
}

impl Containers {
    pub fn start() -> Arc<Self> {
        let me = Arc::new(Self {
            state: Mutex::default(),
        });
        let reaper = me.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reaper.reap())
            .expect("starting the reaper thread");
        me
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reap(self: Arc<Self>) {
        loop {
            let status = match waitpid(None, None) {
                Ok(s) => s,
                Err(Errno::ECHILD) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(_) => continue,
            };
            let Some((pid, ended)) = ended_of(status) else { continue };
            let waiter = self.lock().pids.remove(&pid);
            match waiter {
                Some(Waiter::Exec(tx)) => {
                    let _ = tx.send(ended);
                }
                Some(Waiter::Container(id)) => {
                    let me = self.clone();
                    std::thread::spawn(move || me.finish(&id, ended));
                }
                // An orphan the guest handed to PID 1.
                None => {}
            }
        }
    }

    /// A container's process ended: wait for its output to drain, write its exit record, wake
    /// its waiters.
    fn finish(&self, id: &str, ended: Ended) {
        let (drained, bundle, exit, tx) = {
            let mut s = self.lock();
            let Some(c) = s.containers.get_mut(id) else { return };
            (c.drained.take(), c.bundle.clone(), c.exit.clone(), c.ended.clone())
        };
        if let Some(rx) = drained {
            // A process the container left behind may hold its output open: not for ever.
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
        let start_error = std::fs::read_to_string(start_error_file(&bundle)).ok();
        let record = match start_error {
            Some(message) if ended.0 == SETUP_FAILED => ExitRecord {
                exit_code: START_FAILED_EXIT_CODE,
                signal: None,
                reason: "StartError".into(),
                message,
                finished_at: now_rfc3339(),
            },
            _ => ExitRecord {
                exit_code: ended.0,
                signal: (ended.1 != 0).then_some(ended.1),
                reason: if ended == (0, 0) { "Completed" } else { "Error" }.into(),
                message: String::new(),
                finished_at: now_rfc3339(),
            },
        };
        if let Err(e) = record.write(&exit) {
            eprintln!("nodeless-guest-agent: writing {}: {e}", exit.display());
        }
        let _ = tx.send(Some(ended));
    }

    /// Start the container of the bundle (see [`super::setup::container_init`]).
    pub fn run(&self, id: &str, bundle: &Path, log: &Path, exit: &Path, stdin: bool, tty: bool) -> Result<i32, String> {
        let _ = std::fs::remove_file(exit);
        let _ = std::fs::remove_file(start_error_file(bundle));
        let log = Arc::new(Mutex::new(
            LogFile::open(log).map_err(|e| format!("{}: {e}", log.display()))?,
        ));
        let io = if tty { terminal(None)?.1 } else { pipes(stdin)? };
        let mut s = self.lock();
        if let Some(c) = s.containers.get(id)
            && c.ended.borrow().is_none()
        {
            return Err(format!("container {id} is already running"));
        }
        let child = Command::new("/proc/self/exe")
            .arg("container-init")
            .arg(bundle)
            .stdin(io.stdin)
            .stdout(io.stdout)
            .stderr(io.stderr)
            .spawn()
            .map_err(|e| format!("starting the container: {e}"))?;
        let pid = child.id() as i32;
        drop(child);
        let (open, drained) = mpsc::channel();
        for (reader, name) in io.outputs {
            let log = log.clone();
            let open = open.clone();
            std::thread::spawn(move || copy_to_log(reader, name, &log, open));
        }
        let (ended, _) = watch::channel(None);
        s.pids.insert(pid, Waiter::Container(id.to_string()));
        s.containers.insert(
            id.to_string(),
            Container {
                pid,
                bundle: bundle.to_path_buf(),
                exit: exit.to_path_buf(),
                ended,
                _stdin: io.input,
                drained: Some(drained),
            },
        );
        Ok(pid)
    }

    pub fn pid(&self, id: &str) -> Option<(i32, PathBuf, bool)> {
        let s = self.lock();
        let c = s.containers.get(id)?;
        Some((c.pid, c.bundle.clone(), c.ended.borrow().is_none()))
    }

    pub async fn wait(&self, id: &str) -> Result<Ended, String> {
        let mut rx = {
            let s = self.lock();
            s.containers
                .get(id)
                .ok_or_else(|| format!("no container {id}"))?
                .ended
                .subscribe()
        };
        let ended = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| format!("container {id} was removed"))?;
        Ok(ended.unwrap_or((255, 0)))
    }

    pub fn signal(&self, id: &str, signal: i32) -> Result<(), String> {
        let (pid, _, running) = self.pid(id).ok_or_else(|| format!("no container {id}"))?;
        if !running {
            return Ok(());
        }
        let sig = nix::sys::signal::Signal::try_from(signal).map_err(|e| format!("signal {signal}: {e}"))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(format!("kill {pid}: {e}")),
        }
    }

    pub async fn remove(&self, id: &str) -> Result<(), String> {
        let Some((_, _, running)) = self.pid(id) else {
            return Ok(());
        };
        if running {
            self.signal(id, nix::sys::signal::Signal::SIGKILL as i32)?;
            let _ = tokio::time::timeout(Duration::from_secs(10), self.wait(id)).await;
        }
        self.lock().containers.remove(id);
        Ok(())
    }

    pub fn list(&self) -> Vec<(String, i32, bool)> {
        let s = self.lock();
        s.containers
            .iter()
            .map(|(id, c)| (id.clone(), c.pid, c.ended.borrow().is_none()))
            .collect()
    }

    /// Start `args` in the container `id` (see [`super::setup::container_enter`]); the receiver
    /// gets how it ended.
    pub fn exec(
        &self,
        id: &str,
        args: &[String],
        io: Stdio3Parts,
    ) -> Result<tokio::sync::oneshot::Receiver<Ended>, String> {
        let (pid, bundle, running) = self.pid(id).ok_or_else(|| format!("no container {id}"))?;
        if !running {
            return Err(format!("container {id} is not running"));
        }
        let mut s = self.lock();
        let child = Command::new("/proc/self/exe")
            .arg("container-enter")
            .arg(pid.to_string())
            .arg(&bundle)
            .args(args)
            .stdin(io.stdin)
            .stdout(io.stdout)
            .stderr(io.stderr)
            .spawn()
            .map_err(|e| format!("starting the process: {e}"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.pids.insert(child.id() as i32, Waiter::Exec(tx));
        drop(child);
        Ok(rx)
    }

    pub fn running(&self) -> usize {
        self.lock()
            .containers
            .values()
            .filter(|c| c.ended.borrow().is_none())
            .count()
    }
}

/// The three streams of a process, without the agent's ends.
pub struct Stdio3Parts {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl Stdio3 {
    pub fn split(self) -> (Stdio3Parts, Vec<(File, &'static str)>, Option<File>) {
        (
            Stdio3Parts {
                stdin: self.stdin,
                stdout: self.stdout,
                stderr: self.stderr,
            },
            self.outputs,
            self.input,
        )
    }
}

fn copy_to_log(mut reader: File, name: &'static str, log: &Mutex<LogFile>, _open: mpsc::Sender<()>) {
    let mut lines = CriLines::new(name);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf) {
            // A terminal's master reads EIO once the last holder of the slave is gone.
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let out = lines.take(&buf[..n]);
                if !out.is_empty() {
                    log.lock().unwrap_or_else(|e| e.into_inner()).write(&out);
                }
            }
        }
    }
    let rest = lines.finish();
    if !rest.is_empty() {
        log.lock().unwrap_or_else(|e| e.into_inner()).write(&rest);
    }
}
