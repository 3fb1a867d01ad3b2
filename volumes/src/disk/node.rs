//! Node: a disk attached as a loop device, its file system made on first use only, mounted at
//! the staging path, bind-mounted into pods; raw block volumes bind-mount the device node.
//!
//! The driver keeps nothing of this itself. Whether a volume is staged or published is asked
//! of the kernel on every call — `losetup -j` for the loop device backed by the disk's image,
//! mountinfo for what is mounted at a path and from which device — so every call is idempotent
//! and a restarted driver carries on where the killed one stopped. A file system is made only
//! when `blkid` finds none on the device: a disk is never formatted twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::csi::node_server::Node;
use crate::csi::node_service_capability::{self, rpc};
use crate::csi::volume_health::VolumeHealthEntry;
use crate::csi::volume_usage::Unit;
use crate::csi::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse,
    NodeGetInfoRequest, NodeGetInfoResponse, NodeGetVolumeHealthRequest, NodeGetVolumeHealthResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest, NodePublishVolumeResponse,
    NodeServiceCapability, NodeStageVolumeRequest, NodeStageVolumeResponse, NodeUnpublishVolumeRequest,
    NodeUnpublishVolumeResponse, NodeUnstageVolumeRequest, NodeUnstageVolumeResponse, VolumeHealth,
    VolumeHealthErrorType, VolumeUsage,
};
use crate::error::Error;
use crate::host::{Host, LoopDevice, Mount, MountOptions};

use super::params::{self, Access, Parameters, required};
use super::store::VolumeRecord;
use super::{Context, DiskDriver};

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

/// Unmounting stacked mounts of one volume at one path stops after this many.
const MAX_STACKED: usize = 16;
/// How long NodeUnstageVolume waits for a loop device to go once detached, and how often it
/// looks; the same for a mount that is busy for a moment.
const DETACH_WAIT: Duration = Duration::from_secs(5);
const DETACH_POLL: Duration = Duration::from_millis(20);
const BUSY_WAIT: Duration = Duration::from_secs(2);
const BUSY_POLL: Duration = Duration::from_millis(20);

fn load(ctx: &Context, id: &str) -> Result<VolumeRecord, Error> {
    ctx.store
        .load(id)?
        .ok_or_else(|| Error::NotFound(format!("volume {id} does not exist")))
}

/// The loop device of volume `id` on this node, if it is attached.
fn attached(ctx: &Context, id: &str) -> Result<Option<LoopDevice>, Error> {
    if !params::is_volume_id(id) {
        return Ok(None);
    }
    ctx.host.loop_find(&ctx.store.image(id))
}

/// `path` with symlinks resolved (mountinfo has them resolved); none if it does not exist.
fn resolve(path: &str) -> Result<Option<PathBuf>, Error> {
    match std::fs::canonicalize(path) {
        Ok(p) => Ok(Some(p)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::io("realpath", path, e)),
    }
}

/// What is mounted at a path, seen from a volume.
#[derive(Debug, PartialEq, Eq)]
enum At {
    Nothing,
    /// The volume: its file system (`block: false`) or its device node (`block: true`).
    Ours {
        read_only: bool,
        block: bool,
    },
    /// Something else (what, for the error).
    Other(String),
}

/// Whether mount `m` is of `dev`: its file system, or its device node bind-mounted (mountinfo
/// then shows the device file system, e.g. devtmpfs, with the root `/loopN`).
fn is_of(host: &dyn Host, m: &Mount, dev: &LoopDevice) -> Result<bool, Error> {
    if m.dev == dev.dev {
        return Ok(true);
    }
    if Path::new(&m.root).file_name().is_some() && Path::new(&m.root).file_name() == dev.path.file_name() {
        return Ok(host.block_device(&m.mount_point)? == Some(dev.dev));
    }
    Ok(false)
}

/// What is mounted (on top) at `path`, seen from `dev`.
fn at(host: &dyn Host, path: &Path, dev: Option<&LoopDevice>) -> Result<At, Error> {
    let mounts = host.mounts()?;
    let Some(m) = mounts.iter().rev().find(|m| m.mount_point == path) else {
        return Ok(At::Nothing);
    };
    if let Some(dev) = dev {
        if m.dev == dev.dev {
            return Ok(At::Ours {
                read_only: m.read_only,
                block: false,
            });
        }
        if is_of(host, m, dev)? {
            return Ok(At::Ours {
                read_only: m.read_only,
                block: true,
            });
        }
    }
    Ok(At::Other(format!("{} from {}", m.fs_type, m.dev)))
}

/// Where `dev` is mounted, but for the paths in `except`.
fn mounted_elsewhere(host: &dyn Host, dev: &LoopDevice, except: &[&Path]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for m in host.mounts()? {
        if !except.contains(&m.mount_point.as_path()) && is_of(host, &m, dev)? && !out.contains(&m.mount_point) {
            out.push(m.mount_point);
        }
    }
    Ok(out)
}

/// Unmount `path`, waiting out a short EBUSY: a process that has a file there open for a moment
/// (a child forked while it was open, a scanner) should not fail the call.
fn unmount(host: &dyn Host, path: &Path) -> Result<(), Error> {
    let mut waited = Duration::ZERO;
    loop {
        match host.unmount(path) {
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(16) && waited < BUSY_WAIT => {
                std::thread::sleep(BUSY_POLL);
                waited += BUSY_POLL;
            }
            r => return r,
        }
    }
}

fn mkdir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|e| Error::io("mkdir", path, e))
}

fn stage(ctx: &Context, req: NodeStageVolumeRequest) -> Result<NodeStageVolumeResponse, Error> {
    let id = required("volume_id", &req.volume_id)?;
    let staging = required("staging_target_path", &req.staging_target_path)?;
    let cap = req
        .volume_capability
        .as_ref()
        .ok_or(Error::Missing("volume_capability"))?;
    let cap = params::capability("volume_capability", cap)?;
    let record = load(ctx, id)?;
    if record.published_node.as_deref() != Some(ctx.node_id.as_str()) {
        return Err(Error::FailedPrecondition(format!(
            "volume {id} is not attached to node {} (it is attached to {}); ControllerPublishVolume it first",
            ctx.node_id,
            record.published_node.as_deref().unwrap_or("none")
        )));
    }
    let host = ctx.host.as_ref();
    let dev = match host.loop_find(&ctx.store.image(id))? {
        Some(dev) => dev,
        None => {
            let dev = host.loop_attach(&ctx.store.image(id))?;
            tracing::info!(volume = %id, device = %dev.path.display(), "disk attached as a loop device");
            dev
        }
    };
    let Access::Mount { fs_type, flags } = &cap.access else {
        // A block volume is staged once its device is there; NodePublishVolume binds it.
        return Ok(NodeStageVolumeResponse {});
    };
    mkdir(Path::new(staging))?;
    let staging = resolve(staging)?.ok_or_else(|| Error::NotFound(format!("{staging} vanished")))?;
    match at(host, &staging, Some(&dev))? {
        At::Ours { .. } => return Ok(NodeStageVolumeResponse {}),
        At::Other(what) => {
            return Err(Error::AlreadyExists(format!(
                "{} already has {what} mounted",
                staging.display()
            )));
        }
        At::Nothing => {}
    }
    let parameters = Parameters::from_context(&record.parameters)?;
    let wanted = fs_type.unwrap_or(parameters.fs_type).as_str();
    let fs = match host.fs_type(&dev)? {
        Some(found) if found == wanted => found,
        Some(found) => {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} holds a {found} file system, not {wanted}; a disk is never re-formatted"
            )));
        }
        None => {
            tracing::info!(volume = %id, fs = wanted, "making a file system on a new disk");
            host.mkfs(&dev, wanted, &parameters.mkfs_options)?;
            wanted.to_string()
        }
    };
    // A disk grown while it was not staged, or whose file system could not grow online
    // (ext4's online resize needs CAP_SYS_RESOURCE), has its file system grown here, before it
    // is mounted again.
    if host.grow_unmounted(&dev, &fs)? {
        tracing::info!(volume = %id, fs = %fs, "file system grown to its disk's size before mounting");
    }
    let options = MountOptions::parse(flags, cap.read_only());
    host.mount(&dev, &staging, &fs, &options)?;
    tracing::info!(volume = %id, staging = %staging.display(), "disk staged");
    Ok(NodeStageVolumeResponse {})
}

fn unstage(ctx: &Context, req: NodeUnstageVolumeRequest) -> Result<NodeUnstageVolumeResponse, Error> {
    let id = required("volume_id", &req.volume_id)?;
    let staging = required("staging_target_path", &req.staging_target_path)?;
    let host = ctx.host.as_ref();
    // Not attached: nothing of it is staged (a mount of it would hold the device).
    let Some(dev) = attached(ctx, id)? else {
        return Ok(NodeUnstageVolumeResponse {});
    };
    let staging = resolve(staging)?;
    if let Some(staging) = &staging {
        for _ in 0..MAX_STACKED {
            match at(host, staging, Some(&dev))? {
                At::Ours { .. } => unmount(host, staging)?,
                At::Nothing | At::Other(_) => break,
            }
        }
    }
    let left = mounted_elsewhere(host, &dev, &[])?;
    if !left.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "volume {id} is still published at {}; NodeUnpublishVolume it first",
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    host.loop_detach(&dev)?;
    // `losetup -d` of a device some other process has open (another losetup scanning the
    // devices, a blkid) only marks it to go at that last close: wait for it, so a stage that
    // follows finds no device about to vanish.
    let image = ctx.store.image(id);
    let mut waited = Duration::ZERO;
    while host.loop_find(&image)?.is_some_and(|d| d == dev) {
        if waited >= DETACH_WAIT {
            return Err(Error::Command {
                command: format!("losetup -d {}", dev.path.display()),
                detail: format!("still attached after {DETACH_WAIT:?}: held open elsewhere"),
            });
        }
        std::thread::sleep(DETACH_POLL);
        waited += DETACH_POLL;
    }
    tracing::info!(volume = %id, device = %dev.path.display(), "disk unstaged and detached");
    Ok(NodeUnstageVolumeResponse {})
}

fn publish(ctx: &Context, req: NodePublishVolumeRequest) -> Result<NodePublishVolumeResponse, Error> {
    let id = required("volume_id", &req.volume_id)?;
    let target = required("target_path", &req.target_path)?;
    let cap = req
        .volume_capability
        .as_ref()
        .ok_or(Error::Missing("volume_capability"))?;
    let cap = params::capability("volume_capability", cap)?;
    let staging = required("staging_target_path", &req.staging_target_path)?;
    load(ctx, id)?;
    let host = ctx.host.as_ref();
    let not_staged = || {
        Error::FailedPrecondition(format!(
            "volume {id} is not staged on this node; NodeStageVolume it first"
        ))
    };
    let dev = attached(ctx, id)?.ok_or_else(not_staged)?;
    let read_only = req.readonly || cap.read_only();
    let target_path = Path::new(target);
    let block = cap.access == Access::Block;
    // The source of the bind mount: the staged file system, or the device node.
    let source = if block {
        dev.path.clone()
    } else {
        let staging = resolve(staging)?.ok_or_else(not_staged)?;
        if !matches!(at(host, &staging, Some(&dev))?, At::Ours { .. }) {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is not staged at {}; NodeStageVolume it first",
                staging.display()
            )));
        }
        staging
    };
    let existing = resolve(target)?;
    if let Some(existing) = &existing {
        match at(host, existing, Some(&dev))? {
            At::Ours { read_only: ro, .. } if ro == read_only => return Ok(NodePublishVolumeResponse {}),
            At::Ours { read_only: ro, .. } => {
                return Err(Error::AlreadyExists(format!(
                    "volume {id} is published at {} {}",
                    existing.display(),
                    if ro { "read-only" } else { "read-write" }
                )));
            }
            At::Other(what) => {
                return Err(Error::AlreadyExists(format!(
                    "{} already has {what} mounted",
                    existing.display()
                )));
            }
            At::Nothing => {}
        }
    }
    if cap.single_writer() {
        let mut except: Vec<&Path> = existing.iter().map(PathBuf::as_path).collect();
        if !block {
            except.push(&source);
        }
        let others = mounted_elsewhere(host, &dev, &except)?;
        if let Some(other) = others.first() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is SINGLE_NODE_SINGLE_WRITER and already published at {}",
                other.display()
            )));
        }
    }
    // The mount point: a directory, or a file for a device node. One made here goes again if
    // the mount fails.
    if existing.is_none() {
        if block {
            if let Some(parent) = target_path.parent() {
                mkdir(parent)?;
            }
            std::fs::File::create(target_path).map_err(|e| Error::io("create", target_path, e))?;
        } else {
            mkdir(target_path)?;
        }
    }
    let target = resolve(target)?.ok_or_else(|| Error::NotFound(format!("{target} vanished")))?;
    if let Err(e) = host.bind(&source, &target, read_only) {
        if existing.is_none() {
            let _ = if block {
                std::fs::remove_file(&target)
            } else {
                std::fs::remove_dir(&target)
            };
        }
        return Err(e);
    }
    tracing::info!(volume = %id, target = %target.display(), read_only, "disk published");
    Ok(NodePublishVolumeResponse {})
}

fn unpublish(ctx: &Context, req: NodeUnpublishVolumeRequest) -> Result<NodeUnpublishVolumeResponse, Error> {
    let id = required("volume_id", &req.volume_id)?;
    let target = required("target_path", &req.target_path)?;
    let Some(target) = resolve(target)? else {
        return Ok(NodeUnpublishVolumeResponse {});
    };
    let host = ctx.host.as_ref();
    // A volume not attached here (deleted, or detached) cannot be told apart from another
    // mount; what is mounted at the target is then unmounted as kubelet asks.
    let dev = attached(ctx, id)?;
    for _ in 0..MAX_STACKED {
        match at(host, &target, dev.as_ref())? {
            At::Nothing => break,
            At::Other(what) if dev.is_some() => {
                return Err(Error::FailedPrecondition(format!(
                    "{} has {what} mounted, not volume {id}",
                    target.display()
                )));
            }
            At::Ours { .. } | At::Other(_) => unmount(host, &target)?,
        }
    }
    let removed = match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(&target),
        Ok(_) => std::fs::remove_file(&target),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("remove", &target, e)),
        _ => {}
    }
    tracing::info!(volume = %id, target = %target.display(), "disk unpublished");
    Ok(NodeUnpublishVolumeResponse {})
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The loop device of volume `id` and `path` resolved, when `path` is a mount of it.
fn mounted_at(ctx: &Context, id: &str, path: &str) -> Result<(LoopDevice, PathBuf, bool), Error> {
    load(ctx, id)?;
    let dev = attached(ctx, id)?.ok_or_else(|| Error::NotFound(format!("volume {id} is not attached to this node")))?;
    let not_mounted = || Error::NotFound(format!("{path} is not a mount of volume {id}"));
    let resolved = resolve(path)?.ok_or_else(not_mounted)?;
    match at(ctx.host.as_ref(), &resolved, Some(&dev))? {
        At::Ours { block, .. } => Ok((dev, resolved, block)),
        _ => Err(not_mounted()),
    }
}

fn stats(ctx: &Context, req: NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse, Error> {
    let id = required("volume_id", &req.volume_id)?;
    let path = required("volume_path", &req.volume_path)?;
    let (dev, path, block) = mounted_at(ctx, id, path)?;
    let usage = if block {
        vec![VolumeUsage {
            total: clamp(ctx.host.device_size(&dev)?),
            unit: Unit::Bytes as i32,
            ..Default::default()
        }]
    } else {
        let u = ctx.host.usage(&path)?;
        vec![
            VolumeUsage {
                available: clamp(u.available_bytes),
                total: clamp(u.total_bytes),
                used: clamp(u.used_bytes),
                unit: Unit::Bytes as i32,
            },
            VolumeUsage {
                available: clamp(u.free_inodes),
                total: clamp(u.total_inodes),
                used: clamp(u.used_inodes),
                unit: Unit::Inodes as i32,
            },
        ]
    };
    Ok(NodeGetVolumeStatsResponse { usage })
}

fn expand(ctx: &Context, req: NodeExpandVolumeRequest) -> Result<NodeExpandVolumeResponse, Error> {
    let id = required("volume_id", &req.volume_id)?;
    let path = required("volume_path", &req.volume_path)?;
    if let Some(cap) = &req.volume_capability {
        params::capability("volume_capability", cap)?;
    }
    let (dev, path, block) = mounted_at(ctx, id, path)?;
    let host = ctx.host.as_ref();
    host.loop_refresh(&dev)?;
    let size = host.device_size(&dev)?;
    let required_bytes = req.capacity_range.as_ref().map_or(0, |r| r.required_bytes);
    if clamp(size) < required_bytes {
        return Err(Error::FailedPrecondition(format!(
            "volume {id} is {size} bytes, less than the {required_bytes} asked; ControllerExpandVolume it first"
        )));
    }
    if !block {
        let fs = host
            .fs_type(&dev)?
            .ok_or_else(|| Error::FailedPrecondition(format!("volume {id} has no file system to grow")))?;
        host.grow_fs(&dev, &fs, &path)?;
        tracing::info!(volume = %id, bytes = size, fs, "file system grown");
    }
    Ok(NodeExpandVolumeResponse {
        capacity_bytes: clamp(size),
    })
}

fn health(ctx: &Context, req: NodeGetVolumeHealthRequest) -> Result<NodeGetVolumeHealthResponse, Error> {
    let id = required("volume_id", &req.volume_id)?;
    load(ctx, id)?;
    let entry = |status: VolumeHealthErrorType, reason: &str, message: String| VolumeHealthEntry {
        status: status as i32,
        reason: reason.to_string(),
        message,
    };
    let mut statuses = Vec::new();
    if !ctx.store.image(id).exists() {
        let message = format!("the image of volume {id} is gone");
        statuses.push(entry(VolumeHealthErrorType::DataLoss, "ImageMissing", message));
    }
    let dev = attached(ctx, id)?;
    for (path, reason) in [
        (&req.staging_target_path, "NotStaged"),
        (&req.volume_publish_path, "NotPublished"),
    ] {
        if path.is_empty() {
            continue;
        }
        let mounted = match (&dev, resolve(path)?) {
            (Some(dev), Some(p)) => matches!(at(ctx.host.as_ref(), &p, Some(dev))?, At::Ours { .. }),
            _ => false,
        };
        if !mounted {
            let message = format!("{path} is not a mount of volume {id}");
            statuses.push(entry(VolumeHealthErrorType::Inaccessible, reason, message));
        }
    }
    Ok(NodeGetVolumeHealthResponse {
        volume_health: Some(VolumeHealth {
            volume_id: id.to_string(),
            health_statuses: statuses,
        }),
    })
}

fn capabilities() -> NodeGetCapabilitiesResponse {
    let caps = [
        rpc::Type::StageUnstageVolume,
        rpc::Type::GetVolumeStats,
        rpc::Type::ExpandVolume,
        rpc::Type::SingleNodeMultiWriter,
        rpc::Type::GetVolumeHealth,
    ];
    NodeGetCapabilitiesResponse {
        capabilities: caps
            .into_iter()
            .map(|t| NodeServiceCapability {
                r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc {
                    r#type: t as i32,
                })),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Node for DiskDriver {
    async fn node_stage_volume(
        &self,
        request: tonic::Request<NodeStageVolumeRequest>,
    ) -> Reply<NodeStageVolumeResponse> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        self.run(&id, move |ctx| stage(ctx, req)).await
    }

    async fn node_unstage_volume(
        &self,
        request: tonic::Request<NodeUnstageVolumeRequest>,
    ) -> Reply<NodeUnstageVolumeResponse> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        self.run(&id, move |ctx| unstage(ctx, req)).await
    }

    async fn node_publish_volume(
        &self,
        request: tonic::Request<NodePublishVolumeRequest>,
    ) -> Reply<NodePublishVolumeResponse> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        self.run(&id, move |ctx| publish(ctx, req)).await
    }

    async fn node_unpublish_volume(
        &self,
        request: tonic::Request<NodeUnpublishVolumeRequest>,
    ) -> Reply<NodeUnpublishVolumeResponse> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        self.run(&id, move |ctx| unpublish(ctx, req)).await
    }

    async fn node_get_volume_stats(
        &self,
        request: tonic::Request<NodeGetVolumeStatsRequest>,
    ) -> Reply<NodeGetVolumeStatsResponse> {
        let req = request.into_inner();
        self.run_unlocked(move |ctx| stats(ctx, req)).await
    }

    async fn node_expand_volume(
        &self,
        request: tonic::Request<NodeExpandVolumeRequest>,
    ) -> Reply<NodeExpandVolumeResponse> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        self.run(&id, move |ctx| expand(ctx, req)).await
    }

    async fn node_get_volume_health(
        &self,
        request: tonic::Request<NodeGetVolumeHealthRequest>,
    ) -> Reply<NodeGetVolumeHealthResponse> {
        let req = request.into_inner();
        self.run_unlocked(move |ctx| health(ctx, req)).await
    }

    async fn node_get_capabilities(
        &self,
        _: tonic::Request<NodeGetCapabilitiesRequest>,
    ) -> Reply<NodeGetCapabilitiesResponse> {
        Ok(tonic::Response::new(capabilities()))
    }

    async fn node_get_info(&self, _: tonic::Request<NodeGetInfoRequest>) -> Reply<NodeGetInfoResponse> {
        Ok(tonic::Response::new(NodeGetInfoResponse {
            node_id: self.ctx.node_id.clone(),
            max_volumes_per_node: self.ctx.max_volumes_per_node,
            accessible_topology: None,
        }))
    }
}
