//! Removing everything a pod had on the node. Best effort: every step runs even when an
//! earlier one failed or the thing is already gone, and every failure is reported.

use std::path::Path;

use nix::mount::MntFlags;

use crate::node::NodeCtx;
use crate::sandbox::PodNamespaces;

pub fn unmount_rootfs(bundle: &Path) -> Result<(), String> {
    let rootfs = bundle.join("rootfs");
    match nix::mount::umount2(&rootfs, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!("unmounting {}: {e}", rootfs.display())),
    }
}

/// Remove the pod's cgroup directories in every controller (deepest first).
fn remove_cgroups(parent: &str, uid: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else { return errors };
    for ctl in controllers.flatten() {
        let dir = ctl.path().join(parent.trim_start_matches('/')).join(uid);
        if !dir.is_dir() {
            continue;
        }
        let mut subdirs: Vec<std::path::PathBuf> = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        subdirs.push(dir);
        for d in subdirs {
            if let Err(e) = std::fs::remove_dir(&d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errors.push(format!("removing cgroup {}: {e}", d.display()));
                }
            }
        }
    }
    errors
}

pub async fn teardown(ctx: &NodeCtx, uid: &str, dir: &Path, ns: &PodNamespaces, ids: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    for id in ids {
        if let Err(e) = ctx.runtime.delete(id).await {
            errors.push(e.to_string());
        }
    }
    // Every attempt's rootfs mount.
    let containers = dir.join("containers");
    for c in std::fs::read_dir(&containers).into_iter().flatten().flatten() {
        for a in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
            if let Err(e) = unmount_rootfs(&a.path()) {
                errors.push(e);
            }
        }
    }
    if let Err(e) = ctx.network.detach(uid, &ns.net()).await {
        errors.push(format!("network: {e}"));
    }
    if let Err(es) = ns.remove(&ctx.keeper).await {
        errors.extend(es.into_iter().map(|e| e.to_string()));
    }
    errors.extend(remove_cgroups(&ctx.cgroup_parent, uid));
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            errors.push(format!("removing {}: {e}", dir.display()));
        }
    }
    errors
}
