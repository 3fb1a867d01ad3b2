//! eni-cni as a node's pod network: the pool served inside the node's process, egress SNAT, the
//! conflist the node's CNI seam runs (the plugin binary sits beside the node's), the cluster
//! DNS address made local so pods reach it through their host route, and the eBPF service
//! load balancer on the cgroup that holds the node's pods.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::pool::{LocalProvider, Pool, PoolConfig};
use crate::snat::Snat;

pub struct NodeNetwork {
    /// The conflist to hand the node's CNI seam.
    pub conflist: PathBuf,
    socket: PathBuf,
    pool: Option<tokio::task::JoinHandle<()>>,
    snat: Option<Snat>,
    local_dns: Option<Ipv4Addr>,
    services: Option<(tokio::task::JoinHandle<()>, crate::lb::Pins, PathBuf)>,
    /// The pool's use and the network's name, for [`NodeNetwork::collector`].
    gauges: Option<(Arc<crate::pool::PoolGauges>, usize)>,
    network: String,
    /// Routes to other hosts' pods (see [`crate::hosts`]), when the pod network spans hosts.
    hosts: Option<tokio::task::JoinHandle<()>>,
}

/// Where the node's pods will be balanced: the cgroup (v2) the runtime puts them under.
pub struct ServiceBalancing {
    pub client: kube::Client,
    /// The pods' cgroup parent, as given to the runtime (`/nodeless/<node>`).
    pub cgroup_parent: String,
}

pub use crate::cgroup::cgroup2_root;

/// Start a node's pod network named `network` (the fast path's pins are per network, so a
/// node name makes a good one) on `cidrs`. A step that fails undoes the ones before it.
pub async fn start(
    network: &str,
    state_dir: &Path,
    socket: &Path,
    cidrs: Vec<Ipv4Net>,
    cluster: Vec<Ipv4Net>,
    cluster_dns: Option<Ipv4Addr>,
    balancing: Option<ServiceBalancing>,
    socket_acceleration: bool,
) -> anyhow::Result<NodeNetwork> {
    anyhow::ensure!(!cidrs.is_empty(), "a pod network needs at least one CIDR");
    if let Some(dns) = cluster_dns {
        // The first address of each CIDR is never handed to a pod; any other one could be.
        if let Some(c) = cidrs.iter().find(|c| c.contains(&dns)) {
            anyhow::ensure!(
                c.hosts().next() == Some(dns),
                "--cluster-dns {dns} lies in the pod CIDR {c}: use its first address, {}, which pods never get",
                c.hosts().next().unwrap_or(c.addr())
            );
        }
    }
    std::fs::create_dir_all(state_dir)?;
    let mut net = NodeNetwork {
        conflist: state_dir.join("pods.conflist"),
        socket: socket.to_path_buf(),
        pool: None,
        snat: None,
        local_dns: None,
        services: None,
        gauges: None,
        network: network.to_string(),
        hosts: None,
    };
    match net
        .bring_up(network, cidrs, cluster, cluster_dns, balancing, socket_acceleration)
        .await
    {
        Ok(()) => Ok(net),
        Err(e) => {
            net.remove_host_changes().await;
            Err(e)
        }
    }
}

impl NodeNetwork {
    async fn bring_up(
        &mut self,
        network: &str,
        cidrs: Vec<Ipv4Net>,
        cluster: Vec<Ipv4Net>,
        cluster_dns: Option<Ipv4Addr>,
        balancing: Option<ServiceBalancing>,
        socket_acceleration: bool,
    ) -> anyhow::Result<()> {
        if let Some(b) = &balancing {
            if !cluster.is_empty() {
                self.hosts = Some(tokio::spawn(crate::hosts::run(b.client.clone(), network.to_string())));
            }
        }
        if let Some(b) = balancing {
            let root = cgroup2_root().ok_or_else(|| {
                anyhow::anyhow!("the service load balancer needs a cgroup v2 hierarchy, and this host mounts none")
            })?;
            let cgroup = root.join(b.cgroup_parent.trim_start_matches('/'));
            std::fs::create_dir_all(&cgroup).map_err(|e| anyhow::anyhow!("creating {}: {e}", cgroup.display()))?;
            let lb = crate::lb::Balancer::start(network, &cgroup)?;
            let pins = lb.pins().clone();
            let task = tokio::spawn(crate::lb::watch::run(b.client, lb));
            self.services = Some((task, pins, cgroup));
        }
        let state_dir = self.conflist.parent().map(Path::to_path_buf).unwrap_or_default();
        let cfg = PoolConfig {
            state: state_dir.join("pool.redb"),
            min_warm: 8,
            max_warm: 32,
            idle_reclaim: Duration::from_secs(300),
        };
        self.snat = Some(Snat::install(&cidrs, &cluster).map_err(anyhow::Error::msg)?);
        let provider = LocalProvider::new(cidrs);
        let capacity = provider.size();
        let pool: Arc<Pool<LocalProvider>> = Pool::open(cfg, provider)?;
        self.gauges = Some((pool.gauges(), capacity));
        let sock = self.socket.clone();
        self.pool = Some(tokio::spawn(async move {
            if let Err(e) = pool.serve(&sock).await {
                tracing::error!(error = %e, "the IP pool stopped");
            }
        }));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::UnixStream::connect(&self.socket).await.is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the IP pool did not start on {}",
                self.socket.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(dns) = cluster_dns.filter(|d| !d.is_loopback()) {
            let host = crate::datapath::host().map_err(anyhow::Error::msg)?;
            crate::datapath::add_loopback_address(&host, dns)
                .await
                .map_err(anyhow::Error::msg)?;
            self.local_dns = Some(dns);
        }
        // The pods' walls (eni-cni/README.md): the cluster DNS is their one door into the node.
        let conf = serde_json::json!({"cniVersion": "1.1.0", "name": network, "plugins": [{"type": "eni-cni", "pool": self.socket, "socketAcceleration": socket_acceleration, "clusterDNS": cluster_dns}]});
        std::fs::write(&self.conflist, conf.to_string())?;
        Ok(())
    }

    /// The network's metrics (pool use, datapath and balancer counters), for the node's
    /// `/metrics`.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus_client::collector::Collector>> {
        let Some((pool, capacity)) = self.gauges.clone() else {
            return Vec::new();
        };
        vec![Box::new(crate::metrics::NetworkCollector {
            pool,
            capacity,
            datapath: crate::bpf::Pins::for_network(&self.network),
            services: self.services.as_ref().map(|(_, pins, _)| pins.clone()),
        })]
    }

    /// Stop the pool and the balancer's watch. With no pod left on the network, the host
    /// changes go too; pods still running (a restarted node adopts them) keep their egress
    /// rule, DNS address and service load balancer.
    pub async fn stop(mut self) {
        let in_use = crate::pool::call(&self.socket, &crate::pool::Request::Status)
            .await
            .map(|r| r.in_use)
            .unwrap_or(0);
        if in_use > 0 {
            if let Some(p) = self.pool.take() {
                p.abort();
            }
            if let Some((task, _, _)) = self.services.take() {
                task.abort();
            }
            if let Some(task) = self.hosts.take() {
                task.abort();
            }
            let _ = std::fs::remove_file(&self.socket);
            tracing::info!(
                pods = in_use,
                "pods keep running: the egress rule, the cluster DNS address, the service load balancer and the routes to other hosts' pods stay"
            );
            return;
        }
        self.remove_host_changes().await;
    }

    /// Stop everything started and undo every change made to the host.
    async fn remove_host_changes(&mut self) {
        if let Some(p) = self.pool.take() {
            p.abort();
        }
        if let Some(task) = self.hosts.take() {
            task.abort();
            crate::hosts::clear().await;
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Some((task, pins, cgroup)) = self.services.take() {
            task.abort();
            if let Err(e) = pins.remove() {
                tracing::warn!(error = %e, "removing the service load balancer");
            }
            // Empty once the pods are gone; the runtime made the levels below.
            let _ = std::fs::remove_dir(&cgroup);
        }
        if let Some(s) = self.snat.take() {
            if let Err(e) = s.remove() {
                tracing::warn!(error = %e, "removing the SNAT rule");
            }
        }
        if let Some(dns) = self.local_dns.take() {
            if let Ok(h) = crate::datapath::host() {
                if let Err(e) = crate::datapath::del_loopback_address(&h, dns).await {
                    tracing::warn!(error = %e, "removing the cluster DNS address from lo");
                }
            }
        }
    }
}
