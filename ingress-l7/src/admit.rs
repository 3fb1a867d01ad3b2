//! The admission policy every listener shares: what the ingress does with a request, decided
//! from its head alone, between a front that parsed it and the upstream layer that will carry
//! it. The HTTP/1.1, HTTP/2 and HTTP/3 fronts and the pingora fallback all ask [`admit`] (or
//! [`admit_head`]), so a 404, 308, 413, 431 or 503 is the same whichever way the request came;
//! the routing table it asks is [`crate::routes`], with its Knative part ([`crate::knative`])
//! tried first.

use std::sync::Arc;

use crate::activator::Revision;
use crate::balance::Upstream;
use crate::limits::MAX_HEADER_BYTES;
use crate::routes::{Decision, Settings, Table, Target};
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
    /// A Knative revision's request: it goes through the activator ([`crate::activator::gate`]).
    pub revision: Option<Arc<Revision>>,
    /// Fields to set on the forwarded request, replacing the client's of the same names.
    pub append: Option<Arc<[(String, String)]>>,
}

/// Whether a client's request field is one the route sets itself (`append`).
pub fn appended(append: Option<&Arc<[(String, String)]>>, name: &str) -> bool {
    append.is_some_and(|a| a.iter().any(|(n, _)| name.eq_ignore_ascii_case(n)))
}

/// A request head as the admission policy reads it.
pub struct Asked<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Whether it came in on the internal listener (cluster-local Knative routes are served).
    pub internal: bool,
    /// The Host header or authority.
    pub host: &'a str,
    /// The origin-form target (path and query).
    pub target: &'a str,
    pub declared: Option<u64>,
    /// The head's size in bytes.
    pub header_bytes: usize,
    /// A request field's value by name (any case).
    pub header: &'a dyn Fn(&str) -> Option<&'a [u8]>,
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
pub fn admit(table: &Table, scheme: &str, internal: bool, uri: &http::Uri, headers: &http::HeaderMap) -> Admitted {
    let header_bytes = uri.path_and_query().map(|p| p.as_str().len()).unwrap_or(0)
        + headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let header = |n: &str| headers.get(n).map(|v| v.as_bytes());
    admit_request(
        table,
        &Asked {
            scheme,
            internal,
            host: &request_host(uri, headers),
            target,
            declared: declared_length(headers),
            header_bytes,
            header: &header,
        },
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
    admit_request(
        table,
        &Asked {
            scheme,
            internal: false,
            host,
            target,
            declared,
            header_bytes,
            header: &no_header,
        },
    )
}

fn no_header<'x>(_: &str) -> Option<&'x [u8]> {
    None
}

/// [`admit`] from an [`Asked`].
pub fn admit_request(table: &Table, asked: &Asked<'_>) -> Admitted {
    let Asked {
        scheme,
        host,
        target,
        declared,
        header_bytes,
        ..
    } = *asked;
    let early = |status, body| Admitted {
        ingress: "-".to_string(),
        settings: default_settings(),
        outcome: Outcome::Respond(status, body),
        revision: None,
        append: None,
    };
    if header_bytes > MAX_HEADER_BYTES {
        return early(
            431,
            format!("the request's header is {header_bytes} bytes, over the limit of {MAX_HEADER_BYTES}"),
        );
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if let Some(p) = table.knative.find(host, path, asked.internal, asked.header) {
        let Some(split) = p.pick() else {
            return Admitted {
                ingress: p.ingress.clone(),
                ..early(
                    503,
                    format!("no split of {}'s route for this path has any weight", p.ingress),
                )
            };
        };
        return Admitted {
            ingress: p.ingress.clone(),
            settings: split.settings.clone(),
            outcome: outcome(&split.settings, &split.target, scheme, host, target, declared),
            revision: split.revision.clone(),
            append: Some(split.append.clone()).filter(|a| !a.is_empty()),
        };
    }
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
    Admitted {
        ingress: route.ingress.clone(),
        settings: route.settings.clone(),
        outcome: outcome(&route.settings, &route.target, scheme, host, target, declared),
        revision: None,
        append: None,
    }
}

/// What a matched route does with the request: 308 to HTTPS, 413, 503 with its reason, or
/// forward.
fn outcome(settings: &Settings, to: &Target, scheme: &str, host: &str, target: &str, declared: Option<u64>) -> Outcome {
    if settings.ssl_redirect && scheme == "http" {
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
        match to {
            Target::Upstream(u) => Outcome::Forward(u.clone()),
            Target::Unavailable(reason) => Outcome::Respond(503, reason.clone()),
        }
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
