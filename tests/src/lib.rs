//! Test support for black-box tests: run the real `nodeless` binary, drive it with the real
//! `kubectl` and with `kube` clients, and stand in for a virtual node's kubelet where a test
//! needs pods to become Ready.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where kubectl binaries for each minor version live on these machines.
const KUBECTL_DIR: &str = "/usr/lib/google-cloud-sdk/bin";

/// The newest and the oldest kubectl the project supports.
pub const KUBECTL_VERSIONS: [&str; 2] = ["1.33", "1.27"];

/// Path of `kubectl.<version>`, or the default `kubectl` when that one is missing.
pub fn kubectl_path(version: &str) -> PathBuf {
    let p = Path::new(KUBECTL_DIR).join(format!("kubectl.{version}"));
    if p.exists() { p } else { PathBuf::from("kubectl") }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The `nodeless` binary, built on demand (the test binary cannot depend on another package's
/// binary target directly).
pub fn nodeless_binary() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<std::result::Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let release = std::env::current_exe()
                .ok()
                .is_some_and(|p| p.components().any(|c| c.as_os_str() == "release"));
            let mut cmd = Command::new(cargo);
            cmd.current_dir(workspace_root()).args([
                "build",
                "-q",
                "-p",
                "nodeless",
                "-p",
                "nodeless-sandbox-node",
                "-p",
                "nodeless-eni-cni",
                "-p",
                "nodeless-ingress-l7",
                "-p",
                "nodeless-tests",
                "--bins",
            ]);
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
            if !status.success() {
                return Err("building the nodeless binary failed".to_string());
            }
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| workspace_root().join("target"));
            Ok(target.join(if release { "release" } else { "debug" }).join("nodeless"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// (RSS, PSS) in KiB of a process, from its `smaps_rollup`; zeros if it is gone.
pub fn process_memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// The microVM pods' guest agent, linked statically as `scripts/up` builds it (into
/// `target/guest/release`, apart from the workspace's own build of it).
pub fn guest_agent_binary() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<std::result::Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let dir = workspace_root().join("target").join("guest");
            let status = Command::new(cargo)
                .current_dir(workspace_root())
                .env("CARGO_TARGET_DIR", &dir)
                .args([
                    "rustc",
                    "-q",
                    "--release",
                    "-p",
                    "nodeless-guest-agent",
                    "--bin",
                    "nodeless-guest-agent",
                    "--",
                    "-C",
                    "target-feature=+crt-static",
                ])
                .status()
                .map_err(|e| format!("running cargo: {e}"))?;
            if !status.success() {
                return Err("building the guest agent failed".to_string());
            }
            Ok(dir.join("release").join("nodeless-guest-agent"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Another binary of the workspace (built with `nodeless`), e.g. `eni-cni`.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    Ok(nodeless_binary()?.with_file_name(name))
}

/// A `nodeless up` process with its own data directory, on a free loopback port.
pub struct Nodeless {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub extra_args: Vec<String>,
    /// The virtual node's name, when this instance runs one.
    pub node: Option<String>,
    /// The pod network's bridge and subnet, when the node has one.
    pub net: Option<(String, String)>,
    /// Directories that live as long as the instance.
    keep: Vec<tempfile::TempDir>,
}

impl Nodeless {
    /// The control plane alone (tests that stand in for nodes with [`kubelet::FakeKubelet`]).
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("nodeless-e2e-").tempdir()?;
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.push("--no-node".into());
        let mut n = Nodeless {
            child: None,
            dir,
            port: 0,
            extra_args: args,
            node: None,
            net: None,
            keep: Vec::new(),
        };
        n.launch()?;
        Ok(n)
    }

    /// `nodeless up` with a real node (uniquely named, 1 s restart back-off) and the test
    /// images imported into its store. Needs root.
    pub fn start_with_node(extra: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("nodeless-e2e-").tempdir()?;
        searchable(dir.path())?;
        let node = format!(
            "e2e-{}",
            &dir.path()
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .replace(['_', '.'], "-")
                .to_lowercase()[13..]
        );
        let mut args: Vec<String> = vec![
            "--node-name".into(),
            node.clone(),
            "--restart-backoff".into(),
            "1s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut n = Nodeless {
            child: None,
            dir,
            port: 0,
            extra_args: args,
            node: Some(node),
            net: None,
            keep: Vec::new(),
        };
        n.import_test_images()?;
        n.launch()?;
        Ok(n)
    }

    /// Like [`Nodeless::start_with_node`], with pods on a network of their own: a bridge and a
    /// /24 made by Debian's reference CNI plugins (bridge + host-local) through the node's CNI
    /// seam, until eni-cni takes its place.
    pub fn start_with_node_network(extra: &[&str]) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = (std::process::id() + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 7) % 250;
        let bridge = format!("nlt{k}");
        let subnet = format!("10.252.{k}.0/24");
        let dir = tempfile::Builder::new().prefix("nodeless-net-").tempdir()?;
        let conf = dir.path().join("net.conflist");
        let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": format!("nodeless-test-{k}"), "plugins": [{
            "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "dataDir": dir.path().join("ipam"), "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}
        }]});
        std::fs::write(&conf, conflist.to_string())?;
        let conf_arg = conf.to_string_lossy().to_string();
        // Pods' resolv.conf names their gateway; cluster DNS serves there (bound before the
        // bridge exists).
        let gateway = format!("10.252.{k}.1");
        let mut args = vec!["--cni-conf", conf_arg.as_str(), "--cluster-dns", gateway.as_str()];
        args.extend_from_slice(extra);
        let mut n = Self::start_with_node(&args)?;
        n.net = Some((bridge, subnet));
        n.keep.push(dir);
        Ok(n)
    }

    /// Build the test images (once per test binary) and import them into this data directory.
    pub fn import_test_images(&self) -> Result<()> {
        for layout in test_image_layouts()? {
            self.nodeless(&["image", "import", &layout.to_string_lossy()])?;
        }
        Ok(())
    }

    /// Run a `nodeless` subcommand against this instance's data directory.
    pub fn nodeless(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(nodeless_binary()?)
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .output()?;
        if !out.status.success() {
            bail!("nodeless {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The node's runtime state directory.
    pub fn node_run_dir(&self) -> Option<PathBuf> {
        self.node.as_ref().map(|n| Path::new("/run/nodeless").join(n))
    }

    /// Remove whatever the node left (containers, mounts, namespaces, cgroups), so a failed
    /// test leaves the machine clean.
    fn clean_node(&self) {
        let Some(node) = &self.node else { return };
        clean_node_leftovers(node, &self.data_dir());
        // The pod network's egress rule, which a node stopped with pods still running keeps
        // (a restarted node adopts them).
        if let Some(cidr) = self
            .extra_args
            .iter()
            .position(|a| a == "--pod-cidr")
            .and_then(|i| self.extra_args.get(i + 1))
            .and_then(|c| c.parse::<ipnet::Ipv4Net>().ok())
        {
            let table = nodeless_eni_cni::snat::Snat::table_for(&[cidr]);
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", &table])
                .stderr(Stdio::null())
                .output();
        }
        if let Some((bridge, _)) = &self.net {
            let _ = Command::new("ip").args(["link", "del", bridge]).output();
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn viewer_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("viewer.kubeconfig")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What `up` does by default that a test does not ask for: the ingress on fixed ports (and
    /// the LoadBalancer pool on a fixed interface), the pod network on 10.66.0.0/16 as root, and
    /// the sample images (tests import their own first). A test that names the flag gets it.
    fn defaults_off(&self) -> Vec<&'static str> {
        let named = |flag: &str| self.extra_args.iter().any(|a| a == flag);
        let mut off = Vec::new();
        if !named("--ingress-http") {
            off.push("--no-ingress");
        }
        if !named("--pod-cidr") && !named("--cni-conf") && !named("--no-node") {
            off.push("--no-pod-network");
        }
        off.push("--no-sample-images");
        off
    }

    fn launch(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.kubeconfig());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nodeless.log"))?;
        let child = Command::new(nodeless_binary()?)
            .arg("up")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--viewer-kubeconfig")
            .arg(self.viewer_kubeconfig())
            .arg("--dns-listen")
            .arg("127.0.0.1:0")
            .arg("--dns-address-file")
            .arg(self.dir.path().join("dns.addr"))
            .arg("--dns-metrics")
            .arg("127.0.0.1:0")
            .args(self.defaults_off())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nodeless up")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(self.kubeconfig()) {
                if let Some(port) = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
                {
                    self.port = port.trim().parse()?;
                    return Ok(());
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("nodeless up exited with {status}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("nodeless up did not write its kubeconfig in 30 s: {}", self.log())
    }

    /// Where this instance's cluster DNS serves (UDP and TCP), once it does.
    pub fn dns_addr(&self) -> Result<std::net::SocketAddr> {
        self.dns_file_line(|l| l.parse().ok())
    }

    /// Where this instance's cluster DNS serves its Prometheus metrics.
    pub fn dns_metrics_addr(&self) -> Result<std::net::SocketAddr> {
        self.dns_file_line(|l| l.strip_prefix("metrics ").and_then(|a| a.parse().ok()))
    }

    /// The first line of `--dns-address-file` that `pick` reads, once DNS has written it.
    fn dns_file_line<T>(&self, pick: impl Fn(&str) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(self.dir.path().join("dns.addr")).unwrap_or_default();
            if let Some(v) = text.lines().find_map(|l| pick(l.trim())) {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("nodeless up did not start DNS in 30 s: {}", self.log())
    }

    /// The PID of the running `nodeless up`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nodeless.log")).unwrap_or_default()
    }

    /// Stop with SIGKILL (a crash) or SIGTERM (a clean stop).
    pub fn stop(&mut self, crash: bool) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let sig = if crash { "-KILL" } else { "-TERM" };
            Command::new("kill").arg(sig).arg(c.id().to_string()).status()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Start again on the same port and data directory.
    pub fn restart(&mut self, crash: bool) -> Result<()> {
        self.stop(crash)?;
        self.launch()
    }

    pub fn kubectl(&self, version: &str, args: &[&str]) -> Output {
        self.kubectl_with(version, &self.kubeconfig(), args, None)
    }

    pub fn kubectl_with(&self, version: &str, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(kubectl_path(version));
        cmd.env("KUBECONFIG", kubeconfig)
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("kubectl finishes")
    }

    /// Run kubectl and require success; returns stdout.
    pub fn kubectl_ok(&self, version: &str, args: &[&str]) -> String {
        let out = self.kubectl(version, args);
        assert!(
            out.status.success(),
            "kubectl {version} {args:?} failed:\nstdout: {}\nstderr: {}\nserver log tail: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 2000)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn client(&self) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig())?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }

    pub fn admin_token(&self) -> String {
        token_of(&self.kubeconfig())
    }

    pub fn viewer_token(&self) -> String {
        token_of(&self.viewer_kubeconfig())
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir().join("pki").join("ca.crt")).unwrap_or_default()
    }

    /// An HTTP client trusting the cluster CA, for raw API requests.
    pub fn http(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem()).expect("CA PEM");
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .expect("client")
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

fn token_of(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: ").map(|t| t.trim().to_string()))
        .unwrap_or_default()
}

/// Poll `f` every 100 ms until it holds; panic naming `what` after `secs` seconds.
/// A loopback port free for both UDP and TCP (bound, read back, released), for peers such as
/// unbound that take a port on their command line.
/// Let others search `dir` (0711), as a node's data directory's parents must be for pods in
/// user namespaces, whose unprivileged root mounts the pod's files from beneath it
/// (a temporary directory is 0700).
pub fn searchable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
}

/// A pod network for one `nodeless up --pod-cidr` of a test: a /24 and its first address (for
/// `--cluster-dns`), different for every call in this process (one counter for every test
/// file, so tests running side by side never share a network, its routes or its DNS address)
/// and, through the process id, most likely from another run's. Drawn from 10.245-10.249, which
/// no fixed address of a test uses.
pub struct PodNet {
    /// `10.x.y.`: what the network's addresses start with.
    pub prefix: String,
    pub cidr: String,
    pub dns: String,
    /// A number unique to this network (0..250), for a test's other per-run ranges.
    pub k: u32,
}

pub fn pod_net() -> PodNet {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = std::process::id().wrapping_mul(7) + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (second, k) = (245 + (n / 250) % 5, n % 250);
    let prefix = format!("10.{second}.{k}.");
    PodNet {
        cidr: format!("{prefix}0/24"),
        dns: format!("{prefix}1"),
        prefix,
        k,
    }
}

pub fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for: {what}");
}

pub fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
    &s[start..]
}

impl Drop for Nodeless {
    fn drop(&mut self) {
        let _ = self.stop(false);
        self.clean_node();
    }
}

/// The echo-server binary, built beside `nodeless` (by [`nodeless_binary`]).
pub fn echo_binary() -> Result<PathBuf> {
    let echo = nodeless_binary()?.with_file_name("echo-server");
    anyhow::ensure!(echo.exists(), "{} was not built", echo.display());
    Ok(echo)
}

/// Import the test images into the image store of a node whose data directory is `data_dir`,
/// with `nodeless image import` (for nodes a test starts by hand, not through [`Nodeless`]).
pub fn import_test_images(data_dir: &Path) -> Result<()> {
    let bin = nodeless_binary()?;
    for layout in test_image_layouts()? {
        let out = std::process::Command::new(&bin)
            .args(["image", "import"])
            .arg(&layout)
            .arg("--data-dir")
            .arg(data_dir)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "importing {}: {}",
            layout.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// OCI layouts of the test images, built once per process into `target/test-images/<echo
/// binary digest>` (kept between runs; a new echo binary makes a new directory).
pub fn test_image_layouts() -> Result<Vec<PathBuf>> {
    static BUILT: std::sync::OnceLock<std::result::Result<Vec<PathBuf>, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let build = || -> Result<Vec<PathBuf>> {
                use sha2::Digest;
                let echo = echo_binary()?;
                let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&echo)?));
                let base = nodeless_binary()?
                    .parent()
                    .and_then(Path::parent)
                    .unwrap_or(Path::new("target"))
                    .join("test-images");
                let dir = base.join(&digest[..16]);
                if !dir.join("echo/index.json").exists() {
                    // Built aside and renamed into place: a concurrent run sees all or nothing.
                    let tmp = base.join(format!("tmp-{}", std::process::id()));
                    images::busybox_layout(&tmp.join("busybox"))?;
                    images::echo_layout(&tmp.join("echo"), &echo)?;
                    if std::fs::rename(&tmp, &dir).is_err() {
                        let _ = std::fs::remove_dir_all(&tmp);
                    }
                }
                Ok(vec![dir.join("busybox"), dir.join("echo")])
            };
            build().map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The containers a node's runtime still knows, its supervisor's PIDs, and the removal of what a
/// stopped node left (containers, supervisor, mounts, namespaces, cgroups, bpf pins): the
/// node's own purge, which `nodeless down --purge` runs.
pub use nodeless_sandbox_node::purge::{runtime_containers, supervisor_pids as keeper_pids};

pub fn clean_node_leftovers(node: &str, data_dir: &Path) {
    for problem in nodeless_sandbox_node::purge::purge(node, data_dir) {
        eprintln!("cleaning node {node}: {problem}");
    }
    // The disk driver's loop devices (their mounts went with the node's purge).
    for problem in nodeless_volumes::purge::detach_loops_under(data_dir) {
        eprintln!("cleaning node {node}: {problem}");
    }
}

pub mod etcd;
pub mod fuse_bench;
pub mod hosts;
pub mod http3;
pub mod nfs;
pub mod ready;
pub mod s3;
pub mod traffic;

/// The addresses `ingress-l7` prints once listening ("ingress-l7: http on A, https and http3 on
/// B, metrics on C"), read from its piped stdout: HTTP, HTTPS, metrics.
pub fn ingress_addresses(child: &mut Child) -> Result<[std::net::SocketAddr; 3]> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("ingress-l7's stdout is not piped")?).read_line(&mut line)?;
    let addrs: Vec<std::net::SocketAddr> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    addrs
        .try_into()
        .map_err(|_| anyhow::anyhow!("ingress-l7 printed {line:?}"))
}
/// The sample images the tests run on (built by the node's own sample builder).
pub mod images {
    pub use nodeless_sandbox_node::image::samples::*;
}

pub mod kubelet;

/// A podman storage of a test's own (root, runroot, its own containers.conf), removed — mounts
/// included — even when the test fails.
pub struct PodmanStore {
    dir: tempfile::TempDir,
    /// A containers.conf for this store (CONTAINERS_CONF), if one was written.
    conf: Option<PathBuf>,
}

impl Default for PodmanStore {
    fn default() -> Self {
        Self::new()
    }
}

impl PodmanStore {
    pub fn new() -> PodmanStore {
        PodmanStore {
            dir: tempfile::Builder::new()
                .prefix("nodeless-podman-")
                .tempdir()
                .expect("a temporary directory"),
            conf: None,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Use this containers.conf text for every command.
    pub fn with_conf(mut self, text: &str) -> PodmanStore {
        let path = self.dir.path().join("containers.conf");
        std::fs::write(&path, text).expect("writing containers.conf");
        self.conf = Some(path);
        self
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        if let Some(conf) = &self.conf {
            c.env("CONTAINERS_CONF", conf);
        }
        c.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--events-backend", "none"]);
        c
    }

    /// Run podman; its stdout. Panics (with stderr) if it fails.
    pub fn podman(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .args(args)
            .output()
            .expect("podman (apt-get install podman)");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PodmanStore {
    fn drop(&mut self) {
        let _ = self.command().args(["rm", "-a", "-f", "-t", "0"]).output();
        let _ = self.command().args(["system", "reset", "-f"]).output();
        // podman's overlay driver bind-mounts its storage onto itself; that mount is ours to remove.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("root/overlay"))
            .output();
    }
}

/// The manifest of an echo pod `name` (labelled `app: <app>`, port `http` 8080, ready on
/// /ready, answering with its name).
pub fn echo_pod(name: &str, app: &str) -> String {
    use images::ECHO;
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {app}}}}}
spec:
  containers:
  - name: echo
    image: {ECHO}
    ports: [{{containerPort: 8080, name: http}}]
    env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
    readinessProbe: {{httpGet: {{path: /ready, port: http}}, periodSeconds: 1}}
"#
    )
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup/unified` on a hybrid host): the
/// node's own lookup.
pub fn cgroup2_root() -> Result<PathBuf> {
    nodeless_eni_cni::node::cgroup2_root().ok_or_else(|| anyhow::anyhow!("no cgroup v2 hierarchy is mounted"))
}

/// Manifests for an echo pod `echo-0` (labelled `app: <app>`, ready on /ready), a headless
/// Service `echo` in front of it, and a busybox pod `client` that sleeps.
pub fn echo_service_and_client(app: &str) -> String {
    let echo = echo_pod("echo-0", app);
    format!(
        r#"{echo}---
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  clusterIP: None
  selector: {{app: {app}}}
  ports: [{{name: http, port: 8080}}]
---
{}"#,
        client_pod()
    )
}

/// The manifest of a busybox pod `client` that sleeps (to exec commands in).
pub fn client_pod() -> String {
    use images::BUSYBOX;
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sleep, "3600"]}}
"#
    )
}

/// User plus system CPU time of a process (all its threads) so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let (user, system) = cpu_times(pid)?;
    Ok(user + system)
}

/// A process's CPU time so far, in seconds: in user space, and in the kernel.
pub fn cpu_times(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime, in USER_HZ: 100 on Linux.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) as f64 / 100.0;
    Ok((ticks(11), ticks(12)))
}

/// The ingress process, killed on drop.
pub struct IngressL7 {
    child: Child,
    pub http: std::net::SocketAddr,
    pub https: std::net::SocketAddr,
    pub metrics: std::net::SocketAddr,
    /// The interface the load balancer addresses go on, if it has a pool.
    pub lb_link: Option<String>,
}

impl IngressL7 {
    /// Started following `n`, with a load balancer pool of its own (`pool` on the interface
    /// `link`) when given.
    pub fn start(n: &Nodeless, lb: Option<(&str, &str)>) -> IngressL7 {
        Self::start_with(n, lb, &[])
    }

    /// [`IngressL7::start`] with more flags (`--internal-http ADDR`, say).
    pub fn start_with(n: &Nodeless, lb: Option<(&str, &str)>, extra: &[&str]) -> IngressL7 {
        // Its log, shown if it fails to start.
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(workspace_binary("ingress-l7").unwrap())
            .args(["--kubeconfig"])
            .arg(n.kubeconfig())
            .args([
                "--http",
                "127.0.0.1:0",
                "--https",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
                "--address",
                "127.0.0.1",
            ])
            .args(lb.map_or(Vec::new(), |(pool, link)| {
                vec!["--lb-pool", pool, "--lb-interface", link]
            }))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let [http, https, metrics] = match ingress_addresses(&mut child) {
            Ok(a) => a,
            Err(e) => panic!("{e}\n{}", std::fs::read_to_string(log.path()).unwrap_or_default()),
        };
        IngressL7 {
            child,
            http,
            https,
            metrics,
            lb_link: lb.map(|(_, link)| link.to_string()),
        }
    }

    /// SIGTERM, as a service manager stops it, and its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for IngressL7 {
    fn drop(&mut self) {
        if self.stop().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Whatever happened, the test's interface does not outlive it.
        if let Some(link) = &self.lb_link {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
    }
}
