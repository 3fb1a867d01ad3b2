//! Pod subresources: binding (the scheduler's write), and log/exec/attach/portforward, which are
//! proxied to the kubelet API of the pod's node, upgrades (SPDY and websockets) included.

use std::sync::Arc;

use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::ApiState;
use super::error::{ApiError, not_found};
use super::http::{Body, json_response};
use super::registry::Served;

/// Annotation a node sets when its kubelet API listens on plain HTTP. sandbox-node never does
/// (its kubelet API is mutual TLS: control presents `tls::KUBELET_CLIENT_NAME`'s certificate and
/// checks the node's against the cluster CA); the tests' stand-in kubelet does.
pub const KUBELET_SCHEME: &str = "nodeless.io/kubelet-scheme";

pub(super) async fn bind(
    state: &ApiState,
    served: &Served,
    ns: &str,
    name: &str,
    body: Value,
) -> Result<Response<Body>, ApiError> {
    let node = body
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if node.is_empty() {
        return Err(ApiError::bad_request("binding target.name: Required value"));
    }
    let key = served.key(Some(ns), name);
    let cur = state.store.get(&key).ok_or_else(|| not_found(served, name))?;
    if cur
        .obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
    {
        return Err(ApiError::PreconditionFailed(format!(
            "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{}\"",
            cur.obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default()
        )));
    }
    let mut new = (*cur.obj).clone();
    new["spec"]["nodeName"] = json!(node);
    let conditions = new["status"]
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut conditions: Vec<Value> = conditions
        .into_iter()
        .filter(|c| c.get("type") != Some(&json!("PodScheduled")))
        .collect();
    conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
        "lastTransitionTime": super::objects::now_rfc3339()}));
    new["status"]["conditions"] = json!(conditions);
    // Binding writes spec and status together, bypassing the status-subresource split.
    state
        .store
        .write(crate::store::Write::Update {
            key: key.clone(),
            obj: new,
            expect_rev: Some(cur.rev),
        })
        .await
        .map_err(|e| super::error::store_err(served, name, e))?;
    Ok(json_response(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    ))
}

fn container_for(pod: &Value, name: &str, q: &str) -> Result<Option<String>, ApiError> {
    let asked = url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.into_owned());
    if asked.is_some() {
        return Ok(asked);
    }
    let names: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
        .collect();
    match names.as_slice() {
        [one] => Ok(Some(one.clone())),
        _ => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            names.join(" ")
        ))),
    }
}

pub(super) async fn proxy_to_node(
    state: &Arc<ApiState>,
    ns: &str,
    name: &str,
    sub: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let pods = state.registry.lookup("", "v1", "pods").ok_or(ApiError::NoRoute)?;
    let pod = state
        .store
        .get(&pods.key(Some(ns), name))
        .ok_or_else(|| not_found(&pods, name))?;
    let node_name = pod
        .obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let query = req.uri().query().unwrap_or_default().to_string();
    let path = match sub {
        "log" => format!(
            "/containerLogs/{ns}/{name}/{}",
            container_for(&pod.obj, name, &query)?.unwrap_or_default()
        ),
        "exec" => format!(
            "/exec/{ns}/{name}/{}",
            container_for(&pod.obj, name, &query)?.unwrap_or_default()
        ),
        "attach" => format!(
            "/attach/{ns}/{name}/{}",
            container_for(&pod.obj, name, &query)?.unwrap_or_default()
        ),
        _ => format!("/portForward/{ns}/{name}"),
    };
    forward_to_node(state, &node_name, &path, req).await
}

/// Send `req` to the kubelet API of `node_name` at `path` (its query kept), over mutual TLS (or
/// plain HTTP for a node that says so), and stream the answer back; an upgrade (exec, attach,
/// port-forward) is spliced through.
pub(super) async fn forward_to_node(
    state: &Arc<ApiState>,
    node_name: &str,
    path: &str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (addr, port, plain) = node_endpoint(state, node_name)?;
    let query = req.uri().query().unwrap_or_default().to_string();
    let uri: Uri = format!("{path}{}{query}", if query.is_empty() { "" } else { "?" })
        .parse()
        .map_err(|e| ApiError::internal(format!("bad node URL: {e}")))?;
    let unavailable =
        |e: String| ApiError::Unavailable(format!("error talking to node {node_name} ({addr}:{port}): {e}"));
    let tcp = tokio::net::TcpStream::connect((addr.as_str(), port))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (parts, body) = req.into_parts();
    let mut out = Request::builder().method(parts.method.clone()).uri(uri);
    for (k, v) in &parts.headers {
        if k != header::AUTHORIZATION && k != header::HOST {
            out = out.header(k, v);
        }
    }
    let out = out
        .header(header::HOST, format!("{addr}:{port}"))
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = if plain {
        send(TokioIo::new(tcp), out).await
    } else {
        let server_name =
            rustls::pki_types::ServerName::try_from(addr.clone()).map_err(|e| unavailable(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(state.node_tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        send(TokioIo::new(tls), out).await
    }
    .map_err(unavailable)?;
    let status = resp.status();
    let (rparts, rbody) = resp.into_parts();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let node_upgrade = hyper::upgrade::on(Response::from_parts(rparts.clone(), ()));
        tokio::spawn(async move {
            if let (Ok(client), Ok(node)) = (client_upgrade.await, node_upgrade.await) {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(node)).await;
            }
        });
        return Ok(Response::from_parts(rparts, super::http::full(bytes::Bytes::new())));
    }
    // Stream the node's body through; a node connection that breaks ends the stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>>(16);
    tokio::spawn(async move {
        let mut rbody = rbody;
        while let Some(Ok(frame)) = rbody.frame().await {
            if tx.send(Ok(frame)).await.is_err() {
                break;
            }
        }
    });
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync();
    Ok(Response::from_parts(rparts, body))
}

/// Where a node's kubelet API listens, and whether it speaks plain HTTP (see [`KUBELET_SCHEME`]).
fn node_endpoint(state: &ApiState, node_name: &str) -> Result<(String, u16, bool), ApiError> {
    let nodes = state.registry.lookup("", "v1", "nodes").ok_or(ApiError::NoRoute)?;
    let node = state
        .store
        .get(&nodes.key(None, node_name))
        .ok_or_else(|| not_found(&nodes, node_name))?;
    let addr = node
        .obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| a.get("type") == Some(&json!("InternalIP")))
        .and_then(|a| a.get("address").and_then(Value::as_str))
        .unwrap_or("127.0.0.1")
        .to_string();
    let port = node
        .obj
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .unwrap_or(10250) as u16;
    let plain = node
        .obj
        .pointer(&format!("/metadata/annotations/{}", KUBELET_SCHEME.replace('/', "~1")))
        == Some(&json!("http"));
    Ok((addr, port, plain))
}

/// GET a path of a node's kubelet API (what control's metrics API scrapes); the body as text.
pub(crate) async fn node_get(state: &ApiState, node_name: &str, path: &str) -> Result<String, String> {
    let (addr, port, plain) = node_endpoint(state, node_name).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect((addr.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    let req = Request::get(path)
        .header(header::HOST, format!("{addr}:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = if plain {
        send(TokioIo::new(tcp), req).await?
    } else {
        let server_name = rustls::pki_types::ServerName::try_from(addr.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(state.node_tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        send(TokioIo::new(tls), req).await?
    };
    if !resp.status().is_success() {
        return Err(format!("{path}: {}", resp.status()));
    }
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
}

async fn send<T, B>(io: TokioIo<T>, req: Request<B>) -> Result<Response<Incoming>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}
