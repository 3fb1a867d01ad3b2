//! A user namespace per pod: root in the pod is an unprivileged 65536-id range on the host, as
//! Kubernetes' `hostUsers: false` gives it. This module decides whether a pod gets one, hands out
//! the ranges (from 1<<20 up, one per pod, never one still held: a pod adopted after a restart
//! keeps the range saved in its state), and shifts the ownership of what the pod must write.
//!
//! The rootfs: each image layer is bind-mounted *idmapped* through the pod's user namespace
//! (`open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)`, the call containerd and crun make), and the
//! overlay is built on those views, so that a file the image gives to uid n is uid n in the pod
//! and `base + n` on the host, at a constant cost per layer (about 0.2 ms) whatever the image
//! holds; the layers on disk stay shared and owned by the host's ids. Only the overlay's upper
//! directory is given to the pod. Where the layers' filesystem cannot be idmapped (the kernel or
//! the filesystem refuses), the node falls back to a shift: the overlay is mounted with
//! `metacopy=on` and every entry chowned into the pod's range before the container starts (with
//! metacopy a chown copies up the inode's metadata only, never its data): the same ownership,
//! at about 7 ms of the node's CPU per busybox rootfs (280 entries) and more for larger images.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use rustix::fs::{AtFlags, RawMode};

/// Ids per pod: 0…65535 inside, as containerd and Kubernetes map a pod.
pub const RANGE_SIZE: u32 = 65536;
/// The first range's host base: above any uid a distribution hands out (and above the 16-bit
/// ids of old software).
pub const FIRST_BASE: u32 = 1 << 20;
/// Ranges up to 2^32 - 65536: 65,520 pods.
const LAST_BASE: u32 = u32::MAX - RANGE_SIZE + 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsernsError {
    #[error("every user namespace range of this node is held ({held} pods)")]
    Exhausted { held: usize },
    #[error(
        "spec.hostUsers: true is not allowed on this platform: every pod runs in its own user namespace, so that root in a pod is not root on the node"
    )]
    HostUsersRefused,
    #[error(
        "spec.hostUsers: false asks for a user namespace, and this node runs pods without them (it was started with --no-user-namespaces)"
    )]
    Unavailable,
}

/// Whether `pod` runs in a user namespace on a node where they are `enabled`: the default when
/// enabled; `hostUsers: true` is refused either way (the platform never shares the host's ids),
/// and `hostUsers: false` where they are off fails rather than run without one.
pub fn wants_user_namespace(pod: &Pod, enabled: bool) -> Result<bool, UsernsError> {
    match (pod.spec.as_ref().and_then(|s| s.host_users), enabled) {
        (Some(true), _) => Err(UsernsError::HostUsersRefused),
        (Some(false), false) => Err(UsernsError::Unavailable),
        (_, enabled) => Ok(enabled),
    }
}

/// The host id ranges held by the node's pods.
#[derive(Debug, Default)]
pub struct IdRanges {
    held: Mutex<BTreeSet<u32>>,
}

impl IdRanges {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lowest free range's base.
    pub fn allocate(&self) -> Result<u32, UsernsError> {
        let mut held = self.lock();
        let mut base = FIRST_BASE;
        for h in held.iter() {
            if *h > base {
                break;
            }
            if *h == base {
                base = match base.checked_add(RANGE_SIZE) {
                    Some(b) if b <= LAST_BASE => b,
                    _ => return Err(UsernsError::Exhausted { held: held.len() }),
                };
            }
        }
        held.insert(base);
        Ok(base)
    }

    /// Mark a range as held (a pod adopted after a restart, with its saved range).
    pub fn hold(&self, base: u32) {
        self.lock().insert(base);
    }

    pub fn release(&self, base: u32) {
        self.lock().remove(&base);
    }
}

/// Give the pod's root (host `base`) a file or directory the node made for it.
pub fn give_to_pod(path: &Path, base: u32) -> std::io::Result<()> {
    let id = Some(rustix::fs::Uid::from_raw(base));
    let gid = Some(rustix::fs::Gid::from_raw(base));
    rustix::fs::chownat(rustix::fs::CWD, path, id, gid, AtFlags::SYMLINK_NOFOLLOW).map_err(std::io::Error::from)
}

/// Idmapped views of image layers, attached at `<at>/<i>` for as long as the value lives: an
/// overlay mounted on them keeps its own private clones, so they are detached (and their mount
/// points removed) when this is dropped.
#[derive(Debug)]
pub struct IdmappedLayers {
    pub paths: Vec<std::path::PathBuf>,
}

impl IdmappedLayers {
    /// Bind each of `layers` at `<at>/<i>`, idmapped by the user namespace at `userns` (its
    /// 0…65535 are the host's `base`…). Any failure leaves nothing attached.
    pub fn mount(layers: &[std::path::PathBuf], userns: &Path, at: &Path) -> std::io::Result<IdmappedLayers> {
        use rustix::mount::{MoveMountFlags, OpenTreeFlags};
        let ns = std::fs::File::open(userns)?;
        std::fs::create_dir_all(at)?;
        let mut made = IdmappedLayers {
            paths: Vec::with_capacity(layers.len()),
        };
        for (i, layer) in layers.iter().enumerate() {
            let tree = rustix::mount::open_tree(
                rustix::fs::CWD,
                layer,
                OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
            )?;
            composefs_ioctls::mount::mount_setattr_idmap(&tree, &ns)?;
            let point = at.join(i.to_string());
            std::fs::create_dir(&point).or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            rustix::mount::move_mount(
                tree.as_fd(),
                c"",
                rustix::fs::CWD,
                &point,
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )?;
            made.paths.push(point);
        }
        Ok(made)
    }
}

impl Drop for IdmappedLayers {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = rustix::mount::unmount(
                p,
                rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
            );
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Shift every entry under the mounted rootfs `root` from host id `n` to `base + n` (ids past
/// the range go to the pod's nobody, 65534), without following a link: the image is untrusted,
/// and each directory is opened beneath the last one with `O_NOFOLLOW`. chown clears set-id
/// bits, so they are put back. Returns how many entries were shifted.
pub fn shift_rootfs(root: &Path, base: u32) -> std::io::Result<usize> {
    crate::beneath::walk(root, |dir, name| {
        shift_entry(dir, Some(name).filter(|n| !n.is_empty()), base)
    })
}

/// The pod's id for host id `id` (from an image layer).
fn shifted(id: u32, base: u32) -> u32 {
    base + if id < RANGE_SIZE { id } else { 65534 }
}

/// Shift one entry (`name` in `dir`, or `dir` itself); whether it is a directory.
fn shift_entry(dir: &OwnedFd, name: Option<&std::ffi::CStr>, base: u32) -> std::io::Result<bool> {
    let name: &std::ffi::CStr = name.unwrap_or(c"");
    let flags = if name.is_empty() {
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    let st = rustix::fs::statat(dir.as_fd(), name, flags)?;
    let (uid, gid) = (shifted(st.st_uid, base), shifted(st.st_gid, base));
    rustix::fs::chownat(
        dir.as_fd(),
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        flags,
    )?;
    let mode = st.st_mode as RawMode;
    let kind = rustix::fs::FileType::from_raw_mode(mode);
    if kind == rustix::fs::FileType::RegularFile && mode & 0o6000 != 0 {
        // chmod of a name could follow a link planted since the stat.
        crate::beneath::chmod_no_follow(dir, name, mode)?;
    }
    Ok(kind == rustix::fs::FileType::Directory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn ranges_are_disjoint_and_reused_only_when_released() {
        let r = IdRanges::default();
        let a = r.allocate().unwrap();
        let b = r.allocate().unwrap();
        assert_eq!(a, FIRST_BASE);
        assert_eq!(b, FIRST_BASE + RANGE_SIZE);
        // A pod adopted after a restart keeps its range; nobody else gets it.
        r.hold(FIRST_BASE + 2 * RANGE_SIZE);
        assert_eq!(r.allocate().unwrap(), FIRST_BASE + 3 * RANGE_SIZE);
        r.release(a);
        assert_eq!(r.allocate().unwrap(), a);
        assert_eq!(r.allocate().unwrap(), FIRST_BASE + 4 * RANGE_SIZE);
    }

    #[test]
    fn ranges_run_out_with_an_error() {
        let r = IdRanges::default();
        for base in (FIRST_BASE..=LAST_BASE).step_by(RANGE_SIZE as usize) {
            r.hold(base);
        }
        assert!(matches!(r.allocate(), Err(UsernsError::Exhausted { .. })));
    }

    #[test]
    fn host_users_decides() {
        let pod = |h: Option<bool>| Pod {
            spec: Some(PodSpec {
                host_users: h,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(wants_user_namespace(&pod(None), true), Ok(true));
        assert_eq!(wants_user_namespace(&pod(Some(false)), true), Ok(true));
        assert_eq!(wants_user_namespace(&pod(None), false), Ok(false));
        assert_eq!(
            wants_user_namespace(&pod(Some(true)), true),
            Err(UsernsError::HostUsersRefused)
        );
        assert_eq!(
            wants_user_namespace(&pod(Some(true)), false),
            Err(UsernsError::HostUsersRefused)
        );
        assert_eq!(
            wants_user_namespace(&pod(Some(false)), false),
            Err(UsernsError::Unavailable)
        );
        assert!(UsernsError::HostUsersRefused.to_string().contains("spec.hostUsers"));
    }

    #[test]
    fn ids_shift_into_the_range() {
        assert_eq!(shifted(0, FIRST_BASE), FIRST_BASE);
        assert_eq!(shifted(1000, FIRST_BASE), FIRST_BASE + 1000);
        assert_eq!(shifted(70000, FIRST_BASE), FIRST_BASE + 65534);
    }

    #[test]
    fn a_rootfs_shifts_without_following_links() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, "host").unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/link")).unwrap();
        let suid = root.join("su");
        std::fs::write(&suid, "").unwrap();
        std::fs::set_permissions(&suid, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
        assert_eq!(shift_rootfs(&root, FIRST_BASE).unwrap(), 5);
        use std::os::unix::fs::MetadataExt;
        for p in [root.clone(), root.join("etc"), root.join("etc/passwd"), suid.clone()] {
            assert_eq!(
                std::fs::symlink_metadata(&p).unwrap().uid(),
                FIRST_BASE,
                "{}",
                p.display()
            );
        }
        assert_eq!(
            std::fs::symlink_metadata(root.join("etc/link")).unwrap().uid(),
            FIRST_BASE
        );
        assert_eq!(std::fs::metadata(&outside).unwrap().uid(), 0, "a link was followed");
        assert_eq!(std::fs::metadata(&suid).unwrap().mode() & 0o7777, 0o4755);
    }
}
