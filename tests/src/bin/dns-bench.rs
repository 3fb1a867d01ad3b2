//! DNS benchmark: Nodeless's cluster DNS and unbound, in one run, on the same cores, driven by
//! the same dnsperf load, with the ratios printed:
//!
//! - cluster names: N Services answered by Nodeless from the cluster zone, against the same
//!   names as unbound `local-data`;
//! - cached forwarded names: N names of a zone served by an upstream (a third unbound, the
//!   authority), asked through Nodeless's forwarding cache and through unbound as a forwarding
//!   cache, both warmed first.
//!
//! dnsperf runs on the same cores and takes its share of them, so beside the rates the bench
//! prints each server's CPU time per query (from /proc/<pid>/stat), the cost that does not
//! depend on how the cores were shared.
//!
//!     cargo run --release -p nodeless-tests --bin dns-bench
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use nodeless_tests::{Nodeless, cpu_seconds, free_port};

#[derive(Parser)]
struct Args {
    /// Names of each kind.
    #[arg(long, default_value_t = 1000)]
    names: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// dnsperf clients (sockets).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Queries each dnsperf client keeps outstanding.
    #[arg(long, default_value_t = 50)]
    outstanding: usize,
}

struct Unbound {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Unbound {
    /// An unbound on a free loopback port with `threads` threads and this extra configuration.
    fn start(threads: usize, extra: &str) -> Result<Unbound> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let conf = dir.path().join("unbound.conf");
        std::fs::write(
            &conf,
            format!(
                "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  verbosity: 0\n  do-ip6: no\n  num-threads: {threads}\n  so-reuseport: yes\n  access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: no\n  msg-cache-size: 64m\n  rrset-cache-size: 128m\n  outgoing-range: 8192\n  num-queries-per-thread: 4096\n{extra}",
                d = dir.path().display()
            ),
        )?;
        let child = Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("unbound (apt-get install unbound)")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let u = Unbound { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let out = Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "+time=1",
                    "+tries=1",
                    "+short",
                    "version.bind",
                    "CH",
                    "TXT",
                ])
                .output()?;
            if out.status.success() {
                return Ok(u);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("unbound did not start on {}", u.addr)
    }
}

impl Unbound {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default)]
struct Perf {
    qps: f64,
    lost: u64,
    sent: u64,
    completed: u64,
}

fn dnsperf(server: SocketAddr, queries: &std::path::Path, seconds: u64, clients: usize, args_q: usize) -> Result<Perf> {
    let out = Command::new("dnsperf")
        .args(["-s", &server.ip().to_string(), "-p", &server.port().to_string(), "-d"])
        .arg(queries)
        .args([
            "-l",
            &seconds.to_string(),
            "-c",
            &clients.to_string(),
            "-T",
            "1",
            "-q",
            &args_q.to_string(),
            "-t",
            "2",
        ])
        .output()
        .context("dnsperf (apt-get install dnsperf)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
    };
    let perf = Perf {
        qps: field("Queries per second:").and_then(|v| v.parse().ok()).unwrap_or(0.0),
        lost: field("Queries lost:").and_then(|v| v.parse().ok()).unwrap_or(u64::MAX),
        sent: field("Queries sent:").and_then(|v| v.parse().ok()).unwrap_or(0),
        completed: field("Queries completed:").and_then(|v| v.parse().ok()).unwrap_or(0),
    };
    if perf.sent == 0 {
        bail!("dnsperf: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let completed = perf.completed;
    let noerror = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Response codes:"))
        .unwrap_or("")
        .to_string();
    anyhow::ensure!(
        noerror.contains("NOERROR") && !noerror.contains("SERVFAIL") && !noerror.contains("NXDOMAIN"),
        "unexpected response codes from {server}: {noerror} ({completed} completed)"
    );
    Ok(perf)
}

fn dig_ok(server: SocketAddr, name: &str) -> bool {
    Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            "+time=1",
            "+tries=1",
            "+short",
            name,
            "A",
        ])
        .output()
        .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let work = tempfile::tempdir()?;

    // The authority for forwarded names.
    let mut authority_data = String::from("  local-zone: \"fwd.test.\" static\n");
    for i in 0..args.names {
        authority_data.push_str(&format!(
            "  local-data: \"n{i}.fwd.test. 3600 IN A 192.0.2.{}\"\n",
            i % 250 + 1
        ));
    }
    let authority = Unbound::start(1, &authority_data)?;

    // Nodeless: control plane (no node) and DNS forwarding to the authority.
    let upstream = authority.addr.to_string();
    let n = Nodeless::start_with(&["--dns-upstream", &upstream])?;
    let ours = n.dns_addr()?;
    let client = n.client().await?;
    let api: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::namespaced(client, "default");
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for i in 0..args.names {
        let (api, sem) = (api.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("svc{i}")}, "spec": {"ports": [{"name": "http", "port": 80}]}}))?;
            api.create(&kube::api::PostParams::default(), &svc).await?;
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let last = format!("svc{}.default.svc.cluster.local", args.names - 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dig_ok(ours, &last) {
        anyhow::ensure!(Instant::now() < deadline, "nodeless DNS never served {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // unbound, the peer: the same cluster names as local data, and a forwarding cache.
    let services = api.list(&Default::default()).await?;
    let mut peer_conf = String::from("  local-zone: \"cluster.local.\" static\n");
    for s in &services.items {
        let (Some(name), Some(ip)) = (
            s.metadata.name.as_deref(),
            s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        ) else {
            continue;
        };
        peer_conf.push_str(&format!(
            "  local-data: \"{name}.default.svc.cluster.local. 5 IN A {ip}\"\n"
        ));
    }
    // unbound answers the special-use `test.` itself (RFC 6761) unless told not to.
    peer_conf.push_str("  local-zone: \"test.\" nodefault\n");
    peer_conf.push_str(&format!(
        "forward-zone:\n  name: \"fwd.test.\"\n  forward-addr: {}@{}\n",
        authority.addr.ip(),
        authority.addr.port()
    ));
    let peer = Unbound::start(cores, &peer_conf)?;

    let cluster_q = work.path().join("cluster.txt");
    let forward_q = work.path().join("forward.txt");
    std::fs::write(
        &cluster_q,
        (0..args.names)
            .map(|i| format!("svc{i}.default.svc.cluster.local A\n"))
            .collect::<String>(),
    )?;
    std::fs::write(
        &forward_q,
        (0..args.names)
            .map(|i| format!("n{i}.fwd.test A\n"))
            .collect::<String>(),
    )?;

    // Warm both caches with every forwarded name.
    for server in [ours, peer.addr] {
        dnsperf(server, &forward_q, 2, 1, args.outstanding)?;
    }

    println!(
        "DNS benchmark: {} names of each kind, dnsperf {} s x {} clients x {} outstanding, {} cores shared by everything (unbound with num-threads {cores}; nodeless with {cores} runtime threads)",
        args.names, args.seconds, args.clients, args.outstanding, cores
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8} {:>14}",
        "", "nodeless", "unbound", "ratio", "lost (n / u)"
    );
    let our_pid = n.pid().context("nodeless is not running")?;
    let mut costs = Vec::new();
    for (label, file) in [("cluster names", &cluster_q), ("cached forwarded names", &forward_q)] {
        let measure = |server: SocketAddr, pid: u32| -> Result<(Perf, f64)> {
            let before = cpu_seconds(pid)?;
            let perf = dnsperf(server, file, args.seconds, args.clients, args.outstanding)?;
            let cpu = cpu_seconds(pid)? - before;
            // Queries answered per second of the server's own CPU time.
            let per_cpu = perf.completed as f64 / cpu.max(0.01);
            Ok((perf, per_cpu))
        };
        let (a, a_cpu) = measure(ours, our_pid)?;
        let (b, b_cpu) = measure(peer.addr, peer.pid())?;
        println!(
            "{:<34} {:>12.0} {:>12.0} {:>7.2}x {:>8} / {}",
            format!("{label} (q/s)"),
            a.qps,
            b.qps,
            a.qps / b.qps.max(1.0),
            a.lost,
            b.lost
        );
        costs.push((label, a_cpu, b_cpu));
    }
    for (label, a, b) in costs {
        println!(
            "{:<34} {:>12.0} {:>12.0} {:>7.2}x",
            format!("{label} (q per CPU-s)"),
            a,
            b,
            a / b.max(1.0)
        );
    }
    println!(
        "(ratio > 1 means nodeless is faster; both answer every query from memory; q per CPU-s is queries answered per second of the server's own CPU time, dnsperf's share of the cores left out)"
    );
    Ok(())
}
