//! The Kubernetes REST API over HTTPS (HTTP/2 and HTTP/1.1).

mod commit;
mod conn;
mod crd_schema;
mod delete;
pub mod discovery;
pub mod error;
pub mod eviction;
mod handlers;
mod hooks;
mod hpa_v1;
pub mod http;
pub mod local;
pub mod objects;
mod openapi_v2;
mod patching;
mod pods;
pub mod proto;
mod query;
pub mod registry;
pub mod resource_metrics;
mod reviews;
pub mod select;
mod tables;
mod watch;

pub use conn::{LimitsError, ServeLimits, serve};
pub use hooks::refresh_crds;
pub use pods::KUBELET_SCHEME;

use std::net::SocketAddr;
use std::sync::Arc;

use ::http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::auth::{Authenticator, User};
use crate::ipalloc::IpAllocator;
use crate::rbac::{self, Attributes};
use crate::store::Store;
use error::ApiError;
use http::{Body, error_response, json_response, text_response};
use registry::Registry;

/// The last segment of [`nodeless_types::knative::STATS_PATH`]: where ingresses post what they
/// saw of each revision.
const STATS_RESOURCE: &str = "nodeless-stats";

/// Everything a request handler needs.
pub struct ApiState {
    pub store: Store,
    pub registry: Registry,
    pub auth: Authenticator,
    pub policy: crate::admission::Policy,
    pub cluster_ips: IpAllocator,
    /// TLS client settings for the kubelet API of nodes (trusts the cluster CA).
    pub node_tls: Arc<rustls::ClientConfig>,
    /// What the ingresses report about Knative revisions, for the autoscaler.
    pub revision_stats: crate::knative::stats::Sink,
    /// What `/metrics` serves (see `metrics`).
    pub metrics: crate::metrics::Metrics,
    /// The cluster CA's certificate, published in every namespace (`kube-root-ca.crt`).
    pub ca_pem: String,
    /// Where the cluster CA's key is: the certificate signer signs with it.
    pub pki_dir: std::path::PathBuf,
    /// What the nodes report of their pods' CPU and memory (`metrics.k8s.io`).
    pub usage: crate::usage::Usage,
}

/// The user a connection's verified client certificate names (`crate::auth::certificate_user`).
#[derive(Clone, Debug)]
pub struct CertifiedUser(pub crate::auth::User);

/// Where a request is going, parsed from its path.
#[derive(Debug, PartialEq)]
enum Route {
    Health,
    Metrics,
    Version,
    CoreVersions,
    GroupList,
    Group(String),
    ResourceList(String, String),
    OpenApiIndex,
    OpenApi(String, String),
    OpenApiV2,
    /// ServiceAccount issuer discovery: the OpenID configuration and the key set, so other
    /// systems can verify the cluster's tokens (workload identity federation).
    OidcDiscovery,
    Jwks,
    /// `/api/v1/nodes/<node>/proxy/<path>`: the node's kubelet API at `/<path>`.
    NodeProxy(String, String),
    Resource(Target),
}

/// A resource path: `/api/v1/namespaces/ns/pods/name/log`.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub plural: String,
    pub name: Option<String>,
    pub sub: Option<String>,
    /// The legacy `/watch/` path form.
    pub watch_path: bool,
}

fn parse_route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => return Some(Route::Health),
        ["version"] => return Some(Route::Version),
        [".well-known", "openid-configuration"] => return Some(Route::OidcDiscovery),
        ["openid", "v1", "jwks"] => return Some(Route::Jwks),
        ["metrics"] => return Some(Route::Metrics),
        ["api"] => return Some(Route::CoreVersions),
        ["apis"] => return Some(Route::GroupList),
        ["apis", g] => return Some(Route::Group(g.to_string())),
        ["openapi", "v3"] => return Some(Route::OpenApiIndex),
        ["openapi", "v3", "api", v] => return Some(Route::OpenApi(String::new(), v.to_string())),
        ["openapi", "v3", "apis", g, v] => return Some(Route::OpenApi(g.to_string(), v.to_string())),
        ["openapi", "v2"] | ["swagger.json"] => return Some(Route::OpenApiV2),
        ["api", "v1", "nodes", node, "proxy", rest @ ..] => {
            return Some(Route::NodeProxy(node.to_string(), format!("/{}", rest.join("/"))));
        }
        ["api", v] => return Some(Route::ResourceList(String::new(), v.to_string())),
        ["apis", g, v] => return Some(Route::ResourceList(g.to_string(), v.to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let mk = |namespace: Option<&str>, plural: &str, name: Option<&str>, sub: Option<&str>| {
        Route::Resource(Target {
            group: group.to_string(),
            version: version.to_string(),
            namespace: namespace.map(String::from),
            plural: plural.to_string(),
            name: name.map(String::from),
            sub: sub.map(String::from),
            watch_path,
        })
    };
    Some(match rest {
        ["namespaces", ns, plural] if !matches!(*plural, "status" | "finalize") => mk(Some(ns), plural, None, None),
        ["namespaces", ns, plural, name] => mk(Some(ns), plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => mk(Some(ns), plural, Some(name), Some(sub)),
        [plural] => mk(None, plural, None, None),
        [plural, name] => mk(None, plural, Some(name), None),
        [plural, name, sub] => mk(None, plural, Some(name), Some(sub)),
        _ => return None,
    })
}

async fn handle(state: Arc<ApiState>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let watch = is_watch(req.uri().query());
    let want = http::answer_form(req.headers());
    let result = route(state.clone(), req).await;
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            if e.code() >= 500 {
                tracing::warn!(%method, %path, error = %e, "request failed");
            } else {
                // The message may quote the request body (a Secret's data, say): log only the code.
                tracing::debug!(%method, %path, code = e.code(), "request refused");
            }
            error_response(&e, want)
        }
    };
    count(
        &state.metrics,
        &method,
        &path,
        watch,
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// A request in `apiserver_request_total` and (unless a watch) its duration.
fn count(m: &crate::metrics::Metrics, method: &Method, path: &str, watch: bool, code: u16, took: std::time::Duration) {
    let (group, version, resource, subresource, named, watch) = match parse_route(path) {
        Some(Route::Resource(t)) => (
            t.group,
            t.version,
            t.plural,
            t.sub.unwrap_or_default(),
            t.name.is_some(),
            watch || t.watch_path,
        ),
        _ => Default::default(),
    };
    let verb = crate::metrics::verb(method, named, watch).to_string();
    m.requests
        .get_or_create(&crate::metrics::RequestLabels {
            verb: verb.clone(),
            group: group.clone(),
            version: version.clone(),
            resource: resource.clone(),
            subresource: subresource.clone(),
            code: code.to_string(),
        })
        .inc();
    if !watch {
        m.request_duration
            .get_or_create(&crate::metrics::DurationLabels {
                verb,
                group,
                version,
                resource,
                subresource,
            })
            .observe(took.as_secs_f64());
    }
}

fn is_watch(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1" || kv == "watch")
    })
}

/// What RBAC is asked for a request (two questions for a websocket exec, attach or port-forward,
/// a GET that acts: `get` and `create`, as Kubernetes asks since 1.31).
fn attributes(route: &Route, method: &Method, path: &str, watch: bool) -> Vec<Attributes> {
    match route {
        Route::Resource(t) => {
            let verb = rbac::verb(method, t.name.is_some(), watch || t.watch_path);
            // A namespace is in itself, so a RoleBinding may let its subjects read it.
            let ns = match (&t.namespace, t.group.as_str(), t.plural.as_str()) {
                (None, "", "namespaces") => t.name.as_deref(),
                (ns, ..) => ns.as_deref(),
            };
            let one =
                |verb: &str| Attributes::resource(verb, &t.group, &t.plural, t.sub.as_deref(), ns, t.name.as_deref());
            let acting = t.sub.as_deref().is_some_and(|s| ACTING.contains(&s));
            if acting && verb == "get" {
                vec![one("get"), one("create")]
            } else {
                vec![one(verb)]
            }
        }
        Route::NodeProxy(node, _) => vec![Attributes::resource(
            rbac::verb(method, true, false),
            "",
            "nodes",
            Some("proxy"),
            None,
            Some(node),
        )],
        _ => vec![Attributes::NonResource {
            verb: method.as_str().to_ascii_lowercase(),
            path: path.to_string(),
        }],
    }
}

/// Subresources that act on a running pod or node rather than show an object.
const ACTING: [&str; 4] = ["exec", "attach", "portforward", "proxy"];

/// The user a request acts as: its own, or the one it impersonates (`kubectl --as`, `--as-group`)
/// when RBAC lets it impersonate that user and those groups.
fn impersonated(state: &ApiState, me: User, headers: &::http::HeaderMap) -> Result<User, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    };
    let name = values("impersonate-user").into_iter().next();
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next();
    if headers.keys().any(|k| k.as_str().starts_with("impersonate-extra-")) {
        return Err(ApiError::bad_request("Impersonate-Extra-* headers are not supported"));
    }
    let Some(name) = name else {
        if !groups.is_empty() || uid.is_some() {
            return Err(ApiError::bad_request(
                "requested impersonation of groups or a uid without impersonating a user",
            ));
        }
        return Ok(me);
    };
    let check = |a: Attributes| -> Result<(), ApiError> {
        if rbac::authorize(&state.store, &me, &a).allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(a.forbidden(&me.name)))
        }
    };
    let mut user = match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) => {
            check(Attributes::resource(
                "impersonate",
                "",
                "serviceaccounts",
                None,
                Some(ns),
                Some(sa),
            ))?;
            let mut u = User::service_account(ns, sa, "");
            u.groups
                .retain(|g| groups.is_empty() || g == crate::auth::AUTHENTICATED);
            u
        }
        None => {
            check(Attributes::resource(
                "impersonate",
                "",
                "users",
                None,
                None,
                Some(&name),
            ))?;
            User {
                name,
                ..Default::default()
            }
        }
    };
    for g in &groups {
        check(Attributes::resource("impersonate", "", "groups", None, None, Some(g)))?;
        user.groups.push(g.clone());
    }
    if let Some(uid) = uid {
        check(Attributes::resource(
            "impersonate",
            "authentication.k8s.io",
            "uids",
            None,
            None,
            Some(&uid),
        ))?;
        user.uid = uid;
    }
    if !user.groups.iter().any(|g| g == crate::auth::AUTHENTICATED) {
        user.groups.push(crate::auth::AUTHENTICATED.into());
    }
    Ok(user)
}

async fn route(state: Arc<ApiState>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let route = parse_route(req.uri().path()).ok_or(ApiError::NoRoute)?;
    if matches!(route, Route::Health) {
        return Ok(text_response(200, "ok"));
    }
    let auth_header = req
        .headers()
        .get(::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // A bearer token speaks for the request; without one, the connection's client certificate.
    let me = match auth_header {
        Some(_) => state.auth.authenticate(&state.store, auth_header),
        None => req.extensions().get::<CertifiedUser>().map(|c| c.0.clone()),
    }
    .ok_or(ApiError::Unauthorized)?;
    let user = impersonated(&state, me, req.headers())?;
    // The admin's requests (every component's) skip building the questions RBAC would allow.
    let asked = if user.is_superuser() {
        Vec::new()
    } else {
        attributes(&route, req.method(), req.uri().path(), is_watch(req.uri().query()))
    };
    for asked in asked {
        if !rbac::authorize(&state.store, &user, &asked).allowed {
            return Err(ApiError::Forbidden(asked.forbidden(&user.name)));
        }
    }
    crate::auth::REQUESTER.scope(user, answer(state, route, req)).await
}

async fn answer(state: Arc<ApiState>, route: Route, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let reg = &state.registry;
    match route {
        Route::Health => Ok(text_response(200, "ok")),
        Route::Version => Ok(json_response(200, &discovery::version(), &[])),
        Route::OidcDiscovery => {
            // Where this request reached the API, as Kubernetes derives the key set's address
            // from its external host.
            let host = req
                .headers()
                .get(::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .unwrap_or("kubernetes.default.svc");
            let body = crate::auth::jwt::Issuer::discovery(&format!("https://{host}/openid/v1/jwks"));
            Ok(json_response(200, &body, &[]))
        }
        Route::Jwks => {
            let mut resp = json_response(200, &state.auth.issuer.jwks(), &[]);
            resp.headers_mut().insert(
                ::http::header::CONTENT_TYPE,
                ::http::HeaderValue::from_static("application/jwk-set+json"),
            );
            Ok(resp)
        }
        Route::Metrics => {
            let mut resp = text_response(200, &state.metrics.encode());
            resp.headers_mut().insert(
                ::http::header::CONTENT_TYPE,
                ::http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            Ok(resp)
        }
        Route::CoreVersions | Route::GroupList => {
            let core = matches!(route, Route::CoreVersions);
            let accept = req.headers().get(::http::header::ACCEPT).and_then(|v| v.to_str().ok());
            if let Some(media) = discovery::aggregated_media(accept) {
                let mut resp = json_response(200, &discovery::aggregated(reg, core, media), &[]);
                resp.headers_mut()
                    .insert(::http::header::CONTENT_TYPE, ::http::HeaderValue::from_static(media));
                return Ok(resp);
            }
            let doc = if core {
                discovery::core_versions()
            } else {
                discovery::group_list(reg)
            };
            Ok(json_response(200, &doc, &[]))
        }
        Route::Group(g) => discovery::group(reg, &g)
            .map(|v| json_response(200, &v, &[]))
            .ok_or(ApiError::NoRoute),
        Route::ResourceList(g, v) => discovery::resource_list(reg, &g, &v)
            .map(|d| json_response(200, &d, &[]))
            .ok_or(ApiError::NoRoute),
        Route::OpenApiIndex => Ok(json_response(200, &discovery::openapi_index(reg), &[])),
        Route::OpenApi(g, v) => discovery::openapi_group_version(reg, &g, &v)
            .map(|d| json_response(200, &d, &[]))
            .ok_or(ApiError::NoRoute),
        Route::OpenApiV2 => {
            let mut resp = Response::new(http::full(openapi_v2::document(reg)));
            resp.headers_mut().insert(
                ::http::header::CONTENT_TYPE,
                ::http::HeaderValue::from_static("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
            );
            Ok(resp)
        }
        Route::NodeProxy(node, path) => pods::forward_to_node(&state, &node, &path, req).await,
        Route::Resource(target)
            if target.group == nodeless_types::knative::AUTOSCALING_GROUP && target.plural == STATS_RESOURCE =>
        {
            if *req.method() != Method::POST || target.namespace.is_some() || target.name.is_some() {
                return Err(ApiError::bad_request(format!(
                    "{STATS_RESOURCE} takes a POST of the ingress's revision statistics"
                )));
            }
            let body = http::read_body(req.into_body()).await?;
            let stats: nodeless_types::knative::Stats = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("revision statistics: {e}")))?;
            state.revision_stats.record(&stats);
            Ok(text_response(200, "ok"))
        }
        Route::Resource(target) => handlers::dispatch(&state, target, req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(r: Option<Route>) -> Target {
        match r {
            Some(Route::Resource(t)) => t,
            other => panic!("not a resource route: {other:?}"),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(parse_route("/api"), Some(Route::CoreVersions));
        assert_eq!(
            parse_route("/apis/apps/v1"),
            Some(Route::ResourceList("apps".into(), "v1".into()))
        );
        let t = target(parse_route("/api/v1/namespaces/default/pods/p1/log"));
        assert_eq!(
            (
                t.namespace.as_deref(),
                t.plural.as_str(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            (Some("default"), "pods", Some("p1"), Some("log"))
        );
        let t = target(parse_route("/api/v1/namespaces/default"));
        assert_eq!((t.plural.as_str(), t.name.as_deref()), ("namespaces", Some("default")));
        let t = target(parse_route("/api/v1/namespaces/gone/finalize"));
        assert_eq!(
            (t.plural.as_str(), t.name.as_deref(), t.sub.as_deref()),
            ("namespaces", Some("gone"), Some("finalize"))
        );
        let t = target(parse_route("/apis/apps/v1/watch/namespaces/x/deployments"));
        assert!(t.watch_path);
        assert_eq!(t.plural, "deployments");
        assert_eq!(parse_route("/nope"), None);
        assert_eq!(
            parse_route("/api/v1/nodes/n1/proxy/metrics"),
            Some(Route::NodeProxy("n1".into(), "/metrics".into()))
        );
        let t = target(parse_route(nodeless_types::knative::STATS_PATH));
        assert_eq!(
            (t.group.as_str(), t.plural.as_str(), t.namespace, t.name),
            (nodeless_types::knative::AUTOSCALING_GROUP, STATS_RESOURCE, None, None)
        );
    }
}
