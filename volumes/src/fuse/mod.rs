//! What the FUSE-backed drivers (OSS, and NAS where the kernel has no NFS client) share: each
//! published volume is a FUSE mount served by its own process (`nodeless csi fuse-mount
//! --config <file>`, see `crate::mounter`), started by NodePublishVolume in a process group of
//! its own and not kept by the driver, so a driver or node that is killed or restarted leaves
//! running pods' mounts serving; NodeUnpublishVolume and NodeGetVolumeStats find it again from
//! its record.
//!
//! The record directory (`<state>/mounts/<hash of the target>/`) holds `config.json` (mode
//! 0600: it may carry the volume's keys), `volume`, `pid`, `log` and `stats.json` (the mount's
//! counters, rewritten every two seconds).
//!
//! Unpublishing never hangs on a server that is gone: the mount is detached at once (lazy
//! unmount), the process is given [`EXIT_WAIT`] to finish and is then killed.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use crate::csi::volume_health::VolumeHealthEntry;
use crate::csi::{NodeGetVolumeStatsResponse, VolumeHealthErrorType, VolumeUsage, volume_usage::Unit};

/// How long a new mount may take to appear (the process checks the bucket first).
const MOUNT_WAIT: Duration = Duration::from_secs(30);
/// How long a detached mount's process may take to exit before it is killed.
pub const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Exit codes of the mount process, which the driver turns into gRPC codes.
pub mod exit {
    /// The configuration is unreadable or wrong.
    pub const CONFIG: i32 = 2;
    /// The bucket refused the credentials.
    pub const DENIED: i32 = 3;
    /// The server could not be reached.
    pub const UNREACHABLE: i32 = 4;
    /// The mount itself failed.
    pub const MOUNT: i32 = 5;
}

pub mod metrics;

/// Counters of one mount's file system calls and of its calls to the server.
#[derive(Debug, Default)]
pub struct FsCounters {
    pub operations: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    pub bytes_read: std::sync::atomic::AtomicU64,
    pub bytes_written: std::sync::atomic::AtomicU64,
    pub requests: std::sync::atomic::AtomicU64,
    pub request_errors: std::sync::atomic::AtomicU64,
    pub bytes_downloaded: std::sync::atomic::AtomicU64,
    pub bytes_uploaded: std::sync::atomic::AtomicU64,
}

impl FsCounters {
    pub fn snapshot(&self) -> Stats {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            operations: l(&self.operations),
            errors: l(&self.errors),
            bytes_read: l(&self.bytes_read),
            bytes_written: l(&self.bytes_written),
            requests: l(&self.requests),
            request_errors: l(&self.request_errors),
            bytes_downloaded: l(&self.bytes_downloaded),
            bytes_uploaded: l(&self.bytes_uploaded),
        }
    }
}

/// The record directory of a mount at `target`.
pub fn mount_dir(state_dir: &Path, target: &Path) -> std::path::PathBuf {
    let h = hex::encode(Sha256::digest(target.as_os_str().as_encoded_bytes()));
    state_dir.join("mounts").join(&h[..24])
}

/// The counters a mount writes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub operations: u64,
    pub errors: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub requests: u64,
    pub request_errors: u64,
    pub bytes_downloaded: u64,
    pub bytes_uploaded: u64,
}

/// Whether a FUSE mount sits at `target`.
pub fn mounted_at(target: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    crate::host::mountinfo::parse(&text)
        .iter()
        .any(|m| m.mount_point == target && m.fs_type.starts_with("fuse"))
}

fn io_status(what: &str, path: &Path, e: std::io::Error) -> tonic::Status {
    tonic::Status::internal(format!("{what} {}: {e}", path.display()))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// How the driver starts mount processes.
#[derive(Clone, Debug)]
pub struct Mounter {
    /// Records of mounts, and the staging area of files being written (`<state>/mounts`,
    /// `<state>/cache`).
    pub state_dir: std::path::PathBuf,
    /// The program (and its first arguments) that serves one mount: `nodeless csi
    /// fuse-mount`. `--config <file>` is added.
    pub command: Vec<std::ffi::OsString>,
}

impl Mounter {
    /// Where a mount at `target` may stage files.
    pub fn cache_dir(&self, target: &Path) -> std::path::PathBuf {
        let dir = mount_dir(&self.state_dir, target);
        self.state_dir.join("cache").join(dir.file_name().unwrap_or_default())
    }

    /// Where a mount at `target` writes its counters.
    pub fn stats_file(&self, target: &Path) -> std::path::PathBuf {
        mount_dir(&self.state_dir, target).join("stats.json")
    }
}

/// Mount volume `id` at `target` (NodePublishVolume): write its configuration (`kind` names
/// the file system, `config` its settings), start its process and wait for the mount.
pub async fn publish(
    m: &Mounter,
    id: &str,
    target: &Path,
    kind: &str,
    config: &impl Serialize,
) -> Result<(), tonic::Status> {
    let dir = mount_dir(&m.state_dir, target);
    if mounted_at(target) {
        // Published before (a retried call): the same volume is fine, another is not.
        let had = std::fs::read_to_string(dir.join("volume")).unwrap_or_default();
        if had.trim() == id {
            return Ok(());
        }
        return Err(tonic::Status::already_exists(format!(
            "{} already has another volume mounted",
            target.display()
        )));
    }
    let cache = m.cache_dir(target);
    for d in [target, dir.as_path(), cache.as_path()] {
        std::fs::create_dir_all(d).map_err(|e| io_status("mkdir", d, e))?;
    }
    let mut value = serde_json::to_value(config).map_err(|e| tonic::Status::internal(e.to_string()))?;
    value["kind"] = serde_json::json!(kind);
    let mc = value;
    let config_file = dir.join("config.json");
    write_private(&config_file, &serde_json::to_vec(&mc).unwrap_or_default())
        .map_err(|e| io_status("writing", &config_file, e))?;
    std::fs::write(dir.join("volume"), id).map_err(|e| io_status("writing", &dir, e))?;
    let log_path = dir.join("log");
    let log = std::fs::File::create(&log_path).map_err(|e| io_status("creating", &log_path, e))?;
    let log2 = log.try_clone().map_err(|e| io_status("opening", &log_path, e))?;
    let mut cmd = tokio::process::Command::new(&m.command[0]);
    cmd.args(&m.command[1..])
        .arg("--config")
        .arg(&config_file)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own group: signals to the driver's group (a terminal's ^C, a supervisor's
        // kill of the group) leave running pods' mounts alone.
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .map_err(|e| tonic::Status::internal(format!("starting {:?}: {e}", m.command[0])))?;
    if let Some(pid) = child.id() {
        std::fs::write(dir.join("pid"), pid.to_string()).map_err(|e| io_status("writing", &dir, e))?;
    }
    let since = std::time::Instant::now();
    loop {
        if mounted_at(target) {
            // The process outlives this call; tokio reaps it when it exits.
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            let why = last_lines(&log_path);
            let _ = std::fs::remove_dir_all(&dir);
            let msg = format!("mounting the volume failed: {why}");
            return Err(match st.code() {
                Some(exit::CONFIG) => tonic::Status::invalid_argument(msg),
                Some(exit::DENIED) => tonic::Status::permission_denied(msg),
                Some(exit::UNREACHABLE) => tonic::Status::unavailable(msg),
                _ => tonic::Status::internal(msg),
            });
        }
        if since.elapsed() > MOUNT_WAIT {
            let _ = child.start_kill();
            let why = last_lines(&log_path);
            return Err(tonic::Status::deadline_exceeded(format!(
                "the volume was not mounted within {} s: {why}",
                MOUNT_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn last_lines(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join("; ")
}

/// The pid of a mount's process, if it is still that process.
fn live_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("pid")).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let config = dir.join("config.json");
    let needle = config.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|w| w == needle).then_some(pid)
}

/// Unmount `target` (NodeUnpublishVolume): detach it, let its process go, remove the target
/// directory and the record. Unmounting what is not mounted is no error.
pub async fn unpublish(m: &Mounter, target: &Path) -> Result<(), tonic::Status> {
    let dir = mount_dir(&m.state_dir, target);
    if mounted_at(target) {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| io_status("unmounting", target, e.into()))?;
    }
    if let Some(pid) = live_pid(&dir) {
        let since = std::time::Instant::now();
        while live_pid(&dir).is_some() && since.elapsed() < EXIT_WAIT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if live_pid(&dir).is_some() {
            tracing::warn!(pid, target = %target.display(), "a detached FUSE mount's process did not exit; killing it");
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
    match std::fs::remove_dir(target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_status("removing", target, e)),
    }
    let cache = m.cache_dir(target);
    for d in [&dir, &cache] {
        match std::fs::remove_dir_all(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_status("removing", d, e)),
        }
    }
    Ok(())
}

fn statvfs_bounded(path: &Path) -> impl std::future::Future<Output = Option<rustix::fs::StatVfs>> + use<> {
    let p = path.to_path_buf();
    async move {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || rustix::fs::statvfs(&p)),
        )
        .await;
        match r {
            Ok(Ok(Ok(v))) => Some(v),
            _ => None,
        }
    }
}

/// NodeGetVolumeStats of the mount at `path`: its usage as `statfs` gives it.
pub async fn stats(path: &Path) -> Result<NodeGetVolumeStatsResponse, tonic::Status> {
    if !mounted_at(path) {
        return Err(tonic::Status::not_found(format!(
            "{} is not a volume of this driver on this node",
            path.display()
        )));
    }
    let v = statvfs_bounded(path)
        .await
        .ok_or_else(|| tonic::Status::unavailable(format!("the mount at {} does not answer statfs", path.display())))?;
    let total = v.f_blocks * v.f_frsize;
    let free = v.f_bfree * v.f_frsize;
    Ok(NodeGetVolumeStatsResponse {
        usage: vec![VolumeUsage {
            available: clamp(v.f_bavail * v.f_frsize),
            total: clamp(total),
            used: clamp(total.saturating_sub(free)),
            unit: Unit::Bytes as i32,
        }],
    })
}

/// NodeGetVolumeHealth of the mount at `path`: INACCESSIBLE when it is not mounted, its
/// process is gone or it does not answer.
pub async fn health(m: &Mounter, path: &Path) -> Vec<VolumeHealthEntry> {
    let entry = |reason: &str, message: String| VolumeHealthEntry {
        status: VolumeHealthErrorType::Inaccessible as i32,
        reason: reason.to_string(),
        message,
    };
    if !mounted_at(path) {
        return vec![entry("NotPublished", format!("{} is not mounted", path.display()))];
    }
    let mut out = Vec::new();
    if live_pid(&mount_dir(&m.state_dir, path)).is_none() {
        out.push(entry(
            "MountProcessGone",
            "the process serving the mount has exited".into(),
        ));
    }
    if statvfs_bounded(path).await.is_none() {
        out.push(entry(
            "NotAnswering",
            "the mount does not answer statfs within 5 s".into(),
        ));
    }
    out
}

/// What a mount's record says: its volume, target, whether its process runs, its counters.
pub struct MountState {
    pub volume: String,
    pub target: std::path::PathBuf,
    pub alive: bool,
    pub stats: Stats,
}

/// Every mount recorded under the driver's state directory.
pub fn mounts(state_dir: &Path) -> Vec<MountState> {
    let Ok(dirs) = std::fs::read_dir(state_dir.join("mounts")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in dirs.flatten() {
        let dir = d.path();
        let Some(target) = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| {
                c.get("mountpoint")
                    .and_then(|m| m.as_str())
                    .map(std::path::PathBuf::from)
            })
        else {
            continue;
        };
        out.push(MountState {
            volume: std::fs::read_to_string(dir.join("volume")).unwrap_or_default(),
            target,
            alive: live_pid(&dir).is_some(),
            stats: std::fs::read(dir.join("stats.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
        });
    }
    out
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Serve `fs` at `mountpoint` until it is unmounted (or SIGTERM/SIGINT, which unmount),
/// writing `counters` to `stats_file` every two seconds. `fsname` is what mount tables show
/// as its source. Returns the exit code.
pub fn serve<F: fuser::Filesystem>(
    fs: F,
    fsname: String,
    mountpoint: &Path,
    read_only: bool,
    counters: std::sync::Arc<FsCounters>,
    stats_file: &Path,
    rt: &tokio::runtime::Runtime,
) -> i32 {
    let mut options = vec![
        fuser::MountOption::FSName(fsname.clone()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if read_only {
        options.push(fuser::MountOption::RO);
    }
    let mut fc = fuser::Config::default();
    fc.mount_options = options;
    fc.acl = fuser::SessionACL::All;
    fc.n_threads = Some(4);
    fc.clone_fd = true;
    let mut session = match fuser::Session::new(fs, mountpoint, &fc) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fuse-mount: mounting at {}: {e}", mountpoint.display());
            return exit::MOUNT;
        }
    };
    let mut unmounter = session.unmount_callable();
    eprintln!("fuse-mount: {fsname} mounted on {}", mountpoint.display());
    let write_stats = {
        let file = stats_file.to_path_buf();
        move || {
            let tmp = file.with_extension("tmp");
            if std::fs::write(&tmp, serde_json::to_vec(&counters.snapshot()).unwrap_or_default()).is_ok() {
                let _ = std::fs::rename(&tmp, &file);
            }
        }
    };
    let ws = write_stats.clone();
    rt.spawn(async move {
        loop {
            ws();
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if let Err(e) = unmounter.unmount() {
            eprintln!("fuse-mount: unmounting: {e}");
        }
    });
    let r = session.run();
    write_stats();
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fuse-mount: serving {}: {e}", mountpoint.display());
            exit::MOUNT
        }
    }
}

/// What every FUSE volume asks of the kernel at INIT: idmapped binds allowed (containers see
/// the volume through one; FUSE allows it from kernel 6.12), 1 MiB reads and writes, 64
/// requests in the background.
pub fn init_kernel(config: &mut fuser::KernelConfig) {
    if config.add_capabilities(fuser::InitFlags::FUSE_ALLOW_IDMAP).is_err() {
        tracing::warn!("this kernel's FUSE cannot be idmapped: pods with user namespaces will not mount it");
    }
    let _ = config.set_max_readahead(1 << 20);
    let _ = config.set_max_write(1 << 20);
    let _ = config.set_max_background(64);
}

/// A runtime for a mount process.
pub fn runtime() -> Result<tokio::runtime::Runtime, i32> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("fuse-mount: runtime: {e}");
            exit::MOUNT
        })
}
