//! A pod's shared namespaces (network, IPC, UTS), kept alive without any process by bind
//! mounts of their nsfs files, the way `ip netns add` and CNI runtimes keep network namespaces.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNamespaces {
    pub dir: PathBuf,
}

impl PodNamespaces {
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn net(&self) -> PathBuf {
        self.dir.join("net")
    }
    pub fn ipc(&self) -> PathBuf {
        self.dir.join("ipc")
    }
    pub fn uts(&self) -> PathBuf {
        self.dir.join("uts")
    }

    /// Whether all three namespaces are still held by their bind mounts.
    pub fn exist(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        [self.net(), self.ipc(), self.uts()].iter().all(|p| mounts.contains(&format!(" {} ", p.display())))
    }

    /// Make new namespaces with this hostname and loopback up, pinned under `dir`.
    /// Runs on a thread of its own: unsharing changes only the calling thread.
    pub fn create(&self, hostname: &str) -> Result<(), SandboxError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| SandboxError { what: format!("creating {}", self.dir.display()), source: e })?;
        let me = self.clone();
        let hostname = hostname.to_string();
        let made = std::thread::spawn(move || -> Result<(), SandboxError> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS).map_err(err("unshare"))?;
            nix::unistd::sethostname(&hostname).map_err(err("sethostname"))?;
            let tid = nix::unistd::gettid();
            for (kind, path) in [("net", me.net()), ("ipc", me.ipc()), ("uts", me.uts())] {
                std::fs::File::create(&path).map_err(|e| SandboxError { what: format!("creating {}", path.display()), source: e })?;
                let src = format!("/proc/self/task/{tid}/ns/{kind}");
                nix::mount::mount(Some(src.as_str()), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .map_err(err(format!("pinning the {kind} namespace at {}", path.display())))?;
            }
            // A child forked from this thread starts in its namespaces.
            let up = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status();
            match up {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(SandboxError { what: "ip link set lo up".into(), source: std::io::Error::other(format!("exited with {s}")) }),
                Err(e) => Err(SandboxError { what: "running ip".into(), source: e }),
            }
        })
        .join()
        .unwrap_or_else(|_| Err(SandboxError { what: "namespace thread".into(), source: std::io::Error::other("panicked") }));
        if made.is_err() {
            let _ = self.remove();
        }
        made
    }

    /// Unpin and delete; keeps going past failures and reports all of them.
    pub fn remove(&self) -> Result<(), Vec<SandboxError>> {
        let mut errors = Vec::new();
        for path in [self.net(), self.ipc(), self.uts()] {
            if !path.exists() {
                continue;
            }
            match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => errors.push(SandboxError { what: format!("unmounting {}", path.display()), source: e.into() }),
            }
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errors.push(SandboxError { what: format!("removing {}", path.display()), source: e });
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
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
