//! Where the cgroup v2 hierarchy is mounted: the service balancer attaches to the pods' cgroup
//! under it, and the datapath's socket programs to its root. A leaf both reach for.

use std::path::PathBuf;

/// The mount point of the cgroup v2 hierarchy: `/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .collect();
    found.sort_by_key(|p| p.components().count());
    found.into_iter().next()
}
