//! What the OSS and NAS benchmarks share: starting a FUSE volume's mount process as the drivers
//! do, unmounting (patiently: the kernel lets go of closed files a moment after their last
//! close), and dropping page caches between runs.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Wait until `f` holds, at most `secs`.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() > deadline {
            bail!("{what} did not happen within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// `nodeless csi fuse-mount --config <config>` in its own process group, as the drivers start
/// it; returns once `at` is mounted.
pub fn fuse_mount(config: &Path, at: &Path) -> Result<()> {
    Command::new(crate::nodeless_binary()?)
        .args(["csi", "fuse-mount", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting nodeless csi fuse-mount")?;
    wait_for("the mount", 30, || nodeless_volumes::fuse::mounted_at(at))
}

/// Unmount the FUSE mount at `at` (its process then exits).
pub fn unmount(at: &Path) -> Result<()> {
    // FUSE's release is asynchronous: the mount is busy until the kernel has let go.
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodeless_volumes::fuse::mounted_at(at) {
        let st = Command::new("umount").arg(at).stderr(Stdio::null()).status()?;
        if st.success() {
            break;
        }
        if Instant::now() > deadline {
            bail!("umount {} failed", at.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}
