//! Endpoints through hyper's client: a pool of kept-alive HTTP/1.1 connections (one request at a
//! time each) and one shared HTTP/2 connection per h2c endpoint (`appProtocol:
//! kubernetes.io/h2c`). The HTTP/3 front sends every request this way, and the HTTP/2 front its
//! requests for h2c endpoints. A connection is made before the request's body is read, so a
//! retry on another endpoint after a failed connect loses nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{connect_failed, connect_tries};
use crate::balance::Upstream;
use crate::metrics::Metrics;
use crate::routes::Settings;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body as hyper's client takes it.
pub(crate) type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// An idle connection to an endpoint is closed after this long.
const IDLE: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per endpoint.
const IDLE_PER_ENDPOINT: usize = 64;

/// A connection to an endpoint, ready for one request.
pub(crate) enum Conn {
    H1(hyper::client::conn::http1::SendRequest<BoxBody>),
    H2(hyper::client::conn::http2::SendRequest<BoxBody>),
}

impl Conn {
    pub(crate) async fn send(&mut self, req: Request<BoxBody>) -> hyper::Result<Response<hyper::body::Incoming>> {
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

/// An idle HTTP/1.1 connection and when it went idle.
type Idle = (Instant, hyper::client::conn::http1::SendRequest<BoxBody>);

/// Keep-alive connections to endpoints: idle HTTP/1.1 connections (one request at a time each)
/// and one shared HTTP/2 connection per h2c endpoint.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    h2: Mutex<HashMap<SocketAddr, hyper::client::conn::http2::SendRequest<BoxBody>>>,
}

impl Pool {
    /// A connection for one request, as [`Pool::connect_any`] finds one, with what happened put
    /// in `done` (the endpoint last tried; the answer to give instead when none could be had),
    /// and the request counted as under way at the endpoint until the guard is dropped.
    pub(crate) async fn open<'u>(
        &self,
        u: &'u Upstream,
        pin: Option<usize>,
        settings: &Settings,
        idempotent: bool,
        metrics: &Metrics,
        ingress: &str,
        done: &mut super::Forwarded,
    ) -> Option<(usize, Conn, super::UnderWay<'u>)> {
        let (last, got) = self.connect_any(u, pin, settings, idempotent, metrics, ingress).await;
        done.endpoint = last.map(|i| u.addr(i));
        match got {
            Ok((i, conn)) => {
                u.connected(i);
                u.start(i);
                Some((i, conn, super::UnderWay(u, i)))
            }
            Err((status, body, error)) => {
                done.error = error;
                done.answer = Some((status, body));
                None
            }
        }
    }

    /// A connection to one of `u`'s endpoints: another one after a failed connect (each counted
    /// towards the endpoint's ejection and in the metrics), up to three for an idempotent
    /// request ([`super::connect_tries`]); with `pin` (the activator's permit), that endpoint
    /// only. Returns the endpoint last tried, and the connection
    /// or the status, body and error of the answer to give instead.
    pub(crate) async fn connect_any(
        &self,
        u: &Upstream,
        pin: Option<usize>,
        settings: &Settings,
        idempotent: bool,
        metrics: &Metrics,
        ingress: &str,
    ) -> (Option<usize>, std::result::Result<(usize, Conn), (u16, String, String)>) {
        let tries = if pin.is_some() { 1 } else { connect_tries(u, idempotent) };
        let mut tried = Vec::new();
        loop {
            let pick = match pin {
                Some(i) => tried.is_empty().then_some(i),
                None => u.pick(settings.balance, &tried),
            };
            let Some(i) = pick else {
                return (
                    tried.last().copied(),
                    Err((503, format!("service {} has no ready endpoints", u.name), String::new())),
                );
            };
            tried.push(i);
            match self.get(u.addr(i), u.h2c, settings.connect_timeout).await {
                Ok(c) => return (Some(i), Ok((i, c))),
                Err(e) => {
                    connect_failed(metrics, u, i, ingress);
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
