//! HTTP/3: a QUIC listener (quinn, h3) on the HTTPS port's number, beside the TCP listeners,
//! with the same certificates by SNI and the same routes. The TCP listeners advertise it with
//! `Alt-Svc`. Pingora has no HTTP/3, so requests that arrive over QUIC are admitted by the same
//! policy as the others ([`proxy::admit`]) and forwarded here, through a small pool of HTTP/1.1
//! (or h2c) connections to the endpoints kept by hyper.
//!
//! Connect failures count towards passive ejection and an idempotent request is retried on
//! another endpoint, as on the TCP side: the connection is made before the request's body is
//! read, so nothing is lost by a retry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::metrics::{self, Metrics};
use crate::proxy::{self, Outcome};
use crate::routes::{Settings, Table, Upstream};
use crate::tls::Certs;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;
type SendHalf = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// Connect attempts for one idempotent request, as on the TCP side.
const CONNECT_TRIES: usize = 3;
/// An idle connection to an endpoint is closed after this long.
const IDLE: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per endpoint.
const IDLE_PER_ENDPOINT: usize = 64;

/// Headers about one hop, which a proxy does not pass on (and HTTP/3 forbids).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// The QUIC endpoint: TLS 1.3 with the ingress's certificates by SNI, ALPN `h3`.
pub fn endpoint(addr: SocketAddr, certs: Arc<Certs>) -> Result<quinn::Endpoint> {
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC's TLS")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into()?));
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, addr).with_context(|| format!("binding UDP {addr} for HTTP/3"))
}

pub struct Http3 {
    pub table: Arc<ArcSwap<Table>>,
    pub metrics: Arc<Metrics>,
    pool: Pool,
}

impl Http3 {
    pub fn new(table: Arc<ArcSwap<Table>>, metrics: Arc<Metrics>) -> Http3 {
        Http3 {
            table,
            metrics,
            pool: Pool::default(),
        }
    }

    /// Accept QUIC connections until the endpoint closes.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let app = self.clone();
            tokio::spawn(async move {
                let client = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => app.connection(conn, client).await,
                    Err(e) => tracing::debug!(%client, error = %e, "QUIC handshake"),
                }
            });
        }
    }

    async fn connection(self: Arc<Self>, conn: quinn::Connection, client: SocketAddr) {
        let mut h3 = match h3::server::builder()
            .max_field_section_size(proxy::MAX_HEADER_BYTES as u64)
            .build::<_, Bytes>(h3_quinn::Connection::new(conn))
            .await
        {
            Ok(c) => c,
            Err(e) => return tracing::debug!(%client, error = %e, "HTTP/3 connection"),
        };
        loop {
            match h3.accept().await {
                Ok(Some(resolver)) => {
                    let app = self.clone();
                    tokio::spawn(async move {
                        match resolver.resolve_request().await {
                            Ok((req, stream)) => {
                                let (send, recv) = stream.split();
                                app.request(req, send, recv, client).await
                            }
                            Err(e) => tracing::debug!(%client, error = %e, "HTTP/3 request"),
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%client, error = %e, "HTTP/3 connection ended");
                    break;
                }
            }
        }
    }

    async fn request(&self, req: Request<()>, mut send: SendHalf, recv: RecvHalf, client: SocketAddr) {
        let started = Instant::now();
        let (head, ()) = req.into_parts();
        let id = proxy::request_id(&head.headers);
        let admitted = proxy::admit(&self.table.load(), "https", &head.uri, &head.headers);
        let (mut upstream, mut service) = (None, "-".to_string());
        let host = proxy::request_host(&head.uri, &head.headers);
        let (method, uri) = (head.method.clone(), head.uri.clone());
        let (code, upstream_error, error) = match admitted.outcome {
            Outcome::Respond(status, body) => (answer(&mut send, status, &body, &id).await, None, String::new()),
            // Only plain HTTP is redirected; HTTP/3 is never plain.
            Outcome::Redirect(_) => (
                answer(&mut send, 500, "redirect on a secure listener", &id).await,
                None,
                String::new(),
            ),
            Outcome::Forward(u) => {
                let f = self
                    .forward(
                        &u,
                        &admitted.settings,
                        &admitted.ingress,
                        head,
                        &host,
                        &id,
                        client,
                        &mut send,
                        recv,
                    )
                    .await;
                upstream = f.endpoint.map(|i| u.addr(i));
                service = u.name.clone();
                let code = match f.answer {
                    Some((status, body)) => answer(&mut send, status, &body, &id).await,
                    None => f.code,
                };
                (code, f.upstream_error, f.error)
            }
        };
        let took = started.elapsed();
        self.metrics
            .count(&admitted.ingress, &service, code, took, upstream_error);
        if self.metrics.may_log() {
            self.metrics.log(&metrics::Finished {
                client: &client.ip().to_string(),
                protocol: "HTTP/3",
                method: method.as_str(),
                host: &host,
                path: uri.path(),
                code,
                ingress: &admitted.ingress,
                service: &service,
                upstream: &upstream.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                took,
                id: &id,
                error: &error,
            });
        }
    }

    /// Send the request to one of `u`'s endpoints and stream the answer back.
    async fn forward(
        &self,
        u: &Upstream,
        settings: &Settings,
        ingress: &str,
        head: http::request::Parts,
        host: &str,
        id: &str,
        client: SocketAddr,
        send: &mut SendHalf,
        recv: RecvHalf,
    ) -> Forwarded {
        let mut done = Forwarded::default();
        let (last, got) = self
            .pool
            .connect_any(u, settings, proxy::idempotent(&head.method), &self.metrics, ingress)
            .await;
        done.endpoint = last;
        let (i, mut conn) = match got {
            Ok(c) => c,
            Err((status, body, error)) => {
                done.error = error;
                done.answer = Some((status, body));
                return done;
            }
        };
        u.connected(i);
        u.start(i);
        let _under_way = Release(u, i);

        let too_large = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let req = match upstream_request(head, host, id, client, recv, settings.body_limit, too_large.clone()) {
            Ok(r) => r,
            Err(e) => {
                done.answer = Some((400, format!("the request cannot be forwarded: {e}")));
                return done;
            }
        };
        let resp = match tokio::time::timeout(settings.read_timeout, conn.send(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                done.error = e.to_string();
                if too_large.load(std::sync::atomic::Ordering::Relaxed) {
                    done.answer = Some((
                        413,
                        format!(
                            "the request body is larger than this route's limit of {} bytes",
                            settings.body_limit
                        ),
                    ));
                } else {
                    done.upstream_error = Some("read");
                    done.answer = Some((502, format!("endpoint {} of service {} failed: {e}", u.addr(i), u.name)));
                }
                return done;
            }
            Err(_) => {
                done.upstream_error = Some("read timeout");
                done.error = "read timeout".into();
                done.answer = Some((
                    504,
                    format!(
                        "endpoint {} of service {} sent no answer in {:?}",
                        u.addr(i),
                        u.name,
                        settings.read_timeout
                    ),
                ));
                return done;
            }
        };
        let (parts, mut body) = resp.into_parts();
        done.code = parts.status.as_u16();
        let mut out = Response::builder().status(parts.status);
        if let Some(h) = out.headers_mut() {
            *h = parts.headers;
            strip_hop_by_hop(h);
            h.insert(
                "x-request-id",
                HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("-")),
            );
        }
        let Ok(out) = out.body(()) else {
            done.answer = Some((502, "the endpoint's response head cannot be sent".into()));
            return done;
        };
        if let Err(e) = send.send_response(out).await {
            done.error = format!("sending the response: {e}");
            return done;
        }
        loop {
            let frame = match tokio::time::timeout(settings.read_timeout, body.frame()).await {
                Ok(Some(Ok(f))) => f,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    done.upstream_error = Some("read");
                    done.error = format!("the endpoint's body: {e}");
                    send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                    return done;
                }
                Err(_) => {
                    done.upstream_error = Some("read timeout");
                    done.error = "read timeout in the body".into();
                    send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                    return done;
                }
            };
            let sent = match frame.into_data() {
                Ok(data) => send.send_data(data).await,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => send.send_trailers(trailers).await,
                    Err(_) => Ok(()),
                },
            };
            if let Err(e) = sent {
                // The client went away: the endpoint's connection is dropped with the body.
                done.error = format!("sending to the client: {e}");
                return done;
            }
        }
        if let Err(e) = send.finish().await {
            done.error = format!("finishing the response: {e}");
        }
        // The response is read to its end: the connection can take the next request.
        self.pool.put(u.addr(i), conn);
        done
    }
}

#[derive(Default)]
struct Forwarded {
    /// The endpoint last tried.
    endpoint: Option<usize>,
    /// The status the endpoint answered.
    code: u16,
    /// An answer the ingress gives itself instead.
    answer: Option<(u16, String)>,
    upstream_error: Option<&'static str>,
    error: String,
}

/// Counts a request as under way at an endpoint until dropped.
struct Release<'a>(&'a Upstream, usize);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.done(self.1);
    }
}

/// The ingress's own answer; returns its status.
async fn answer(send: &mut SendHalf, status: u16, body: &str, id: &str) -> u16 {
    let text = format!("{body}\n");
    let resp = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(http::header::CONTENT_LENGTH, text.len())
        .header("x-request-id", id)
        .body(());
    if let Ok(resp) = resp {
        if send.send_response(resp).await.is_ok() && send.send_data(Bytes::from(text)).await.is_ok() {
            let _ = send.finish().await;
        }
    }
    status
}

pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<String> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for n in HOP_BY_HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        h.remove(n);
    }
}

/// The HTTP/1.1 (or h2c) request for the endpoint: origin-form target, Host from the
/// authority, the forwarding headers, and the client's body streamed as it arrives (cut off
/// past `limit` bytes, which sets `too_large`).
fn upstream_request(
    head: http::request::Parts,
    host: &str,
    id: &str,
    client: SocketAddr,
    recv: RecvHalf,
    limit: u64,
    too_large: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Request<Body>> {
    let target = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let declared = proxy::declared_length(&head.headers);
    let mut headers = head.headers;
    strip_hop_by_hop(&mut headers);
    if !host.is_empty() {
        headers.insert(http::header::HOST, HeaderValue::from_str(host)?);
        headers.insert("x-forwarded-host", HeaderValue::from_str(host)?);
    }
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.is_empty() => format!("{prior}, {}", client.ip()),
        _ => client.ip().to_string(),
    };
    headers.insert("x-forwarded-for", HeaderValue::from_str(&xff)?);
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    headers.insert("x-request-id", HeaderValue::from_str(id)?);
    // A GET or the like with no declared length has no body (HTTP/3 ends the stream); others
    // are streamed, chunked when no length is declared.
    let bodyless = declared == Some(0)
        || (declared.is_none()
            && matches!(
                head.method,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::OPTIONS
                    | http::Method::DELETE
                    | http::Method::TRACE
            ));
    let body: Body = if bodyless {
        Empty::new()
            .map_err(|e: std::convert::Infallible| match e {})
            .boxed_unsync()
    } else {
        StreamBody::new(client_body(recv, limit, too_large)).boxed_unsync()
    };
    let mut req = Request::builder()
        .method(head.method)
        .uri(target)
        .version(http::Version::HTTP_11)
        .body(body)?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Where the client's body stands.
enum Phase {
    /// Data, this many bytes so far; then the trailers.
    Data(u64),
    Done,
}

/// The client's body as frames: data as it arrives, then its trailers; it ends after an error.
fn client_body(
    recv: RecvHalf,
    limit: u64,
    too_large: Arc<std::sync::atomic::AtomicBool>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, BoxError>> {
    futures::stream::unfold((recv, Phase::Data(0)), move |(mut recv, phase)| {
        let too_large = too_large.clone();
        async move {
            if let Phase::Data(seen) = phase {
                match recv.recv_data().await {
                    Ok(Some(mut chunk)) => {
                        let bytes = chunk.copy_to_bytes(chunk.remaining());
                        let seen = seen + bytes.len() as u64;
                        if limit > 0 && seen > limit {
                            too_large.store(true, std::sync::atomic::Ordering::Relaxed);
                            recv.stop_sending(h3::error::Code::H3_REQUEST_REJECTED);
                            return Some((
                                Err(BoxError::from("request body over the route's limit")),
                                (recv, Phase::Done),
                            ));
                        }
                        return Some((Ok(Frame::data(bytes)), (recv, Phase::Data(seen))));
                    }
                    Ok(None) => {}
                    Err(e) => return Some((Err(BoxError::from(e.to_string())), (recv, Phase::Done))),
                }
            }
            match phase {
                Phase::Done => None,
                Phase::Data(_) => match recv.recv_trailers().await {
                    Ok(Some(t)) => Some((Ok(Frame::trailers(t)), (recv, Phase::Done))),
                    _ => None,
                },
            }
        }
    })
}

/// A connection to an endpoint, ready for one request.
pub(crate) enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Conn {
    pub(crate) async fn send(&mut self, req: Request<Body>) -> hyper::Result<Response<hyper::body::Incoming>> {
        match self {
            Conn::H1(s) => s.send_request(req).await,
            Conn::H2(s) => {
                let mut req = req;
                *req.version_mut() = http::Version::HTTP_2;
                s.send_request(req).await
            }
        }
    }
}

/// Keep-alive connections to endpoints: idle HTTP/1.1 connections (one request at a time each)
/// and one shared HTTP/2 connection per h2c endpoint.
/// An idle HTTP/1.1 connection and when it went idle.
type Idle = (Instant, hyper::client::conn::http1::SendRequest<Body>);

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    h2: Mutex<HashMap<SocketAddr, hyper::client::conn::http2::SendRequest<Body>>>,
}

impl Pool {
    /// A connection to one of `u`'s endpoints: another one after a failed connect (each counted
    /// towards the endpoint's ejection and in the metrics), up to three for an idempotent
    /// request. Returns the endpoint last tried, and the connection or the status, body and
    /// error of the answer to give instead.
    pub(crate) async fn connect_any(
        &self,
        u: &Upstream,
        settings: &Settings,
        idempotent: bool,
        metrics: &Metrics,
        ingress: &str,
    ) -> (Option<usize>, std::result::Result<(usize, Conn), (u16, String, String)>) {
        let tries = if idempotent {
            CONNECT_TRIES.min(u.endpoints.len().max(1))
        } else {
            1
        };
        let mut tried = Vec::new();
        loop {
            let Some(i) = u.pick(settings.balance, &tried) else {
                return (
                    tried.last().copied(),
                    Err((503, format!("service {} has no ready endpoints", u.name), String::new())),
                );
            };
            tried.push(i);
            match self.get(u.addr(i), u.h2c, settings.connect_timeout).await {
                Ok(c) => return (Some(i), Ok((i, c))),
                Err(e) => {
                    u.connect_failed(i);
                    metrics
                        .upstream_errors
                        .get_or_create(&metrics::UpstreamError {
                            ingress: ingress.to_string(),
                            service: u.name.clone(),
                            kind: "connect".into(),
                        })
                        .inc();
                    if tried.len() >= tries {
                        return (
                            Some(i),
                            Err((
                                502,
                                format!("could not connect to an endpoint of service {}: {e}", u.name),
                                format!("connecting to {}: {e}", u.addr(i)),
                            )),
                        );
                    }
                }
            }
        }
    }

    pub(crate) async fn get(&self, addr: SocketAddr, h2c: bool, connect_timeout: Duration) -> Result<Conn> {
        if h2c {
            if let Some(s) = self
                .h2
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&addr)
                .filter(|s| !s.is_closed())
                .cloned()
            {
                return Ok(Conn::H2(s));
            }
        } else {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(list) = idle.get_mut(&addr) {
                while let Some((since, s)) = list.pop() {
                    if since.elapsed() < IDLE && s.is_ready() {
                        return Ok(Conn::H1(s));
                    }
                }
            }
        }
        let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {connect_timeout:?}"))??;
        tcp.set_nodelay(true)?;
        if h2c {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            self.h2
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(addr, send.clone());
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            Ok(Conn::H1(send))
        }
    }

    /// A connection whose response was read to the end goes back to the pool.
    pub(crate) fn put(&self, addr: SocketAddr, conn: Conn) {
        if let Conn::H1(s) = conn {
            if s.is_closed() {
                return;
            }
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.entry(addr).or_default();
            list.retain(|(since, s)| since.elapsed() < IDLE && !s.is_closed());
            if list.len() < IDLE_PER_ENDPOINT {
                list.push((Instant::now(), s));
            }
        }
    }
}
