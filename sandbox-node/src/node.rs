//! The virtual node: registers its Node object, renews its Lease, watches the pods bound to it
//! and keeps one worker per pod; serves the kubelet API for logs and exec.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::mpsc;

pub use crate::context::{NodeCtx, emit_event};
use crate::image::ImageStore;
use crate::network::Network;
use crate::pod::{Event, Worker};
use crate::runtime::Runtime;

/// The node's registry: one worker per pod it tracks, by pod UID, and the channel to it.
type Workers = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Event>>>>;

pub struct NodeConfig {
    pub name: String,
    /// Images and pod state (survives restarts).
    pub data_dir: PathBuf,
    /// Namespaces pins and runtime state (tmpfs, under /run).
    pub run_dir: PathBuf,
    pub runtime: Arc<dyn Runtime>,
    pub network: Arc<dyn Network>,
    /// The kubelet API listens here (port 0 picks one).
    pub listen: SocketAddr,
    /// Its serving certificate and the clients it accepts (mutual TLS, see `kubelet_tls`).
    pub tls: crate::kubelet_tls::KubeletTls,
    pub host_ip: String,
    pub cluster_dns: Option<String>,
    pub cluster_domain: String,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long the node's Lease lasts (renewed every quarter of it).
    pub lease_duration: Duration,
    /// The pod CIDRs of this host (the Node's `spec.podCIDRs`), if it hands out pod addresses.
    pub pod_cidrs: Vec<String>,
    /// Registries reached over plain HTTP (loopback ones always are), and registries' mirrors.
    pub pull: crate::image::PullConfig,
    /// The node's supervisor, which holds pods' namespaces (and runs the OCI runtime's containers).
    pub keeper: Arc<crate::sandbox::Keeper>,
    /// Every pod in its own user namespace (see `userns`); off for kernels that cannot.
    pub user_namespaces: bool,
    /// How many sandboxes to keep made ahead of their pods (see `warm`); 0 for none.
    pub warm_sandboxes: usize,
    /// Metrics of what runs beside the node (its pod network), served with its own.
    pub metrics_collectors: Vec<Box<dyn prometheus_client::collector::Collector>>,
    /// The CSI drivers on this node: name → endpoint (`unix:///…`), as kubelet's plugin
    /// registry knows them.
    pub csi_drivers: std::collections::BTreeMap<String, String>,
    /// What microVM pods run with (found on the machine when not given).
    pub microvm: crate::vm::MicroVmConfig,
}

/// The id ranges that pods saved under `bundles_dir` hold (pods a restarted node will adopt):
/// read before any worker starts, so a new pod never gets a range an adopted one still has.
fn held_id_ranges(bundles_dir: &std::path::Path) -> crate::userns::IdRanges {
    let ranges = crate::userns::IdRanges::default();
    for entry in std::fs::read_dir(bundles_dir).into_iter().flatten().flatten() {
        if let Some(base) = crate::pod::state::load(&entry.path(), &entry.path()).and_then(|s| s.user_base) {
            ranges.hold(base);
        }
    }
    ranges
}

pub struct RunningNode {
    pub ctx: Arc<NodeCtx>,
    pub kubelet_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningNode {
    /// Stop the node's tasks and give back its warm sandboxes (their addresses and namespaces:
    /// pods keep running and are adopted at the next start, the pool is made again then).
    pub async fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
        let makers = self.ctx.warm_makers();
        let give_back = self.ctx.warm.give_back(&makers, true);
        match tokio::time::timeout(Duration::from_secs(10), give_back).await {
            Ok(errors) if errors.is_empty() => {}
            Ok(errors) => tracing::warn!(errors = %errors.join("; "), "giving back the warm sandboxes"),
            Err(_) => tracing::warn!("giving back the warm sandboxes took over 10 s; the next start finishes it"),
        }
    }
}

/// The cgroup every pod of the node `name` is created under (in each hierarchy).
pub fn cgroup_parent(name: &str) -> String {
    format!("/nodeless/{name}")
}

fn node_object(name: &str, host_ip: &str, port: u16, runtime: &str, handlers: &[&str], pod_cidrs: &[String]) -> Node {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let capacity = json!({"cpu": "1000", "memory": "4Ti", "pods": "10000", "ephemeral-storage": "10Ti"});
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name,
            "labels": {"type": "virtual-kubelet", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64"), "kubernetes.io/role": "agent",
                "node.kubernetes.io/instance-type": "nodeless-virtual-node"},
            "annotations": {"nodeless.io/kubelet-scheme": "https"}},
        "spec": {"taints": [{"key": nodeless_types::keys::VIRTUAL_NODE_TAINT, "value": "nodeless", "effect": "NoSchedule"}],
            "podCIDR": pod_cidrs.first(), "podCIDRs": if pod_cidrs.is_empty() { None } else { Some(pod_cidrs) }},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "sandbox-node is ready", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now},
            ],
            "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "runtimeHandlers": handlers.iter().map(|h| json!({"name": h, "features": {"recursiveReadOnlyMounts": false, "userNamespaces": *h != crate::vm::HANDLER}})).collect::<Vec<_>>(),
            "capacity": capacity, "allocatable": capacity,
            "nodeInfo": {"kubeletVersion": format!("v1.33.0-nodeless-{}", env!("CARGO_PKG_VERSION")), "osImage": "nodeless sandbox-node",
                "kernelVersion": nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().to_string()).unwrap_or_default(),
                "containerRuntimeVersion": runtime, "architecture": std::env::consts::ARCH.replace("x86_64", "amd64"),
                "operatingSystem": "linux", "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""}
        }
    }))
    .expect("the Node object is well formed")
}

async fn register(client: &kube::Client, node: &Node) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = node.metadata.name.clone().unwrap_or_default();
    match nodes.create(&PostParams::default(), node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = json!({"metadata": {"labels": node.metadata.labels, "annotations": node.metadata.annotations}, "spec": node.spec});
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Err(e) => return Err(e),
    }
    nodes
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": node.status})),
        )
        .await?;
    Ok(())
}

async fn heartbeat(client: kube::Client, name: String, lease_duration: Duration) {
    let lease_secs = lease_duration.as_secs().max(4);
    let every = Duration::from_secs(lease_secs) / 4;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut tick = 0u64;
    loop {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": lease_secs, "renewTime": now}});
        let r = leases
            .patch(
                &name,
                &PatchParams::apply("sandbox-node").force(),
                &Patch::Apply(&lease),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "renewing the node lease");
        }
        if tick.is_multiple_of(4) {
            let hb = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            if let Ok(n) = nodes.get_status(&name).await {
                let mut conds = n.status.and_then(|s| s.conditions).unwrap_or_default();
                for c in &mut conds {
                    c.last_heartbeat_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        hb.parse().unwrap_or_default(),
                    ));
                }
                let _ = nodes
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": {"conditions": conds}})),
                    )
                    .await;
            }
        }
        tick += 1;
        tokio::time::sleep(every).await;
    }
}

/// The node's side of volumes beyond mounting: `status.volumesInUse` kept to what its pods have
/// published (control detaches only what is not listed), and filesystems grown for claims that
/// wait for it (`FileSystemResizePending`).
async fn watch_volumes(ctx: Arc<NodeCtx>) {
    let mut reported: Option<Vec<String>> = None;
    // The last failure said per claim, so a growth that cannot happen online is said once.
    let mut said: HashMap<String, String> = HashMap::new();
    loop {
        report_volumes(&ctx, &mut reported).await;
        let mut usage = Vec::new();
        for p in crate::csi::published(&ctx.pods_dir) {
            if let Ok(u) = ctx.csi.usage(&p).await {
                let labels = crate::metrics::VolumeLabels {
                    namespace: p.namespace.clone(),
                    persistentvolumeclaim: p.claim.clone(),
                };
                usage.push((labels, u));
            }
            let key = format!("{}/{}", p.namespace, p.claim);
            match ctx.csi.expand(&ctx.client, &p).await {
                Ok(true) => {
                    said.remove(&key);
                    tracing::info!(claim = %p.claim, namespace = %p.namespace, "volume's filesystem grown")
                }
                Ok(false) => {}
                Err(e) => {
                    if said.get(&key) != Some(&e) {
                        tracing::warn!(claim = %p.claim, namespace = %p.namespace, error = %e, "growing the volume's filesystem");
                        said.insert(key, e);
                    }
                }
            }
        }
        ctx.metrics.volume_stats.show(&usage);
        tokio::select! {
            _ = ctx.volumes_changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Patch `status.volumesInUse` (and `volumesAttached`) when what the pods have published changed.
pub async fn report_volumes(ctx: &NodeCtx, reported: &mut Option<Vec<String>>) {
    let published = crate::csi::published(&ctx.pods_dir);
    let mut in_use: Vec<String> = published.iter().map(|p| p.unique_name()).collect();
    in_use.sort();
    in_use.dedup();
    if reported.as_ref() == Some(&in_use) {
        return;
    }
    let attached: Vec<serde_json::Value> = in_use.iter().map(|n| json!({"name": n, "devicePath": ""})).collect();
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let patch = json!({"status": {"volumesInUse": in_use, "volumesAttached": attached}});
    match nodes
        .patch_status(&ctx.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => *reported = Some(in_use),
        Err(e) => tracing::warn!(error = %e, "reporting the node's volumes in use"),
    }
}

async fn watch_pods(ctx: Arc<NodeCtx>, workers: Workers) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.name));
    let mut stream = watcher(pods, cfg).boxed();
    let mut seen_in_relist: Option<std::collections::HashSet<String>> = None;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "watching pods");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match ev {
            watcher::Event::Init => seen_in_relist = Some(Default::default()),
            watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                let key = (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                );
                ctx.names
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, uid.clone());
                if let Some(s) = seen_in_relist.as_mut() {
                    s.insert(uid.clone());
                }
                let mut workers = workers.lock().unwrap_or_else(|e| e.into_inner());
                let sent = workers
                    .get(&uid)
                    .is_some_and(|tx| tx.send(Event::Pod(Box::new(p.clone()))).is_ok());
                if !sent {
                    let finished = p
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
                    let known = ctx.pod_dir(&uid).exists();
                    // A finished pod the node no longer tracks needs no worker, unless it is being deleted.
                    if finished && !known && p.metadata.deletion_timestamp.is_none() {
                        continue;
                    }
                    workers.insert(uid, Worker::spawn(ctx.clone(), p));
                }
            }
            watcher::Event::Delete(p) => {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                if let Some(tx) = workers.lock().unwrap_or_else(|e| e.into_inner()).get(&uid) {
                    let _ = tx.send(Event::Gone);
                }
            }
            watcher::Event::InitDone => {
                let seen = seen_in_relist.take().unwrap_or_default();
                for (uid, tx) in workers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    if !seen.contains(uid) {
                        let _ = tx.send(Event::Gone);
                    }
                }
                clean_orphans(&ctx, &workers, &seen).await;
            }
        }
    }
}

/// Keep the warm pool full: first give back what an earlier run of the node left, then make
/// sandboxes until the pool is full, and again a moment after each one is taken. A failure is
/// logged and tried again after a back-off (1 s, doubling to a minute).
async fn keep_warm(ctx: Arc<NodeCtx>) {
    let errors = ctx.warm.give_back(&ctx.warm_makers(), false).await;
    if !errors.is_empty() {
        tracing::warn!(errors = %errors.join("; "), "giving back an earlier run's warm sandboxes");
    }
    let mut backoff = Duration::from_secs(1);
    loop {
        while ctx.warm.wanted() {
            match ctx.warm.make_one(&ctx.warm_makers()).await {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "making a warm sandbox");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
        if ctx.warm.is_off() {
            return;
        }
        ctx.warm.taken().await;
        tokio::time::sleep(crate::warm::REFILL_DELAY).await;
    }
}

/// Pods on disk that the API no longer has (deleted while the node was down): tear them down.
async fn clean_orphans(ctx: &Arc<NodeCtx>, workers: &Workers, live: &std::collections::HashSet<String>) {
    let Ok(dir) = std::fs::read_dir(&ctx.pods_dir) else {
        return;
    };
    for e in dir.flatten() {
        let uid = e.file_name().to_string_lossy().to_string();
        if live.contains(&uid) || workers.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&uid) {
            continue;
        }
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                uid: Some(uid.clone()),
                name: Some(uid.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let tx = Worker::spawn(ctx.clone(), pod);
        let _ = tx.send(Event::Gone);
    }
}

pub async fn start(cfg: NodeConfig, client: kube::Client) -> anyhow::Result<RunningNode> {
    let tls = cfg.tls.server_config()?;
    // Pods' env (from Secrets) is in their bundles, their secret volumes under `pods`: both
    // trees are the node's alone (see `private`).
    // With user namespaces, searchable by the pods' ranges on the way to their own directories.
    let userns = cfg.user_namespaces;
    crate::private::dir_for_pods(&cfg.data_dir, userns)?;
    crate::private::dir_for_pods(&cfg.run_dir, userns)?;
    let images = ImageStore::open(cfg.data_dir.join("images"))?;
    let pods_dir = cfg.data_dir.join("pods");
    let ns_dir = cfg.run_dir.join("ns");
    let bundles_dir = cfg.run_dir.join("bundles");
    crate::private::dir_for_pods(&pods_dir, userns)?;
    if let Err(e) = crate::rundir::spread_subdirectories(&pods_dir) {
        tracing::debug!("{}: not marked as a top directory: {e}", pods_dir.display());
    }
    crate::private::dir_for_pods(&bundles_dir, userns)?;
    if userns {
        for d in [&pods_dir, &bundles_dir] {
            if let Some(a) = crate::private::unsearchable_ancestor(&std::path::absolute(d)?) {
                anyhow::bail!(
                    "pods run in user namespaces, as unprivileged uids that must reach {} to mount their files, and {} is not searchable by others: make it o+x, or start the node with --no-user-namespaces",
                    d.display(),
                    a.display()
                );
            }
        }
    }
    crate::private::dir(&ns_dir)?;
    let warm_dir = cfg.run_dir.join("warm");
    crate::private::dir(&warm_dir)?;
    match crate::cgroups::cap_pods(&cgroup_parent(&cfg.name)) {
        Ok((memory, millicpu)) => tracing::info!(memory, millicpu, "all pods together capped"),
        Err(e) => {
            tracing::warn!(error = %e, "the pods' memory and CPU are not capped: the node's processes are not protected from them")
        }
    }
    let vm = crate::vm::settle(&cfg.microvm, &cfg.data_dir.join("vm"));
    match &vm {
        Ok(s) if s.accel.kvm => tracing::info!(kernel = %s.image.kernel.display(), "microVM pods run under KVM"),
        Ok(s) => {
            tracing::warn!(kernel = %s.image.kernel.display(), why = %s.accel.why, "microVM pods run under TCG (emulated CPUs, seconds per boot)")
        }
        Err(e) => tracing::info!(why = %e, "no microVM pods on this node"),
    }
    let bundles_dir_for_ranges = bundles_dir.clone();
    let workers = Workers::default();
    let registry = workers.clone();
    let ctx = Arc::new(NodeCtx {
        client: client.clone(),
        name: cfg.name.clone(),
        runtime: cfg.runtime,
        network: cfg.network,
        images,
        pods_dir,
        bundles_dir,
        ns_dir,
        host_ip: cfg.host_ip.clone(),
        cluster_dns: cfg.cluster_dns,
        cluster_domain: cfg.cluster_domain,
        host_resolv: std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        cgroup_parent: cgroup_parent(&cfg.name),
        backoff_base: cfg.backoff_base,
        backoff_max: cfg.backoff_max,
        pull: cfg.pull,
        keeper: cfg.keeper,
        user_namespaces: cfg.user_namespaces,
        id_ranges: held_id_ranges(&bundles_dir_for_ranges),
        warm: crate::warm::WarmPool::new(warm_dir, cfg.warm_sandboxes),
        metrics: crate::metrics::NodeMetrics::with_collectors(cfg.metrics_collectors),
        csi: crate::csi::CsiPlugins {
            drivers: cfg.csi_drivers,
            root: cfg.data_dir.join("csi"),
        },
        volumes_changed: tokio::sync::Notify::new(),
        pulls: Mutex::new(HashMap::new()),
        names: Mutex::new(HashMap::new()),
        vm,
        vms: Default::default(),
        forget_worker: Box::new(move |uid| {
            registry.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
        }),
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let kubelet_addr = listener.local_addr()?;
    let server = tokio::spawn(crate::server::serve(listener, tls, ctx.clone()));
    register(
        &client,
        &node_object(
            &cfg.name,
            &cfg.host_ip,
            kubelet_addr.port(),
            &ctx.runtime.version(),
            &if ctx.vm.is_ok() {
                vec![ctx.runtime.name(), crate::vm::HANDLER]
            } else {
                vec![ctx.runtime.name()]
            },
            &cfg.pod_cidrs,
        ),
    )
    .await?;
    if !ctx.csi.drivers.is_empty() {
        ctx.csi.register(&client, &cfg.name).await.map_err(anyhow::Error::msg)?;
    }
    let hb = tokio::spawn(heartbeat(client, cfg.name.clone(), cfg.lease_duration));
    let volumes = tokio::spawn(watch_volumes(ctx.clone()));
    let watch = tokio::spawn(watch_pods(ctx.clone(), workers));
    let warm = tokio::spawn(keep_warm(ctx.clone()));
    tracing::info!(node = %cfg.name, kubelet = %kubelet_addr, "node registered");
    Ok(RunningNode {
        ctx,
        kubelet_addr,
        tasks: vec![server, hb, watch, warm, volumes],
    })
}
