//! The upstream layer: reaching a Service's endpoints once a request is admitted. Which endpoint
//! (the balancer's pick, among those not tried yet), how many tries ([`CONNECT_TRIES`], the one
//! retry budget every path has), what a failed connect costs (passive ejection and a counter),
//! and the connections themselves:
//!
//! - [`tcp`]: each worker thread's own kept-alive HTTP/1.1 connections, which the HTTP/1.1 and
//!   HTTP/2 fronts write heads to and read responses from directly;
//! - [`client`]: hyper's client connections (pooled HTTP/1.1, and one shared HTTP/2 connection
//!   per h2c endpoint), for the HTTP/3 front and for h2c endpoints.
//!
//! Nothing here knows which front a request came in by.

use std::net::SocketAddr;

use crate::balance::Upstream;
use crate::metrics::{self, Metrics};

pub mod client;
pub mod tcp;

/// Connect attempts for one idempotent request: the first endpoint and up to two others. A
/// request that is not idempotent gets one.
pub(crate) const CONNECT_TRIES: usize = 3;

/// Endpoints to try for one request to `u`: [`CONNECT_TRIES`] for an idempotent request (fewer
/// when `u` has fewer endpoints), else one.
pub(crate) fn connect_tries(u: &Upstream, idempotent: bool) -> usize {
    if idempotent {
        CONNECT_TRIES.min(u.endpoints.len().max(1))
    } else {
        1
    }
}

/// A failed connect to endpoint `i` of `u`: it counts towards ejecting the endpoint, and in the
/// upstream errors of `ingress`.
pub(crate) fn connect_failed(metrics: &Metrics, u: &Upstream, i: usize, ingress: &str) {
    u.connect_failed(i);
    metrics
        .upstream_errors
        .get_or_create(&metrics::UpstreamError {
            ingress: ingress.to_string(),
            service: u.name.clone(),
            kind: "connect".into(),
        })
        .inc();
}

/// What happened to a forwarded request, for the metrics and the log.
#[derive(Default)]
pub(crate) struct Forwarded {
    pub(crate) code: u16,
    /// The endpoint last tried.
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) upstream_error: Option<&'static str>,
    pub(crate) error: String,
    /// The ingress's own answer instead of the endpoint's (nothing was sent to the client yet).
    pub(crate) answer: Option<(u16, String)>,
    /// The client connection cannot go on (an error mid-response, or the response was delimited
    /// by closing).
    pub(crate) close: bool,
    /// No endpoint could be connected to, and nothing of the request was sent: a revision's
    /// request may wait for another pod and go again.
    pub(crate) unconnected: bool,
}

/// Counts a request as under way at an endpoint until dropped.
pub(crate) struct UnderWay<'a>(pub(crate) &'a Upstream, pub(crate) usize);

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.0.done(self.1);
    }
}
