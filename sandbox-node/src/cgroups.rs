//! The host's cgroup layout, and the one change the node makes to it.
//!
//! A cgroups v1 "hybrid" host mounts the v1 controllers under `/sys/fs/cgroup/<controller>` and
//! a v2 hierarchy at `/sys/fs/cgroup/unified`. A controller that no v1 hierarchy claims stays
//! with v2 (on Debian's hybrid hosts that is often `hugetlb`), and crun then refuses to run any
//! container: "cgroups in hybrid mode not supported, drop all controllers from cgroupv2".
//! [`bind_v2_controllers`] gives each such controller its own v1 hierarchy, which is the layout
//! systemd's hybrid mode sets up itself; afterwards crun and runc both apply limits through v1.

use std::path::{Path, PathBuf};

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
        let (_, Some(target), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
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
        Layout::Hybrid {
            v2_controllers: unified_controllers().split_whitespace().map(str::to_string).collect(),
        }
    } else {
        Layout::Legacy
    }
}

/// This host's layout.
pub fn layout() -> Layout {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    parse_layout(&mounts, || {
        std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default()
    })
}

/// On a hybrid host, mount a v1 hierarchy at `/sys/fs/cgroup/<controller>` for every controller
/// the v2 hierarchy still holds (the kernel moves a controller to v1 when nothing in v2 uses it).
/// Returns the controllers moved; any other layout is left alone.
pub fn bind_v2_controllers() -> Result<Vec<String>, String> {
    let Layout::Hybrid { v2_controllers } = layout() else {
        return Ok(Vec::new());
    };
    let root = Path::new("/sys/fs/cgroup");
    for c in &v2_controllers {
        let target = root.join(c);
        std::fs::create_dir_all(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
        nix::mount::mount(
            Some("cgroup"),
            &target,
            Some("cgroup"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
            Some(c.as_str()),
        )
        .map_err(|e| format!("mounting the {c} controller as cgroups v1 at {}: {e}", target.display()))?;
    }
    match layout() {
        Layout::Hybrid { v2_controllers: left } if !left.is_empty() => {
            Err(format!("the cgroups v2 hierarchy still holds {}", left.join(", ")))
        }
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
    bases.extend(
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir()),
    );
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
            std::fs::write(level.join("cgroup.subtree_control"), "+pids")
                .map_err(|e| format!("enabling pids in {}: {e}", level.display()))?;
            level.push(part);
            std::fs::create_dir_all(&level).map_err(|e| format!("{}: {e}", level.display()))?;
        }
        std::fs::write(level.join("cgroup.subtree_control"), "+pids")
            .map_err(|e| format!("enabling pids in {}: {e}", level.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating the pod's pids cgroup {}: {e}", dir.display()))?;
    std::fs::write(dir.join("pids.max"), max.to_string())
        .map_err(|e| format!("limiting the pod's processes in {}: {e}", dir.display()))
}

/// Put a process the node runs for a pod (a microVM's QEMU) into the pod's cgroups, as a child
/// `<leaf>` beside its containers': the pod's process cap and the cap on all pods together then
/// hold for it, and teardown removes it with the pod's.
pub fn join_pod(parent: &str, uid: &str, leaf: &str, pid: u32) -> Result<(), String> {
    let rel = Path::new(parent.trim_start_matches('/')).join(uid).join(leaf);
    let dirs: Vec<PathBuf> = match layout() {
        Layout::Unified => vec![Path::new("/sys/fs/cgroup").join(&rel)],
        _ => ["memory", "cpu", "pids"]
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join(&rel))
            .collect(),
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("moving {pid} into {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// What the node keeps for itself out of the pods' reach: memory (the larger of 512 MiB and 5 %
/// of the machine's) and a quarter of one CPU.
const RESERVED_MEMORY_MIN: u64 = 512 << 20;
const RESERVED_MILLICPU: u64 = 250;

/// The caps on all pods of a node together, from the machine's size: (memory bytes, CPU
/// millicores).
pub fn pods_caps(mem_total: u64, cpus: u64) -> (u64, u64) {
    let reserve = RESERVED_MEMORY_MIN.max(mem_total / 20);
    (
        mem_total.saturating_sub(reserve).max(RESERVED_MEMORY_MIN),
        (cpus * 1000).saturating_sub(RESERVED_MILLICPU).max(100),
    )
}

/// Cap the memory and CPU of every pod of the node together at their cgroup `parent`, so that
/// pods cannot starve the node's own processes (kubelet's `system-reserved`). Returns the caps.
pub fn cap_pods(parent: &str) -> Result<(u64, u64), String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
    let mem_total = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .ok_or("/proc/meminfo has no MemTotal")?
        * 1024;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let (memory, millicpu) = pods_caps(mem_total, cpus);
    let rel = Path::new(parent.trim_start_matches('/'));
    let write = |dir: &Path, file: &str, value: String| -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join(file), &value)
            .map_err(|e| format!("writing {value} to {}: {e}", dir.join(file).display()))
    };
    let period = 100_000u64;
    let quota = millicpu * period / 1000;
    if layout() == Layout::Unified {
        let mut level = Path::new("/sys/fs/cgroup").to_path_buf();
        for part in rel.components() {
            write(&level, "cgroup.subtree_control", "+memory +cpu".into())?;
            level.push(part);
        }
        write(&level, "memory.max", memory.to_string())?;
        write(&level, "cpu.max", format!("{quota} {period}"))?;
    } else {
        write(
            &Path::new("/sys/fs/cgroup/memory").join(rel),
            "memory.limit_in_bytes",
            memory.to_string(),
        )?;
        let cpu = Path::new("/sys/fs/cgroup/cpu").join(rel);
        write(&cpu, "cpu.cfs_period_us", period.to_string())?;
        write(&cpu, "cpu.cfs_quota_us", quota.to_string())?;
    }
    Ok((memory, millicpu))
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
        assert_eq!(
            parse_layout("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", || unreachable!()),
            Layout::Unified
        );
        assert_eq!(
            parse_layout(HYBRID, || "hugetlb\n".into()),
            Layout::Hybrid {
                v2_controllers: vec!["hugetlb".into()]
            }
        );
        assert_eq!(
            parse_layout("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n", || unreachable!()),
            Layout::Legacy
        );
    }

    #[test]
    fn the_node_keeps_a_reserve() {
        assert_eq!(pods_caps(24 << 30, 2), ((24u64 << 30) - (24u64 << 30) / 20, 1750));
        assert_eq!(pods_caps(4 << 30, 1), ((4u64 << 30) - (512 << 20), 750));
        // A tiny machine still lets pods run.
        assert_eq!(pods_caps(256 << 20, 0), (512 << 20, 100));
    }

    #[test]
    fn crun_needs_an_empty_v2_hierarchy_on_hybrid_hosts() {
        assert!(!crun_supported(&parse_layout(HYBRID, || "hugetlb".into())));
        assert!(crun_supported(&parse_layout(HYBRID, String::new)));
        assert!(crun_supported(&Layout::Unified));
        assert!(crun_supported(&Layout::Legacy));
    }
}
