//! CNI benchmark: eni-cni against Debian's reference `bridge` + `host-local` plugins, in one
//! run, on the same work, with the ratios printed:
//!
//! - ADD and DEL latency (each pod its own network namespace; the two plugins take turns, so
//!   the machine's noise falls on both);
//! - pod-to-pod TCP throughput (iperf3, 3 s) and TCP request/response rate (1-byte ping-pong
//!   over one connection, 3 s; client and server on two cores, then on one) between two pods
//!   of each network, in five rounds taking turns, medians printed. Each process is pinned to
//!   its core, the same for both networks.
//! - the same traffic between two pods of a third network, eni-cni with `socketAcceleration`
//!   (socket to socket through sockops and sk_msg), taking its turn in every round, against
//!   the same bridge figures.
//!
//!     cargo run --release -p nodeless-tests --bin cni-bench [-- --pods 100]
//!
//! Everything it makes (namespaces, the bridge, the pool's files) is removed at the end, also
//! when it fails.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use nodeless_tests::traffic;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Pods (ADD + DEL) per plugin.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Seconds per throughput and request/response measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds of the traffic measurements, the two networks taking turns; medians are printed.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Internal: serve 1-byte request/response on this port (run inside a pod).
    #[arg(long, hide = true)]
    rr_server: Option<u16>,
    /// Internal: run the request/response client against this address (run inside a pod).
    #[arg(long, hide = true)]
    rr_client: Option<String>,
}

struct Netns(String);

impl Netns {
    fn new(name: String) -> Result<Netns> {
        anyhow::ensure!(
            Command::new("ip").args(["netns", "add", &name]).status()?.success(),
            "ip netns add {name}"
        );
        Ok(Netns(name))
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

struct Cleanup {
    pool: Option<Child>,
    bridge: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut p) = self.pool.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

struct Plugin {
    label: &'static str,
    bin: PathBuf,
    cni_path: String,
    conf: Value,
}

impl Plugin {
    /// Run one verb; the time it took and the result.
    fn run(&self, command: &str, id: &str, netns: &str) -> Result<(Duration, Value)> {
        let start = Instant::now();
        let mut child = Command::new(&self.bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs([
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", &self.cni_path),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(self.conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let took = start.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("{} {command}: {text}", self.label);
        }
        Ok((
            took,
            if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text)?
            },
        ))
    }
}

/// Whether an ELF executable names a program interpreter (the dynamic loader).
fn dynamically_linked(path: &Path) -> Result<bool> {
    let elf = std::fs::read(path)?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let phoff = elf
        .get(0x20..0x28)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize);
    let (Some(phoff), Some(size), Some(count)) = (phoff, u16_at(0x36), u16_at(0x38)) else {
        bail!("{} is not an ELF executable", path.display())
    };
    const PT_INTERP: u32 = 3;
    Ok((0..count).any(|i| {
        elf.get(phoff + i * size..phoff + i * size + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == PT_INTERP)
    }))
}

fn pod_ip(result: &Value) -> Result<Ipv4Addr> {
    let a = result["ips"]
        .as_array()
        .and_then(|v| v.last())
        .and_then(|v| v["address"].as_str())
        .context("no address in the result")?;
    Ok(a.split('/').next().unwrap_or_default().parse()?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// The plugins take turns at each pod index, so the loops index two lists by position.
#[allow(clippy::needless_range_loop)]
fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(done) = traffic::play_end(args.rr_server, args.rr_client.as_deref(), args.seconds) {
        return done;
    }
    let me = std::env::current_exe()?;
    let eni = me.with_file_name("eni-cni");
    anyhow::ensure!(
        eni.exists() && eni.with_file_name("eni-cnid").exists(),
        "eni-cni or eni-cnid is missing beside {}: scripts/up builds them",
        eni.display()
    );
    anyhow::ensure!(
        Path::new("/usr/lib/cni/bridge").exists(),
        "the reference plugins are missing: apt-get install containernetworking-plugins"
    );
    let tag = std::process::id() % 10_000;
    let work = tempfile::tempdir()?;
    let socket = work.path().join("pool.sock");
    let pool = Command::new(&eni)
        .args(["pool", "--socket"])
        .arg(&socket)
        .arg("--state")
        .arg(work.path().join("pool.redb"))
        .args([
            "--cidr",
            "10.242.0.0/22",
            "--min-warm",
            "32",
            "--max-warm",
            "64",
            "--no-snat",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _cleanup = Cleanup {
        pool: Some(pool),
        bridge: format!("nlb{tag}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the pool never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let plugins = [
        Plugin {
            label: "eni-cni",
            bin: eni.clone(),
            cni_path: "/usr/lib/cni".into(),
            conf: json!({"cniVersion": "1.1.0", "name": format!("bench{tag}"), "type": "eni-cni", "pool": socket}),
        },
        Plugin {
            label: "bridge",
            bin: "/usr/lib/cni/bridge".into(),
            cni_path: "/usr/lib/cni".into(),
            conf: json!({"cniVersion": "1.0.0", "name": format!("benchbr{tag}"), "type": "bridge", "bridge": format!("nlb{tag}"), "isGateway": true,
                "ipam": {"type": "host-local", "dataDir": work.path().join("host-local"), "ranges": [[{"subnet": "10.243.0.0/22"}]], "routes": [{"dst": "0.0.0.0/0"}]}}),
        },
    ];
    // Namespaces first (not timed), then ADDs taking turns, then DELs taking turns.
    let mut pods: Vec<Vec<(Netns, String)>> = vec![Vec::new(), Vec::new()];
    for (k, list) in pods.iter_mut().enumerate() {
        for i in 0..args.pods {
            list.push((Netns::new(format!("nlb{tag}x{k}x{i}"))?, format!("bench{k}x{i}")));
        }
    }
    let mut add: Vec<Vec<Duration>> = vec![Vec::new(), Vec::new()];
    let mut ips: Vec<Vec<Ipv4Addr>> = vec![Vec::new(), Vec::new()];
    for i in 0..args.pods {
        for (k, p) in plugins.iter().enumerate() {
            let (ns, id) = &pods[k][i];
            let (took, result) = p.run("ADD", id, &ns.path())?;
            add[k].push(took);
            ips[k].push(pod_ip(&result)?);
        }
    }
    println!(
        "CNI benchmark: {} pods per plugin, each in its own network namespace; eni-cni (veth, warm pool) vs bridge + host-local",
        args.pods
    );
    let linked = if dynamically_linked(&eni)? {
        "dynamically (scripts/up links it statically)"
    } else {
        "statically"
    };
    println!("the eni-cni binary is linked {linked}");
    println!("{:<36} {:>12} {:>12} {:>8}", "", "eni-cni", "bridge", "ratio");
    let mut rows = Vec::new();
    for a in &mut add {
        a.sort();
    }
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        rows.push((
            format!("ADD latency {name} (ms)"),
            ms(percentile(&add[0], p)),
            ms(percentile(&add[1], p)),
        ));
    }
    // Two pods of a third network: eni-cni with socket acceleration (not timed).
    let accelerated = Plugin {
        label: "eni-cni, socket acceleration",
        bin: eni.clone(),
        cni_path: "/usr/lib/cni".into(),
        conf: json!({"cniVersion": "1.1.0", "name": format!("benchsa{tag}"), "type": "eni-cni", "pool": socket, "socketAcceleration": true}),
    };
    let mut sa_pods = Vec::new();
    for i in 0..2 {
        let ns = Netns::new(format!("nlb{tag}xsx{i}"))?;
        let ip = pod_ip(&accelerated.run("ADD", &format!("benchsax{i}"), &ns.path())?.1)?;
        sa_pods.push((ns, ip));
    }
    // Traffic between the first two pods of each network.
    let mut traffic_rows = Vec::new();
    // Rounds taking turns, medians kept: the machine's noise falls on all three.
    let (mut r0, mut r1, mut r2) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        let between = |a: &Netns, b: &Netns, ip: Ipv4Addr| {
            traffic::measure(&me, &|p: &str| a.cmd(p), &|p: &str| b.cmd(p), ip, args.seconds)
        };
        r0.push(between(&pods[0][0].0, &pods[0][1].0, ips[0][1])?);
        r1.push(between(&pods[1][0].0, &pods[1][1].0, ips[1][1])?);
        r2.push(between(&sa_pods[0].0, &sa_pods[1].0, sa_pods[1].1)?);
    }
    let (t0, t1, t2) = (traffic::medians(&r0), traffic::medians(&r1), traffic::medians(&r2));
    traffic_rows.push(("pod-to-pod TCP (Gbit/s)".to_string(), t0[0], t1[0]));
    traffic_rows.push(("request/response, two cores (/s)".to_string(), t0[1], t1[1]));
    traffic_rows.push(("request/response, one core (/s)".to_string(), t0[2], t1[2]));
    traffic_rows.push(("accelerated: pod-to-pod TCP (Gbit/s)".to_string(), t2[0], t1[0]));
    traffic_rows.push(("accelerated: req/resp, two cores (/s)".to_string(), t2[1], t1[1]));
    traffic_rows.push(("accelerated: req/resp, one core (/s)".to_string(), t2[2], t1[2]));
    for (i, (ns, _)) in sa_pods.iter().enumerate() {
        accelerated.run("DEL", &format!("benchsax{i}"), &ns.path())?;
    }

    let mut del: Vec<Vec<Duration>> = vec![Vec::new(), Vec::new()];
    for i in 0..args.pods {
        for (k, p) in plugins.iter().enumerate() {
            let (ns, id) = &pods[k][i];
            del[k].push(p.run("DEL", id, &ns.path())?.0);
        }
    }
    for d in &mut del {
        d.sort();
    }
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        rows.push((
            format!("DEL latency {name} (ms)"),
            ms(percentile(&del[0], p)),
            ms(percentile(&del[1], p)),
        ));
    }
    for (label, a, b) in &rows {
        // Latency: lower is better; the ratio is ours over theirs (goal ADD <= 0.5x).
        println!("{:<36} {:>12.2} {:>12.2} {:>7.2}x", label, a, b, a / b.max(1e-9));
    }
    for (label, a, b) in &traffic_rows {
        // Rates: higher is better; ours over theirs (goals >= 1.1x and >= 1.2x).
        println!("{:<36} {:>12.2} {:>12.2} {:>7.2}x", label, a, b, a / b.max(1e-9));
    }
    println!("(latency ratios below 1 and rate ratios above 1 favour eni-cni; \"accelerated\" rows are eni-cni with");
    println!(" socketAcceleration on, socket to socket through sockops and sk_msg, against the same bridge figures)");
    Ok(())
}
