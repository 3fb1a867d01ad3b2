//! The admission policy every listener shares: what the ingress does with a request, decided
//! from its head alone, between a front that parsed it and the upstream layer that will carry
//! it. The HTTP/1.1, HTTP/2 and HTTP/3 fronts and the pingora fallback all ask [`admit`] (or
//! [`admit_head`]), so a 404, 308, 413, 431 or 503 is the same whichever way the request came;
//! the routing table it asks is [`crate::routes`].

use std::sync::Arc;

use crate::limits::MAX_HEADER_BYTES;
use crate::routes::{Decision, Settings, Table, Target, Upstream};
use crate::wire::content_length;

/// The request's host: the Host header, or the authority of an HTTP/2 or HTTP/3 request.
pub fn request_host(uri: &http::Uri, headers: &http::HeaderMap) -> String {
    headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// [`idempotent_method`], for a parsed method.
pub fn idempotent(method: &http::Method) -> bool {
    idempotent_method(method.as_str())
}

/// Whether a request by this method may be sent again (RFC 9110, section 9.2.2).
pub fn idempotent_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE")
}

/// What the ingress does with a request, decided from its head alone.
pub struct Admitted {
    /// The Ingress whose rule matched (`-` when none did).
    pub ingress: String,
    pub settings: Arc<Settings>,
    pub outcome: Outcome,
}

pub enum Outcome {
    /// Send it to this upstream.
    Forward(Arc<Upstream>),
    /// Answer it here: status and body.
    Respond(u16, String),
    /// Answer with a 308 to this URL (the route wants HTTPS).
    Redirect(String),
}

/// The shared default settings: a request that no route takes allocates none.
pub(crate) fn default_settings() -> Arc<Settings> {
    static DEFAULT: std::sync::LazyLock<Arc<Settings>> = std::sync::LazyLock::new(Arc::default);
    DEFAULT.clone()
}

/// Route a request by its head: 431 for an oversized head, 404 when no rule matches, 308 when
/// the route wants HTTPS and this is plain HTTP, 413 for a declared body over the route's
/// limit, 503 naming why when the backend cannot take it.
pub fn admit(table: &Table, scheme: &str, uri: &http::Uri, headers: &http::HeaderMap) -> Admitted {
    let header_bytes = uri.path_and_query().map(|p| p.as_str().len()).unwrap_or(0)
        + headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    admit_head(
        table,
        scheme,
        &request_host(uri, headers),
        target,
        declared_length(headers),
        header_bytes,
    )
}

/// [`admit`] from the parts of a request head that decide it: the host (Host header or
/// authority), the origin-form target (path and query), the declared body length and the head's
/// size in bytes.
pub fn admit_head(
    table: &Table,
    scheme: &str,
    host: &str,
    target: &str,
    declared: Option<u64>,
    header_bytes: usize,
) -> Admitted {
    let early = |status, body| Admitted {
        ingress: "-".to_string(),
        settings: default_settings(),
        outcome: Outcome::Respond(status, body),
    };
    if header_bytes > MAX_HEADER_BYTES {
        return early(
            431,
            format!("the request's header is {header_bytes} bytes, over the limit of {MAX_HEADER_BYTES}"),
        );
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let route = match table.route(host, path) {
        Decision::Route(r) | Decision::Default(r) => r,
        Decision::NotFound => {
            return early(
                404,
                format!(
                    "no ingress rule matches host {:?} and path {path:?}",
                    crate::routes::normalize_host(host)
                ),
            );
        }
    };
    let settings = route.settings.clone();
    let outcome = if settings.ssl_redirect && scheme == "http" {
        Outcome::Redirect(format!("https://{}{}", crate::routes::normalize_host(host), target))
    } else if settings.body_limit > 0 && declared.is_some_and(|n| n > settings.body_limit) {
        Outcome::Respond(
            413,
            format!(
                "the request body is larger than this route's limit of {} bytes",
                settings.body_limit
            ),
        )
    } else {
        match &route.target {
            Target::Upstream(u) => Outcome::Forward(u.clone()),
            Target::Unavailable(reason) => Outcome::Respond(503, reason.clone()),
        }
    };
    Admitted {
        ingress: route.ingress.clone(),
        settings,
        outcome,
    }
}

/// The request body's declared length.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| content_length(v.as_bytes()))
}

/// The client's X-Request-Id, or a new one.
pub fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}
