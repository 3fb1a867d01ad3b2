//! Knative Serving benchmark, in one run on one cluster (`nodeless up` with a node and eni-cni,
//! ingress-l7 following it), on the echo test image. Needs root.
//!
//!     cargo run --release -p nodeless-tests --bin knative-bench
//!
//! - **Cold start**: a request to a revision at zero until its response, over N revisions
//!   created at zero (`initial-scale: 0`), one after another; beside it the node's plain pod
//!   create-to-Ready of the same image with the same readiness probe (a TCP connect to 8080),
//!   through the API and a watch. p50/p99 of both, and the difference.
//!   `--warm-sandboxes 0` turns the node's warm pool off, to see what it saves.
//! - **Step**: 0 to C concurrent clients on a revision at zero, each sending requests back to
//!   back for S seconds: time to the first response of each client, failed requests, and when
//!   the ready pod count stopped changing.
//! - **Steady**: wrk through a Knative route and through a plain Ingress to the same kind of
//!   pods (one pod each, echo), the same connections and duration: requests/s and the ratio.
#![forbid(unsafe_code)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use nodeless_tests::images::ECHO;
use nodeless_tests::ready::{self, watch_ready};
use nodeless_tests::{IngressL7, Nodeless};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Cold starts measured (each on a revision of its own).
    #[arg(long, default_value_t = 20)]
    cold: usize,
    /// Concurrent clients of the step.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// How long the step's clients send.
    #[arg(long, default_value_t = 20)]
    step_secs: u64,
    /// How long each steady wrk run lasts.
    #[arg(long, default_value_t = 10)]
    steady_secs: u64,
    /// wrk connections of the steady runs.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// The node's warm pool (`nodeless up --warm-sandboxes`; 2 is its default, 0 turns it off).
    #[arg(long, default_value_t = 2)]
    warm_sandboxes: usize,
}

const V: &str = "1.33";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn p50_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

fn apply(n: &Nodeless, yaml: &str) -> Result<()> {
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(yaml));
    if !out.status.success() {
        bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn ksvc(name: &str, annotations: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    metadata:\n      annotations: {{{annotations}}}\n    spec:\n      containers: [{{image: \"{ECHO}\"}}]\n"
    )
}

fn wait_ready(n: &Nodeless, what: &str) -> Result<()> {
    let out = n.kubectl(V, &["wait", what, "--for=condition=Ready", "--timeout=120s"]);
    if !out.status.success() {
        bail!("{what} not Ready: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn ready_pods(n: &Nodeless, selector: &str) -> usize {
    let out = n.kubectl(
        V,
        &[
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{'\\n'}{end}",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l == "True")
        .count()
}

/// One GET with a fresh connection: its status and how long until the whole response was in.
async fn get(client: &reqwest::Client, url: &str, host: &str) -> (u16, Duration) {
    let t = Instant::now();
    match client.get(url).header("Host", host).send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            let _ = r.bytes().await;
            (code, t.elapsed())
        }
        Err(_) => (0, t.elapsed()),
    }
}

fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("a client")
}

async fn cold_starts(n: &Nodeless, ing: &IngressL7, count: usize) -> Result<Vec<f64>> {
    for i in 0..count {
        apply(
            n,
            &ksvc(&format!("cold-{i}"), "autoscaling.knative.dev/initial-scale: \"0\""),
        )?;
    }
    for i in 0..count {
        wait_ready(n, &format!("ksvc/cold-{i}"))?;
    }
    let client = fresh_client();
    let url = format!("http://{}/", ing.http);
    let mut out = Vec::new();
    for i in 0..count {
        let host = format!("cold-{i}.default.example.com");
        if ready_pods(n, &format!("serving.knative.dev/service=cold-{i}")) != 0 {
            bail!("cold-{i} is not at zero");
        }
        let (code, took) = get(&client, &url, &host).await;
        if code != 200 {
            bail!("a cold request to {host} got {code}");
        }
        out.push(took.as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// Plain pods of the same image and probe: create-to-Ready through the API and a watch.
async fn pod_starts(n: &Nodeless, count: usize) -> Result<Vec<f64>> {
    let client = n.client().await?;
    let api: Api<Pod> = Api::namespaced(client, "default");
    let (seen, watch) = watch_ready(api.clone(), watcher::Config::default().labels("bench=plain"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut out = Vec::new();
    for i in 0..count {
        let name = format!("plain-{i}");
        let pod: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"bench": "plain"}},
            "spec": {"terminationGracePeriodSeconds": 0, "enableServiceLinks": false, "containers": [{"name": "user-container", "image": ECHO,
                "ports": [{"containerPort": 8080}], "env": [{"name": "PORT", "value": "8080"}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "successThreshold": 1}}]}}))?;
        let t = Instant::now();
        api.create(&PostParams::default(), &pod).await?;
        let at = ready::wait_ready(&seen, std::slice::from_ref(&name), Duration::from_secs(60)).await?;
        out.push(at.duration_since(t).as_secs_f64() * 1000.0);
    }
    watch.abort();
    n.kubectl(V, &["delete", "pods", "-l", "bench=plain", "--wait=false"]);
    Ok(out)
}

struct Step {
    first_p50: f64,
    first_max: f64,
    requests: u64,
    failed: u64,
    settled_after: f64,
    pods: usize,
}

async fn step(n: &Nodeless, ing: &IngressL7, clients: usize, secs: u64) -> Result<Step> {
    apply(n, &ksvc("step", "autoscaling.knative.dev/initial-scale: \"0\""))?;
    wait_ready(n, "ksvc/step")?;
    let url = format!("http://{}/", ing.http);
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (url, ok, failed) = (url.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                // One kept-alive connection per client, as a browser or an SDK holds one.
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .expect("a client");
                let mut first = None;
                while Instant::now() < end {
                    let (code, _) = get(&client, &url, "step.default.example.com").await;
                    if code == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                        first.get_or_insert(start.elapsed());
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                first
            })
        })
        .collect();
    // The ready pod count, sampled while the clients run.
    let mut last_change = 0.0;
    let mut last = 0;
    while Instant::now() < end {
        let now = ready_pods(n, "serving.knative.dev/service=step");
        if now != last {
            last = now;
            last_change = start.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut firsts = Vec::new();
    for t in tasks {
        if let Some(f) = t.await? {
            firsts.push(f.as_secs_f64() * 1000.0);
        }
    }
    if firsts.len() < clients {
        bail!("{} of {clients} clients got no response", clients - firsts.len());
    }
    let (first_p50, _) = p50_p99(firsts.clone());
    Ok(Step {
        first_p50,
        first_max: firsts.iter().copied().fold(0.0, f64::max),
        requests: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        settled_after: last_change,
        pods: last,
    })
}

fn wrk(url: &str, host: &str, seconds: u64, connections: usize) -> Result<f64> {
    let out = Command::new("wrk")
        .args([
            "-t",
            "1",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "-H",
            &format!("Host: {host}"),
            url,
        ])
        .output()
        .context("wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors: {text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk: {text}"))
}

async fn steady(n: &Nodeless, ing: &IngressL7, secs: u64, connections: usize) -> Result<(f64, f64)> {
    apply(
        n,
        &ksvc(
            "steady",
            "autoscaling.knative.dev/min-scale: \"1\", autoscaling.knative.dev/max-scale: \"1\"",
        ),
    )?;
    let plain = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: plain}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: plain}}}}\n  template:\n    metadata: {{labels: {{app: plain}}}}\n    spec:\n      containers: [{{name: c, image: \"{ECHO}\", env: [{{name: PORT, value: \"8080\"}}], readinessProbe: {{tcpSocket: {{port: 8080}}}}}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: plain}}\nspec:\n  selector: {{app: plain}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: nodeless\n  annotations: {{ingressclass.kubernetes.io/is-default-class: \"true\"}}\nspec: {{controller: nodeless.io/ingress-l7}}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: plain}}\nspec:\n  rules:\n  - host: plain.example\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: plain, port: {{number: 80}}}}}}}}]}}\n"
    );
    apply(n, &plain)?;
    wait_ready(n, "ksvc/steady")?;
    n.kubectl(V, &["rollout", "status", "deploy/plain", "--timeout=60s"]);
    let url = format!("http://{}/", ing.http);
    // Both warm before the measured runs.
    let _ = wrk(&url, "steady.default.example.com", 2, connections);
    let _ = wrk(&url, "plain.example", 2, connections);
    let knative = wrk(&url, "steady.default.example.com", secs, connections)?;
    let ingress = wrk(&url, "plain.example", secs, connections)?;
    Ok((knative, ingress))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let k = 20 + std::process::id() % 200;
    let n = Nodeless::start_with_node(&[
        "--pod-cidr",
        &format!("10.246.{k}.0/24"),
        "--cluster-dns",
        &format!("10.246.{k}.1"),
        "--warm-sandboxes",
        &args.warm_sandboxes.to_string(),
    ])?;
    let ing = IngressL7::start(&n, None);
    n.kubectl_ok(
        V,
        &[
            "patch",
            "cm",
            "config-autoscaler",
            "-n",
            "knative-serving",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"allow-zero-initial-scale":"true"}}"#,
        ],
    );

    let cold = cold_starts(&n, &ing, args.cold).await?;
    let plain = pod_starts(&n, args.cold).await?;
    let (c50, c99) = p50_p99(cold);
    let (p50, p99) = p50_p99(plain);
    println!(
        "cold start (request to a revision at zero until its response), {} revisions, warm pool {}:",
        args.cold, args.warm_sandboxes
    );
    println!("  knative cold start  p50 {c50:7.1} ms  p99 {c99:7.1} ms");
    println!("  plain pod to Ready  p50 {p50:7.1} ms  p99 {p99:7.1} ms");
    println!(
        "  cold start over plain pod start: p50 +{:.1} ms (x{:.2})",
        c50 - p50,
        c50 / p50
    );

    let s = step(&n, &ing, args.clients, args.step_secs).await?;
    println!("step from 0 to {} clients for {} s:", args.clients, args.step_secs);
    println!(
        "  first response p50 {:.0} ms, last client's first {:.0} ms; {} requests, {} failed; pods settled at {} after {:.1} s",
        s.first_p50, s.first_max, s.requests, s.failed, s.pods, s.settled_after
    );

    let (knative, ingress) = steady(&n, &ing, args.steady_secs, args.connections).await?;
    println!(
        "steady, wrk {} connections for {} s, one echo pod each:",
        args.connections, args.steady_secs
    );
    println!(
        "  knative route {knative:9.0} req/s   plain ingress {ingress:9.0} req/s   ratio x{:.2}",
        knative / ingress
    );
    Ok(())
}
