//! Pod-to-pod traffic across hosts beside the same host, in one run: two hosts (network
//! namespaces on a bridge, a simulated VPC, as `tests/e2e/hosts.rs` makes them), each running
//! `nodeless node` with its slice of the pod network against one control plane; three pods, two
//! on host A and one on host B. From the first pod: TCP throughput (iperf3) and the 1-byte
//! request/response rate (two cores, then one) to its neighbour on host A, then to the pod on
//! host B (routed through host B's address, unmasqueraded), rounds taking turns, medians and the
//! cross-host/same-host ratio printed, and beside them the underlay alone (host A's namespace to
//! host B's). The traffic tools (iperf3: `apt-get install iperf3`) run in the pods' network
//! namespaces.
//!
//!     cargo build --release --bins && cargo run --release -p nodeless-tests --bin hosts-bench
//!
//! Everything it makes (the hosts, the bridge, the pods and what their nodes left) is removed at
//! the end, also when it fails.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use nodeless_tests::hosts::Vpc;
use nodeless_tests::{images, kubectl_path, nodeless_binary, traffic};

#[derive(Parser)]
struct Args {
    /// Seconds per throughput and request/response measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds, same-host and cross-host taking turns; medians are printed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Keep everything up this many seconds after measuring (to look at it by hand).
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Internal: serve 1-byte request/response on this port (run inside a pod's namespace).
    #[arg(long, hide = true)]
    rr_server: Option<u16>,
    /// Internal: run the request/response client against this address.
    #[arg(long, hide = true)]
    rr_client: Option<String>,
}

const CLUSTER_CIDR: &str = "10.249.0.0/16";

fn kubectl(kc: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(kubectl_path("1.33"))
        .env("KUBECONFIG", kc)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The hosts, control and the nodes' names and data: removed in that order on the way out.
struct World {
    vpc: Vpc,
    control: Option<std::process::Child>,
    nodes: Vec<(String, PathBuf)>,
}

impl Drop for World {
    fn drop(&mut self) {
        for h in &mut self.vpc.hosts {
            h.lose();
        }
        if let Some(mut c) = self.control.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (name, data) in &self.nodes {
            nodeless_tests::clean_node_leftovers(name, data);
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(done) = traffic::play_end(args.rr_server, args.rr_client.as_deref(), args.seconds) {
        return done;
    }
    anyhow::ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the hosts benchmark needs root"
    );
    let me = std::env::current_exe()?;
    let bin = nodeless_binary()?;
    let work = tempfile::Builder::new().prefix("nodeless-hosts-bench-").tempdir()?;
    nodeless_tests::searchable(work.path())?;
    let kc = work.path().join("kc");
    let control_data = work.path().join("control");
    let mut w = World {
        vpc: Vpc::new("b", 2)?,
        control: None,
        nodes: Vec::new(),
    };
    w.control = Some(
        Command::new(&bin)
            .args(["control", "--listen", &format!("{}:0", w.vpc.gateway())])
            .args(["--cluster-cidr", CLUSTER_CIDR])
            .arg("--data-dir")
            .arg(&control_data)
            .arg("--kubeconfig")
            .arg(&kc)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("control.log"))?)
            .spawn()?,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&kc).is_ok_and(|t| t.contains("server:")) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "control wrote no kubeconfig");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..2 {
        let name = format!("{}-{i}", w.vpc.hosts[i].netns);
        let data = work.path().join(format!("host{i}"));
        std::fs::create_dir_all(&data)?;
        w.nodes.push((name.clone(), data.clone()));
        nodeless_tests::import_test_images(&data)?;
        let addr = w.vpc.hosts[i].addr.clone();
        let issued = nodeless_control::tls::issue_kubelet_serving(
            &control_data.join("pki"),
            &name,
            std::slice::from_ref(&addr),
        )?;
        std::fs::write(data.join("kubelet.crt"), &issued.cert_pem)?;
        std::fs::write(data.join("kubelet.key"), &issued.key_pem)?;
        std::fs::copy(control_data.join("pki/ca.crt"), data.join("client-ca.crt"))?;
        let block = format!("10.249.{}.0/24", i + 1);
        let dns = format!("10.249.{}.1", i + 1);
        let mut cmd = w.vpc.hosts[i].command(&bin);
        cmd.args(["node", "--node-name", &name, "--kubeconfig"])
            .arg(&kc)
            .arg("--data-dir")
            .arg(&data)
            .args(["--kubelet-listen", &format!("{addr}:0")])
            .arg("--kubelet-cert")
            .arg(data.join("kubelet.crt"))
            .arg("--kubelet-key")
            .arg(data.join("kubelet.key"))
            .arg("--kubelet-client-ca")
            .arg(data.join("client-ca.crt"))
            .args([
                "--pod-cidr",
                &block,
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--cluster-dns",
                &dns,
            ])
            .args(["--dns-listen", "127.0.0.1:0"]);
        w.vpc.hosts[i].spawn(cmd, &work.path().join(format!("host{i}.log")))?;
    }
    // Two pods on host A, one on host B.
    let placed = [("a1", 0), ("a2", 0), ("b1", 1)];
    let mut yaml = String::new();
    for (pod, host) in placed {
        yaml += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: {}}}\n  containers:\n  - {{name: c, image: {}, command: [sleep, \"3600\"]}}\n",
            w.nodes[host].0,
            images::BUSYBOX
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while w.nodes.iter().any(|(n, _)| kubectl(&kc, &["get", "node", n]).is_err()) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the nodes did not register");
        std::thread::sleep(Duration::from_millis(300));
    }
    let file = work.path().join("pods.yaml");
    std::fs::write(&file, yaml)?;
    kubectl(&kc, &["apply", "-f", file.to_str().unwrap_or_default()])?;
    kubectl(
        &kc,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/a1",
            "pod/a2",
            "pod/b1",
            "--timeout=120s",
        ],
    )?;
    // Each pod's network namespace, held by its node's keeper.
    let mut ends = Vec::new();
    for (pod, host) in placed {
        let uid = kubectl(&kc, &["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"])?;
        let ip: Ipv4Addr = kubectl(&kc, &["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])?
            .parse()
            .context("pod IP")?;
        let ns =
            nodeless_sandbox_node::sandbox::PodNamespaces::at(format!("/run/nodeless/{}/ns/{uid}", w.nodes[host].0))
                .net();
        anyhow::ensure!(
            ns.exists(),
            "pod {pod}'s network namespace ({}) is not held",
            ns.display()
        );
        ends.push((ns, ip));
    }
    let inside = |ns: &Path| {
        let ns = ns.to_path_buf();
        move |program: &str| {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("--").arg(program);
            c
        }
    };
    let (a1, a2, b1) = (inside(&ends[0].0), inside(&ends[1].0), inside(&ends[2].0));
    // The underlay itself: host A's namespace to host B's over the bridge, no pod network.
    let host_ns = |i: usize| PathBuf::from(format!("/run/netns/{}", w.vpc.hosts[i].netns));
    let (ha, hb) = (inside(&host_ns(0)), inside(&host_ns(1)));
    let hb_ip: Ipv4Addr = w.vpc.hosts[1].addr.parse()?;
    let (mut same, mut cross, mut under) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        same.push(traffic::measure(&me, &a1, &a2, ends[1].1, args.seconds)?);
        cross.push(traffic::measure(&me, &a1, &b1, ends[2].1, args.seconds)?);
        under.push(traffic::measure(&me, &ha, &hb, hb_ip, args.seconds)?);
    }
    let (s, c, u) = (
        traffic::medians(&same),
        traffic::medians(&cross),
        traffic::medians(&under),
    );
    println!(
        "pod-to-pod across hosts (host A {} -> host B {}, routed through B's VPC address) beside the same host; {} rounds of {} s, medians",
        ends[0].1,
        ends[2].1,
        args.rounds.max(1),
        args.seconds
    );
    println!(
        "{:<36} {:>12} {:>12} {:>8} {:>14} {:>8}",
        "", "cross-host", "same-host", "ratio", "host-to-host", "ratio"
    );
    for (i, label) in [
        "pod-to-pod TCP (Gbit/s)",
        "request/response, two cores (/s)",
        "request/response, one core (/s)",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "{:<36} {:>12.2} {:>12.2} {:>7.2}x {:>14.2} {:>7.2}x",
            label,
            c[i],
            s[i],
            c[i] / s[i].max(1e-9),
            u[i],
            c[i] / u[i].max(1e-9)
        );
    }
    println!("(cross-host traffic leaves host A's pod network, crosses the bridge between the hosts' veths and enters");
    println!(
        " host B's; host-to-host is that underlay alone, between the hosts' own addresses, and its ratio is what the"
    );
    println!(" pod network costs on top of it. On real hosts the NICs and the wire between them add their own costs.)");
    if args.hold > 0 {
        for (pod, (ns, ip)) in ["a1", "a2", "b1"].iter().zip(&ends) {
            println!("holding {} s: pod {pod} {ip} in {}", args.hold, ns.display());
        }
        std::thread::sleep(Duration::from_secs(args.hold));
    }
    Ok(())
}
