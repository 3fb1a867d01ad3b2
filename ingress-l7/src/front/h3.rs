//! The HTTP/3 front: a QUIC endpoint (quinn, h3) on the HTTPS port's number, beside the TCP
//! listeners, with the same certificates by SNI and the same routes. The TCP listeners advertise
//! it with `Alt-Svc`. Pingora has no HTTP/3, so requests that arrive over QUIC are admitted by
//! the same policy as the others ([`crate::admit::admit`]) and forwarded through hyper's client
//! connections to the endpoints ([`crate::upstream::client`]).
//!
//! Connect failures count towards passive ejection and an idempotent request is retried on
//! another endpoint, as on the TCP side: the connection is made before the request's body is
//! read, so nothing is lost by a retry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use bytes::{Buf, Bytes};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;

use crate::activator;
use crate::admit::{self, Outcome};
use crate::balance::Upstream;
use crate::forwarding::Forwarding;
use crate::limits::MAX_HEADER_BYTES;
use crate::metrics::{self, Metrics};
use crate::routes::{Settings, Table};
use crate::tls::Certs;
use crate::upstream::Forwarded;
use crate::upstream::client::{BoxBody, BoxError, Pool};
use crate::wire::{strip_hop_by_hop, within};

type SendHalf = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

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

/// The QUIC endpoint's requests: the routes and metrics the TCP fronts share, and a pool of
/// connections to endpoints of its own.
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
            .max_field_section_size(MAX_HEADER_BYTES as u64)
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
        let id = admit::request_id(&head.headers);
        let admitted = admit::admit(&self.table.load(), "https", false, &head.uri, &head.headers);
        let (mut upstream, mut service) = (None, "-".to_string());
        let host = admit::request_host(&head.uri, &head.headers);
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
                let permit = activator::gate(admitted.revision.as_ref(), started).await;
                let (u, pin) = match &permit {
                    Ok(Some(p)) => (p.upstream.clone(), Some(p.endpoint)),
                    _ => (u, None),
                };
                let f = match &permit {
                    Err(answer) => Forwarded {
                        answer: Some(answer.clone()),
                        ..Default::default()
                    },
                    Ok(_) => {
                        self.forward(
                            &u,
                            pin,
                            admitted.append.as_ref(),
                            &admitted.settings,
                            &admitted.ingress,
                            head,
                            &host,
                            &id,
                            client,
                            &mut send,
                            recv,
                        )
                        .await
                    }
                };
                drop(permit);
                upstream = f.endpoint;
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
        if let Some(r) = &admitted.revision {
            self.metrics.count_revision(&r.id, code, took);
        }
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
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        u: &Upstream,
        pin: Option<usize>,
        append: Option<&Arc<[(String, String)]>>,
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
        let idempotent = admit::idempotent(&head.method);
        let Some((i, mut conn, _under_way)) = self
            .pool
            .open(u, pin, settings, idempotent, &self.metrics, ingress, &mut done)
            .await
        else {
            return done;
        };

        let too_large = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let forwarding = Forwarding {
            client: Some(client.ip()),
            scheme: "https",
            host,
            rfc7239: settings.forwarded,
        };
        let req = match upstream_request(
            head,
            &forwarding,
            id,
            recv,
            settings.body_limit,
            too_large.clone(),
            append,
        ) {
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
            let frame = match within(settings.body_idle(), body.frame()).await {
                Some(Some(Ok(f))) => f,
                Some(None) => break,
                Some(Some(Err(e))) => {
                    done.upstream_error = Some("read");
                    done.error = format!("the endpoint's body: {e}");
                    send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                    return done;
                }
                None => {
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

/// The HTTP/1.1 (or h2c) request for the endpoint: origin-form target, Host from the
/// authority, the forwarding headers, and the client's body streamed as it arrives (cut off
/// past `limit` bytes, which sets `too_large`).
fn upstream_request(
    head: http::request::Parts,
    forwarding: &Forwarding<'_>,
    id: &str,
    recv: RecvHalf,
    limit: u64,
    too_large: Arc<std::sync::atomic::AtomicBool>,
    append: Option<&Arc<[(String, String)]>>,
) -> Result<Request<BoxBody>> {
    let target = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let declared = admit::declared_length(&head.headers);
    let mut headers = head.headers;
    strip_hop_by_hop(&mut headers);
    if !forwarding.host.is_empty() {
        headers.insert(http::header::HOST, HeaderValue::from_str(forwarding.host)?);
    }
    let fields = forwarding.fields_for(&headers);
    for name in forwarding.replaced() {
        headers.remove(name);
    }
    for (name, value) in fields {
        headers.insert(name, HeaderValue::from_str(&value)?);
    }
    headers.insert("x-request-id", HeaderValue::from_str(id)?);
    for (name, value) in append.iter().flat_map(|a| a.iter()) {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
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
    let body: BoxBody = if bodyless {
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
