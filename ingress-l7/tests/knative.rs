//! The activator on the HTTP/1.1 front, over real sockets on 127.0.0.1: a request for a
//! revision with no ready pod waits and is sent as soon as the table gains one (with the
//! route's appended fields replacing the client's), no pod within the revision's timeout is a
//! 504, and `containerConcurrency: 1` sends ten concurrent requests to one pod one at a time,
//! answering all of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use nodeless_ingress_l7::activator::Activator;
use nodeless_ingress_l7::front::Front;
use nodeless_ingress_l7::metrics::Metrics;
use nodeless_ingress_l7::routes::Table;
use nodeless_ingress_l7::routes::knative;
use nodeless_types::keys;
use nodeless_types::knative as kn;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).unwrap())
}

/// The pod: answers each request with its head after `delay`, counting requests at once.
struct Pod {
    addr: SocketAddr,
    most: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
}

async fn pod(delay: Duration) -> Pod {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (now, most, served) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (m, s) = (most.clone(), served.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (now, most, served) = (now.clone(), m.clone(), s.clone());
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        if conn.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                            return;
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = buf.split_to(end);
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    served.fetch_add(1, Ordering::SeqCst);
                    let mut reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", head.len()).into_bytes();
                    reply.extend_from_slice(&head);
                    if conn.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Pod { addr, most, served }
}

/// The revision `hello-00001`'s Service (with `annotations`) and its slice with `pods`.
fn objects(annotations: serde_json::Value, pods: &[SocketAddr]) -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    let svc = obj(json!({"metadata": {"name": "hello-00001", "namespace": "default",
        "labels": {kn::REVISION: "hello-00001"}, "annotations": annotations},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
    let port = pods.first().map_or(8080, |p| p.port());
    let eps: Vec<_> = pods
        .iter()
        .map(|p| json!({"addresses": [p.ip().to_string()], "conditions": {"ready": true}}))
        .collect();
    let slice = obj(
        json!({"metadata": {"name": "hello-00001-x", "namespace": "default", "labels": {keys::SERVICE_NAME: "hello-00001"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}], "endpoints": eps}),
    );
    (vec![svc], vec![slice])
}

fn kingress() -> Arc<DynamicObject> {
    obj(
        json!({"apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
        "metadata": {"name": "hello", "namespace": "default", "generation": 1},
        "spec": {"rules": [{"hosts": ["hello.default.example.com"], "visibility": "ExternalIP", "http": {"paths": [{"splits": [
            {"serviceName": "hello-00001", "serviceNamespace": "default", "servicePort": 80, "percent": 100,
             "appendHeaders": {kn::REVISION_HEADER: "hello-00001", kn::NAMESPACE_HEADER: "default"}}]}]}}]}}),
    )
}

/// The ingress's table, swapped and applied to the activator as the watch does.
struct Ingress {
    table: Arc<ArcSwap<Table>>,
    activator: Arc<Activator>,
    metrics: Arc<Metrics>,
    addr: SocketAddr,
}

impl Ingress {
    async fn start() -> Ingress {
        let metrics = Arc::new(Metrics::new(0));
        let ingress = Ingress {
            table: Arc::new(ArcSwap::from_pointee(Table::default())),
            activator: Arc::new(Activator::new(metrics.clone(), 100)),
            metrics: metrics.clone(),
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        let front = Arc::new(Front {
            table: ingress.table.clone(),
            metrics,
            scheme: "http",
            internal: false,
            alt_svc: None,
            h2c: Default::default(),
            limits: Default::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (_keep, shutdown) = tokio::sync::watch::channel(false);
            while let Ok((tcp, client)) = listener.accept().await {
                let (front, shutdown) = (front.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let _ = front.serve_h1(tcp, client, &shutdown).await;
                });
            }
        });
        Ingress { addr, ..ingress }
    }

    fn set(&self, annotations: serde_json::Value, pods: &[SocketAddr]) {
        let (services, slices) = objects(annotations, pods);
        let mut t = Table::default();
        t.knative = knative::build(&[kingress()], &services, &slices, &self.activator, &self.table.load());
        let revisions = t.knative.revisions.clone();
        self.table.store(Arc::new(t));
        self.activator.apply(&revisions);
    }
}

/// One GET on a new connection: the status and the body.
async fn get(addr: SocketAddr, extra: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!("GET /hi HTTP/1.1\r\nHost: hello.default.example.com\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_request_waits_for_the_revisions_first_pod() {
    let ingress = Ingress::start().await;
    let pod = pod(Duration::ZERO).await;
    ingress.set(json!({}), &[]);
    let t0 = Instant::now();
    let waiting = tokio::spawn(get(ingress.addr, "Knative-Serving-Revision: forged\r\n"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "no pod: the request waits");
    ingress.set(json!({}), &[pod.addr]);
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(body.contains("Knative-Serving-Revision: hello-00001\r\n"), "{body}");
    assert!(body.contains("Knative-Serving-Namespace: default\r\n"), "{body}");
    assert!(
        !body.contains("forged"),
        "the route's field replaces the client's: {body}"
    );
    let metrics = ingress.metrics.encode();
    assert!(
        metrics.contains(r#"nodeless_ingress_revision_cold_start_seconds_count{revision="default/hello-00001"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"nodeless_ingress_revision_requests_total{revision="default/hello-00001",class="2xx"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn no_pod_within_the_revisions_timeout_is_a_504() {
    let ingress = Ingress::start().await;
    ingress.set(json!({kn::TIMEOUT_SECONDS: "1"}), &[]);
    let t0 = Instant::now();
    let (status, body) = get(ingress.addr, "").await;
    assert_eq!(status, 504, "{body}");
    assert!(t0.elapsed() >= Duration::from_secs(1) && t0.elapsed() < Duration::from_secs(3));
    assert!(
        body.contains("revision default/hello-00001 had no ready pod within 1s"),
        "{body}"
    );
}

#[tokio::test]
async fn container_concurrency_one_answers_ten_requests_one_at_a_time() {
    let ingress = Ingress::start().await;
    let pod = pod(Duration::from_millis(20)).await;
    ingress.set(json!({kn::CONTAINER_CONCURRENCY: "1"}), &[pod.addr]);
    let all: Vec<_> = (0..10).map(|_| tokio::spawn(get(ingress.addr, ""))).collect();
    for r in all {
        assert_eq!(r.await.unwrap().0, 200);
    }
    assert_eq!(pod.served.load(Ordering::SeqCst), 10);
    assert_eq!(pod.most.load(Ordering::SeqCst), 1, "never two at once on the pod");
}

#[tokio::test]
async fn a_revisions_pod_gets_forwarded_appended_to_the_clients() {
    let ingress = Ingress::start().await;
    let pod = pod(Duration::ZERO).await;
    ingress.set(json!({}), &[pod.addr]);
    let (status, body) = get(ingress.addr, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Forwarded: for=127.0.0.1;proto=http\r\n"), "{body}");
    assert!(body.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{body}");
    let (status, body) = get(
        ingress.addr,
        "Forwarded: for=\"[2001:db8::1]\";proto=https\r\nX-Forwarded-For: 2001:db8::1\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("Forwarded:").count(), 1, "{body}");
    assert!(
        body.contains("Forwarded: for=\"[2001:db8::1]\";proto=https, for=127.0.0.1;proto=http\r\n"),
        "{body}"
    );
    assert!(body.contains("X-Forwarded-For: 2001:db8::1, 127.0.0.1\r\n"), "{body}");
}

/// A pod that answers each request on its connection with `head` at once, then each of
/// `chunks` after its delay (a chunked body), then closes.
async fn slow_pod(head: bool, chunks: &'static [(u64, &'static str)]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    if conn.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                if !head {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    return;
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                    .await;
                for (ms, text) in chunks {
                    tokio::time::sleep(Duration::from_millis(*ms)).await;
                    let chunk = format!("{:x}\r\n{text}\r\n", text.len());
                    if conn.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = conn.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_response_begun_within_the_revisions_timeout_streams_past_it() {
    let ingress = Ingress::start().await;
    // The head at once, then the body over 2 s with a pause of 1.5 s: past `timeoutSeconds`
    // in all and between two reads, with no `idleTimeoutSeconds`.
    let pod = slow_pod(true, &[(300, "first,"), (1500, "late,"), (200, "last")]).await;
    ingress.set(json!({kn::TIMEOUT_SECONDS: "1"}), &[pod]);
    let t0 = Instant::now();
    let (status, body) = get(ingress.addr, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    for text in ["first,", "late,", "last", "0\r\n\r\n"] {
        assert!(body.contains(text), "{text} missing from {body:?}");
    }
}

#[tokio::test]
async fn an_idle_timeout_still_cuts_a_pause_in_the_body() {
    let ingress = Ingress::start().await;
    let pod = slow_pod(true, &[(100, "first,"), (1500, "late")]).await;
    ingress.set(json!({kn::TIMEOUT_SECONDS: "5", kn::IDLE_TIMEOUT_SECONDS: "1"}), &[pod]);
    let t0 = Instant::now();
    let (status, body) = get(ingress.addr, "").await;
    assert_eq!(status, 200, "the head went out: {body}");
    assert!(body.contains("first,") && !body.contains("late"), "{body:?}");
    assert!(t0.elapsed() < Duration::from_millis(1500), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn no_response_head_within_the_revisions_timeout_is_a_504() {
    let ingress = Ingress::start().await;
    let pod = slow_pod(false, &[]).await;
    ingress.set(json!({kn::TIMEOUT_SECONDS: "1"}), &[pod]);
    let t0 = Instant::now();
    let (status, body) = get(ingress.addr, "").await;
    assert_eq!(status, 504, "{body}");
    assert!(t0.elapsed() >= Duration::from_secs(1) && t0.elapsed() < Duration::from_secs(3));
    assert!(body.contains("sent no answer in 1s"), "{body}");
}
