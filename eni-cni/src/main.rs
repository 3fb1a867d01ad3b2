//! `eni-cni`: the CNI plugin when run with CNI_COMMAND set (the runtime's way), and
//! `eni-cni pool …`, the long-lived IP pool it talks to.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use nodeless_eni_cni::plugin;
use nodeless_eni_cni::pool::{LocalProvider, Pool, PoolConfig};

#[derive(Parser)]
#[command(name = "eni-cni", about = "The Nodeless CNI plugin (run by a container runtime with CNI_COMMAND set), and its IP pool service")]
enum Cli {
    /// Run the IP pool service.
    Pool {
        /// The socket the plugin reaches the pool on.
        #[arg(long, default_value = "/run/nodeless/eni/pool.sock")]
        socket: PathBuf,
        /// Where allocations are kept.
        #[arg(long, default_value = "/var/lib/nodeless/eni/pool.redb")]
        state: PathBuf,
        /// The node's vSwitch CIDRs pod addresses come from (repeatable; the first address of
        /// each is its gateway's).
        #[arg(long = "cidr", required = true)]
        cidrs: Vec<ipnet::Ipv4Net>,
        #[arg(long, default_value_t = 8)]
        min_warm: usize,
        #[arg(long, default_value_t = 32)]
        max_warm: usize,
        /// Seconds an idle address beyond min-warm is kept.
        #[arg(long, default_value_t = 300)]
        idle_reclaim: u64,
        /// Do not masquerade pods' traffic to hosts beyond the CIDRs (egress SNAT is on by default).
        #[arg(long)]
        no_snat: bool,
    },
    /// Show a network's eBPF datapath: pods and packet counters (drops by reason among them).
    Show {
        /// The network's name (the `name` of its CNI configuration).
        network: String,
    },
}

fn main() {
    // Runtimes run plugins with no arguments (and CNI_COMMAND set); the pool has a subcommand.
    if std::env::var_os("CNI_COMMAND").is_some() || std::env::args_os().len() == 1 {
        std::process::exit(run_plugin());
    }
    let (socket, state, cidrs, min_warm, max_warm, idle_reclaim, no_snat) = match Cli::parse() {
        Cli::Pool { socket, state, cidrs, min_warm, max_warm, idle_reclaim, no_snat } => (socket, state, cidrs, min_warm, max_warm, idle_reclaim, no_snat),
        Cli::Show { network } => match nodeless_eni_cni::bpf::Pins::for_network(&network).show() {
            Ok(text) => {
                print!("{text}");
                return;
            }
            Err(e) => {
                eprintln!("eni-cni show: {e}");
                std::process::exit(1);
            }
        },
    };
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).with_writer(std::io::stderr).init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a Tokio runtime");
    let result = rt.block_on(async {
        let cfg = PoolConfig { state, min_warm, max_warm: max_warm.max(min_warm), idle_reclaim: Duration::from_secs(idle_reclaim) };
        let snat = if no_snat { None } else { Some(nodeless_eni_cni::snat::Snat::install(&cidrs).map_err(anyhow::Error::msg)?) };
        let pool = Pool::open(cfg, LocalProvider::new(cidrs))?;
        tracing::info!(socket = %socket.display(), snat = snat.is_some(), "IP pool serving");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let result = tokio::select! {
            r = pool.serve(&socket) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        };
        if let Some(s) = snat {
            if let Err(e) = s.remove() {
                tracing::warn!(error = %e, "removing the SNAT rule");
            }
        }
        result
    });
    if let Err(e) = result {
        eprintln!("eni-cni pool: {e:#}");
        std::process::exit(1);
    }
}

fn run_plugin() -> i32 {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            println!("{}", serde_json::json!({"cniVersion": "1.1.0", "code": 5, "msg": "starting the plugin", "details": e.to_string()}));
            return 1;
        }
    };
    let outcome = rt.block_on(plugin::run(&env, &stdin));
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Ok(None) => 0,
        Err((e, version)) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            1
        }
    }
}
