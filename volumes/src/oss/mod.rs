//! `oss.csi.nodeless.io`: object storage buckets (Alibaba OSS, or any S3 API) mounted in pods,
//! with the volume attributes of alibaba-cloud-csi-driver's ossplugin (`bucket`, `url`, `path`,
//! `otherOpts`, and `akId`/`akSecret` from `nodePublishSecretRef`), so PVs written for ASK carry
//! over.
//!
//! Each published volume is a FUSE mount ([`fs`]) served by its own process (see
//! [`crate::fuse`]): a driver or node that is killed or restarted leaves running pods' mounts
//! serving, and finds them again from its records.
//!
//! Dynamic provisioning (`volumeAs: subpath`, the default) gives each claim its own prefix
//! `<path>/<volume name>/` in the class's bucket; deleting the volume deletes the objects under
//! it. The controller keeps a record per volume under `<state>/volumes/` so DeleteVolume knows
//! the bucket; the credentials always come with the call (the provisioner secret), never from
//! the records.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
pub mod s3;

/// The driver's name.
pub const OSS_DRIVER: &str = "oss.csi.nodeless.io";
/// The volume id prefix of dynamically provisioned volumes.
const ID_PREFIX: &str = "oss-";

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

/// How an OSS driver is set up.
#[derive(Clone, Debug)]
pub struct OssConfig {
    /// Records of volumes and mounts, and the staging area of files being written.
    pub state_dir: PathBuf,
    pub node_id: String,
    /// The program (and its first arguments) that serves one mount: `nodeless csi
    /// fuse-mount`. `--config <file>` is added.
    pub mount_command: Vec<OsString>,
}

impl OssConfig {
    fn mounter(&self) -> crate::fuse::Mounter {
        crate::fuse::Mounter {
            state_dir: self.state_dir.clone(),
            command: self.mount_command.clone(),
        }
    }
}

/// The OSS driver: serve it with [`crate::serve`]. Cloning shares it.
#[derive(Clone)]
pub struct OssDriver {
    ctx: Arc<Ctx>,
}

struct Ctx {
    config: OssConfig,
    locks: Locks,
}

/// What the controller keeps of a volume it made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct VolumeRecord {
    name: String,
    /// The size asked for (a bucket has none; it is kept so a second request for the name
    /// with another size is told apart, as CSI asks).
    #[serde(default)]
    capacity: i64,
    /// The volume's attributes (its context): bucket, url, path, otherOpts.
    attributes: HashMap<String, String>,
}

impl OssDriver {
    pub fn new(config: OssConfig) -> Result<OssDriver, Error> {
        if config.mount_command.is_empty() {
            return Err(Error::invalid("mount command", "names no program"));
        }
        for d in ["volumes", "mounts", "cache"] {
            let p = config.state_dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| Error::io("mkdir", &p, e))?;
        }
        Ok(OssDriver {
            ctx: Arc::new(Ctx {
                config,
                locks: Locks::default(),
            }),
        })
    }

    fn volume_record(&self, id: &str) -> PathBuf {
        self.ctx.config.state_dir.join("volumes").join(format!("{id}.json"))
    }
}

#[tonic::async_trait]
impl Identity for OssDriver {
    async fn get_plugin_info(&self, _: tonic::Request<GetPluginInfoRequest>) -> Reply<GetPluginInfoResponse> {
        Ok(tonic::Response::new(shared_fs::plugin_info(OSS_DRIVER)))
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

fn s3_of(v: &params::Volume, secrets: &HashMap<String, String>) -> Result<s3::S3, tonic::Status> {
    let creds = params::credentials(secrets).map_err(tonic::Status::from)?;
    s3::S3::new(&v.endpoint, &v.bucket, &v.region, v.path_style, creds).map_err(tonic::Status::invalid_argument)
}

fn s3_status(what: &str, e: s3::S3Error) -> tonic::Status {
    match e {
        s3::S3Error::Denied(m) => tonic::Status::permission_denied(format!("{what}: {m}")),
        s3::S3Error::Transport(m) => tonic::Status::unavailable(format!("{what}: {m}")),
        e => tonic::Status::internal(format!("{what}: {e}")),
    }
}

#[tonic::async_trait]
impl Controller for OssDriver {
    async fn create_volume(&self, request: tonic::Request<CreateVolumeRequest>) -> Reply<CreateVolumeResponse> {
        let req = request.into_inner();
        let name = required("name", &req.name)?.to_string();
        shared_fs::mount_capabilities("volume_capabilities", &req.volume_capabilities, "a bucket")?;
        if req.volume_content_source.is_some() {
            return Err(tonic::Status::invalid_argument(
                "volume_content_source: OSS volumes cannot be made from snapshots or other volumes",
            ));
        }
        let mut attributes: HashMap<String, String> = req
            .parameters
            .iter()
            .filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match attributes.remove("volumeAs").as_deref() {
            None | Some("subpath") => {}
            Some(other) => {
                return Err(tonic::Status::from(Error::invalid(
                    "parameters.volumeAs",
                    format!("{other:?}: only \"subpath\" (a prefix per volume) is offered"),
                )));
            }
        }
        let base = params::prefix_of(attributes.get("path").map(String::as_str).unwrap_or("/"))
            .map_err(tonic::Status::from)?;
        attributes.insert("path".into(), format!("/{base}{}", sanitize(&name)));
        let v = params::volume(&attributes, false).map_err(tonic::Status::from)?;
        let id = crate::disk::params::id_for(ID_PREFIX, &name);
        let _guard = self.ctx.locks.lock(&id).await;
        let record = self.volume_record(&id);
        let capacity = req
            .capacity_range
            .as_ref()
            .map(|r| r.required_bytes.max(0))
            .unwrap_or(0);
        let limit = req.capacity_range.as_ref().map(|r| r.limit_bytes).unwrap_or(0);
        if limit > 0 && capacity > limit {
            return Err(tonic::Status::out_of_range(format!(
                "capacity_range: required {capacity} is more than limit {limit}"
            )));
        }
        let wanted = VolumeRecord {
            name: name.clone(),
            capacity,
            attributes: attributes.clone(),
        };
        if let Some(had) = crate::records::load::<VolumeRecord>(&record)? {
            if had != wanted {
                return Err(tonic::Status::already_exists(format!(
                    "volume {name:?} exists with other parameters"
                )));
            }
        } else {
            let s3 = s3_of(&v, &req.secrets)?;
            // The prefix's marker, so the volume's top directory exists while it is empty.
            s3.put(&v.prefix, bytes::Bytes::new())
                .await
                .map_err(|e| s3_status(&format!("making {}{}", v.bucket, v.prefix), e))?;
            crate::records::save(&record, &wanted)?;
        }
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
            // Not one this driver made: nothing of it is here to delete.
            return Ok(tonic::Response::new(DeleteVolumeResponse {}));
        }
        let _guard = self.ctx.locks.lock(&id).await;
        let record = self.volume_record(&id);
        let Some(had) = crate::records::load::<VolumeRecord>(&record)? else {
            return Ok(tonic::Response::new(DeleteVolumeResponse {}));
        };
        let v = params::volume(&had.attributes, false).map_err(tonic::Status::from)?;
        let s3 = s3_of(&v, &req.secrets)?;
        let what = format!("deleting {}/{}", v.bucket, v.prefix);
        let objects = s3.list_all(&v.prefix).await.map_err(|e| s3_status(&what, e))?;
        for o in objects {
            s3.delete(&o.key).await.map_err(|e| s3_status(&what, e))?;
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
        shared_fs::mount_capabilities("volume_capabilities", &req.volume_capabilities, "a bucket")?;
        if !self.volume_record(id).is_file() || !crate::disk::params::is_id_for(ID_PREFIX, id) {
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

/// A volume name as a key segment: what S3 keys take without escaping.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[tonic::async_trait]
impl Node for OssDriver {
    async fn node_stage_volume(&self, _: tonic::Request<NodeStageVolumeRequest>) -> Reply<NodeStageVolumeResponse> {
        Err(tonic::Status::unimplemented(
            "OSS volumes are mounted per pod; there is no staging",
        ))
    }

    async fn node_unstage_volume(
        &self,
        _: tonic::Request<NodeUnstageVolumeRequest>,
    ) -> Reply<NodeUnstageVolumeResponse> {
        Err(tonic::Status::unimplemented(
            "OSS volumes are mounted per pod; there is no staging",
        ))
    }

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
        let (_, cap_ro) = shared_fs::mount_capabilities("volume_capability", std::slice::from_ref(&cap), "a bucket")?;
        let attributes: HashMap<String, String> = req.volume_context.clone().into_iter().collect();
        let v = params::volume(&attributes, req.readonly || cap_ro).map_err(tonic::Status::from)?;
        let creds = params::credentials(&req.secrets).map_err(tonic::Status::from)?;
        let _guard = self.ctx.locks.lock(&target.display().to_string()).await;
        let m = self.ctx.config.mounter();
        let (access_key, secret_key) = match creds {
            Some((a, s)) => (Some(a), Some(s)),
            None => (None, None),
        };
        let mc = params::MountConfig {
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
            mountpoint: target.clone(),
            cache_dir: m.cache_dir(&target),
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
        crate::fuse::stats(&path).await.map(tonic::Response::new)
    }

    async fn node_get_volume_health(
        &self,
        request: tonic::Request<NodeGetVolumeHealthRequest>,
    ) -> Reply<NodeGetVolumeHealthResponse> {
        let req = request.into_inner();
        let id = required("volume_id", &req.volume_id)?.to_string();
        // Without a path, the volume itself: nothing of it is on the node to go wrong.
        let statuses = if req.volume_publish_path.is_empty() {
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

    async fn node_expand_volume(&self, _: tonic::Request<NodeExpandVolumeRequest>) -> Reply<NodeExpandVolumeResponse> {
        Err(tonic::Status::unimplemented("a bucket has no size to grow"))
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

/// The mount process of an OSS volume: check the bucket, mount, serve until unmounted.
/// Returns the exit code.
pub fn run_mount(c: params::MountConfig) -> i32 {
    use crate::fuse::exit;
    let rt = match crate::fuse::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let creds = c.access_key.clone().zip(c.secret_key.clone());
    let counters = std::sync::Arc::new(crate::fuse::FsCounters::default());
    let s3 = match s3::S3::new(&c.endpoint, &c.bucket, &c.region, c.path_style, creds) {
        Ok(s) => s.with_counters(counters.clone()),
        Err(e) => {
            eprintln!("fuse-mount: {e}");
            return exit::CONFIG;
        }
    };
    if let Err(e) = rt.block_on(s3.check(&c.prefix)) {
        eprintln!("fuse-mount: bucket {:?} at {}: {e}", c.bucket, c.endpoint);
        return match e {
            s3::S3Error::Denied(_) => exit::DENIED,
            s3::S3Error::Transport(_) => exit::UNREACHABLE,
            _ => exit::CONFIG,
        };
    }
    let fs = fs::ObjectFs::new(s3, c.fs_options(), counters.clone(), rt.handle().clone());
    crate::fuse::serve(
        fs,
        format!("oss:{}/{}", c.bucket, c.prefix),
        &c.mountpoint,
        c.read_only,
        counters,
        &c.stats_file,
        &rt,
    )
}

/// What the mount configuration's `kind` says for OSS mounts.
pub const KIND: &str = "oss";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_become_plain_key_segments() {
        assert_eq!(sanitize("pvc-1234"), "pvc-1234");
        assert_eq!(sanitize("a b/c"), "a-b-c");
    }
}
