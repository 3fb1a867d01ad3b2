//! The pod's local storage against its limits, as kubelet's eviction manager measures it: each
//! emptyDir against its `sizeLimit`, each container's writable layer and logs against its
//! `ephemeral-storage` limit, and the pod's total against the sum of its containers' limits
//! when every container sets one. A pod over any of them is evicted with kubelet's message,
//! so a tenant cannot fill the node's disk.
//!
//! Usage is the blocks allocated, walked by descriptor without following links (a link the
//! pod planted never makes the node count, or open, anything outside the pod).

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use nodeless_types::quantity::parse_quantity;
use rustix::fs::{AtFlags, FileType, OFlags};

/// How often the node measures a pod that has a limit.
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Bytes allocated under `dir` (0 when it does not exist).
pub fn usage(dir: &Path) -> u64 {
    let Ok(fd) = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return 0;
    };
    walk(fd, 0)
}

fn walk(dir: std::os::fd::OwnedFd, depth: u32) -> u64 {
    // Deeper than any real tree; a pod that nests further only hides what is below from the
    // count, never makes the node recurse without end.
    if depth > 256 {
        return 0;
    }
    let Ok(entries) = rustix::fs::Dir::read_from(&dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let Ok(st) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        total += st.st_blocks as u64 * 512;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if let Ok(sub) = rustix::fs::openat(
                &dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            ) {
                total += walk(sub, depth + 1);
            }
        }
    }
    total
}

/// What the pod may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// emptyDir volumes with a `sizeLimit`: (name, bytes, as written).
    pub empty_dirs: Vec<(String, u64, String)>,
    /// Containers with an `ephemeral-storage` limit: (name, bytes, as written).
    pub containers: Vec<(String, u64, String)>,
    /// The pod's total, when every container has a limit.
    pub pod: Option<u64>,
}

impl Limits {
    pub fn of(pod: &Pod) -> Result<Limits, String> {
        let spec = pod.spec.as_ref();
        let mut out = Limits::default();
        for v in spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
            if let Some(q) = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref()) {
                let bytes = parse_quantity(&q.0)
                    .map_err(|e| format!("volume {:?} sizeLimit: {e}", v.name))?
                    .units_ceil()
                    .max(0) as u64;
                out.empty_dirs.push((v.name.clone(), bytes, q.0.clone()));
            }
        }
        let containers: Vec<_> = spec
            .map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()).collect())
            .unwrap_or_default();
        for c in &containers {
            if let Some(q) = c
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("ephemeral-storage"))
            {
                let bytes = parse_quantity(&q.0)
                    .map_err(|e| format!("container {:?} ephemeral-storage: {e}", c.name))?
                    .units_ceil()
                    .max(0) as u64;
                out.containers.push((c.name.clone(), bytes, q.0.clone()));
            }
        }
        if !containers.is_empty() && out.containers.len() == containers.len() {
            out.pod = Some(out.containers.iter().map(|c| c.1).sum());
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.empty_dirs.is_empty() && self.containers.is_empty()
    }
}

/// Why the pod must be evicted, if it must: the first limit it is over, in kubelet's words.
/// `volume_dir` is where its emptyDirs live; `container_dirs` each container's current writable
/// layer and log directory.
pub fn over(limits: &Limits, volume_dir: &Path, container_dirs: &[(String, PathBuf)]) -> Option<String> {
    for (name, bytes, written) in &limits.empty_dirs {
        if usage(&volume_dir.join(name)) > *bytes {
            return Some(format!(
                "Usage of EmptyDir volume \"{name}\" exceeds the limit \"{written}\". "
            ));
        }
    }
    let mut total = 0;
    for (name, dir) in container_dirs {
        let used = usage(dir);
        total += used;
        if let Some((_, bytes, written)) = limits.containers.iter().find(|c| c.0 == *name) {
            if used > *bytes {
                return Some(format!(
                    "Container {name} exceeded its local ephemeral storage limit \"{written}\". "
                ));
            }
        }
    }
    // The pod's local volumes count toward its total, as kubelet counts them.
    if limits.pod.is_some() {
        total += usage(volume_dir);
    }
    match limits.pod {
        Some(pod) if total > pod => Some(format!(
            "Pod ephemeral local storage usage exceeds the total limit of containers {pod}. "
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_blocks_and_never_follows_links() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/f"), vec![1u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("/usr", d.join("link")).unwrap();
        let u = usage(&d);
        assert!((100_000..200_000).contains(&u), "{u}");
        assert_eq!(usage(&t.path().join("missing")), 0);
    }

    #[test]
    fn limits_and_the_first_one_exceeded() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c", "resources": {"limits": {"ephemeral-storage": "50Ki"}}}],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "10Ki"}}, {"name": "free", "emptyDir": {}}]}}))
        .unwrap();
        let l = Limits::of(&pod).unwrap();
        assert_eq!(
            l.empty_dirs,
            vec![("scratch".to_string(), 10 * 1024, "10Ki".to_string())]
        );
        assert_eq!(l.pod, Some(50 * 1024));
        let t = tempfile::tempdir().unwrap();
        let (vols, layer) = (t.path().join("volumes"), t.path().join("c"));
        std::fs::create_dir_all(vols.join("scratch")).unwrap();
        std::fs::create_dir_all(&layer).unwrap();
        let dirs = vec![("c".to_string(), layer.clone())];
        assert_eq!(over(&l, &vols, &dirs), None);
        std::fs::write(vols.join("scratch/big"), vec![1u8; 20 * 1024]).unwrap();
        assert!(
            over(&l, &vols, &dirs)
                .unwrap()
                .contains("EmptyDir volume \"scratch\" exceeds the limit \"10Ki\"")
        );
        std::fs::remove_file(vols.join("scratch/big")).unwrap();
        std::fs::write(layer.join("big"), vec![1u8; 80 * 1024]).unwrap();
        assert!(
            over(&l, &vols, &dirs)
                .unwrap()
                .contains("Container c exceeded its local ephemeral storage limit \"50Ki\"")
        );
    }
}
