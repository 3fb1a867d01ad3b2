//! A pod's shared namespaces (network, IPC, UTS), held by a small process of their own
//! (`nodeless-shim hold`, the pause container's job) and reached as `/proc/<pid>/ns/*`. Holding
//! them with a process rather than bind mounts keeps the host's mount table from growing with
//! every pod: each new container's mount namespace copies that table, so it stays short.

use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct SandboxError {
    pub what: String,
    pub source: std::io::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> SandboxError {
    let what = what.into();
    move |e| SandboxError { what, source: e.into() }
}

/// Where a pod's namespace holder is recorded: `<dir>/holder` holds its PID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNamespaces {
    pub dir: PathBuf,
}

impl PodNamespaces {
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The holder's PID, if it still runs (and is a holder: PIDs get reused).
    pub fn holder(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir.join("holder")).ok()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        (args.get(1) == Some(&&b"hold"[..])).then_some(pid)
    }

    fn path(&self, kind: &str) -> PathBuf {
        match self.holder() {
            Some(pid) => PathBuf::from(format!("/proc/{pid}/ns/{kind}")),
            None => self.dir.join(format!("no-holder-{kind}")),
        }
    }
    pub fn net(&self) -> PathBuf {
        self.path("net")
    }
    pub fn ipc(&self) -> PathBuf {
        self.path("ipc")
    }
    pub fn uts(&self) -> PathBuf {
        self.path("uts")
    }

    pub fn exist(&self) -> bool {
        self.holder().is_some()
    }

    /// Start a holder with new namespaces, this hostname and loopback up.
    pub async fn create(&self, holder_binary: &Path, node: &str, hostname: &str) -> Result<(), SandboxError> {
        use tokio::io::AsyncBufReadExt;
        let io = |what: String| move |e: std::io::Error| SandboxError { what, source: e };
        std::fs::create_dir_all(&self.dir).map_err(io(format!("creating {}", self.dir.display())))?;
        let mut child = tokio::process::Command::new(holder_binary)
            .args(["hold", "--node", node, "--hostname", hostname])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Out of the node's process group: a Ctrl-C to the node must not reach pods.
            .process_group(0)
            .spawn()
            .map_err(io(format!("starting {}", holder_binary.display())))?;
        let pid = child.id().unwrap_or(0);
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let mut r = tokio::io::BufReader::new(out);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), r.read_line(&mut line)).await;
        }
        if line.trim() != "ready" {
            let _ = child.kill().await;
            let mut msg = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut msg).await;
            }
            return Err(SandboxError { what: "the namespace holder".into(), source: std::io::Error::other(msg.trim().to_string()) });
        }
        let tmp = self.dir.join("holder.tmp");
        std::fs::write(&tmp, pid.to_string()).map_err(io("recording the holder".into()))?;
        std::fs::rename(&tmp, self.dir.join("holder")).map_err(io("recording the holder".into()))?;
        // Reap it when it ends (after a node restart, init does).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    /// Stop the holder (the namespaces go with their last process) and forget it; keeps going
    /// past failures and reports all of them.
    pub fn remove(&self) -> Result<(), Vec<SandboxError>> {
        let mut errors = Vec::new();
        if let Some(pid) = self.holder() {
            if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL) {
                if e != nix::errno::Errno::ESRCH {
                    errors.push(SandboxError { what: format!("stopping the namespace holder {pid}"), source: e.into() });
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(SandboxError { what: format!("removing {}", self.dir.display()), source: e });
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// Run `f` on a fresh thread inside the network namespace at `netns` (to open sockets there:
/// a socket stays in the namespace it was made in).
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T, SandboxError> {
    let ns = std::fs::File::open(netns).map_err(|e| SandboxError { what: format!("opening {}", netns.display()), source: e })?;
    std::thread::spawn(move || -> Result<T, SandboxError> {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(err("setns"))?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|_| Err(SandboxError { what: "netns thread".into(), source: std::io::Error::other("panicked") }))
}

/// A TCP connection made from inside the network namespace at `netns` (the socket stays there).
pub async fn connect_in(netns: &Path, addr: std::net::SocketAddr, timeout: std::time::Duration) -> Result<tokio::net::TcpStream, String> {
    let netns = netns.to_path_buf();
    let stream = tokio::task::spawn_blocking(move || in_netns(&netns, move || std::net::TcpStream::connect_timeout(&addr, timeout)))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("dial tcp {addr}: {e}"))?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())
}
