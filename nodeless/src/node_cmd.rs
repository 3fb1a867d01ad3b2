//! `nodeless node` and `nodeless image`: the virtual node and its image store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nodeless_sandbox_node::image::{ImageStore, reference};
use nodeless_sandbox_node::kubelet_tls::{DEFAULT_CLIENT_NAME, KubeletTls};
use nodeless_sandbox_node::network::{Cni, LoopbackOnly, Network};
use nodeless_sandbox_node::node::{NodeConfig, RunningNode};
use nodeless_sandbox_node::rundir::{self, RunDir};
use nodeless_sandbox_node::runtime::OciRuntime;
use nodeless_sandbox_node::sandbox::Keeper;
use nodeless_sandbox_node::shim_proto::RuntimeIdentity;

#[derive(clap::Args, Clone)]
pub struct NodeArgs {
    /// The Node's name (default: nodeless-<hostname>).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The OCI runtime: `auto` (crun where the cgroup layout lets it run, else runc), crun, runc,
    /// or a path to another runtime with the same command line.
    #[arg(long, default_value = "auto")]
    pub runtime: String,
    /// Where the kubelet API listens (control proxies logs and exec here, over mutual TLS).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub kubelet_listen: std::net::SocketAddr,
    /// The kubelet API's serving certificate (PEM, intermediates after it), for a node that
    /// joins a cluster from elsewhere. Without it the node issues itself one from the cluster
    /// CA in `<data-dir>/pki`, as `nodeless up` (or a node beside its control plane) does.
    #[arg(long, requires_all = ["kubelet_key", "kubelet_client_ca"])]
    pub kubelet_cert: Option<PathBuf>,
    /// The private key of --kubelet-cert (PEM).
    #[arg(long, requires = "kubelet_cert")]
    pub kubelet_key: Option<PathBuf>,
    /// The CA that signs the API server's client certificate for kubelets (PEM): the only CA
    /// the kubelet API trusts.
    #[arg(long, requires = "kubelet_cert")]
    pub kubelet_client_ca: Option<PathBuf>,
    /// The common name a client certificate must carry to use the kubelet API (repeatable;
    /// e.g. `kube-apiserver-kubelet-client` for a kubeadm cluster).
    #[arg(long = "kubelet-client-name", default_value = DEFAULT_CLIENT_NAME)]
    pub kubelet_client_names: Vec<String>,
    /// A CNI conflist for pod networks; without one (and without --pod-cidr) pods get loopback only.
    #[arg(long)]
    pub cni_conf: Option<PathBuf>,
    /// Give pods addresses from this CIDR (repeatable) on eni-cni: its IP pool runs inside the
    /// node, pods get a /32 on a veth with the eBPF fast path between them, and egress is
    /// masqueraded; pods reach ClusterIPs through the eBPF service load balancer (socket-level,
    /// on the pods' cgroup). The CIDR's first address is never a pod's: use it for --cluster-dns.
    #[arg(long = "pod-cidr", conflicts_with = "cni_conf")]
    pub pod_cidrs: Vec<ipnet::Ipv4Net>,
    /// On a cluster of several hosts: the pod network of the whole cluster (repeatable). The
    /// node routes each other Node's `spec.podCIDRs` through that host's InternalIP (VPC route
    /// mode) and leaves traffic to it unmasqueraded. Its own `spec.podCIDRs` are its --pod-cidr,
    /// or, without one, the block control allocates (control: given this, it allocates a /24 of
    /// it to each Node that brings none); --cluster-dns then defaults to its first address.
    #[arg(long = "cluster-cidr", conflicts_with = "cni_conf")]
    pub cluster_cidrs: Vec<ipnet::Ipv4Net>,
    /// With --pod-cidr: TCP between two pods goes from socket to socket (eBPF sockops and
    /// sk_msg), skipping TCP/IP and the veths. Off by default: a blocking read on a socket
    /// that has shut down its sending side can end in EAGAIN (see eni-cni's README).
    #[arg(long, requires = "pod_cidrs")]
    pub socket_acceleration: bool,
    /// Where CNI plugin binaries are looked for.
    #[arg(long, default_values = ["/usr/lib/cni", "/opt/cni/bin"])]
    pub cni_bin_dir: Vec<PathBuf>,
    /// The cluster DNS server written into pods' resolv.conf (dnsPolicy ClusterFirst).
    #[arg(long)]
    pub cluster_dns: Option<String>,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// A registry to reach over plain HTTP (repeatable; loopback registries always are).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// A registry's mirror, `<registry>=<http|https>://<host>[:<port>]` (repeatable; a registry's
    /// mirrors are tried in the order given, then the registry itself), as containerd's
    /// hosts.toml: `--registry-mirror docker.io=http://127.0.0.1:5000`
    #[arg(long = "registry-mirror")]
    pub registry_mirrors: Vec<nodeless_sandbox_node::image::Mirror>,
    /// The first restart back-off of a crashing container (doubles up to 5 minutes).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub restart_backoff: Duration,
    /// How long the node's Lease lasts; the node renews it every quarter of this, and control
    /// takes a node whose Lease lapsed for lost (tainted unreachable, its pods evicted).
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    pub node_lease_duration: Duration,
    /// Run pods without a user namespace each (root in a pod is then root on the node), for
    /// kernels without user namespaces or idmapped mounts; pods that ask for one
    /// (`hostUsers: false`) fail.
    #[arg(long)]
    pub no_user_namespaces: bool,
    /// Sandboxes (namespaces with their network attached) kept made ahead of their pods, so a
    /// new pod skips that step; refilled in the background after each is taken. 0 for none
    #[arg(long, default_value_t = 2)]
    pub warm_sandboxes: usize,
    /// QEMU for microVM pods (RuntimeClass handler `microvm`); default: qemu-system-x86_64 on PATH.
    #[arg(long)]
    pub vm_qemu: Option<PathBuf>,
    /// The guest kernel of microVM pods (`vmlinuz-<release>`, modules in /lib/modules/<release>);
    /// default: the newest in /boot (Debian's linux-image-amd64).
    #[arg(long)]
    pub vm_kernel: Option<PathBuf>,
    /// The statically linked guest agent (`nodeless-guest-agent`); default: beside this binary,
    /// or target/guest/<profile>/ as scripts/up builds it.
    #[arg(long)]
    pub vm_agent: Option<PathBuf>,
    /// A CSI driver on this node, `NAME=unix:///path.sock` (repeatable), called as kubelet calls
    /// CSI drivers for pods' claims. `up` adds the disk driver it runs.
    #[arg(long = "csi-driver", value_parser = parse_csi_driver)]
    pub csi_drivers: Vec<(String, String)>,
}

/// `NAME=ENDPOINT` of --csi-driver.
fn parse_csi_driver(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, endpoint)) if !name.is_empty() && !endpoint.is_empty() => {
            Ok((name.to_string(), endpoint.to_string()))
        }
        _ => Err(format!(
            "{s:?}: expected NAME=ENDPOINT, e.g. disk.csi.nodeless.io=unix:///run/disk.sock"
        )),
    }
}

/// Where the node keeps images and pods under a data directory.
pub fn node_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("node")
}

fn find_runtime(name: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(name);
    if p.components().count() > 1 {
        return Ok(p.to_path_buf());
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
    {
        let c = dir.join(name);
        if c.exists() {
            return Ok(c);
        }
    }
    anyhow::bail!("the OCI runtime {name:?} is not installed (apt-get install {name})")
}

/// The runtime binary for `--runtime`. crun refuses every container on a cgroups v1 hybrid host
/// whose v2 hierarchy still holds a controller, so for crun (and `auto`, which prefers it as the
/// faster of the two) such controllers are first given v1 hierarchies.
fn choose_runtime(name: &str) -> anyhow::Result<PathBuf> {
    use nodeless_sandbox_node::cgroups;
    let wants_crun = name == "auto" || Path::new(name).file_name().is_some_and(|f| f == "crun");
    if wants_crun && !cgroups::crun_supported(&cgroups::layout()) {
        match cgroups::bind_v2_controllers() {
            Ok(moved) => {
                tracing::info!(controllers = %moved.join(","), "gave the controllers left on the cgroups v2 hierarchy their own v1 hierarchies under /sys/fs/cgroup, so crun can run")
            }
            Err(e) if name == "auto" => tracing::warn!("crun cannot run on this cgroup layout ({e}); using runc"),
            Err(e) => anyhow::bail!("crun cannot run on this hybrid cgroup layout: {e}"),
        }
    }
    if name != "auto" {
        return find_runtime(name);
    }
    if cgroups::crun_supported(&cgroups::layout())
        && let Ok(crun) = find_runtime("crun")
    {
        return Ok(crun);
    }
    find_runtime("runc").context("neither crun nor runc is installed (apt-get install crun runc)")
}

/// The kubelet API's certificate and the client it accepts: from the flags, or issued from the
/// cluster CA under the data directory for the node's name and the address control dials.
fn kubelet_tls(args: &NodeArgs, data_dir: &Path, name: &str, host_ip: &str) -> anyhow::Result<KubeletTls> {
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let client_names = args.kubelet_client_names.clone();
    if let (Some(cert), Some(key), Some(ca)) = (&args.kubelet_cert, &args.kubelet_key, &args.kubelet_client_ca) {
        return Ok(KubeletTls {
            cert_chain_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: read(ca)?,
            client_names,
        });
    }
    let pki = data_dir.join("pki");
    anyhow::ensure!(
        pki.join("ca.key").exists(),
        "the kubelet API needs a certificate: pass --kubelet-cert, --kubelet-key and --kubelet-client-ca, or give the node the --data-dir of its control plane ({} holds no cluster CA)",
        pki.display()
    );
    let issued = nodeless_control::tls::issue_kubelet_serving(&pki, name, &[host_ip.to_string()])
        .context("issuing the kubelet API's certificate")?;
    Ok(KubeletTls {
        cert_chain_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        client_ca_pem: read(&pki.join("ca.crt"))?,
        client_names,
    })
}

fn shim_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let shim = exe.with_file_name("nodeless-shim");
    anyhow::ensure!(
        shim.exists(),
        "nodeless-shim is missing beside {} (cargo build --bins builds both)",
        exe.display()
    );
    Ok(shim)
}

/// A running node and, with --pod-cidr, the eni-cni pod network it runs.
pub struct StartedNode {
    pub node: RunningNode,
    pub network: Option<nodeless_eni_cni::node::NodeNetwork>,
    /// The cgroup the node's pods run under, removed at stop when no pod is left in it.
    cgroup_parent: String,
    /// Held while the node runs (see [`lock_run_dir`]).
    _run_lock: nix::fcntl::Flock<std::fs::File>,
}

/// Take the node's run directory (`/run/nodeless/<node>`: its supervisor's socket, the pods'
/// namespaces and bundles, eni-cni's pool socket, the warm sandboxes) for this process alone.
/// Two nodes of one name on one host, say two `nodeless up` with different data directories,
/// would share all of it and undo each other's pods; the second is refused, naming the first.
fn lock_run_dir(run_dir: &Path, name: &str) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::{Seek, Write};
    let path = run_dir.join("node.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)?;
            lock.rewind()?;
            writeln!(lock, "{}", std::process::id())?;
            Ok(lock)
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "another node named {name} runs on this host (pid {}, holding {}): give this one another --node-name",
                holder.trim(),
                path.display()
            )
        }
        Err((_, e)) => Err(anyhow::anyhow!("locking {}: {e}", path.display())),
    }
}

impl StartedNode {
    pub async fn stop(self) {
        self.node.stop().await;
        if let Some(n) = self.network {
            n.stop().await;
        }
        nodeless_sandbox_node::cgroups::remove_empty(&self.cgroup_parent);
    }
}

/// The Node's name: --node-name, else `nodeless-<hostname>`.
pub fn node_name(args: &NodeArgs) -> String {
    args.node_name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "local".into());
        format!("nodeless-{}", host.trim().to_lowercase())
    })
}

/// A node given --cluster-cidr but no --pod-cidr: register its Node early and wait for control
/// to allocate its block, then take it as --pod-cidr (and its first address as --cluster-dns).
pub async fn await_pod_cidr(args: &mut NodeArgs, client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    if !args.pod_cidrs.is_empty() || args.cluster_cidrs.is_empty() {
        return Ok(());
    }
    let name = node_name(args);
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let stub: Node =
        serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))?;
    match nodes.create(&kube::api::PostParams::default(), &stub).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context("registering the Node to get its pod CIDR"),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let node = nodes.get(&name).await.context("reading the Node's pod CIDR")?;
        let cidr = node
            .spec
            .and_then(|s| s.pod_cidrs.and_then(|c| c.into_iter().next()).or(s.pod_cidr));
        if let Some(cidr) = cidr {
            let net: ipnet::Ipv4Net = cidr.parse().with_context(|| format!("the Node's podCIDR {cidr}"))?;
            args.pod_cidrs = vec![net];
            if args.cluster_dns.is_none() {
                args.cluster_dns = net.hosts().next().map(|a| a.to_string());
            }
            tracing::info!(node = %name, cidr = %net, "pod CIDR from control");
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "control allocated no pod CIDR to Node {name} within 60 s (is control started with --cluster-cidr?)"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The address control dials the kubelet API at: --kubelet-listen's, or loopback.
pub fn host_ip(args: &NodeArgs) -> String {
    if args.kubelet_listen.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        args.kubelet_listen.ip().to_string()
    }
}

/// Start the node with `client`; `kubelet` is the kubelet API's certificate when the host joined
/// with a bootstrap token (`crate::join`), else it comes from the flags or the local CA.
pub async fn start_node(
    args: &NodeArgs,
    data_dir: &Path,
    client: kube::Client,
    kubelet: Option<KubeletTls>,
) -> anyhow::Result<StartedNode> {
    anyhow::ensure!(nix_is_root(), "the node needs root (namespaces, mounts and cgroups)");
    let name = node_name(args);
    // Before anything is made in them: the data and run directories are the node's alone.
    // (0711 with user namespaces: the pods' ranges pass through, see `private`.)
    let userns = !args.no_user_namespaces;
    nodeless_sandbox_node::private::dir_for_pods(data_dir, userns)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let run_base = Path::new("/run/nodeless");
    match rundir::keep_in_memory(run_base) {
        Ok(RunDir::Mounted) => {
            tracing::info!(dir = %run_base.display(), "/run is on a disk: mounted a tmpfs for the runtime's state")
        }
        Ok(RunDir::LeftOnDisk) => {
            tracing::warn!(dir = %run_base.display(), "the runtime's state stays on a disk (the directory is not empty): container starts are slower there")
        }
        Ok(RunDir::InMemory) => {}
        Err(e) => tracing::warn!(dir = %run_base.display(), error = %e, "could not keep the runtime's state in memory"),
    }
    let run_dir = run_base.join(&name);
    for d in [run_base, run_dir.as_path()] {
        nodeless_sandbox_node::private::dir_for_pods(d, userns).with_context(|| format!("creating {}", d.display()))?;
    }
    let run_lock = lock_run_dir(&run_dir, &name)?;
    // The runtime resolves bundle paths itself: everything the node hands it is absolute.
    let dir = std::path::absolute(node_dir(data_dir))?;
    let host_ip = host_ip(args);
    let tls = match kubelet {
        Some(joined) => KubeletTls {
            client_names: args.kubelet_client_names.clone(),
            ..joined
        },
        None => kubelet_tls(args, data_dir, &name, &host_ip)?,
    };
    let runtime_identity = RuntimeIdentity {
        runtime: choose_runtime(&args.runtime)?,
        root: run_dir.join("runtime"),
    };
    let keeper = Arc::new(Keeper::new(
        shim_path()?,
        run_dir.join("keeper.sock"),
        runtime_identity.clone(),
    ));
    let runtime = Arc::new(OciRuntime::new(
        runtime_identity.runtime,
        runtime_identity.root,
        keeper.clone(),
    ));
    let mut pod_network = None;
    let network: Arc<dyn Network> = match &args.cni_conf {
        Some(conf) => Arc::new(Cni::load(conf, args.cni_bin_dir.clone(), dir.join("cni"))?),
        None if !args.pod_cidrs.is_empty() => {
            let dns = args
                .cluster_dns
                .as_deref()
                .map(str::parse::<std::net::Ipv4Addr>)
                .transpose()
                .context("--cluster-dns with --pod-cidr must be an IPv4 address")?;
            let balancing = nodeless_eni_cni::node::ServiceBalancing {
                client: client.clone(),
                cgroup_parent: nodeless_sandbox_node::node::cgroup_parent(&name),
            };
            let net = nodeless_eni_cni::node::start(
                &name,
                &dir.join("eni"),
                &run_dir.join("eni.sock"),
                args.pod_cidrs.clone(),
                args.cluster_cidrs.clone(),
                dns,
                Some(balancing),
                args.socket_acceleration,
            )
            .await
            .context("starting the eni-cni pod network")?;
            // The plugin binary sits beside ours.
            let exe_dir = std::env::current_exe()?
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            for bin in ["eni-cni", "eni-cnid"] {
                anyhow::ensure!(
                    exe_dir.join(bin).exists(),
                    "{bin} is missing beside {} (cargo build --bins builds it)",
                    exe_dir.display()
                );
            }
            let mut bins = vec![exe_dir];
            bins.extend(args.cni_bin_dir.iter().cloned());
            let cni = Cni::load(&net.conflist, bins, dir.join("cni"));
            pod_network = Some(net);
            match cni {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    if let Some(n) = pod_network.take() {
                        n.stop().await;
                    }
                    return Err(e.into());
                }
            }
        }
        None => Arc::new(LoopbackOnly),
    };
    let cgroup_parent = nodeless_sandbox_node::node::cgroup_parent(&name);
    let cfg = NodeConfig {
        name,
        data_dir: dir,
        run_dir,
        runtime,
        network,
        listen: args.kubelet_listen,
        tls,
        host_ip,
        cluster_dns: args.cluster_dns.clone(),
        cluster_domain: args.cluster_domain.clone(),
        backoff_base: args.restart_backoff,
        lease_duration: args.node_lease_duration,
        pod_cidrs: args.pod_cidrs.iter().map(ToString::to_string).collect(),
        backoff_max: Duration::from_secs(300),
        pull: nodeless_sandbox_node::image::PullConfig {
            insecure: args.insecure_registries.clone(),
            mirrors: args.registry_mirrors.clone(),
        },
        keeper,
        user_namespaces: !args.no_user_namespaces,
        warm_sandboxes: args.warm_sandboxes,
        microvm: nodeless_sandbox_node::vm::MicroVmConfig {
            qemu: args.vm_qemu.clone(),
            kernel: args.vm_kernel.clone(),
            agent: args.vm_agent.clone(),
        },
        metrics_collectors: {
            let mut c = pod_network.as_ref().map(|n| n.collectors()).unwrap_or_default();
            // The FUSE drivers `up` runs keep their mounts' records under `<data>/csi/<name>`.
            let mut fuse = Vec::new();
            for (driver, dir) in [
                (nodeless_volumes::OSS_DRIVER, "oss"),
                (nodeless_volumes::NAS_DRIVER, "nas"),
            ] {
                if args.csi_drivers.iter().any(|(d, _)| d == driver) {
                    fuse.push((driver.to_string(), std::path::absolute(data_dir.join("csi").join(dir))?));
                }
            }
            if !fuse.is_empty() {
                c.push(Box::new(nodeless_volumes::fuse::metrics::FuseCollector {
                    drivers: fuse,
                }));
            }
            c
        },
        csi_drivers: args.csi_drivers.iter().cloned().collect(),
    };
    match nodeless_sandbox_node::node::start(cfg, client).await {
        Ok(node) => Ok(StartedNode {
            node,
            _run_lock: run_lock,
            network: pod_network,
            cgroup_parent,
        }),
        Err(e) => {
            if let Some(n) = pod_network {
                n.stop().await;
            }
            Err(e)
        }
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Write a file only its owner may read (a kubeconfig, a key), durably.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    nodeless_control::private::write(path, contents.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// A client for a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc =
        kube::config::Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// A client for a kubeconfig held in memory.
pub async fn client_from_yaml(yaml: &str) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::from_yaml(yaml)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout directory, an OCI archive or a `docker save` tar.
    Import {
        path: PathBuf,
        /// A reference to give the image (needed when the archive names none).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images in the node's store.
    Ls,
    /// Remove an image by reference or ID.
    Rm { reference: String },
}

/// Import the sample images (`nodeless.local/busybox:1`, `nodeless.local/echo:1`, which
/// `examples/` runs) into the node's store under `data_dir` where it lacks them, built from
/// busybox-static and the `echo-server` installed beside this binary. What was imported, or
/// why not.
pub fn import_samples(data_dir: &Path) -> anyhow::Result<Vec<String>> {
    use nodeless_sandbox_node::image::samples;
    let store = ImageStore::open(node_dir(data_dir).join("images"))?;
    let held: Vec<String> = store
        .list()?
        .iter()
        .flat_map(|r| r.references.iter().map(|x| reference::short(x).to_string()))
        .collect();
    let scratch = data_dir.join("samples.tmp");
    let _ = std::fs::remove_dir_all(&scratch);
    let mut said = Vec::new();
    let echo_bin = std::env::current_exe()?.with_file_name("echo-server");
    type Build<'a> = Box<dyn Fn(&Path) -> anyhow::Result<PathBuf> + 'a>;
    let builds: [(&str, Build<'_>); 2] = [
        (samples::BUSYBOX, Box::new(samples::busybox_layout)),
        (
            samples::ECHO,
            Box::new(|dir: &Path| {
                anyhow::ensure!(
                    echo_bin.is_file(),
                    "no echo-server beside {}",
                    echo_bin.with_file_name("nodeless").display()
                );
                samples::echo_layout(dir, &echo_bin)
            }),
        ),
    ];
    for (name, build) in builds {
        if held.iter().any(|h| h == name) {
            continue;
        }
        let imported =
            build(&scratch.join(name.replace(['/', ':'], "_"))).and_then(|layout| Ok(store.import(&layout, None)?));
        said.push(match imported {
            Ok(_) => format!("imported the sample image {name}"),
            Err(e) => format!("no sample image {name}: {e:#}"),
        });
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(said)
}

pub fn image(cmd: ImageCommand, data_dir: &Path) -> anyhow::Result<()> {
    // A node with user namespaces made it searchable (0711) for its pods: keep that.
    let searchable = std::fs::metadata(data_dir).is_ok_and(|m| {
        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777
            == nodeless_sandbox_node::private::TRAVERSE_MODE
    });
    if !searchable {
        nodeless_sandbox_node::private::dir(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    }
    let store = ImageStore::open(node_dir(data_dir).join("images"))?;
    match cmd {
        ImageCommand::Import { path, name } => {
            for r in store.import(&path, name.as_deref())? {
                let refs: Vec<&str> = r.references.iter().map(|x| reference::short(x)).collect();
                println!(
                    "imported {} {}",
                    &r.id[7..19],
                    if refs.is_empty() {
                        "<untagged: use --name>".to_string()
                    } else {
                        refs.join(" ")
                    }
                );
            }
        }
        ImageCommand::Ls => {
            println!("{:<40} {:<14} {:>10}", "REFERENCE", "IMAGE ID", "SIZE");
            for r in store.list()? {
                let refs = if r.references.is_empty() {
                    vec!["<none>".to_string()]
                } else {
                    r.references.clone()
                };
                for reference in refs {
                    println!(
                        "{:<40} {:<14} {:>9.1}M",
                        reference::short(&reference),
                        &r.id[7..19],
                        r.size as f64 / 1e6
                    );
                }
            }
        }
        ImageCommand::Rm { reference } => {
            let r = store.remove(&reference)?;
            println!("removed {} ({})", reference, &r.id[7..19]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_second_node_of_the_same_name_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::lock_run_dir(dir.path(), "n1").unwrap();
        let e = super::lock_run_dir(dir.path(), "n1").unwrap_err().to_string();
        assert!(
            e.contains("another node named n1 runs on this host")
                && e.contains(&format!("pid {}", std::process::id()))
                && e.contains("--node-name"),
            "{e}"
        );
        drop(first);
        super::lock_run_dir(dir.path(), "n1").expect("free once the first is gone");
    }

    #[test]
    fn the_node_accepts_the_client_name_control_presents() {
        assert_eq!(
            nodeless_sandbox_node::kubelet_tls::DEFAULT_CLIENT_NAME,
            nodeless_control::tls::KUBELET_CLIENT_NAME
        );
    }
}
