//! Paths a tenant controls, resolved by the kernel beneath a directory the node trusts.
//!
//! A pod (or an image) can put a symlink anywhere it can write: in an emptyDir, in its rootfs,
//! in a layer. The node runs as root, so every path it builds from tenant data and then opens,
//! writes, deletes or mounts would follow such a link onto the node's own files. Checking a path
//! first and using it later loses to a race. Instead every such path is opened with `openat2`
//! from a descriptor of the trusted directory, with `RESOLVE_BENEATH` (no absolute links, no
//! `..` above the start) and `RESOLVE_NO_MAGICLINKS` (no `/proc/<pid>/fd` jumps), and later
//! steps act on the descriptor, never on the path again: `*at` calls relative to it, and bind
//! mounts from `/proc/self/fd/<n>`.
//!
//! Reads of tenant files are bounded and only of regular files: a rootfs `/etc/passwd` linked to
//! `/dev/zero`, or a termination log grown to gigabytes, must not exhaust the node.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

/// How a path below the trusted directory may resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolve {
    /// Symlinks allowed while they stay below the start (a volume's own relative links, as
    /// kubelet allows for subPath); absolute links and `..` above the start fail with EXDEV.
    Beneath,
    /// No symlink at all, anywhere in the path (the node's own trees, where none belongs).
    NoSymlinks,
    /// Resolved as if the start were `/` (a container's rootfs, whose absolute links mean the
    /// rootfs's own paths).
    InRoot,
}

impl Resolve {
    fn flags(self) -> ResolveFlags {
        let base = ResolveFlags::NO_MAGICLINKS;
        match self {
            Resolve::Beneath => base | ResolveFlags::BENEATH,
            Resolve::NoSymlinks => base | ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            Resolve::InRoot => base | ResolveFlags::IN_ROOT,
        }
    }
}

/// Open a directory the node itself chose (its data, run or store directory) as the start of
/// later resolutions.
pub fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The relative form of `rel`, refusing `..` (the kernel would refuse it too, with a less
/// helpful EXDEV) and ignoring `/` and `.`.
pub fn relative(rel: &Path) -> std::io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} leaves its directory", rel.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// `openat2(start, rel, flags)` under `how`; an empty `rel` opens the start itself.
pub fn open(start: impl AsFd, rel: &Path, flags: OFlags, mode: u32, how: Resolve) -> std::io::Result<OwnedFd> {
    let rel = relative(rel)?;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel.as_path()
    };
    Ok(rustix::fs::openat2(
        start,
        rel,
        flags | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
        how.flags(),
    )?)
}

/// Open the directory `rel` below `start`, creating what is missing one component at a time
/// (mode `mode`), each component resolved under `how` from the one before.
pub fn mkdir_all(start: impl AsFd, rel: &Path, mode: u32, how: Resolve) -> std::io::Result<OwnedFd> {
    mkdir_all_owned(start, rel, mode, how, false)
}

/// Like [`mkdir_all`]; with `inherit`, each directory made gets the owner of `start` (a volume
/// that belongs to a pod's user namespace keeps belonging to it).
pub fn mkdir_all_owned(
    start: impl AsFd,
    rel: &Path,
    mode: u32,
    how: Resolve,
    inherit: bool,
) -> std::io::Result<OwnedFd> {
    let owner = if inherit {
        let st = rustix::fs::fstat(start.as_fd())?;
        Some((
            rustix::fs::Uid::from_raw(st.st_uid),
            rustix::fs::Gid::from_raw(st.st_gid),
        ))
    } else {
        None
    };
    let rel = relative(rel)?;
    let mut cur = open(start, Path::new(""), OFlags::PATH | OFlags::DIRECTORY, 0, how)?;
    for comp in rel.components() {
        let comp = Path::new(comp.as_os_str());
        let next = match open(&cur, comp, OFlags::PATH | OFlags::DIRECTORY, 0, how) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match rustix::fs::mkdirat(&cur, comp, Mode::from_raw_mode(mode)) {
                    Ok(()) => {
                        if let Some((uid, gid)) = owner {
                            rustix::fs::chownat(&cur, comp, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
                        }
                    }
                    Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                open(&cur, comp, OFlags::PATH | OFlags::DIRECTORY, 0, how)?
            }
            Err(e) => return Err(e),
        };
        cur = next;
    }
    Ok(cur)
}

/// The path through which the kernel reaches the object behind `fd` itself, whatever becomes
/// of its name: a bind mount's source.
/// Visit the directory `root` and everything beneath it without following a link: each
/// directory is opened beneath the last with `O_NOFOLLOW`. `visit` gets an entry's directory
/// and its name (empty for `root` itself) and says whether the entry is a directory to go
/// into. Returns how many entries were visited.
pub fn walk(
    root: &Path,
    mut visit: impl FnMut(&OwnedFd, &std::ffi::CStr) -> std::io::Result<bool>,
) -> std::io::Result<usize> {
    let dir = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    visit(&dir, c"")?;
    let mut stack = vec![dir];
    let mut count = 1;
    while let Some(dir) = stack.pop() {
        let names: Vec<std::ffi::CString> = rustix::fs::Dir::read_from(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect();
        for name in names {
            let is_dir = visit(&dir, &name)?;
            count += 1;
            if is_dir {
                stack.push(rustix::fs::openat(
                    &dir,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?);
            }
        }
    }
    Ok(count)
}

/// Change the mode of `name` in `dir` (or `dir` itself when `name` is empty) without following
/// a link planted there since it was looked at: through an `O_PATH` descriptor, not the name.
pub fn chmod_no_follow(dir: &OwnedFd, name: &std::ffi::CStr, mode: u32) -> std::io::Result<()> {
    let f = if name.is_empty() {
        None
    } else {
        Some(rustix::fs::openat(
            dir.as_fd(),
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    };
    let raw = f.as_ref().map(|f| f.as_raw_fd()).unwrap_or_else(|| dir.as_raw_fd());
    rustix::fs::chmodat(
        rustix::fs::CWD,
        format!("/proc/self/fd/{raw}"),
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )?;
    Ok(())
}

pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("larger than {0} bytes")]
    TooLarge(u64),
}

/// Read the regular file `rel` below `start`: at most `max` bytes, an error past that when
/// `truncate` is false.
pub fn read(start: impl AsFd, rel: &Path, how: Resolve, max: u64, truncate: bool) -> Result<Vec<u8>, ReadError> {
    let fd = open(start, rel, OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK, 0, how)?;
    let st = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(ReadError::NotRegular);
    }
    let mut out = Vec::new();
    std::fs::File::from(fd).take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        if !truncate {
            return Err(ReadError::TooLarge(max));
        }
        out.truncate(max as usize);
    }
    Ok(out)
}

/// Remove the entry `name` of the directory `dir` (a file, a link or a whole tree) without
/// following any link: a link is removed, not what it points at.
pub fn remove(dir: impl AsFd, name: &Path) -> std::io::Result<()> {
    let dir = dir.as_fd();
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        return Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?);
    }
    let sub = open(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        0,
        Resolve::NoSymlinks,
    )?;
    empty_dir(sub)?;
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Remove everything in the open directory `dir`, by descriptor all the way down.
fn empty_dir(dir: OwnedFd) -> std::io::Result<()> {
    let names: Vec<std::ffi::CString> = rustix::fs::Dir::read_from(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    for n in names {
        use std::os::unix::ffi::OsStrExt;
        remove(&dir, Path::new(std::ffi::OsStr::from_bytes(n.as_bytes())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_out_of_the_start_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("root"), t.path().join("outside"));
        std::fs::create_dir_all(root.join("inside")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "node").unwrap();
        std::fs::write(root.join("inside/f"), "pod").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("up")).unwrap();
        std::os::unix::fs::symlink("inside", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root/etc", root.join("magic")).unwrap();
        let start = open_dir(&root).unwrap();
        for bad in ["abs/secret", "up/secret", "magic/hostname"] {
            assert!(
                read(&start, Path::new(bad), Resolve::Beneath, 100, false).is_err(),
                "{bad}"
            );
        }
        assert!(relative(Path::new("a/../../b")).is_err());
        assert_eq!(
            read(&start, Path::new("rel/f"), Resolve::Beneath, 100, false).unwrap(),
            b"pod"
        );
        assert!(read(&start, Path::new("rel/f"), Resolve::NoSymlinks, 100, false).is_err());
        // In-root: an absolute link means the start's own path.
        std::os::unix::fs::symlink("/inside/f", root.join("rooted")).unwrap();
        assert_eq!(
            read(&start, Path::new("rooted"), Resolve::InRoot, 100, false).unwrap(),
            b"pod"
        );
        assert!(read(&start, Path::new("rooted"), Resolve::Beneath, 100, false).is_err());
        // Creating through a link is refused too, and nothing appears outside.
        assert!(mkdir_all(&start, Path::new("abs/new"), 0o755, Resolve::Beneath).is_err());
        assert!(!outside.join("new").exists());
        mkdir_all(&start, Path::new("a/b/c"), 0o755, Resolve::NoSymlinks).unwrap();
        assert!(root.join("a/b/c").is_dir());
    }

    #[test]
    fn reads_are_bounded_and_of_regular_files_only() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("big"), vec![b'x'; 5000]).unwrap();
        std::os::unix::fs::symlink("/dev/zero", t.path().join("zero")).unwrap();
        let start = open_dir(t.path()).unwrap();
        assert!(matches!(
            read(&start, Path::new("big"), Resolve::Beneath, 4096, false),
            Err(ReadError::TooLarge(4096))
        ));
        assert_eq!(
            read(&start, Path::new("big"), Resolve::Beneath, 4096, true)
                .unwrap()
                .len(),
            4096
        );
        // In-root resolution keeps the link inside: /dev/zero of the start, which is missing.
        assert!(read(&start, Path::new("zero"), Resolve::InRoot, 10, true).is_err());
        let dev = open_dir(Path::new("/dev")).unwrap();
        assert!(matches!(
            read(&dev, Path::new("zero"), Resolve::Beneath, 10, true),
            Err(ReadError::NotRegular)
        ));
    }

    #[test]
    fn remove_takes_the_link_not_its_target() {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("root"), t.path().join("outside"));
        std::fs::create_dir_all(root.join("tree/sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "node").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("tree/sub/link")).unwrap();
        let start = open_dir(&root).unwrap();
        remove(&start, Path::new("link")).unwrap();
        remove(&start, Path::new("tree")).unwrap();
        remove(&start, Path::new("missing")).unwrap();
        assert!(!root.join("link").exists() && !root.join("tree").exists());
        assert_eq!(std::fs::read_to_string(outside.join("keep")).unwrap(), "node");
    }
}
