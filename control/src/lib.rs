//! Nodeless control: a Kubernetes-API-compatible server on an embedded, crash-safe store, and the
//! controllers that make Deployments, ReplicaSets, EndpointSlices, namespaces, garbage collection
//! and scheduling onto virtual nodes work.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod auth;
pub mod controllers;
pub mod duration;
pub mod ipalloc;
pub mod knative;
pub mod kubeconfig;
pub mod metrics;
pub mod patch;
pub mod printers;
pub mod private;
pub mod rbac;
pub mod replicas;
pub mod schedule;
pub mod store;
pub mod tls;
pub mod usage;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::net::TcpListener;

use api::ApiState;
use api::local::LocalClient;
use api::registry::Registry;
use auth::{Authenticator, Tokens};
use ipalloc::IpAllocator;
use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("bootstrap failed: {0}")]
    Bootstrap(String),
    #[error("API server limits: {0}")]
    Limits(#[from] api::LimitsError),
}

/// How to run the control plane.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Extra names/addresses for the serving certificate.
    pub hosts: Vec<String>,
    /// Allow pods with hostNetwork (refused by default, as on ECI).
    pub allow_host_network: bool,
    /// Run the controllers (tests of the bare API may turn them off).
    pub controllers: bool,
    /// The API server's connection limits (timeouts and a cap).
    pub limits: api::ServeLimits,
    /// CSI drivers control provisions, attaches and expands volumes through, as Kubernetes'
    /// external sidecars do: driver name → endpoint (`unix:///…`).
    pub csi_drivers: std::collections::BTreeMap<String, String>,
    /// Keep objects in etcd instead of the embedded store: several replicas may then serve
    /// one cluster, sharing its keys, with the controllers in the replica that holds their Lease.
    pub etcd: Option<store::etcd::EtcdConfig>,
    /// This replica's name in the controllers' Lease (default: host name and listen address).
    pub identity: Option<String>,
    /// The pod network of every host: Nodes that bring no pod CIDRs get a /24 of it.
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            hosts: Vec::new(),
            allow_host_network: false,
            controllers: true,
            limits: api::ServeLimits::default(),
            csi_drivers: Default::default(),
            etcd: None,
            identity: None,
            cluster_cidr: None,
        }
    }
}

/// A running control plane.
pub struct ControlPlane {
    pub addr: SocketAddr,
    pub tokens: Tokens,
    pub ca_pem: String,
    pub state: Arc<ApiState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    pub async fn start(cfg: Config) -> Result<Self, ControlError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| ControlError::Io { what, source }
        };
        cfg.limits.validate()?;
        private::dir(&cfg.data_dir).map_err(io("creating the data directory"))?;
        let store = match &cfg.etcd {
            Some(etcd) => Store::open_etcd(etcd).await?,
            None => Store::open_embedded(&cfg.data_dir.join("store"))?,
        };
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(io(&format!("binding {}", cfg.listen)))?;
        let addr = listener.local_addr().map_err(io("reading the listen address"))?;
        let mut hosts = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "kubernetes.default.svc".to_string(),
        ];
        if !addr.ip().is_unspecified() && !hosts.contains(&addr.ip().to_string()) {
            hosts.push(addr.ip().to_string());
        }
        hosts.extend(cfg.hosts.iter().cloned());
        if cfg.etcd.is_some() {
            replicas::share_keys(&store, &cfg.data_dir, &hosts).await?;
        }
        let tokens = Tokens::load_or_create(&cfg.data_dir.join("tokens.json")).map_err(io("token file"))?;
        private::file(&cfg.data_dir.join("tokens.json")).map_err(io("token file"))?;
        let pki = tls::Pki::load_or_create(&cfg.data_dir.join("pki"), &hosts)?;
        let server_tls = pki.server_config()?;
        let sa_key = tls::service_account_key(&cfg.data_dir.join("pki"))?;
        let issuer = auth::jwt::Issuer::from_pem(&sa_key).map_err(ControlError::Bootstrap)?;
        let node_tls = pki.kubelet_client_config()?;
        let cluster_ips = IpAllocator::new(std::net::Ipv4Addr::new(10, 96, 0, 0), 16);
        let metrics = metrics::Metrics::new(store.commit_histogram());
        let state = Arc::new(ApiState {
            store,
            registry: Registry::with_builtins(),
            auth: Authenticator::new(&tokens, issuer),
            policy: admission::Policy {
                allow_host_network: cfg.allow_host_network,
            },
            cluster_ips,
            node_tls,
            revision_stats: Default::default(),
            metrics,
            ca_pem: pki.ca_cert_pem.clone(),
            pki_dir: cfg.data_dir.join("pki"),
            usage: Default::default(),
        });
        bootstrap(&state, addr).await?;
        let mut tasks = vec![tokio::spawn(api::serve(
            state.clone(),
            listener,
            server_tls,
            cfg.limits,
        ))];
        tasks.push(tokio::spawn(api::resource_metrics::scrape(state.clone())));
        if cfg.etcd.is_some() {
            state.cluster_ips.start_anywhere();
            tasks.push(tokio::spawn(follow_cluster_ips(state.clone())));
        }
        if cfg.controllers {
            let client = LocalClient { state: state.clone() };
            let drivers = controllers::volumes::Drivers(cfg.csi_drivers.clone());
            let cluster_cidr = cfg.cluster_cidr;
            if cfg.etcd.is_some() {
                let identity = cfg.identity.clone().unwrap_or_else(|| {
                    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                    format!("{}_{addr}", host.trim())
                });
                tasks.push(tokio::spawn(replicas::lead(client.clone(), identity, move || {
                    controllers::start(client.clone(), drivers.clone(), cluster_cidr)
                })));
            } else {
                tasks.extend(controllers::start(client, drivers, cluster_cidr));
            }
        }
        tracing::info!(%addr, "control plane serving");
        Ok(Self {
            addr,
            tokens,
            ca_pem: pki.ca_cert_pem,
            state,
            tasks,
        })
    }

    /// A kubeconfig for the admin (or viewer) token.
    pub fn kubeconfig(&self, admin: bool) -> String {
        let host = if self.addr.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            self.addr.ip()
        };
        let server = format!("https://{}", SocketAddr::new(host, self.addr.port()));
        let token = if admin { &self.tokens.admin } else { &self.tokens.viewer };
        kubeconfig::render(
            &server,
            &self.ca_pem,
            token,
            if admin { "nodeless-admin" } else { "nodeless-viewer" },
        )
    }

    /// Stop serving and stop the controllers.
    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// With several replicas, Services created through the others hold addresses too: follow them.
async fn follow_cluster_ips(state: Arc<ApiState>) {
    let ip_of = |obj: &Value| {
        obj.pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut from = state.store.revision();
    loop {
        let (services, rev, _) = state.store.list("/core/services/", None, 0, &|_| true);
        for svc in services {
            if let Some(ip) = ip_of(&svc.obj) {
                let _ = state.cluster_ips.reserve(&ip);
            }
        }
        from = from.max(rev);
        let Ok(mut watch) = state.store.watch("/core/services/", from) else {
            from = 0;
            continue;
        };
        while let Some(ev) = watch.next().await {
            from = ev.rev;
            let Some(ip) = ip_of(&ev.obj) else { continue };
            match ev.kind {
                store::EventType::Deleted => state.cluster_ips.release(&ip),
                _ => {
                    let _ = state.cluster_ips.reserve(&ip);
                }
            }
        }
    }
}

/// What every cluster starts with: the system namespaces, the `kubernetes` Service, ClusterIPs
/// already in use, and the CRDs already registered.
async fn bootstrap(state: &Arc<ApiState>, addr: SocketAddr) -> Result<(), ControlError> {
    let client = LocalClient { state: state.clone() };
    let services = client.served("", "services");
    for svc in client.list(&services, None, &|_| true) {
        if let Some(ip) = svc.obj.pointer("/spec/clusterIP").and_then(Value::as_str) {
            let _ = state.cluster_ips.reserve(ip);
        }
    }
    api::refresh_crds(state);
    let namespaces = client.served("", "namespaces");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if client.get(&namespaces, None, ns).is_none() {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            client
                .create(&namespaces, None, obj)
                .await
                .map_err(|e| ControlError::Bootstrap(e.to_string()))?;
        }
    }
    if client.get(&services, Some("default"), "kubernetes").is_none() {
        let ip = state.cluster_ips.first_host().to_string();
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": addr.port()}]},
        });
        client
            .create(&services, Some("default"), svc)
            .await
            .map_err(|e| ControlError::Bootstrap(e.to_string()))?;
    }
    knative::install(&client).await.map_err(ControlError::Bootstrap)?;
    controllers::cronhpa::install(&client)
        .await
        .map_err(|e| ControlError::Bootstrap(format!("the CronHPA CRD: {e}")))?;
    rbac::defaults::install(&client)
        .await
        .map_err(|e| ControlError::Bootstrap(format!("default roles: {e}")))?;
    Ok(())
}
