//! Cluster DNS: the Kubernetes DNS specification (schema 1.0.1) for Services, EndpointSlices
//! and pods, and a forwarding cache for every other name, served over UDP (our receive loops,
//! hickory's messages and handler trait) and TCP (hickory's `Server`). It is a Kubernetes client like any other component: it watches Services
//! and EndpointSlices and keeps answering from the last state it saw while control is away.

mod batch;
pub mod cluster;
pub mod forward;
pub mod guard;
pub mod handler;
pub mod metrics;
pub mod privatezone;
pub mod table;
mod udp;
#[doc(hidden)]
pub use udp::fuzz;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::LowerName;

use crate::forward::{ForwardConfig, Forwarder};
use crate::guard::{Guard, RateLimit};
use crate::handler::{Handler, Shared};

#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Addresses to serve on, UDP and TCP (port 0 picks one, the same for both).
    pub listen: Vec<SocketAddr>,
    /// Addresses that may not exist yet (a pod network's gateway before its bridge is made):
    /// bound with IP_FREEBIND.
    pub listen_freebind: Vec<SocketAddr>,
    pub cluster_domain: String,
    pub ttl: u32,
    pub forward: ForwardConfig,
    /// The client networks answered; others get REFUSED. Loopback by default; `nodeless up`
    /// adds the pod networks and `--dns-allow`. Empty: everyone (an open resolver).
    pub allow: Vec<ipnet::IpNet>,
    /// Response-rate limiting over UDP ([`guard`]).
    pub rate_limit: RateLimit,
    /// Where Prometheus metrics are served at `/metrics` ([`metrics`]; port 0 picks one).
    pub metrics_listen: Option<SocketAddr>,
}

impl DnsConfig {
    pub fn new(listen: Vec<SocketAddr>, upstreams: Vec<SocketAddr>) -> Self {
        DnsConfig {
            listen,
            listen_freebind: Vec::new(),
            cluster_domain: "cluster.local".into(),
            ttl: 5,
            forward: ForwardConfig::new(upstreams),
            allow: guard::loopback(),
            rate_limit: RateLimit::default(),
            metrics_listen: None,
        }
    }
}

pub struct RunningDns {
    /// Where it serves (UDP and TCP on each).
    pub addrs: Vec<SocketAddr>,
    /// Where its metrics are served, if they are.
    pub metrics_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: tokio_util_token::Token,
}

mod tokio_util_token {
    /// Stops the server tasks.
    #[derive(Clone, Default)]
    pub struct Token(pub std::sync::Arc<tokio::sync::Notify>);
}

impl RunningDns {
    pub fn stop(&self) {
        self.shutdown.0.notify_waiters();
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn udp_socket(addr: SocketAddr, freebind: bool) -> std::io::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if freebind {
        s.set_freebind_v4(true)?;
    }
    // Several sockets share the port and the kernel spreads askers over them.
    s.set_reuse_port(true)?;
    // Room for bursts: as much receive buffer as the host allows (net.core.rmem_max).
    let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(212_992);
    let _ = s.set_recv_buffer_size(max.min(8 << 20));
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr, freebind: bool) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    if freebind {
        s.set_freebind_v4(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// UDP and TCP on one port: with port 0, the port UDP got (tried a few times).
fn bind_pair(
    addr: SocketAddr,
    freebind: bool,
) -> anyhow::Result<(std::net::UdpSocket, std::net::TcpListener, SocketAddr)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = udp_socket(addr, freebind).map_err(|e| anyhow::anyhow!("binding udp {addr}: {e}"))?;
        let bound = udp.local_addr()?;
        match tcp_listener(bound, freebind) {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => anyhow::bail!("binding tcp {addr}: {e}"),
        }
    }
    anyhow::bail!("no port free for both udp and tcp on {addr}: {last:?}")
}

/// Start serving; `client` feeds the cluster zone (None: forwarding only).
pub async fn start(cfg: DnsConfig, client: Option<kube::Client>) -> anyhow::Result<RunningDns> {
    cfg.rate_limit.validate()?;
    let origin = cluster::origin(&cfg.cluster_domain)?;
    let pod_zone = LowerName::from(
        hickory_server::proto::rr::Name::from_ascii("pod")
            .and_then(|n| n.append_domain(&origin))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let shared = Arc::new(Shared {
        cluster: arc_swap::ArcSwap::from_pointee(cluster::build(&origin, cfg.ttl, 1, &[], &[])),
        views: arc_swap::ArcSwap::from_pointee(privatezone::Views::default()),
        pod_zone,
        ttl: cfg.ttl,
        forwarder: Forwarder::new(cfg.forward.clone()),
        generation: std::sync::atomic::AtomicU64::new(0),
        guard: Guard::new(cfg.allow.clone(), cfg.rate_limit.clone()),
    });
    let handler = Handler { shared: shared.clone() };
    let mut server = Server::new(handler.clone());
    let mut addrs = Vec::new();
    let mut udp_sockets = Vec::new();
    for (addr, freebind) in cfg
        .listen
        .iter()
        .map(|a| (*a, false))
        .chain(cfg.listen_freebind.iter().map(|a| (*a, true)))
    {
        let (udp, tcp, bound) = bind_pair(addr, freebind)?;
        udp_sockets.push(tokio::net::UdpSocket::from_std(udp)?);
        // One receive loop per core: a single loop tops out long before the cores do.
        for _ in 1..std::thread::available_parallelism().map_or(1, |n| n.get()) {
            udp_sockets.push(tokio::net::UdpSocket::from_std(udp_socket(bound, freebind)?)?);
        }
        server.register_listener(tokio::net::TcpListener::from_std(tcp)?, Duration::from_secs(10), 64);
        addrs.push(bound);
    }
    let shutdown = tokio_util_token::Token::default();
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = udp_sockets
        .into_iter()
        .map(|s| tokio::spawn(udp::serve(s, handler.clone())))
        .collect();
    let mut metrics_addr = None;
    if let Some(addr) = cfg.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding DNS metrics on {addr}: {e}"))?;
        metrics_addr = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(metrics::serve(listener)));
    }
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            r = server.block_until_done() => if let Err(e) = r { tracing::warn!(error = %e, "dns server stopped") },
            _ = stop.0.notified() => { let _ = server.shutdown_gracefully().await; }
        }
    }));
    if let Some(client) = client {
        tasks.push(tokio::spawn(watch::run(
            client.clone(),
            shared.clone(),
            origin,
            cfg.ttl,
        )));
        tasks.push(tokio::spawn(watch::private_zones(
            client,
            shared.clone(),
            cfg.forward.clone(),
        )));
    }
    tracing::info!(addrs = ?addrs, domain = %cfg.cluster_domain, allow = ?cfg.allow, rate_limit = cfg.rate_limit.per_second, "dns serving");
    Ok(RunningDns {
        addrs,
        metrics_addr,
        shared,
        tasks,
        shutdown,
    })
}
