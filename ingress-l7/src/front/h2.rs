//! The HTTP/2 front: h2c connections (by their preface) and TLS connections with `h2` by ALPN are
//! served here with the h2 crate, one task per connection driving its streams together. Each
//! stream is admitted by the same policy as every other request ([`crate::admit::admit`]) and
//! forwarded as HTTP/1.1 over the worker thread's own kept-alive connections (the ones the
//! HTTP/1.1 front uses, [`crate::upstream::tcp`]), or, to h2c endpoints (`appProtocol:
//! kubernetes.io/h2c`, gRPC), over one shared HTTP/2 connection per endpoint
//! ([`crate::upstream::client`]).
//!
//! Towards an HTTP/1.1 endpoint a request body of unknown length is sent chunked, and a chunked
//! response is sent on as plain DATA frames (HTTP/2 has no chunked coding); response trailers
//! from an HTTP/1.1 endpoint are dropped. Towards an h2c endpoint bodies and trailers go through
//! as they are.
//!
//! A Knative revision's stream waits for the activator's permit ([`crate::activator::gate`])
//! before its endpoint is chosen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::Front;
use crate::activator;
use crate::admit::{self, Outcome};
use crate::balance::Upstream;
use crate::forwarding::{FORWARDED, Forwarding, set_by_ingress};
use crate::limits::MAX_HEADER_BYTES;
use crate::metrics;
use crate::routes::Settings;
use crate::upstream::client::{BoxError, Conn};
use crate::upstream::tcp::{Read, obtain, put_idle, read_head, unusable_head};
use crate::upstream::{CONNECT_TRIES, Forwarded, UnderWay, connect_tries};
use crate::wire::{
    Body, MAX_HEADERS, READ_CHUNK, framing, is_hop_by_hop, parse_response, strip_hop_by_hop, within, write_out,
};

/// Streams a client may have open at once on one connection.
const MAX_STREAMS: u32 = 256;

/// Whether a client's request field (named in lower case, as HTTP/2 has them) is left out of the
/// head for an HTTP/1.1 endpoint: `Host`, written from the authority; the hop-by-hop fields,
/// which HTTP/2 does not have; and the fields the ingress sets itself on a route that does
/// (`rfc7239`) or does not write `Forwarded`.
fn request_dropped(name: &str, rfc7239: bool) -> bool {
    name == "host" || is_hop_by_hop(name) || set_by_ingress(name, rfc7239)
}

impl Front {
    /// Serve an HTTP/2 connection until the client closes it, it fails, or the ingress shuts
    /// down (then gracefully: streams under way finish).
    pub async fn serve_h2<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: S,
        client: SocketAddr,
        shutdown: &ShutdownWatch,
    ) {
        let handshake = h2::server::Builder::new()
            .max_concurrent_streams(MAX_STREAMS)
            // Above the ingress's own limit, so a head over it gets the same 431 as on HTTP/1.1.
            .max_header_list_size(2 * MAX_HEADER_BYTES as u32)
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(io);
        let mut conn = match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return tracing::debug!(%client, error = %e, "HTTP/2 handshake"),
            Err(_) => return tracing::debug!(%client, "HTTP/2 handshake timed out"),
        };
        let mut shutdown = shutdown.clone();
        let mut streams = FuturesUnordered::new();
        let mut closing = *shutdown.borrow();
        if closing {
            conn.graceful_shutdown();
        }
        // A connection with no stream open for as long as an HTTP/1.1 one may idle is closed.
        let idle = tokio::time::sleep(self.limits.idle);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                next = conn.accept() => match next {
                    Some(Ok((req, respond))) => {
                        streams.push(self.h2_stream(req, respond, client));
                    }
                    Some(Err(e)) => {
                        tracing::debug!(%client, error = %e, "HTTP/2 connection");
                        break;
                    }
                    None => break,
                },
                Some(()) = streams.next(), if !streams.is_empty() => {
                    if streams.is_empty() {
                        idle.as_mut().reset(tokio::time::Instant::now() + self.limits.idle);
                    }
                }
                _ = &mut idle, if streams.is_empty() && !closing => {
                    closing = true;
                    conn.graceful_shutdown();
                }
                _ = shutdown.changed(), if !closing => {
                    closing = true;
                    conn.graceful_shutdown();
                }
            }
        }
        // The connection is over: what is left of its streams can only fail now.
        while streams.next().await.is_some() {}
    }

    async fn h2_stream(&self, req: http::Request<RecvStream>, mut respond: SendResponse<Bytes>, client: SocketAddr) {
        let started = Instant::now();
        let (head, body) = req.into_parts();
        let id = admit::request_id(&head.headers);
        let admitted = admit::admit(&self.table.load(), self.scheme, self.internal, &head.uri, &head.headers);
        let host = admit::request_host(&head.uri, &head.headers);
        let mut service = None;
        let mut done = match admitted.outcome {
            Outcome::Respond(status, text) => Forwarded {
                answer: Some((status, text)),
                ..Default::default()
            },
            Outcome::Redirect(to) => {
                let mut resp = Response::new(());
                *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
                if let Ok(v) = HeaderValue::from_str(&to) {
                    resp.headers_mut().insert(http::header::LOCATION, v);
                }
                self.finish_head(resp.headers_mut(), &id);
                let _ = respond.send_response(resp, true);
                Forwarded {
                    code: 308,
                    ..Default::default()
                }
            }
            Outcome::Forward(u) => match activator::gate(admitted.revision.as_ref(), started).await {
                Err(answer) => Forwarded {
                    answer: Some(answer),
                    ..Default::default()
                },
                Ok(permit) => {
                    // A revision's permit names the endpoint, in the revision's latest upstream.
                    let (u, pin) = match &permit {
                        Some(p) => (p.upstream.clone(), Some(p.endpoint)),
                        None => (u, None),
                    };
                    let append = admitted.append.as_ref();
                    let f = if u.h2c {
                        self.h2_to_h2c(
                            &u,
                            pin,
                            append,
                            &admitted.settings,
                            &head,
                            body,
                            &host,
                            &id,
                            client,
                            &admitted.ingress,
                            &mut respond,
                        )
                        .await
                    } else {
                        self.h2_to_h1(
                            &u,
                            pin,
                            append,
                            &admitted.settings,
                            &head,
                            body,
                            &host,
                            &id,
                            client,
                            &admitted.ingress,
                            &mut respond,
                        )
                        .await
                    };
                    drop(permit);
                    service = Some(u);
                    f
                }
            },
        };
        if let Some((status, text)) = done.answer.take() {
            done.code = status;
            let text = Bytes::from(format!("{text}\n"));
            let mut resp = Response::new(());
            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(text.len()));
            self.finish_head(resp.headers_mut(), &id);
            if let Ok(mut stream) = respond.send_response(resp, false) {
                let _ = send_all(&mut stream, text, true).await;
            }
        }
        let took = started.elapsed();
        let service_name = service.as_ref().map_or("-", |u| u.name.as_str());
        self.metrics
            .count(&admitted.ingress, service_name, done.code, took, done.upstream_error);
        if let Some(r) = &admitted.revision {
            self.metrics.count_revision(&r.id, done.code, took);
        }
        if self.metrics.may_log() {
            self.metrics.log(&metrics::Finished {
                client: &client.ip().to_string(),
                protocol: "HTTP/2",
                method: head.method.as_str(),
                host: &host,
                path: head.uri.path(),
                code: done.code,
                ingress: &admitted.ingress,
                service: service_name,
                upstream: &done.endpoint.map_or_else(|| "-".to_string(), |a| a.to_string()),
                took,
                id: &id,
                error: &done.error,
            });
        }
    }

    /// The fields the ingress adds to every response head.
    fn finish_head(&self, headers: &mut HeaderMap, id: &str) {
        headers.insert(
            "x-request-id",
            HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("-")),
        );
        if let Some(v) = &self.alt_svc {
            headers.insert(http::header::ALT_SVC, v.clone());
        }
    }

    /// Forward a stream as HTTP/1.1 to one of `u`'s endpoints.
    #[allow(clippy::too_many_arguments)]
    async fn h2_to_h1(
        &self,
        u: &Upstream,
        pin: Option<usize>,
        append: Option<&Arc<[(String, String)]>>,
        settings: &Settings,
        head: &http::request::Parts,
        mut body: RecvStream,
        host: &str,
        id: &str,
        client: SocketAddr,
        ingress: &str,
        respond: &mut SendResponse<Bytes>,
    ) -> Forwarded {
        let mut done = Forwarded::default();
        let declared = admit::declared_length(&head.headers);
        let has_body = !body.is_end_stream();
        let chunked = has_body && declared.is_none();
        let forwarding = Forwarding {
            client: Some(client.ip()),
            scheme: self.scheme,
            host,
            rfc7239: settings.forwarded,
        };
        let out = request_head(head, id, &forwarding, chunked, append);
        let timeout = settings.read_timeout;
        let tries = if pin.is_some() {
            1
        } else {
            connect_tries(u, admit::idempotent(&head.method))
        };
        let (mut tried, mut ntried, mut again) = ([0usize; CONNECT_TRIES], 0, None);
        let mut under_way: Option<UnderWay<'_>>;
        let mut ubuf = BytesMut::with_capacity(READ_CHUNK);
        let (i, mut conn, len, status, headers, mut framing, keep_alive) = 'attempt: loop {
            let Some((i, mut conn, reused)) = obtain(
                &self.metrics,
                u,
                settings,
                tries,
                has_body,
                &mut tried,
                &mut ntried,
                again.take(),
                pin,
                ingress,
                &mut done,
            )
            .await
            else {
                return done;
            };
            if !reused {
                u.connected(i);
            }
            u.start(i);
            under_way = Some(UnderWay(u, i));
            ubuf.clear();
            if let Err(e) = write_out(&mut conn, &out, timeout).await {
                if reused && !has_body {
                    again = Some(i);
                    continue 'attempt;
                }
                done.upstream_error = Some("write");
                done.answer = Some((502, format!("endpoint {} of service {} failed: {e}", u.addr(i), u.name)));
                return done;
            }
            if has_body {
                let mut seen = 0u64;
                let mut chunk = Vec::new();
                while let Some(data) = body.data().await {
                    let data = match data {
                        Ok(d) => d,
                        Err(e) => {
                            done.error = format!("the client's body: {e}");
                            done.code = 400;
                            return done;
                        }
                    };
                    let _ = body.flow_control().release_capacity(data.len());
                    seen += data.len() as u64;
                    if settings.body_limit > 0 && seen > settings.body_limit {
                        done.answer = Some((
                            413,
                            format!(
                                "the request body is larger than this route's limit of {} bytes",
                                settings.body_limit
                            ),
                        ));
                        return done;
                    }
                    if data.is_empty() {
                        continue;
                    }
                    let sent = if chunked {
                        chunk.clear();
                        chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                        chunk.extend_from_slice(&data);
                        chunk.extend_from_slice(b"\r\n");
                        write_out(&mut conn, &chunk, timeout).await
                    } else {
                        write_out(&mut conn, &data, timeout).await
                    };
                    if let Err(e) = sent {
                        done.upstream_error = Some("write");
                        done.answer = Some((502, format!("endpoint {} of service {} failed: {e}", u.addr(i), u.name)));
                        return done;
                    }
                }
                if chunked {
                    if let Err(e) = write_out(&mut conn, b"0\r\n\r\n", timeout).await {
                        done.upstream_error = Some("write");
                        done.answer = Some((502, format!("endpoint {} of service {} failed: {e}", u.addr(i), u.name)));
                        return done;
                    }
                }
            }
            // The response's head; interim (1xx) ones are skipped.
            loop {
                match read_head(&mut conn, &mut ubuf, timeout, u, i, reused && !has_body, &mut done).await {
                    Read::Head => {}
                    Read::Again => {
                        again = Some(i);
                        continue 'attempt;
                    }
                    Read::Failed => return done,
                }
                match response_head(&ubuf, head.method == http::Method::HEAD) {
                    Ok(Some((len, status, ..))) if (100..200).contains(&status) && status != 101 => ubuf.advance(len),
                    Ok(Some((len, status, headers, framing, keep_alive))) if status != 101 => {
                        break 'attempt (i, conn, len, status, headers, framing, keep_alive);
                    }
                    Ok(Some(_)) => return unusable_head(done, u, i, "switched protocols unasked"),
                    Ok(None) => return unusable_head(done, u, i, "sent a malformed response head"),
                    Err(e) => return unusable_head(done, u, i, &format!("sent a malformed response: {e}")),
                }
            }
        };
        let _under_way = under_way;
        done.code = status;
        ubuf.advance(len);
        let mut resp = Response::new(());
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        *resp.headers_mut() = headers;
        self.finish_head(resp.headers_mut(), id);
        let no_body = framing.finished();
        let mut stream = match respond.send_response(resp, no_body) {
            Ok(s) => s,
            Err(e) => {
                done.error = format!("sending the response: {e}");
                return done;
            }
        };
        let mut data = BytesMut::new();
        let idle = settings.body_idle();
        while !framing.finished() {
            if !ubuf.is_empty() {
                let n = match &mut framing {
                    Body::Chunked(c) => c.scan_into(&ubuf, Some(&mut data)),
                    other => other.take(&ubuf).inspect(|&n| data.extend_from_slice(&ubuf[..n])),
                };
                let Some(n) = n else {
                    done.upstream_error = Some("protocol");
                    done.error = format!("malformed chunked body from {}", u.addr(i));
                    stream.send_reset(h2::Reason::INTERNAL_ERROR);
                    return done;
                };
                ubuf.advance(n);
                if !data.is_empty() || framing.finished() {
                    if let Err(e) = send_all(&mut stream, data.split().freeze(), framing.finished()).await {
                        done.error = format!("sending to the client: {e}");
                        return done;
                    }
                }
                if framing.finished() {
                    break;
                }
            }
            ubuf.reserve(READ_CHUNK);
            match within(idle, conn.read_buf(&mut ubuf)).await {
                Some(Ok(n)) if n > 0 => {}
                Some(Ok(_)) if matches!(framing, Body::UntilClose) => {
                    let _ = send_all(&mut stream, Bytes::new(), true).await;
                    return done;
                }
                outcome => {
                    done.upstream_error = Some(if outcome.is_none() { "read timeout" } else { "read" });
                    done.error = format!("the body from {} ended early", u.addr(i));
                    stream.send_reset(h2::Reason::INTERNAL_ERROR);
                    return done;
                }
            }
        }
        if keep_alive && ubuf.is_empty() {
            put_idle(u.addr(i), conn);
        }
        done
    }

    /// Forward a stream over HTTP/2 to an h2c endpoint: bodies and trailers both ways.
    #[allow(clippy::too_many_arguments)]
    async fn h2_to_h2c(
        &self,
        u: &Upstream,
        pin: Option<usize>,
        append: Option<&Arc<[(String, String)]>>,
        settings: &Settings,
        head: &http::request::Parts,
        body: RecvStream,
        host: &str,
        id: &str,
        client: SocketAddr,
        ingress: &str,
        respond: &mut SendResponse<Bytes>,
    ) -> Forwarded {
        let mut done = Forwarded::default();
        let idempotent = admit::idempotent(&head.method);
        let Some((i, mut conn, _under_way)) = self
            .h2c
            .open(u, pin, settings, idempotent, &self.metrics, ingress, &mut done)
            .await
        else {
            return done;
        };
        let uri = format!(
            "http://{}{}",
            if host.is_empty() { "localhost" } else { host },
            head.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut headers = head.headers.clone();
        strip_hop_by_hop(&mut headers);
        let forwarding = Forwarding {
            client: Some(client.ip()),
            scheme: self.scheme,
            host,
            rfc7239: settings.forwarded,
        };
        let fields = forwarding.fields_for(&headers);
        let mut set = |name: &str, value: &str| {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                headers.insert(n, v);
            }
        };
        for (name, value) in &fields {
            set(name, value);
        }
        set("x-request-id", id);
        for (name, value) in append.iter().flat_map(|a| a.iter()) {
            set(name, value);
        }
        headers.remove(http::header::HOST);
        let limit = settings.body_limit;
        let stream_body = StreamBody::new(client_frames(body, limit));
        let req = http::Request::builder()
            .method(head.method.clone())
            .uri(uri)
            .version(http::Version::HTTP_2)
            .body(stream_body.boxed_unsync());
        let mut req = match req {
            Ok(r) => r,
            Err(e) => {
                done.answer = Some((400, format!("the request cannot be forwarded: {e}")));
                return done;
            }
        };
        *req.headers_mut() = headers;
        let resp = match tokio::time::timeout(settings.read_timeout, conn.send(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                done.upstream_error = Some("read");
                done.error = e.to_string();
                done.answer = Some((502, format!("endpoint {} of service {} failed: {e}", u.addr(i), u.name)));
                return done;
            }
            Err(_) => {
                done.upstream_error = Some("read timeout");
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
        if let Conn::H2(_) = conn {
            self.h2c.put(u.addr(i), conn);
        }
        let (parts, mut rbody) = resp.into_parts();
        done.code = parts.status.as_u16();
        let mut out = Response::new(());
        *out.status_mut() = parts.status;
        *out.headers_mut() = parts.headers;
        strip_hop_by_hop(out.headers_mut());
        self.finish_head(out.headers_mut(), id);
        let mut stream = match respond.send_response(out, false) {
            Ok(s) => s,
            Err(e) => {
                done.error = format!("sending the response: {e}");
                return done;
            }
        };
        loop {
            let frame = match within(settings.body_idle(), rbody.frame()).await {
                Some(Some(Ok(f))) => f,
                Some(None) => {
                    let _ = send_all(&mut stream, Bytes::new(), true).await;
                    return done;
                }
                outcome => {
                    done.upstream_error = Some(if outcome.is_none() { "read timeout" } else { "read" });
                    done.error = "the endpoint's body failed".into();
                    stream.send_reset(h2::Reason::INTERNAL_ERROR);
                    return done;
                }
            };
            let sent = match frame.into_data() {
                Ok(data) => send_all(&mut stream, data, false).await,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => stream.send_trailers(trailers).map(|_| ()),
                    Err(_) => Ok(()),
                },
            };
            if let Err(e) = sent {
                done.error = format!("sending to the client: {e}");
                return done;
            }
        }
    }
}

/// The client's body as frames for hyper: data as it arrives (its flow-control window given
/// back), then its trailers; an error past `limit` bytes.
fn client_frames(
    body: RecvStream,
    limit: u64,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + 'static {
    futures::stream::unfold((body, Some(0u64)), move |(mut body, seen)| async move {
        let seen = seen?;
        match body.data().await {
            Some(Ok(data)) => {
                let _ = body.flow_control().release_capacity(data.len());
                let seen = seen + data.len() as u64;
                if limit > 0 && seen > limit {
                    return Some((Err(BoxError::from("request body over the route's limit")), (body, None)));
                }
                Some((Ok(Frame::data(data)), (body, Some(seen))))
            }
            Some(Err(e)) => Some((Err(BoxError::from(e)), (body, None))),
            None => match body.trailers().await {
                Ok(Some(t)) => Some((Ok(Frame::trailers(t)), (body, None))),
                _ => None,
            },
        }
    })
}

/// The HTTP/1.1 head for an endpoint: the request line, Host from the authority, the client's
/// fields (cookies joined into one), the forwarding fields, and the body's framing.
fn request_head(
    head: &http::request::Parts,
    id: &str,
    forwarding: &Forwarding<'_>,
    chunked: bool,
    append: Option<&Arc<[(String, String)]>>,
) -> Vec<u8> {
    let host = forwarding.host;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut field = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    field(b"Host", host.as_bytes());
    let mut cookies: Vec<&[u8]> = Vec::new();
    let mut prior_xff = None;
    for (name, value) in head.headers.iter() {
        let n = name.as_str();
        if n == "cookie" {
            cookies.push(value.as_bytes());
        } else if n == "x-forwarded-for" {
            prior_xff = value.to_str().ok().filter(|v| !v.is_empty());
        } else if !request_dropped(n, forwarding.rfc7239) && !admit::appended(append, n) {
            field(n.as_bytes(), value.as_bytes());
        }
    }
    for (name, value) in append.iter().flat_map(|a| a.iter()) {
        field(name.as_bytes(), value.as_bytes());
    }
    if !cookies.is_empty() {
        field(b"cookie", &cookies.join(&b"; "[..]));
    }
    let prior_forwarded = forwarding
        .rfc7239
        .then(|| crate::forwarding::joined(&head.headers, FORWARDED))
        .flatten();
    forwarding.each(prior_xff, prior_forwarded.as_deref(), |name, value| {
        field(name.as_bytes(), value.as_bytes())
    });
    field(b"X-Request-Id", id.as_bytes());
    if chunked {
        field(b"Transfer-Encoding", b"chunked");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// An HTTP/1.1 response head from an endpoint: its length, status, the fields for an HTTP/2
/// response (no hop-by-hop ones, no X-Request-Id, which the ingress sets), how its body ends,
/// and whether the connection stays open.
#[allow(clippy::type_complexity)]
fn response_head(
    ubuf: &[u8],
    head_request: bool,
) -> Result<Option<(usize, u16, HeaderMap, Body, bool)>, httparse::Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let Some((len, status, version)) = parse_response(&mut resp, ubuf)? else {
        return Ok(None);
    };
    let (body, keep_alive) = framing(status, version, head_request, resp.headers);
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        if is_hop_by_hop(h.name) || h.name.eq_ignore_ascii_case("x-request-id") {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            headers.append(n, v);
        }
    }
    Ok(Some((len, status, headers, body, keep_alive)))
}

/// Send `data` as the client's flow-control windows allow, ending the stream after it when
/// `end`.
async fn send_all(stream: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<(), h2::Error> {
    if data.is_empty() {
        return if end { stream.send_data(data, true) } else { Ok(()) };
    }
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let room = match futures::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Error::from(h2::Reason::STREAM_CLOSED)),
        };
        let part = data.split_to(room.min(data.len()));
        stream.send_data(part, end && data.is_empty())?;
    }
    Ok(())
}
