//! HTTP/1.1 endpoints over this worker thread's own connections: connect to any of a Service's
//! endpoints (a kept-alive connection first), the idle list each worker keeps, and reading a
//! response head. The HTTP/1.1 and HTTP/2 fronts write their heads and bodies to what
//! [`obtain`] gives and stream the responses themselves; there is no task, lock or channel per
//! request.
//!
//! An idle connection is a socket in a per-thread list. Pingora's pool gives every connection
//! returned to it a mutex, a notify and watch pair and a spawned task watching it while idle;
//! with the two channels its proxy puts between a request's halves, that is where it spent the
//! difference from nginx (the README's measured per-request cost).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::{CONNECT_TRIES, Forwarded, connect_failed};
use crate::balance::Upstream;
use crate::limits::MAX_HEADER_BYTES;
use crate::metrics::Metrics;
use crate::routes::Settings;
use crate::wire::READ_CHUNK;

/// An idle upstream connection is closed after this long.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint, per worker thread.
const IDLE_PER_ENDPOINT: usize = 256;
/// A connection idle for longer than this is checked for a close from the endpoint before it is
/// reused; a younger one is trusted, and a request without a body that finds it closed anyway
/// is sent again on a new connection.
const CHECK_AFTER: Duration = Duration::from_secs(1);

/// A connection to one of `u`'s endpoints: `again`'s anew, or one picked among those not
/// `tried` yet, kept-alive if one is idle (checked first when `check`), else new; up to `tries`
/// endpoints (see [`super::connect_tries`]). With `pin` (the activator's permit), that endpoint
/// and no other. `None` when there is none, with the answer set in
/// `done`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn obtain(
    metrics: &Metrics,
    u: &Upstream,
    settings: &Settings,
    tries: usize,
    check: bool,
    tried: &mut [usize; CONNECT_TRIES],
    ntried: &mut usize,
    again: Option<usize>,
    pin: Option<usize>,
    ingress: &str,
    done: &mut Forwarded,
) -> Option<(usize, TcpStream, bool)> {
    if let Some(i) = again {
        return match connect(u.addr(i), settings.connect_timeout).await {
            Ok(c) => Some((i, c, false)),
            Err(e) => {
                connect_failed(metrics, u, i, ingress);
                done.unconnected = true;
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
        let pick = match pin {
            Some(i) => (*ntried == 0).then_some(i),
            None => u.pick(settings.balance, &tried[..*ntried]),
        };
        let Some(i) = pick else {
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
                connect_failed(metrics, u, i, ingress);
                if *ntried >= tries {
                    done.unconnected = true;
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

/// Keep `conn` to `addr` for a later request, unless the endpoint's list is full.
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
