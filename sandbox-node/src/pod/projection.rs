//! configMap, secret, downwardAPI and projected volumes written the way kubelet's atomic writer
//! does, so that the node never writes through anything a pod could have changed. What goes in
//! them is assembled by [`super::volume_data`]; this is the one writer they all share.
//!
//! ```text
//! <volume>/..2026_12_06_09_10_11.123456789/   this version's files, fresh every write
//! <volume>/..data -> ..2026_12_06_…           swapped by one rename: readers see old or new
//! <volume>/<key>  -> ..data/<key>             one link per top-level name
//! ```
//!
//! The volume is mounted read-only into the pod. Even so, a volume written by an older node
//! (when it was writable) may hold links the pod planted: every step here resolves beneath the
//! volume's own descriptor with no symlink followed, makes new files with `O_EXCL`, and removes
//! old entries without following them.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::beneath::{self, Resolve};

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// One file of a volume: its path beneath the volume, its bytes and its mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// Why a projection could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("key path {0:?} is not a relative path inside the volume")]
    BadPath(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProjectionError {
    let what = what.into();
    move |source| ProjectionError::Io { what, source }
}

/// A key's path: relative, no `..`, no component starting with `..` (those names are the
/// writer's own), not empty.
fn key_path(key: &str) -> Result<PathBuf, ProjectionError> {
    let bad = || ProjectionError::BadPath(key.to_string());
    if key.is_empty() || key.starts_with('/') {
        return Err(bad());
    }
    let mut out = PathBuf::new();
    for c in Path::new(key).components() {
        match c {
            Component::Normal(p) if !p.to_string_lossy().starts_with("..") => out.push(p),
            Component::CurDir => {}
            _ => return Err(bad()),
        }
    }
    if out.as_os_str().is_empty() {
        Err(bad())
    } else {
        Ok(out)
    }
}

fn version_name() -> String {
    let now = chrono::Utc::now();
    format!("..{}", now.format("%Y_%m_%d_%H_%M_%S.%f"))
}

fn write_file(version: &OwnedFd, rel: &Path, bytes: &[u8], mode: u32) -> Result<(), ProjectionError> {
    let what = || format!("writing {}", rel.display());
    let parent = rel.parent().unwrap_or(Path::new(""));
    let dir = beneath::mkdir_all(version, parent, 0o755, Resolve::NoSymlinks).map_err(io(what()))?;
    let name = rel.file_name().map(Path::new).unwrap_or(rel);
    let fd = beneath::open(
        &dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        0o600,
        Resolve::NoSymlinks,
    )
    .map_err(io(what()))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes).map_err(io(what()))?;
    rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o7777)).map_err(|e| io(what())(e.into()))
}

/// Write `files` into the volume directory `dir` (created when missing) as a new version, switch
/// to it, and remove what the old one had.
pub fn write(dir: &Path, files: &[File]) -> Result<(), ProjectionError> {
    let paths: Vec<PathBuf> = files.iter().map(|f| key_path(&f.path)).collect::<Result<_, _>>()?;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let root = beneath::open_dir(dir).map_err(io(format!("opening {}", dir.display())))?;
    let mut version = version_name();
    while rustix::fs::statat(&root, version.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        version.push('x');
    }
    rustix::fs::mkdirat(&root, version.as_str(), Mode::from_raw_mode(0o755))
        .map_err(|e| io("creating a version directory")(e.into()))?;
    let vfd = beneath::open(
        &root,
        Path::new(&version),
        OFlags::PATH | OFlags::DIRECTORY,
        0,
        Resolve::NoSymlinks,
    )
    .map_err(io("opening the version directory"))?;
    for (rel, f) in paths.iter().zip(files) {
        write_file(&vfd, rel, &f.bytes, f.mode)?;
    }
    // Switch: a fresh link renamed over `..data`.
    beneath::remove(&root, Path::new(DATA_TMP)).map_err(io("removing a stale link"))?;
    rustix::fs::symlinkat(version.as_str(), &root, DATA_TMP).map_err(|e| io("linking the new version")(e.into()))?;
    rustix::fs::renameat(&root, DATA_TMP, &root, DATA).map_err(|e| io("switching to the new version")(e.into()))?;
    // One link per top-level name; anything else in that place goes.
    let tops: BTreeSet<String> = paths
        .iter()
        .filter_map(|p| p.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for top in &tops {
        let want = format!("{DATA}/{top}");
        let have = rustix::fs::readlinkat(&root, top.as_str(), Vec::new()).ok();
        if have.as_ref().is_some_and(|h| h.to_bytes() == want.as_bytes()) {
            continue;
        }
        beneath::remove(&root, Path::new(top)).map_err(io(format!("replacing {top}")))?;
        rustix::fs::symlinkat(want.as_str(), &root, top.as_str())
            .map_err(|e| io(format!("linking {top}"))(e.into()))?;
    }
    // Old versions and names the new data no longer has.
    let names: Vec<String> = rustix::fs::Dir::read_from(
        &beneath::open(
            &root,
            Path::new(""),
            OFlags::RDONLY | OFlags::DIRECTORY,
            0,
            Resolve::NoSymlinks,
        )
        .map_err(io("listing the volume"))?,
    )
    .map_err(|e| io("listing the volume")(e.into()))?
    .filter_map(|e| e.ok())
    .map(|e| e.file_name().to_string_lossy().into_owned())
    .collect();
    for n in names {
        if n == "." || n == ".." || n == DATA || n == version || tops.contains(&n) {
            continue;
        }
        beneath::remove(&root, Path::new(&n)).map_err(io(format!("removing the old {n}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(v: &[(&str, &str)], mode: u32) -> Vec<File> {
        v.iter()
            .map(|(k, v)| File {
                path: k.to_string(),
                bytes: v.as_bytes().to_vec(),
                mode,
            })
            .collect()
    }

    #[test]
    fn versions_switch_and_old_ones_go() {
        let t = tempfile::tempdir().unwrap();
        let vol = t.path().join("vol");
        write(&vol, &files(&[("a", "1"), ("dir/b", "2")], 0o640)).unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(vol.join("dir/b")).unwrap(), "2");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(vol.join("a")).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        write(&vol, &files(&[("a", "3")], 0o644)).unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("a")).unwrap(), "3");
        assert!(!vol.join("dir").exists());
        let left: Vec<String> = std::fs::read_dir(&vol)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
    }

    /// The attack of the issue: the pod swapped its file for a link to a node file; writing the
    /// volume again (as on adoption) replaces the link and leaves the node file alone.
    #[test]
    fn a_planted_link_is_replaced_not_written_through() {
        let t = tempfile::tempdir().unwrap();
        let (vol, host) = (t.path().join("vol"), t.path().join("host"));
        std::fs::write(&host, "node").unwrap();
        write(&vol, &files(&[("conf", "v1"), ("d/x", "v1")], 0o644)).unwrap();
        // What a pod could do to a writable volume: every name replaced by a link out.
        for planted in ["conf", "..data", "d"] {
            beneath::remove(beneath::open_dir(&vol).unwrap(), Path::new(planted)).unwrap();
            std::os::unix::fs::symlink(&host, vol.join(planted)).unwrap();
        }
        std::os::unix::fs::symlink(t.path(), vol.join("..data_tmp")).unwrap();
        write(&vol, &files(&[("conf", "v2"), ("d/x", "v2")], 0o644)).unwrap();
        assert_eq!(std::fs::read_to_string(&host).unwrap(), "node");
        assert_eq!(std::fs::read_to_string(vol.join("conf")).unwrap(), "v2");
        assert_eq!(std::fs::read_to_string(vol.join("d/x")).unwrap(), "v2");
        assert!(t.path().join("host").is_file());
    }

    #[test]
    fn keys_stay_inside() {
        for bad in ["../x", "/etc/passwd", "a/../../b", "..data", "a/..x", ""] {
            assert!(matches!(key_path(bad), Err(ProjectionError::BadPath(_))), "{bad}");
        }
        assert_eq!(key_path("./a/b").unwrap(), PathBuf::from("a/b"));
    }
}
