//! A pod's shared namespaces (network, IPC, UTS, and the user namespace that owns them when the
//! pod has one), held by the node's supervisor
//! (`nodeless-shim keep`, the pause container's job for every pod at once, and the parent of
//! every container) as open files and reached as `/proc/<supervisor>/fd/<n>`. Holding them with
//! descriptors rather than bind mounts keeps the host's mount table from growing with every pod
//! (each new container's mount namespace copies that table), and one supervisor rather than a
//! process per pod keeps the node's memory per pod small. The supervisor outlives the node while
//! it holds namespaces or runs containers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sched::CloneFlags;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::shim_proto::RuntimeIdentity;

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

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError { what, source }
}

/// The node's connection to its supervisor, started on first use.
pub struct Keeper {
    binary: PathBuf,
    socket: PathBuf,
    /// The OCI runtime the supervisor runs containers with (given on its command line; a run
    /// request cannot name a program).
    runtime: RuntimeIdentity,
    /// Whether the supervisor on the socket was found to run `runtime`.
    checked: AtomicBool,
    conn: tokio::sync::Mutex<Option<BufReader<UnixStream>>>,
    /// Held while starting the supervisor, so concurrent requests start one, not several.
    starting: tokio::sync::Mutex<()>,
}

impl Keeper {
    /// The supervisor's binary (`nodeless-shim`), whose other commands the node runs too.
    pub fn binary(&self) -> &std::path::Path {
        &self.binary
    }

    pub fn new(binary: PathBuf, socket: PathBuf, runtime: RuntimeIdentity) -> Self {
        Self {
            binary,
            socket,
            runtime,
            checked: AtomicBool::new(false),
            conn: tokio::sync::Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
        }
    }

    /// Ask the supervisor to run a container (see [`crate::shim_proto::RunRequest`]). The
    /// answer is read from the returned connection: `started <pid>` and later `exited`, or
    /// `failed <why>`.
    pub async fn run(&self, req: &crate::shim_proto::RunRequest) -> Result<BufReader<UnixStream>, SandboxError> {
        let mut conn = self.connect().await?;
        let line = format!(
            "run {}\n",
            serde_json::to_string(req).map_err(|e| SandboxError {
                what: "a run request".into(),
                source: e.into()
            })?
        );
        conn.get_mut()
            .write_all(line.as_bytes())
            .await
            .map_err(io("asking the node's supervisor to run a container"))?;
        Ok(conn)
    }

    /// Connect to a running container's streams (see [`crate::shim_proto::attach`]).
    pub async fn attach(&self, id: &str) -> Result<BufReader<UnixStream>, SandboxError> {
        let mut conn = self.connect().await?;
        let answer = Self::exchange(&mut conn, &format!("attach {id}"))
            .await
            .map_err(io("attaching to a container through the node's supervisor"))?;
        if answer != "ok" {
            return Err(SandboxError {
                what: format!("attaching to container {id}"),
                source: std::io::Error::other(answer.strip_prefix("failed ").unwrap_or(&answer).to_string()),
            });
        }
        Ok(conn)
    }

    async fn spawn(&self) -> Result<(), SandboxError> {
        // Its complaints go to a file beside the socket: a pipe nobody reads would fill up.
        let log_path = self.socket.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut child = tokio::process::Command::new(&self.binary)
            .arg("keep")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--runtime")
            .arg(&self.runtime.runtime)
            .arg("--root")
            .arg(&self.runtime.root)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            // Out of the node's process group: a Ctrl-C to the node must not reach pods.
            .process_group(0)
            .spawn()
            .map_err(io(format!("starting {}", self.binary.display())))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), BufReader::new(out).read_line(&mut line)).await;
        }
        if line.trim() != "ready" {
            let _ = child.kill().await;
            let text = std::fs::read(&log_path).unwrap_or_default();
            let msg = String::from_utf8_lossy(text.get(log_start as usize..).unwrap_or_default()).to_string();
            return Err(SandboxError {
                what: "the node's supervisor".into(),
                source: std::io::Error::other(msg.trim().to_string()),
            });
        }
        // Reap it when it ends (after a node restart, init does).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    async fn connect(&self) -> Result<BufReader<UnixStream>, SandboxError> {
        let mut conn = self.connect_or_spawn().await?;
        if !self.checked.load(Ordering::Acquire) {
            self.check_runtime(&mut conn).await?;
            self.checked.store(true, Ordering::Release);
        }
        Ok(conn)
    }

    async fn connect_or_spawn(&self) -> Result<BufReader<UnixStream>, SandboxError> {
        if let Ok(s) = UnixStream::connect(&self.socket).await {
            return Ok(BufReader::new(s));
        }
        let _one = self.starting.lock().await;
        if let Ok(s) = UnixStream::connect(&self.socket).await {
            return Ok(BufReader::new(s));
        }
        self.spawn().await?;
        UnixStream::connect(&self.socket)
            .await
            .map(BufReader::new)
            .map_err(io(format!(
                "connecting to the node's supervisor at {}",
                self.socket.display()
            )))
    }

    /// A supervisor left by an earlier start of the node runs the runtime it was started with:
    /// refuse to go on with one that runs another (its containers would be started by one
    /// program and killed by another).
    async fn check_runtime(&self, conn: &mut BufReader<UnixStream>) -> Result<(), SandboxError> {
        let reply = tokio::time::timeout(Duration::from_secs(10), Self::exchange(conn, "runtime"))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            .map_err(io("asking the node's supervisor for its runtime"))?;
        let theirs = reply
            .strip_prefix("ok ")
            .and_then(|j| serde_json::from_str::<RuntimeIdentity>(j).ok());
        match theirs {
            Some(t) if t == self.runtime => Ok(()),
            other => Err(SandboxError {
                what: "the node's supervisor".into(),
                source: std::io::Error::other(format!(
                    "it runs containers with {}, not {} ({}): stop its pods (or the supervisor) before changing the runtime",
                    other.map_or_else(
                        || format!("an unknown runtime (it answered {reply:?}: an older supervisor?)"),
                        |t| format!("{} (state in {})", t.runtime.display(), t.root.display())
                    ),
                    self.runtime.runtime.display(),
                    self.runtime.root.display()
                )),
            }),
        }
    }

    async fn exchange(conn: &mut BufReader<UnixStream>, request: &str) -> std::io::Result<String> {
        conn.get_mut().write_all(format!("{request}\n").as_bytes()).await?;
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim().to_string())
    }

    /// One request and its answer; a keeper that went away is started again once.
    async fn request(&self, request: &str) -> Result<String, SandboxError> {
        let mut conn = self.conn.lock().await;
        let mut last = None;
        for _ in 0..2 {
            let mut c = match conn.take() {
                Some(c) => c,
                None => self.connect().await?,
            };
            match tokio::time::timeout(Duration::from_secs(10), Self::exchange(&mut c, request)).await {
                Ok(Ok(reply)) => {
                    *conn = Some(c);
                    return Ok(reply);
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(std::io::ErrorKind::TimedOut.into()),
            }
        }
        Err(SandboxError {
            what: "the node's supervisor".into(),
            source: last.unwrap_or_else(|| std::io::ErrorKind::Other.into()),
        })
    }
}

/// A pod's namespaces: `<dir>/ns` records the keeper's PID and its descriptors for them
/// (`<pid> <net> <ipc> <uts> [<user>]`, as the keeper answers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNamespaces {
    pub dir: PathBuf,
}

/// The keeper's PID and its descriptors for the network, IPC and UTS namespaces, and for the
/// user namespace that owns them if the pod has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    keeper: u32,
    fds: [u32; 3],
    user: Option<u32>,
}

impl Held {
    fn parse(text: &str) -> Option<Held> {
        let v: Vec<u32> = text.split_whitespace().map(|w| w.parse().ok()).collect::<Option<_>>()?;
        match v.as_slice() {
            [keeper, net, ipc, uts] => Some(Held {
                keeper: *keeper,
                fds: [*net, *ipc, *uts],
                user: None,
            }),
            [keeper, net, ipc, uts, user] => Some(Held {
                keeper: *keeper,
                fds: [*net, *ipc, *uts],
                user: Some(*user),
            }),
            _ => None,
        }
    }
}

impl PodNamespaces {
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn key(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The recorded descriptors, if the keeper still holds them (PIDs and fds get reused: the
    /// process must be a keeper and the descriptor a namespace of the right kind).
    fn held(&self) -> Option<Held> {
        let held = Held::parse(&std::fs::read_to_string(self.dir.join("ns")).ok()?)?;
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", held.keeper)).ok()?;
        let is_keeper = cmdline.split(|b| *b == 0).nth(1) == Some(&b"keep"[..]);
        let links_ok = ["net", "ipc", "uts"]
            .iter()
            .zip(held.fds)
            .chain(held.user.map(|u| (&"user", u)))
            .all(|(kind, fd)| {
                std::fs::read_link(format!("/proc/{}/fd/{fd}", held.keeper))
                    .is_ok_and(|l| l.to_string_lossy().starts_with(&format!("{kind}:[")))
            });
        (is_keeper && links_ok).then_some(held)
    }

    fn path(&self, i: usize, kind: &str) -> PathBuf {
        match self.held() {
            Some(h) => PathBuf::from(format!("/proc/{}/fd/{}", h.keeper, h.fds[i])),
            None => self.dir.join(format!("no-{kind}-namespace")),
        }
    }
    pub fn net(&self) -> PathBuf {
        self.path(0, "net")
    }
    pub fn ipc(&self) -> PathBuf {
        self.path(1, "ipc")
    }
    pub fn uts(&self) -> PathBuf {
        self.path(2, "uts")
    }

    /// The pod's user namespace, if it has one (and the keeper still holds it).
    pub fn user(&self) -> Option<PathBuf> {
        let h = self.held()?;
        Some(PathBuf::from(format!("/proc/{}/fd/{}", h.keeper, h.user?)))
    }

    pub fn exist(&self) -> bool {
        self.held().is_some()
    }

    /// New namespaces from the keeper, with this hostname and loopback up; with `user_base`, owned
    /// by a new user namespace that maps the pod's 0…65535 to `user_base`… on the host.
    pub async fn create(&self, keeper: &Keeper, hostname: &str, user_base: Option<u32>) -> Result<(), SandboxError> {
        std::fs::create_dir_all(&self.dir).map_err(io(format!("creating {}", self.dir.display())))?;
        check_hostname(hostname)?;
        let request = match user_base {
            Some(base) => format!("new {} {hostname} {base}", self.key()),
            None => format!("new {} {hostname}", self.key()),
        };
        let reply = keeper.request(&request).await?;
        self.record(&reply, |h| h.user.is_some() == user_base.is_some())
    }

    /// Check the supervisor's answer (`ok <pid> <fds>` that `expected` accepts) and record it as
    /// this pod's namespaces (through a temporary file: a reader sees the old record or the new).
    fn record(&self, reply: &str, expected: impl FnOnce(Held) -> bool) -> Result<(), SandboxError> {
        let fds = reply.strip_prefix("ok ").ok_or_else(|| SandboxError {
            what: "the node's supervisor".into(),
            source: std::io::Error::other(reply.strip_prefix("err ").unwrap_or(reply).to_string()),
        })?;
        if !Held::parse(fds).is_some_and(expected) {
            return Err(SandboxError {
                what: "the node's supervisor".into(),
                source: std::io::Error::other(format!("unexpected answer {reply:?}")),
            });
        }
        let tmp = self.dir.join("ns.tmp");
        std::fs::write(&tmp, format!("{fds}\n")).map_err(io("recording the namespaces"))?;
        std::fs::rename(&tmp, self.dir.join("ns")).map_err(io("recording the namespaces"))?;
        Ok(())
    }

    /// Take over the namespaces `warm` holds (made ahead of any pod, see `warm`), renamed to
    /// this pod's and given its hostname; `warm`'s record goes.
    pub async fn claim(&self, keeper: &Keeper, warm: &PodNamespaces, hostname: &str) -> Result<(), SandboxError> {
        std::fs::create_dir_all(&self.dir).map_err(io(format!("creating {}", self.dir.display())))?;
        check_hostname(hostname)?;
        let before = warm.held().ok_or_else(|| SandboxError {
            what: format!("the warm sandbox {}", warm.key()),
            source: std::io::Error::other("its namespaces are gone"),
        })?;
        let reply = keeper
            .request(&format!("claim {} {} {hostname}", warm.key(), self.key()))
            .await?;
        self.record(&reply, |h| h == before)?;
        let _ = std::fs::remove_dir_all(&warm.dir);
        Ok(())
    }

    /// Let the keeper close them (the namespaces go with their last user) and forget them;
    /// keeps going past failures and reports all of them.
    pub async fn remove(&self, keeper: &Keeper) -> Result<(), Vec<SandboxError>> {
        let mut errors = Vec::new();
        let recorded = self.dir.join("ns").exists();
        if recorded && let Err(e) = keeper.request(&format!("del {}", self.key())).await {
            errors.push(e);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(SandboxError {
                    what: format!("removing {}", self.dir.display()),
                    source: e,
                });
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// A hostname goes to the keeper as one word of a line.
fn check_hostname(hostname: &str) -> Result<(), SandboxError> {
    if hostname.is_empty() || hostname.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SandboxError {
            what: "the pod's hostname".into(),
            source: std::io::Error::other(format!("{hostname:?} is not a hostname")),
        });
    }
    Ok(())
}

/// Run `f` on a fresh thread inside the network namespace at `netns` (to open sockets there:
/// a socket stays in the namespace it was made in).
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T, SandboxError> {
    let ns = std::fs::File::open(netns).map_err(|e| SandboxError {
        what: format!("opening {}", netns.display()),
        source: e,
    })?;
    std::thread::spawn(move || -> Result<T, SandboxError> {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(err("setns"))?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|_| {
        Err(SandboxError {
            what: "netns thread".into(),
            source: std::io::Error::other("panicked"),
        })
    })
}

/// A TCP connection made from inside the network namespace at `netns` (the socket stays there).
pub async fn connect_in(
    netns: &Path,
    addr: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> Result<tokio::net::TcpStream, String> {
    let netns = netns.to_path_buf();
    let stream = tokio::task::spawn_blocking(move || {
        in_netns(&netns, move || std::net::TcpStream::connect_timeout(&addr, timeout))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("dial tcp {addr}: {e}"))?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())
}
