//! The storage `up` runs: the disk CSI driver (`disk.csi.nodeless.io`) on a socket under the data
//! directory, its CSIDriver object, and the default StorageClass on it, as ASK clusters come
//! with their disk classes.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use kube::Api;
use kube::api::PostParams;
use nodeless_volumes::{DISK_DRIVER, DiskConfig, DiskDriver};
use serde_json::json;

/// The StorageClass `up` makes the default: disks made for a pod where it is scheduled,
/// growable, deleted with their claim.
pub const DEFAULT_CLASS: &str = "nodeless-disk";

/// A running driver of `up`.
pub struct Drivers {
    /// name → endpoint, for control and the node.
    pub endpoints: BTreeMap<String, String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drivers {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// Start the disk driver for `node`, its disks under `<data_dir>/csi/disk`, serving on
/// `<data_dir>/csi/disk.sock`.
pub fn start_disk(data_dir: &Path, node: &str) -> anyhow::Result<Drivers> {
    let dir = std::path::absolute(data_dir.join("csi"))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let endpoint = format!("unix://{}", dir.join("disk.sock").display());
    let driver = DiskDriver::new(DiskConfig::new(dir.join("disk"), node)).context("the disk CSI driver")?;
    let listener = nodeless_volumes::listen(&endpoint).context("the disk CSI driver's socket")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) = nodeless_volumes::serve_on(listener, driver, shutdown).await {
            tracing::error!(error = %e, "the disk CSI driver stopped");
        }
    });
    Ok(Drivers {
        endpoints: BTreeMap::from([(DISK_DRIVER.to_string(), endpoint)]),
        stop: Some(stop),
        task,
    })
}

/// The CSIDriver object of the disk driver and the default StorageClass, made when missing
/// (an administrator's changes to them are kept).
pub async fn ensure_objects(client: kube::Client) -> anyhow::Result<()> {
    let drivers: Api<k8s_openapi::api::storage::v1::CSIDriver> = Api::all(client.clone());
    let driver = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": {"name": DISK_DRIVER},
        "spec": {"attachRequired": true, "podInfoOnMount": false, "fsGroupPolicy": "ReadWriteOnceWithFSType",
            "volumeLifecycleModes": ["Persistent"]},
    }))?;
    create_missing(drivers.create(&PostParams::default(), &driver).await)?;
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client);
    let class = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": DEFAULT_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": DISK_DRIVER,
        "parameters": {"type": "cloud_essd", "fsType": "ext4"},
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": true,
    }))?;
    create_missing(classes.create(&PostParams::default(), &class).await)?;
    Ok(())
}

fn create_missing<T>(r: Result<T, kube::Error>) -> anyhow::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
