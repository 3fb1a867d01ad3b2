//! The HTTP/1.1 path: requests on an HTTP/1.1 connection (plain, or TLS with `http/1.1` by ALPN)
//! are parsed here (httparse), admitted by the same policy as every other request
//! ([`proxy::admit_head`]), and forwarded over a pool of kept-alive connections that belongs to
//! the worker thread, with no task, lock or channel per request.
//!
//! Pingora's proxy spends two to three times nginx's CPU on a short request, most of it in
//! machinery this path does not need: every upstream connection returned to its pool gets a
//! mutex, a notify and watch pair and a spawned task watching it while idle, and every request
//! two channels between the downstream and upstream halves. Here the request head is rewritten
//! into one buffer and written once, the response head and as much of the body as has arrived go
//! back in one write, and an idle upstream connection is a socket in a per-thread list.
//!
//! What this path does not take it hands over, unread, to pingora's proxy, which keeps the
//! connection from then on: bodies without a length (`Transfer-Encoding`), `Expect`, upgrades
//! (websockets), HTTP/1.0, targets that are not origin-form, `Connection` options other than
//! `close` and `keep-alive`, and routes to h2c endpoints.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Buf, BytesMut};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::ClientLimits;
use crate::metrics::{self, Metrics};
use crate::proxy::{self, MAX_HEADER_BYTES, Outcome};
use crate::routes::{Settings, Table, Upstream};

/// Header fields taken in one head.
pub(crate) const MAX_HEADERS: usize = 128;
/// Connect attempts for one idempotent request (the first and up to two other endpoints).
pub(crate) const CONNECT_TRIES: usize = 3;
/// An idle upstream connection is closed after this long.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint, per worker thread.
const IDLE_PER_ENDPOINT: usize = 256;
/// A connection idle for longer than this is checked for a close from the endpoint before it is
/// reused; a younger one is trusted, and a request without a body that finds it closed anyway
/// is sent again on a new connection.
const CHECK_AFTER: Duration = Duration::from_secs(1);
/// Read buffer growth step.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Request headers not passed on: hop-by-hop ones, and those the ingress sets itself.
const REQUEST_DROPPED: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// One listener's HTTP/1.1 front on one worker thread.
pub struct Front {
    pub table: Arc<ArcSwap<Table>>,
    pub metrics: Arc<Metrics>,
    /// `http` or `https`: what X-Forwarded-Proto says.
    pub scheme: &'static str,
    /// The Alt-Svc value that advertises HTTP/3 in this listener's responses.
    pub alt_svc: Option<http::HeaderValue>,
    /// Connections to h2c endpoints (HTTP/2 clients' requests for them; HTTP/1.1 clients' go to
    /// pingora).
    pub h2c: crate::http3::Pool,
    /// How long a client may take over a head and stay idle between requests.
    pub limits: ClientLimits,
}

/// How a connection left this path.
pub enum End<S> {
    /// Closed, by either side or after an error.
    Closed,
    /// To be served by pingora from here on: the stream, and the bytes read from it and not
    /// consumed (the next request's head first), to be read again.
    HandOff(S, BytesMut),
}

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

/// What happened to a forwarded request, for the metrics and the log.
#[derive(Default)]
pub(crate) struct Forwarded {
    pub(crate) code: u16,
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) upstream_error: Option<&'static str>,
    pub(crate) error: String,
    /// The ingress's own answer instead of the endpoint's (nothing was sent to the client yet).
    pub(crate) answer: Option<(u16, String)>,
    /// The client connection cannot go on (an error mid-response, or the response was delimited
    /// by closing).
    pub(crate) close: bool,
}

/// Counts a request as under way at an endpoint until dropped.
pub(crate) struct UnderWay<'a>(pub(crate) &'a Upstream, pub(crate) usize);

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.0.done(self.1);
    }
}

impl Front {
    /// Serve HTTP/1.1 requests on `io` until the client closes, an error ends the connection, the
    /// ingress shuts down, or a request needs pingora ([`End::HandOff`]).
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut io: S,
        client: SocketAddr,
        shutdown: &ShutdownWatch,
    ) -> End<S> {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut ubuf = BytesMut::with_capacity(READ_CHUNK);
        let mut out = Vec::with_capacity(1024);
        let mut rout = Vec::with_capacity(1024);
        // The client's address as X-Forwarded-For and the access log write it.
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
                    match self.plan(&buf, &ip, &mut out) {
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
    fn plan(&self, buf: &[u8], ip: &str, out: &mut Vec<u8>) -> Result<Option<Request>, (u16, String)> {
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
        let admitted = proxy::admit_head(&self.table.load(), self.scheme, host, target, length, head_len);
        let plan = match admitted.outcome {
            Outcome::Forward(u) if u.h2c => return Ok(Some(hand_off)),
            Outcome::Forward(upstream) => Plan::Forward(Forward {
                upstream,
                settings: admitted.settings,
                body: length.unwrap_or(0),
                idempotent: proxy::idempotent_method(method),
                head: method == "HEAD",
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
            for h in req
                .headers
                .iter()
                .filter(|h| !REQUEST_DROPPED.iter().any(|d| h.name.eq_ignore_ascii_case(d)))
            {
                field(out, h.name, h.value);
            }
            match prior_xff {
                Some(prior) => field(out, "X-Forwarded-For", format!("{prior}, {ip}").as_bytes()),
                None => field(out, "X-Forwarded-For", ip.as_bytes()),
            }
            field(out, "X-Forwarded-Proto", self.scheme.as_bytes());
            if !host.is_empty() {
                field(out, "X-Forwarded-Host", host.as_bytes());
            }
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
        let u = &*f.upstream;
        let mut done = Forwarded::default();
        let timeout = f.settings.read_timeout;
        let tries = if f.idempotent {
            CONNECT_TRIES.min(u.endpoints.len().max(1))
        } else {
            1
        };
        let mut tried = [0usize; CONNECT_TRIES];
        let mut ntried = 0;
        // After a kept-alive connection turned out closed, a request without a body goes again,
        // once, on a new connection to the same endpoint.
        let mut again: Option<usize> = None;
        // The endpoint the request is under way at (replaced, and so released, by a retry).
        let mut under_way: Option<UnderWay<'_>>;
        let (i, mut conn, head) = 'attempt: loop {
            let Some((i, mut conn, reused)) = self
                .obtain(
                    u,
                    &f.settings,
                    tries,
                    f.body > 0,
                    &mut tried,
                    &mut ntried,
                    again.take(),
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
            match tokio::time::timeout(timeout, conn.read_buf(ubuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) if matches!(body, Body::UntilClose) => break,
                outcome => {
                    done.upstream_error = Some(if outcome.is_err() { "read timeout" } else { "read" });
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

    /// A connection to one of `u`'s endpoints: `again`'s anew, or one picked among those not
    /// `tried` yet, kept-alive if one is idle (checked first when `check`), else new; up to
    /// `tries` endpoints. `None` when there is none, with the answer set in `done`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn obtain(
        &self,
        u: &Upstream,
        settings: &Settings,
        tries: usize,
        check: bool,
        tried: &mut [usize; CONNECT_TRIES],
        ntried: &mut usize,
        again: Option<usize>,
        ingress: &str,
        done: &mut Forwarded,
    ) -> Option<(usize, TcpStream, bool)> {
        if let Some(i) = again {
            return match connect(u.addr(i), settings.connect_timeout).await {
                Ok(c) => Some((i, c, false)),
                Err(e) => {
                    self.connect_failed(u, i, ingress);
                    done.error = format!("connecting to {}: {e}", u.addr(i));
                    done.answer = Some((
                        502,
                        format!("could not connect to an endpoint of service {}: {e}", u.name),
                    ));
                    None
                }
            };
        }
        loop {
            let Some(i) = u.pick(settings.balance, &tried[..*ntried]) else {
                done.answer = Some((503, format!("service {} has no ready endpoints", u.name)));
                return None;
            };
            tried[*ntried] = i;
            *ntried += 1;
            done.endpoint = Some(u.addr(i));
            if let Some(c) = take_idle(u.addr(i), check) {
                return Some((i, c, true));
            }
            match connect(u.addr(i), settings.connect_timeout).await {
                Ok(c) => return Some((i, c, false)),
                Err(e) => {
                    self.connect_failed(u, i, ingress);
                    if *ntried >= tries {
                        done.error = format!("connecting to {}: {e}", u.addr(i));
                        done.answer = Some((
                            502,
                            format!("could not connect to an endpoint of service {}: {e}", u.name),
                        ));
                        return None;
                    }
                }
            }
        }
    }

    fn connect_failed(&self, u: &Upstream, i: usize, ingress: &str) {
        u.connect_failed(i);
        self.metrics
            .upstream_errors
            .get_or_create(&metrics::UpstreamError {
                ingress: ingress.to_string(),
                service: u.name.clone(),
                kind: "connect".into(),
            })
            .inc();
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
            if ["connection", "keep-alive", "proxy-connection", "x-request-id"]
                .iter()
                .any(|d| n.eq_ignore_ascii_case(d))
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

/// How reading a response head ended.
pub(crate) enum Read {
    /// `ubuf` starts with a whole head (perhaps an interim one).
    Head,
    /// A kept-alive connection turned out closed before any answer: send the request again on a
    /// new one.
    Again,
    /// The ingress's answer is set.
    Failed,
}

/// Read from an endpoint's connection into `ubuf` until it holds a whole response head, within
/// `timeout` a read. A connection closed before any byte of answer is [`Read::Again`] when
/// `retryable`.
pub(crate) async fn read_head(
    conn: &mut TcpStream,
    ubuf: &mut BytesMut,
    timeout: Duration,
    u: &Upstream,
    i: usize,
    retryable: bool,
    done: &mut Forwarded,
) -> Read {
    loop {
        if ubuf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Read::Head;
        }
        if ubuf.len() > MAX_HEADER_BYTES {
            *done = unusable_head(
                std::mem::take(done),
                u,
                i,
                &format!("sent a response head over {MAX_HEADER_BYTES} bytes"),
            );
            return Read::Failed;
        }
        ubuf.reserve(READ_CHUNK);
        let failure = match tokio::time::timeout(timeout, conn.read_buf(ubuf)).await {
            Ok(Ok(n)) if n > 0 => continue,
            Ok(Ok(_)) => "closed the connection without an answer".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                done.upstream_error = Some("read timeout");
                done.error = "read timeout".into();
                done.answer = Some((
                    504,
                    format!(
                        "endpoint {} of service {} sent no answer in {:?}",
                        u.addr(i),
                        u.name,
                        timeout
                    ),
                ));
                return Read::Failed;
            }
        };
        if retryable && ubuf.is_empty() {
            return Read::Again;
        }
        done.upstream_error = Some("read");
        done.error = format!("{}: {failure}", u.addr(i));
        done.answer = Some((
            502,
            format!("endpoint {} of service {} failed: {failure}", u.addr(i), u.name),
        ));
        return Read::Failed;
    }
}

/// `done` with the 502 for an endpoint's response head the ingress cannot pass on.
pub(crate) fn unusable_head(mut done: Forwarded, u: &Upstream, i: usize, what: &str) -> Forwarded {
    done.upstream_error = Some("protocol");
    done.error = format!("{} {what}", u.addr(i));
    done.answer = Some((502, format!("endpoint {} of service {} {what}", u.addr(i), u.name)));
    done
}

/// Parse the response head at the start of `ubuf` into `resp`: its length, status and version,
/// or `None` while it is incomplete.
pub(crate) fn parse_response<'b>(
    resp: &mut httparse::Response<'_, 'b>,
    ubuf: &'b [u8],
) -> Result<Option<(usize, u16, u8)>, httparse::Error> {
    let httparse::Status::Complete(len) = resp.parse(ubuf)? else {
        return Ok(None);
    };
    match (resp.code, resp.version) {
        (Some(status), Some(version)) => Ok(Some((len, status, version))),
        _ => Err(httparse::Error::Status),
    }
}

/// How a response's body ends, and whether the endpoint keeps the connection open after it,
/// from its status, version and fields (and whether it answers a HEAD).
pub(crate) fn framing(status: u16, version: u8, head_request: bool, fields: &[httparse::Header<'_>]) -> (Body, bool) {
    let mut keep_alive = version == 1;
    let (mut length, mut chunked, mut coded) = (None::<u64>, false, false);
    for h in fields {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("connection") {
            keep_alive &= !value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        }
    }
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        Body::Length(0)
    } else if coded {
        if chunked {
            Body::Chunked(Chunked::default())
        } else {
            Body::UntilClose
        }
    } else {
        length.map_or(Body::UntilClose, Body::Length)
    };
    (body, keep_alive)
}

/// A response head from an endpoint, parsed.
struct Head {
    len: usize,
    status: u16,
    body: Body,
    /// Whether the endpoint keeps the connection open after this response.
    keep_alive: bool,
}

/// How a response body ends.
pub(crate) enum Body {
    /// After this many more bytes.
    Length(u64),
    /// After its last chunk and trailer.
    Chunked(Chunked),
    /// When the endpoint closes.
    UntilClose,
}

impl Body {
    /// How many bytes at the start of `buf` belong to the body (all of them are passed on as
    /// they are); `None` for a malformed chunked body.
    pub(crate) fn take(&mut self, buf: &[u8]) -> Option<usize> {
        match self {
            Body::Length(rest) => {
                let n = (*rest).min(buf.len() as u64);
                *rest -= n;
                Some(n as usize)
            }
            Body::Chunked(c) => c.scan(buf),
            Body::UntilClose => Some(buf.len()),
        }
    }

    pub(crate) fn finished(&self) -> bool {
        match self {
            Body::Length(rest) => *rest == 0,
            Body::Chunked(c) => c.state == ChunkState::Done,
            Body::UntilClose => false,
        }
    }
}

/// Where a scan of a chunked body is: it finds where the body ends, passing every byte on.
#[derive(Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// The size being read, or the data left in the current chunk.
    n: u64,
    digits: u8,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    /// How many bytes of `buf` belong to the body: all of them, or fewer when the body ends in
    /// them. `None` when the framing is malformed.
    fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        self.scan_into(buf, None)
    }

    /// [`Chunked::scan`], with the chunks' data appended to `data` (the body without its
    /// framing, as HTTP/2 carries it).
    pub(crate) fn scan_into(&mut self, buf: &[u8], mut data: Option<&mut BytesMut>) -> Option<usize> {
        use ChunkState::*;
        let mut k = 0;
        while k < buf.len() && self.state != Done {
            let b = buf[k];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return None;
                        }
                        self.n = self.n * 16 + (b as char).to_digit(16)? as u64;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Extension,
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return None,
                },
                Extension => {
                    if b == b'\r' {
                        self.state = SizeLf;
                    }
                }
                SizeLf => {
                    if b != b'\n' {
                        return None;
                    }
                    self.state = if self.n == 0 { TrailerStart } else { Data };
                }
                Data => {
                    let n = (self.n).min((buf.len() - k) as u64) as usize;
                    if let Some(d) = data.as_deref_mut() {
                        d.extend_from_slice(&buf[k..k + n]);
                    }
                    self.n -= n as u64;
                    k += n;
                    if self.n == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return None;
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return None;
                    }
                    (self.state, self.n, self.digits) = (Size, 0, 0);
                }
                TrailerStart => self.state = if b == b'\r' { EndLf } else { Trailer },
                Trailer => {
                    if b == b'\r' {
                        self.state = TrailerLf;
                    }
                }
                TrailerLf => {
                    if b != b'\n' {
                        return None;
                    }
                    self.state = TrailerStart;
                }
                EndLf => {
                    if b != b'\n' {
                        return None;
                    }
                    self.state = Done;
                }
                Done => {}
            }
            k += 1;
        }
        Some(k)
    }
}

/// A Content-Length value: ASCII digits and nothing else (optional whitespace around them),
/// within u64. Not `str::parse`, which takes a leading `+`; a list (`5, 5`) is refused too,
/// as RFC 9110 section 8.6 allows.
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    let start = value.iter().position(|b| !matches!(b, b' ' | b'\t'))?;
    let end = value.iter().rposition(|b| !matches!(b, b' ' | b'\t'))? + 1;
    let mut n: u64 = 0;
    for &b in &value[start..end] {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
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

/// Write all of `bytes` and flush (a TLS stream sends its records on flush), within `limit`.
pub(crate) async fn write_out<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(limit, async {
        io.write_all(bytes).await?;
        io.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out")),
    }
}

async fn connect(addr: SocketAddr, limit: Duration) -> std::io::Result<TcpStream> {
    let conn = match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection in {limit:?}"),
            ));
        }
    };
    conn.set_nodelay(true)?;
    Ok(conn)
}

thread_local! {
    /// This worker's idle upstream connections, by endpoint, the most recent last.
    static IDLE: RefCell<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>> = RefCell::new(HashMap::new());
}

/// An idle connection to `addr`, if one is kept and still open. A request with a body only
/// takes one that is checked (it could not be sent again); others trust a recent one.
fn take_idle(addr: SocketAddr, check: bool) -> Option<TcpStream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some((conn, since)) = list.pop() {
            let age = since.elapsed();
            if age < UPSTREAM_IDLE && (!(check || age > CHECK_AFTER) || open(&conn)) {
                return Some(conn);
            }
        }
        None
    })
}

/// Whether an idle connection is still open: nothing to read (no close, no stray bytes). This
/// reads only when the runtime has seen the socket become readable.
fn open(conn: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(conn.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

pub(crate) fn put_idle(addr: SocketAddr, conn: TcpStream) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < IDLE_PER_ENDPOINT {
            list.push((conn, Instant::now()));
        }
    })
}

/// Close this worker's idle connections that are too old or closed by their endpoint, every few
/// seconds; run once on every worker thread.
pub async fn sweep_idle() {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            for list in idle.values_mut() {
                list.retain(|(conn, since)| since.elapsed() < UPSTREAM_IDLE && open(conn));
            }
            idle.retain(|_, list| !list.is_empty());
        });
    }
}

/// Fuzz targets for the head planner and the chunked scanner (they stay private here).
#[doc(hidden)]
pub mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailer() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut c = Chunked::default();
        assert_eq!(c.scan(body), Some(body.len() - 4));
        assert_eq!(c.state, ChunkState::Done);
        // Byte by byte, the same end.
        let mut c = Chunked::default();
        let mut total = 0;
        for b in body.iter() {
            total += c.scan(std::slice::from_ref(b)).unwrap();
            if c.state == ChunkState::Done {
                break;
            }
        }
        assert_eq!(total, body.len() - 4);
        // Without a trailer.
        let mut c = Chunked::default();
        assert_eq!(c.scan(b"0\r\n\r\n"), Some(5));
        assert_eq!(c.state, ChunkState::Done);
        // Malformed: no size, a missing CRLF after data, an oversized size.
        assert_eq!(Chunked::default().scan(b"\r\n"), None);
        assert_eq!(Chunked::default().scan(b"2\r\nabXY"), None);
        assert_eq!(Chunked::default().scan(b"ffffffffffffffffff\r\n"), None);
    }

    #[test]
    fn content_length_is_ascii_digits_only() {
        assert_eq!(content_length(b"5"), Some(5));
        assert_eq!(content_length(b" 0042\t"), Some(42));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b" ",
            b"+5",
            b"-5",
            b"0x5",
            b"5 ,6",
            b"5,5",
            b"5 5",
            b"5.0",
            b"\xd9\xa5",
            b"18446744073709551616",
        ] {
            assert_eq!(content_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn body_framing_by_length_and_until_close() {
        let mut b = Body::Length(5);
        assert_eq!(b.take(b"abc"), Some(3));
        assert!(!b.finished());
        assert_eq!(b.take(b"defgh"), Some(2));
        assert!(b.finished());
        let mut b = Body::UntilClose;
        assert_eq!(b.take(b"abc"), Some(3));
        assert!(!b.finished());
    }
}
