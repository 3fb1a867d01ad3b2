//! `nodeless`: one binary, one subcommand per component.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod node_cmd;

#[derive(Parser)]
#[command(name = "nodeless", version, about = "A serverless-Kubernetes data plane: Kubernetes YAML in, sandboxed pods out, no nodes to manage")]
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
    let node = node_cmd::start_node(&args, &data_dir, client).await.context("starting the node")?;
    println!("nodeless: node {} ready, kubelet API on {}", node.ctx.name, node.kubelet_addr);
    wait_for_signal().await?;
    println!("nodeless: node stopping (its pods keep running and are adopted at the next start)");
    node.stop();
    Ok(())
}

async fn run_control(args: UpArgs, with_node: bool) -> anyhow::Result<()> {
    let mut cfg = nodeless_control::Config::new(&args.data_dir);
    cfg.listen = args.listen;
    cfg.hosts = args.tls_hosts.clone();
    cfg.allow_host_network = args.allow_host_network;
    let cp = nodeless_control::ControlPlane::start(cfg).await.context("starting the control plane")?;
    write_private(&args.kubeconfig, &cp.kubeconfig(true))?;
    if let Some(v) = &args.viewer_kubeconfig {
        write_private(v, &cp.kubeconfig(false))?;
    }
    println!("nodeless: API server on https://{}", cp.addr);
    println!("nodeless: kubeconfig written to {}", args.kubeconfig.display());
    println!("nodeless: try  kubectl --kubeconfig {} get namespaces", args.kubeconfig.display());
    let mut node = None;
    if with_node && !args.no_node {
        let client = node_cmd::client_from_yaml(&cp.kubeconfig(true)).await?;
        match node_cmd::start_node(&args.node, &args.data_dir, client).await {
            Ok(n) => {
                println!("nodeless: node {} ready (runtime {})", n.ctx.name, args.node.runtime);
                node = Some(n);
            }
            Err(e) => eprintln!("nodeless: no node started: {e:#}; pods will stay Pending"),
        }
    }
    wait_for_signal().await?;
    println!("nodeless: stopping");
    if let Some(n) = node {
        n.stop();
    }
    cp.shutdown();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("NODELESS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    // One TLS provider for every client in the process (kube, the registry client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        // `up` runs the control plane and a node; ingress and DNS join as their issues land.
        Command::Up(args) => rt.block_on(run_control(args, true)),
        Command::Control(args) => rt.block_on(run_control(args, false)),
        Command::Node { kubeconfig, data_dir, node } => rt.block_on(run_node(kubeconfig, data_dir, node)),
        Command::Image { data_dir, command } => node_cmd::image(command, &data_dir),
    }
}
