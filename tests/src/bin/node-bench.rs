//! sandbox-node benchmark, side by side with podman on the same image in one run:
//! create-to-Ready latency of single pods (p50/p99), the time for a burst of pods to all be
//! Ready, and the node's memory per pod. Needs root.
//!
//!     cargo run --release -p nodeless-tests --bin node-bench
//!
//! Nodeless: `nodeless control` and a separate `nodeless node` (its default runtime: crun where
//! the cgroup layout allows, else runc), pods of the busybox test image running `sleep`,
//! loopback-only networking; created through the API, Ready seen through a watch. podman:
//! `podman run -d --rm --runtime <the node's runtime> --network none` of the same image (as an
//! OCI archive), with explicit nofile/nproc ulimits; "ready" is `podman run -d` returning.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use nodeless_tests::Nodeless;
use nodeless_tests::images::BUSYBOX;
use nodeless_tests::ready::{wait_ready, watch_ready};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Single pods created one after another.
    #[arg(long, default_value_t = 40)]
    single: usize,
    /// Pods in the burst.
    #[arg(long, default_value_t = 500)]
    burst: usize,
    /// Concurrent clients creating the burst.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Leave podman out.
    #[arg(long)]
    skip_podman: bool,
    /// The node's OCI runtime (`nodeless node --runtime`); podman runs the one the node chose.
    #[arg(long, default_value = "auto")]
    runtime: String,
    /// Run the node without a user namespace per pod (`nodeless node --no-user-namespaces`).
    #[arg(long)]
    no_user_namespaces: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime), counted after the command's closing parenthesis.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds the whole machine has spent busy so far (all but idle and iowait).
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    (at(0) + at(1) + at(2) + at(5) + at(6) + at(7)) / 100.0
}

/// How many memory cgroups the kernel has, counting removed ones that still hold pages (they
/// make creating more slower, so a machine that has run many containers is slower here).
fn memory_cgroups() -> u64 {
    let text = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("memory\t"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn pids_of(pattern: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "node"}},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": BUSYBOX, "command": ["sleep", "3600"]}]}}))
    .expect("pod")
}

/// When each pod was first seen Ready.
struct Figures {
    /// `<runtime>://<version>` as the Node reports it.
    runtime: String,
    p50: f64,
    p99: f64,
    burst_secs: f64,
    burst_n: usize,
    rss_per_pod_kib: f64,
    pss_per_pod_kib: f64,
}

async fn nodeless(args: &Args) -> Result<Figures> {
    let n = Nodeless::start()?;
    n.import_test_images()?;
    // The pods' user namespaces pass through the data directory's parent.
    nodeless_tests::searchable(n.dir.path())?;
    let node_name = format!("bench-{}", std::process::id());
    let mut node = Command::new(nodeless_tests::nodeless_binary()?)
        .args(["node", "--node-name", &node_name, "--runtime", &args.runtime])
        .args(args.no_user_namespaces.then_some("--no-user-namespaces"))
        .arg("--kubeconfig")
        .arg(n.kubeconfig())
        .arg("--data-dir")
        .arg(n.data_dir())
        .env(
            "NODELESS_LOG",
            std::env::var("NODE_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(std::env::temp_dir().join("node-bench-node.log"))?)
        .spawn()?;
    let client = n.client().await?;
    let api: Api<Pod> = Api::namespaced(client, "default");
    let (times, _watch) = watch_ready(api.clone(), watcher::Config::default());
    // The node registers; a first pod warms the image's layer cache.
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.create(&PostParams::default(), &pod("warm")).await?;
    wait_ready(&times, &["warm".into()], Duration::from_secs(60)).await?;
    api.delete("warm", &DeleteParams::default()).await?;
    let (rss0, pss0) = nodeless_tests::process_memory_kib(node.id());
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(n.client().await?);
    let runtime = nodes
        .get(&node_name)
        .await?
        .status
        .and_then(|s| s.node_info)
        .map(|i| i.container_runtime_version)
        .unwrap_or_default();

    let mut lat = Vec::new();
    for i in 0..args.single {
        let name = format!("single-{i}");
        let t0 = Instant::now();
        api.create(&PostParams::default(), &pod(&name)).await?;
        let t1 = wait_ready(&times, std::slice::from_ref(&name), Duration::from_secs(30)).await?;
        lat.push(t1.duration_since(t0).as_secs_f64() * 1000.0);
        api.delete(&name, &DeleteParams::default()).await?;
    }
    let (p50, p99) = stats(lat);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let names: Vec<String> = (0..args.burst).map(|i| format!("burst-{i}")).collect();
    let memcgs = memory_cgroups();
    let (node_cpu0, control_cpu0, busy0) = (cpu_secs(node.id()), n.pid().map_or(0.0, cpu_secs), machine_busy_secs());
    let t0 = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (api, names, next) = (api.clone(), names.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(name) = names.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                api.create(&PostParams::default(), &pod(name)).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let done = wait_ready(&times, &names, Duration::from_secs(300)).await?;
    let burst_secs = done.duration_since(t0).as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    eprintln!(
        "nodeless: during the burst the machine was {:.0}% busy ({:.1} CPU-seconds); the node used {:.1} s and the control plane {:.1} s (the rest is {}, the supervisor, the kernel and this benchmark)",
        (machine_busy_secs() - busy0) / (burst_secs * cores) * 100.0,
        machine_busy_secs() - busy0,
        cpu_secs(node.id()) - node_cpu0,
        n.pid().map_or(0.0, cpu_secs) - control_cpu0,
        runtime.split("://").next().unwrap_or("the runtime")
    );
    eprintln!(
        "nodeless: {memcgs} memory cgroups on the machine when the burst began (removed ones that still hold pages count, and slow the kernel's cgroup work)"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, pss1) = nodeless_tests::process_memory_kib(node.id());
    // Per pod: the node's growth, and all of the node's supervisor (it holds every pod's
    // namespaces and is every container's parent) shared among the pods.
    let shims: Vec<(u64, u64)> = nodeless_tests::keeper_pids(&node_name)
        .into_iter()
        .map(nodeless_tests::process_memory_kib)
        .collect();
    let (shim_rss, shim_pss): (u64, u64) = shims.iter().fold((0, 0), |a, m| (a.0 + m.0, a.1 + m.1));
    let per = |node: u64, node0: u64, shim: u64| (node.saturating_sub(node0) + shim) as f64 / args.burst as f64;
    let figures = Figures {
        runtime: runtime.clone(),
        p50,
        p99,
        burst_secs,
        burst_n: args.burst,
        rss_per_pod_kib: per(rss1, rss0, shim_rss),
        pss_per_pod_kib: per(pss1, pss0, shim_pss),
    };
    eprintln!(
        "nodeless: node RSS {rss0} -> {rss1} KiB; the supervisor ({} process) RSS {shim_rss} KiB, PSS {shim_pss} KiB",
        shims.len()
    );

    // Clean up through the API, as a user would.
    api.delete_collection(
        &DeleteParams::default(),
        &kube::api::ListParams::default().labels("bench=node"),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !api
        .list(&kube::api::ListParams::default().labels("bench=node"))
        .await?
        .items
        .is_empty()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The node tears pods down after the API forgets them: give it the time, then make sure.
    let ns_dir = Path::new("/run/nodeless").join(&node_name).join("ns");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_dir(&ns_dir).map(|d| d.count()).unwrap_or(0) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = Command::new("kill").arg("-TERM").arg(node.id().to_string()).status();
    let _ = node.wait();
    nodeless_tests::clean_node_leftovers(&node_name, &n.data_dir());
    Ok(figures)
}

struct Podman {
    runtime: String,
    root: PathBuf,
    runroot: PathBuf,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"]);
        c
    }

    fn run(&self, name: &str) -> Result<()> {
        let out = self
            .cmd()
            .args([
                "run",
                "-d",
                "--rm",
                "--runtime",
                &self.runtime,
                "--network",
                "none",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
                "--name",
                name,
                BUSYBOX,
                "sleep",
                "3600",
            ])
            .output()?;
        if !out.status.success() {
            bail!("podman run: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-a", "-f", "-t", "0"]).output();
        let _ = self.cmd().args(["system", "reset", "-f"]).output();
        // podman's overlay driver bind-mounts its storage onto itself.
        let _ = Command::new("umount").arg("-R").arg(self.root.join("overlay")).output();
        if let Some(base) = self.root.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

fn podman(args: &Args, runtime: &str, layout: &Path) -> Result<Figures> {
    let base = std::env::temp_dir().join(format!("nodeless-bench-podman-{}", std::process::id()));
    let p = Podman {
        runtime: runtime.to_string(),
        root: base.join("root"),
        runroot: base.join("run"),
    };
    let archive = base.join("busybox.tar");
    std::fs::create_dir_all(&base)?;
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(layout)
        .arg(".")
        .status()?;
    anyhow::ensure!(st.success(), "tar");
    let out = p.cmd().arg("load").arg("-i").arg(&archive).output()?;
    anyhow::ensure!(
        out.status.success(),
        "podman load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.cmd().args(["tag", "nodeless.local/busybox:1", BUSYBOX]).output()?;
    let _ = out;
    p.run("warm")?;
    let _ = p.cmd().args(["rm", "-f", "-t", "0", "warm"]).output();

    let mut lat = Vec::new();
    for i in 0..args.single {
        let name = format!("single-{i}");
        let t0 = Instant::now();
        p.run(&name)?;
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        let _ = p.cmd().args(["rm", "-f", "-t", "0", &name]).output();
    }
    let (p50, p99) = stats(lat);

    let t0 = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p = Arc::new(p);
    let mut threads = Vec::new();
    for _ in 0..args.clients {
        let (p, next, total) = (p.clone(), next.clone(), args.burst);
        threads.push(std::thread::spawn(move || -> Result<()> {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok(());
                }
                p.run(&format!("burst-{i}"))?;
            }
        }));
    }
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("podman thread panicked"))??;
    }
    let burst_secs = t0.elapsed().as_secs_f64();
    let conmons: Vec<(u64, u64)> = pids_of(&format!("conmon.*{}", p.runroot.display()))
        .into_iter()
        .map(nodeless_tests::process_memory_kib)
        .collect();
    let (rss, pss): (u64, u64) = conmons.iter().fold((0, 0), |a, m| (a.0 + m.0, a.1 + m.1));
    eprintln!(
        "podman: {} conmon processes with RSS {rss} KiB, PSS {pss} KiB",
        conmons.len()
    );
    Ok(Figures {
        runtime: format!("{runtime}://podman"),
        p50,
        p99,
        burst_secs,
        burst_n: args.burst,
        rss_per_pod_kib: rss as f64 / args.burst as f64,
        pss_per_pod_kib: pss as f64 / args.burst as f64,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let ours = nodeless(&args).await.context("nodeless")?;
    let layouts = nodeless_tests::test_image_layouts()?;
    let theirs = if args.skip_podman {
        None
    } else {
        Some(
            tokio::task::block_in_place(|| {
                podman(&args, ours.runtime.split("://").next().unwrap_or("runc"), &layouts[0])
            })
            .context("podman")?,
        )
    };
    println!(
        "node benchmark (nodeless on {}, podman --runtime the same): {} single pods one after another, then a burst of {} by {} clients (2 cores)",
        ours.runtime, args.single, args.burst, args.clients
    );
    println!("{:<44} {:>12} {:>12} {:>10}", "", "nodeless", "podman", "ratio");
    let row = |what: &str, a: f64, b: Option<f64>, lower_is_better: bool| {
        let ratio = b.map(|b| if lower_is_better { b / a } else { a / b });
        println!(
            "{:<44} {:>12.1} {:>12} {:>10}",
            what,
            a,
            b.map(|b| format!("{b:.1}")).unwrap_or_else(|| "-".into()),
            ratio.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
        );
    };
    row(
        "create-to-Ready p50 (ms)",
        ours.p50,
        theirs.as_ref().map(|t| t.p50),
        true,
    );
    row(
        "create-to-Ready p99 (ms)",
        ours.p99,
        theirs.as_ref().map(|t| t.p99),
        true,
    );
    row(
        &format!("burst of {} all Ready (s)", ours.burst_n),
        ours.burst_secs,
        theirs.as_ref().map(|t| t.burst_secs),
        true,
    );
    row(
        "memory per pod, RSS (KiB)",
        ours.rss_per_pod_kib,
        theirs.as_ref().map(|t| t.rss_per_pod_kib),
        true,
    );
    row(
        "memory per pod, PSS (KiB)",
        ours.pss_per_pod_kib,
        theirs.as_ref().map(|t| t.pss_per_pod_kib),
        true,
    );
    println!("(ratio > 1 means nodeless is better; podman's per-pod memory is its conmon per container)");
    Ok(())
}
