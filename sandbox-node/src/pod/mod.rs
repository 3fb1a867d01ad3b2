//! One worker per pod bound to the node: it makes the sandbox, runs init containers in order
//! and then the containers, restarts them by the pod's restartPolicy with back-off, runs probes
//! and hooks, reports status, and on deletion stops everything and tears the sandbox down.

mod container;
mod files;
pub mod probe;
mod projection;
mod sandbox_retry;
pub(crate) mod state;
mod status;
mod storage;
mod teardown;
mod volume_data;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use nodeless_types::pod_features;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::context::NodeCtx;
use crate::runtime::Launch;
use crate::sandbox::PodNamespaces;
use crate::shim_proto::{ExitRecord, now_rfc3339};
use crate::spec::{ContainerSpec, config_json};
pub use state::Attempt;
use state::{Ctr, Saved, SavedCtr};

/// Tokens are written again at this share of their life, and after a failure this soon.
const TOKEN_REFRESH_AT: f64 = 0.8;
const TOKEN_REFRESH_RETRY: Duration = Duration::from_secs(10);
/// How often the configMap, secret, downwardAPI and projected volumes of a running pod are
/// read again and, where their data changed, swapped under it (kubelet syncs within a minute).
const VOLUME_DATA_RESYNC: Duration = Duration::from_secs(20);

pub enum Event {
    Pod(Box<Pod>),
    /// The pod is gone from the API (deleted without grace, or the watch lost it).
    Gone,
    Exited {
        name: String,
        number: u32,
        record: ExitRecord,
    },
    Probe {
        name: String,
        number: u32,
        kind: probe::Kind,
        ok: bool,
        message: String,
    },
}

pub struct Worker {
    ctx: Arc<NodeCtx>,
    pod: Pod,
    uid: String,
    /// Pod state, volumes, and each attempt's writable layer and log (on the data disk).
    dir: PathBuf,
    /// Each attempt's bundle (in the run directory).
    run_dir: PathBuf,
    ns: PodNamespaces,
    /// The pod's CNI container id: its UID, or the key of the warm sandbox it took.
    net_id: String,
    pod_ip: String,
    sandbox_ready: bool,
    volumes: Vec<files::PodVolume>,
    ctrs: Vec<Ctr>,
    tx: mpsc::UnboundedSender<Event>,
    last_status: Value,
    transitions: BTreeMap<String, (String, String)>,
    failed_sandbox: Option<sandbox_retry::SandboxFailure>,
    /// The host id that is root in the pod's user namespace (see `userns`), if it has one.
    user_base: Option<u32>,
    /// Local storage limits (emptyDir sizeLimit, ephemeral-storage) and when to measure next.
    storage: storage::Limits,
    next_storage_check: Option<Instant>,
    /// When the tokens in the pod's volumes are written again (at 80% of their life).
    next_token_refresh: Option<Instant>,
    /// When the node-written volumes are read again, and a digest of what each holds now.
    next_data_refresh: Option<Instant>,
    written: std::collections::HashMap<String, [u8; 32]>,
    /// Why the pod was evicted, once it is: its containers stay stopped.
    evicted: Option<String>,
    /// When this worker first saw the pod, and whether its start was counted yet (see `metrics`).
    first_seen: Instant,
    start_counted: bool,
    /// Counted in `kubelet_running_pods`.
    counted_running: bool,
    /// The pod's VM, when it runs as a microVM (see `vm`).
    vm: Option<Arc<crate::vm::MicroVm>>,
    /// The pod runs in a microVM: without one, its containers do not start (never in a sandbox).
    microvm: bool,
}

fn grace_period(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0)
}

impl Worker {
    /// Start a worker for `pod`; adopt its containers if the node ran them before a restart.
    pub fn spawn(ctx: Arc<NodeCtx>, pod: Pod) -> mpsc::UnboundedSender<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = ctx.pod_dir(&uid);
        let run_dir = ctx.pod_run_dir(&uid);
        let ns = PodNamespaces::at(ctx.ns_dir.join(&uid));
        let spec = pod.spec.clone().unwrap_or_default();
        let mut ctrs: Vec<Ctr> = Vec::new();
        for (init, list) in [
            (true, spec.init_containers.clone().unwrap_or_default()),
            (false, spec.containers.clone()),
        ] {
            for c in list {
                ctrs.push(Ctr {
                    name: c.name.clone(),
                    init,
                    backoff: ctx.backoff_base,
                    ..Default::default()
                });
            }
        }
        let mut w = Worker {
            ctx,
            pod,
            net_id: uid.clone(),
            uid,
            dir,
            run_dir,
            ns,
            pod_ip: String::new(),
            sandbox_ready: false,
            volumes: Vec::new(),
            ctrs,
            tx: tx.clone(),
            last_status: Value::Null,
            transitions: BTreeMap::new(),
            failed_sandbox: None,
            user_base: None,
            vm: None,
            microvm: false,
            storage: storage::Limits::default(),
            next_storage_check: None,
            next_token_refresh: None,
            next_data_refresh: None,
            written: std::collections::HashMap::new(),
            evicted: None,
            first_seen: Instant::now(),
            start_counted: false,
            counted_running: false,
        };
        w.add_ephemeral();
        tokio::spawn(w.run(rx));
        tx
    }

    /// Ephemeral containers the pod has gained (`kubectl debug`) join the worker's list.
    fn add_ephemeral(&mut self) {
        let names: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.ephemeral_containers.as_ref())
            .into_iter()
            .flatten()
            .map(|e| e.name.clone())
            .collect();
        for name in names {
            if !self.ctrs.iter().any(|c| c.name == name) {
                self.ctrs.push(Ctr {
                    name,
                    ephemeral: true,
                    backoff: self.ctx.backoff_base,
                    ..Default::default()
                });
            }
        }
    }

    /// An ephemeral container's spec as a container's (they share every field it has), and the
    /// container whose processes it sees (`targetContainerName`).
    fn ephemeral_spec(&self, name: &str) -> Option<(Container, Option<String>)> {
        let e = self
            .pod
            .spec
            .as_ref()?
            .ephemeral_containers
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?;
        let mut v = serde_json::to_value(e).ok()?;
        let target = v
            .as_object_mut()?
            .remove("targetContainerName")
            .and_then(|t| t.as_str().map(str::to_string));
        Some((serde_json::from_value(v).ok()?, target))
    }

    /// What runs the pod's containers: its VM, or the node's OCI runtime.
    fn runtime(&self) -> Arc<dyn crate::runtime::Runtime> {
        match &self.vm {
            Some(vm) => vm.clone(),
            None => self.ctx.runtime.clone(),
        }
    }

    fn pod_name(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.clone().unwrap_or_default(),
            self.pod.metadata.name.clone().unwrap_or_default()
        )
    }

    fn spec_of(&self, name: &str) -> Option<Container> {
        let s = self.pod.spec.as_ref()?;
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
            .find(|c| c.name == name)
            .cloned()
            .or_else(|| self.ephemeral_spec(name).map(|(c, _)| c))
    }

    /// The PID namespace a container joins: its target's, for an ephemeral container with one;
    /// with `shareProcessNamespace`, the first running container's (the pod has no pause
    /// process, so that container is PID 1 of the pod); otherwise none (its own).
    fn pid_namespace(&self, name: &str) -> Result<Option<PathBuf>, String> {
        let of = |c: &Ctr| -> Option<PathBuf> {
            let a = c.current.as_ref().filter(|a| a.exit.is_none())?;
            let pid = std::fs::read_to_string(bundle_dir(&self.run_dir, &c.name, a.number).join("pid")).ok()?;
            let path = PathBuf::from(format!("/proc/{}/ns/pid", pid.trim()));
            path.exists().then_some(path)
        };
        if let Some(target) = self.ephemeral_spec(name).and_then(|(_, t)| t) {
            let c = self
                .ctrs
                .iter()
                .find(|c| c.name == target && !c.ephemeral)
                .ok_or_else(|| format!("targetContainerName {target:?} is not a container of the pod"))?;
            return of(c)
                .map(Some)
                .ok_or_else(|| format!("target container {target:?} is not running"));
        }
        let shared = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.share_process_namespace)
            .unwrap_or(false);
        if !shared {
            return Ok(None);
        }
        Ok(self.ctrs.iter().filter(|c| c.name != name && !c.init).find_map(of))
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        match storage::Limits::of(&self.pod) {
            Ok(l) => self.storage = l,
            Err(e) => self.event("Warning", "InvalidStorageLimit", &e),
        }
        self.adopt().await;
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&mut rx, true).await;
                return;
            }
            self.check_storage().await;
            self.refresh_tokens().await;
            self.refresh_volume_data().await;
            self.reconcile().await;
            self.report().await;
            let deadline = self
                .ctrs
                .iter()
                .filter_map(|c| c.next_start)
                .chain(self.failed_sandbox.as_ref().map(|f| f.retry_at))
                .chain(self.next_storage_check)
                .chain(self.next_token_refresh)
                .chain(self.next_data_refresh)
                .min();
            // An evicted pod waits for its deletion only.
            let deadline = deadline.filter(|_| self.evicted.is_none());
            let ev = match deadline {
                Some(d) => tokio::select! {
                    ev = rx.recv() => ev,
                    _ = tokio::time::sleep_until(d) => continue,
                },
                None => rx.recv().await,
            };
            let Some(ev) = ev else { return };
            match ev {
                Event::Gone => {
                    self.terminate(&mut rx, false).await;
                    return;
                }
                other => self.apply(other),
            }
            // Take every event already queued before the next reconcile.
            while let Ok(ev) = rx.try_recv() {
                if matches!(ev, Event::Gone) {
                    self.terminate(&mut rx, false).await;
                    return;
                }
                self.apply(ev);
            }
        }
    }

    fn apply(&mut self, ev: Event) {
        match ev {
            Event::Pod(p) => {
                self.pod = *p;
                self.add_ephemeral();
            }
            Event::Gone => {}
            Event::Exited { name, number, record } => {
                let (base, max) = (self.ctx.backoff_base, self.ctx.backoff_max);
                let Some(c) = self.ctrs.iter_mut().find(|c| c.name == name) else {
                    return;
                };
                let Some(cur) = c.current.as_mut().filter(|a| a.number == number && a.exit.is_none()) else {
                    return;
                };
                // A container that ran ten minutes has earned a fresh back-off.
                let ran_long = chrono::DateTime::parse_from_rfc3339(&cur.started_at)
                    .is_ok_and(|s| chrono::Utc::now().signed_duration_since(s) > chrono::Duration::minutes(10));
                if ran_long {
                    c.backoff = base;
                }
                cur.exit = Some(record);
                // The next attempt waits out the back-off, which doubles each time.
                c.next_start = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(max);
                c.ready = false;
                c.started = false;
                c.stop_tasks();
                self.save();
            }
            Event::Probe {
                name,
                number,
                kind,
                ok,
                message,
            } => {
                let Some(c) = self.ctrs.iter_mut().find(|c| c.name == name) else {
                    return;
                };
                if c.current
                    .as_ref()
                    .is_none_or(|a| a.number != number || a.exit.is_some())
                {
                    return;
                }
                match kind {
                    probe::Kind::Readiness => c.ready = ok,
                    probe::Kind::Startup => c.started = ok,
                    probe::Kind::Liveness => {}
                }
                if !ok {
                    let id = c.current.as_ref().map(|a| a.id.clone()).unwrap_or_default();
                    let what = match kind {
                        probe::Kind::Startup => "Startup",
                        probe::Kind::Liveness => "Liveness",
                        probe::Kind::Readiness => "Readiness",
                    };
                    self.event("Warning", "Unhealthy", &format!("{what} probe failed: {message}"));
                    if kind != probe::Kind::Readiness {
                        // A failed liveness or startup probe restarts the container.
                        self.event(
                            "Normal",
                            "Killing",
                            &format!(
                                "Container {name} failed {} probe, will be restarted",
                                what.to_lowercase()
                            ),
                        );
                        let rt = self.runtime();
                        let grace = grace_period(&self.pod);
                        tokio::spawn(async move {
                            let _ = rt.kill(&id, "TERM").await;
                            tokio::time::sleep(Duration::from_secs(grace as u64)).await;
                            let _ = rt.kill(&id, "KILL").await;
                        });
                    }
                }
            }
        }
    }

    /// A file the pod's containers bind-mount (`hosts`, `hostname`, `resolv.conf`): in its run
    /// directory, or in its data directory for a pod set up before they moved (adopted after
    /// an upgrade).
    fn pod_file(&self, name: &str) -> PathBuf {
        pod_file(&self.run_dir, &self.dir, name)
    }

    fn save(&self) {
        let saved = Saved {
            pod_ip: self.pod_ip.clone(),
            user_base: self.user_base,
            net_id: (self.net_id != self.uid).then(|| self.net_id.clone()),
            containers: self
                .ctrs
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        SavedCtr {
                            current: c.current.clone(),
                            previous: c.previous.clone(),
                        },
                    )
                })
                .collect(),
        };
        if let Err(e) = state::save(&self.run_dir, &saved) {
            tracing::warn!(pod = %self.pod_name(), error = %e, "saving pod state");
        }
    }

    /// Pick up where a previous run of the node left off.
    async fn adopt(&mut self) {
        let Some(saved) = state::load(&self.run_dir, &self.dir) else {
            return;
        };
        // Held whether or not the namespaces are still there: the range is released with the
        // pod, at its teardown.
        if let Some(base) = saved.user_base {
            self.ctx.id_ranges.hold(base);
            self.user_base = Some(base);
        }
        if let Some(id) = saved.net_id {
            self.net_id = id;
        }
        if !self.ns.exist() || self.ns.user().is_some() != self.user_base.is_some() {
            return;
        }
        let vm_dir = self.ctx.vm_dir(&self.uid);
        if crate::vm::qemu::pid_file(&vm_dir).exists() {
            match Box::pin(crate::vm::MicroVm::adopt(
                &vm_dir,
                self.ctx.keeper.binary().to_path_buf(),
            ))
            .await
            {
                Ok(vm) => {
                    self.microvm = true;
                    self.ctx.vms.insert(&self.uid, vm.clone());
                    self.vm = Some(vm);
                }
                Err(e) => {
                    // Its containers went with it, and they never run outside a VM.
                    self.microvm = true;
                    tracing::warn!(pod = %self.pod_name(), error = %e, "the pod's VM cannot be adopted");
                    self.event(
                        "Warning",
                        "VMGone",
                        &format!("the pod's microVM cannot be adopted ({e}); its containers do not run outside it: delete the pod for a new one"),
                    );
                }
            }
        }
        let running: Vec<String> = self
            .runtime()
            .list()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.status == "running")
            .map(|s| s.id)
            .collect();
        self.pod_ip = saved.pod_ip;
        let userns = self.ns.user().zip(self.user_base);
        let userns = userns.as_ref().map(|(p, b)| (p.as_path(), *b));
        if let Ok(v) = files::prepare_volumes(&self.ctx, &self.pod, &self.dir, userns).await {
            self.volumes = v;
            self.schedule_token_refresh();
        }
        self.sandbox_ready = true;
        self.count_running(true);
        self.start_counted = true;
        for c in &mut self.ctrs {
            let Some(s) = saved.containers.get(&c.name) else {
                continue;
            };
            c.previous = s.previous.clone();
            c.current = s.current.clone();
            if let Some(cur) = c.current.as_mut().filter(|a| a.exit.is_none()) {
                let exit_file = attempt_bundle(&self.run_dir, &self.dir, &c.name, cur.number).join("exit");
                if let Some(rec) = ExitRecord::read(&exit_file) {
                    cur.exit = Some(rec);
                } else if running.contains(&cur.id) {
                    c.started = true;
                    c.ready = true;
                    let (tx, name, number) = (self.tx.clone(), c.name.clone(), cur.number);
                    c.tasks.push(tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            if let Some(record) = ExitRecord::read(&exit_file) {
                                let _ = tx.send(Event::Exited { name, number, record });
                                return;
                            }
                        }
                    }));
                } else {
                    cur.exit = Some(ExitRecord {
                        exit_code: 255,
                        signal: None,
                        reason: "Error".into(),
                        message: "the container was gone when the node restarted".into(),
                        finished_at: now_rfc3339(),
                    });
                }
            }
        }
        tracing::info!(pod = %self.pod_name(), "adopted");
        // Probes start again for the running containers.
        let names: Vec<String> = self
            .ctrs
            .iter()
            .filter(|c| c.running())
            .map(|c| c.name.clone())
            .collect();
        for n in names {
            self.start_probes(&n);
        }
    }

    fn event(&self, kind: &str, reason: &str, message: &str) {
        crate::context::emit_event(&self.ctx, &self.pod, kind, reason, message);
    }

    /// Make the pod's sandbox unless it is made. A start that fails part way gives back the
    /// network attachment and namespaces it got (see `teardown::release`), so the next try,
    /// after its back-off, starts clean.
    async fn ensure_sandbox(&mut self) -> Result<(), String> {
        if self.sandbox_ready {
            return Ok(());
        }
        let mut made = teardown::Made::default();
        let Err(e) = self.make_sandbox(&mut made).await else {
            return Ok(());
        };
        let parts = teardown::LiveSandbox {
            ctx: &self.ctx,
            net_id: &self.net_id,
            ns: &self.ns,
        };
        let errors = teardown::release(&parts, made).await;
        if made.network {
            self.pod_ip.clear();
            self.net_id = self.uid.clone();
        }
        if errors.is_empty() {
            Err(e)
        } else {
            Err(format!("{e} (and undoing the sandbox: {})", errors.join("; ")))
        }
    }

    /// The steps of `ensure_sandbox`, recording in `made` what needs undoing if a later one fails.
    async fn make_sandbox(&mut self, made: &mut teardown::Made) -> Result<(), String> {
        if let Some(why) = self.pod.spec.as_ref().and_then(pod_features::unsupported) {
            return Err(format!("spec.{why}"));
        }
        if let Some(why) = files::unsupported_volume(&self.pod) {
            return Err(why);
        }
        for d in [&self.dir, &self.run_dir] {
            std::fs::create_dir_all(d.join("containers")).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let hostname = pod_hostname(&self.pod);
        let microvm = self.runtime_handler().await?.as_deref() == Some(crate::vm::HANDLER);
        // In a microVM the VM is the wall: its root is nobody on the host.
        let wants_userns = !microvm
            && crate::userns::wants_user_namespace(&self.pod, self.ctx.user_namespaces).map_err(|e| e.to_string())?;
        let t0 = std::time::Instant::now();
        let warm = !microvm && self.take_warm(wants_userns, &hostname, made).await;
        if wants_userns && self.user_base.is_none() {
            self.user_base = Some(self.ctx.id_ranges.allocate().map_err(|e| e.to_string())?);
            self.save();
        }
        let user_base = self.user_base.filter(|_| wants_userns);
        // Namespaces left from an earlier try that do not match (made before the range was saved).
        if self.ns.exist() && self.ns.user().is_some() != user_base.is_some() {
            self.ns
                .remove(&self.ctx.keeper)
                .await
                .map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))?;
        }
        if !self.ns.exist() {
            self.ns
                .create(&self.ctx.keeper, &hostname, user_base)
                .await
                .map_err(|e| e.to_string())?;
        }
        made.namespaces = true;
        let namespaced = t0.elapsed();
        crate::cgroups::limit_pod_pids(&self.ctx.cgroup_parent, &self.uid, crate::cgroups::POD_PIDS_MAX)?;
        made.network = true;
        if !warm {
            let ip = self
                .ctx
                .network
                .attach(&self.net_id, &self.pod, &self.ns.net())
                .await
                .map_err(|e| format!("network: {e}"))?;
            self.pod_ip = ip;
        }
        let attached = t0.elapsed();
        let dns = files::DnsSettings {
            cluster_dns: self.ctx.cluster_dns.as_deref(),
            cluster_domain: &self.ctx.cluster_domain,
            host_resolv: &self.ctx.host_resolv,
        };
        let write = |name: &str, body: String| {
            std::fs::write(self.run_dir.join(name), body).map_err(|e| format!("{name}: {e}"))
        };
        write("hosts", files::hosts_file(&self.pod, &self.pod_ip))?;
        write("hostname", format!("{hostname}\n"))?;
        write("resolv.conf", files::resolv_conf(&self.pod, &dns))?;
        let userns = self.ns.user().zip(user_base);
        let userns = userns.as_ref().map(|(p, b)| (p.as_path(), *b));
        self.volumes = files::prepare_volumes(&self.ctx, &self.pod, &self.dir, userns).await?;
        self.schedule_token_refresh();
        if let Some(base) = user_base {
            // The pod's own directories: its range's root reaches its rootfs and volumes through
            // them (the runtime mounts them as that uid), nobody else gets in (see `private`).
            for d in [&self.dir, &self.run_dir] {
                crate::userns::give_to_pod(d, base)
                    .map_err(|e| format!("giving {} to the pod's user namespace: {e}", d.display()))?;
                std::fs::set_permissions(
                    d,
                    <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(crate::private::DIR_MODE),
                )
                .map_err(|e| format!("{}: {e}", d.display()))?;
            }
            // Root in the pod writes these, as it would without a user namespace; the volumes the
            // node writes (configMap, secret, downwardAPI, projected) stay its own (read-only,
            // world-readable).
            let writable = ["hosts", "hostname", "resolv.conf"].map(|n| self.run_dir.join(n));
            for p in writable
                .iter()
                .chain(self.volumes.iter().filter(|v| !v.read_only && !v.csi).map(|v| &v.path))
            {
                crate::userns::give_to_pod(p, base)
                    .map_err(|e| format!("giving {} to the pod's user namespace: {e}", p.display()))?;
            }
        }
        if microvm {
            self.microvm = true;
            // Boxed: the VM's start is a large future, the worker's stack is not.
            Box::pin(self.launch_vm(&hostname)).await?;
        }
        self.sandbox_ready = true;
        self.count_running(true);
        self.save();
        tracing::debug!(
            pod = %self.pod_name(),
            warm,
            namespaces_ms = namespaced.as_secs_f64() * 1e3,
            network_ms = (attached - namespaced).as_secs_f64() * 1e3,
            files_ms = (t0.elapsed() - attached).as_secs_f64() * 1e3,
            "sandbox made"
        );
        Ok(())
    }

    /// The RuntimeClass handler the pod asks for, `None` for the node's OCI runtime; a class
    /// that does not exist or names a handler this node lacks is the pod's failure, with why.
    async fn runtime_handler(&self) -> Result<Option<String>, String> {
        let Some(name) = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.clone())
            .filter(|n| !n.is_empty())
        else {
            return Ok(None);
        };
        let api: Api<k8s_openapi::api::node::v1::RuntimeClass> = Api::all(self.ctx.client.clone());
        let rc = api
            .get_opt(&name)
            .await
            .map_err(|e| format!("spec.runtimeClassName: reading RuntimeClass {name:?}: {e}"))?
            .ok_or_else(|| format!("spec.runtimeClassName: RuntimeClass {name:?} not found"))?;
        let handler = rc.handler;
        if handler == crate::vm::HANDLER {
            return match &self.ctx.vm {
                Ok(_) => Ok(Some(handler)),
                Err(why) => Err(format!(
                    "spec.runtimeClassName: RuntimeClass {name:?} asks for handler {handler:?}, which this node cannot run: {why}"
                )),
            };
        }
        if handler == self.ctx.runtime.name() {
            return Ok(None);
        }
        Err(format!(
            "spec.runtimeClassName: RuntimeClass {name:?} asks for handler {handler:?}, which this node does not have (it has {}{})",
            self.ctx.runtime.name(),
            if self.ctx.vm.is_ok() { ", microvm" } else { "" }
        ))
    }

    /// Start the pod's microVM on its sandbox's network and files, and say how it went.
    async fn launch_vm(&mut self, hostname: &str) -> Result<(), String> {
        let settings = self.ctx.vm.as_ref().map_err(|e| e.clone())?.clone();
        let (vcpus, memory_mib) = crate::vm::size(&self.pod);
        let dir = self.ctx.vm_dir(&self.uid);
        let shares = vec![
            ("run".to_string(), self.run_dir.clone()),
            ("data".to_string(), self.dir.clone()),
        ];
        let setup = nodeless_guest_agent::proto::SetupRequest {
            hostname: hostname.to_string(),
            shares: shares
                .iter()
                .map(|(tag, path)| nodeless_guest_agent::proto::Share {
                    tag: tag.clone(),
                    path: path.display().to_string(),
                })
                .collect(),
            interfaces: Vec::new(),
        };
        let netns = self.ns.net();
        let launch = crate::vm::qemu::Launch {
            uid: &self.uid,
            dir: &dir,
            vcpus,
            memory_mib,
            shares,
            mac: String::new(),
            netns: &netns,
        };
        let (vm, t) = Box::pin(crate::vm::MicroVm::launch(
            &settings,
            launch,
            setup,
            self.ctx.keeper.binary().to_path_buf(),
        ))
        .await
        .map_err(|e| format!("starting the pod's VM: {e}"))?;
        let accel = if settings.accel.kvm {
            "KVM".to_string()
        } else {
            format!("TCG, no KVM: {}", settings.accel.why)
        };
        let ms = |d: Duration| d.as_millis();
        self.event(
            "Normal",
            "StartedVM",
            &format!(
                "microVM started ({accel}; {vcpus} vCPU, {memory_mib} MiB; kernel {}): {} ms in all: QEMU {} ms, guest kernel {} ms, agent {} ms, to its first answer {} ms, guest set-up {} ms",
                vm.hello.kernel,
                ms(t.total),
                ms(t.qemu),
                ms(t.kernel),
                ms(t.agent),
                ms(t.to_hello),
                ms(t.setup)
            ),
        );
        tracing::info!(pod = %self.pod_name(), accel = settings.accel.name(), total_ms = ms(t.total) as u64, "microVM started");
        if let Err(e) = crate::cgroups::join_pod(&self.ctx.cgroup_parent, &self.uid, "vm", vm.pid) {
            tracing::warn!(pod = %self.pod_name(), error = %e, "the pod's QEMU is outside the pods' cgroups: their caps do not hold for it");
        }
        self.ctx.vms.insert(&self.uid, vm.clone());
        self.vm = Some(vm);
        Ok(())
    }

    /// Keep `kubelet_running_pods` in step: the pod counts from its sandbox's making (or adoption)
    /// to its teardown, once.
    fn count_running(&mut self, running: bool) {
        if running != self.counted_running {
            self.counted_running = running;
            if running {
                self.ctx.metrics.running_pods.inc();
            } else {
                self.ctx.metrics.running_pods.dec();
            }
        }
    }

    /// On a pod's first try, take a warm sandbox (see `warm`) if the pool has one for it: its
    /// namespaces become the pod's, with the pod's hostname, and its network (address and CNI
    /// id) the pod's. False when there is none or taking it failed (what was taken is given
    /// back in the background, and a supervisor that cannot hand namespaces over turns the
    /// pool off); the sandbox is then made as without a pool.
    async fn take_warm(&mut self, wants_userns: bool, hostname: &str, made: &mut teardown::Made) -> bool {
        if self.user_base.is_some() || self.ns.exist() || self.net_id != self.uid {
            return false;
        }
        let Some(w) = self.ctx.warm.take(wants_userns) else {
            crate::metrics::NodeMetrics::count(&self.ctx.metrics.warm_claims, "none");
            return false;
        };
        match self.ns.claim(&self.ctx.keeper, &w.ns, hostname).await {
            Ok(()) => {
                made.namespaces = true;
                made.network = true;
                self.user_base = w.user_base;
                self.net_id = w.key;
                self.pod_ip = w.ip;
                self.save();
                crate::metrics::NodeMetrics::count(&self.ctx.metrics.warm_claims, "taken");
                true
            }
            Err(e) => {
                crate::metrics::NodeMetrics::count(&self.ctx.metrics.warm_claims, "failed");
                let message = e.to_string();
                tracing::warn!(pod = %self.pod_name(), warm = %w.key, error = %message, "taking a warm sandbox");
                if message.contains("unknown request") {
                    tracing::warn!("the node's supervisor predates warm sandboxes: the pool is off until it restarts");
                    self.ctx.warm.turn_off();
                }
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    let errors = crate::warm::discard(&w, &ctx.warm_makers()).await;
                    if !errors.is_empty() {
                        tracing::warn!(warm = %w.key, errors = %errors.join("; "), "giving back a warm sandbox");
                    }
                });
                false
            }
        }
    }

    /// Measure the pod's local storage when it is due; evict the pod that is over a limit.
    async fn check_storage(&mut self) {
        if self.storage.is_empty() || self.evicted.is_some() || !self.sandbox_ready {
            return;
        }
        if self.next_storage_check.is_some_and(|t| t > Instant::now()) {
            return;
        }
        self.next_storage_check = Some(Instant::now() + storage::CHECK_EVERY);
        let dirs: Vec<(String, PathBuf)> = self
            .ctrs
            .iter()
            .filter_map(|c| {
                Some((
                    c.name.clone(),
                    attempt_data_dir(&self.dir, &c.name, c.current.as_ref()?.number),
                ))
            })
            .collect();
        let (limits, volumes) = (self.storage.clone(), self.dir.join("volumes"));
        let Ok(Some(why)) = tokio::task::spawn_blocking(move || storage::over(&limits, &volumes, &dirs)).await else {
            return;
        };
        self.event("Warning", "Evicted", &why);
        self.evicted = Some(why);
        self.next_storage_check = None;
        for c in self.ctrs.iter().filter(|c| c.running()) {
            if let Some(a) = &c.current {
                let _ = self.runtime().kill(&a.id, "KILL").await;
            }
        }
    }

    async fn reconcile(&mut self) {
        if self.evicted.is_some() {
            return;
        }
        // A failed sandbox is tried again only once its back-off has run out, not at every
        // event (the worker's own status patches come back as events).
        if !self.sandbox_ready && self.failed_sandbox.as_ref().is_some_and(|f| !f.due(Instant::now())) {
            return;
        }
        if let Err(e) = self.ensure_sandbox().await {
            let previous = self.failed_sandbox.as_ref();
            if sandbox_retry::SandboxFailure::is_new(previous, &e) {
                self.event("Warning", "FailedCreatePodSandBox", &e);
            }
            let (base, max) = (self.ctx.backoff_base, self.ctx.backoff_max);
            self.failed_sandbox = Some(sandbox_retry::SandboxFailure::after(
                previous,
                e.clone(),
                Instant::now(),
                base,
                max,
            ));
            for c in &mut self.ctrs {
                if c.current.is_none() {
                    c.waiting = Some(("ContainerCreating".into(), e.clone()));
                }
            }
            return;
        }
        self.failed_sandbox = None;
        let policy = self.restart_policy();
        let now = Instant::now();
        // Init containers, one at a time, in order.
        let inits: Vec<usize> = (0..self.ctrs.len()).filter(|i| self.ctrs[*i].init).collect();
        for i in inits {
            let c = &self.ctrs[i];
            if c.exited().is_some_and(|e| e.exit_code == 0) {
                continue;
            }
            if c.running() {
                return;
            }
            if c.exited().is_some() && policy == "Never" {
                return;
            }
            self.maybe_start(i, now).await;
            return;
        }
        for i in 0..self.ctrs.len() {
            if self.ctrs[i].init || self.ctrs[i].running() {
                continue;
            }
            // An ephemeral container runs once.
            if self.ctrs[i].ephemeral && self.ctrs[i].current.is_some() {
                continue;
            }
            if let Some(e) = self.ctrs[i].exited() {
                let restart = match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => e.exit_code != 0,
                    _ => true,
                };
                if !restart {
                    continue;
                }
            }
            self.maybe_start(i, now).await;
        }
    }

    /// Start container `i` unless its back-off has not run out (then it waits in CrashLoopBackOff
    /// or ImagePullBackOff).
    async fn maybe_start(&mut self, i: usize, now: Instant) {
        let c = &mut self.ctrs[i];
        if let Some(t) = c.next_start {
            if t > now {
                if c.exited().is_some() {
                    let name = c.name.clone();
                    let msg = format!(
                        "back-off {:?} restarting failed container={name} pod={}",
                        c.backoff,
                        self.pod.metadata.name.clone().unwrap_or_default()
                    );
                    let c = &mut self.ctrs[i];
                    if c.waiting.as_ref().is_none_or(|w| w.0 != "CrashLoopBackOff") {
                        c.waiting = Some(("CrashLoopBackOff".into(), msg.clone()));
                        self.event("Warning", "BackOff", &msg);
                    }
                }
                return;
            }
        }
        let name = self.ctrs[i].name.clone();
        match self.start(&name).await {
            Ok(()) => {
                let c = &mut self.ctrs[i];
                c.waiting = None;
                c.next_start = None;
            }
            Err((reason, message)) => {
                let c = &mut self.ctrs[i];
                let first = c.waiting.as_ref().is_none_or(|w| w.1 != message);
                c.waiting = Some((reason.clone(), message.clone()));
                c.next_start = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(self.ctx.backoff_max);
                if first {
                    self.event(
                        "Warning",
                        if reason == "ErrImagePull" { "Failed" } else { &reason },
                        &message,
                    );
                }
            }
        }
    }

    fn schedule_token_refresh(&mut self) {
        self.next_token_refresh =
            volume_data::token_lifetime(&self.pod).map(|life| Instant::now() + life.mul_f64(TOKEN_REFRESH_AT));
    }

    /// Fresh tokens into the pod's volumes when they are due; a failure is said in an event and
    /// tried again shortly, while the old tokens still have a fifth of their life.
    async fn refresh_tokens(&mut self) {
        if self.next_token_refresh.is_none_or(|t| t > Instant::now()) {
            return;
        }
        match files::refresh_tokens(&self.ctx.client, &self.pod, &self.volumes).await {
            Ok(()) => self.schedule_token_refresh(),
            Err(e) => {
                self.event(
                    "Warning",
                    "FailedMount",
                    &format!("refreshing the ServiceAccount token: {e}"),
                );
                self.next_token_refresh = Some(Instant::now() + TOKEN_REFRESH_RETRY);
            }
        }
    }

    /// A changed ConfigMap or Secret (or the pod's labels and annotations) reach the running
    /// pod's volumes: each is read again and, if it changed, written as a new version swapped
    /// in atomically. A failure is said in an event; the old data stays.
    async fn refresh_volume_data(&mut self) {
        if !self.sandbox_ready {
            self.next_data_refresh = None;
            return;
        }
        let now = Instant::now();
        match self.next_data_refresh {
            None => {
                self.next_data_refresh = Some(now + VOLUME_DATA_RESYNC);
                return;
            }
            Some(t) if t > now => return,
            Some(_) => {}
        }
        self.next_data_refresh = Some(now + VOLUME_DATA_RESYNC);
        if let Err(e) = files::refresh_data(&self.ctx.client, &self.pod, &self.volumes, &mut self.written).await {
            self.event("Warning", "FailedMount", &format!("refreshing a volume's data: {e}"));
        }
    }

    /// Start a new attempt of a container; on failure, the waiting reason and message.
    async fn start(&mut self, name: &str) -> Result<(), (String, String)> {
        let spec = self.spec_of(name).ok_or_else(|| {
            (
                "CreateContainerConfigError".to_string(),
                "no such container".to_string(),
            )
        })?;
        if self.microvm && self.vm.is_none() {
            return Err((
                "RunContainerError".to_string(),
                "the pod's microVM is not running; its containers do not run outside it".to_string(),
            ));
        }
        let image_ref = spec.image.clone().unwrap_or_default();
        let cfg_err = |m: String| ("CreateContainerConfigError".to_string(), m);
        let t0 = std::time::Instant::now();
        let image = self.image_for(name, &spec).await?;
        let c = self
            .ctrs
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| cfg_err("no such container".into()))?;
        let number = match (&c.current, c.current.as_ref().and_then(|a| a.exit.as_ref())) {
            (Some(a), Some(_)) => a.number + 1,
            (Some(a), None) => a.number,
            (None, _) => 0,
        };
        let id = format!("{}-{}-{number}", self.uid, name);
        let bundle = bundle_dir(&self.run_dir, name, number);
        let data = attempt_data_dir(&self.dir, name, number);
        let _ = teardown::unmount_bundle(&bundle);
        let _ = std::fs::remove_dir_all(&bundle);
        let _ = std::fs::remove_dir_all(&data);
        for d in [bundle.join("rootfs"), data.join("upper"), data.join("work")] {
            std::fs::create_dir_all(&d).map_err(|e| cfg_err(format!("{}: {e}", d.display())))?;
        }
        let layers: Vec<PathBuf> = image
            .layers
            .iter()
            .rev()
            .map(|l| self.ctx.images.layer_dir(l))
            .collect();
        let user_base = self.user_base.filter(|_| self.ns.user().is_some());
        // With a user namespace the layers are seen through idmapped mounts (see `userns`); the
        // views live until the overlay holds its own clones of them.
        let idmapped = match (user_base, self.ns.user()) {
            (Some(base), Some(ns)) => {
                match crate::userns::IdmappedLayers::mount(&layers, &ns, &bundle.join("layers")) {
                    Ok(views) => {
                        let top = layers
                            .first()
                            .and_then(|l| std::fs::metadata(l).ok())
                            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777);
                        let upper = data.join("upper");
                        crate::userns::give_to_pod(&upper, base)
                            .and_then(|()| {
                                std::fs::set_permissions(
                                    &upper,
                                    std::os::unix::fs::PermissionsExt::from_mode(top.unwrap_or(0o755)),
                                )
                            })
                            .map_err(|e| cfg_err(format!("giving the pod its writable layer: {e}")))?;
                        Some(views)
                    }
                    Err(e) => {
                        tracing::warn!(pod = %self.pod_name(), error = %e, "the image's layers cannot be idmapped here; shifting the rootfs's owners instead");
                        None
                    }
                }
            }
            _ => None,
        };
        let lower: Vec<String> = match &idmapped {
            Some(views) => views.paths.iter().map(|p| p.display().to_string()).collect(),
            None => layers.iter().map(|p| p.display().to_string()).collect(),
        };
        let mut opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            data.join("upper").display(),
            data.join("work").display()
        );
        let shift = user_base.filter(|_| idmapped.is_none());
        if shift.is_some() {
            // Chowning into the pod's range then copies metadata up, not data (see `userns`).
            opts.push_str(",metacopy=on");
        }
        nix::mount::mount(
            Some("overlay"),
            &bundle.join("rootfs"),
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| cfg_err(format!("mounting the image's layers: {e}")))?;
        drop(idmapped);
        if let Some(base) = shift
            && let Err(e) = crate::userns::shift_rootfs(&bundle.join("rootfs"), base)
        {
            let _ = teardown::unmount_bundle(&bundle);
            return Err(cfg_err(format!(
                "shifting the rootfs into the pod's user namespace: {e}"
            )));
        }
        let built = self.build_spec(&spec, &image, &bundle).await;
        let cspec = match built {
            Ok(s) => s,
            Err(m) => {
                let _ = teardown::unmount_bundle(&bundle);
                return Err(cfg_err(m));
            }
        };
        crate::private::write(
            &bundle.join("config.json"),
            &serde_json::to_vec(&config_json(&cspec)).unwrap_or_default(),
        )
        .map_err(|e| cfg_err(format!("writing config.json: {e}")))?;
        let launch = Launch {
            id: id.clone(),
            bundle: bundle.clone(),
            log: data.join("log"),
            exit: bundle.join("exit"),
            stdin: spec.stdin.unwrap_or(false),
            tty: spec.tty.unwrap_or(false),
        };
        let prepared = t0.elapsed();
        let started = match self.runtime().start(&launch).await {
            Ok(s) => s,
            Err(e) => {
                let _ = teardown::unmount_bundle(&bundle);
                return Err(("RunContainerError".into(), e.to_string()));
            }
        };
        // The container has its own copy of the rootfs mount now; the host's would only make
        // every later container's mount namespace larger (and slower to create). A microVM's
        // container reads it through the share, so it stays until the attempt is removed.
        if self.vm.is_none()
            && let Err(e) = teardown::unmount_bundle(&bundle)
        {
            tracing::warn!(pod = %self.pod_name(), error = %e, "unmounting the started container's rootfs");
        }
        tracing::debug!(pod = %self.pod_name(), container = name, prepare_ms = prepared.as_millis() as u64, start_ms = (t0.elapsed() - prepared).as_millis() as u64, "container started");
        let attempt = Attempt {
            number,
            id,
            started_at: now_rfc3339(),
            image: image_ref.clone(),
            image_id: image.id.clone(),
            exit: None,
        };
        let tx = self.tx.clone();
        let (cname, exit_file) = (name.to_string(), launch.exit.clone());
        let watcher = tokio::spawn(async move {
            started.ended.await;
            let record = ExitRecord::read(&exit_file).unwrap_or_else(|| ExitRecord {
                exit_code: 255,
                signal: None,
                reason: "Error".into(),
                message: "the node's supervisor ended without an exit record for the container".into(),
                finished_at: now_rfc3339(),
            });
            let _ = tx.send(Event::Exited {
                name: cname,
                number,
                record,
            });
        });
        let pod_name = self.pod.metadata.name.clone().unwrap_or_default();
        let c = self
            .ctrs
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| cfg_err("no such container".into()))?;
        let retired = match c.current.take() {
            Some(prev) => c.previous.replace(prev),
            None => None,
        };
        c.current = Some(attempt);
        c.ready = false;
        c.started = spec.startup_probe.is_none();
        // The exit watcher is not a probe: it must outlive stop_tasks on probe failures.
        drop(watcher);
        self.save();
        // Like kubelet, keep the current and the previous attempt; older ones go.
        if let Some(old) = retired {
            let bundle = bundle_dir(&self.run_dir, name, old.number);
            if let Err(e) = self.runtime().delete(&old.id).await {
                tracing::warn!(pod = %self.pod_name(), error = %e, "removing an old container");
            }
            let _ = teardown::unmount_bundle(&bundle);
            let _ = std::fs::remove_dir_all(&bundle);
            let _ = std::fs::remove_dir_all(attempt_data_dir(&self.dir, name, old.number));
        }
        self.event(
            "Normal",
            "Started",
            &format!("Started container {name} of pod {pod_name}"),
        );
        self.start_probes(name);
        if let Some(h) = spec.lifecycle.as_ref().and_then(|l| l.post_start.clone()) {
            if let Err(m) = self.run_hook(name, &spec, &h).await {
                self.event("Warning", "FailedPostStartHook", &m);
                let id = self
                    .ctrs
                    .iter()
                    .find(|c| c.name == name)
                    .and_then(|c| c.current.as_ref())
                    .map(|a| a.id.clone())
                    .unwrap_or_default();
                let _ = self.runtime().kill(&id, "KILL").await;
            }
        }
        Ok(())
    }

    /// The registry credentials of the pod's `imagePullSecrets` (`kubernetes.io/dockerconfigjson`
    /// or the older `kubernetes.io/dockercfg`). A secret that is missing or unreadable is named
    /// in a warning event and the pull goes on without it, as kubelet does.
    async fn pull_credentials(&self) -> Vec<crate::image::Credential> {
        let names: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .into_iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        let ns = self.pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.ctx.client.clone(), &ns);
        let mut out = Vec::new();
        for name in names {
            let read = match api.get(&name).await {
                Ok(secret) => {
                    let data = secret.data.unwrap_or_default();
                    match (data.get(".dockerconfigjson"), data.get(".dockercfg")) {
                        (Some(json), _) => crate::image::credentials_of(&json.0),
                        (None, Some(cfg)) => serde_json::from_slice::<Value>(&cfg.0)
                            .map_err(|e| format!("not a docker config: {e}"))
                            .and_then(|auths| {
                                crate::image::credentials_of(serde_json::json!({"auths": auths}).to_string().as_bytes())
                            }),
                        (None, None) => Err("it holds neither .dockerconfigjson nor .dockercfg".into()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            match read {
                Ok(c) => out.extend(c),
                Err(e) => self.event(
                    "Warning",
                    "FailedToRetrieveImagePullSecret",
                    &format!("Unable to retrieve some image pull secrets ({name}); attempting to pull the image may not succeed: {e}"),
                ),
            }
        }
        out
    }

    /// The container's image by its imagePullPolicy: Never uses the store only, IfNotPresent
    /// pulls what the store lacks, Always pulls (several pods share one pull).
    async fn image_for(&mut self, name: &str, spec: &Container) -> Result<crate::image::ImageRecord, (String, String)> {
        let image_ref = spec.image.clone().unwrap_or_default();
        let policy = spec.image_pull_policy.clone().unwrap_or_else(|| "IfNotPresent".into());
        let local = self
            .ctx
            .images
            .resolve(&image_ref)
            .map_err(|e| ("ErrImagePull".to_string(), format!("image \"{image_ref}\": {e}")))?;
        match (policy.as_str(), local) {
            ("Never", Some(i)) | ("IfNotPresent", Some(i)) => return Ok(i),
            ("Never", None) => {
                return Err((
                    "ErrImageNeverPull".into(),
                    format!("Container image \"{image_ref}\" is not present with pull policy of Never"),
                ));
            }
            _ => {}
        }
        let backing_off = self
            .ctrs
            .iter()
            .find(|c| c.name == name)
            .is_some_and(|c| c.waiting.as_ref().is_some_and(|w| w.0.contains("ImagePull")));
        self.event("Normal", "Pulling", &format!("Pulling image \"{image_ref}\""));
        let started = std::time::Instant::now();
        let lock = self.ctx.pull_lock(&image_ref);
        let _one_pull = lock.lock().await;
        // Another pod may have pulled it while this one waited.
        let fresh = if policy != "Always" {
            self.ctx.images.resolve(&image_ref).ok().flatten()
        } else {
            None
        };
        let pulled = match fresh {
            Some(i) => Ok(i),
            None => {
                let credentials = self.pull_credentials().await;
                let pull_started = std::time::Instant::now();
                let pulled = self.ctx.images.pull(&image_ref, &self.ctx.pull, &credentials).await;
                let m = &self.ctx.metrics;
                m.image_pull_duration.observe(pull_started.elapsed().as_secs_f64());
                crate::metrics::NodeMetrics::count(&m.image_pulls, if pulled.is_ok() { "pulled" } else { "failed" });
                pulled
            }
        };
        match pulled {
            Ok(i) => {
                self.event(
                    "Normal",
                    "Pulled",
                    &format!("Successfully pulled image \"{image_ref}\" in {:?}", started.elapsed()),
                );
                Ok(i)
            }
            Err(e) => Err((
                if backing_off {
                    "ImagePullBackOff"
                } else {
                    "ErrImagePull"
                }
                .into(),
                format!("Failed to pull image \"{image_ref}\": {e}"),
            )),
        }
    }

    async fn build_spec(
        &self,
        c: &Container,
        image: &crate::image::ImageRecord,
        bundle: &std::path::Path,
    ) -> Result<ContainerSpec, String> {
        let env = container::environment(
            &self.ctx.client,
            &self.pod,
            c,
            &image.config,
            &self.pod_ip,
            &self.ctx.host_ip,
        )
        .await?;
        // Not read back from the file: the pod can write to its /etc/hostname.
        let hostname = pod_hostname(&self.pod);
        let mut env = env;
        if !env.iter().any(|(k, _)| k == "HOSTNAME") {
            env.insert(0, ("HOSTNAME".to_string(), hostname.clone()));
        }
        let vars: BTreeMap<String, String> = env.iter().cloned().collect();
        let args = container::process_args(c, &image.config, &vars);
        if args.is_empty() {
            return Err(
                "no command specified: the image has no entrypoint or cmd and the container sets no command".into(),
            );
        }
        let rootfs = bundle.join("rootfs");
        let (uid, gid, groups) = container::user(&self.pod, c, &image.config.user, &rootfs)?;
        let sc = c.security_context.as_ref();
        if sc.and_then(|s| s.privileged).unwrap_or(false) {
            return Err("privileged containers are not allowed on this platform".into());
        }
        let mut mounts = vec![
            crate::spec::BindMount {
                source: self.pod_file("hosts"),
                destination: "/etc/hosts".into(),
                read_only: false,
            },
            crate::spec::BindMount {
                source: self.pod_file("hostname"),
                destination: "/etc/hostname".into(),
                read_only: false,
            },
            crate::spec::BindMount {
                source: self.pod_file("resolv.conf"),
                destination: "/etc/resolv.conf".into(),
                read_only: false,
            },
        ];
        let term = bundle.join("termination-log");
        std::fs::write(&term, b"").map_err(|e| e.to_string())?;
        let userns = self.ns.user().zip(self.user_base);
        if let Some((_, base)) = &userns {
            crate::userns::give_to_pod(&term, *base)
                .map_err(|e| format!("giving the termination log to the pod: {e}"))?;
        }
        mounts.push(crate::spec::BindMount {
            source: term,
            destination: c
                .termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
            read_only: false,
        });
        mounts.extend(files::volume_mounts(c, &self.volumes, &vars, bundle)?);
        let devices = files::volume_devices(c, &self.volumes)?;
        let cwd = c
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| image.config.working_dir.clone());
        Ok(ContainerSpec {
            args,
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd,
            uid,
            gid,
            additional_gids: groups,
            hostname,
            rootfs,
            readonly_rootfs: sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false),
            no_new_privileges: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
            capabilities: container::caps(c)?,
            mounts,
            devices,
            netns: self.ns.net(),
            ipcns: self.ns.ipc(),
            utsns: self.ns.uts(),
            userns,
            cgroups_path: format!("{}/{}/{}", self.ctx.cgroup_parent, self.uid, c.name),
            limits: container::limits(c)?,
            seccomp: true,
            oom_score_adj: 0,
            sysctls: pod_features::sysctls(self.pod.spec.as_ref().ok_or("the pod has no spec")?)
                .map_err(|e| format!("spec.{e}"))?,
            terminal: c.tty.unwrap_or(false),
            pidns: self.pid_namespace(&c.name)?,
        })
    }

    fn target(&self, name: &str) -> Option<probe::Target> {
        let c = self.ctrs.iter().find(|c| c.name == name)?;
        Some(probe::Target {
            runtime: self.runtime(),
            container_ref: {
                let a = c.current.as_ref()?;
                crate::runtime::ContainerRef {
                    id: a.id.clone(),
                    bundle: attempt_bundle(&self.run_dir, &self.dir, name, a.number),
                }
            },
            net: match &self.vm {
                Some(vm) => crate::pod_net::PodNet::Vm(vm.clone()),
                None => crate::pod_net::PodNet::Netns(self.ns.net()),
            },
            pod_ip: self.pod_ip.clone(),
            container: self.spec_of(name)?,
        })
    }

    async fn run_hook(
        &self,
        name: &str,
        spec: &Container,
        h: &k8s_openapi::api::core::v1::LifecycleHandler,
    ) -> Result<(), String> {
        let t = self.target(name).ok_or("container is gone")?;
        let action = probe::hook_action(spec, h)?;
        probe::run(&t, &action, Duration::from_secs(grace_period(&self.pod).max(1) as u64)).await
    }

    fn start_probes(&mut self, name: &str) {
        let Some(t) = self.target(name) else { return };
        let Some(spec) = self.spec_of(name) else { return };
        let number = self
            .ctrs
            .iter()
            .find(|c| c.name == name)
            .map_or(0, |c| c.restart_count());
        let mut tasks = Vec::new();
        let has_startup = spec.startup_probe.is_some();
        let (started_tx, started_rx) = tokio::sync::watch::channel(!has_startup);
        for (kind, p) in [
            (probe::Kind::Startup, &spec.startup_probe),
            (probe::Kind::Liveness, &spec.liveness_probe),
            (probe::Kind::Readiness, &spec.readiness_probe),
        ] {
            let Some(p) = p.clone() else { continue };
            let (tx, t, n, mut srx) = (self.tx.clone(), t.clone(), name.to_string(), started_rx.clone());
            let started_tx = started_tx.clone();
            tasks.push(tokio::spawn(async move {
                if kind != probe::Kind::Startup {
                    let _ = srx.wait_for(|s| *s).await;
                }
                probe::probe_loop(kind, t, p, move |ok, message| {
                    if kind == probe::Kind::Startup && ok {
                        let _ = started_tx.send(true);
                    }
                    let _ = tx.send(Event::Probe {
                        name: n.clone(),
                        number,
                        kind,
                        ok,
                        message,
                    });
                })
                .await;
            }));
        }
        if let Some(c) = self.ctrs.iter_mut().find(|c| c.name == name) {
            if spec.readiness_probe.is_none() {
                c.ready = true;
            }
            c.tasks.extend(tasks);
        }
    }

    async fn report(&mut self) {
        if !self.start_counted
            && self
                .ctrs
                .iter()
                .filter(|c| !c.init && !c.ephemeral)
                .all(|c| c.running())
            && self.sandbox_ready
        {
            self.start_counted = true;
            self.ctx
                .metrics
                .pod_start
                .observe(self.first_seen.elapsed().as_secs_f64());
        }
        let status = status::pod_status(self);
        if status == self.last_status {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let patch = serde_json::json!({"status": status});
        match api
            .patch_status(
                self.pod.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => self.last_status = status,
            Err(e) => tracing::warn!(pod = %self.pod_name(), error = %e, "reporting status"),
        }
    }

    /// Stop every container (preStop, SIGTERM, then SIGKILL after the grace period), tear the
    /// sandbox down, and, when the pod is still in the API, finish its deletion.
    async fn terminate(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>, finish_delete: bool) {
        let grace = if finish_delete { grace_period(&self.pod) } else { 0 };
        let deadline = Instant::now() + Duration::from_secs(grace as u64);
        let running: Vec<(String, String)> = self
            .ctrs
            .iter()
            .filter(|c| c.running())
            .filter_map(|c| Some((c.name.clone(), c.current.as_ref()?.id.clone())))
            .collect();
        for (name, _) in &running {
            self.event("Normal", "Killing", &format!("Stopping container {name}"));
        }
        let mut stops = Vec::new();
        for (name, id) in running {
            let spec = self.spec_of(&name);
            let target = self.target(&name);
            let rt = self.runtime();
            stops.push(tokio::spawn(async move {
                if let (Some(spec), Some(t)) = (spec, target) {
                    if let Some(h) = spec.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()) {
                        if let Ok(a) = probe::hook_action(&spec, &h) {
                            let left = deadline.saturating_duration_since(Instant::now());
                            let _ = probe::run(&t, &a, left.max(Duration::from_millis(1))).await;
                        }
                    }
                }
                let _ = rt.kill(&id, "TERM").await;
            }));
        }
        for s in stops {
            let _ = s.await;
        }
        // Wait for exits until the deadline, then kill what is left.
        while self.ctrs.iter().any(|c| c.running()) {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev @ Event::Exited { .. }) => self.apply(ev),
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    for c in self.ctrs.iter().filter(|c| c.running()) {
                        if let Some(a) = &c.current {
                            let _ = self.runtime().kill(&a.id, "KILL").await;
                        }
                    }
                    break;
                }
            }
        }
        let mut ids: Vec<String> = self
            .ctrs
            .iter()
            .flat_map(|c| [c.current.as_ref(), c.previous.as_ref()])
            .flatten()
            .map(|a| a.id.clone())
            .collect();
        // What the node saved before a restart, for pods it no longer has a spec for.
        for s in state::load(&self.run_dir, &self.dir)
            .map(|s| s.containers)
            .unwrap_or_default()
            .into_values()
        {
            ids.extend(
                [s.current, s.previous]
                    .into_iter()
                    .flatten()
                    .map(|a| a.id)
                    .filter(|id| !ids.contains(id))
                    .collect::<Vec<_>>(),
            );
        }
        for c in &mut self.ctrs {
            c.stop_tasks();
        }
        self.count_running(false);
        let errors = teardown::teardown(
            &self.ctx,
            &self.uid,
            &self.net_id,
            teardown::Dirs {
                data: &self.dir,
                run: &self.run_dir,
            },
            &self.ns,
            &ids,
        )
        .await;
        // The range is free once nothing of the pod runs in it (its namespaces are gone with
        // the keeper's descriptors, its files with its directories).
        if let Some(base) = self.user_base.take()
            && errors.is_empty()
        {
            self.ctx.id_ranges.release(base);
        }
        if !errors.is_empty() {
            let msg = errors.join("; ");
            tracing::warn!(pod = %self.pod_name(), errors = %msg, "teardown");
            self.event("Warning", "FailedKillPod", &msg);
        }
        if finish_delete {
            let api: Api<Pod> = Api::namespaced(
                self.ctx.client.clone(),
                self.pod.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            if let Err(e) = api
                .delete(self.pod.metadata.name.as_deref().unwrap_or_default(), &dp)
                .await
            {
                if !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409) {
                    tracing::warn!(pod = %self.pod_name(), error = %e, "finishing deletion");
                }
            }
        }
        self.ctx.forget(&self.uid);
    }
}

/// The pod's hostname: `spec.hostname` or its name, at most 63 characters.
fn pod_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or(pod.metadata.name.clone())
        .unwrap_or_default();
    name.chars().take(63).collect()
}

/// Where attempt `number` of a container keeps its bundle: the rootfs mount point,
/// config.json, the exit record, the termination log (under the pod's run directory).
pub fn bundle_dir(pod_run_dir: &Path, container: &str, number: u32) -> PathBuf {
    pod_run_dir.join("containers").join(container).join(number.to_string())
}

/// Where attempt `number` of a container keeps its writable layer (`upper`, `work`) and its log
/// (under the pod's directory on the data disk).
pub fn attempt_data_dir(pod_dir: &Path, container: &str, number: u32) -> PathBuf {
    pod_dir.join("containers").join(container).join(number.to_string())
}

/// See [`Worker::pod_file`].
fn pod_file(pod_run_dir: &Path, pod_dir: &Path, name: &str) -> PathBuf {
    let file = pod_run_dir.join(name);
    let legacy = pod_dir.join(name);
    if !file.exists() && legacy.exists() {
        legacy
    } else {
        file
    }
}

/// The bundle of an attempt that exists: in the run directory, or beside its data for one
/// started before bundles moved there (a running container adopted after an upgrade).
pub fn attempt_bundle(pod_run_dir: &Path, pod_dir: &Path, container: &str, number: u32) -> PathBuf {
    let bundle = bundle_dir(pod_run_dir, container, number);
    let legacy = attempt_data_dir(pod_dir, container, number);
    if !bundle.exists() && legacy.join("config.json").exists() {
        legacy
    } else {
        bundle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_started_before_the_move_keeps_its_bundle_beside_its_data() {
        let t = tempfile::tempdir().unwrap();
        let (run, data) = (t.path().join("run"), t.path().join("data"));
        // Neither yet: a new attempt's bundle goes to the run directory.
        assert_eq!(attempt_bundle(&run, &data, "c", 0), bundle_dir(&run, "c", 0));
        // Only the old layout's bundle: that one.
        let legacy = attempt_data_dir(&data, "c", 0);
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(legacy.join("config.json"), "{}").unwrap();
        assert_eq!(attempt_bundle(&run, &data, "c", 0), legacy);
        // Both: the run directory's.
        std::fs::create_dir_all(bundle_dir(&run, "c", 0)).unwrap();
        assert_eq!(attempt_bundle(&run, &data, "c", 0), bundle_dir(&run, "c", 0));
        // A data directory without a bundle in it (the new layout) is not taken for one.
        std::fs::create_dir_all(attempt_data_dir(&data, "c", 1)).unwrap();
        assert_eq!(attempt_bundle(&run, &data, "c", 1), bundle_dir(&run, "c", 1));
    }

    #[test]
    fn a_pod_set_up_before_the_move_keeps_its_state_and_files_in_its_data_directory() {
        let t = tempfile::tempdir().unwrap();
        let (run, data) = (t.path().join("run"), t.path().join("data"));
        std::fs::create_dir_all(&data).unwrap();
        assert!(state::load(&run, &data).is_none());
        assert_eq!(pod_file(&run, &data, "hosts"), run.join("hosts"));
        // The old layout: both in the data directory, and read from there.
        std::fs::write(data.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let old = Saved {
            pod_ip: "10.0.0.1".into(),
            containers: BTreeMap::new(),
            ..Default::default()
        };
        std::fs::write(state::state_path(&data), serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(pod_file(&run, &data, "hosts"), data.join("hosts"));
        assert_eq!(state::load(&run, &data).map(|s| s.pod_ip).as_deref(), Some("10.0.0.1"));
        // Saving writes to the run directory (creating it), which wins from then on.
        state::save(
            &run,
            &Saved {
                pod_ip: "10.0.0.2".into(),
                containers: BTreeMap::new(),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(state::state_path(&run).exists());
        assert_eq!(state::load(&run, &data).map(|s| s.pod_ip).as_deref(), Some("10.0.0.2"));
        std::fs::write(run.join("hosts"), "").unwrap();
        assert_eq!(pod_file(&run, &data, "hosts"), run.join("hosts"));
    }
}
