//! `nodeless`: one binary, one subcommand per component.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod down;
mod join;
mod node_cmd;
mod storage;

// The ingress in `up` and `nodeless ingress` allocates a little for every request; glibc's
// allocator showed up as a tenth of its CPU under load (ingress-l7/README.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "nodeless",
    version,
    about = "A serverless-Kubernetes data plane: Kubernetes YAML in, sandboxed pods out, no nodes to manage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine on the embedded store (control plane, a node, cluster DNS
    /// and the L7 ingress) and write ./nodeless.kubeconfig.
    Up(UpArgs),
    /// Stop the `nodeless up` of a data directory; with --purge, also remove every pod, the pod
    /// network's state and the data directory.
    Down {
        #[arg(long, default_value = ".nodeless")]
        data_dir: PathBuf,
        /// Remove every pod (containers, namespaces, mounts, cgroups, eBPF pins), the pod
        /// network's egress rule, the kubeconfig `up` wrote and the data directory.
        #[arg(long)]
        purge: bool,
    },
    /// Run only the control plane (API server, store, controllers).
    Control(UpArgs),
    /// Run a virtual node against a control plane (or any Kubernetes API server).
    Node {
        /// The kubeconfig of the cluster to join (unless joining with --server and --token).
        #[arg(long, default_value = "nodeless.kubeconfig")]
        kubeconfig: PathBuf,
        #[command(flatten)]
        join: join::JoinArgs,
        /// Where images and pod state live.
        #[arg(long, default_value = ".nodeless")]
        data_dir: PathBuf,
        #[command(flatten)]
        node: node_cmd::NodeArgs,
        /// With --pod-cidr and --cluster-dns: serve no cluster DNS for this host's pods (by
        /// default the node serves it on the --cluster-dns address, port 53, as `up` does).
        #[arg(long)]
        no_dns: bool,
        #[command(flatten)]
        dns: DnsArgs,
    },
    /// Bootstrap tokens, with which hosts join the cluster (`nodeless node --token`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run cluster DNS against a control plane (or any Kubernetes API server).
    Dns {
        /// The kubeconfig of the cluster to serve.
        #[arg(long, default_value = "nodeless.kubeconfig")]
        kubeconfig: PathBuf,
        #[command(flatten)]
        dns: DnsArgs,
    },
    /// Run the L7 ingress against a control plane (or any Kubernetes API server), as `up` does.
    Ingress {
        #[command(flatten)]
        ingress: nodeless_ingress_l7::server::Args,
    },
    /// Run a CSI volume driver alone on a Unix socket (Identity, Controller and Node), as
    /// kubelet and the CSI sidecars call one.
    Csi {
        #[command(subcommand)]
        driver: CsiDriver,
    },
    /// Manage the node's images.
    Image {
        #[arg(long, default_value = ".nodeless", global = true)]
        data_dir: PathBuf,
        #[command(subcommand)]
        command: node_cmd::ImageCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a bootstrap token and print the command that joins a host with it.
    Create {
        /// An administrator's kubeconfig.
        #[arg(long, default_value = "nodeless.kubeconfig")]
        kubeconfig: PathBuf,
        /// How long the token may be used to join.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// The API server address hosts reach (default: the kubeconfig's).
        #[arg(long)]
        server: Option<String>,
    },
}

#[derive(Subcommand)]
enum CsiDriver {
    /// disk.csi.nodeless.io: disks that stand for cloud disks, sparse files attached as loop
    /// devices (volumes/README.md).
    Disk {
        /// Where to serve: unix:///path/to/csi.sock or a path.
        #[arg(long, default_value = "unix:///run/nodeless/csi/disk.sock")]
        endpoint: String,
        /// Where disk images and their records live; drivers sharing it share the disks.
        #[arg(long, default_value = ".nodeless/csi/disk")]
        state_dir: PathBuf,
        /// The node this driver serves (NodeGetInfo), a Kubernetes node name.
        #[arg(long)]
        node_id: String,
    },
    /// oss.csi.nodeless.io: OSS (or any S3) buckets mounted in pods as FUSE file systems
    /// (volumes/README.md). Each mount is served by its own `nodeless csi fuse-mount` process.
    Oss {
        /// Where to serve: unix:///path/to/csi.sock or a path.
        #[arg(long, default_value = "unix:///run/nodeless/csi/oss.sock")]
        endpoint: String,
        /// Where records of volumes and mounts, and files being written, live.
        #[arg(long, default_value = ".nodeless/csi/oss")]
        state_dir: PathBuf,
        /// The node this driver serves (NodeGetInfo), a Kubernetes node name.
        #[arg(long)]
        node_id: String,
    },
    /// nas.csi.nodeless.io: NFS exports mounted in pods, with the kernel's NFS client where
    /// there is one, else a user-space NFSv3 client over FUSE (volumes/README.md).
    Nas {
        /// Where to serve: unix:///path/to/csi.sock or a path.
        #[arg(long, default_value = "unix:///run/nodeless/csi/nas.sock")]
        endpoint: String,
        /// Where records of volumes and mounts live.
        #[arg(long, default_value = ".nodeless/csi/nas")]
        state_dir: PathBuf,
        /// The node this driver serves (NodeGetInfo), a Kubernetes node name.
        #[arg(long)]
        node_id: String,
    },
    /// Serve one FUSE volume (OSS, or NAS without a kernel NFS client) until it is unmounted
    /// (started by the drivers, not by hand).
    FuseMount {
        /// The mount's configuration, written by the driver (mode 0600).
        #[arg(long)]
        config: PathBuf,
    },
}

async fn run_csi(driver: CsiDriver) -> anyhow::Result<()> {
    match driver {
        CsiDriver::Disk {
            endpoint,
            state_dir,
            node_id,
        } => {
            let disk = nodeless_volumes::DiskDriver::new(nodeless_volumes::DiskConfig::new(&state_dir, node_id))
                .with_context(|| format!("starting {} on {}", nodeless_volumes::DISK_DRIVER, state_dir.display()))?;
            let listener = nodeless_volumes::listen(&endpoint)?;
            println!("nodeless: {} serving on {endpoint}", nodeless_volumes::DISK_DRIVER);
            let stop = async {
                if let Err(e) = wait_for_signal().await {
                    eprintln!("nodeless: no signal handler ({e}); stopping");
                }
            };
            nodeless_volumes::serve_on(listener, disk, stop).await?;
            println!("nodeless: CSI driver stopped (staged and published volumes stay)");
            Ok(())
        }
        CsiDriver::Oss {
            endpoint,
            state_dir,
            node_id,
        } => {
            let oss = nodeless_volumes::OssDriver::new(storage::oss_config(&state_dir, &node_id)?)
                .with_context(|| format!("starting {} on {}", nodeless_volumes::OSS_DRIVER, state_dir.display()))?;
            let listener = nodeless_volumes::listen(&endpoint)?;
            println!("nodeless: {} serving on {endpoint}", nodeless_volumes::OSS_DRIVER);
            let stop = async {
                if let Err(e) = wait_for_signal().await {
                    eprintln!("nodeless: no signal handler ({e}); stopping");
                }
            };
            nodeless_volumes::serve_on(listener, oss, stop).await?;
            println!("nodeless: CSI driver stopped (mounted volumes stay)");
            Ok(())
        }
        CsiDriver::Nas {
            endpoint,
            state_dir,
            node_id,
        } => {
            let nas = nodeless_volumes::NasDriver::new(storage::nas_config(&state_dir, &node_id)?)
                .with_context(|| format!("starting {} on {}", nodeless_volumes::NAS_DRIVER, state_dir.display()))?;
            let listener = nodeless_volumes::listen(&endpoint)?;
            println!("nodeless: {} serving on {endpoint}", nodeless_volumes::NAS_DRIVER);
            let stop = async {
                if let Err(e) = wait_for_signal().await {
                    eprintln!("nodeless: no signal handler ({e}); stopping");
                }
            };
            nodeless_volumes::serve_on(listener, nas, stop).await?;
            println!("nodeless: CSI driver stopped (mounted volumes stay)");
            Ok(())
        }
        CsiDriver::FuseMount { .. } => unreachable!("run before any runtime starts"),
    }
}

/// Where the objects live when not in the embedded store.
#[derive(clap::Args)]
struct EtcdArgs {
    /// Keep objects in etcd v3 at these client URLs (comma-separated) instead of the embedded
    /// store; any number of `nodeless control` replicas may then serve the cluster.
    #[arg(long = "etcd", alias = "etcd-servers", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// The key prefix of this cluster's objects in etcd.
    #[arg(long, default_value = "/nodeless")]
    etcd_prefix: String,
    /// PEM CA of the etcd members' serving certificates (for https:// URLs).
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// PEM client certificate to present to etcd.
    #[arg(long, requires = "etcd_keyfile")]
    etcd_certfile: Option<PathBuf>,
    /// Its key.
    #[arg(long, requires = "etcd_certfile")]
    etcd_keyfile: Option<PathBuf>,
    /// This replica's name in the controllers' Lease (default: host name and API address).
    #[arg(long)]
    replica_name: Option<String>,
}

impl EtcdArgs {
    fn config(&self) -> Option<nodeless_control::store::etcd::EtcdConfig> {
        if self.endpoints.is_empty() {
            return None;
        }
        let mut cfg = nodeless_control::store::etcd::EtcdConfig::new(self.endpoints.clone());
        cfg.prefix = self.etcd_prefix.clone();
        cfg.ca = self.etcd_cafile.clone();
        cfg.cert = self.etcd_certfile.clone();
        cfg.key = self.etcd_keyfile.clone();
        Some(cfg)
    }
}

#[derive(clap::Args)]
struct UpArgs {
    /// Where objects, keys and certificates live.
    #[arg(long, default_value = ".nodeless")]
    data_dir: PathBuf,
    /// API server listen address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Extra host names or addresses for the API server certificate.
    #[arg(long = "tls-host")]
    tls_hosts: Vec<String>,
    /// Where to write the admin kubeconfig.
    #[arg(long, default_value = "nodeless.kubeconfig")]
    kubeconfig: PathBuf,
    /// Also write a read-only kubeconfig here.
    #[arg(long)]
    viewer_kubeconfig: Option<PathBuf>,
    /// Admit pods with hostNetwork: true (refused by default).
    #[arg(long)]
    allow_host_network: bool,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Run the control plane only, no node.
    #[arg(long)]
    no_node: bool,
    #[command(flatten)]
    node: node_cmd::NodeArgs,
    #[command(flatten)]
    dns: DnsArgs,
    /// Run no cluster DNS.
    #[arg(long)]
    no_dns: bool,
    /// Import no sample images (by default a node without `nodeless.local/busybox:1` and
    /// `nodeless.local/echo:1` gets them, built from busybox-static and the echo-server
    /// beside this binary, so `examples/` runs with no registry).
    #[arg(long)]
    no_sample_images: bool,
    #[command(flatten)]
    ingress: IngressArgs,
    /// As root, pods get no network of their own (loopback only) unless --pod-cidr or
    /// --cni-conf says otherwise; without this, `up` as root gives them eni-cni on
    /// 10.66.0.0/16 with cluster DNS at 10.66.0.1.
    #[arg(long, conflicts_with_all = ["pod_cidrs", "cni_conf"])]
    no_pod_network: bool,
}

/// The L7 ingress `up` runs (`nodeless ingress` and `ingress-l7` take the full set of flags).
#[derive(clap::Args, Clone)]
struct IngressArgs {
    /// Run no L7 ingress.
    #[arg(long)]
    no_ingress: bool,
    /// Where the ingress serves plain HTTP (port 0 picks one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8081")]
    ingress_http: String,
    /// Where the ingress serves HTTPS, and HTTP/3 on the same port over UDP.
    #[arg(long, default_value = "127.0.0.1:8443")]
    ingress_https: String,
    /// Where the ingress serves Prometheus metrics at /metrics.
    #[arg(long, default_value = "127.0.0.1:9113")]
    ingress_metrics: String,
    /// Where the ingress serves plain HTTP for pods, Knative's cluster-local routes among it
    /// (default: with a pod network, port 80 of its cluster DNS address, the pods' gateway on
    /// this machine; without one, nowhere).
    #[arg(long)]
    ingress_internal: Option<String>,
    /// As root, LoadBalancer Services get addresses from this pool (standing for SLB/EIP
    /// addresses), put on the interface nodeless-lb0 and forwarded over TCP and UDP.
    #[arg(long, default_value = "198.18.255.0/28")]
    lb_pool: ipnet::Ipv4Net,
    /// Serve no LoadBalancer Services.
    #[arg(long)]
    no_lb_pool: bool,
}

/// The IngressClass `up` makes (the default class), as `scripts/up` did.
const INGRESS_CLASS: &str = "nodeless";
/// The pod network `up` gives pods as root when none is named.
const DEFAULT_POD_CIDR: &str = "10.66.0.0/16";
const DEFAULT_CLUSTER_DNS: &str = "10.66.0.1";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Where `up`'s ingress serves pods (`--internal-http`): --ingress-internal, else port 80
/// (`kingress::INTERNAL_PORT`, where a Route's Service sends) of `pod_dns`, the cluster DNS
/// address of the pod network if there is one. With it, whether to bind before the address
/// exists: `pod_dns` is the network's gateway on this machine, which may not be up yet (DNS
/// binds its port 53 the same way).
fn internal_listener(args: &IngressArgs, pod_dns: Option<IpAddr>) -> Option<(String, bool)> {
    let addr = match &args.ingress_internal {
        Some(a) => a.clone(),
        None => SocketAddr::new(pod_dns?, nodeless_ingress_l7::watch::kingress::INTERNAL_PORT).to_string(),
    };
    let on_gateway = addr.parse::<SocketAddr>().is_ok_and(|a| Some(a.ip()) == pod_dns);
    Some((addr, on_gateway))
}

/// The cluster DNS address of `up`'s pod network: none without a node or a network.
fn pod_network_dns(no_node: bool, node: &node_cmd::NodeArgs) -> Option<IpAddr> {
    let networked = !node.pod_cidrs.is_empty() || node.cni_conf.is_some();
    if no_node || !networked {
        return None;
    }
    node.cluster_dns.as_deref()?.parse().ok()
}

/// The ingress `up` runs, on a thread of its own until `stopping` fires.
fn start_ingress(
    args: &IngressArgs,
    pod_dns: Option<IpAddr>,
    kubeconfig: &std::path::Path,
    stopping: tokio::sync::oneshot::Receiver<()>,
) -> Option<std::thread::JoinHandle<()>> {
    if args.no_ingress {
        return None;
    }
    let mut ingress = nodeless_ingress_l7::server::Args::following(kubeconfig);
    ingress.http = args.ingress_http.clone();
    ingress.https = args.ingress_https.clone();
    ingress.metrics = args.ingress_metrics.clone();
    if let Some((addr, freebind)) = internal_listener(args, pod_dns) {
        ingress.internal_http = Some(addr);
        ingress.internal_freebind = freebind;
    }
    ingress.ensure_class = Some(INGRESS_CLASS.into());
    // The address published in Ingresses' status: the HTTP listener's, when it names one.
    ingress.address = args
        .ingress_http
        .parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| ip.to_string());
    if is_root() && !args.no_lb_pool {
        ingress.lb_pool = Some(args.lb_pool);
    }
    let spawned = std::thread::Builder::new().name("ingress".into()).spawn(move || {
        if let Err(e) = nodeless_ingress_l7::server::run(ingress, stopping) {
            eprintln!("nodeless: the ingress stopped: {e:#}");
        }
    });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("nodeless: no ingress started: {e}");
            None
        }
    }
}

#[derive(clap::Args, Clone)]
struct DnsArgs {
    /// Where cluster DNS serves, UDP and TCP (port 0 picks one). `up` also serves on the node's
    /// --cluster-dns address, port 53, which pods' resolv.conf names.
    #[arg(long = "dns-listen", default_value = "127.0.0.1:53")]
    dns_listen: Vec<SocketAddr>,
    /// Upstream resolvers for names outside the cluster (default: the host's resolv.conf).
    #[arg(long = "dns-upstream")]
    dns_upstreams: Vec<SocketAddr>,
    /// TTL of cluster records and of negative answers about them.
    #[arg(long = "dns-ttl", default_value_t = 5)]
    dns_ttl: u32,
    /// Write the first address DNS serves on to this file (for scripts and tests).
    #[arg(long = "dns-address-file")]
    dns_address_file: Option<PathBuf>,
    /// Also answer clients in this network (repeatable). DNS answers loopback and (under `up`)
    /// the pod networks (--pod-cidr, or the subnets of --cni-conf's IPAM); others get REFUSED.
    #[arg(long = "dns-allow")]
    dns_allow: Vec<ipnet::IpNet>,
    /// UDP replies a second per client /24 (/56 for IPv6), with bursts of twice as many; past
    /// it every second reply is truncated (TC=1, the client retries over TCP) and the rest are
    /// dropped. Loopback is exempt. 0: no limit.
    #[arg(long = "dns-rate-limit", default_value_t = nodeless_dns::guard::RateLimit::default().per_second)]
    dns_rate_limit: u32,
    /// Where DNS serves Prometheus metrics at /metrics, under CoreDNS's names (its port,
    /// 9153, by default; port 0 picks one).
    #[arg(long = "dns-metrics", default_value = "127.0.0.1:9153")]
    dns_metrics: SocketAddr,
}

/// The subnets a CNI network config's IPAM hands out (host-local's `ranges[][].subnet` or
/// `subnet`, wherever they sit in the plugin list): the pod networks DNS answers.
fn cni_subnets(conf: &serde_json::Value) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    let mut stack = vec![conf];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match v.as_str().and_then(|s| s.parse::<ipnet::IpNet>().ok()) {
                        Some(net) if k == "subnet" => out.push(net.trunc()),
                        _ => stack.push(v),
                    }
                }
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    out
}

/// The pod networks of `up`'s node: --pod-cidr, or the subnets of --cni-conf.
fn pod_networks(node: &node_cmd::NodeArgs) -> anyhow::Result<Vec<ipnet::IpNet>> {
    let mut nets: Vec<ipnet::IpNet> = node.pod_cidrs.iter().map(|n| ipnet::IpNet::V4(*n)).collect();
    if let Some(conf) = &node.cni_conf {
        let text = std::fs::read_to_string(conf).with_context(|| format!("reading {}", conf.display()))?;
        let conf: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", conf.display()))?;
        nets.extend(cni_subnets(&conf));
    }
    Ok(nets)
}

/// Start cluster DNS on `listen` (and, bound before the address exists, on `freebind`),
/// answering loopback, `pod_networks` and --dns-allow.
async fn start_dns(
    args: &DnsArgs,
    domain: &str,
    freebind: Vec<SocketAddr>,
    pod_networks: Vec<ipnet::IpNet>,
    client: kube::Client,
) -> anyhow::Result<nodeless_dns::RunningDns> {
    let mut upstreams = args.dns_upstreams.clone();
    if upstreams.is_empty() {
        upstreams = nodeless_dns::forward::resolv_conf_upstreams(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        );
    }
    // Never forward to ourselves.
    let ours: Vec<SocketAddr> = args.dns_listen.iter().chain(freebind.iter()).copied().collect();
    upstreams.retain(|u| {
        !ours
            .iter()
            .any(|o| o.port() == u.port() && (o.ip() == u.ip() || o.ip().is_unspecified()))
    });
    let mut cfg = nodeless_dns::DnsConfig::new(args.dns_listen.clone(), upstreams);
    cfg.listen_freebind = freebind;
    cfg.cluster_domain = domain.to_string();
    cfg.ttl = args.dns_ttl;
    cfg.allow.extend(pod_networks);
    cfg.allow.extend(args.dns_allow.iter().copied());
    cfg.rate_limit.per_second = args.dns_rate_limit;
    cfg.rate_limit.burst = args.dns_rate_limit.saturating_mul(2);
    cfg.metrics_listen = Some(args.dns_metrics);
    let dns = nodeless_dns::start(cfg, Some(client)).await?;
    if let Some(m) = dns.metrics_addr {
        println!("nodeless: DNS metrics on http://{m}/metrics");
    }
    if let (Some(file), Some(addr)) = (&args.dns_address_file, dns.addrs.first()) {
        // The address first (what scripts read), then where the metrics are.
        let metrics = dns.metrics_addr.map(|m| format!("metrics {m}\n")).unwrap_or_default();
        std::fs::write(file, format!("{addr}\n{metrics}")).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(dns)
}

async fn run_dns(kubeconfig: PathBuf, args: DnsArgs) -> anyhow::Result<()> {
    let client = node_cmd::client_from(&kubeconfig).await?;
    let dns = start_dns(&args, "cluster.local", Vec::new(), Vec::new(), client)
        .await
        .context("starting DNS")?;
    println!("nodeless: DNS on {:?}", dns.addrs);
    wait_for_signal().await?;
    dns.stop();
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

async fn run_node(
    kubeconfig: PathBuf,
    join: join::JoinArgs,
    data_dir: PathBuf,
    mut args: node_cmd::NodeArgs,
    dns: Option<DnsArgs>,
) -> anyhow::Result<()> {
    let (client, kubelet) = match &join.server {
        Some(_) => {
            let name = node_cmd::node_name(&args);
            let joined = join::join(&join, &data_dir, &name, &node_cmd::host_ip(&args))
                .await
                .context("joining the cluster")?;
            (joined.client, Some(joined.kubelet))
        }
        None => (node_cmd::client_from(&kubeconfig).await?, None),
    };
    node_cmd::await_pod_cidr(&mut args, &client).await?;
    let node = node_cmd::start_node(&args, &data_dir, client.clone(), kubelet)
        .await
        .context("starting the node")?;
    println!(
        "nodeless: node {} ready, kubelet API on {}",
        node.node.ctx.name, node.node.kubelet_addr
    );
    // This host's pods ask the node's --cluster-dns address, as on `up`.
    let mut running_dns = None;
    let pod_dns = args
        .cluster_dns
        .as_deref()
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .filter(|_| !args.pod_cidrs.is_empty());
    if let (Some(dns), Some(ip)) = (dns, pod_dns) {
        let started = start_dns(
            &dns,
            &args.cluster_domain,
            vec![SocketAddr::new(ip, 53)],
            pod_networks(&args)?
                .into_iter()
                .chain(args.cluster_cidrs.iter().map(|c| ipnet::IpNet::V4(*c)))
                .collect(),
            client,
        )
        .await
        .context("starting cluster DNS for this host's pods")?;
        println!("nodeless: DNS on {:?}", started.addrs);
        running_dns = Some(started);
    }
    wait_for_signal().await?;
    println!("nodeless: node stopping (its pods keep running and are adopted at the next start)");
    if let Some(d) = running_dns {
        d.stop();
    }
    node.stop().await;
    Ok(())
}

async fn run_control(mut args: UpArgs, with_node: bool) -> anyhow::Result<()> {
    if with_node {
        std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
        down::claim(&args.data_dir)?;
        if !is_root() && !args.no_node {
            eprintln!(
                "nodeless: not root: running without a node (it needs namespaces, mounts and cgroups); pods will stay Pending"
            );
            args.no_node = true;
        }
        let unnamed = args.node.pod_cidrs.is_empty() && args.node.cni_conf.is_none();
        if unnamed && !args.no_pod_network && !args.no_node && is_root() {
            args.node.pod_cidrs = vec![DEFAULT_POD_CIDR.parse()?];
            args.node
                .cluster_dns
                .get_or_insert_with(|| DEFAULT_CLUSTER_DNS.to_string());
        }
    }
    let mut cfg = nodeless_control::Config::new(&args.data_dir);
    // The disk CSI driver runs with the node (loop devices need root); control provisions,
    // attaches and expands through it, the node stages and publishes.
    let mut storage = None;
    if with_node && !args.no_node && is_root() {
        match storage::start(&args.data_dir, &node_cmd::node_name(&args.node)) {
            Ok(d) => {
                cfg.csi_drivers = d.endpoints.clone();
                args.node.csi_drivers.extend(d.endpoints.clone());
                storage = Some(d);
            }
            Err(e) => eprintln!("nodeless: no CSI drivers started: {e:#}; claims on their classes stay Pending"),
        }
    }
    cfg.listen = args.listen;
    cfg.hosts = args.tls_hosts.clone();
    cfg.allow_host_network = args.allow_host_network;
    cfg.etcd = args.etcd.config();
    cfg.identity = args.etcd.replica_name.clone();
    cfg.cluster_cidr = args.node.cluster_cidrs.first().copied();
    let cp = nodeless_control::ControlPlane::start(cfg)
        .await
        .context("starting the control plane")?;
    node_cmd::write_private(&args.kubeconfig, &cp.kubeconfig(true))?;
    if let Some(v) = &args.viewer_kubeconfig {
        node_cmd::write_private(v, &cp.kubeconfig(false))?;
    }
    println!("nodeless: API server on https://{}", cp.addr);
    println!("nodeless: kubeconfig written to {}", args.kubeconfig.display());
    println!(
        "nodeless: try  kubectl --kubeconfig {} get namespaces",
        args.kubeconfig.display()
    );
    let mut node = None;
    if with_node && !args.no_node && !args.no_sample_images {
        match node_cmd::import_samples(&args.data_dir) {
            Ok(said) => said.iter().for_each(|s| println!("nodeless: {s}")),
            Err(e) => eprintln!("nodeless: no sample images: {e:#}"),
        }
    }
    if storage.is_some() {
        // Beside the node's start, not before it: only claims wait for these.
        let client = node_cmd::client_from_yaml(&cp.kubeconfig(true)).await?;
        tokio::spawn(async move {
            match storage::ensure_objects(client).await {
                Ok(()) => println!(
                    "nodeless: CSI drivers ready (disk, default StorageClass {}; oss)",
                    storage::DEFAULT_CLASS
                ),
                Err(e) => eprintln!("nodeless: the CSI drivers' objects: {e:#}"),
            }
        });
    }
    if with_node && !args.no_node {
        let client = node_cmd::client_from_yaml(&cp.kubeconfig(true)).await?;
        match node_cmd::start_node(&args.node, &args.data_dir, client, None).await {
            Ok(n) => {
                println!(
                    "nodeless: node {} ready (runtime {})",
                    n.node.ctx.name, args.node.runtime
                );
                node = Some(n);
            }
            Err(e) => eprintln!("nodeless: no node started: {e:#}; pods will stay Pending"),
        }
    }
    if with_node {
        let record = down::UpRecord {
            pid: std::process::id(),
            node: node.as_ref().map(|n| n.node.ctx.name.clone()),
            pod_cidrs: args.node.pod_cidrs.clone(),
            kubeconfig: std::path::absolute(&args.kubeconfig).unwrap_or_else(|_| args.kubeconfig.clone()),
            lb_interface: (is_root() && !args.ingress.no_ingress && !args.ingress.no_lb_pool)
                .then(|| nodeless_ingress_l7::server::Args::following(&args.kubeconfig).lb_interface),
        };
        record.write(&args.data_dir)?;
    }
    let mut dns = None;
    if with_node && !args.no_dns {
        let client = node_cmd::client_from_yaml(&cp.kubeconfig(true)).await?;
        // Pods reach DNS at the node's --cluster-dns address (their network's gateway), port 53.
        let freebind: Vec<SocketAddr> = args
            .node
            .cluster_dns
            .iter()
            .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        let started = match pod_networks(&args.node) {
            Ok(nets) => start_dns(&args.dns, &args.node.cluster_domain, freebind, nets, client).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(d) => {
                println!("nodeless: DNS on {:?}", d.addrs);
                dns = Some(d);
            }
            Err(e) => eprintln!("nodeless: no cluster DNS started: {e:#}"),
        }
    }
    let (stop_ingress, ingress_stopping) = tokio::sync::oneshot::channel();
    let ingress = if with_node {
        let pod_dns = pod_network_dns(args.no_node, &args.node);
        start_ingress(&args.ingress, pod_dns, &args.kubeconfig, ingress_stopping)
    } else {
        None
    };
    wait_for_signal().await?;
    println!("nodeless: stopping");
    let _ = stop_ingress.send(());
    if let Some(i) = ingress {
        // It takes the LoadBalancer addresses down before it returns.
        let _ = tokio::task::spawn_blocking(move || i.join()).await;
    }
    if let Some(d) = dns {
        d.stop();
    }
    if let Some(n) = node {
        n.stop().await;
    }
    if let Some(s) = storage {
        s.stop().await;
    }
    cp.shutdown();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NODELESS_LOG")
                .unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // One TLS provider for every client in the process (kube, the registry client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // A mount process runs its own runtime and serves FUSE from its own threads.
    if let Command::Csi {
        driver: CsiDriver::FuseMount { config },
    } = &cli.command
    {
        std::process::exit(nodeless_volumes::mounter::run(config));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Up(args) => rt.block_on(run_control(args, true)),
        Command::Down { data_dir, purge } => down::down(&data_dir, purge),
        Command::Ingress { ingress } => {
            drop(rt);
            nodeless_ingress_l7::server::run(ingress, nodeless_ingress_l7::server::on_signal()?)
        }
        Command::Control(args) => rt.block_on(run_control(args, false)),
        Command::Node {
            kubeconfig,
            join,
            data_dir,
            node,
            no_dns,
            dns,
        } => rt.block_on(run_node(kubeconfig, join, data_dir, node, (!no_dns).then_some(dns))),
        Command::Token {
            command:
                TokenCommand::Create {
                    kubeconfig,
                    ttl,
                    server,
                },
        } => rt.block_on(async {
            let client = node_cmd::client_from(&kubeconfig).await?;
            println!("{}", join::create_token(client, &kubeconfig, ttl, server).await?);
            Ok(())
        }),
        Command::Dns { kubeconfig, dns } => rt.block_on(run_dns(kubeconfig, dns)),
        Command::Csi { driver } => rt.block_on(run_csi(driver)),
        Command::Image { data_dir, command } => node_cmd::image(command, &data_dir),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    fn up(args: &[&str]) -> super::UpArgs {
        let argv = ["nodeless", "up"].iter().chain(args).copied();
        match super::Cli::try_parse_from(argv).unwrap().command {
            super::Command::Up(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_internal_listener_is_port_80_of_the_pod_networks_dns_address() {
        let gateway = Some("10.66.0.1".parse().unwrap());
        let a = up(&[]);
        assert_eq!(
            super::internal_listener(&a.ingress, gateway),
            Some(("10.66.0.1:80".into(), true)),
            "bound before the gateway exists"
        );
        assert_eq!(super::internal_listener(&a.ingress, None), None, "no pod network");
        let a = up(&["--ingress-internal", "10.66.0.1:8080"]);
        assert_eq!(
            super::internal_listener(&a.ingress, gateway),
            Some(("10.66.0.1:8080".into(), true))
        );
        let a = up(&["--ingress-internal", "127.0.0.1:0"]);
        assert_eq!(
            super::internal_listener(&a.ingress, None),
            Some(("127.0.0.1:0".into(), false)),
            "named, it is served without a pod network too"
        );
    }

    #[test]
    fn only_a_node_with_a_pod_network_has_a_pod_dns_address() {
        let a = up(&["--pod-cidr", "10.70.0.0/16", "--cluster-dns", "10.70.0.1"]);
        assert_eq!(
            super::pod_network_dns(false, &a.node),
            Some("10.70.0.1".parse().unwrap())
        );
        assert_eq!(super::pod_network_dns(true, &a.node), None, "--no-node");
        let a = up(&["--no-pod-network", "--cluster-dns", "10.70.0.1"]);
        assert_eq!(super::pod_network_dns(false, &a.node), None, "loopback only");
        let a = up(&["--pod-cidr", "10.70.0.0/16"]);
        assert_eq!(super::pod_network_dns(false, &a.node), None, "no DNS address");
    }

    #[test]
    fn csi_disk_takes_an_endpoint_a_state_directory_and_a_node() {
        let argv = [
            "nodeless",
            "csi",
            "disk",
            "--endpoint",
            "unix:///tmp/d.sock",
            "--state-dir",
            "/s",
            "--node-id",
            "n1",
        ];
        match super::Cli::try_parse_from(argv).unwrap().command {
            super::Command::Csi {
                driver:
                    super::CsiDriver::Disk {
                        endpoint,
                        state_dir,
                        node_id,
                    },
            } => {
                assert_eq!((endpoint.as_str(), node_id.as_str()), ("unix:///tmp/d.sock", "n1"));
                assert_eq!(state_dir, std::path::PathBuf::from("/s"));
            }
            _ => unreachable!(),
        }
        assert!(
            super::Cli::try_parse_from(["nodeless", "csi", "disk"]).is_err(),
            "--node-id is required"
        );
    }

    #[test]
    fn the_subnets_of_a_cni_config_are_its_pod_networks() {
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "plugins": [
            {"type": "bridge", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.252.7.0/24", "gateway": "10.252.7.1"}], [{"subnet": "fd00:1::/64"}]]}},
            {"type": "other", "ipam": {"subnet": "10.9.0.5/16"}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]});
        let nets: Vec<String> = super::cni_subnets(&conf).iter().map(|n| n.to_string()).collect();
        let mut sorted = nets.clone();
        sorted.sort();
        assert_eq!(sorted, vec!["10.252.7.0/24", "10.9.0.0/16", "fd00:1::/64"]);
    }
}
