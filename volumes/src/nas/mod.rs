//! `nas.csi.nodeless.io`: NFS exports (Alibaba NAS, or any NFS server) mounted in pods,
//! ReadWriteMany, with the attributes of alibaba-cloud-csi-driver's nasplugin (`server`,
//! `path`, `vers`, mount options), so PVs written for ASK carry over.
//!
//! **Which client.** Where the kernel has an NFS client (`nfs` in `/proc/filesystems` and
//! `mount.nfs` installed), the volume is an NFS mount of the kernel's, any version. Where it
//! has none (this repository's test machines), it is a FUSE mount speaking NFSv3 from user
//! space ([`fs`]), served by its own process like the OSS mounts ([`crate::fuse`]); a volume
//! asking for NFSv4 there fails with the reason, never mounted as v3 instead. The mount table
//! says which one served a pod (`nfs`/`nfs4`, or `fuse` with source `nfs3-fuse:host:/path`),
//! and the node says it in the pod's events.
//!
//! **Dynamic volumes** (`volumeAs: subpath`): a StorageClass names a shared export (`server:
//! host:/path`); each claim gets the directory `<path>/<volume name>`. Deleting the volume
//! removes that directory, or with `archiveOnDelete: "true"` renames it
//! `archived-<volume name>-<unix time>`. The controller keeps a record per volume under
//! `<state>/volumes/` (no secrets: NFS has none).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nfs3_client::nfs3_types::nfs3::*;
use serde::{Deserialize, Serialize};

use crate::csi::controller_server::Controller;
use crate::csi::identity_server::Identity;
use crate::csi::node_server::Node;
use crate::csi::*;
use crate::error::Error;
use crate::locks::Locks;
use crate::shared_fs::{self, required};

pub mod fs;
pub mod params;

/// The driver's name.
pub const NAS_DRIVER: &str = "nas.csi.nodeless.io";
/// What the mount configuration's `kind` says for NAS mounts.
pub const KIND: &str = "nas";
const ID_PREFIX: &str = "nas-";
/// Connections a user-space mount keeps to its server.
const CONNECTIONS: usize = 8;

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

/// How a NAS driver is set up.
#[derive(Clone, Debug)]
pub struct NasConfig {
    pub state_dir: PathBuf,
    pub node_id: String,
    /// The program that serves a user-space mount: `nodeless csi fuse-mount`.
    pub mount_command: Vec<OsString>,
    /// Use the kernel's NFS client: `None` finds out (`/proc/filesystems`, `mount.nfs`).
    pub kernel_client: Option<bool>,
}

impl NasConfig {
    fn mounter(&self) -> crate::fuse::Mounter {
        crate::fuse::Mounter {
            state_dir: self.state_dir.clone(),
            command: self.mount_command.clone(),
        }
    }
}

/// Whether this host's kernel can mount NFS itself.
pub fn kernel_has_nfs() -> bool {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let listed = fs
        .lines()
        .any(|l| matches!(l.split_whitespace().last(), Some("nfs" | "nfs4")));
    listed
        && ["/sbin/mount.nfs", "/usr/sbin/mount.nfs"]
            .iter()
            .any(|p| Path::new(p).exists())
}

/// The NAS driver: serve it with [`crate::serve`]. Cloning shares it.
#[derive(Clone)]
pub struct NasDriver {
    ctx: Arc<Ctx>,
}

struct Ctx {
    config: NasConfig,
    kernel: bool,
    locks: Locks,
}

/// What the controller keeps of a volume it made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct VolumeRecord {
    name: String,
    capacity: i64,
    /// The volume's attributes: server, path (its own directory), vers.
    attributes: HashMap<String, String>,
    /// The class's mount options (the ports among them reach the server).
    mount_flags: Vec<String>,
    archive: bool,
}

/// A user-space mount's configuration (for [`crate::mounter`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountConfig {
    pub host: String,
    pub path: String,
    pub nfs_port: Option<u16>,
    pub mount_port: Option<u16>,
    pub read_only: bool,
    pub mountpoint: PathBuf,
    pub stats_file: PathBuf,
}

impl NasDriver {
    pub fn new(config: NasConfig) -> Result<NasDriver, Error> {
        if config.mount_command.is_empty() {
            return Err(Error::invalid("mount command", "names no program"));
        }
        for d in ["volumes", "mounts", "cache"] {
            let p = config.state_dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| Error::io("mkdir", &p, e))?;
        }
        let kernel = config.kernel_client.unwrap_or_else(kernel_has_nfs);
        tracing::info!(
            client = if kernel {
                "the kernel's"
            } else {
                "user-space NFSv3 (FUSE)"
            },
            "NAS volumes are mounted with"
        );
        Ok(NasDriver {
            ctx: Arc::new(Ctx {
                config,
                kernel,
                locks: Locks::default(),
            }),
        })
    }

    fn volume_record(&self, id: &str) -> PathBuf {
        self.ctx.config.state_dir.join("volumes").join(format!("{id}.json"))
    }
}

/// A short-lived connection to `host:path` for the controller's directory work.
async fn connect(v: &params::Volume) -> Result<(fs::Pool, nfs_fh3), tonic::Status> {
    let pool = fs::Pool::new(fs::Export {
        host: v.host.clone(),
        nfs_port: v.nfs_port,
        mount_port: v.mount_port,
        path: v.path.clone(),
        subdir: String::new(),
        read_only: false,
        connections: 1,
    });
    let (_client, root) = pool
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("reaching the export: {e}")))?;
    Ok((pool, root))
}

fn nfs_status(what: &str, errno: i32) -> tonic::Status {
    let e = std::io::Error::from_raw_os_error(errno);
    tonic::Status::internal(format!("{what}: {e}"))
}

async fn lookup(pool: &fs::Pool, dir: &nfs_fh3, name: &str) -> Result<Option<(nfs_fh3, bool)>, i32> {
    let (d, n) = (dir.clone(), filename3(name.as_bytes().to_vec().into()));
    let r = pool
        .call(move |c| {
            Box::pin(async move {
                c.lookup(&LOOKUP3args {
                    what: diropargs3 { dir: d, name: n },
                })
                .await
            })
        })
        .await?;
    match r {
        Nfs3Result::Ok(ok) => {
            let dir = matches!(&ok.obj_attributes, Nfs3Option::Some(a) if a.type_ == ftype3::NF3DIR);
            Ok(Some((ok.object, dir)))
        }
        Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => Ok(None),
        Nfs3Result::Err((s, _)) => Err(fs::errno_of(s)),
    }
}

/// Remove `name` under `dir` and everything in it.
fn remove_tree<'a>(pool: &'a fs::Pool, dir: nfs_fh3, name: String) -> futures::future::BoxFuture<'a, Result<(), i32>> {
    Box::pin(async move {
        let Some((fh, is_dir)) = lookup(pool, &dir, &name).await? else {
            return Ok(());
        };
        if is_dir {
            let mut cookie = 0;
            let mut verf = cookieverf3::default();
            let mut children = Vec::new();
            loop {
                let d = fh.clone();
                let r = pool
                    .call(move |c| {
                        Box::pin(async move {
                            c.readdir(&READDIR3args {
                                dir: d,
                                cookie,
                                cookieverf: verf,
                                count: 64 * 1024,
                            })
                            .await
                        })
                    })
                    .await?;
                let r = match r {
                    Nfs3Result::Ok(r) => r,
                    Nfs3Result::Err((s, _)) => return Err(fs::errno_of(s)),
                };
                verf = r.cookieverf;
                let eof = r.reply.eof;
                for e in r.reply.entries.into_inner() {
                    cookie = e.cookie;
                    let n = String::from_utf8_lossy(e.name.0.as_ref()).into_owned();
                    if n != "." && n != ".." {
                        children.push(n);
                    }
                }
                if eof {
                    break;
                }
            }
            for c in children {
                remove_tree(pool, fh.clone(), c).await?;
            }
            let (d, n) = (dir.clone(), filename3(name.as_bytes().to_vec().into()));
            let r = pool
                .call(move |c| {
                    Box::pin(async move {
                        c.rmdir(&RMDIR3args {
                            object: diropargs3 { dir: d, name: n },
                        })
                        .await
                    })
                })
                .await?;
            if let Nfs3Result::Err((s, _)) = r {
                return Err(fs::errno_of(s));
            }
        } else {
            let (d, n) = (dir.clone(), filename3(name.as_bytes().to_vec().into()));
            let r = pool
                .call(move |c| {
                    Box::pin(async move {
                        c.remove(&REMOVE3args {
                            object: diropargs3 { dir: d, name: n },
                        })
                        .await
                    })
                })
                .await?;
            if let Nfs3Result::Err((s, _)) = r {
                return Err(fs::errno_of(s));
            }
        }
        Ok(())
    })
}

#[tonic::async_trait]
impl Identity for NasDriver {
    async fn get_plugin_info(&self, _: tonic::Request<GetPluginInfoRequest>) -> Reply<GetPluginInfoResponse> {
        Ok(tonic::Response::new(shared_fs::plugin_info(NAS_DRIVER)))
    }

    async fn get_plugin_capabilities(
        &self,
        _: tonic::Request<GetPluginCapabilitiesRequest>,
    ) -> Reply<GetPluginCapabilitiesResponse> {
        Ok(tonic::Response::new(shared_fs::plugin_capabilities()))
    }

    async fn probe(&self, _: tonic::Request<ProbeRequest>) -> Reply<ProbeResponse> {
        shared_fs::probe(&self.ctx.config.state_dir).map(tonic::Response::new)
    }
}

#[tonic::async_trait]
impl Controller for NasDriver {
    async fn create_volume(&self, request: tonic::Request<CreateVolumeRequest>) -> Reply<CreateVolumeResponse> {
        let req = request.into_inner();
        let name = required("name", &req.name)?.to_string();
        let (flags, _) =
            shared_fs::mount_capabilities("volume_capabilities", &req.volume_capabilities, "an NFS export")?;
        if req.volume_content_source.is_some() {
            return Err(tonic::Status::invalid_argument(
                "volume_content_source: NAS volumes cannot be made from snapshots or other volumes",
            ));
        }
        let mut p: HashMap<String, String> = req
            .parameters
            .iter()
            .filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match p.remove("volumeAs").as_deref() {
            None | Some("subpath") => {}
            Some(other) => {
                return Err(tonic::Status::from(Error::invalid(
                    "parameters.volumeAs",
                    format!("{other:?}: only \"subpath\" (a directory per volume on a shared export) is offered"),
                )));
            }
        }
        let archive = match p.remove("archiveOnDelete").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(o) => {
                return Err(tonic::Status::from(Error::invalid(
                    "parameters.archiveOnDelete",
                    format!("{o:?} is not true or false"),
                )));
            }
        };
        // nasplugin's class options that only matter to its own provisioning.
        p.remove("mode");
        p.remove("modeType");
        let base = params::volume(&p, &flags, false).map_err(tonic::Status::from)?;
        for k in p.keys() {
            if !matches!(k.as_str(), "server" | "path" | "vers" | "port" | "mountport") {
                return Err(tonic::Status::from(Error::invalid(
                    "parameters",
                    format!("{k:?} is not a parameter of this driver"),
                )));
            }
        }
        let dir_name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let capacity = req
            .capacity_range
            .as_ref()
            .map(|r| r.required_bytes.max(0))
            .unwrap_or(0);
        let mut attributes = HashMap::from([
            ("server".to_string(), base.host.clone()),
            (
                "path".to_string(),
                format!("{}/{dir_name}", base.path.trim_end_matches('/')),
            ),
            ("vers".to_string(), base.vers.clone()),
            ("port".to_string(), p.get("port").cloned().unwrap_or_default()),
            ("mountport".to_string(), p.get("mountport").cloned().unwrap_or_default()),
        ]);
        let id = crate::disk::params::id_for(ID_PREFIX, &name);
        let _guard = self.ctx.locks.lock(&id).await;
        let record = self.volume_record(&id);
        let wanted = VolumeRecord {
            name: name.clone(),
            capacity,
            attributes: attributes.clone(),
            mount_flags: flags.clone(),
            archive,
        };
        if let Some(had) = crate::records::load::<VolumeRecord>(&record)? {
            if had != wanted {
                return Err(tonic::Status::already_exists(format!(
                    "volume {name:?} exists with other parameters"
                )));
            }
        } else {
            let (pool, root) = connect(&base).await?;
            let (d, n) = (root.clone(), filename3(dir_name.as_bytes().to_vec().into()));
            let r = pool
                .call(move |c| {
                    Box::pin(async move {
                        c.mkdir(&MKDIR3args {
                            where_: diropargs3 { dir: d, name: n },
                            attributes: sattr3 {
                                mode: Nfs3Option::Some(0o777),
                                ..Default::default()
                            },
                        })
                        .await
                    })
                })
                .await
                .map_err(|e| nfs_status("making the volume's directory", e))?;
            match r {
                Nfs3Result::Ok(_) | Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => {}
                Nfs3Result::Err((s, _)) => return Err(nfs_status("making the volume's directory", fs::errno_of(s))),
            }
            crate::records::save(&record, &wanted)?;
        }
        attributes.retain(|_, v| !v.is_empty());
        Ok(tonic::Response::new(CreateVolumeResponse {
            volume: Some(crate::csi::Volume {
                capacity_bytes: capacity,
                volume_id: id,
                volume_context: attributes,
                ..Default::default()
            }),
        }))
    }

    async fn delete_volume(&self, request: tonic::Request<DeleteVolumeRequest>) -> Reply<DeleteVolumeResponse> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        if !crate::disk::params::is_id_for(ID_PREFIX, &id) {
            return Ok(tonic::Response::new(DeleteVolumeResponse {}));
        }
        let _guard = self.ctx.locks.lock(&id).await;
        let record = self.volume_record(&id);
        let Some(had) = crate::records::load::<VolumeRecord>(&record)? else {
            return Ok(tonic::Response::new(DeleteVolumeResponse {}));
        };
        let v = params::volume(&had.attributes, &had.mount_flags, false).map_err(tonic::Status::from)?;
        let (parent, dir_name) = v.path.rsplit_once('/').unwrap_or(("", v.path.as_str()));
        let base = params::Volume {
            path: if parent.is_empty() {
                "/".into()
            } else {
                parent.to_string()
            },
            ..v.clone()
        };
        let (pool, root) = connect(&base).await?;
        if had.archive {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let (d1, d2) = (root.clone(), root.clone());
            let from = filename3(dir_name.as_bytes().to_vec().into());
            let to = filename3(format!("archived-{dir_name}-{stamp}").into_bytes().into());
            let r = pool
                .call(move |c| {
                    Box::pin(async move {
                        c.rename(&RENAME3args {
                            from: diropargs3 { dir: d1, name: from },
                            to: diropargs3 { dir: d2, name: to },
                        })
                        .await
                    })
                })
                .await
                .map_err(|e| nfs_status("archiving the volume's directory", e))?;
            match r {
                Nfs3Result::Ok(_) | Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => {}
                Nfs3Result::Err((s, _)) => return Err(nfs_status("archiving the volume's directory", fs::errno_of(s))),
            }
        } else {
            remove_tree(&pool, root, dir_name.to_string())
                .await
                .map_err(|e| nfs_status("removing the volume's directory", e))?;
        }
        std::fs::remove_file(&record).map_err(|e| tonic::Status::from(Error::io("unlink", &record, e)))?;
        Ok(tonic::Response::new(DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: tonic::Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Reply<ValidateVolumeCapabilitiesResponse> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?;
        shared_fs::mount_capabilities("volume_capabilities", &req.volume_capabilities, "an NFS export")?;
        if !crate::disk::params::is_id_for(ID_PREFIX, id) || !self.volume_record(id).is_file() {
            return Err(tonic::Status::not_found(format!("volume {id} does not exist")));
        }
        Ok(tonic::Response::new(shared_fs::confirmed(req)))
    }

    async fn controller_get_capabilities(
        &self,
        _: tonic::Request<ControllerGetCapabilitiesRequest>,
    ) -> Reply<ControllerGetCapabilitiesResponse> {
        Ok(tonic::Response::new(shared_fs::controller_capabilities()))
    }
}

/// Mount `v` at `target` with the kernel's NFS client.
async fn kernel_mount(v: &params::Volume, target: &Path) -> Result<(), tonic::Status> {
    std::fs::create_dir_all(target).map_err(|e| tonic::Status::internal(format!("mkdir {}: {e}", target.display())))?;
    let mut opts = v.options.clone();
    if !opts.iter().any(|o| o.starts_with("vers=") || o.starts_with("nfsvers=")) {
        opts.push(format!("vers={}", v.vers));
    }
    if v.read_only && !opts.iter().any(|o| o == "ro") {
        opts.push("ro".into());
    }
    let out = tokio::process::Command::new("mount")
        .args(["-t", "nfs", "-o", &opts.join(",")])
        .arg(format!("{}:{}", v.host, v.path))
        .arg(target)
        .output()
        .await
        .map_err(|e| tonic::Status::internal(format!("running mount: {e}")))?;
    if !out.status.success() {
        return Err(tonic::Status::internal(format!(
            "mount -t nfs {}:{}: {}",
            v.host,
            v.path,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Node for NasDriver {
    async fn node_publish_volume(
        &self,
        request: tonic::Request<NodePublishVolumeRequest>,
    ) -> Reply<NodePublishVolumeResponse> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        let target = PathBuf::from(required("target_path", &req.target_path)?);
        let cap = req
            .volume_capability
            .clone()
            .ok_or_else(|| tonic::Status::from(Error::Missing("volume_capability")))?;
        let (flags, cap_ro) =
            shared_fs::mount_capabilities("volume_capability", std::slice::from_ref(&cap), "an NFS export")?;
        let attributes: HashMap<String, String> = req.volume_context.clone().into_iter().collect();
        let v = params::volume(&attributes, &flags, req.readonly || cap_ro).map_err(tonic::Status::from)?;
        let _guard = self.ctx.locks.lock(&target.display().to_string()).await;
        if self.ctx.kernel {
            if crate::fuse::mounted_at(&target) || is_nfs_mount(&target) {
                return Ok(tonic::Response::new(NodePublishVolumeResponse {}));
            }
            kernel_mount(&v, &target).await?;
            return Ok(tonic::Response::new(NodePublishVolumeResponse {}));
        }
        if !v.is_v3() {
            return Err(tonic::Status::failed_precondition(format!(
                "this node's kernel has no NFS client and its user-space client speaks NFSv3 only; the volume asks for vers={}",
                v.vers
            )));
        }
        let m = self.ctx.config.mounter();
        let mc = MountConfig {
            host: v.host,
            path: v.path,
            nfs_port: v.nfs_port,
            mount_port: v.mount_port,
            read_only: v.read_only,
            mountpoint: target.clone(),
            stats_file: m.stats_file(&target),
        };
        crate::fuse::publish(&m, &id, &target, KIND, &mc).await?;
        Ok(tonic::Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: tonic::Request<NodeUnpublishVolumeRequest>,
    ) -> Reply<NodeUnpublishVolumeResponse> {
        let req = request.into_inner();
        required("volume_id", &req.volume_id)?;
        let target = PathBuf::from(required("target_path", &req.target_path)?);
        let _guard = self.ctx.locks.lock(&target.display().to_string()).await;
        if is_nfs_mount(&target) {
            // The kernel's client: detached at once, so a server that is gone never holds the
            // pod's teardown.
            rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH)
                .map_err(|e| tonic::Status::internal(format!("unmounting {}: {e}", target.display())))?;
            let _ = std::fs::remove_dir(&target);
            return Ok(tonic::Response::new(NodeUnpublishVolumeResponse {}));
        }
        crate::fuse::unpublish(&self.ctx.config.mounter(), &target).await?;
        Ok(tonic::Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: tonic::Request<NodeGetVolumeStatsRequest>,
    ) -> Reply<NodeGetVolumeStatsResponse> {
        let req = request.into_inner();
        required("volume_id", &req.volume_id)?;
        let path = PathBuf::from(required("volume_path", &req.volume_path)?);
        if is_nfs_mount(&path) {
            let s = rustix::fs::statvfs(&path).map_err(|e| tonic::Status::internal(e.to_string()))?;
            let total = s.f_blocks * s.f_frsize;
            return Ok(tonic::Response::new(NodeGetVolumeStatsResponse {
                usage: vec![VolumeUsage {
                    available: (s.f_bavail * s.f_frsize) as i64,
                    total: total as i64,
                    used: total.saturating_sub(s.f_bfree * s.f_frsize) as i64,
                    unit: volume_usage::Unit::Bytes as i32,
                }],
            }));
        }
        crate::fuse::stats(&path).await.map(tonic::Response::new)
    }

    async fn node_get_volume_health(
        &self,
        request: tonic::Request<NodeGetVolumeHealthRequest>,
    ) -> Reply<NodeGetVolumeHealthResponse> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        let statuses = if req.volume_publish_path.is_empty() || is_nfs_mount(Path::new(&req.volume_publish_path)) {
            Vec::new()
        } else {
            crate::fuse::health(&self.ctx.config.mounter(), Path::new(&req.volume_publish_path)).await
        };
        Ok(tonic::Response::new(NodeGetVolumeHealthResponse {
            volume_health: Some(VolumeHealth {
                volume_id: id,
                health_statuses: statuses,
            }),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: tonic::Request<NodeGetCapabilitiesRequest>,
    ) -> Reply<NodeGetCapabilitiesResponse> {
        Ok(tonic::Response::new(shared_fs::node_capabilities()))
    }

    async fn node_get_info(&self, _: tonic::Request<NodeGetInfoRequest>) -> Reply<NodeGetInfoResponse> {
        Ok(tonic::Response::new(NodeGetInfoResponse {
            node_id: self.ctx.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

/// Whether the kernel's NFS client has a mount at `target`.
fn is_nfs_mount(target: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    crate::host::mountinfo::parse(&text)
        .iter()
        .any(|m| m.mount_point == target && m.fs_type.starts_with("nfs"))
}

/// The mount process of a NAS volume with the user-space client: reach the export, mount,
/// serve until unmounted. Returns the exit code.
pub fn run_mount(c: MountConfig) -> i32 {
    let rt = match crate::fuse::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let export = fs::Export {
        host: c.host.clone(),
        nfs_port: c.nfs_port,
        mount_port: c.mount_port,
        path: c.path.clone(),
        subdir: String::new(),
        read_only: c.read_only,
        connections: CONNECTIONS,
    };
    let nfs = match rt.block_on(fs::NfsFs::connect(export, rt.handle().clone())) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fuse-mount: {e}");
            return crate::fuse::exit::UNREACHABLE;
        }
    };
    let counters = nfs.counters();
    crate::fuse::serve(
        nfs,
        format!("nfs3-fuse:{}:{}", c.host, c.path),
        &c.mountpoint,
        c.read_only,
        counters,
        &c.stats_file,
        &rt,
    )
}
