//! What a node's pod workers and its kubelet API share: the client, the runtime and network,
//! the node's directories and settings, and the little state they all reach (image pull locks,
//! pod UIDs by name). Kept apart from `node`, which starts the node and keeps the registry of
//! workers, so that the workers and the server depend on this and not on what spawns them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event as K8sEvent, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::image::ImageStore;
use crate::network::Network;
use crate::runtime::Runtime;

pub struct NodeCtx {
    pub client: kube::Client,
    pub name: String,
    pub runtime: Arc<dyn Runtime>,
    pub network: Arc<dyn Network>,
    pub images: ImageStore,
    pub pods_dir: PathBuf,
    /// The containers' bundles (rootfs mount points, config.json, exit records), in the run
    /// directory: each start writes a handful of small files there, which cost far less on a
    /// tmpfs than on a disk. Writable layers and logs stay in `pods_dir`.
    pub bundles_dir: PathBuf,
    pub ns_dir: PathBuf,
    pub host_ip: String,
    pub cluster_dns: Option<String>,
    pub cluster_domain: String,
    pub host_resolv: String,
    pub cgroup_parent: String,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Plain-HTTP registries and mirrors.
    pub pull: crate::image::PullConfig,
    pub keeper: Arc<crate::sandbox::Keeper>,
    pub user_namespaces: bool,
    /// The host id ranges of pods' user namespaces, one per pod.
    pub id_ranges: crate::userns::IdRanges,
    /// Sandboxes made ahead of their pods (see `warm`).
    pub warm: crate::warm::WarmPool,
    /// What `/metrics` serves.
    pub metrics: crate::metrics::NodeMetrics,
    /// The node's CSI drivers and where it stages their volumes.
    pub csi: crate::csi::CsiPlugins,
    /// Woken when a pod's CSI volumes were unmounted, so `volumesInUse` follows at once.
    pub volumes_changed: tokio::sync::Notify,
    pub(crate) pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Pod UIDs by namespace and name, as the node's watch last saw them.
    pub(crate) names: Mutex<HashMap<(String, String), String>>,
    /// How this node runs microVM pods, or why it cannot.
    pub vm: Result<crate::vm::VmSettings, String>,
    /// The microVMs running now, by pod UID.
    pub vms: crate::vm::Vms,
    /// Takes a finished worker out of the node's registry (which `node` keeps).
    pub(crate) forget_worker: Box<dyn Fn(&str) + Send + Sync>,
}

impl NodeCtx {
    /// A worker that finished removes itself.
    pub fn forget(&self, uid: &str) {
        (self.forget_worker)(uid);
    }

    /// The lock that makes concurrent pulls of one image a single pull.
    pub fn pull_lock(&self, image: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.pulls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(image.to_string())
            .or_default()
            .clone()
    }

    /// The UID of a pod on this node, by namespace and name.
    pub fn uid_of(&self, ns: &str, name: &str) -> Option<String> {
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// What the warm pool makes its sandboxes with.
    pub fn warm_makers(&self) -> crate::warm::Makers<'_> {
        crate::warm::Makers {
            keeper: &self.keeper,
            network: &*self.network,
            ranges: &self.id_ranges,
            user_namespaces: self.user_namespaces,
        }
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    /// Where a pod's container bundles are (see `bundles_dir`).
    /// A pod's VM files (pid file, sockets, console): beside its run directory, not in it, since
    /// that one is shared with the guest.
    pub fn vm_dir(&self, uid: &str) -> PathBuf {
        self.ns_dir.with_file_name("vm").join(uid)
    }

    /// What runs the containers of the pod `uid`: its VM, or the node's OCI runtime.
    pub fn runtime_for(&self, uid: &str) -> Arc<dyn Runtime> {
        match self.vms.get(uid) {
            Some(vm) => vm,
            None => self.runtime.clone(),
        }
    }

    pub fn pod_run_dir(&self, uid: &str) -> PathBuf {
        self.bundles_dir.join(uid)
    }
}

/// Record a Kubernetes Event about a pod, as kubelet does; failures only get logged.
pub fn emit_event(ctx: &NodeCtx, pod: &Pod, kind: &str, reason: &str, message: &str) {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": ns, "name": name, "uid": pod.metadata.uid},
        "reason": reason, "message": message, "type": kind,
        "source": {"component": "kubelet", "host": ctx.name},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": "kubelet", "reportingInstance": ctx.name,
    });
    let client = ctx.client.clone();
    tokio::spawn(async move {
        let Ok(ev) = serde_json::from_value::<K8sEvent>(ev) else {
            return;
        };
        let _ = Api::<K8sEvent>::namespaced(client, &ns)
            .create(&PostParams::default(), &ev)
            .await;
    });
}
