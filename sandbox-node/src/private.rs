//! Files and directories only the node's own user may read. The node's trees hold what a pod
//! was given in confidence: the env of its containers (values from Secrets) in each bundle's
//! `config.json` and exec process files, its secret volumes under the pod directory, the
//! runtime's state and the sockets of its supervisor and IP pool. So the data directory, the run
//! directory (`/run/nodeless/<node>`) and the directories the node makes in them are 0700, and
//! files with a pod's secrets are written 0600 from their first byte. What a pod itself sees of
//! its volumes keeps the modes Kubernetes gives it (`defaultMode`): the host side is closed by
//! the 0700 directories above it.
//!
//! With pods in user namespaces (see `userns`) the runtime sets a container's mounts up as the
//! pod's root, an unprivileged uid on the host, which must reach the rootfs and the volumes: the
//! directories on the way (data, run, `pods`, `bundles`) are then 0711, searchable and not
//! listable, and each pod's own directories belong to its range's root and are 0700, so neither
//! a local user nor another pod's range gets into them.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the node's state directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the node's state directories on the way to pods' directories, with user namespaces.
pub const TRAVERSE_MODE: u32 = 0o711;
/// Mode of files that hold a pod's secrets, and of the node's Unix sockets.
pub const FILE_MODE: u32 = 0o600;

/// Create `dir` (and missing parents) as 0700, and make it 0700 if it already existed.
pub fn dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}

/// Like [`dir`], 0711 when pods' user namespaces must pass through it.
pub fn dir_for_pods(path: &Path, user_namespaces: bool) -> io::Result<()> {
    dir(path)?;
    if user_namespaces {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(TRAVERSE_MODE))?;
    }
    Ok(())
}

/// The first directory above `path` (absolute) that others may not search: a pod's user
/// namespace could not reach anything beneath it.
pub fn unsearchable_ancestor(path: &Path) -> Option<std::path::PathBuf> {
    path.ancestors()
        .skip(1)
        .find(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .map(Path::to_path_buf)
}

/// Write `bytes` to `path` as a 0600 file (replacing what was there; an existing file is made
/// 0600 before it gets the new bytes).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    f.write_all(bytes)
}

/// Make a socket file (or any file) 0600.
pub fn restrict(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))
}

/// The uid of the process at the other end of a Unix socket, as the kernel recorded it when
/// that process connected (SO_PEERCRED): it cannot be forged by what the peer sends.
pub fn peer_uid(sock: &impl std::os::fd::AsFd) -> io::Result<u32> {
    let cred =
        nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials).map_err(io::Error::from)?;
    Ok(cred.uid())
}

/// Whether a peer may use one of the node's sockets: only a process of the node's own user
/// (root, in practice) may; file modes are the first wall, this the second.
pub fn peer_allowed(peer_uid: u32) -> bool {
    peer_uid == nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn directories_are_made_and_tightened_to_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        super::dir(&d).unwrap();
        assert_eq!((mode(&tmp.path().join("a")), mode(&d)), (0o700, 0o700));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        super::dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
    }

    #[test]
    fn files_are_written_0600_also_over_a_readable_one() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("config.json");
        super::write(&f, b"{}").unwrap();
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::write(&f, b"{\"a\":1}").unwrap();
        assert_eq!((mode(&f), std::fs::read(&f).unwrap()), (0o600, b"{\"a\":1}".to_vec()));
    }

    #[test]
    fn a_peer_of_our_own_uid_is_allowed_and_another_is_not() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let uid = super::peer_uid(&a).unwrap();
        assert_eq!(uid, nix::unistd::geteuid().as_raw());
        assert!(super::peer_allowed(uid));
        assert!(!super::peer_allowed(uid.wrapping_add(1)));
    }
}
