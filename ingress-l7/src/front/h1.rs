//! The HTTP/1.1 front: requests on an HTTP/1.1 connection (plain, or TLS with `http/1.1` by
//! ALPN) are parsed here (httparse), admitted by the same policy as every other request
//! ([`crate::admit::admit_head`]), and forwarded over the worker thread's own kept-alive
//! connections ([`crate::upstream::tcp`]), with no task, lock or channel per request.
//!
//! Pingora's proxy spends two to three times nginx's CPU on a short request, most of it in
//! machinery this path does not need: every upstream connection returned to its pool gets a
//! mutex, a notify and watch pair and a spawned task watching it while idle, and every request
//! two channels between the downstream and upstream halves. Here the request head is rewritten
//! into one buffer and written once, the response head and as much of the body as has arrived go
//! back in one write, and an idle upstream connection is a socket in a per-thread list.
//!
//! What this front does not take it hands over, unread, to the pingora fallback
//! ([`crate::fallback`]), which keeps the connection from then on: bodies without a length
//! (`Transfer-Encoding`), `Expect`, upgrades (websockets), HTTP/1.0, targets that are not
//! origin-form, `Connection` options other than `close` and `keep-alive`, and routes to h2c
//! endpoints.
//!
//! A Knative revision's request waits here, before its endpoint is chosen, for the activator's
//! permit ([`crate::activator::gate`]); its route's `appendHeaders` are written into the head.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{End, Front};
use crate::activator::{self, Revision};
use crate::admit::{self, Asked, Outcome};
use crate::balance::Upstream;
use crate::forwarding::{FORWARDED, Forwarding, set_by_ingress};
use crate::limits::MAX_HEADER_BYTES;
use crate::metrics;
use crate::routes::Settings;
use crate::upstream::tcp::{Read, obtain, put_idle, read_head, unusable_head};
use crate::upstream::{CONNECT_TRIES, Forwarded, UnderWay, connect_tries};
use crate::wire::{
    Body, MAX_HEADERS, READ_CHUNK, content_length, framing, is_hop_by_hop, parse_response, within, write_out,
};

/// Whether a client's request field is left out of the head for the endpoint: the hop-by-hop
/// fields (requests with `Transfer-Encoding` or `Upgrade` go to pingora, so of those only
/// `Connection`, `Keep-Alive`, `Proxy-Connection` and `TE` get this far), and the fields the
/// ingress sets itself on a route that does (`rfc7239`) or does not write `Forwarded`.
fn request_dropped(name: &str, rfc7239: bool) -> bool {
    is_hop_by_hop(name) || set_by_ingress(name, rfc7239)
}

/// Of the hop-by-hop fields, those an endpoint's response keeps on its way to the client: it
/// goes on framed as the endpoint framed it (a chunked body stays chunked, so its
/// `Transfer-Encoding` stays), and `TE` and `Upgrade` with it.
const RESPONSE_KEPT: [&str; 3] = ["te", "transfer-encoding", "upgrade"];

/// What a request head asks for, decided while the head is borrowed from the read buffer.
enum Plan {
    /// Not for this path: hand the connection over.
    HandOff,
    /// Answer here: status, body, and a Location for a redirect.
    Answer(u16, String, Option<String>),
    /// Send it upstream.
    Forward(Forward),
}

struct Forward {
    upstream: Arc<Upstream>,
    settings: Arc<Settings>,
    /// The request body's length (0: none).
    body: u64,
    idempotent: bool,
    /// A HEAD request: the response has no body, whatever its Content-Length says.
    head: bool,
    /// A Knative revision's request: it waits for the activator's permit.
    revision: Option<Arc<Revision>>,
}

/// A parsed request head: how long it is, and what to do with it.
struct Request {
    head_len: usize,
    /// The client asked to close after this request (or the head was malformed).
    close: bool,
    id: String,
    ingress: String,
    /// Method, host and path, kept only when this request's access-log line will be written.
    log: Option<(String, String, String)>,
    plan: Plan,
}

impl Front {
    /// Serve HTTP/1.1 requests on `io` until the client closes, an error ends the connection, the
    /// ingress shuts down, or a request needs pingora ([`End::HandOff`]).
    pub async fn serve_h1<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut io: S,
        client: SocketAddr,
        shutdown: &ShutdownWatch,
    ) -> End<S> {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut ubuf = BytesMut::with_capacity(READ_CHUNK);
        let mut out = Vec::with_capacity(1024);
        let mut rout = Vec::with_capacity(1024);
        // The client's address as the access log writes it.
        let ip = client.ip().to_string();
        loop {
            if *shutdown.borrow() {
                return End::Closed;
            }
            // The next request's head: its first byte within the idle limit, then all of it
            // within the header limit (a client sending a byte now and then is cut off as one
            // sending nothing). A head that arrives whole costs no second clock read.
            let mut begun = !buf.is_empty();
            let mut deadline = tokio::time::Instant::now() + if begun { self.limits.header } else { self.limits.idle };
            let req = loop {
                if !buf.is_empty() {
                    match self.plan(&buf, client.ip(), &mut out) {
                        Ok(Some(r)) => break r,
                        Ok(None) if buf.len() <= MAX_HEADER_BYTES => {
                            if !begun {
                                begun = true;
                                deadline = tokio::time::Instant::now() + self.limits.header;
                            }
                        }
                        Ok(None) => {
                            let body = format!("the request's header is over the limit of {MAX_HEADER_BYTES} bytes");
                            let _ = self.answer(&mut io, &mut rout, 431, &body, None, "-", true).await;
                            return End::Closed;
                        }
                        Err((status, body)) => {
                            let _ = self.answer(&mut io, &mut rout, status, &body, None, "-", true).await;
                            return End::Closed;
                        }
                    }
                }
                buf.reserve(READ_CHUNK);
                match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return End::Closed,
                }
            };
            let started = Instant::now();
            let Request {
                head_len,
                close,
                id,
                ingress,
                log,
                plan,
            } = req;
            let mut revision = None;
            let (code, service, done) = match plan {
                Plan::HandOff => return End::HandOff(io, buf),
                Plan::Answer(status, body, location) => {
                    buf.advance(head_len);
                    if self
                        .answer(&mut io, &mut rout, status, &body, location.as_deref(), &id, close)
                        .await
                        .is_err()
                    {
                        return End::Closed;
                    }
                    (status, None, Forwarded::default())
                }
                Plan::Forward(f) => {
                    buf.advance(head_len);
                    revision = f.revision.clone();
                    let mut done = self
                        .forward(&mut io, &mut buf, &mut ubuf, &out, &mut rout, &f, &id, &ingress, close)
                        .await;
                    if let Some((status, body)) = done.answer.take() {
                        // Nothing of the endpoint's answer reached the client: the ingress's own
                        // answer, after which the connection closes (what is left of a request
                        // body may be unread).
                        let _ = self.answer(&mut io, &mut rout, status, &body, None, &id, true).await;
                        done.code = status;
                        done.close = true;
                    }
                    (done.code, Some(f.upstream), done)
                }
            };
            let took = started.elapsed();
            let service_name = service.as_ref().map_or("-", |u| u.name.as_str());
            self.metrics
                .count(&ingress, service_name, code, took, done.upstream_error);
            if let Some(r) = &revision {
                self.metrics.count_revision(&r.id, code, took);
            }
            if let Some((method, host, path)) = log {
                self.metrics.log(&metrics::Finished {
                    client: &ip,
                    protocol: "HTTP/1.1",
                    method: &method,
                    host: &host,
                    path: &path,
                    code,
                    ingress: &ingress,
                    service: service_name,
                    upstream: &done.endpoint.map_or_else(|| "-".to_string(), |a| a.to_string()),
                    took,
                    id: &id,
                    error: &done.error,
                });
            }
            if close || done.close {
                let _ = io.shutdown().await;
                return End::Closed;
            }
        }
    }

    /// Parse the head at the start of `buf` and decide what to do with it; a request to forward
    /// has its head for the endpoint written into `out`. `Ok(None)`: the head is not complete
    /// yet. `Err`: the status and reason to answer with before closing.
    fn plan(&self, buf: &[u8], client: IpAddr, out: &mut Vec<u8>) -> Result<Option<Request>, (u16, String)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err((431, format!("the request has more than {MAX_HEADERS} header fields")));
            }
            Err(e) => return Err((400, format!("malformed request head: {e}"))),
        };
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
            return Err((400, "malformed request line".into()));
        };
        let hand_off = Request {
            head_len,
            close: false,
            id: String::new(),
            ingress: String::new(),
            log: None,
            plan: Plan::HandOff,
        };
        // Every field is looked at, whoever serves the request: the framing rules below hold for
        // what is handed to pingora too.
        let (mut host, mut length, mut close, mut id, mut prior_xff) =
            (None::<&str>, None::<u64>, false, None::<&str>, None::<&str>);
        // Transfer-Encoding: present, and whether its final coding is chunked.
        let (mut coded, mut chunked) = (false, false);
        let mut pingoras = version != 1 || !target.starts_with('/');
        for h in req.headers.iter() {
            let name = h.name;
            let value = || std::str::from_utf8(h.value).map(str::trim);
            if name.eq_ignore_ascii_case("host") {
                if host.is_some() {
                    return Err((400, "more than one Host header".into()));
                }
                host = Some(value().map_err(|_| (400, "the Host header is not text".to_string()))?);
            } else if name.eq_ignore_ascii_case("content-length") {
                let n = content_length(h.value)
                    .ok_or_else(|| (400, "Content-Length is not a number (ASCII digits only)".to_string()))?;
                if length.is_some_and(|m| m != n) {
                    return Err((400, "conflicting Content-Length headers".into()));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                {
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case("keep-alive") {
                        // Upgrade, or a header named as hop-by-hop: pingora's.
                        pingoras = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                coded = true;
                chunked = value()
                    .ok()
                    .and_then(|v| v.rsplit(',').next())
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
                pingoras = true;
            } else if name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("expect") {
                pingoras = true;
            } else if name.eq_ignore_ascii_case("x-request-id") {
                id = value().ok().filter(|v| !v.is_empty());
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                prior_xff = value().ok().filter(|v| !v.is_empty());
            }
        }
        // RFC 9112 section 6.3: a body framed two ways, or by a coding that does not end in
        // chunked, or coded in HTTP/1.0, is where request smuggling starts. 400, then close.
        if coded {
            if length.is_some() {
                return Err((400, "both Transfer-Encoding and Content-Length".into()));
            }
            if !chunked || version != 1 {
                return Err((
                    400,
                    "Transfer-Encoding whose final coding is not chunked, or in HTTP/1.0".into(),
                ));
            }
        }
        if pingoras {
            return Ok(Some(hand_off));
        }
        let Some(host) = host else {
            return Err((400, "an HTTP/1.1 request without a Host header".into()));
        };
        let header = |n: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(n))
                .map(|h| h.value)
        };
        let admitted = admit::admit_request(
            &self.table.load(),
            &Asked {
                scheme: self.scheme,
                internal: self.internal,
                host,
                target,
                declared: length,
                header_bytes: head_len,
                header: &header,
            },
        );
        let append = admitted.append;
        let rfc7239 = admitted.settings.forwarded;
        let plan = match admitted.outcome {
            Outcome::Forward(u) if u.h2c => return Ok(Some(hand_off)),
            Outcome::Forward(upstream) => Plan::Forward(Forward {
                upstream,
                settings: admitted.settings,
                body: length.unwrap_or(0),
                idempotent: admit::idempotent_method(method),
                head: method == "HEAD",
                revision: admitted.revision,
            }),
            // A body that is not read leaves the connection unusable.
            Outcome::Respond(status, body) => {
                close |= length.is_some_and(|n| n > 0);
                Plan::Answer(status, body, None)
            }
            Outcome::Redirect(to) => {
                close |= length.is_some_and(|n| n > 0);
                Plan::Answer(308, String::new(), Some(to))
            }
        };
        let id = id.map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string);
        if let Plan::Forward(_) = plan {
            // The head for the endpoint: the request line and fields as they came, less the
            // hop-by-hop ones, with the forwarding fields set.
            out.clear();
            out.extend_from_slice(method.as_bytes());
            out.push(b' ');
            out.extend_from_slice(target.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\n");
            let mut prior_forwarded: Option<String> = None;
            for h in req.headers.iter() {
                if rfc7239 && h.name.eq_ignore_ascii_case(FORWARDED) {
                    if let Ok(v) = std::str::from_utf8(h.value) {
                        match &mut prior_forwarded {
                            Some(p) => *p = format!("{p}, {v}"),
                            None => prior_forwarded = Some(v.to_string()),
                        }
                    }
                } else if !request_dropped(h.name, rfc7239) && !admit::appended(append.as_ref(), h.name) {
                    field(out, h.name, h.value);
                }
            }
            for (name, value) in append.iter().flat_map(|a| a.iter()) {
                field(out, name, value.as_bytes());
            }
            let forwarding = Forwarding {
                client: Some(client),
                scheme: self.scheme,
                host,
                rfc7239,
            };
            forwarding.each(prior_xff, prior_forwarded.as_deref(), |name, value| {
                field(out, name, value.as_bytes())
            });
            field(out, "X-Request-Id", id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let log = self.metrics.may_log().then(|| {
            (
                method.to_string(),
                host.to_string(),
                target.split_once('?').map_or(target, |(p, _)| p).to_string(),
            )
        });
        Ok(Some(Request {
            head_len,
            close,
            id,
            ingress: admitted.ingress,
            log,
            plan,
        }))
    }

    /// The ingress's own answer: a short text body (or none for a redirect).
    async fn answer<S: AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        rout: &mut Vec<u8>,
        status: u16,
        body: &str,
        location: Option<&str>,
        id: &str,
        close: bool,
    ) -> std::io::Result<()> {
        rout.clear();
        status_line(rout, status, reason(status));
        let text = if location.is_some() {
            String::new()
        } else {
            format!("{body}\n")
        };
        if let Some(to) = location {
            field(rout, "Location", to.as_bytes());
        } else {
            field(rout, "Content-Type", b"text/plain; charset=utf-8");
        }
        field(rout, "Content-Length", text.len().to_string().as_bytes());
        field(rout, "X-Request-Id", id.as_bytes());
        self.closing_fields(rout, close);
        rout.extend_from_slice(text.as_bytes());
        write_out(io, rout, self.limits.idle).await
    }

    /// The fields every response from this listener ends its head with.
    fn closing_fields(&self, rout: &mut Vec<u8>, close: bool) {
        if let Some(v) = &self.alt_svc {
            field(rout, "Alt-Svc", v.as_bytes());
        }
        if close {
            field(rout, "Connection", b"close");
        }
        rout.extend_from_slice(b"\r\n");
    }

    /// Send the request (its head in `out`, its body from `buf` and then the client) to one of
    /// the upstream's endpoints, and its answer back to the client.
    #[allow(clippy::too_many_arguments)]
    async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        buf: &mut BytesMut,
        ubuf: &mut BytesMut,
        out: &[u8],
        rout: &mut Vec<u8>,
        f: &Forward,
        id: &str,
        ingress: &str,
        close: bool,
    ) -> Forwarded {
        // A revision's request: a pod with room, waited for if need be. A pod that refuses the
        // connection (going away before the ingress saw it go) is left out and the request waits
        // for another, as long as nothing of it was sent.
        let started = Instant::now();
        let mut regated = 0;
        loop {
            let permit = match activator::gate(f.revision.as_ref(), started).await {
                Ok(p) => p,
                Err(answer) => {
                    return Forwarded {
                        answer: Some(answer),
                        ..Forwarded::default()
                    };
                }
            };
            let done = self
                .forward_permitted(io, buf, ubuf, out, rout, f, id, ingress, close, permit.as_ref())
                .await;
            match &permit {
                Some(p) if done.unconnected && regated < CONNECT_TRIES => {
                    p.upstream.eject(p.endpoint);
                    regated += 1;
                }
                _ => return done,
            }
        }
    }

    /// [`Self::forward`] with the activator's permit (for a revision's request) in hand.
    #[allow(clippy::too_many_arguments)]
    async fn forward_permitted<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        buf: &mut BytesMut,
        ubuf: &mut BytesMut,
        out: &[u8],
        rout: &mut Vec<u8>,
        f: &Forward,
        id: &str,
        ingress: &str,
        close: bool,
        permit: Option<&activator::Permit>,
    ) -> Forwarded {
        let mut done = Forwarded::default();
        let u = permit.map_or(&*f.upstream, |p| &*p.upstream);
        let pin = permit.map(|p| p.endpoint);
        let timeout = f.settings.read_timeout;
        let tries = if pin.is_some() {
            1
        } else {
            connect_tries(u, f.idempotent)
        };
        let mut tried = [0usize; CONNECT_TRIES];
        let mut ntried = 0;
        // After a kept-alive connection turned out closed, a request without a body goes again,
        // once, on a new connection to the same endpoint.
        let mut again: Option<usize> = None;
        // The endpoint the request is under way at (replaced, and so released, by a retry).
        let mut under_way: Option<UnderWay<'_>>;
        let (i, mut conn, head) = 'attempt: loop {
            let Some((i, mut conn, reused)) = obtain(
                &self.metrics,
                u,
                &f.settings,
                tries,
                f.body > 0,
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
            // The head, with as much of the body as has arrived, in one write.
            let first = (f.body.min(buf.len() as u64)) as usize;
            let sent = if first == 0 {
                write_out(&mut conn, out, timeout).await
            } else {
                let mut both = Vec::with_capacity(out.len() + first);
                both.extend_from_slice(out);
                both.extend_from_slice(&buf[..first]);
                write_out(&mut conn, &both, timeout).await
            };
            if let Err(e) = sent {
                if reused && f.body == 0 {
                    again = Some(i);
                    continue 'attempt;
                }
                done.upstream_error = Some("write");
                done.error = format!("sending the request to {}: {e}", u.addr(i));
                done.answer = Some((502, format!("endpoint {} of service {} failed: {e}", u.addr(i), u.name)));
                return done;
            }
            buf.advance(first);
            let mut rest = f.body - first as u64;
            while rest > 0 {
                buf.reserve(READ_CHUNK);
                match tokio::time::timeout(timeout, io.read_buf(buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => {
                        // The client stopped sending its body: nobody is left to answer.
                        done.error = "the client's body ended early".into();
                        done.code = 400;
                        done.close = true;
                        return done;
                    }
                }
                let n = (rest.min(buf.len() as u64)) as usize;
                if let Err(e) = write_out(&mut conn, &buf[..n], timeout).await {
                    done.upstream_error = Some("write");
                    done.error = format!("sending the body to {}: {e}", u.addr(i));
                    done.answer = Some((502, format!("endpoint {} of service {} failed: {e}", u.addr(i), u.name)));
                    return done;
                }
                buf.advance(n);
                rest -= n as u64;
            }
            // The response's head.
            ubuf.clear();
            loop {
                match read_head(&mut conn, ubuf, timeout, u, i, reused && f.body == 0, &mut done).await {
                    Read::Head => {}
                    Read::Again => {
                        again = Some(i);
                        continue 'attempt;
                    }
                    Read::Failed => return done,
                }
                match self.response_head(ubuf, f.head, id, close, rout) {
                    Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                        // An interim response (103 Early Hints): passed on; the final one follows.
                        ubuf.advance(h.len);
                        if write_out(io, rout, timeout).await.is_err() {
                            done.close = true;
                            return done;
                        }
                    }
                    Ok(Some(h)) if h.status != 101 => break 'attempt (i, conn, h),
                    Ok(Some(_)) => return unusable_head(done, u, i, "switched protocols unasked"),
                    Ok(None) => return unusable_head(done, u, i, "sent a malformed response head"),
                    Err(e) => return unusable_head(done, u, i, &format!("sent a malformed response: {e}")),
                }
            }
        };
        let _under_way = under_way;
        let idle = f.settings.body_idle();
        done.code = head.status;
        done.close = matches!(head.body, Body::UntilClose);
        ubuf.advance(head.len);
        let mut body = head.body;
        // The head, and as much of the body as has arrived, in one write; then the rest as it
        // comes.
        let mut first = true;
        loop {
            let Some(n) = body.take(ubuf) else {
                done.upstream_error = Some("protocol");
                done.error = format!("malformed chunked body from {}", u.addr(i));
                done.close = true;
                return done;
            };
            let sent = if first {
                rout.extend_from_slice(&ubuf[..n]);
                write_out(io, rout, timeout).await
            } else {
                write_out(io, &ubuf[..n], timeout).await
            };
            if sent.is_err() {
                done.error = "the client went away".into();
                done.close = true;
                return done;
            }
            first = false;
            ubuf.advance(n);
            if body.finished() {
                break;
            }
            ubuf.reserve(READ_CHUNK);
            match within(idle, conn.read_buf(ubuf)).await {
                Some(Ok(n)) if n > 0 => {}
                Some(Ok(_)) if matches!(body, Body::UntilClose) => break,
                outcome => {
                    done.upstream_error = Some(if outcome.is_none() { "read timeout" } else { "read" });
                    done.error = format!("the body from {} ended early", u.addr(i));
                    done.close = true;
                    return done;
                }
            }
        }
        if head.keep_alive && !matches!(body, Body::UntilClose) && ubuf.is_empty() {
            put_idle(u.addr(i), conn);
        }
        done
    }

    /// Parse the response head at the start of `ubuf` and write the client's version of it into
    /// `rout`: the status line and fields as they came, less the hop-by-hop ones and those the
    /// ingress sets (X-Request-Id, Alt-Svc).
    fn response_head(
        &self,
        ubuf: &[u8],
        head_request: bool,
        id: &str,
        close: bool,
        rout: &mut Vec<u8>,
    ) -> Result<Option<Head>, httparse::Error> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let Some((len, status, version)) = parse_response(&mut resp, ubuf)? else {
            return Ok(None);
        };
        let (body, keep_alive) = framing(status, version, head_request, resp.headers);
        let interim = (100..200).contains(&status);
        rout.clear();
        status_line(rout, status, resp.reason.unwrap_or(""));
        for h in resp.headers.iter() {
            let n = h.name;
            if (is_hop_by_hop(n) && !RESPONSE_KEPT.iter().any(|k| n.eq_ignore_ascii_case(k)))
                || n.eq_ignore_ascii_case("x-request-id")
                || (self.alt_svc.is_some() && n.eq_ignore_ascii_case("alt-svc"))
            {
                continue;
            }
            field(rout, n, h.value);
        }
        if interim {
            rout.extend_from_slice(b"\r\n");
        } else {
            field(rout, "X-Request-Id", id.as_bytes());
            self.closing_fields(rout, close || matches!(body, Body::UntilClose));
        }
        Ok(Some(Head {
            len,
            status,
            body,
            keep_alive,
        }))
    }
}

/// A response head from an endpoint, parsed.
struct Head {
    len: usize,
    status: u16,
    body: Body,
    /// Whether the endpoint keeps the connection open after this response.
    keep_alive: bool,
}

fn status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Fuzz targets for the head planner (it stays private here).
#[doc(hidden)]
pub mod fuzz;
