//! The kubelet API, the part control proxies to: container logs, exec and port-forward. HTTP/1.1
//! (websocket and SPDY upgrades included) inside mutual TLS on the node's address, loopback
//! too: only a client with control's certificate gets past the handshake (see
//! [`crate::kubelet_tls`]); the Node carries `nodeless.io/kubelet-scheme: https`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::context::NodeCtx;
use crate::shim_proto::parse_cri_line;

type Body = BoxBody<Bytes, Infallible>;

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(msg.into())).boxed())
        .unwrap_or_default()
}

/// A refused stream (exec, attach, port-forward) as a Kubernetes `Status`: kubectl reads the
/// body of a failed upgrade as one and shows its message (a text body shows as an empty
/// "Error from server:").
fn refused(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::FORBIDDEN => "Forbidden",
        _ => "BadRequest",
    };
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": msg.into(), "reason": reason, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(status.to_string())).boxed())
        .unwrap_or_default()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, ctx: Arc<NodeCtx>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((sock, peer)) = listener.accept().await else {
            continue;
        };
        let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(s)) => s,
                // Anyone can knock: debug level, so a scan does not flood the node's log.
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "kubelet API: TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "kubelet API: TLS handshake timed out");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route(ctx, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

async fn route(ctx: Arc<NodeCtx>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["healthz"] => text(StatusCode::OK, "ok"),
        ["metrics"] => {
            let mut resp = text(StatusCode::OK, ctx.metrics.encode(ctx.warm.len()));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            resp
        }
        ["metrics", "resource"] => {
            let pods: Vec<crate::stats::PodRef> = ctx
                .names
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|((namespace, name), uid)| crate::stats::PodRef {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    uid: uid.clone(),
                })
                .collect();
            let layout = crate::cgroups::layout();
            let body = crate::stats::resource_metrics(
                &layout,
                &ctx.cgroup_parent,
                &pods,
                crate::stats::node_usage(),
                chrono::Utc::now().timestamp_millis(),
            );
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        ["containerLogs", ns, pod, container] => logs(ctx, ns, pod, container, query(&req)).await,
        ["exec", ns, pod, container] => {
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            exec(ctx, &ns, &pod, &container, req).await
        }
        ["attach", ns, pod, container] => {
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            attach(ctx, &ns, &pod, &container, req).await
        }
        ["portForward", ns, pod] => {
            let (ns, pod) = (ns.to_string(), pod.to_string());
            port_forward(ctx, &ns, &pod, req).await
        }
        _ => text(StatusCode::NOT_FOUND, format!("{path}: not found on this node")),
    }
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The protocols a client offers, in its order of preference.
fn offered(req: &Request<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect()
}

enum Transport {
    Websocket { protocol: String, accept: String },
    Spdy { protocol: String },
}

/// Choose the transport and sub-protocol for a streaming request, or the 4xx to refuse it with.
fn negotiate(
    req: &Request<Incoming>,
    ws_protocols: &[&str],
    spdy_protocols: &[&str],
) -> Result<Transport, Box<Response<Body>>> {
    let upgrade = header(req, "upgrade").to_ascii_lowercase();
    if upgrade == "websocket" {
        let offers = offered(req, "sec-websocket-protocol");
        let Some(p) = offers.iter().find(|o| ws_protocols.contains(&o.as_str())) else {
            // kubectl falls back to SPDY when the websocket upgrade is refused.
            return Err(Box::new(refused(
                StatusCode::BAD_REQUEST,
                format!("none of the websocket protocols {offers:?} is supported (supported: {ws_protocols:?})"),
            )));
        };
        let key = header(req, "sec-websocket-key");
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        return Ok(Transport::Websocket {
            protocol: p.clone(),
            accept,
        });
    }
    if upgrade.starts_with("spdy/3.1") {
        let offers = offered(req, "x-stream-protocol-version");
        let Some(p) = spdy_protocols.iter().find(|p| offers.iter().any(|o| o == *p)) else {
            return Err(Box::new(refused(
                StatusCode::FORBIDDEN,
                format!("none of the stream protocols {offers:?} is supported (supported: {spdy_protocols:?})"),
            )));
        };
        return Ok(Transport::Spdy {
            protocol: p.to_string(),
        });
    }
    Err(Box::new(refused(
        StatusCode::BAD_REQUEST,
        "this endpoint needs a websocket or SPDY/3.1 upgrade",
    )))
}

fn switching(t: &Transport) -> Response<Body> {
    let b = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("Connection", "Upgrade");
    let b = match t {
        Transport::Websocket { protocol, accept } => b
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Accept", accept)
            .header("Sec-WebSocket-Protocol", protocol),
        Transport::Spdy { protocol } => b
            .header("Upgrade", "SPDY/3.1")
            .header("X-Stream-Protocol-Version", protocol),
    };
    b.body(Full::new(Bytes::new()).boxed()).unwrap_or_default()
}

/// A container's saved attempt (the current one, or the one before it) and where its files are:
/// its bundle and its data directory (the log).
fn saved_attempt(
    ctx: &NodeCtx,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<(crate::pod::Attempt, PathBuf, PathBuf), String> {
    let uid = ctx
        .uid_of(ns, pod)
        .ok_or_else(|| format!("pod {ns}/{pod} is not on this node"))?;
    let dir = ctx.pod_dir(&uid);
    let run_dir = ctx.pod_run_dir(&uid);
    let saved = crate::pod::state::load(&run_dir, &dir).and_then(|mut s| s.containers.remove(container));
    let attempt = saved.and_then(|c| if previous { c.previous } else { c.current });
    let Some(a) = attempt else {
        return Err(if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start")
        });
    };
    let bundle = crate::pod::attempt_bundle(&run_dir, &dir, container, a.number);
    let data = crate::pod::attempt_data_dir(&dir, container, a.number);
    Ok((a, bundle, data))
}

/// A container's running attempt.
fn running_container(
    ctx: &NodeCtx,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<crate::runtime::ContainerRef, String> {
    match saved_attempt(ctx, ns, pod, container, false)? {
        (a, bundle, _) if a.exit.is_none() => Ok(crate::runtime::ContainerRef { id: a.id, bundle }),
        _ => Err(format!("container {container} is not running")),
    }
}

async fn exec(ctx: Arc<NodeCtx>, ns: &str, pod: &str, container: &str, mut req: Request<Incoming>) -> Response<Body> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let opts = crate::streams::exec::ExecOptions::from_query(&pairs);
    if opts.command.is_empty() {
        return refused(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container",
        );
    }
    let id = match running_container(&ctx, ns, pod, container) {
        Ok(id) => id,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e),
    };
    let runtime = ctx
        .uid_of(ns, pod)
        .map(|u| ctx.runtime_for(&u))
        .unwrap_or_else(|| ctx.runtime.clone());
    let channels = opts.channels();
    channel_session(&mut req, &channels, "exec", move |out, input| {
        crate::streams::exec::run(runtime, id, opts, out, input)
    })
}

/// Answer an exec or attach request with the upgrade to the channel protocol the client
/// offers (websockets `v5`/`v4.channel.k8s.io`, or SPDY `v4.channel.k8s.io` with `channels`),
/// and run `session` on the channels once the upgrade is through.
fn channel_session<F, Fut>(
    req: &mut Request<Incoming>,
    channels: &[u8],
    what: &'static str,
    session: F,
) -> Response<Body>
where
    F: FnOnce(crate::streams::Output, crate::streams::Input) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let transport = match negotiate(req, &["v5.channel.k8s.io", "v4.channel.k8s.io"], &["v4.channel.k8s.io"]) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let resp = switching(&transport);
    let upgrade = hyper::upgrade::on(req);
    let channels = channels.to_vec();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let (out, input) = match transport {
            Transport::Websocket { protocol, .. } => crate::streams::websocket(io, protocol.starts_with("v5")).await,
            Transport::Spdy { .. } => match crate::streams::spdy_channels(io, &channels).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "{what} session");
                    return;
                }
            },
        };
        session(out, input).await;
    });
    resp
}

/// What the container's spec offers to an attached session (stdin, stdinOnce, tty).
async fn attach_offer(
    ctx: &NodeCtx,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<crate::streams::attach::Offered, String> {
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(ctx.client.clone(), ns);
    let p = api.get(pod).await.map_err(|e| format!("reading pod {ns}/{pod}: {e}"))?;
    let spec = serde_json::to_value(p.spec.unwrap_or_default()).unwrap_or_default();
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|l| spec[l].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == container)
        .map(|c| crate::streams::attach::Offered {
            stdin: c["stdin"] == true,
            stdin_once: c["stdinOnce"] == true,
            tty: c["tty"] == true,
        })
        .ok_or_else(|| format!("container {container} is not valid for pod {pod}"))
}

async fn attach(ctx: Arc<NodeCtx>, ns: &str, pod: &str, container: &str, mut req: Request<Incoming>) -> Response<Body> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let opts = crate::streams::exec::ExecOptions::from_query(&pairs);
    let offered = match attach_offer(&ctx, ns, pod, container).await {
        Ok(o) => o,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e),
    };
    if let Some(why) = crate::streams::attach::refusal(container, &opts, offered) {
        return refused(StatusCode::BAD_REQUEST, why);
    }
    let c = match running_container(&ctx, ns, pod, container) {
        Ok(c) => c,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e),
    };
    // Connected before the upgrade is answered, so a refusal is an HTTP error kubectl shows.
    let runtime = ctx
        .uid_of(ns, pod)
        .map(|u| ctx.runtime_for(&u))
        .unwrap_or_else(|| ctx.runtime.clone());
    let conn = match runtime.attach(&c.id).await {
        Ok(conn) => conn,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let channels = opts.channels();
    channel_session(&mut req, &channels, "attach", move |out, input| {
        crate::streams::attach::run(conn, opts, offered, out, input)
    })
}

async fn port_forward(ctx: Arc<NodeCtx>, ns: &str, pod: &str, mut req: Request<Incoming>) -> Response<Body> {
    let Some(uid) = ctx.uid_of(ns, pod) else {
        return refused(StatusCode::NOT_FOUND, format!("pod {ns}/{pod} is not on this node"));
    };
    let net = match ctx.vms.get(&uid) {
        Some(vm) => crate::pod_net::PodNet::Vm(vm),
        None => crate::pod_net::PodNet::Netns(crate::sandbox::PodNamespaces::at(ctx.ns_dir.join(&uid)).net()),
    };
    let transport = match negotiate(&req, &[], &["portforward.k8s.io"]) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let resp = switching(&transport);
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        crate::streams::portforward::serve(hyper_util::rt::TokioIo::new(upgraded), net).await;
    });
    resp
}

/// The log file of a container's current (or previous) attempt, and its exit file.
pub fn log_files(
    ctx: &NodeCtx,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<(PathBuf, PathBuf), String> {
    let (_, bundle, data) = saved_attempt(ctx, ns, pod, container, previous)?;
    Ok((data.join("log"), bundle.join("exit")))
}

struct Options {
    timestamps: bool,
    tail: Option<usize>,
    limit: Option<usize>,
    since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Turn CRI records into what `kubectl logs` prints.
fn render(lines: &str, o: &Options) -> Vec<String> {
    let mut out = Vec::new();
    let mut partial = String::new();
    for l in lines.lines() {
        let Some(p) = parse_cri_line(l) else { continue };
        if let Some(since) = o.since {
            if chrono::DateTime::parse_from_rfc3339(p.timestamp).is_ok_and(|t| t < since) {
                continue;
            }
        }
        if partial.is_empty() && o.timestamps {
            partial.push_str(p.timestamp);
            partial.push(' ');
        }
        partial.push_str(p.text);
        if p.full {
            partial.push('\n');
            out.push(std::mem::take(&mut partial));
        }
    }
    out
}

async fn logs(ctx: Arc<NodeCtx>, ns: &str, pod: &str, container: &str, q: HashMap<String, String>) -> Response<Body> {
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let (log, exit) = match log_files(&ctx, ns, pod, container, flag("previous")) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let since = q
        .get("sinceTime")
        .and_then(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc))
        })
        .or_else(|| {
            q.get("sinceSeconds")
                .and_then(|s| s.parse::<i64>().ok())
                .map(|s| chrono::Utc::now() - chrono::Duration::seconds(s))
        });
    let o = Options {
        timestamps: flag("timestamps"),
        tail: q.get("tailLines").and_then(|t| t.parse().ok()),
        limit: q.get("limitBytes").and_then(|t| t.parse().ok()),
        since,
    };
    let mut file = match tokio::fs::File::open(&log).await {
        Ok(f) => f,
        Err(e) => return text(StatusCode::NOT_FOUND, format!("{}: {e}", log.display())),
    };
    // The supervisor rotates the log at LOG_MAX_BYTES; a read never takes more than twice that.
    let mut raw = Vec::new();
    let _ = (&mut file)
        .take(2 * crate::shim_proto::LOG_MAX_BYTES)
        .read_to_end(&mut raw)
        .await;
    let content = String::from_utf8_lossy(&raw).into_owned();
    let consumed = content.rfind('\n').map_or(0, |i| i + 1);
    let mut rendered = render(&content[..consumed], &o);
    if let Some(t) = o.tail {
        let skip = rendered.len().saturating_sub(t);
        rendered.drain(..skip);
    }
    let mut first: String = rendered.concat();
    if let Some(l) = o.limit {
        first.truncate(l);
    }
    if !flag("follow") {
        return Response::builder()
            .header("Content-Type", "text/plain")
            .body(Full::new(Bytes::from(first)).boxed())
            .unwrap_or_default();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    tokio::spawn(async move {
        if tx.send(Ok(Frame::data(Bytes::from(first)))).await.is_err() {
            return;
        }
        let mut offset = consumed as u64;
        let mut carry = String::new();
        loop {
            let done = exit.exists();
            let _ = file.seek(std::io::SeekFrom::Start(offset)).await;
            let mut more = String::new();
            let n = file.read_to_string(&mut more).await.unwrap_or(0);
            offset += n as u64;
            carry.push_str(&more);
            if let Some(i) = carry.rfind('\n') {
                let ready: String = carry.drain(..=i).collect();
                let chunk = render(
                    &ready,
                    &Options {
                        tail: None,
                        limit: None,
                        since: None,
                        ..o
                    },
                );
                if !chunk.is_empty() && tx.send(Ok(Frame::data(Bytes::from(chunk.concat())))).await.is_err() {
                    return;
                }
            }
            if n == 0 && rotated(&log, &file).await {
                // The supervisor rotated the log: go on from the start of the new file.
                match tokio::fs::File::open(&log).await {
                    Ok(f) => {
                        (file, offset) = (f, 0);
                        continue;
                    }
                    Err(_) => return,
                }
            }
            if done && n == 0 {
                return;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let stream = tokio_stream_from(rx);
    Response::builder()
        .header("Content-Type", "text/plain")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_default()
}

/// Whether the file now at `path` is another one than `open` (the log was rotated).
async fn rotated(path: &std::path::Path, open: &tokio::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (tokio::fs::metadata(path).await, open.metadata().await) {
        (Ok(now), Ok(was)) => (now.dev(), now.ino()) != (was.dev(), was.ino()),
        _ => false,
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
