//! Service load-balancing benchmark: eni-cni's socket-level eBPF balancer against an iptables
//! DNAT rule set of the same size (the chains kube-proxy's iptables mode writes: one rule per
//! service port in a services chain, a chain per service, a chain per endpoint with the DNAT),
//! in one run, on the same work, with the ratios printed.
//!
//! A client namespace connects to ClusterIPs chosen at random among N services, each backed by
//! a server in a second namespace; both hang off the host on veth pairs, and the host routes
//! between them. Each connection is opened and reset (no TIME_WAIT), so what is measured is
//! the cost of reaching a service: connect latency p50/p99 and connections per second, one
//! connection at a time, at N = 10 and N = 5,000 (`--services`), in rounds taking turns, the
//! median round printed.
//!
//!     cargo run --release -p nodeless-tests --bin svc-bench [-- --services 10,5000 --seconds 3 --rounds 3]
//!
//! Everything it makes (namespaces, veths, the cgroup, the balancer's pins, the iptables
//! chains) is removed at the end, also when it fails.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Numbers of services to measure at.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 5000])]
    services: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds per number of services, the two balancers taking turns; medians are printed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Endpoints behind each service (ports of the one server).
    #[arg(long, default_value_t = 2)]
    endpoints: u16,
    /// Internal: accept and drop connections on these ports (run in the server namespace).
    #[arg(long, hide = true, value_delimiter = ',')]
    serve: Vec<u16>,
    /// Internal: connect to the services listed in this file (run in the client namespace).
    #[arg(long, hide = true)]
    connect: Option<PathBuf>,
}

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 253, 2, 2);
const FIRST_PORT: u16 = 8080;

/// The i-th service's ClusterIP, in 10.254.0.0/16.
fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 254, (i / 250) as u8, (i % 250 + 2) as u8)
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Everything the bench makes, removed on drop.
struct Setup {
    tag: String,
    cgroup: PathBuf,
    forwarding: String,
    /// Whether the host had an nft `ip nat` table before (iptables-nft makes one for the rules).
    nat_table_existed: bool,
    children: Vec<Child>,
}

impl Setup {
    fn client_ns(&self) -> String {
        format!("{}c", self.tag)
    }
    fn server_ns(&self) -> String {
        format!("{}s", self.tag)
    }
    fn chain(&self) -> String {
        format!("NLSB-{}", self.tag.to_uppercase())
    }
    fn lb_name(&self) -> String {
        self.tag.clone()
    }

    fn new() -> Result<Setup> {
        let tag = format!("nlsb{}", std::process::id() % 100_000);
        let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?
            .trim()
            .to_string();
        let cgroup = nodeless_tests::cgroup2_root()?.join(&tag);
        let nat_table_existed = Command::new("nft")
            .args(["list", "table", "ip", "nat"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let s = Setup {
            tag,
            cgroup,
            forwarding,
            nat_table_existed,
            children: Vec::new(),
        };
        std::fs::create_dir_all(&s.cgroup)?;
        // client 10.253.1.2 <-> host 10.253.1.1; server 10.253.2.2 <-> host 10.253.2.1.
        for (ns, net) in [(s.client_ns(), 1), (s.server_ns(), 2)] {
            ip(&["netns", "add", &ns])?;
            let host_end = format!("{ns}h");
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["addr", "add", &format!("10.253.{net}.1/30"), "dev", &host_end])?;
            ip(&["link", "set", &host_end, "up"])?;
            for a in [
                vec!["addr", "add", &format!("10.253.{net}.2/30"), "dev", "eth0"],
                vec!["link", "set", "eth0", "up"],
                vec!["link", "set", "lo", "up"],
                vec!["route", "add", "default", "via", &format!("10.253.{net}.1")],
            ] {
                let mut args = vec!["netns", "exec", &ns, "ip"];
                args.extend(a.iter().copied());
                ip(&args)?;
            }
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
        Ok(s)
    }

    fn in_ns(&self, ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// The iptables rule set for n services, as kube-proxy lays it out.
    fn install_iptables(&self, n: usize, endpoints: u16) -> Result<()> {
        let top = self.chain();
        let mut rules = String::from("*nat\n");
        rules.push_str(&format!(":{top} - [0:0]\n"));
        for i in 0..n {
            rules.push_str(&format!(":{top}-S{i} - [0:0]\n"));
            for e in 0..endpoints {
                rules.push_str(&format!(":{top}-E{i}-{e} - [0:0]\n"));
            }
        }
        rules.push_str(&format!(
            "-A PREROUTING -m comment --comment \"nodeless svc-bench\" -j {top}\n"
        ));
        for i in 0..n {
            rules.push_str(&format!("-A {top} -d {}/32 -p tcp -m comment --comment \"bench/svc-{i}:http cluster IP\" -m tcp --dport 80 -j {top}-S{i}\n", vip(i)));
            for e in 0..endpoints {
                // The last endpoint takes what the random matches before it left.
                let remaining = endpoints - e;
                if remaining > 1 {
                    rules.push_str(&format!(
                        "-A {top}-S{i} -m statistic --mode random --probability {:.11} -j {top}-E{i}-{e}\n",
                        1.0 / remaining as f64
                    ));
                } else {
                    rules.push_str(&format!("-A {top}-S{i} -j {top}-E{i}-{e}\n"));
                }
                rules.push_str(&format!(
                    "-A {top}-E{i}-{e} -p tcp -m tcp -j DNAT --to-destination {SERVER}:{}\n",
                    FIRST_PORT + e
                ));
            }
        }
        rules.push_str("COMMIT\n");
        let mut child = Command::new("iptables-restore")
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("iptables-restore (apt-get install iptables)")?;
        child.stdin.take().context("stdin")?.write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn remove_iptables(&self) {
        let top = self.chain();
        let rules = match run(Command::new("iptables-save").args(["-t", "nat"])) {
            Ok(r) => r,
            Err(_) => return,
        };
        let _ = Command::new("iptables")
            .args([
                "-t",
                "nat",
                "-D",
                "PREROUTING",
                "-m",
                "comment",
                "--comment",
                "nodeless svc-bench",
                "-j",
                &top,
            ])
            .stderr(Stdio::null())
            .status();
        let chains: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c == top || c.starts_with(&format!("{top}-")))
            .collect();
        if chains.is_empty() {
            return;
        }
        let mut restore = String::from("*nat\n");
        for c in &chains {
            restore.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &chains {
            restore.push_str(&format!("-X {c}\n"));
        }
        restore.push_str("COMMIT\n");
        if let Ok(mut child) = Command::new("iptables-restore")
            .arg("--noflush")
            .stdin(Stdio::piped())
            .spawn()
        {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(restore.as_bytes());
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.remove_iptables();
        // The empty `ip nat` table iptables-nft left, when there was none before and no rule is
        // in it now.
        let rules_left =
            run(Command::new("iptables-save").args(["-t", "nat"])).map(|r| r.lines().any(|l| l.starts_with("-A ")));
        if !self.nat_table_existed && matches!(rules_left, Ok(false)) {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", "nat"])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf/nodeless/lb").join(self.lb_name()));
        for ns in [self.client_ns(), self.server_ns()] {
            let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.forwarding);
    }
}

/// Accept and drop connections on each port, until killed.
fn serve(ports: &[u16]) -> ! {
    let mut threads = Vec::new();
    for &p in ports {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, p)).unwrap_or_else(|e| {
            eprintln!("svc-bench: binding {p}: {e}");
            std::process::exit(1)
        });
        threads.push(std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s);
            }
        }));
    }
    println!("ready");
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(0)
}

/// Connect to random services from the file for the seconds given in it; print the count and
/// the connect latencies' p50 and p99 in microseconds.
fn connect(file: &Path) -> ! {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut lines = text.lines();
    let seconds: u64 = lines.next().and_then(|l| l.parse().ok()).unwrap_or(1);
    let targets: Vec<SocketAddrV4> = lines.filter_map(|l| l.parse().ok()).collect();
    if targets.is_empty() {
        eprintln!("svc-bench: no targets");
        std::process::exit(1);
    }
    // xorshift: cheap, and the same sequence for both balancers.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut pick = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        targets[(state % targets.len() as u64) as usize]
    };
    let mut latencies: Vec<u32> = Vec::with_capacity(200_000);
    let mut failures = 0u64;
    // A short warm-up (caches, ARP), then the measurement.
    let warm = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm {
        if let Ok(s) = TcpStream::connect_timeout(&pick().into(), Duration::from_secs(1)) {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        match TcpStream::connect_timeout(&pick().into(), Duration::from_secs(1)) {
            Ok(s) => {
                latencies.push(t.elapsed().as_micros() as u32);
                // Reset on close: no TIME_WAIT, so ports never run out.
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
            Err(_) => failures += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let q = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!("{} {:.3} {} {} {failures}", latencies.len(), elapsed, q(0.5), q(0.99));
    std::process::exit(0)
}

/// The round with the median rate.
fn median(mut rounds: Vec<Measured>) -> Measured {
    rounds.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mid = rounds.len() / 2;
    rounds.swap_remove(mid)
}

struct Measured {
    rate: f64,
    p50_us: u32,
    p99_us: u32,
    failures: u64,
}

fn measure(setup: &Setup, me: &Path, n: usize, seconds: u64, in_cgroup: bool) -> Result<Measured> {
    let file = std::env::temp_dir().join(format!("{}-targets", setup.tag));
    let mut text = format!("{seconds}\n");
    for i in 0..n {
        text.push_str(&format!("{}:80\n", vip(i)));
    }
    std::fs::write(&file, text)?;
    // Into the cgroup first: `ip netns exec` mounts a sysfs of the namespace's own, without
    // the cgroup hierarchies.
    let mut cmd = Command::new("sh");
    cmd.arg("-c");
    if in_cgroup {
        cmd.arg(format!(
            "echo $$ > {} && exec \"$@\"",
            setup.cgroup.join("cgroup.procs").display()
        ));
    } else {
        cmd.arg("exec \"$@\"");
    }
    cmd.args(["sh", "ip", "netns", "exec", &setup.client_ns()])
        .arg(me)
        .arg("--connect")
        .arg(&file);
    let out = run(&mut cmd)?;
    let _ = std::fs::remove_file(&file);
    let f: Vec<f64> = out.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    anyhow::ensure!(f.len() == 5, "unexpected client output: {out}");
    Ok(Measured {
        rate: f[0] / f[1],
        p50_us: f[2] as u32,
        p99_us: f[3] as u32,
        failures: f[4] as u64,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.serve.is_empty() {
        serve(&args.serve);
    }
    if let Some(f) = &args.connect {
        connect(f);
    }
    anyhow::ensure!(
        std::fs::read_to_string("/proc/self/status")?
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
        "svc-bench needs root (namespaces, cgroups, eBPF, iptables)"
    );
    let me = std::env::current_exe()?;
    let eni = me.with_file_name("eni-cni");
    anyhow::ensure!(
        eni.exists(),
        "{} is missing: cargo build --release -p nodeless-eni-cni",
        eni.display()
    );
    let mut setup = Setup::new()?;

    let ports: Vec<String> = (0..args.endpoints).map(|e| (FIRST_PORT + e).to_string()).collect();
    let mut server = setup
        .in_ns(&setup.server_ns(), &me)
        .arg("--serve")
        .arg(ports.join(","))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = [0u8; 6];
    std::io::Read::read_exact(server.stdout.as_mut().context("server stdout")?, &mut ready)
        .context("the server did not start")?;
    setup.children.push(server);

    println!(
        "svc-bench: connect to a random ClusterIP of N (one connection at a time, {} endpoints per service; median of {} rounds of {} s, taking turns)",
        args.endpoints,
        args.rounds.max(1),
        args.seconds
    );
    println!(
        "{:>6}  {:>22}  {:>22}  {:>8}",
        "N", "eBPF (eni-cni)", "iptables DNAT", "ratio"
    );
    let mut ebpf_rates = Vec::new();
    for &n in &args.services {
        anyhow::ensure!(n > 0 && n <= 250 * 250, "--services takes 1..=62500");
        // The eBPF balancer on the client's cgroup, from a table of n services.
        let table = std::env::temp_dir().join(format!("{}-table.json", setup.tag));
        let rows: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"address": vip(i).to_string(), "port": 80, "endpoints": (0..args.endpoints).map(|e| format!("{SERVER}:{}", FIRST_PORT + e)).collect::<Vec<_>>()}))
            .collect();
        std::fs::write(&table, serde_json::Value::Array(rows).to_string())?;
        let mut lb = Command::new(&eni)
            .args(["services", "--name", &setup.lb_name(), "--cgroup"])
            .arg(&setup.cgroup)
            .arg("--table")
            .arg(&table)
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let show = run(Command::new(&eni).args(["show", &setup.lb_name()])).unwrap_or_default();
            if show.contains(&format!("services: {n} ports ")) {
                break;
            }
            if Instant::now() > deadline {
                let _ = lb.kill();
                bail!("the balancer did not load {n} services");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Rounds taking turns (the balancer stays attached; iptables rules come and go, and the
        // client runs outside the balanced cgroup for them).
        let mut rounds: (Vec<Measured>, Vec<Measured>) = (Vec::new(), Vec::new());
        let mut outcome = Ok(());
        for _ in 0..args.rounds.max(1) {
            match measure(&setup, &me, n, args.seconds, true) {
                Ok(m) => rounds.0.push(m),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
            let ipt = setup
                .install_iptables(n, args.endpoints)
                .and_then(|()| measure(&setup, &me, n, args.seconds, false));
            setup.remove_iptables();
            match ipt {
                Ok(m) => rounds.1.push(m),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        let _ = Command::new("kill").args(["-TERM", &lb.id().to_string()]).status();
        let _ = lb.wait();
        let _ = std::fs::remove_file(&table);
        outcome?;
        let (ebpf, ipt) = (median(rounds.0), median(rounds.1));
        let cell = |m: &Measured| format!("{:>7.0}/s p50 {:>4} p99 {:>5} us", m.rate, m.p50_us, m.p99_us);
        println!(
            "{n:>6}  {}  {}  {:>7.2}x",
            cell(&ebpf),
            cell(&ipt),
            ebpf.rate / ipt.rate
        );
        if ebpf.failures + ipt.failures > 0 {
            println!(
                "        failed connects: eBPF {}, iptables {}",
                ebpf.failures, ipt.failures
            );
        }
        ebpf_rates.push((n, ebpf.rate));
    }
    if let (Some(first), Some(last)) = (ebpf_rates.first(), ebpf_rates.last()) {
        if first.0 != last.0 {
            println!(
                "eBPF rate at {} services / at {}: {:.2}",
                last.0,
                first.0,
                last.1 / first.1
            );
        }
    }
    Ok(())
}
