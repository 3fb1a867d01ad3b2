//! `eni-cnid`: the long-lived IP pool (`eni-cni pool …`, which the small `eni-cni` binary
//! passes on here, as it does `show` and `services`), and the CNI plugin itself for the verbs
//! `eni-cni` cannot hand to a pool (run with CNI_COMMAND set, the runtime's way).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use nodeless_eni_cni::plugin;
use nodeless_eni_cni::pool::{LocalProvider, Pool, PoolConfig};

#[derive(Parser)]
#[command(
    name = "eni-cni",
    about = "The Nodeless CNI plugin (run by a container runtime with CNI_COMMAND set), and its IP pool service"
)]
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
    /// Show a network's eBPF datapath: pods and packet counters (drops by reason among them),
    /// and the service load balancer of the same name: services, endpoints and counters.
    Show {
        /// The network's name (the `name` of its CNI configuration).
        network: String,
    },
    /// Run the eBPF service load balancer for the processes of a cgroup (v2): ClusterIP ports
    /// reach ready endpoints, from a control API's Services and EndpointSlices or from a table.
    Services(ServicesArgs),
}

#[derive(clap::Args)]
struct ServicesArgs {
    /// The balancer's name (its pins live under /sys/fs/bpf/nodeless/lb/<name>).
    #[arg(long)]
    name: String,
    /// The cgroup v2 directory whose processes (and their descendants' cgroups) are balanced.
    #[arg(long)]
    cgroup: PathBuf,
    /// Follow the Services and EndpointSlices of this cluster.
    #[arg(long, conflicts_with = "table", required_unless_present = "table")]
    kubeconfig: Option<PathBuf>,
    /// Serve this table instead (JSON: [{"address", "port", "protocol", "endpoints": ["ip:port"],
    /// "affinity": seconds}]); SIGHUP reads it again.
    #[arg(long)]
    table: Option<PathBuf>,
    /// Leave the balancer attached when stopping (a restart takes it over).
    #[arg(long)]
    keep: bool,
}

fn main() {
    // Runtimes run plugins with no arguments (and CNI_COMMAND set); the pool has a subcommand.
    if std::env::var_os("CNI_COMMAND").is_some() || std::env::args_os().len() == 1 {
        std::process::exit(run_plugin());
    }
    let (socket, state, cidrs, min_warm, max_warm, idle_reclaim, no_snat) = match Cli::parse() {
        Cli::Pool {
            socket,
            state,
            cidrs,
            min_warm,
            max_warm,
            idle_reclaim,
            no_snat,
        } => (socket, state, cidrs, min_warm, max_warm, idle_reclaim, no_snat),
        Cli::Show { network } => match nodeless_eni_cni::bpf::Pins::for_network(&network).show() {
            Ok(text) => {
                print!("{text}");
                let lb = nodeless_eni_cni::lb::Pins::named(&network);
                if lb.exists() {
                    match lb.show() {
                        Ok(text) => print!("{text}"),
                        Err(e) => {
                            eprintln!("eni-cni show: {e}");
                            std::process::exit(1);
                        }
                    }
                }
                return;
            }
            Err(e) => {
                eprintln!("eni-cni show: {e}");
                std::process::exit(1);
            }
        },
        Cli::Services(args) => {
            init_tracing();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a Tokio runtime");
            if let Err(e) = rt.block_on(services(args)) {
                eprintln!("eni-cni services: {e:#}");
                std::process::exit(1);
            }
            return;
        }
    };
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let result = rt.block_on(async {
        let cfg = PoolConfig {
            state,
            min_warm,
            max_warm: max_warm.max(min_warm),
            idle_reclaim: Duration::from_secs(idle_reclaim),
        };
        let snat = if no_snat {
            None
        } else {
            Some(nodeless_eni_cni::snat::Snat::install(&cidrs, &[]).map_err(anyhow::Error::msg)?)
        };
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

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
}

async fn services(args: ServicesArgs) -> anyhow::Result<()> {
    use nodeless_eni_cni::lb::{Balancer, table};
    use tokio::signal::unix::{SignalKind, signal};
    // Read the table (and the kubeconfig) before attaching anything: bad input changes nothing.
    let static_table = args.table.as_deref().map(table::read_file).transpose()?;
    let client = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            Some(kube::Client::try_from(cfg)?)
        }
        None => None,
    };
    let mut lb = Balancer::start(&args.name, &args.cgroup)?;
    let pins = lb.pins().clone();
    tracing::info!(name = %args.name, cgroup = %args.cgroup.display(), "service load balancer attached");
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let served = async {
        match (client, static_table) {
            (Some(client), _) => {
                nodeless_eni_cni::lb::watch::run(client, lb).await;
                Ok(())
            }
            (None, Some(t)) => {
                let path = args.table.clone().unwrap_or_default();
                lb.sync(&t)?;
                tracing::info!(services = t.len(), "table loaded");
                while hup.recv().await.is_some() {
                    match table::read_file(&path) {
                        Ok(t) => match lb.sync(&t) {
                            Ok(n) => {
                                tracing::info!(changed = n, services = t.len(), "table reloaded")
                            }
                            Err(e) => tracing::warn!(error = %e, "syncing the table"),
                        },
                        Err(e) => tracing::warn!(error = %e, "the table was not reloaded"),
                    }
                }
                Ok(())
            }
            (None, None) => anyhow::bail!("--kubeconfig or --table is needed"),
        }
    };
    let result: anyhow::Result<()> = tokio::select! {
        r = served => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    };
    if !args.keep {
        pins.remove()?;
    }
    result
}

fn run_plugin() -> i32 {
    let env = plugin::environment();
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let (code, text) = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => plugin::render(rt.block_on(plugin::run(&env, &stdin))),
        Err(e) => (
            1,
            format!(
                "{}\n",
                nodeless_eni_cni::spec::CniError::new(
                    nodeless_eni_cni::spec::code::IO,
                    "starting the plugin",
                    e.to_string()
                )
                .to_json("1.1.0")
            ),
        ),
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    code
}
