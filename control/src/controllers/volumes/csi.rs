//! Control's side of CSI, as Kubernetes' external sidecars speak it to a driver's controller
//! service: CreateVolume/DeleteVolume (external-provisioner), ControllerPublish/Unpublish
//! (external-attacher), ControllerExpandVolume (external-resizer). Control knows each driver's
//! endpoint from its configuration (`nodeless up` runs the platform's drivers and passes theirs).

use std::collections::{BTreeMap, HashMap};

use nodeless_csi::csi::controller_client::ControllerClient;
use nodeless_csi::csi::{self, VolumeCapability};
use tonic::transport::Channel;

/// The CSI drivers control provisions, attaches and expands for: name → endpoint
/// (`unix:///…/disk.sock`).
#[derive(Clone, Debug, Default)]
pub struct Drivers(pub BTreeMap<String, String>);

/// A driver's answer: a gRPC status as Kubernetes' sidecars report it in events.
pub type CsiResult<T> = Result<T, String>;

impl Drivers {
    pub fn knows(&self, driver: &str) -> bool {
        self.0.contains_key(driver)
    }

    async fn controller(&self, driver: &str) -> CsiResult<ControllerClient<Channel>> {
        let endpoint = self
            .0
            .get(driver)
            .ok_or_else(|| format!("no endpoint is configured for CSI driver {driver:?}"))?;
        let channel = nodeless_csi::connect(endpoint)
            .await
            .map_err(|e| format!("connecting to CSI driver {driver:?} at {endpoint}: {e}"))?;
        Ok(ControllerClient::new(channel))
    }

    /// CreateVolume; the new volume's id, size in bytes and context.
    pub async fn create(
        &self,
        driver: &str,
        name: &str,
        bytes: i64,
        capability: VolumeCapability,
        parameters: BTreeMap<String, String>,
        secrets: HashMap<String, String>,
    ) -> CsiResult<csi::Volume> {
        let mut c = self.controller(driver).await?;
        let req = csi::CreateVolumeRequest {
            name: name.to_string(),
            capacity_range: Some(nodeless_csi::capability::at_least(bytes)),
            volume_capabilities: vec![capability],
            parameters: parameters.into_iter().collect::<HashMap<_, _>>(),
            secrets,
            ..Default::default()
        };
        let out = c.create_volume(req).await.map_err(status)?.into_inner();
        out.volume
            .ok_or_else(|| format!("CSI driver {driver:?} created a volume and returned none"))
    }

    pub async fn delete(&self, driver: &str, volume_id: &str, secrets: HashMap<String, String>) -> CsiResult<()> {
        let mut c = self.controller(driver).await?;
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: volume_id.to_string(),
            secrets,
        })
        .await
        .map_err(status)?;
        Ok(())
    }

    /// ControllerPublishVolume; the publish context the node gets for staging.
    pub async fn publish(
        &self,
        driver: &str,
        volume_id: &str,
        node_id: &str,
        capability: VolumeCapability,
        readonly: bool,
        context: HashMap<String, String>,
    ) -> CsiResult<HashMap<String, String>> {
        let mut c = self.controller(driver).await?;
        let out = c
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: volume_id.to_string(),
                node_id: node_id.to_string(),
                volume_capability: Some(capability),
                readonly,
                volume_context: context,
                ..Default::default()
            })
            .await
            .map_err(status)?
            .into_inner();
        Ok(out.publish_context)
    }

    pub async fn unpublish(&self, driver: &str, volume_id: &str, node_id: &str) -> CsiResult<()> {
        let mut c = self.controller(driver).await?;
        c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: volume_id.to_string(),
            node_id: node_id.to_string(),
            ..Default::default()
        })
        .await
        .map_err(status)?;
        Ok(())
    }

    /// ControllerExpandVolume: the new size, and whether the node must grow its filesystem.
    pub async fn expand(
        &self,
        driver: &str,
        volume_id: &str,
        bytes: i64,
        capability: VolumeCapability,
    ) -> CsiResult<(i64, bool)> {
        let mut c = self.controller(driver).await?;
        let out = c
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: volume_id.to_string(),
                capacity_range: Some(nodeless_csi::capability::at_least(bytes)),
                volume_capability: Some(capability),
                ..Default::default()
            })
            .await
            .map_err(status)?
            .into_inner();
        Ok((out.capacity_bytes.max(bytes), out.node_expansion_required))
    }
}

/// A gRPC status in the words the sidecars put in events: `rpc error: code = … desc = …`.
fn status(s: tonic::Status) -> String {
    format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
}
