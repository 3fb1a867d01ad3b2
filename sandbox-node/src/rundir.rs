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

use std::io;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::statfs::{TMPFS_MAGIC, statfs};

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
        Some("mode=0755"),
    )
    .map_err(io::Error::from)?;
    Ok(RunDir::Mounted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_on_disk() -> tempfile::TempDir {
        let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        assert!(!in_memory(tmp.path()).unwrap(), "the workspace is expected on a disk");
        tmp
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
