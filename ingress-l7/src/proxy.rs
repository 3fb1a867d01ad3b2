//! The HTTP proxy on pingora: each request is routed by the current table (Host, path), sent
//! round robin to one of its upstream's ready endpoints, and answered by the ingress itself when
//! there is nowhere to send it (404 with no rule, 503 naming the reason when the backend cannot
//! take it: never a hang).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};

use crate::metrics::{self, Metrics};
use crate::routes::{Decision, Settings, Table, Target, Upstream};

/// Connect attempts for one request (the first and up to two retries on other endpoints).
const CONNECT_TRIES: usize = 3;

/// The most request-line-and-header bytes taken; more gets 431 (nginx allows 4 x 8 KiB by
/// default). Pingora itself stops reading at 1 MiB and drops the connection.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

pub struct Ingress {
    pub table: Arc<ArcSwap<Table>>,
    pub metrics: Arc<Metrics>,
    /// `http` or `https`: what this listener tells the upstream in X-Forwarded-Proto.
    pub scheme: &'static str,
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
}

impl Ctx {
    fn release(&mut self) {
        if let (true, Some(u), Some(&i)) = (self.counted, &self.upstream, self.tried.last()) {
            u.done(i);
            self.counted = false;
        }
    }
}

/// The request's host: the Host header, or the authority of an HTTP/2 request.
fn request_host(req: &RequestHeader) -> String {
    req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string).or_else(|| req.uri.authority().map(|a| a.to_string())).unwrap_or_default()
}

async fn respond(session: &mut Session, status: u16, body: String) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, (body.len() + 1).to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(Bytes::from(body + "\n")), true).await?;
    Ok(true)
}

fn idempotent(method: &http::Method) -> bool {
    matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::PUT | http::Method::DELETE | http::Method::TRACE)
}

#[async_trait]
impl ProxyHttp for Ingress {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        // The default settings are shared: a request that no route takes allocates none.
        static DEFAULT: std::sync::LazyLock<Arc<Settings>> = std::sync::LazyLock::new(Arc::default);
        Ctx { upstream: None, settings: DEFAULT.clone(), tried: Vec::new(), counted: false, body_bytes: 0, request_id: String::new(), ingress: String::new(), started: None }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        let header_bytes = req.uri.path_and_query().map(|p| p.as_str().len()).unwrap_or(0) + req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>();
        if header_bytes > MAX_HEADER_BYTES {
            return respond(session, 431, format!("the request's header is {header_bytes} bytes, over the limit of {MAX_HEADER_BYTES}")).await;
        }
        let host = request_host(req);
        let path = req.uri.path().to_string();
        ctx.request_id = req.headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let table = self.table.load();
        ctx.started = Some(std::time::Instant::now());
        let route = match table.route(&host, &path) {
            Decision::Route(r) | Decision::Default(r) => r,
            Decision::NotFound => return respond(session, 404, format!("no ingress rule matches host {:?} and path {path:?}", crate::routes::normalize_host(&host))).await,
        };
        ctx.settings = route.settings.clone();
        ctx.ingress = route.ingress.clone();
        if ctx.settings.ssl_redirect && self.scheme == "http" {
            let target = format!("https://{}{}", crate::routes::normalize_host(&host), req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
            let mut resp = ResponseHeader::build(308, Some(2))?;
            resp.insert_header(http::header::LOCATION, target)?;
            resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(true);
        }
        let declared: Option<u64> = req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        if ctx.settings.body_limit > 0 && declared.is_some_and(|n| n > ctx.settings.body_limit) {
            return respond(session, 413, format!("the request body is larger than this route's limit of {} bytes", ctx.settings.body_limit)).await;
        }
        match route.target.clone() {
            Target::Upstream(u) => {
                ctx.upstream = Some(u);
                Ok(false)
            }
            Target::Unavailable(reason) => respond(session, 503, reason).await,
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.release();
        let u = ctx.upstream.clone().ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream chosen"))?;
        let i = u.pick(ctx.settings.balance, &ctx.tried).ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), format!("service {} has no ready endpoints", u.name)))?;
        ctx.tried.push(i);
        u.start(i);
        ctx.counted = true;
        let mut peer = HttpPeer::new(u.addr(i), false, String::new());
        peer.options.connection_timeout = Some(ctx.settings.connect_timeout);
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
            u.connect_failed(i);
            self.metrics.upstream_errors.get_or_create(&metrics::UpstreamError { ingress: ctx.ingress.clone(), service: u.name.clone(), kind: "connect".into() }).inc();
        }
        ctx.release();
        let others = ctx.upstream.as_ref().map(|u| u.endpoints.len()).unwrap_or(0);
        if idempotent(&session.req_header().method) && ctx.tried.len() < CONNECT_TRIES.min(others.max(1)) {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(&self, session: &mut Session, req: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string());
        let host = request_host(session.req_header());
        if let Some(ip) = client {
            let xff = match req.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prior) if !prior.is_empty() => format!("{prior}, {ip}"),
                _ => ip,
            };
            req.insert_header("x-forwarded-for", xff)?;
        }
        req.insert_header("x-forwarded-proto", self.scheme)?;
        if !host.is_empty() {
            req.insert_header("x-forwarded-host", host)?;
        }
        req.insert_header("x-request-id", ctx.request_id.clone())?;
        Ok(())
    }

    async fn request_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, _end: bool, ctx: &mut Ctx) -> Result<()> {
        // Bodies without a length (chunked) are counted as they stream.
        ctx.body_bytes += body.as_ref().map(|b| b.len() as u64).unwrap_or(0);
        if ctx.settings.body_limit > 0 && ctx.body_bytes > ctx.settings.body_limit {
            return Err(Error::explain(ErrorType::HTTPStatus(413), "request body over the route's limit"));
        }
        Ok(())
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if let (Some(u), Some(&i)) = (&ctx.upstream, ctx.tried.last()) {
            u.connected(i);
        }
        resp.insert_header("x-request-id", ctx.request_id.clone())?;
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.release();
        let code = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        let service = ctx.upstream.as_ref().map(|u| u.name.clone()).unwrap_or_else(|| "-".into());
        let ingress = if ctx.ingress.is_empty() { "-".to_string() } else { ctx.ingress.clone() };
        let took = ctx.started.map(|t| t.elapsed()).unwrap_or_default();
        let route = metrics::Route { ingress: ingress.clone(), service: service.clone() };
        self.metrics.requests.get_or_create(&metrics::Request { ingress: ingress.clone(), service: service.clone(), code }).inc();
        self.metrics.latency.get_or_create(&route).observe(took.as_secs_f64());
        if let (Some(e), true) = (e, ctx.upstream.is_some()) {
            if matches!(e.esource(), pingora_error::ErrorSource::Upstream) {
                self.metrics.upstream_errors.get_or_create(&metrics::UpstreamError { ingress: ingress.clone(), service: service.clone(), kind: e.etype().as_str().to_string() }).inc();
            }
        }
        if self.metrics.may_log() {
            let req = session.req_header();
            let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string()).unwrap_or_default();
            let upstream = match (&ctx.upstream, ctx.tried.last()) {
                (Some(u), Some(&i)) => u.addr(i).to_string(),
                _ => "-".to_string(),
            };
            tracing::info!(target: "access", %client, method = %req.method, host = %request_host(req), path = %req.uri.path(), code, %ingress, %service, %upstream, ms = took.as_secs_f64() * 1000.0, id = %ctx.request_id, error = e.map(|e| e.to_string()).unwrap_or_default());
        }
    }
}
