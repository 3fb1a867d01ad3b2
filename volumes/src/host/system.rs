//! The real [`Host`]: util-linux and e2fsprogs/xfsprogs tools for loop devices and file systems,
//! rustix for mounts, stat and statvfs.

use std::path::Path;
use std::process::Command;

use rustix::fs::FileType;
use rustix::mount::{MountFlags, UnmountFlags};

use super::{DevNum, FsUsage, Host, LoopDevice, Mount, MountOptions, mountinfo};
use crate::error::Error;

/// The machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct System;

/// Run a tool; its stdout on success, its stderr (or how it could not run) as the error.
fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let command = || format!("{program} {}", args.join(" "));
    let out = Command::new(program).args(args).output().map_err(|e| Error::Command {
        command: command(),
        detail: format!("cannot run: {e}"),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Command {
            command: command(),
            detail: format!("{}: {}", out.status, stderr.trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_ext(fs: &str) -> bool {
    matches!(fs, "ext2" | "ext3" | "ext4")
}

fn path_str(p: &Path) -> Result<&str, Error> {
    p.to_str()
        .ok_or_else(|| Error::invalid("path", format!("{} is not UTF-8", p.display())))
}

/// The device number of a block device node.
fn rdev(path: &Path) -> Result<Option<DevNum>, Error> {
    match rustix::fs::stat(path) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::BlockDevice => Ok(Some(DevNum {
            major: rustix::fs::major(st.st_rdev),
            minor: rustix::fs::minor(st.st_rdev),
        })),
        Ok(_) => Ok(None),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(None),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

fn loop_device(path: &str) -> Result<LoopDevice, Error> {
    let path = Path::new(path.trim());
    let dev = rdev(path)?.ok_or_else(|| Error::Command {
        command: "losetup".into(),
        detail: format!("{} is not a block device", path.display()),
    })?;
    Ok(LoopDevice {
        path: path.to_path_buf(),
        dev,
    })
}

impl Host for System {
    fn loop_find(&self, image: &Path) -> Result<Option<LoopDevice>, Error> {
        if !image.exists() {
            return Ok(None);
        }
        // "/dev/loop3: [65024]:9977946 (/state/disks/d-x.img)", a line per device.
        let out = run("losetup", &["-j", path_str(image)?])?;
        match out.lines().next().and_then(|l| l.split_once(':')) {
            Some((dev, _)) => loop_device(dev).map(Some),
            None => Ok(None),
        }
    }

    fn loop_attach(&self, image: &Path) -> Result<LoopDevice, Error> {
        let out = run("losetup", &["--find", "--show", "--nooverlap", path_str(image)?])?;
        loop_device(&out)
    }

    fn loop_detach(&self, dev: &LoopDevice) -> Result<(), Error> {
        run("losetup", &["-d", path_str(&dev.path)?]).map(drop)
    }

    fn loop_refresh(&self, dev: &LoopDevice) -> Result<(), Error> {
        run("losetup", &["-c", path_str(&dev.path)?]).map(drop)
    }

    fn device_size(&self, dev: &LoopDevice) -> Result<u64, Error> {
        let path = format!("/sys/dev/block/{}/size", dev.dev);
        let sectors = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        let sectors: u64 = sectors.trim().parse().map_err(|_| Error::Command {
            command: format!("read {path}"),
            detail: format!("not a sector count: {sectors:?}"),
        })?;
        Ok(sectors * 512)
    }

    fn fs_type(&self, dev: &LoopDevice) -> Result<Option<String>, Error> {
        // -p reads the device itself, not blkid's cache. Exit status 2: nothing found.
        let dev_path = path_str(&dev.path)?;
        let out = Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "TYPE", dev_path])
            .output()
            .map_err(|e| Error::Command {
                command: format!("blkid -p {dev_path}"),
                detail: format!("cannot run: {e}"),
            })?;
        match out.status.code() {
            Some(0) => {
                let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
                Ok((!t.is_empty()).then_some(t))
            }
            Some(2) => Ok(None),
            _ => Err(Error::Command {
                command: format!("blkid -p {dev_path}"),
                detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
            }),
        }
    }

    fn mkfs(&self, dev: &LoopDevice, fs: &str, options: &[String]) -> Result<(), Error> {
        let program = format!("mkfs.{fs}");
        let mut args: Vec<&str> = Vec::new();
        // Force: the device is a loop device over a whole-disk image, which mke2fs would
        // otherwise ask about. (`fs_type` said there is no file system on it.)
        if is_ext(fs) {
            args.extend(["-F", "-q"]);
        } else if fs == "xfs" {
            args.extend(["-f", "-q"]);
        }
        args.extend(options.iter().map(String::as_str));
        args.push(path_str(&dev.path)?);
        run(&program, &args).map(drop)
    }

    fn grow_fs(&self, dev: &LoopDevice, fs: &str, mount_point: &Path) -> Result<(), Error> {
        let dev_path = path_str(&dev.path)?;
        match fs {
            fs if is_ext(fs) => run("resize2fs", &[dev_path]).map(drop).map_err(|e| match e {
                // The kernel grows a mounted ext4 only for CAP_SYS_RESOURCE (ext4_ioctl); a
                // driver in a container may lack it.
                Error::Command { detail, .. } if detail.contains("Permission denied") => {
                    Error::FailedPrecondition(format!(
                        "growing the mounted ext4 on {dev_path} needs CAP_SYS_RESOURCE, which this driver lacks; \
                         it grows when the volume is next staged"
                    ))
                }
                e => e,
            }),
            "xfs" => run("xfs_growfs", &[path_str(mount_point)?]).map(drop),
            other => Err(Error::FailedPrecondition(format!(
                "cannot grow a {other} file system (ext2/3/4 and xfs grow)"
            ))),
        }
    }

    fn grow_unmounted(&self, dev: &LoopDevice, fs: &str) -> Result<bool, Error> {
        if !is_ext(fs) {
            return Ok(false);
        }
        let dev_path = path_str(&dev.path)?;
        let header = run("dumpe2fs", &["-h", dev_path])?;
        let field = |name: &str| {
            header
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let Some(fs_bytes) = field("Block count:")
            .zip(field("Block size:"))
            .map(|(n, size)| n * size)
        else {
            return Ok(false);
        };
        // Less than a block group short of the device is what mkfs leaves; only a grown disk
        // leaves more.
        if fs_bytes + (1 << 20) > self.device_size(dev)? {
            return Ok(false);
        }
        // resize2fs grows an unmounted file system only after a full check; e2fsck exits 1
        // when it corrected something, which is fine here.
        let check = Command::new("e2fsck").args(["-f", "-p", dev_path]).output();
        let checked = match &check {
            Ok(o) if matches!(o.status.code(), Some(0 | 1)) => None,
            Ok(o) => Some(format!("{}: {}", o.status, String::from_utf8_lossy(&o.stdout).trim())),
            Err(e) => Some(format!("cannot run: {e}")),
        };
        if let Some(detail) = checked {
            return Err(Error::Command {
                command: format!("e2fsck -f -p {dev_path}"),
                detail,
            });
        }
        run("resize2fs", &[dev_path]).map(|_| true)
    }

    fn mount(&self, dev: &LoopDevice, target: &Path, fs: &str, options: &MountOptions) -> Result<(), Error> {
        let data = options.data_cstring();
        rustix::mount::mount(&dev.path, target, fs, options.flags, data.as_deref())
            .map_err(|e| Error::io("mount", target, e))
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), Error> {
        rustix::mount::mount_bind(source, target).map_err(|e| Error::io("mount --bind", target, e))?;
        if read_only {
            // A bind mount takes the read-only flag only from a remount of itself.
            if let Err(e) = rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "") {
                let _ = rustix::mount::unmount(target, UnmountFlags::empty());
                return Err(Error::io("mount -o remount,bind,ro", target, e));
            }
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), Error> {
        rustix::mount::unmount(target, UnmountFlags::NOFOLLOW).map_err(|e| Error::io("umount", target, e))
    }

    fn mounts(&self) -> Result<Vec<Mount>, Error> {
        let path = "/proc/self/mountinfo";
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Ok(mountinfo::parse(&text))
    }

    fn block_device(&self, path: &Path) -> Result<Option<DevNum>, Error> {
        rdev(path)
    }

    fn usage(&self, path: &Path) -> Result<FsUsage, Error> {
        let s = rustix::fs::statvfs(path).map_err(|e| Error::io("statvfs", path, e))?;
        let total = s.f_blocks * s.f_frsize;
        let free = s.f_bfree * s.f_frsize;
        Ok(FsUsage {
            total_bytes: total,
            available_bytes: s.f_bavail * s.f_frsize,
            used_bytes: total.saturating_sub(free),
            total_inodes: s.f_files,
            free_inodes: s.f_ffree,
            used_inodes: s.f_files.saturating_sub(s.f_ffree),
        })
    }
}
