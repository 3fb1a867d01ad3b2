//! The guest's first steps as PID 1: the kernel file systems, the modules the node packed into
//! the initramfs (in dependency order, listed in `/lib/modules/order`), and a line on the
//! console saying when user space began.

use std::path::Path;

use nix::mount::{MsFlags, mount};

pub fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn mount_fs(kind: &str, target: &str, flags: MsFlags, data: Option<&str>) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("{target}: {e}"))?;
    match mount(Some(kind), target, Some(kind), flags, data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(format!("mounting {kind} on {target}: {e}")),
    }
}

/// The guest's uptime when user space began, read from a /proc mounted for it.
pub fn start_uptime() -> f64 {
    let _ = mount_fs("proc", "/proc", MsFlags::empty(), None);
    uptime()
}

/// pivot_root(2) cannot leave the initramfs (rootfs has no parent mount), and containers pivot
/// into their rootfs: so the guest's root becomes a tmpfs over it, as switch_root does. The
/// agent's own binary stays reachable as /proc/self/exe, which is how it runs its helpers.
fn leave_initramfs() -> Result<(), String> {
    let root = "/newroot";
    std::fs::create_dir_all(root).map_err(|e| format!("{root}: {e}"))?;
    mount(Some("tmpfs"), root, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
        .map_err(|e| format!("a tmpfs root: {e}"))?;
    std::env::set_current_dir(root).map_err(|e| format!("{root}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|e| format!("moving the root: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("/: {e}"))
}

pub fn boot() -> Result<(), String> {
    load_modules(Path::new("/lib/modules"))?;
    leave_initramfs()?;
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", quiet, None)?;
    mount_fs("sysfs", "/sys", quiet, None)?;
    mount_fs("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    mount_fs(
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("ptmxmode=0666,mode=0620"),
    )?;
    mount_fs("tmpfs", "/dev/shm", quiet, Some("mode=1777"))?;
    mount_fs(
        "tmpfs",
        "/run",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mount_fs(
        "tmpfs",
        "/tmp",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    load_modules(Path::new("/lib/modules"))
}

fn load_modules(dir: &Path) -> Result<(), String> {
    let Ok(order) = std::fs::read_to_string(dir.join("order")) else {
        return Ok(());
    };
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(name);
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("loading {name}: {e}")),
        }
    }
    Ok(())
}

pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
