//! Control-plane benchmark: durable pod creates per second (1 and 32 concurrent clients), with
//! JSON bodies and with protobuf bodies (as client-go sends them) side by side; the same 32-client
//! JSON creates by a ServiceAccount bound to `edit` (every request authorized by RBAC, which the
//! admin, in `system:masters`, skips) beside the admin's; and watch delivery latency with 100
//! watchers, against a real `nodeless up` on this machine. Then the same 32-client creates and
//! watch latency on a 3-member etcd cluster (Debian's etcd, all members on this machine, each
//! fsyncing its own WAL) beside the embedded store's figures.
//!
//!     cargo run --release -p nodeless-tests --bin control-bench
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Parser;
use futures::StreamExt;
use nodeless_tests::Nodeless;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Pods created by the single client.
    #[arg(long, default_value_t = 1000)]
    single: usize,
    /// Pods created by the concurrent clients together.
    #[arg(long, default_value_t = 6400)]
    concurrent: usize,
    #[arg(long, default_value_t = 32)]
    clients: usize,
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Changes made while the watchers listen.
    #[arg(long, default_value_t = 300)]
    changes: usize,
    /// Members of the etcd cluster for the store-on-etcd comparison (0: skip it).
    #[arg(long, default_value_t = 3)]
    etcd_members: usize,
}

fn pod(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench"}},
        "spec": {"nodeName": "bench-node", "containers": [{"name": "app", "image": "registry.example/echo:1.0",
            "ports": [{"containerPort": 8080}], "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}})
}

/// How request bodies are written and answers asked for.
#[derive(Clone, Copy, PartialEq)]
enum Wire {
    Json,
    Protobuf,
}

impl Wire {
    fn media(self) -> &'static str {
        match self {
            Wire::Json => "application/json",
            Wire::Protobuf => nodeless_control::api::proto::MEDIA_TYPE,
        }
    }

    /// Every body, written before the clock starts so only the server's work is timed.
    fn bodies(self, ns: &str, total: usize) -> Result<Vec<bytes::Bytes>> {
        (0..total)
            .map(|i| {
                let p = pod(ns, &format!("p{i}"));
                Ok(match self {
                    Wire::Json => serde_json::to_vec(&p)?.into(),
                    Wire::Protobuf => nodeless_control::api::proto::encode(&p)
                        .ok_or_else(|| anyhow::anyhow!("Pod has a protobuf message"))?
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .into(),
                })
            })
            .collect()
    }
}

async fn create_pods(n: &Nodeless, token: &str, ns: &str, total: usize, clients: usize, wire: Wire) -> Result<f64> {
    let token = token.to_string();
    let url = n.url(&format!("/api/v1/namespaces/{ns}/pods"));
    let bodies = Arc::new(wire.bodies(ns, total)?);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, token, url, next, bodies) = (n.http(), token.clone(), url.clone(), next.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let resp = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", wire.media())
                    .header("accept", wire.media())
                    .body(bodies[i].clone())
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().as_u16() == 201, "create failed: {}", resp.text().await?);
                let answer = resp.headers().get("content-type").and_then(|v| v.to_str().ok());
                anyhow::ensure!(answer == Some(wire.media()), "answered in {answer:?}");
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// A token of a ServiceAccount `bencher` in `ns`, bound there to the `edit` ClusterRole.
async fn edit_token(n: &Nodeless, ns: &str) -> Result<String> {
    let (http, admin) = (n.http(), n.admin_token());
    let post = |path: String, body: Value| {
        let (http, admin, url) = (http.clone(), admin.clone(), n.url(&path));
        async move {
            let resp = http.post(url).bearer_auth(admin).json(&body).send().await?;
            anyhow::ensure!(resp.status().is_success(), "{path}: {}", resp.text().await?);
            Ok::<Value, anyhow::Error>(resp.json().await?)
        }
    };
    post(
        format!("/api/v1/namespaces/{ns}/serviceaccounts"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bencher"}}),
    )
    .await?;
    post(
        format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "bencher-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": "bencher", "namespace": ns}]}),
    )
    .await?;
    let answer = post(
        format!("/api/v1/namespaces/{ns}/serviceaccounts/bencher/token"),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
    )
    .await?;
    answer["status"]["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no token in {answer}"))
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

async fn watch_latency(n: &Nodeless, watchers: usize, changes: usize) -> Result<(f64, f64, usize)> {
    let token = n.admin_token();
    let ns = "watchbench";
    let http = n.http();
    http.post(n.url("/api/v1/namespaces"))
        .bearer_auth(&token)
        .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .send()
        .await?;
    let rv = n
        .http()
        .get(n.url(&format!("/api/v1/namespaces/{ns}/configmaps")))
        .bearer_auth(&token)
        .send()
        .await?
        .json::<Value>()
        .await?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u128>();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let client = n.http();
        let url = n.url(&format!(
            "/api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={rv}"
        ));
        let (token, tx) = (token.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let resp = client.get(&url).bearer_auth(&token).send().await?;
            let mut stream = resp.bytes_stream();
            let mut buf = Vec::new();
            while let Some(chunk) = stream.next().await {
                buf.extend_from_slice(&chunk?);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let received = now_us();
                    let ev: Value = serde_json::from_slice(&line)?;
                    if let Some(sent) = ev["object"]["data"]["sent"]
                        .as_str()
                        .and_then(|s| s.parse::<u128>().ok())
                    {
                        let _ = tx.send(received.saturating_sub(sent));
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    drop(tx);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = n.url(&format!("/api/v1/namespaces/{ns}/configmaps"));
    for i in 0..changes {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}")}, "data": {"sent": now_us().to_string()}});
        http.post(&url).bearer_auth(&token).json(&body).send().await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lat = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lat.len() < watchers * changes {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(l)) => lat.push(l),
            _ => break,
        }
    }
    for t in tasks {
        t.abort();
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Ok((pct(0.50), pct(0.99), lat.len()))
}

/// etcd's own ceiling here: the transaction the store sends for a create (compare the key is
/// absent, put), with a pod's JSON, from `clients` concurrent clients on one connection pool.
async fn etcd_alone(endpoints: &str, total: usize, clients: usize) -> Result<f64> {
    let eps: Vec<&str> = endpoints.split(',').collect();
    let client = etcd_client::Client::connect(&eps, None).await?;
    let body = serde_json::to_vec(&pod("raw", "p"))?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (mut kv, next, body) = (client.kv_client(), next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let key = format!("/raw-bench/{i}");
                let txn = etcd_client::Txn::new()
                    .when([etcd_client::Compare::version(
                        key.clone(),
                        etcd_client::CompareOp::Equal,
                        0,
                    )])
                    .and_then([etcd_client::TxnOp::put(key, body.clone(), None)]);
                anyhow::ensure!(kv.txn(txn).await?.succeeded(), "the key existed");
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let n = Nodeless::start()?;
    let http = n.http();
    let token = n.admin_token();
    for ns in ["bench1", "bench32", "proto1", "proto32", "rbac32"] {
        http.post(n.url("/api/v1/namespaces"))
            .bearer_auth(&token)
            .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .send()
            .await?;
    }
    println!(
        "nodeless control-plane benchmark ({} cores)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let one = create_pods(&n, &token, "bench1", args.single, 1, Wire::Json).await?;
    let one_pb = create_pods(&n, &token, "proto1", args.single, 1, Wire::Protobuf).await?;
    println!(
        "durable pod creates/s, 1 client:    JSON {one:>8.0}  protobuf {one_pb:>8.0}  protobuf/JSON x{:.2}  ({} pods each)",
        one_pb / one,
        args.single
    );
    let cpu_before = nodeless_tests::cpu_seconds(n.pid().unwrap_or(0)).unwrap_or(0.0);
    let many = create_pods(&n, &token, "bench32", args.concurrent, args.clients, Wire::Json).await?;
    let embedded_cpu_us =
        (nodeless_tests::cpu_seconds(n.pid().unwrap_or(0)).unwrap_or(0.0) - cpu_before) * 1e6 / args.concurrent as f64;
    let many_pb = create_pods(&n, &token, "proto32", args.concurrent, args.clients, Wire::Protobuf).await?;
    println!(
        "durable pod creates/s, {} clients: JSON {many:>8.0}  protobuf {many_pb:>8.0}  protobuf/JSON x{:.2}  ({} pods each)   goal >= 2000, protobuf >= JSON",
        args.clients,
        many_pb / many,
        args.concurrent
    );
    let editor = edit_token(&n, "rbac32").await?;
    let many_sa = create_pods(&n, &editor, "rbac32", args.concurrent, args.clients, Wire::Json).await?;
    println!(
        "durable pod creates/s, {} clients, JSON as a ServiceAccount bound to edit (RBAC on every request): {many_sa:>8.0}  vs the admin x{:.2}",
        args.clients,
        many_sa / many
    );
    let (p50, p99, got) = watch_latency(&n, args.watchers, args.changes).await?;
    println!(
        "watch delivery latency, {} watchers: p50 {p50:.2} ms  p99 {p99:.2} ms  ({got} of {} events)   goal p99 <= 10 ms",
        args.watchers,
        args.watchers * args.changes
    );
    if args.etcd_members > 0 {
        let etcd = nodeless_tests::etcd::EtcdCluster::start(args.etcd_members)?;
        let e = Nodeless::start_with(&["--etcd", &etcd.endpoints()])?;
        let token = e.admin_token();
        e.http()
            .post(e.url("/api/v1/namespaces"))
            .bearer_auth(&token)
            .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench32"}}))
            .send()
            .await?;
        let cpu = |pids: &[u32]| {
            pids.iter()
                .map(|p| nodeless_tests::cpu_seconds(*p).unwrap_or(0.0))
                .sum::<f64>()
        };
        let (ours, members) = (vec![e.pid().unwrap_or(0)], etcd.pids());
        let (ours0, members0) = (cpu(&ours), cpu(&members));
        let on_etcd = create_pods(&e, &token, "bench32", args.concurrent, args.clients, Wire::Json).await?;
        let per_write = |now: f64, then: f64| (now - then) * 1e6 / args.concurrent as f64;
        let (ours_us, members_us) = (per_write(cpu(&ours), ours0), per_write(cpu(&members), members0));
        let raw = etcd_alone(&etcd.endpoints(), args.concurrent, args.clients).await?;
        let (e50, e99, egot) = watch_latency(&e, args.watchers, args.changes).await?;
        println!(
            "store on a {}-member etcd (same machine): durable pod creates/s, {} clients, JSON: {on_etcd:>8.0}  vs embedded x{:.2}   goal >= x0.5",
            args.etcd_members,
            args.clients,
            on_etcd / many
        );
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        println!(
            "CPU per durable create: embedded store {embedded_cpu_us:.0} us (nodeless); on etcd {ours_us:.0} us (nodeless) + {members_us:.0} us (the {} etcd members) = {:.0} us, so {cores} cores allow at most {:.0} creates/s on etcd here",
            args.etcd_members,
            ours_us + members_us,
            cores * 1e6 / (ours_us + members_us)
        );
        println!(
            "etcd alone, same cluster: compare-and-create transactions/s of the same pod JSON, {} clients: {raw:>8.0}  (the store on etcd reaches x{:.2} of it)",
            args.clients,
            on_etcd / raw
        );
        println!(
            "store on a {}-member etcd: watch delivery latency, {} watchers: p50 {e50:.2} ms  p99 {e99:.2} ms  ({egot} of {} events)   embedded p99 {p99:.2} ms",
            args.etcd_members,
            args.watchers,
            args.watchers * args.changes
        );
        drop(e);
        drop(etcd);
    }
    Ok(())
}
