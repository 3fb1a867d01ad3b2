//! The storage `up` runs: the disk (`disk.csi.nodeless.io`), OSS (`oss.csi.nodeless.io`) and
//! NAS (`nas.csi.nodeless.io`) CSI drivers on sockets under the data directory, their CSIDriver
//! objects, and the default StorageClass on disks, as ASK clusters come with their disk, OSS
//! and NAS plugins.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use kube::Api;
use kube::api::PostParams;
use nodeless_volumes::{
    DISK_DRIVER, DiskConfig, DiskDriver, NAS_DRIVER, NasConfig, NasDriver, OSS_DRIVER, OssConfig, OssDriver,
};
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

/// What serves FUSE mounts: `<this program> csi fuse-mount`.
fn mount_command() -> anyhow::Result<Vec<std::ffi::OsString>> {
    let exe = std::env::current_exe().context("finding this program for the FUSE mounts")?;
    Ok(vec![exe.into(), "csi".into(), "fuse-mount".into()])
}

/// How the OSS driver of this program is set up.
pub fn oss_config(state_dir: &Path, node: &str) -> anyhow::Result<OssConfig> {
    Ok(OssConfig {
        state_dir: std::path::absolute(state_dir)?,
        node_id: node.to_string(),
        mount_command: mount_command()?,
    })
}

/// How the NAS driver of this program is set up (the kernel's NFS client found out).
pub fn nas_config(state_dir: &Path, node: &str) -> anyhow::Result<NasConfig> {
    Ok(NasConfig {
        state_dir: std::path::absolute(state_dir)?,
        node_id: node.to_string(),
        mount_command: mount_command()?,
        kernel_client: None,
    })
}

/// Start the disk, OSS and NAS drivers for `node`, their state under
/// `<data_dir>/csi/{disk,oss,nas}`, serving on `<data_dir>/csi/{disk,oss,nas}.sock`.
pub fn start(data_dir: &Path, node: &str) -> anyhow::Result<Drivers> {
    let dir = std::path::absolute(data_dir.join("csi"))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let disk_endpoint = format!("unix://{}", dir.join("disk.sock").display());
    let oss_endpoint = format!("unix://{}", dir.join("oss.sock").display());
    let nas_endpoint = format!("unix://{}", dir.join("nas.sock").display());
    let disk = DiskDriver::new(DiskConfig::new(dir.join("disk"), node)).context("the disk CSI driver")?;
    let oss = OssDriver::new(oss_config(&dir.join("oss"), node)?).context("the OSS CSI driver")?;
    let nas = NasDriver::new(nas_config(&dir.join("nas"), node)?).context("the NAS CSI driver")?;
    let disk_listener = nodeless_volumes::listen(&disk_endpoint).context("the disk CSI driver's socket")?;
    let oss_listener = nodeless_volumes::listen(&oss_endpoint).context("the OSS CSI driver's socket")?;
    let nas_listener = nodeless_volumes::listen(&nas_endpoint).context("the NAS CSI driver's socket")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut a = tx.subscribe();
        let mut b = tx.subscribe();
        let mut c = tx.subscribe();
        let disk = tokio::spawn(nodeless_volumes::serve_on(disk_listener, disk, async move {
            let _ = a.recv().await;
        }));
        let oss = tokio::spawn(nodeless_volumes::serve_on(oss_listener, oss, async move {
            let _ = b.recv().await;
        }));
        let nas = tokio::spawn(nodeless_volumes::serve_on(nas_listener, nas, async move {
            let _ = c.recv().await;
        }));
        let _ = stopped.await;
        let _ = tx.send(());
        for (name, t) in [(DISK_DRIVER, disk), (OSS_DRIVER, oss), (NAS_DRIVER, nas)] {
            match t.await {
                Ok(Err(e)) => tracing::error!(driver = name, error = %e, "a CSI driver stopped"),
                Err(e) => tracing::error!(driver = name, error = %e, "a CSI driver failed"),
                Ok(Ok(())) => {}
            }
        }
    });
    Ok(Drivers {
        endpoints: BTreeMap::from([
            (DISK_DRIVER.to_string(), disk_endpoint),
            (OSS_DRIVER.to_string(), oss_endpoint),
            (NAS_DRIVER.to_string(), nas_endpoint),
        ]),
        stop: Some(stop),
        task,
    })
}

/// The CSIDriver objects of the drivers and the default StorageClass, made when missing (an
/// administrator's changes to them are kept).
pub async fn ensure_objects(client: kube::Client) -> anyhow::Result<()> {
    let drivers: Api<k8s_openapi::api::storage::v1::CSIDriver> = Api::all(client.clone());
    let driver = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": {"name": DISK_DRIVER},
        "spec": {"attachRequired": true, "podInfoOnMount": false, "fsGroupPolicy": "ReadWriteOnceWithFSType",
            "volumeLifecycleModes": ["Persistent"]},
    }))?;
    create_missing(drivers.create(&PostParams::default(), &driver).await)?;
    // Buckets attach nowhere, and ownership is the mount's (uid/gid/umask), not fsGroup's.
    let oss = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": {"name": OSS_DRIVER},
        "spec": {"attachRequired": false, "podInfoOnMount": false, "fsGroupPolicy": "None",
            "volumeLifecycleModes": ["Persistent"]},
    }))?;
    create_missing(drivers.create(&PostParams::default(), &oss).await)?;
    // Exports attach nowhere either; ownership is the server's (fsGroup changes it, as kubelet
    // does on NFS only when asked for File).
    let nas = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": {"name": NAS_DRIVER},
        "spec": {"attachRequired": false, "podInfoOnMount": false, "fsGroupPolicy": "None",
            "volumeLifecycleModes": ["Persistent"]},
    }))?;
    create_missing(drivers.create(&PostParams::default(), &nas).await)?;
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
