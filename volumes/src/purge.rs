//! What `nodeless down --purge` asks of the drivers: every loop device still backed by a disk
//! image under a state directory detached (their mounts are gone with the node's), so nothing
//! of the disks outlives the data directory.

use std::path::Path;
use std::process::Command;

/// Detach the loop devices whose backing file is under `dir` (a deleted file included, as
/// `losetup` shows it: `<path> (deleted)`). The devices it could not detach, with why.
pub fn detach_loops_under(dir: &Path) -> Vec<String> {
    let Ok(out) = Command::new("losetup")
        .args(["--list", "--noheadings", "--raw", "--output", "NAME,BACK-FILE"])
        .output()
    else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((dev, file)) = line.split_once(' ') else {
            continue;
        };
        let file = file.trim().trim_end_matches(" (deleted)");
        if !Path::new(file).starts_with(dir) {
            continue;
        }
        match Command::new("losetup").args(["-d", dev]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => problems.push(format!("{dev}: {}", String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => problems.push(format!("{dev}: {e}")),
        }
    }
    problems
}

/// Detach every FUSE mount under `dir` (the OSS mounts of pods the node left behind); their
/// processes exit once the kernel lets the mounts go. The mounts it could not detach, with why.
pub fn unmount_fuse_under(dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    // Deepest first, so nested mounts go before the ones they sit on.
    let mut mounts: Vec<_> = crate::host::mountinfo::parse(&text)
        .into_iter()
        .filter(|m| m.fs_type.starts_with("fuse") && m.mount_point.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    for m in mounts {
        if let Err(e) = rustix::mount::unmount(&m.mount_point, rustix::mount::UnmountFlags::DETACH) {
            problems.push(format!("{}: {e}", m.mount_point.display()));
        }
    }
    problems
}
