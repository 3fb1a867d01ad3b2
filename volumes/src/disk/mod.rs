//! `disk.csi.nodeless.io`: block volumes that stand for cloud disks (after
//! alibaba-cloud-csi-driver's diskplugin), one sparse file per disk under the state directory,
//! attached to the node as a loop device.
//!
//! The controller half (CreateVolume, ControllerPublishVolume, ...) only writes files under the
//! state directory, as a cloud's disk API would keep its books: see `store.rs`. The node half
//! attaches the image (`losetup`), makes a file system on first use only, mounts it at the
//! staging path and bind-mounts that into pods. Nothing of the node half is kept by the driver:
//! the kernel's loop and mount tables are the state, read back on every call, so a driver that
//! is killed and started again finds its volumes staged and published as it left them, and the
//! pods using them never notice.
//!
//! Every call runs under a lock of its volume id (two calls for one volume never interleave;
//! calls for different volumes run side by side) on the blocking pool, since losetup, mkfs and
//! mount take milliseconds to seconds.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Error;
use crate::host::{Host, System};
use crate::locks::Locks;

mod controller;
mod identity;
mod node;
pub mod params;
pub mod store;
#[cfg(test)]
mod tests;

/// The driver's name (GetPluginInfo; a StorageClass's `provisioner`, a PV's `csi.driver`).
pub const DISK_DRIVER: &str = "disk.csi.nodeless.io";
/// How many disks a node takes by default (NodeGetInfo; ControllerPublishVolume refuses more),
/// of the order of a cloud VM's data-disk limit.
pub const MAX_VOLUMES_PER_NODE: i64 = 64;

/// How a disk driver is set up.
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// Where disk images and records live (e.g. `<data-dir>/csi/disk`); every driver sharing
    /// it sees the same disks, as nodes of one cloud account do.
    pub state_dir: PathBuf,
    /// The node this driver serves (NodeGetInfo), a Kubernetes node name.
    pub node_id: String,
    /// At most this many disks attach to one node.
    pub max_volumes_per_node: i64,
}

impl DiskConfig {
    pub fn new(state_dir: impl Into<PathBuf>, node_id: impl Into<String>) -> DiskConfig {
        DiskConfig {
            state_dir: state_dir.into(),
            node_id: node_id.into(),
            max_volumes_per_node: MAX_VOLUMES_PER_NODE,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if !params::is_node_id(&self.node_id) {
            return Err(Error::invalid(
                "node id",
                format!("{:?} is not a node name (letters, digits, '.', '-', '_')", self.node_id),
            ));
        }
        if self.max_volumes_per_node < 1 {
            return Err(Error::invalid("max volumes per node", "must be at least 1"));
        }
        Ok(())
    }
}

/// The disk driver: serve it with [`crate::serve`]. Cloning shares it.
#[derive(Clone)]
pub struct DiskDriver {
    ctx: Arc<Context>,
}

/// What every call of the driver works with.
struct Context {
    store: store::Store,
    host: Arc<dyn Host>,
    node_id: String,
    max_volumes_per_node: i64,
    locks: Locks,
}

impl DiskDriver {
    /// A driver on this machine, with its state under `config.state_dir`; registers
    /// `config.node_id` there so disks can be attached to it.
    pub fn new(config: DiskConfig) -> Result<DiskDriver, Error> {
        DiskDriver::with_host(config, Arc::new(System))
    }

    /// A driver over another [`Host`] (a fake, in tests).
    pub fn with_host(config: DiskConfig, host: Arc<dyn Host>) -> Result<DiskDriver, Error> {
        config.validate()?;
        let store = store::Store::open(&config.state_dir)?;
        store.register_node(&config.node_id)?;
        Ok(DiskDriver {
            ctx: Arc::new(Context {
                store,
                host,
                node_id: config.node_id,
                max_volumes_per_node: config.max_volumes_per_node,
                locks: Locks::default(),
            }),
        })
    }

    /// The node this driver serves.
    pub fn node_id(&self) -> &str {
        &self.ctx.node_id
    }

    /// Run `f` on the blocking pool under the lock of `volume_id`.
    async fn run<T, F>(&self, volume_id: &str, f: F) -> Result<tonic::Response<T>, tonic::Status>
    where
        T: Send + 'static,
        F: FnOnce(&Context) -> Result<T, Error> + Send + 'static,
    {
        let _guard = self.ctx.locks.lock(volume_id).await;
        self.run_unlocked(f).await
    }

    /// Run `f` on the blocking pool under no lock (calls that only read).
    async fn run_unlocked<T, F>(&self, f: F) -> Result<tonic::Response<T>, tonic::Status>
    where
        T: Send + 'static,
        F: FnOnce(&Context) -> Result<T, Error> + Send + 'static,
    {
        let ctx = self.ctx.clone();
        match tokio::task::spawn_blocking(move || f(&ctx)).await {
            Ok(r) => r.map(tonic::Response::new).map_err(tonic::Status::from),
            Err(e) => Err(Error::Worker(e.to_string()).into()),
        }
    }
}
