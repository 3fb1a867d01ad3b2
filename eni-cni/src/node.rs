//! eni-cni as a node's pod network: the pool served inside the node's process, egress SNAT, the
//! conflist the node's CNI seam runs (the plugin binary sits beside the node's), and the
//! cluster DNS address made local so pods reach it through their host route.

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
    pool: tokio::task::JoinHandle<()>,
    snat: Option<Snat>,
    local_dns: Option<Ipv4Addr>,
}

/// Start a node's pod network named `network` (the fast path's pins are per network, so a
/// node name makes a good one) on `cidrs`.
pub async fn start(network: &str, state_dir: &Path, socket: &Path, cidrs: Vec<Ipv4Net>, cluster_dns: Option<Ipv4Addr>) -> anyhow::Result<NodeNetwork> {
    anyhow::ensure!(!cidrs.is_empty(), "a pod network needs at least one CIDR");
    if let Some(dns) = cluster_dns {
        // The first address of each CIDR is never handed to a pod; any other one could be.
        if let Some(c) = cidrs.iter().find(|c| c.contains(&dns)) {
            anyhow::ensure!(c.hosts().next() == Some(dns), "--cluster-dns {dns} lies in the pod CIDR {c}: use its first address, {}, which pods never get", c.hosts().next().unwrap_or(c.addr()));
        }
    }
    std::fs::create_dir_all(state_dir)?;
    let cfg = PoolConfig { state: state_dir.join("pool.redb"), min_warm: 8, max_warm: 32, idle_reclaim: Duration::from_secs(300) };
    let snat = Snat::install(&cidrs).map_err(anyhow::Error::msg)?;
    let pool: Arc<Pool<LocalProvider>> = Pool::open(cfg, LocalProvider::new(cidrs))?;
    let sock = socket.to_path_buf();
    let pool = tokio::spawn(async move {
        if let Err(e) = pool.serve(&sock).await {
            tracing::error!(error = %e, "the IP pool stopped");
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::UnixStream::connect(socket).await.is_err() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the IP pool did not start on {}", socket.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut local_dns = None;
    if let Some(dns) = cluster_dns.filter(|d| !d.is_loopback()) {
        let host = crate::datapath::host().map_err(anyhow::Error::msg)?;
        crate::datapath::add_loopback_address(&host, dns).await.map_err(anyhow::Error::msg)?;
        local_dns = Some(dns);
    }
    let conflist = state_dir.join("pods.conflist");
    let conf = serde_json::json!({"cniVersion": "1.1.0", "name": network, "plugins": [{"type": "eni-cni", "pool": socket}]});
    std::fs::write(&conflist, conf.to_string())?;
    Ok(NodeNetwork { conflist, socket: socket.to_path_buf(), pool, snat: Some(snat), local_dns })
}

impl NodeNetwork {
    /// Stop the pool. With no pod left on the network, the host changes go too; pods still
    /// running (a restarted node adopts them) keep their egress rule and DNS address.
    pub async fn stop(mut self) {
        let in_use = crate::pool::call(&self.socket, &crate::pool::Request::Status).await.map(|r| r.in_use).unwrap_or(0);
        self.pool.abort();
        let _ = std::fs::remove_file(&self.socket);
        if in_use > 0 {
            tracing::info!(pods = in_use, "pods keep running: the egress rule and the cluster DNS address stay");
            return;
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
