//! `nodeless`: one binary, one subcommand per component.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod node_cmd;

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
    /// Run everything on this machine on the embedded store and write ./nodeless.kubeconfig.
    Up(UpArgs),
    /// Run only the control plane (API server, store, controllers).
    Control(UpArgs),
    /// Run a virtual node against a control plane (or any Kubernetes API server).
    Node {
        /// The kubeconfig of the cluster to join.
        #[arg(long, default_value = "nodeless.kubeconfig")]
        kubeconfig: PathBuf,
        /// Where images and pod state live.
        #[arg(long, default_value = ".nodeless")]
        data_dir: PathBuf,
        #[command(flatten)]
        node: node_cmd::NodeArgs,
    },
    /// Run cluster DNS against a control plane (or any Kubernetes API server).
    Dns {
        /// The kubeconfig of the cluster to serve.
        #[arg(long, default_value = "nodeless.kubeconfig")]
        kubeconfig: PathBuf,
        #[command(flatten)]
        dns: DnsArgs,
    },
    /// Manage the node's images.
    Image {
        #[arg(long, default_value = ".nodeless", global = true)]
        data_dir: PathBuf,
        #[command(subcommand)]
        command: node_cmd::ImageCommand,
    },
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
    let dns = nodeless_dns::start(cfg, Some(client)).await?;
    if let (Some(file), Some(addr)) = (&args.dns_address_file, dns.addrs.first()) {
        std::fs::write(file, format!("{addr}\n")).with_context(|| format!("writing {}", file.display()))?;
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

fn write_private(path: &PathBuf, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
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

async fn run_node(kubeconfig: PathBuf, data_dir: PathBuf, args: node_cmd::NodeArgs) -> anyhow::Result<()> {
    let client = node_cmd::client_from(&kubeconfig).await?;
    let node = node_cmd::start_node(&args, &data_dir, client)
        .await
        .context("starting the node")?;
    println!(
        "nodeless: node {} ready, kubelet API on {}",
        node.node.ctx.name, node.node.kubelet_addr
    );
    wait_for_signal().await?;
    println!("nodeless: node stopping (its pods keep running and are adopted at the next start)");
    node.stop().await;
    Ok(())
}

async fn run_control(args: UpArgs, with_node: bool) -> anyhow::Result<()> {
    let mut cfg = nodeless_control::Config::new(&args.data_dir);
    cfg.listen = args.listen;
    cfg.hosts = args.tls_hosts.clone();
    cfg.allow_host_network = args.allow_host_network;
    let cp = nodeless_control::ControlPlane::start(cfg)
        .await
        .context("starting the control plane")?;
    write_private(&args.kubeconfig, &cp.kubeconfig(true))?;
    if let Some(v) = &args.viewer_kubeconfig {
        write_private(v, &cp.kubeconfig(false))?;
    }
    println!("nodeless: API server on https://{}", cp.addr);
    println!("nodeless: kubeconfig written to {}", args.kubeconfig.display());
    println!(
        "nodeless: try  kubectl --kubeconfig {} get namespaces",
        args.kubeconfig.display()
    );
    let mut node = None;
    if with_node && !args.no_node {
        let client = node_cmd::client_from_yaml(&cp.kubeconfig(true)).await?;
        match node_cmd::start_node(&args.node, &args.data_dir, client).await {
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
    wait_for_signal().await?;
    println!("nodeless: stopping");
    if let Some(d) = dns {
        d.stop();
    }
    if let Some(n) = node {
        n.stop().await;
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
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        // `up` runs the control plane, a node and DNS; ingress joins as its issue lands.
        Command::Up(args) => rt.block_on(run_control(args, true)),
        Command::Control(args) => rt.block_on(run_control(args, false)),
        Command::Node {
            kubeconfig,
            data_dir,
            node,
        } => rt.block_on(run_node(kubeconfig, data_dir, node)),
        Command::Dns { kubeconfig, dns } => rt.block_on(run_dns(kubeconfig, dns)),
        Command::Image { data_dir, command } => node_cmd::image(command, &data_dir),
    }
}

#[cfg(test)]
mod tests {
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
