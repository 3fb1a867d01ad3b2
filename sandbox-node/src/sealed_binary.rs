//! The OCI runtime run from a sealed copy in memory.
//!
//! runc and crun guard against a container overwriting the runtime's binary on the host
//! (CVE-2019-5736): unless the binary they run from is already a sealed memory file, each
//! invocation copies itself into one and executes itself again, which for crun is a second
//! program load and a second pass of the dynamic loader, ~1.5-2 ms of CPU of the ~13 a
//! container start costs here. Both skip that step when `/proc/self/exe` is a memory file
//! sealed against writes, shrinking and growing. So the node and its supervisor make that copy
//! once per binary and run the runtime from it: the same protection, paid once.
//!
//! A copy is remade when the binary on disk changes (an upgrade), and earlier copies stay open,
//! since a command built from one may not have started yet.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MemFdCreateFlag, memfd_create};

/// What identifies one version of a binary on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Version {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

struct Copy {
    version: Version,
    fd: OwnedFd,
}

/// Every copy made, by the binary's path; the current one last.
static COPIES: Mutex<Vec<(PathBuf, Copy)>> = Mutex::new(Vec::new());

/// The seals runc and crun look for.
fn seals() -> SealFlag {
    SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE
}

/// A sealed memory file holding the bytes of `binary`.
fn copy(binary: &Path) -> io::Result<(Version, OwnedFd)> {
    let mut file = File::open(binary)?;
    let version = Version::of(&file.metadata()?);
    let fd = memfd_create(
        c"nodeless-runtime",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let mut mem = File::from(fd);
    let copied = io::copy(&mut file, &mut mem)?;
    // A binary replaced while it was read is copied again at the next call.
    if copied != version.size {
        return Err(io::Error::other(format!(
            "{} changed while it was copied",
            binary.display()
        )));
    }
    let fd = OwnedFd::from(mem);
    fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals()))?;
    Ok((version, fd))
}

/// The program to execute for `binary`, and the `argv[0]` to give it: the sealed copy's
/// `/proc/self/fd/<n>` (which a child of this process resolves through the descriptor it
/// inherits until its exec) and the binary's own path. `binary` itself when it cannot be
/// copied, or when it is not a file (then spawning reports the error as before).
pub fn program(binary: &Path) -> (PathBuf, OsString) {
    let arg0 = binary.as_os_str().to_owned();
    let Ok(meta) = std::fs::metadata(binary) else {
        return (binary.to_path_buf(), arg0);
    };
    let current = Version::of(&meta);
    let mut copies = COPIES.lock().unwrap_or_else(|e| e.into_inner());
    let found = copies.iter().rev().find(|(p, c)| p == binary && c.version == current);
    let fd = match found {
        Some((_, c)) => c.fd.as_raw_fd(),
        None => match copy(binary) {
            Ok((version, fd)) => {
                let raw = fd.as_raw_fd();
                copies.push((binary.to_path_buf(), Copy { version, fd }));
                raw
            }
            Err(e) => {
                tracing::warn!(
                    "running {} from its file: a sealed copy in memory failed: {e}",
                    binary.display()
                );
                return (binary.to_path_buf(), arg0);
            }
        },
    };
    (PathBuf::from(format!("/proc/self/fd/{fd}")), arg0)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn a_sealed_copy_runs_and_is_remade_when_the_binary_changes() {
        let dir = std::env::temp_dir().join(format!("nl-sealed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("tool");
        std::fs::copy("/bin/sleep", &bin).unwrap();
        let (first, arg0) = program(&bin);
        assert!(first.starts_with("/proc/self/fd"), "{}", first.display());
        assert_eq!(arg0, bin.as_os_str());
        // The same version gives the same copy.
        assert_eq!(program(&bin).0, first);
        // The child runs from the memory file, under the binary's name.
        let mut child = std::process::Command::new(&first).arg0(&arg0).arg("5").spawn().unwrap();
        let exe = std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap();
        // Arguments show once the exec has set them up, a moment after `spawn` returns.
        let mut cmdline = Vec::new();
        for _ in 0..100 {
            cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
            if !cmdline.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            exe.to_string_lossy().starts_with("/memfd:nodeless-runtime"),
            "{}",
            exe.display()
        );
        assert!(
            cmdline.starts_with(bin.as_os_str().as_encoded_bytes()),
            "{}",
            String::from_utf8_lossy(&cmdline)
        );
        // A new version on disk gives a new copy; the old one stays open.
        std::fs::copy("/bin/false", &bin).unwrap();
        let (second, _) = program(&bin);
        assert_ne!(second, first);
        assert!(!std::process::Command::new(&second).status().unwrap().success());
        assert!(std::process::Command::new(&first).arg("0").status().unwrap().success());
        // The copy is sealed and cannot be written.
        let fd: i32 = second.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let seals = fcntl(fd, FcntlArg::F_GET_SEALS).unwrap();
        assert_eq!(seals, super::seals().bits());
        assert!(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&second)
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
                .is_err()
        );
        // Not a file: the path itself, for spawning to report.
        let missing = dir.join("missing");
        assert_eq!(program(&missing).0, missing);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
