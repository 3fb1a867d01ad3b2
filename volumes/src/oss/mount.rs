//! One OSS mount: started by NodePublishVolume as its own process (`nodeless csi oss-mount
//! --config <file>`, [`run`]), found again from its record by NodeUnpublishVolume and
//! NodeGetVolumeStats, whether or not the driver was restarted in between.
//!
//! The record directory (`<state>/mounts/<hash>/`) holds `config.json` (mode 0600: it carries
//! the volume's keys), `pid`, `log` and `stats.json` (the mount's counters, rewritten every two
//! seconds).
//!
//! Unpublishing never hangs on a server that is gone: the mount is detached at once (lazy
//! unmount), the process is given [`EXIT_WAIT`] to finish and is then killed.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::params::{MountConfig, Volume};
use super::{OssConfig, mount_dir};
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

/// Mount volume `v` at `target` (NodePublishVolume): start its process and wait for the mount.
pub async fn publish(
    config: &OssConfig,
    id: &str,
    target: &Path,
    v: Volume,
    creds: Option<(String, String)>,
) -> Result<(), tonic::Status> {
    let dir = mount_dir(config, target);
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
    let cache = config.state_dir.join("cache").join(dir.file_name().unwrap_or_default());
    for d in [target, dir.as_path(), cache.as_path()] {
        std::fs::create_dir_all(d).map_err(|e| io_status("mkdir", d, e))?;
    }
    let (access_key, secret_key) = match creds {
        Some((a, s)) => (Some(a), Some(s)),
        None => (None, None),
    };
    let mc = MountConfig {
        endpoint: v.endpoint,
        bucket: v.bucket,
        region: v.region,
        path_style: v.path_style,
        prefix: v.prefix,
        uid: v.uid,
        gid: v.gid,
        umask: v.umask,
        read_only: v.read_only,
        listing_ttl_secs: v.listing_ttl_secs,
        part_mib: v.part_mib,
        parallel: v.parallel,
        readahead_mib: v.readahead_mib,
        access_key,
        secret_key,
        mountpoint: target.to_path_buf(),
        cache_dir: cache,
        stats_file: dir.join("stats.json"),
    };
    let config_file = dir.join("config.json");
    write_private(&config_file, &serde_json::to_vec(&mc).unwrap_or_default())
        .map_err(|e| io_status("writing", &config_file, e))?;
    std::fs::write(dir.join("volume"), id).map_err(|e| io_status("writing", &dir, e))?;
    let log_path = dir.join("log");
    let log = std::fs::File::create(&log_path).map_err(|e| io_status("creating", &log_path, e))?;
    let log2 = log.try_clone().map_err(|e| io_status("opening", &log_path, e))?;
    let mut cmd = tokio::process::Command::new(&config.mount_command[0]);
    cmd.args(&config.mount_command[1..])
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
        .map_err(|e| tonic::Status::internal(format!("starting {:?}: {e}", config.mount_command[0])))?;
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
            let msg = format!("mounting the bucket failed: {why}");
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
                "the bucket was not mounted within {} s: {why}",
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
pub async fn unpublish(config: &OssConfig, target: &Path) -> Result<(), tonic::Status> {
    let dir = mount_dir(config, target);
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
            tracing::warn!(pid, target = %target.display(), "a detached OSS mount did not exit; killing it");
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
    let cache = config.state_dir.join("cache").join(dir.file_name().unwrap_or_default());
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
            "{} is not an OSS volume of this node",
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
pub async fn health(config: &OssConfig, path: &Path) -> Vec<VolumeHealthEntry> {
    let entry = |reason: &str, message: String| VolumeHealthEntry {
        status: VolumeHealthErrorType::Inaccessible as i32,
        reason: reason.to_string(),
        message,
    };
    if !mounted_at(path) {
        return vec![entry("NotPublished", format!("{} is not mounted", path.display()))];
    }
    let mut out = Vec::new();
    if live_pid(&mount_dir(config, path)).is_none() {
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
        let Some(c) = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<MountConfig>(&b).ok())
        else {
            continue;
        };
        out.push(MountState {
            volume: std::fs::read_to_string(dir.join("volume")).unwrap_or_default(),
            target: c.mountpoint,
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

/// The mount process: read the configuration, check the bucket, mount, serve until unmounted
/// (or SIGTERM/SIGINT, which unmount). Returns the exit code.
pub fn run(config_file: &Path) -> i32 {
    let c: MountConfig = match std::fs::read(config_file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oss-mount: {}: {e}", config_file.display());
            return exit::CONFIG;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oss-mount: runtime: {e}");
            return exit::MOUNT;
        }
    };
    let creds = c.access_key.clone().zip(c.secret_key.clone());
    let s3 = match super::s3::S3::new(&c.endpoint, &c.bucket, &c.region, c.path_style, creds) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oss-mount: {e}");
            return exit::CONFIG;
        }
    };
    if let Err(e) = rt.block_on(s3.check(&c.prefix)) {
        eprintln!("oss-mount: bucket {:?} at {}: {e}", c.bucket, c.endpoint);
        return match e {
            super::s3::S3Error::Denied(_) => exit::DENIED,
            super::s3::S3Error::Transport(_) => exit::UNREACHABLE,
            _ => exit::CONFIG,
        };
    }
    let s3_counters = s3.counters.clone();
    let fs = super::fs::ObjectFs::new(s3, c.fs_options(), rt.handle().clone());
    let fs_counters = fs.counters();
    let mut options = vec![
        fuser::MountOption::FSName(format!("oss:{}/{}", c.bucket, c.prefix)),
        fuser::MountOption::Subtype("nodeless-oss".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if c.read_only {
        options.push(fuser::MountOption::RO);
    }
    let mut fc = fuser::Config::default();
    fc.mount_options = options;
    fc.acl = fuser::SessionACL::All;
    fc.n_threads = Some(4);
    fc.clone_fd = true;
    let session = match fuser::Session::new(fs, &c.mountpoint, &fc) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oss-mount: mounting at {}: {e}", c.mountpoint.display());
            return exit::MOUNT;
        }
    };
    let mut session = session;
    let mut unmounter = session.unmount_callable();
    eprintln!(
        "oss-mount: {}/{} at {} mounted on {}",
        c.bucket,
        c.prefix,
        c.endpoint,
        c.mountpoint.display()
    );
    let write_stats = {
        let file = c.stats_file.clone();
        move || {
            let s = Stats {
                operations: fs_counters.operations.load(Ordering::Relaxed),
                errors: fs_counters.errors.load(Ordering::Relaxed),
                bytes_read: fs_counters.bytes_read.load(Ordering::Relaxed),
                bytes_written: fs_counters.bytes_written.load(Ordering::Relaxed),
                requests: s3_counters.requests.load(Ordering::Relaxed),
                request_errors: s3_counters.errors.load(Ordering::Relaxed),
                bytes_downloaded: s3_counters.bytes_down.load(Ordering::Relaxed),
                bytes_uploaded: s3_counters.bytes_up.load(Ordering::Relaxed),
            };
            let tmp = file.with_extension("tmp");
            if std::fs::write(&tmp, serde_json::to_vec(&s).unwrap_or_default()).is_ok() {
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
            eprintln!("oss-mount: unmounting: {e}");
        }
    });
    let r = session.run();
    write_stats();
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("oss-mount: serving {}: {e}", c.mountpoint.display());
            exit::MOUNT
        }
    }
}
