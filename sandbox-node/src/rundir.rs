//! Where the node keeps what lasts only as long as the machine is up: the runtime's container
//! state, the supervisor's socket, the pods' namespace pins.
//!
//! That directory belongs in memory, as `/run` is on a systemd host. Some machines (this
//! project's CI among them) have `/run` on the root disk instead, and there every container
//! start writes and deletes a handful of small files on it: on ext4 without a journal each new
//! inode is then found by stepping over every inode freed in the last minutes, so a burst of
//! starts grows slower with every container it has started (a burst of 500 pods took 10 s with
//! the state on such a disk and 6.8 s in memory, on the same machine). [`keep_in_memory`]
//! mounts a tmpfs on the directory when it is on a disk and still empty; the mount stays when
//! the node stops, as `/run` does, so a restarted node finds the pods it left running.
//!
//! The same disk also holds the pods' writable layers and logs, which stay there; for them
//! [`spread_subdirectories`] keeps each pod's inodes away from its neighbours'.

use std::io;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::statfs::{TMPFS_MAGIC, statfs};

/// Mark `dir` as the top of unrelated directory trees (ext4's `T` attribute, `chattr +T`), so
/// ext4 places each directory made in it in a block group of its own choosing, as it does for
/// directories under the root, instead of beside its siblings. ext4 without a journal (the
/// root disk of this project's machines) never hands out an inode freed in the last minute (the
/// last six while its table block is dirty): to find another it steps over every such inode of
/// the group, reading each one's deletion time. With every pod's directory in one group, a burst
/// of pods after another burst's teardown stepped over thousands of them at each `mkdir` and
/// overlay mount: in a profile of such a burst, 47% of the node's samples were under
/// `__ext4_new_inode` (10-11% with the flag). Returns whether the flag is set now; file systems
/// without it give an error, which costs nothing but the spreading.
pub fn spread_subdirectories(dir: &Path) -> io::Result<bool> {
    use rustix::fs::{IFlags, ioctl_getflags, ioctl_setflags};
    let f = std::fs::File::open(dir)?;
    let flags = ioctl_getflags(&f)?;
    if !flags.contains(IFlags::TOPDIR) {
        ioctl_setflags(&f, flags | IFlags::TOPDIR)?;
    }
    Ok(ioctl_getflags(&f)?.contains(IFlags::TOPDIR))
}

/// What [`keep_in_memory`] found or did.
#[derive(Debug, PartialEq, Eq)]
pub enum RunDir {
    /// Already on a tmpfs.
    InMemory,
    /// A tmpfs was mounted on it just now.
    Mounted,
    /// On a disk and not empty, so left alone (a tmpfs would hide what is there).
    LeftOnDisk,
}

fn in_memory(dir: &Path) -> io::Result<bool> {
    let fs = statfs(dir).map_err(io::Error::from)?;
    Ok(fs.filesystem_type() == TMPFS_MAGIC)
}

/// Make sure `dir` (created if missing) lives in memory: mount a tmpfs on it unless it already
/// is on one or holds something. Nodes starting at once on one host take turns through a lock
/// on the directory, so only one of them mounts.
pub fn keep_in_memory(dir: &Path) -> io::Result<RunDir> {
    std::fs::create_dir_all(dir)?;
    if in_memory(dir)? {
        return Ok(RunDir::InMemory);
    }
    let handle = std::fs::File::open(dir)?;
    let _lock = Flock::lock(handle, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
    if in_memory(dir)? {
        return Ok(RunDir::InMemory);
    }
    if std::fs::read_dir(dir)?.next().is_some() {
        return Ok(RunDir::LeftOnDisk);
    }
    nix::mount::mount(
        Some("nodeless-run"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        // The node's state (bundles with pods' env, its sockets) is root's alone.
        Some("mode=0700"),
    )
    .map_err(io::Error::from)?;
    Ok(RunDir::Mounted)
}

#[cfg(test)]
mod tests {
    use nix::sys::statfs::EXT4_SUPER_MAGIC;

    use super::*;

    fn tmp_on_disk() -> tempfile::TempDir {
        let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        assert!(!in_memory(tmp.path()).unwrap(), "the workspace is expected on a disk");
        tmp
    }

    #[test]
    fn pods_directories_are_spread_on_ext4() {
        let tmp = tmp_on_disk();
        let dir = tmp.path().join("pods");
        std::fs::create_dir(&dir).unwrap();
        if statfs(&dir).unwrap().filesystem_type() != EXT4_SUPER_MAGIC {
            // Elsewhere the flag may be refused; that must be an error, not a claim.
            assert!(!matches!(spread_subdirectories(&dir), Ok(false)));
            return;
        }
        assert!(spread_subdirectories(&dir).unwrap());
        // Marking it again is harmless.
        assert!(spread_subdirectories(&dir).unwrap());
        let out = std::process::Command::new("lsattr")
            .arg("-d")
            .arg(&dir)
            .output()
            .unwrap();
        let attrs = String::from_utf8_lossy(&out.stdout);
        assert!(
            attrs.split_whitespace().next().unwrap_or_default().contains('T'),
            "{attrs}"
        );
    }

    #[test]
    fn a_directory_in_memory_is_left_as_it_is() {
        let shm = Path::new("/dev/shm");
        assert!(in_memory(shm).unwrap(), "/dev/shm is expected on tmpfs");
        let dir = shm.join(format!("nodeless-rundir-{}", std::process::id()));
        let got = keep_in_memory(&dir);
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(got.unwrap(), RunDir::InMemory);
    }

    #[test]
    fn a_directory_on_disk_that_holds_something_is_not_covered() {
        let tmp = tmp_on_disk();
        std::fs::write(tmp.path().join("state"), b"x").unwrap();
        assert_eq!(keep_in_memory(tmp.path()).unwrap(), RunDir::LeftOnDisk);
        assert!(tmp.path().join("state").exists());
    }

    #[test]
    fn an_empty_directory_on_disk_gets_a_tmpfs_once() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let tmp = tmp_on_disk();
        let dir = tmp.path().join("run");
        let first = keep_in_memory(&dir);
        let second = keep_in_memory(&dir);
        let mounted = in_memory(&dir);
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        assert_eq!(first.unwrap(), RunDir::Mounted);
        assert_eq!(second.unwrap(), RunDir::InMemory);
        assert!(mounted.unwrap());
    }
}
