//! Identity: the driver's name and version, what it offers (a controller; online expansion),
//! and whether it is ready (its state directory is there).

use crate::csi::identity_server::Identity;
use crate::csi::plugin_capability::{self, service, volume_expansion};
use crate::csi::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest, GetPluginInfoResponse,
    PluginCapability, ProbeRequest, ProbeResponse,
};

use super::{DISK_DRIVER, DiskDriver};

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

#[tonic::async_trait]
impl Identity for DiskDriver {
    async fn get_plugin_info(&self, _: tonic::Request<GetPluginInfoRequest>) -> Reply<GetPluginInfoResponse> {
        Ok(tonic::Response::new(GetPluginInfoResponse {
            name: DISK_DRIVER.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: tonic::Request<GetPluginCapabilitiesRequest>,
    ) -> Reply<GetPluginCapabilitiesResponse> {
        let service = |t: service::Type| PluginCapability {
            r#type: Some(plugin_capability::Type::Service(plugin_capability::Service {
                r#type: t as i32,
            })),
        };
        let online = PluginCapability {
            r#type: Some(plugin_capability::Type::VolumeExpansion(
                plugin_capability::VolumeExpansion {
                    r#type: volume_expansion::Type::Online as i32,
                },
            )),
        };
        Ok(tonic::Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![service(service::Type::ControllerService), online],
        }))
    }

    async fn probe(&self, _: tonic::Request<ProbeRequest>) -> Reply<ProbeResponse> {
        let root = self.ctx.store.root().to_path_buf();
        let ready = tokio::task::spawn_blocking(move || root.is_dir())
            .await
            .unwrap_or(false);
        if !ready {
            return Err(tonic::Status::failed_precondition(format!(
                "state directory {} is gone",
                self.ctx.store.root().display()
            )));
        }
        Ok(tonic::Response::new(ProbeResponse { ready: Some(true) }))
    }
}
