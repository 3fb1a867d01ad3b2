//! The host's cgroup layout, and the one change the node makes to it.
//!
//! A cgroups v1 "hybrid" host mounts the v1 controllers under `/sys/fs/cgroup/<controller>` and
//! a v2 hierarchy at `/sys/fs/cgroup/unified`. A controller that no v1 hierarchy claims stays
//! with v2 (on Debian's hybrid hosts that is often `hugetlb`), and crun then refuses to run any
//! container: "cgroups in hybrid mode not supported, drop all controllers from cgroupv2".
//! [`bind_v2_controllers`] gives each such controller its own v1 hierarchy, which is the layout
//! systemd's hybrid mode sets up itself; afterwards crun and runc both apply limits through v1.

use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cgroups v2 only (`/sys/fs/cgroup` is cgroup2).
    Unified,
    /// v1 controllers plus a v2 hierarchy at `/sys/fs/cgroup/unified`; `v2_controllers` are the
    /// controllers that hierarchy still holds.
    Hybrid { v2_controllers: Vec<String> },
    /// v1 only.
    Legacy,
}

/// The layout from a `/proc/self/mounts` text and the v2 hierarchy's `cgroup.controllers`.
pub fn parse_layout(mounts: &str, unified_controllers: impl FnOnce() -> String) -> Layout {
    let mut unified_at_root = false;
    let mut unified_beside = false;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (_, Some(target), Some(fstype)) = (f.next(), f.next(), f.next()) else { continue };
        if fstype != "cgroup2" {
            continue;
        }
        match target {
            "/sys/fs/cgroup" => unified_at_root = true,
            "/sys/fs/cgroup/unified" => unified_beside = true,
            _ => {}
        }
    }
    if unified_at_root {
        Layout::Unified
    } else if unified_beside {
        Layout::Hybrid { v2_controllers: unified_controllers().split_whitespace().map(str::to_string).collect() }
    } else {
        Layout::Legacy
    }
}

/// This host's layout.
pub fn layout() -> Layout {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    parse_layout(&mounts, || std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default())
}

/// On a hybrid host, mount a v1 hierarchy at `/sys/fs/cgroup/<controller>` for every controller
/// the v2 hierarchy still holds (the kernel moves a controller to v1 when nothing in v2 uses it).
/// Returns the controllers moved; any other layout is left alone.
pub fn bind_v2_controllers() -> Result<Vec<String>, String> {
    let Layout::Hybrid { v2_controllers } = layout() else { return Ok(Vec::new()) };
    let root = Path::new("/sys/fs/cgroup");
    for c in &v2_controllers {
        let target = root.join(c);
        std::fs::create_dir_all(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
        nix::mount::mount(Some("cgroup"), &target, Some("cgroup"), nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC, Some(c.as_str()))
            .map_err(|e| format!("mounting the {c} controller as cgroups v1 at {}: {e}", target.display()))?;
    }
    match layout() {
        Layout::Hybrid { v2_controllers: left } if !left.is_empty() => Err(format!("the cgroups v2 hierarchy still holds {}", left.join(", "))),
        _ => Ok(v2_controllers),
    }
}

/// Remove the cgroup `parent` (e.g. `/nodeless/<node>`, as given to the runtime) and then each
/// level above it, in every hierarchy, as far as they are empty: the kernel refuses to remove a
/// cgroup that still holds cgroups or processes, so the pods of a node still running (or of
/// another node) keep theirs. Best effort: nothing is reported.
pub fn remove_empty(parent: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut bases = vec![root.to_path_buf()];
    bases.extend(std::fs::read_dir(root).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    let rel = Path::new(parent.trim_start_matches('/'));
    for base in &bases {
        for level in rel.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            match std::fs::remove_dir(base.join(level)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => break,
            }
        }
    }
}

/// Processes and threads one pod may have at once, all its containers together (kubelet's
/// `podPidsLimit`, which a serverless platform cannot leave unlimited): a fork bomb ends here,
/// inside its pod, far below the node's own limit.
pub const POD_PIDS_MAX: i64 = 4096;

/// The pod's own cgroup in the pids controller: `<parent>/<uid>` in the v1 `pids` hierarchy, or
/// in the unified one (where `pids` is enabled for every level above it first).
fn pod_pids_dir(layout: &Layout, parent: &str, uid: &str) -> std::path::PathBuf {
    let rel = Path::new(parent.trim_start_matches('/')).join(uid);
    match layout {
        Layout::Unified => Path::new("/sys/fs/cgroup").join(rel),
        _ => Path::new("/sys/fs/cgroup/pids").join(rel),
    }
}

/// Cap the processes of the pod `uid` (its cgroup under `parent`, which the runtime then puts
/// each container's cgroup below) at `max`.
pub fn limit_pod_pids(parent: &str, uid: &str, max: i64) -> Result<(), String> {
    let layout = layout();
    let dir = pod_pids_dir(&layout, parent, uid);
    if layout == Layout::Unified {
        let mut level = Path::new("/sys/fs/cgroup").to_path_buf();
        for part in Path::new(parent.trim_start_matches('/')).components() {
            std::fs::write(level.join("cgroup.subtree_control"), "+pids").map_err(|e| format!("enabling pids in {}: {e}", level.display()))?;
            level.push(part);
            std::fs::create_dir_all(&level).map_err(|e| format!("{}: {e}", level.display()))?;
        }
        std::fs::write(level.join("cgroup.subtree_control"), "+pids").map_err(|e| format!("enabling pids in {}: {e}", level.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating the pod's pids cgroup {}: {e}", dir.display()))?;
    std::fs::write(dir.join("pids.max"), max.to_string()).map_err(|e| format!("limiting the pod's processes in {}: {e}", dir.display()))
}

/// Whether crun can run containers on this layout.
pub fn crun_supported(layout: &Layout) -> bool {
    !matches!(layout, Layout::Hybrid { v2_controllers } if !v2_controllers.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";

    #[test]
    fn layouts_are_told_apart() {
        assert_eq!(parse_layout("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", || unreachable!()), Layout::Unified);
        assert_eq!(parse_layout(HYBRID, || "hugetlb\n".into()), Layout::Hybrid { v2_controllers: vec!["hugetlb".into()] });
        assert_eq!(parse_layout("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n", || unreachable!()), Layout::Legacy);
    }

    #[test]
    fn crun_needs_an_empty_v2_hierarchy_on_hybrid_hosts() {
        assert!(!crun_supported(&parse_layout(HYBRID, || "hugetlb".into())));
        assert!(crun_supported(&parse_layout(HYBRID, String::new)));
        assert!(crun_supported(&Layout::Unified));
        assert!(crun_supported(&Layout::Legacy));
    }
}
