//! What a container's own process does before it becomes the container's program. The agent
//! starts it as `/init container-init <bundle>` (or `container-enter <pid> <bundle> <args...>`
//! for an exec) so that these steps run single-threaded in a fresh process, then it execs the
//! program: no code runs between fork and exec.
//!
//! A container gets its own mount namespace whose root is its rootfs (pivot_root, so an exec
//! that joins the namespace lands in it), the bundle's mounts, /dev with the usual nodes, the
//! masked and read-only kernel paths, its capability bounding set, its user and groups.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MsFlags, mount};
use rustix::mount::{MountPropagationFlags, UnmountFlags};

use super::oci::{Config, Mount};

/// Exit code of a helper that could not set the container up; the reason is in the bundle's
/// `start-error` file.
pub const SETUP_FAILED: i32 = 128;

pub fn start_error_file(bundle: &Path) -> PathBuf {
    bundle.join("start-error")
}

/// `container-init <bundle>`: never returns on success (the program replaced this process).
pub fn container_init(bundle: &Path) -> i32 {
    let err = match init(bundle) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = std::fs::write(start_error_file(bundle), &err);
    eprintln!("{err}");
    SETUP_FAILED
}

/// `container-enter <pid> <bundle> <args...>`: a process in the container `pid` runs in, as
/// its own process is (user, groups, environment, working directory, capabilities).
pub fn container_enter(pid: &str, bundle: &Path, args: &[String]) -> i32 {
    let err = match enter(pid, bundle, args) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    eprintln!("{err}");
    126
}

enum Never {}

fn init(bundle: &Path) -> Result<Never, String> {
    let cfg = Config::load(bundle)?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare: {e}"))?;
    rustix::mount::mount_change("/", MountPropagationFlags::REC | MountPropagationFlags::PRIVATE)
        .map_err(|e| format!("making / private: {e}"))?;
    let root = &cfg.root.path;
    rustix::mount::mount_bind_recursive(root, root).map_err(|e| format!("binding {}: {e}", root.display()))?;
    for m in &cfg.mounts {
        mount_one(root, m)?;
    }
    populate_dev(root)?;
    for (key, value) in &cfg.linux.sysctl {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("sysctl {key}={value}: {e}"))?;
    }
    std::env::set_current_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    rustix::process::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("/: {e}"))?;
    for p in &cfg.linux.masked_paths {
        mask(Path::new(p));
    }
    for p in &cfg.linux.readonly_paths {
        let path = Path::new(p);
        if path.exists() {
            rustix::mount::mount_bind_recursive(path, path).map_err(|e| format!("{p}: {e}"))?;
            remount_read_only(path)?;
        }
    }
    if cfg.root.readonly {
        remount_read_only(Path::new("/"))?;
    }
    if cfg.process.terminal {
        // The agent gave the process a terminal as stdin/stdout/stderr: make it the controlling one.
        rustix::process::setsid().map_err(|e| format!("setsid: {e}"))?;
        rustix::process::ioctl_tiocsctty(std::io::stdin()).map_err(|e| format!("TIOCSCTTY: {e}"))?;
    }
    become_process(&cfg, &cfg.process.args)
}

fn enter(pid: &str, bundle: &Path, args: &[String]) -> Result<Never, String> {
    let cfg = Config::load(bundle)?;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(|e| format!("the container's mounts: {e}"))?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&ns),
        Some(rustix::thread::LinkNameSpaceType::Mount),
    )
    .map_err(|e| format!("setns: {e}"))?;
    if rustix::termios::isatty(std::io::stdin()) {
        rustix::process::setsid().map_err(|e| format!("setsid: {e}"))?;
        rustix::process::ioctl_tiocsctty(std::io::stdin()).map_err(|e| format!("TIOCSCTTY: {e}"))?;
    }
    become_process(&cfg, args)
}

/// Drop what the container may not have, take its user, exec `args`.
fn become_process(cfg: &Config, args: &[String]) -> Result<Never, String> {
    let p = &cfg.process;
    let keep = p
        .capabilities
        .bounding
        .iter()
        .filter_map(|c| rustix::thread::CapabilitySet::from_name(c.strip_prefix("CAP_").unwrap_or(c)))
        .fold(rustix::thread::CapabilitySet::empty(), |a, b| a | b);
    for cap in rustix::thread::CapabilitySet::all().iter() {
        if !keep.contains(cap) {
            match rustix::thread::remove_capability_from_bounding_set(cap) {
                Ok(()) | Err(rustix::io::Errno::INVAL) => {}
                Err(e) => return Err(format!("dropping capabilities: {e}")),
            }
        }
    }
    if p.no_new_privileges {
        rustix::thread::set_no_new_privs(true).map_err(|e| format!("no_new_privs: {e}"))?;
    }
    let groups: Vec<nix::unistd::Gid> = p
        .user
        .additional_gids
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    let (program, rest) = args.split_first().ok_or("no command to run")?;
    let cwd = if p.cwd.is_empty() { "/" } else { &p.cwd };
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .env_clear()
        .envs(p.env.iter().filter_map(|kv| kv.split_once('=')))
        .current_dir(cwd)
        .gid(p.user.gid)
        .uid(p.user.uid);
    let e = cmd.exec();
    Err(format!("exec {program}: {e}"))
}

fn flags(m: &Mount) -> MsFlags {
    let mut f = MsFlags::empty();
    for o in &m.options {
        f |= match o.as_str() {
            "nosuid" => MsFlags::MS_NOSUID,
            "noexec" => MsFlags::MS_NOEXEC,
            "nodev" => MsFlags::MS_NODEV,
            "ro" => MsFlags::MS_RDONLY,
            "strictatime" => MsFlags::MS_STRICTATIME,
            "relatime" => MsFlags::MS_RELATIME,
            _ => MsFlags::empty(),
        };
    }
    f
}

/// `dest` inside `root`, refusing `..` so a destination cannot leave the rootfs.
fn inside(root: &Path, dest: &str) -> Result<PathBuf, String> {
    let rel = Path::new(dest.trim_start_matches('/'));
    if rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("mount destination {dest} leaves the rootfs"));
    }
    Ok(root.join(rel))
}

fn mount_one(root: &Path, m: &Mount) -> Result<(), String> {
    let target = inside(root, &m.destination)?;
    let what = |e: &dyn std::fmt::Display| format!("mounting {} ({}): {e}", m.destination, m.kind);
    match m.kind.as_str() {
        "bind" => {
            let source = Path::new(&m.source);
            let meta = std::fs::metadata(source).map_err(|e| format!("{}: {e}", source.display()))?;
            if meta.is_dir() {
                std::fs::create_dir_all(&target).map_err(|e| what(&e))?;
            } else if !target.exists() {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| what(&e))?;
                }
                std::fs::write(&target, b"").map_err(|e| what(&e))?;
            }
            rustix::mount::mount_bind_recursive(source, &target).map_err(|e| what(&e))?;
            if m.read_only() {
                remount_read_only(&target)?;
            }
        }
        // The VM has no cgroup hierarchy of its own to show: the pod's limits are the VM's.
        "cgroup" | "cgroup2" => {}
        kind => {
            std::fs::create_dir_all(&target).map_err(|e| what(&e))?;
            let data = m.data();
            mount(
                Some(OsStr::new(&m.source)),
                &target,
                Some(kind),
                flags(m),
                (!data.is_empty()).then_some(data.as_str()),
            )
            .map_err(|e| what(&e))?;
        }
    }
    Ok(())
}

fn remount_read_only(target: &Path) -> Result<(), String> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| format!("read-only {}: {e}", target.display()))
}

/// The device nodes every container has (bound from the guest's devtmpfs) and /dev's links.
fn populate_dev(root: &Path) -> Result<(), String> {
    let dev = root.join("dev");
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(name);
        if !target.exists() {
            std::fs::write(&target, b"").map_err(|e| format!("{}: {e}", target.display()))?;
        }
        rustix::mount::mount_bind(Path::new("/dev").join(name), &target).map_err(|e| format!("/dev/{name}: {e}"))?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = std::os::unix::fs::symlink(to, dev.join(link));
    }
    Ok(())
}

fn mask(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else { return };
    if meta.is_dir() {
        let _ = mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, None::<&str>);
    } else {
        let _ = rustix::mount::mount_bind("/dev/null", path);
    }
}
