//! A [`Host`] in memory, for unit tests: loop devices, file systems and mounts as the real
//! machine would report them, and a log of every change asked of it. Images, staging and target
//! paths are real files and directories (in a test's temporary directory); nothing is mounted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{DevNum, FsUsage, Host, LoopDevice, Mount, MountOptions};
use crate::error::Error;

/// The device of the file system holding `/dev` (devtmpfs).
const DEVTMPFS: DevNum = DevNum { major: 0, minor: 5 };

#[derive(Default)]
struct State {
    loops: Vec<(PathBuf, LoopDevice)>,
    next_minor: u32,
    /// File systems, by image: they live in the disk, not in its loop device.
    fs: HashMap<PathBuf, String>,
    /// The sizes of those file systems.
    fs_sizes: HashMap<PathBuf, u64>,
    mounts: Vec<Mount>,
    /// Paths a device node is bind-mounted on.
    nodes: HashMap<PathBuf, DevNum>,
    log: Vec<String>,
}

impl State {
    fn image(&self, dev: &LoopDevice) -> Option<PathBuf> {
        self.loops.iter().find(|(_, d)| d == dev).map(|(i, _)| i.clone())
    }
}

#[derive(Default)]
pub struct FakeHost {
    state: Mutex<State>,
}

impl FakeHost {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// What was asked of the host, oldest first: `attach <image>`, `detach /dev/loopN`,
    /// `mkfs.<fs> /dev/loopN`, `mount /dev/loopN <target>`, `bind <source> <target> [ro]`,
    /// `umount <target>`, `refresh /dev/loopN`, `grow <fs> /dev/loopN`.
    pub fn log(&self) -> Vec<String> {
        self.state().log.clone()
    }

    /// Forget the log.
    pub fn clear_log(&self) {
        self.state().log.clear();
    }

    /// Put a file system on a device, as if someone had made one.
    pub fn set_fs(&self, dev: &LoopDevice, fs: &str) {
        let mut s = self.state();
        if let Some(image) = s.image(dev) {
            s.fs.insert(image, fs.to_string());
        }
    }

    /// The loop devices attached now.
    pub fn attached(&self) -> Vec<LoopDevice> {
        self.state().loops.iter().map(|(_, d)| d.clone()).collect()
    }

    /// The mount points now, in order.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        self.state().mounts.iter().map(|m| m.mount_point.clone()).collect()
    }
}

fn busy(call: &'static str, path: &Path) -> Error {
    Error::io(call, path, std::io::Error::from_raw_os_error(22))
}

impl Host for FakeHost {
    fn loop_find(&self, image: &Path) -> Result<Option<LoopDevice>, Error> {
        Ok(self
            .state()
            .loops
            .iter()
            .find(|(i, _)| i == image)
            .map(|(_, d)| d.clone()))
    }

    fn loop_attach(&self, image: &Path) -> Result<LoopDevice, Error> {
        let mut s = self.state();
        if let Some((_, d)) = s.loops.iter().find(|(i, _)| i == image) {
            return Ok(d.clone());
        }
        let minor = s.next_minor;
        s.next_minor += 1;
        let dev = LoopDevice {
            path: PathBuf::from(format!("/dev/loop{minor}")),
            dev: DevNum { major: 7, minor },
        };
        s.loops.push((image.to_path_buf(), dev.clone()));
        s.log.push(format!("attach {}", image.display()));
        Ok(dev)
    }

    fn loop_detach(&self, dev: &LoopDevice) -> Result<(), Error> {
        let mut s = self.state();
        s.loops.retain(|(_, d)| d != dev);
        s.log.push(format!("detach {}", dev.path.display()));
        Ok(())
    }

    fn loop_refresh(&self, dev: &LoopDevice) -> Result<(), Error> {
        self.state().log.push(format!("refresh {}", dev.path.display()));
        Ok(())
    }

    fn device_size(&self, dev: &LoopDevice) -> Result<u64, Error> {
        let image = self.state().image(dev).ok_or_else(|| busy("size", &dev.path))?;
        std::fs::metadata(&image)
            .map(|m| m.len())
            .map_err(|e| Error::io("stat", image, e))
    }

    fn fs_type(&self, dev: &LoopDevice) -> Result<Option<String>, Error> {
        let s = self.state();
        Ok(s.image(dev).and_then(|i| s.fs.get(&i).cloned()))
    }

    fn mkfs(&self, dev: &LoopDevice, fs: &str, options: &[String]) -> Result<(), Error> {
        let size = self.device_size(dev)?;
        let mut s = self.state();
        let image = s.image(dev).ok_or_else(|| busy("mkfs", &dev.path))?;
        s.fs.insert(image.clone(), fs.to_string());
        s.fs_sizes.insert(image, size);
        let options: String = options.iter().map(|o| format!(" {o}")).collect();
        s.log.push(format!("mkfs.{fs}{options} {}", dev.path.display()));
        Ok(())
    }

    fn grow_fs(&self, dev: &LoopDevice, fs: &str, _: &Path) -> Result<(), Error> {
        let size = self.device_size(dev)?;
        let mut s = self.state();
        if let Some(image) = s.image(dev) {
            s.fs_sizes.insert(image, size);
        }
        s.log.push(format!("grow {fs} {}", dev.path.display()));
        Ok(())
    }

    fn grow_unmounted(&self, dev: &LoopDevice, fs: &str) -> Result<bool, Error> {
        let size = self.device_size(dev)?;
        let mut s = self.state();
        let Some(image) = s.image(dev) else {
            return Ok(false);
        };
        if fs != "ext4" || s.fs_sizes.get(&image).is_some_and(|&f| f >= size) {
            return Ok(false);
        }
        s.fs_sizes.insert(image, size);
        s.log.push(format!("grow {fs} {} offline", dev.path.display()));
        Ok(true)
    }

    fn mount(&self, dev: &LoopDevice, target: &Path, fs: &str, options: &MountOptions) -> Result<(), Error> {
        let mut s = self.state();
        s.mounts.push(Mount {
            dev: dev.dev,
            root: "/".into(),
            mount_point: target.to_path_buf(),
            fs_type: fs.to_string(),
            read_only: options.read_only(),
        });
        s.log.push(format!("mount {} {}", dev.path.display(), target.display()));
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), Error> {
        let mut s = self.state();
        let node = s.loops.iter().find(|(_, d)| d.path == source).map(|(_, d)| d.dev);
        let mount = match node {
            Some(dev) => {
                s.nodes.insert(target.to_path_buf(), dev);
                Mount {
                    dev: DEVTMPFS,
                    root: format!("/{}", source.file_name().unwrap_or_default().to_string_lossy()),
                    mount_point: target.to_path_buf(),
                    fs_type: "devtmpfs".into(),
                    read_only,
                }
            }
            None => {
                let m = s.mounts.iter().rev().find(|m| m.mount_point == source);
                let m = m.ok_or_else(|| busy("mount --bind (source is no mount)", source))?;
                Mount {
                    mount_point: target.to_path_buf(),
                    read_only,
                    ..m.clone()
                }
            }
        };
        s.mounts.push(mount);
        let ro = if read_only { " ro" } else { "" };
        s.log
            .push(format!("bind {} {}{ro}", source.display(), target.display()));
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), Error> {
        let mut s = self.state();
        let i = s.mounts.iter().rposition(|m| m.mount_point == target);
        let i = i.ok_or_else(|| busy("umount", target))?;
        s.mounts.remove(i);
        if !s.mounts.iter().any(|m| m.mount_point == target) {
            s.nodes.remove(target);
        }
        s.log.push(format!("umount {}", target.display()));
        Ok(())
    }

    fn mounts(&self) -> Result<Vec<Mount>, Error> {
        Ok(self.state().mounts.clone())
    }

    fn block_device(&self, path: &Path) -> Result<Option<DevNum>, Error> {
        let s = self.state();
        if let Some(dev) = s.nodes.get(path) {
            return Ok(Some(*dev));
        }
        Ok(s.loops.iter().find(|(_, d)| d.path == path).map(|(_, d)| d.dev))
    }

    fn usage(&self, _: &Path) -> Result<FsUsage, Error> {
        Ok(FsUsage {
            total_bytes: 1 << 30,
            available_bytes: 3 << 28,
            used_bytes: 1 << 28,
            total_inodes: 65536,
            free_inodes: 65000,
            used_inodes: 536,
        })
    }
}
