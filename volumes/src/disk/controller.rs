//! Controller: disks made, attached to a node, grown and deleted — all in the state
//! directory's books (`store.rs`), as a cloud's disk API; the node half does the attaching.
//!
//! CreateVolume is idempotent by name (the id is derived from it); ControllerPublishVolume
//! attaches a disk to one node at a time (ReadWriteOnce), to nodes whose driver registered in
//! the state directory only; DeleteVolume refuses a disk still attached.

use std::collections::HashMap;

use crate::csi::controller_server::Controller;
use crate::csi::controller_service_capability::{self, rpc};
use crate::csi::list_volumes_response::{Entry, VolumeStatus};
use crate::csi::validate_volume_capabilities_response::Confirmed;
use crate::csi::{
    ControllerExpandVolumeRequest, ControllerExpandVolumeResponse, ControllerGetCapabilitiesRequest,
    ControllerGetCapabilitiesResponse, ControllerPublishVolumeRequest, ControllerPublishVolumeResponse,
    ControllerServiceCapability, ControllerUnpublishVolumeRequest, ControllerUnpublishVolumeResponse,
    CreateVolumeRequest, CreateVolumeResponse, DeleteVolumeRequest, DeleteVolumeResponse, GetCapacityRequest,
    GetCapacityResponse, ListVolumesRequest, ListVolumesResponse, ValidateVolumeCapabilitiesRequest,
    ValidateVolumeCapabilitiesResponse, Volume,
};
use crate::error::Error;

use super::params::{self, Access, Parameters, required};
use super::store::VolumeRecord;
use super::{Context, DiskDriver};

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

fn volume(id: &str, record: &VolumeRecord) -> Volume {
    Volume {
        capacity_bytes: record.capacity_bytes,
        volume_id: id.to_string(),
        volume_context: record.parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("volume {id} does not exist"))
}

fn create_volume(ctx: &Context, req: CreateVolumeRequest) -> Result<CreateVolumeResponse, Error> {
    let name = required("name", &req.name)?;
    let caps = params::capabilities("volume_capabilities", &req.volume_capabilities)?;
    if req.volume_content_source.is_some() {
        return Err(Error::invalid(
            "volume_content_source",
            "the disk driver makes empty disks only (no snapshots or clones)",
        ));
    }
    if !req.mutable_parameters.is_empty() {
        return Err(Error::invalid("mutable_parameters", "the disk driver has none"));
    }
    let mut parameters = Parameters::parse(&req.parameters)?;
    // A capability naming a file system (a StorageClass's csi.storage.k8s.io/fstype) decides
    // it when the parameters do not; the two must not disagree.
    for cap in &caps {
        if let Access::Mount { fs_type: Some(fs), .. } = cap.access {
            if req.parameters.get("fsType").is_some_and(|p| !p.is_empty()) && fs != parameters.fs_type {
                return Err(Error::invalid(
                    "volume_capabilities",
                    format!(
                        "fs_type {} differs from parameters.fsType {}",
                        fs.as_str(),
                        parameters.fs_type.as_str()
                    ),
                ));
            }
            parameters.fs_type = fs;
        }
    }
    let size = params::create_capacity(req.capacity_range.as_ref())?;
    let context = parameters.to_context();
    let id = params::volume_id(name);
    if let Some(existing) = ctx.store.load(&id)? {
        if existing.name != name {
            return Err(Error::AlreadyExists(format!(
                "volume id {id} is taken by the volume named {:?}",
                existing.name
            )));
        }
        if !params::fits(existing.capacity_bytes, req.capacity_range.as_ref())? {
            return Err(Error::AlreadyExists(format!(
                "volume {name:?} exists with {} bytes, which the capacity range asked for does not allow",
                existing.capacity_bytes
            )));
        }
        if existing.parameters != context {
            return Err(Error::AlreadyExists(format!(
                "volume {name:?} exists with parameters {:?}, not {context:?}",
                existing.parameters
            )));
        }
        return Ok(CreateVolumeResponse {
            volume: Some(volume(&id, &existing)),
        });
    }
    let record = VolumeRecord {
        name: name.to_string(),
        capacity_bytes: size,
        parameters: context,
        published_node: None,
    };
    ctx.store.create_image(&id, size)?;
    ctx.store.save(&id, &record)?;
    tracing::info!(volume = %id, name, bytes = size, "disk created");
    Ok(CreateVolumeResponse {
        volume: Some(volume(&id, &record)),
    })
}

fn delete_volume(ctx: &Context, req: DeleteVolumeRequest) -> Result<DeleteVolumeResponse, Error> {
    let id = required("volume_id", &req.volume_id)?;
    if let Some(record) = ctx.store.load(id)? {
        if let Some(node) = &record.published_node {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is attached to node {node}; ControllerUnpublishVolume it first"
            )));
        }
        tracing::info!(volume = %id, "disk deleted");
    }
    // Also the remains of a create or delete cut short.
    ctx.store.remove(id)?;
    Ok(DeleteVolumeResponse {})
}

fn publish(ctx: &Context, req: ControllerPublishVolumeRequest) -> Result<ControllerPublishVolumeResponse, Error> {
    let id = required("volume_id", &req.volume_id)?;
    let node = required("node_id", &req.node_id)?;
    let cap = req
        .volume_capability
        .as_ref()
        .ok_or(Error::Missing("volume_capability"))?;
    params::capability("volume_capability", cap)?;
    let mut record = ctx.store.load(id)?.ok_or_else(|| not_found(id))?;
    if !ctx.store.node_known(node) {
        return Err(Error::NotFound(format!(
            "node {node} is not known: no disk driver has started on it"
        )));
    }
    match record.published_node.as_deref() {
        Some(n) if n == node => {}
        Some(other) => {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is attached to node {other}; a disk attaches to one node at a time"
            )));
        }
        None => {
            let attached = ctx
                .store
                .list()?
                .iter()
                .filter(|(_, r)| r.published_node.as_deref() == Some(node))
                .count() as i64;
            if attached >= ctx.max_volumes_per_node {
                return Err(Error::ResourceExhausted(format!(
                    "node {node} has {attached} disks attached, its limit"
                )));
            }
            record.published_node = Some(node.to_string());
            ctx.store.save(id, &record)?;
            tracing::info!(volume = %id, node, "disk attached");
        }
    }
    Ok(ControllerPublishVolumeResponse::default())
}

fn unpublish(ctx: &Context, req: ControllerUnpublishVolumeRequest) -> Result<ControllerUnpublishVolumeResponse, Error> {
    let id = required("volume_id", &req.volume_id)?;
    if let Some(mut record) = ctx.store.load(id)? {
        let from = record.published_node.clone();
        if from
            .as_deref()
            .is_some_and(|n| req.node_id.is_empty() || n == req.node_id)
        {
            record.published_node = None;
            ctx.store.save(id, &record)?;
            tracing::info!(volume = %id, node = from.as_deref().unwrap_or(""), "disk detached");
        }
    }
    Ok(ControllerUnpublishVolumeResponse {})
}

fn validate(
    ctx: &Context,
    req: ValidateVolumeCapabilitiesRequest,
) -> Result<ValidateVolumeCapabilitiesResponse, Error> {
    let id = required("volume_id", &req.volume_id)?;
    if req.volume_capabilities.is_empty() {
        return Err(Error::Missing("volume_capabilities"));
    }
    let record = ctx.store.load(id)?.ok_or_else(|| not_found(id))?;
    let unconfirmed = |message: String| ValidateVolumeCapabilitiesResponse {
        confirmed: None,
        message,
    };
    for cap in &req.volume_capabilities {
        if let Err(e) = params::capability("volume_capabilities", cap) {
            return Ok(unconfirmed(e.to_string()));
        }
    }
    if !req.parameters.is_empty() {
        match Parameters::parse(&req.parameters) {
            Ok(p) if p.to_context() == record.parameters => {}
            Ok(_) => return Ok(unconfirmed(format!("volume {id} was made with other parameters"))),
            Err(e) => return Ok(unconfirmed(e.to_string())),
        }
    }
    Ok(ValidateVolumeCapabilitiesResponse {
        confirmed: Some(Confirmed {
            volume_context: req.volume_context,
            volume_capabilities: req.volume_capabilities,
            parameters: req.parameters,
            mutable_parameters: HashMap::new(),
        }),
        message: String::new(),
    })
}

/// Pages are in volume id order; a page's `next_token` is the id the next page starts at, so
/// volumes deleted between pages (that one among them) shift nothing.
fn list(ctx: &Context, req: ListVolumesRequest) -> Result<ListVolumesResponse, Error> {
    if req.max_entries < 0 {
        return Err(Error::invalid("max_entries", "must not be negative"));
    }
    let token = req.starting_token.as_str();
    if !token.is_empty() && !params::is_volume_id(token) {
        return Err(Error::Aborted(format!(
            "starting_token {token:?} was not handed out by this driver"
        )));
    }
    let all = ctx.store.list()?;
    let start = all.partition_point(|(id, _)| id.as_str() < token);
    let take = if req.max_entries == 0 {
        usize::MAX
    } else {
        req.max_entries as usize
    };
    let page = &all[start..];
    let next_token = page.get(take).map(|(id, _)| id.clone()).unwrap_or_default();
    let entries = page
        .iter()
        .take(take)
        .map(|(id, record)| Entry {
            volume: Some(volume(id, record)),
            status: Some(VolumeStatus {
                published_node_ids: record.published_node.iter().cloned().collect(),
            }),
        })
        .collect();
    Ok(ListVolumesResponse { entries, next_token })
}

fn capacity(ctx: &Context, req: GetCapacityRequest) -> Result<GetCapacityResponse, Error> {
    // Capabilities or parameters the driver does not serve: no capacity for them.
    let served = req
        .volume_capabilities
        .iter()
        .all(|c| params::capability("volume_capabilities", c).is_ok())
        && Parameters::parse(&req.parameters).is_ok();
    let available = if served {
        let bytes = ctx.host.usage(ctx.store.root())?.available_bytes;
        i64::try_from(bytes / params::MIB as u64 * params::MIB as u64).unwrap_or(i64::MAX)
    } else {
        0
    };
    Ok(GetCapacityResponse {
        available_capacity: available,
        maximum_volume_size: Some(available),
        minimum_volume_size: Some(params::MIB),
    })
}

fn expand(ctx: &Context, req: ControllerExpandVolumeRequest) -> Result<ControllerExpandVolumeResponse, Error> {
    let id = required("volume_id", &req.volume_id)?;
    let size = params::expand_capacity(req.capacity_range.as_ref())?;
    if let Some(cap) = &req.volume_capability {
        params::capability("volume_capability", cap)?;
    }
    let mut record = ctx.store.load(id)?.ok_or_else(|| not_found(id))?;
    // Never shrinks: a smaller size is already satisfied (a retried expand lands here too).
    if size > record.capacity_bytes {
        ctx.store.grow_image(id, size)?;
        tracing::info!(volume = %id, from = record.capacity_bytes, to = size, "disk grown");
        record.capacity_bytes = size;
        ctx.store.save(id, &record)?;
    }
    // The node's loop device and file system learn of the new size in NodeExpandVolume, for
    // block volumes too.
    Ok(ControllerExpandVolumeResponse {
        capacity_bytes: record.capacity_bytes,
        node_expansion_required: true,
    })
}

fn capabilities() -> ControllerGetCapabilitiesResponse {
    let caps = [
        rpc::Type::CreateDeleteVolume,
        rpc::Type::PublishUnpublishVolume,
        rpc::Type::ListVolumes,
        rpc::Type::ListVolumesPublishedNodes,
        rpc::Type::GetCapacity,
        rpc::Type::ExpandVolume,
        rpc::Type::SingleNodeMultiWriter,
    ];
    ControllerGetCapabilitiesResponse {
        capabilities: caps
            .into_iter()
            .map(|t| ControllerServiceCapability {
                r#type: Some(controller_service_capability::Type::Rpc(
                    controller_service_capability::Rpc { r#type: t as i32 },
                )),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Controller for DiskDriver {
    async fn create_volume(&self, request: tonic::Request<CreateVolumeRequest>) -> Reply<CreateVolumeResponse> {
        let req = request.into_inner();
        let id = params::volume_id(&req.name);
        self.run(&id, move |ctx| create_volume(ctx, req)).await
    }

    async fn delete_volume(&self, request: tonic::Request<DeleteVolumeRequest>) -> Reply<DeleteVolumeResponse> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        self.run(&id, move |ctx| delete_volume(ctx, req)).await
    }

    async fn controller_publish_volume(
        &self,
        request: tonic::Request<ControllerPublishVolumeRequest>,
    ) -> Reply<ControllerPublishVolumeResponse> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        self.run(&id, move |ctx| publish(ctx, req)).await
    }

    async fn controller_unpublish_volume(
        &self,
        request: tonic::Request<ControllerUnpublishVolumeRequest>,
    ) -> Reply<ControllerUnpublishVolumeResponse> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        self.run(&id, move |ctx| unpublish(ctx, req)).await
    }

    async fn validate_volume_capabilities(
        &self,
        request: tonic::Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Reply<ValidateVolumeCapabilitiesResponse> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        self.run(&id, move |ctx| validate(ctx, req)).await
    }

    async fn list_volumes(&self, request: tonic::Request<ListVolumesRequest>) -> Reply<ListVolumesResponse> {
        let req = request.into_inner();
        self.run_unlocked(move |ctx| list(ctx, req)).await
    }

    async fn get_capacity(&self, request: tonic::Request<GetCapacityRequest>) -> Reply<GetCapacityResponse> {
        let req = request.into_inner();
        self.run_unlocked(move |ctx| capacity(ctx, req)).await
    }

    async fn controller_get_capabilities(
        &self,
        _: tonic::Request<ControllerGetCapabilitiesRequest>,
    ) -> Reply<ControllerGetCapabilitiesResponse> {
        Ok(tonic::Response::new(capabilities()))
    }

    async fn controller_expand_volume(
        &self,
        request: tonic::Request<ControllerExpandVolumeRequest>,
    ) -> Reply<ControllerExpandVolumeResponse> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        self.run(&id, move |ctx| expand(ctx, req)).await
    }
}
