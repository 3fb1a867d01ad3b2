//! The fallback: pingora's HTTP proxy (`ProxyHttp`), serving the HTTP/1.1 connections the
//! ingress's own HTTP/1.1 front hands over ([`crate::front::End::HandOff`]): request bodies
//! without a length (`Transfer-Encoding`), `Expect`, upgrades (websockets), HTTP/1.0, targets
//! that are not origin-form, `Connection` options other than `close` and `keep-alive`, and
//! routes to h2c endpoints. Each request is admitted by the same policy as every other
//! ([`crate::admit`]), sent to one of its upstream's ready endpoints through pingora's own
//! connector and pool, and answered by the ingress itself when there is nowhere to send it (404
//! with no rule, 503 naming the reason when the backend cannot take it: never a hang). A
//! Knative revision's request (websockets, h2c revisions) waits for the activator's permit
//! ([`crate::activator::gate`]) in `request_filter` and goes to the permit's endpoint.
//!
//! [`stream`] wraps a handed-over connection as pingora's apps want it.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};

use crate::activator::{self, Permit, Revision};
use crate::admit::{Outcome, admit, default_settings, idempotent, request_host, request_id};
use crate::balance::Upstream;
use crate::forwarding::Forwarding;
use crate::metrics::{self, Metrics};
use crate::routes::{Settings, Table};
use crate::upstream::{connect_failed, connect_tries};

pub mod stream;

pub struct Ingress {
    pub table: Arc<ArcSwap<Table>>,
    pub metrics: Arc<Metrics>,
    /// `http` or `https`: what this listener tells the upstream in X-Forwarded-Proto.
    pub scheme: &'static str,
    /// The internal listener: cluster-local Knative routes are served too.
    pub internal: bool,
    /// The Alt-Svc value that advertises HTTP/3 in this listener's responses.
    pub alt_svc: Option<http::HeaderValue>,
}

pub struct Ctx {
    upstream: Option<Arc<Upstream>>,
    settings: Arc<Settings>,
    /// Endpoints tried for this request (indices into the upstream's), the last one current.
    tried: Vec<usize>,
    /// Whether the current endpoint's request is counted as under way.
    counted: bool,
    body_bytes: u64,
    request_id: String,
    /// The Ingress that routed the request (`-` when none did).
    ingress: String,
    started: Option<std::time::Instant>,
    revision: Option<Arc<Revision>>,
    /// The activator's permit for a revision's request, held until the request ends.
    permit: Option<Permit>,
    append: Option<Arc<[(String, String)]>>,
}

impl Ctx {
    fn release(&mut self) {
        if let (true, Some(u), Some(&i)) = (self.counted, &self.upstream, self.tried.last()) {
            u.done(i);
            self.counted = false;
        }
    }
}

async fn respond(session: &mut Session, status: u16, body: String) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, (body.len() + 1).to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body + "\n")), true)
        .await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for Ingress {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            upstream: None,
            settings: default_settings(),
            tried: Vec::new(),
            counted: false,
            body_bytes: 0,
            request_id: String::new(),
            ingress: String::new(),
            started: None,
            revision: None,
            permit: None,
            append: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = request_id(&req.headers);
        ctx.started = Some(std::time::Instant::now());
        let admitted = admit(&self.table.load(), self.scheme, self.internal, &req.uri, &req.headers);
        ctx.settings = admitted.settings;
        ctx.ingress = admitted.ingress;
        ctx.revision = admitted.revision;
        ctx.append = admitted.append;
        match admitted.outcome {
            Outcome::Forward(u) => {
                match activator::gate(
                    ctx.revision.as_ref(),
                    ctx.started.unwrap_or_else(std::time::Instant::now),
                )
                .await
                {
                    Ok(Some(p)) => {
                        ctx.upstream = Some(p.upstream.clone());
                        ctx.permit = Some(p);
                    }
                    Ok(None) => ctx.upstream = Some(u),
                    Err((status, body)) => {
                        ctx.upstream = Some(u);
                        return respond(session, status, body).await;
                    }
                }
                Ok(false)
            }
            Outcome::Respond(status, body) => respond(session, status, body).await,
            Outcome::Redirect(target) => {
                let mut resp = ResponseHeader::build(308, Some(2))?;
                resp.insert_header(http::header::LOCATION, target)?;
                resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
                session.write_response_header(Box::new(resp), true).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.release();
        let u = ctx
            .upstream
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream chosen"))?;
        let pinned = ctx.permit.as_ref().map(|p| p.endpoint);
        let pick = match pinned {
            Some(i) => ctx.tried.is_empty().then_some(i),
            None => u.pick(ctx.settings.balance, &ctx.tried),
        };
        let i = pick.ok_or_else(|| {
            Error::explain(
                ErrorType::HTTPStatus(503),
                format!("service {} has no ready endpoints", u.name),
            )
        })?;
        ctx.tried.push(i);
        u.start(i);
        ctx.counted = true;
        let mut peer = HttpPeer::new(u.addr(i), false, String::new());
        peer.options.connection_timeout = Some(ctx.settings.connect_timeout);
        // Pingora bounds every read from the endpoint, the head's and each of the body's, by one
        // `read_timeout`, with no hook between the head and the body to change it: so here a
        // Knative revision's `timeoutSeconds` (or `responseStartTimeoutSeconds`) bounds each
        // read, not only the wait for the head as on the other fronts
        // ([`Settings::body_idle`]). What comes here for a revision is websockets, request
        // bodies without a length and h2c revisions; the head's bound is kept (no head in time
        // is still an error, not a request held forever).
        peer.options.read_timeout = Some(ctx.settings.read_timeout);
        peer.options.write_timeout = Some(ctx.settings.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(90));
        if u.h2c {
            peer.options.set_http_version(2, 2);
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(&self, session: &mut Session, _peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        // Nothing reached the endpoint: it counts towards ejecting it, and an idempotent
        // request goes to another one.
        if let (Some(u), Some(&i)) = (&ctx.upstream, ctx.tried.last()) {
            connect_failed(&self.metrics, u, i, &ctx.ingress);
        }
        ctx.release();
        let more = ctx.permit.is_none()
            && ctx
                .upstream
                .as_ref()
                .is_some_and(|u| ctx.tried.len() < connect_tries(u, true));
        if idempotent(&session.req_header().method) && more {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let host = {
            let r = session.req_header();
            request_host(&r.uri, &r.headers)
        };
        let forwarding = Forwarding {
            client: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
            scheme: self.scheme,
            host: &host,
            rfc7239: ctx.settings.forwarded,
        };
        let fields = forwarding.fields_for(&req.headers);
        for name in forwarding.replaced() {
            req.remove_header(name);
        }
        for (name, value) in fields {
            req.insert_header(name, value)?;
        }
        req.insert_header("x-request-id", ctx.request_id.clone())?;
        for (name, value) in ctx.append.iter().flat_map(|a| a.iter()) {
            req.insert_header(name.clone(), value.as_str())?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Bodies without a length (chunked) are counted as they stream.
        ctx.body_bytes += body.as_ref().map(|b| b.len() as u64).unwrap_or(0);
        if ctx.settings.body_limit > 0 && ctx.body_bytes > ctx.settings.body_limit {
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "request body over the route's limit",
            ));
        }
        Ok(())
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if let (Some(u), Some(&i)) = (&ctx.upstream, ctx.tried.last()) {
            u.connected(i);
        }
        resp.insert_header("x-request-id", ctx.request_id.clone())?;
        if let Some(v) = &self.alt_svc {
            resp.insert_header(http::header::ALT_SVC, v.clone())?;
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.release();
        ctx.permit = None;
        let code = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        let service = ctx.upstream.as_ref().map(|u| u.name.as_str()).unwrap_or("-");
        let ingress = if ctx.ingress.is_empty() {
            "-"
        } else {
            ctx.ingress.as_str()
        };
        let upstream_error = match (e, ctx.upstream.is_some()) {
            (Some(e), true) if matches!(e.esource(), pingora_error::ErrorSource::Upstream) => Some(e.etype().as_str()),
            _ => None,
        };
        let took = ctx.started.map(|t| t.elapsed()).unwrap_or_default();
        self.metrics.count(ingress, service, code, took, upstream_error);
        if let Some(r) = &ctx.revision {
            self.metrics.count_revision(&r.id, code, took);
        }
        if !self.metrics.may_log() {
            return;
        }
        let req = session.req_header();
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let upstream = match (&ctx.upstream, ctx.tried.last()) {
            (Some(u), Some(&i)) => u.addr(i).to_string(),
            _ => "-".to_string(),
        };
        let error = e.map(|e| e.to_string()).unwrap_or_default();
        self.metrics.log(&metrics::Finished {
            client: &client,
            protocol: if session.is_http2() { "HTTP/2" } else { "HTTP/1.1" },
            method: req.method.as_str(),
            host: &request_host(&req.uri, &req.headers),
            path: req.uri.path(),
            code,
            ingress,
            service,
            upstream: &upstream,
            took,
            id: &ctx.request_id,
            error: &error,
        });
    }
}
