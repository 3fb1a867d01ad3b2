//! Ingress soak: ingress-l7 under steady load for a bounded time (10 minutes by default) while,
//! every second, an Ingress route moves between two Services and an endpoint moves between
//! them too. Every request must succeed: it prints what it counted and exits 1 on any failure.
//!
//! The load is HTTP/1.1 with keep-alive, HTTP/2 with prior knowledge (h2c) and HTTP/3 over
//! QUIC, all to the same host. Four echo pods: `soak-1` always behind Service `a`, `soak-2`
//! always behind `b`, and `soak-3` and `soak-4` moved between them by relabelling, one each
//! second (so neither Service is ever without an endpoint, and a moved pod keeps running: its
//! requests under way must finish). Needs root (real pods on a node).
//!
//!     cargo run --release -p nodeless-tests --bin ingress-soak -- --seconds 600
#![forbid(unsafe_code)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{Patch, PatchParams};
use nodeless_tests::{Nodeless, workspace_binary};

#[derive(Parser)]
struct Args {
    /// How long the load runs.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Concurrent HTTP/1.1 clients (h2c and HTTP/3 get half as many each).
    #[arg(long, default_value_t = 8)]
    clients: usize,
}

/// The ingress process, stopped with SIGTERM (then KILL) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Counts {
    ok: [AtomicU64; 3],
    failed: [AtomicU64; 3],
    /// The first failures, for the report.
    first: std::sync::Mutex<Vec<String>>,
}

const PROTOCOLS: [&str; 3] = ["HTTP/1.1", "HTTP/2 (h2c)", "HTTP/3"];

impl Counts {
    fn record(&self, proto: usize, result: Result<(), String>) {
        match result {
            Ok(()) => self.ok[proto].fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
                if first.len() < 20 {
                    first.push(format!("{}: {e}", PROTOCOLS[proto]));
                }
                self.failed[proto].fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A 200 from one of the soak pods.
fn check(status: u16, body: &str) -> Result<(), String> {
    if status == 200 && body.starts_with("pod: soak-") {
        Ok(())
    } else {
        Err(format!("{status} {}", body.lines().next().unwrap_or_default()))
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !nix_is_root() {
        bail!("ingress-soak runs real pods: run it as root");
    }
    let k = 20 + std::process::id() % 200;
    let n = Nodeless::start_with_node(&[
        "--pod-cidr",
        &format!("10.247.{k}.0/24"),
        "--cluster-dns",
        &format!("10.247.{k}.1"),
    ])?;
    let cert = rcgen::generate_simple_self_signed(vec!["soak.example".to_string()])?;
    let indent = |s: String| s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    let mut yaml = String::new();
    for (pod, group) in [
        ("soak-1", "soak-a"),
        ("soak-2", "soak-b"),
        ("soak-3", "soak-a"),
        ("soak-4", "soak-b"),
    ] {
        yaml.push_str(&nodeless_tests::echo_pod(pod, group));
        yaml.push_str("---\n");
    }
    for svc in ["a", "b"] {
        yaml.push_str(&format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {svc}}}\nspec:\n  selector: {{app: soak-{svc}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n"));
    }
    yaml.push_str(&format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: soak-tls}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n---\n", indent(cert.cert.pem()), indent(cert.key_pair.serialize_pem())));
    yaml.push_str("apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: nodeless\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: nodeless.io/ingress-l7}\n---\n");
    yaml.push_str("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: soak}\nspec:\n  tls: [{hosts: [soak.example], secretName: soak-tls}]\n  rules:\n  - host: soak.example\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}]}\n");
    let out = n.kubectl_with("1.33", &n.kubeconfig(), &["apply", "-f", "-"], Some(&yaml));
    if !out.status.success() {
        bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = n.kubectl(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/soak-1",
            "pod/soak-2",
            "pod/soak-3",
            "pod/soak-4",
            "--timeout=120s",
        ],
    );
    if !out.status.success() {
        bail!("the soak pods are not Ready: {}", String::from_utf8_lossy(&out.stderr));
    }

    let mut child = Command::new(workspace_binary("ingress-l7")?)
        .arg("--kubeconfig")
        .arg(n.kubeconfig())
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--access-log-rate",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let addrs = nodeless_tests::ingress_addresses(&mut child);
    let _ingress = Proc(child);
    let [http, https, _] = addrs?;
    let ca = cert.cert.pem();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = rt.block_on(n.client())?;
    rt.block_on(async {
        let h1 = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = h1.get(format!("http://{http}/")).header("host", "soak.example").send().await;
            if let Ok(r) = r {
                if r.status() == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("the soak route is not served");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        // HTTP/1.1 and h2c clients (reqwest), each a loop of GETs.
        let mut plain = Vec::new();
        for c in 0..args.clients {
            plain.push((0, c, reqwest::Client::builder().http1_only()));
        }
        for c in 0..(args.clients / 2).max(1) {
            plain.push((1, c, reqwest::Client::builder().http2_prior_knowledge()));
        }
        for (proto, c, builder) in plain {
            let (counts, stop) = (counts.clone(), stop.clone());
            let client = builder.timeout(Duration::from_secs(10)).resolve("soak.example", http).build()?;
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r = client.get(format!("http://soak.example:{}/{proto}/{c}/{i}", http.port())).send().await;
                    let result = match r {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            check(status, &r.text().await.unwrap_or_default())
                        }
                        Err(e) => Err(format!("{e:#}")),
                    };
                    counts.record(proto, result);
                }
            }));
        }
        for c in 0..(args.clients / 2).max(1) {
            let (counts, stop, ca) = (counts.clone(), stop.clone(), ca.clone());
            let mut h3 = nodeless_tests::http3::Client::connect(https, "soak.example", &ca).await?;
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r = tokio::time::timeout(Duration::from_secs(10), h3.request("GET", &format!("/h3/{c}/{i}"), b"")).await;
                    let result = match r {
                        Ok(Ok(a)) => check(a.status, &a.body),
                        Ok(Err(e)) => Err(format!("{e:#}")),
                        Err(_) => Err("timed out".into()),
                    };
                    counts.record(2, result);
                }
            }));
        }

        // The changes: every second the route moves to the other Service, and soak-3 or
        // soak-4 (in turn) moves to the other group.
        let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "default");
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let started = Instant::now();
        let mut changes = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut groups = ["soak-a", "soak-b"];
        while started.elapsed() < Duration::from_secs(args.seconds) {
            tick.tick().await;
            changes += 1;
            let svc = if changes % 2 == 1 { "b" } else { "a" };
            let patch = serde_json::json!([{"op": "replace", "path": "/spec/rules/0/http/paths/0/backend/service/name", "value": svc}]);
            ingresses.patch("soak", &PatchParams::default(), &Patch::Json::<()>(serde_json::from_value(patch)?)).await.context("moving the route")?;
            let which = (changes % 2) as usize;
            let pod = ["soak-3", "soak-4"][which];
            groups[which] = if groups[which] == "soak-a" { "soak-b" } else { "soak-a" };
            pods.patch(pod, &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"labels": {"app": groups[which]}}}))).await.context("moving an endpoint")?;
            if changes.is_multiple_of(60) {
                let ok: u64 = counts.ok.iter().map(|c| c.load(Ordering::Relaxed)).sum();
                let failed: u64 = counts.failed.iter().map(|c| c.load(Ordering::Relaxed)).sum();
                eprintln!("ingress-soak: {}s, {changes} changes, {ok} requests answered, {failed} failed", started.elapsed().as_secs());
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let took = started.elapsed().as_secs_f64();
        println!("Ingress soak: {took:.0} s, {changes} route changes and {changes} endpoint moves (one of each a second)");
        println!("{:<14} {:>12} {:>10} {:>10}", "", "requests", "failed", "per s");
        let mut failed_total = 0;
        for (i, p) in PROTOCOLS.iter().enumerate() {
            let (ok, failed) = (counts.ok[i].load(Ordering::Relaxed), counts.failed[i].load(Ordering::Relaxed));
            failed_total += failed;
            println!("{p:<14} {:>12} {failed:>10} {:>10.0}", ok + failed, (ok + failed) as f64 / took);
        }
        for f in counts.first.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            println!("  failure: {f}");
        }
        if failed_total > 0 {
            bail!("{failed_total} requests failed");
        }
        Ok(())
    })
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
