//! Every kernel and tool call the drivers make, behind one trait ([`Host`]) so the drivers'
//! logic runs in unit tests against a fake (`fake.rs`), and against the machine ([`System`])
//! in the privileged tests (`tests/disk.rs`) and in production.
//!
//! Loop devices are driven with util-linux's `losetup` and file systems probed, made and grown
//! with `blkid`, `mkfs.*`, `resize2fs` and `xfs_growfs` — the tools kubelet's mount utilities
//! and cloud disk drivers use — so no ioctl needs `unsafe`. Mounts are rustix's `mount(2)`
//! wrappers; what is mounted where is read back from `/proc/self/mountinfo`.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use rustix::mount::MountFlags;

use crate::error::Error;

#[cfg(test)]
pub mod fake;
pub mod mountinfo;
mod system;

pub use system::System;

/// A device number (`st_dev`, `st_rdev`, mountinfo's `major:minor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// A loop device backed by a disk image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    pub dev: DevNum,
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The device of the mounted file system (`major:minor`).
    pub dev: DevNum,
    /// The path inside that file system mounted here (`/` unless a bind mount of a part).
    pub root: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub read_only: bool,
}

/// A file system's use, in bytes and inodes (statvfs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

/// `mount(2)` flags and file-system data from a CSI capability's `mount_flags` (fstab words):
/// the generic ones become flags, the rest (`discard`, `errors=remount-ro`, ...) the data the
/// file system parses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MountFlags,
    pub data: Vec<String>,
}

impl MountOptions {
    pub fn parse(words: &[String], read_only: bool) -> MountOptions {
        let mut o = MountOptions {
            flags: MountFlags::empty(),
            data: Vec::new(),
        };
        for w in words
            .iter()
            .flat_map(|w| w.split(','))
            .map(str::trim)
            .filter(|w| !w.is_empty())
        {
            let flag = match w {
                "defaults" | "rw" => MountFlags::empty(),
                "ro" => MountFlags::RDONLY,
                "noatime" => MountFlags::NOATIME,
                "nodiratime" => MountFlags::NODIRATIME,
                "relatime" => MountFlags::RELATIME,
                "strictatime" => MountFlags::STRICTATIME,
                "lazytime" => MountFlags::LAZYTIME,
                "nodev" => MountFlags::NODEV,
                "noexec" => MountFlags::NOEXEC,
                "nosuid" => MountFlags::NOSUID,
                "sync" => MountFlags::SYNCHRONOUS,
                "dirsync" => MountFlags::DIRSYNC,
                other => {
                    o.data.push(other.to_string());
                    continue;
                }
            };
            o.flags |= flag;
        }
        if read_only {
            o.flags |= MountFlags::RDONLY;
        }
        o
    }

    pub fn read_only(&self) -> bool {
        self.flags.contains(MountFlags::RDONLY)
    }

    /// The data argument of `mount(2)`; none when empty, and none when it holds a NUL (which
    /// no option can).
    pub fn data_cstring(&self) -> Option<CString> {
        if self.data.is_empty() {
            return None;
        }
        CString::new(self.data.join(",")).ok()
    }
}

/// The machine, as the drivers use it.
pub trait Host: Send + Sync {
    /// The loop device already backed by `image` (`losetup -j`), if any.
    fn loop_find(&self, image: &Path) -> Result<Option<LoopDevice>, Error>;
    /// Back a free loop device with `image` (`losetup --find --show --nooverlap`, which hands
    /// back the device already backed by it, if there is one).
    fn loop_attach(&self, image: &Path) -> Result<LoopDevice, Error>;
    /// Detach a loop device (`losetup -d`).
    fn loop_detach(&self, dev: &LoopDevice) -> Result<(), Error>;
    /// Make a loop device take its image's current size (`losetup -c`).
    fn loop_refresh(&self, dev: &LoopDevice) -> Result<(), Error>;
    /// The size of a block device in bytes.
    fn device_size(&self, dev: &LoopDevice) -> Result<u64, Error>;
    /// The file system on a device (`blkid -p`), none if it has none.
    fn fs_type(&self, dev: &LoopDevice) -> Result<Option<String>, Error>;
    /// Make a file system of type `fs` on a device (`mkfs.<fs>`), with extra mkfs arguments.
    fn mkfs(&self, dev: &LoopDevice, fs: &str, options: &[String]) -> Result<(), Error>;
    /// Grow the file system of type `fs` on a device, mounted at `mount_point`, to the device's
    /// size (`resize2fs`, `xfs_growfs`).
    fn grow_fs(&self, dev: &LoopDevice, fs: &str, mount_point: &Path) -> Result<(), Error>;
    /// Grow an unmounted ext2/3/4 file system that is smaller than its device (after a
    /// ControllerExpandVolume whose online step could not run), checked first as resize2fs
    /// requires; whether it grew. Other file systems grow only online.
    fn grow_unmounted(&self, dev: &LoopDevice, fs: &str) -> Result<bool, Error>;
    /// Mount a device's file system on `target`.
    fn mount(&self, dev: &LoopDevice, target: &Path, fs: &str, options: &MountOptions) -> Result<(), Error>;
    /// Bind-mount `source` on `target`, read-only if asked.
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), Error>;
    /// Unmount `target` (the top mount there).
    fn unmount(&self, target: &Path) -> Result<(), Error>;
    /// Every mount of this mount namespace, in mountinfo order (later ones on top).
    fn mounts(&self) -> Result<Vec<Mount>, Error>;
    /// The device number of `path` if it is a block device node; none if it is not one or
    /// does not exist.
    fn block_device(&self, path: &Path) -> Result<Option<DevNum>, Error>;
    /// The use of the file system holding `path`.
    fn usage(&self, path: &Path) -> Result<FsUsage, Error>;
}

#[cfg(test)]
mod tests {
    use super::MountOptions;
    use rustix::mount::MountFlags;

    #[test]
    fn mount_flags_split_into_flags_and_data() {
        let words: Vec<String> = ["noatime", "discard,errors=remount-ro", "nodev", " ", "rw"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = MountOptions::parse(&words, false);
        assert_eq!(o.flags, MountFlags::NOATIME | MountFlags::NODEV);
        assert_eq!(o.data, ["discard", "errors=remount-ro"]);
        assert_eq!(o.data_cstring().unwrap().to_str().unwrap(), "discard,errors=remount-ro");
        assert!(!o.read_only());
        assert!(MountOptions::parse(&["ro".into()], false).read_only());
        let o = MountOptions::parse(&[], true);
        assert!(o.read_only());
        assert_eq!(o.data_cstring(), None);
    }
}
