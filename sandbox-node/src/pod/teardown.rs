//! Removing everything a pod had on the node. Best effort: every step runs even when an
//! earlier one failed or the thing is already gone, and every failure is reported. A sandbox
//! start that failed part way gives back what it had made the same way ([`release`]), so the
//! retry starts clean: left behind, its `eth0` made every later CNI ADD fail with "interface
//! eth0 already exists".

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use nix::mount::MntFlags;

use crate::context::NodeCtx;
use crate::sandbox::PodNamespaces;

/// Unmount what the node mounted for one attempt: its rootfs and its subPath mounts. The
/// runtime has its own copies once the container runs.
pub fn unmount_bundle(bundle: &Path) -> Result<(), String> {
    let mut targets = vec![bundle.join("rootfs")];
    for dir in ["subpaths", "layers"] {
        targets.extend(
            std::fs::read_dir(bundle.join(dir))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path()),
        );
    }
    let mut errors = Vec::new();
    for t in targets {
        match nix::mount::umount2(&t, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => errors.push(format!("unmounting {}: {e}", t.display())),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The pod's cgroup directories in every controller, deepest first.
fn pod_cgroups(parent: &str, uid: &str) -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return dirs;
    };
    for ctl in controllers.flatten() {
        let dir = ctl.path().join(parent.trim_start_matches('/')).join(uid);
        if !dir.is_dir() {
            continue;
        }
        dirs.extend(
            std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir()),
        );
        dirs.push(dir);
    }
    dirs
}

/// Hand back the memory still charged to an empty memory cgroup (the page cache of the files
/// its processes read and wrote) before it is removed. A removed memory cgroup that still has
/// pages charged lives on, dying, until they are reclaimed, which on a machine with memory to
/// spare is never: two per pod (its own and its container's, which the pod's reclaims too),
/// and every later cgroup creation and stats walk of the kernel gets slower with their number.
/// Cgroup v1 empties it through `memory.force_empty`, v2 through `memory.reclaim`. A cgroup
/// that still has a process refuses, and may then linger as before.
fn reclaim_memory(dir: &Path) {
    let write = |file: &str, value: &str| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(file))
            .and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()))
    };
    if dir.join("memory.force_empty").exists() {
        let _ = write("memory.force_empty", "0");
    } else if let Ok(current) = std::fs::read_to_string(dir.join("memory.current")) {
        if current.trim() != "0" {
            let _ = write("memory.reclaim", current.trim());
        }
    }
}

/// Remove the pod's cgroups. A process still in one (an exec session's, on its way out)
/// keeps it busy: such processes are killed and removal tried again for a few seconds.
async fn remove_cgroups(parent: &str, uid: &str) -> Vec<String> {
    // Memory first, on a blocking thread: reclaiming writes dirty pages back.
    let dirs = pod_cgroups(parent, uid);
    let _ = tokio::task::spawn_blocking(move || dirs.iter().for_each(|d| reclaim_memory(d))).await;
    let mut errors = Vec::new();
    for attempt in 0..50 {
        errors.clear();
        for d in pod_cgroups(parent, uid) {
            for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            if let Err(e) = std::fs::remove_dir(&d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errors.push(format!("removing cgroup {}: {e}", d.display()));
                }
            }
        }
        if errors.is_empty() {
            break;
        }
        if attempt < 49 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    errors
}

/// What a pod's sandbox holds, or what a failed start got as far as making.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Made {
    /// A CNI ADD was run (whether or not it finished: DEL is safe on what is not there).
    pub network: bool,
    /// The pod's namespaces exist.
    pub namespaces: bool,
}

/// The two parts of a sandbox that outlive a failed start, behind a seam the tests fake.
#[async_trait]
pub trait SandboxParts: Send + Sync {
    async fn detach_network(&self) -> Result<(), String>;
    async fn remove_namespaces(&self) -> Result<(), Vec<String>>;
}

/// The node's own: CNI DEL through `ctx.network`, namespaces through the keeper.
pub struct LiveSandbox<'a> {
    pub ctx: &'a NodeCtx,
    /// The pod's CNI container id (its UID, or the key of the warm sandbox it took).
    pub net_id: &'a str,
    pub ns: &'a PodNamespaces,
}

#[async_trait]
impl SandboxParts for LiveSandbox<'_> {
    async fn detach_network(&self) -> Result<(), String> {
        self.ctx
            .network
            .detach(self.net_id, &self.ns.net())
            .await
            .map_err(|e| format!("network: {e}"))
    }
    async fn remove_namespaces(&self) -> Result<(), Vec<String>> {
        self.ns
            .remove(&self.ctx.keeper)
            .await
            .map_err(|es| es.into_iter().map(|e| e.to_string()).collect())
    }
}

/// Give back the network attachment and then the namespaces, in reverse of the order they were
/// made: CNI DEL needs the network namespace to find the pod's interfaces in. Both steps run
/// whatever the first did; every failure is returned.
pub async fn release(parts: &dyn SandboxParts, made: Made) -> Vec<String> {
    let mut errors = Vec::new();
    if made.network {
        if let Err(e) = parts.detach_network().await {
            errors.push(e);
        }
    }
    if made.namespaces {
        if let Err(es) = parts.remove_namespaces().await {
            errors.extend(es);
        }
    }
    errors
}

/// A pod's data directory and run directory.
pub struct Dirs<'a> {
    pub data: &'a Path,
    pub run: &'a Path,
}

pub async fn teardown(
    ctx: &NodeCtx,
    uid: &str,
    net_id: &str,
    dirs: Dirs<'_>,
    ns: &PodNamespaces,
    ids: &[String],
) -> Vec<String> {
    let Dirs {
        data: dir,
        run: run_dir,
    } = dirs;
    let mut errors = Vec::new();
    // A microVM goes first: its containers go with it, and QEMU lets go of the shared files.
    let vm_dir = ctx.vm_dir(uid);
    match ctx.vms.remove(uid) {
        Some(vm) => {
            if let Err(e) = vm.shutdown().await {
                errors.push(format!("stopping the pod's VM: {e}"));
            }
        }
        None => {
            if let Err(e) = crate::vm::qemu::stop(&vm_dir, Duration::from_secs(3)).await {
                errors.push(format!("stopping the pod's VM: {e}"));
            }
        }
    }
    if crate::vm::qemu::running_pid(&vm_dir).is_none() {
        let _ = std::fs::remove_dir_all(&vm_dir);
    }
    let runtime = ctx.runtime_for(uid);
    for id in ids {
        if let Err(e) = runtime.delete(id).await {
            errors.push(e.to_string());
        }
    }
    // Every attempt's rootfs mount (in the data directory for attempts started before bundles
    // moved to the run directory).
    for containers in [run_dir.join("containers"), dir.join("containers")] {
        for c in std::fs::read_dir(&containers).into_iter().flatten().flatten() {
            for a in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                if let Err(e) = unmount_bundle(&a.path()) {
                    errors.push(e);
                }
            }
        }
    }
    let all = Made {
        network: true,
        namespaces: true,
    };
    errors.extend(release(&LiveSandbox { ctx, net_id, ns }, all).await);
    errors.extend(remove_cgroups(&ctx.cgroup_parent, uid).await);
    // CSI volumes: unpublished (and unstaged when no other pod has them) before anything of the
    // pod's directory goes; one that could not be is still mounted there, so the directory
    // stays (its data must not be removed through the mount) and the error is reported.
    let csi_errors = ctx.csi.unmount_pod(&ctx.pods_dir, dir).await;
    ctx.volumes_changed.notify_one();
    let keep_data = !csi_errors.is_empty();
    errors.extend(csi_errors);
    // Memory-backed emptyDirs are tmpfs mounts.
    if !keep_data {
        for v in std::fs::read_dir(dir.join("volumes")).into_iter().flatten().flatten() {
            match nix::mount::umount2(&v.path(), MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => errors.push(format!("unmounting {}: {e}", v.path().display())),
            }
        }
    }
    for d in [run_dir, dir] {
        if keep_data && d == dir {
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("removing {}: {e}", d.display()));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records the calls; fails the ones it is told to.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<&'static str>>,
        fail_network: bool,
    }

    #[async_trait]
    impl SandboxParts for Fake {
        async fn detach_network(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("cni del");
            if self.fail_network {
                return Err("network: CNI plugin eni-cni DEL: busy".into());
            }
            Ok(())
        }
        async fn remove_namespaces(&self) -> Result<(), Vec<String>> {
            self.calls.lock().unwrap().push("remove netns");
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_network_goes_before_its_namespace_and_a_failure_stops_nothing() {
        let all = Made {
            network: true,
            namespaces: true,
        };
        let f = Fake::default();
        assert!(release(&f, all).await.is_empty());
        assert_eq!(*f.calls.lock().unwrap(), ["cni del", "remove netns"]);

        let f = Fake {
            fail_network: true,
            ..Default::default()
        };
        let errors = release(&f, all).await;
        assert_eq!(errors, ["network: CNI plugin eni-cni DEL: busy"]);
        assert_eq!(*f.calls.lock().unwrap(), ["cni del", "remove netns"]);
    }

    #[tokio::test]
    async fn only_what_was_made_is_undone() {
        let f = Fake::default();
        let only_ns = Made {
            network: false,
            namespaces: true,
        };
        assert!(release(&f, only_ns).await.is_empty());
        assert_eq!(*f.calls.lock().unwrap(), ["remove netns"]);
        let f = Fake::default();
        assert!(release(&f, Made::default()).await.is_empty());
        assert!(f.calls.lock().unwrap().is_empty());
    }
}
