//! Removing everything a pod had on the node. Best effort: every step runs even when an
//! earlier one failed or the thing is already gone, and every failure is reported.

use std::path::Path;

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

pub async fn teardown(
    ctx: &NodeCtx,
    uid: &str,
    dir: &Path,
    run_dir: &Path,
    ns: &PodNamespaces,
    ids: &[String],
) -> Vec<String> {
    let mut errors = Vec::new();
    for id in ids {
        if let Err(e) = ctx.runtime.delete(id).await {
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
    if let Err(e) = ctx.network.detach(uid, &ns.net()).await {
        errors.push(format!("network: {e}"));
    }
    if let Err(es) = ns.remove(&ctx.keeper).await {
        errors.extend(es.into_iter().map(|e| e.to_string()));
    }
    errors.extend(remove_cgroups(&ctx.cgroup_parent, uid).await);
    for d in [run_dir, dir] {
        if let Err(e) = std::fs::remove_dir_all(d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("removing {}: {e}", d.display()));
            }
        }
    }
    errors
}
