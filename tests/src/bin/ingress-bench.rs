//! Ingress benchmark: Nodeless's ingress-l7 and nginx (Debian) as the same reverse proxy, in one
//! run, in front of the same backends (two nginx servers answering a short fixed body), with
//! the same number of worker threads, and the ratios printed:
//!
//! - wrk over HTTP/1.1 keep-alive, plain and TLS;
//! - h2load over HTTP/2, with prior knowledge (h2c) and over TLS (ALPN).
//!
//! Each measurement takes turns between the two proxies for a few rounds; medians are printed:
//! requests per second, p99 latency, and the proxy's CPU time per request (its share of the
//! two cores does not depend on how the load generator, the proxy and the backends shared
//! them). ingress-l7 follows a control plane (`nodeless up`, no node) holding an Ingress with a
//! TLS Secret, a Service and a hand-written EndpointSlice naming the backends.
//!
//!     cargo run --release -p nodeless-tests --bin ingress-bench
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use nodeless_tests::{Nodeless, cpu_times, free_port, workspace_binary};

#[derive(Parser)]
struct Args {
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds per measurement, the proxies taking turns; medians are printed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Worker threads of each proxy (nginx worker processes, ingress-l7 runtime threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// A child process killed (with its process group, for nginx's workers) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // TERM to the leader (nginx's master stops its workers, then itself), a little time,
        // then KILL to the whole group, so no worker is left behind.
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn group(cmd: &mut Command) -> &mut Command {
    std::os::unix::process::CommandExt::process_group(cmd, 0)
}

/// The CPU time of a process and its children (nginx's workers) so far, in seconds: in user
/// space, and in all.
fn tree_cpu(pid: u32) -> (f64, f64) {
    let mut pids = vec![pid];
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    pids.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
    pids.into_iter()
        .filter_map(|p| cpu_times(p).ok())
        .fold((0.0, 0.0), |(user, all), (u, k)| (user + u, all + u + k))
}

/// The machine's CPU times so far, in seconds: the fields of `/proc/stat`'s first line (user,
/// nice, system, idle, iowait, irq, softirq, steal, ...).
fn machine_cpu() -> Vec<f64> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|t| t / 100.0)
        .collect()
}

/// The whole machine's busy CPU time so far (user, nice, system, irq and softirq; not idle,
/// iowait, or the time a hypervisor gave to others): the proxy's, the load generator's, the
/// backends' and the kernel's.
fn machine_busy() -> f64 {
    let cpu = machine_cpu();
    [0, 1, 2, 5, 6].iter().filter_map(|&i| cpu.get(i)).sum()
}

/// The time a hypervisor gave this machine's CPUs to others so far (steal).
fn stolen() -> f64 {
    machine_cpu().get(7).copied().unwrap_or(0.0)
}

/// TCP segments the machine has sent so far (`OutSegs` of `/proc/net/snmp`; on loopback every
/// segment is sent once and received once).
fn tcp_segments_sent() -> f64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

fn nginx(conf_dir: &Path, name: &str, conf: &str) -> Result<Proc> {
    let path = conf_dir.join(format!("{name}.conf"));
    let full = format!(
        "daemon off;\nmaster_process on;\npid {dir}/{name}.pid;\nerror_log {dir}/{name}.err warn;\nworker_rlimit_nofile 65536;\n{conf}",
        dir = conf_dir.display()
    );
    std::fs::write(&path, full)?;
    let child = group(Command::new("nginx").arg("-p").arg(conf_dir).arg("-c").arg(&path))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("nginx (apt-get install nginx)")?;
    Ok(Proc(child))
}

fn wait_ok(url: &str, host: &str, extra: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                "-H",
                &format!("Host: {host}"),
            ])
            .args(extra)
            .arg(url)
            .output()?;
        if out.stdout == b"200" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{url} never answered 200 (last: {})",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rps: f64,
    p99_ms: f64,
    cpu_us_per_req: f64,
    user_us_per_req: f64,
    machine_us_per_req: f64,
    segments_per_req: f64,
}

/// "1.23ms", "456.00us", "2.00s" -> milliseconds.
fn millis(v: &str) -> Option<f64> {
    let (num, unit) = v.trim().split_at(v.trim().find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

fn wrk(url: &str, host: &str, seconds: u64, connections: usize) -> Result<(f64, f64)> {
    let out = Command::new("wrk")
        .args([
            "-t",
            "1",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
            "-H",
            &format!("Host: {host}"),
            url,
        ])
        .output()
        .context("wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk: {text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(millis)
        .with_context(|| format!("wrk: {text}"))?;
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors: {text}");
    }
    Ok((rps, p99))
}

/// `url` names the host (for SNI and :authority); the connections go to `connect`.
fn h2load(url: &str, connect: &str, seconds: u64, connections: usize, log: &Path) -> Result<(f64, f64)> {
    let out = Command::new("h2load")
        .args([
            "-t",
            "1",
            "-c",
            &connections.to_string(),
            "-m",
            "10",
            "-D",
            &seconds.to_string(),
            "--connect-to",
            connect,
            "--log-file",
        ])
        .arg(log)
        .arg(url)
        .output()
        .context("h2load (apt-get install nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "finished in 5.00s, 12345.67 req/s, ..."
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse().ok())
        .with_context(|| format!("h2load: {text}"))?;
    // "requests: N total, N started, N done, N succeeded, M failed, ..."
    let failed = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(", ").find(|p| p.ends_with(" failed")))
        .and_then(|p| p.trim_end_matches(" failed").parse::<u64>().ok())
        .unwrap_or(0);
    if failed > 0 {
        bail!("h2load saw {failed} failed requests: {text}");
    }
    // The log: start time, status, duration in microseconds, one request a line.
    let mut times: Vec<f64> = std::fs::read_to_string(log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .collect();
    if times.is_empty() {
        bail!("h2load logged no request");
    }
    times.sort_by(f64::total_cmp);
    let p99 = times[((times.len() as f64 * 0.99) as usize).min(times.len() - 1)] / 1000.0;
    let _ = std::fs::remove_file(log);
    Ok((rps, p99))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // A certificate for the TLS runs, the same for both proxies.
    let cert = rcgen::generate_simple_self_signed(vec!["bench.example".to_string()])?;
    std::fs::write(d.join("tls.crt"), cert.cert.pem())?;
    std::fs::write(d.join("tls.key"), cert.key_pair.serialize_pem())?;

    // The backends: two nginx servers with one worker each, answering a fixed body.
    let backends: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let mut procs = Vec::new();
    for (i, port) in backends.iter().enumerate() {
        procs.push(nginx(d, &format!("backend{i}"), &format!(
            "worker_processes 1;\nevents {{ worker_connections 4096; }}\nhttp {{ access_log off; keepalive_requests 1000000; server {{ listen 127.0.0.1:{port} reuseport; location / {{ return 200 \"hello from the backend\\n\"; }} }} }}\n"
        ))?);
    }
    for port in &backends {
        wait_ok(&format!("http://127.0.0.1:{port}/"), "x", &[])?;
    }

    // nginx as the reverse proxy: HTTP/1.1, h2c (its own listener: nginx 1.22 serves only HTTP/2
    // on a plain `http2` listener) and TLS with h2 and HTTP/1.1 by ALPN.
    let (ng_h1, ng_h2c, ng_tls) = (free_port(), free_port(), free_port());
    let upstreams: String = backends.iter().map(|p| format!("server 127.0.0.1:{p};")).collect();
    procs.push(nginx(d, "proxy", &format!(
        "worker_processes {threads};\nevents {{ worker_connections 8192; }}\nhttp {{\n access_log off;\n keepalive_requests 1000000;\n http2_max_requests 1000000;\n upstream backends {{ {upstreams} keepalive 128; }}\n server {{\n  listen 127.0.0.1:{ng_h1} reuseport;\n  listen 127.0.0.1:{ng_h2c} http2 reuseport;\n  listen 127.0.0.1:{ng_tls} ssl http2 reuseport;\n  ssl_certificate {dir}/tls.crt;\n  ssl_certificate_key {dir}/tls.key;\n  location / {{ proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme; }}\n }}\n}}\n",
        threads = args.threads, dir = d.display()
    ))?);
    let nginx_pid = procs.last().map(|p| p.0.id()).unwrap_or(0);

    // ingress-l7 following a control plane.
    let n = Nodeless::start()?;
    let mut yaml = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: nodeless\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: nodeless.io/ingress-l7}\n",
    );
    // One selectorless Service per backend port would be two services; one Service with one
    // slice per backend port keeps both behind the same route.
    yaml.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: backends}\nspec:\n  ports: [{name: http, port: 80, protocol: TCP}]\n");
    for (i, p) in backends.iter().enumerate() {
        yaml.push_str(&format!("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: backends-{i}, labels: {{kubernetes.io/service-name: backends}}}}\naddressType: IPv4\nports: [{{name: http, port: {p}, protocol: TCP}}]\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\n"));
    }
    let indent = |s: String| s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    yaml.push_str(&format!("---\napiVersion: v1\nkind: Secret\nmetadata: {{name: bench-tls}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n", indent(cert.cert.pem()), indent(cert.key_pair.serialize_pem())));
    yaml.push_str("---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bench}\nspec:\n  tls: [{hosts: [bench.example], secretName: bench-tls}]\n  rules:\n  - host: bench.example\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: backends, port: {number: 80}}}}]}\n");
    let out = n.kubectl_with("1.33", &n.kubeconfig(), &["apply", "-f", "-"], Some(&yaml));
    if !out.status.success() {
        bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }
    let bin: PathBuf = workspace_binary("ingress-l7")?;
    let mut child = group(Command::new(&bin).arg("--kubeconfig").arg(n.kubeconfig()).args([
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--threads",
        &args.threads.to_string(),
    ]))
    .env("RUST_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()?;
    let addrs = nodeless_tests::ingress_addresses(&mut child);
    let ours = Proc(child);
    let [h1, tls, _] = addrs?;
    let (nl_h1, nl_tls) = (h1.port(), tls.port());
    let resolve = |port: u16| format!("bench.example:{port}:127.0.0.1");
    wait_ok(&format!("http://127.0.0.1:{nl_h1}/"), "bench.example", &[])?;
    wait_ok(&format!("http://127.0.0.1:{ng_h1}/"), "bench.example", &[])?;
    wait_ok(
        &format!("https://bench.example:{nl_tls}/"),
        "bench.example",
        &["-k", "--resolve", &resolve(nl_tls)],
    )?;
    wait_ok(
        &format!("https://bench.example:{ng_tls}/"),
        "bench.example",
        &["-k", "--resolve", &resolve(ng_tls)],
    )?;

    println!(
        "Ingress benchmark: ingress-l7 and nginx as the same reverse proxy, {} worker threads each, two nginx backends, {} connections, {} s runs, medians of {} rounds",
        args.threads, args.connections, args.seconds, args.rounds
    );
    println!(
        "{:<24} {:>14} {:>14} {:>8} {:>12} {:>12} {:>15} {:>15}",
        "", "rps ours", "rps nginx", "ratio", "p99 ours", "p99 nginx", "CPU/req ours", "CPU/req nginx"
    );
    type Load<'a> = Box<dyn Fn(u16) -> Result<(f64, f64)> + 'a>;
    let log = d.join("h2load.log");
    // Where the machine's time went, per case, printed after the ratios.
    let mut costs = Vec::new();
    let steal_before = stolen();
    let cases: Vec<(&str, u16, u16, Load<'_>)> = vec![
        (
            "HTTP/1.1",
            nl_h1,
            ng_h1,
            Box::new(|p| {
                wrk(
                    &format!("http://127.0.0.1:{p}/"),
                    "bench.example",
                    args.seconds,
                    args.connections,
                )
            }),
        ),
        (
            "HTTP/1.1 + TLS",
            nl_tls,
            ng_tls,
            Box::new(|p| {
                wrk(
                    &format!("https://127.0.0.1:{p}/"),
                    "bench.example",
                    args.seconds,
                    args.connections,
                )
            }),
        ),
        (
            "HTTP/2 (h2c)",
            nl_h1,
            ng_h2c,
            Box::new(|p| {
                h2load(
                    &format!("http://bench.example:{p}/"),
                    &format!("127.0.0.1:{p}"),
                    args.seconds,
                    args.connections,
                    &log,
                )
            }),
        ),
        (
            "HTTP/2 + TLS",
            nl_tls,
            ng_tls,
            Box::new(|p| {
                h2load(
                    &format!("https://bench.example:{p}/"),
                    &format!("127.0.0.1:{p}"),
                    args.seconds,
                    args.connections,
                    &log,
                )
            }),
        ),
    ];
    for (label, ours_port, nginx_port, load) in &cases {
        let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..args.rounds.max(1) {
            for (k, (port, pid)) in [(*ours_port, ours.0.id()), (*nginx_port, nginx_pid)]
                .into_iter()
                .enumerate()
            {
                let (before, machine, segments) = (tree_cpu(pid), machine_busy(), tcp_segments_sent());
                let (rps, p99_ms) = load(port)
                    .with_context(|| format!("{label} through {}", if k == 0 { "ingress-l7" } else { "nginx" }))?;
                let (after, requests) = (tree_cpu(pid), (rps * args.seconds as f64).max(1.0));
                runs[k].push(Run {
                    rps,
                    p99_ms,
                    cpu_us_per_req: (after.1 - before.1) * 1e6 / requests,
                    user_us_per_req: (after.0 - before.0) * 1e6 / requests,
                    machine_us_per_req: (machine_busy() - machine) * 1e6 / requests,
                    segments_per_req: (tcp_segments_sent() - segments) / requests,
                });
            }
        }
        let m = |k: usize, f: fn(&Run) -> f64| median(runs[k].iter().map(f).collect());
        let (r0, r1) = (m(0, |r| r.rps), m(1, |r| r.rps));
        println!(
            "{:<24} {:>14.0} {:>14.0} {:>7.2}x {:>10.2}ms {:>10.2}ms {:>13.1}us {:>13.1}us",
            label,
            r0,
            r1,
            r0 / r1.max(1e-9),
            m(0, |r| r.p99_ms),
            m(1, |r| r.p99_ms),
            m(0, |r| r.cpu_us_per_req),
            m(1, |r| r.cpu_us_per_req)
        );
        costs.push((
            label,
            [0, 1].map(|k| (m(k, |r| r.segments_per_req), m(k, |r| r.machine_us_per_req))),
            m(0, |r| r.user_us_per_req),
            m(1, |r| r.user_us_per_req),
        ));
    }
    println!("(rps ratio: ingress-l7 over nginx, goal >= 1.2x; p99 and CPU per request: lower is better)");
    // The load generator, the backends and both proxies share the machine's cores, and the
    // machine is busy throughout: requests per second are its CPU time over the CPU time a request
    // costs all of them together. The last column is the ratio if ingress-l7 spent no time at all
    // in user space, everything else the same: how far any change to our own code could go.
    println!();
    println!(
        "{:<24} {:>14} {:>14} {:>15} {:>15} {:>12} {:>12} {:>14}",
        "",
        "TCP segs ours",
        "TCP segs nginx",
        "machine ours",
        "machine nginx",
        "user ours",
        "user nginx",
        "no-user ratio"
    );
    for (label, [(seg0, mach0), (seg1, mach1)], user0, user1) in costs {
        println!(
            "{:<24} {:>14.2} {:>14.2} {:>13.1}us {:>13.1}us {:>10.1}us {:>10.1}us {:>13.2}x",
            label,
            seg0,
            seg1,
            mach0,
            mach1,
            user0,
            user1,
            mach1 / (mach0 - user0).max(1e-9)
        );
    }
    println!(
        "(per request: TCP segments sent on the machine, the machine's busy CPU time, the proxy's CPU time in user space)"
    );
    println!(
        "CPU time the hypervisor gave to others during the runs (steal): {:.1} s",
        stolen() - steal_before
    );
    drop(ours);
    drop(procs);
    Ok(())
}
