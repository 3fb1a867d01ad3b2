//! The routing table: a plain data structure built from Ingress, IngressClass, Service and
//! EndpointSlice objects, read by the proxy for every request. Nothing here does I/O, so the
//! whole of Ingress v1's matching is tested without a network, and other kinds of backend (the
//! Knative activator) can be added as one more `Target`.
//!
//! Matching, as the Ingress v1 API defines it:
//! - hosts: an exact host, or `*.` and a domain, which matches exactly one more label
//!   (`*.foo.com` matches `bar.foo.com`, not `baz.bar.foo.com` nor `foo.com`); a rule without a
//!   host matches every host. A request is tried against its exact host's rules, then the
//!   wildcard's, then the host-less rules, then the default backend.
//! - paths: `Exact` matches the path as it is (`/foo` does not match `/foo/`); `Prefix` matches
//!   element by element on `/`, a trailing `/` ignored (`/aaa` matches `/aaa` and `/aaa/b`, not
//!   `/aaaccc`); `ImplementationSpecific` is read as `Prefix`. The longest path wins; between
//!   equally long ones, `Exact` beats `Prefix`. Across Ingresses, the older one wins a tie.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use nodeless_types::keys;
use nodeless_watch::{SlicesByService, port_endpoints};

use crate::balance::{Balance, Upstream};

pub mod knative;

/// The controller name IngressClasses use to pick this ingress.
pub const CONTROLLER: &str = "nodeless.io/ingress-l7";
/// The annotation that makes an IngressClass the cluster's default.
pub const DEFAULT_CLASS: &str = keys::DEFAULT_INGRESS_CLASS;
/// The Service port `appProtocol` that asks for HTTP/2 without TLS to the endpoints.
pub const H2C: &str = "kubernetes.io/h2c";

/// Per-Ingress settings, from annotations under `nodeless.io/`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `proxy-connect-timeout` (seconds).
    pub connect_timeout: Duration,
    /// `proxy-read-timeout` (seconds): the longest wait for the upstream between reads.
    pub read_timeout: Duration,
    /// `proxy-body-size` (bytes, or with k/m/g): larger request bodies get 413. 0: no limit.
    /// [`DEFAULT_BODY_LIMIT`] without the annotation.
    pub body_limit: u64,
    /// `ssl-redirect: "true"`: plain HTTP gets a 308 to the same URL over HTTPS.
    pub ssl_redirect: bool,
    /// `load-balance: round-robin | least-request` (power of two choices).
    pub balance: Balance,
    /// The longest wait between reads of a response's body, once its head is in.
    pub body_idle: BodyIdle,
    /// Whether the request for the endpoint carries RFC 7239's `Forwarded` (Knative routes:
    /// [`crate::forwarding`]).
    pub forwarded: bool,
}

/// How long a read of a response's body may wait, once the head is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyIdle {
    /// As long as the head: an Ingress's `proxy-read-timeout` bounds every read.
    AsHead,
    /// This long: a Knative revision's `idleTimeoutSeconds`.
    Limit(Duration),
    /// No limit: a Knative revision without `idleTimeoutSeconds`, whose `timeoutSeconds` (or
    /// `responseStartTimeoutSeconds`) bounds only the wait for the response to start.
    Unbounded,
}

impl Settings {
    /// The longest wait between reads of a response's body (`None`: no limit), the one rule
    /// every front reads a body by.
    pub fn body_idle(&self) -> Option<Duration> {
        match self.body_idle {
            BodyIdle::AsHead => Some(self.read_timeout),
            BodyIdle::Limit(d) => Some(d),
            BodyIdle::Unbounded => None,
        }
    }
}

/// The request-body limit of an Ingress without `proxy-body-size`: 64 MiB. Large enough for
/// the uploads a serverless app takes in one request (ingress-nginx's 1 MiB is its most
/// overridden default), small enough that one request cannot hold an endpoint and the
/// ingress's connection to it for the minutes a multi-gigabyte stream takes; an Ingress that
/// needs more (or none: `"0"`) says so with the annotation.
pub const DEFAULT_BODY_LIMIT: u64 = 64 << 20;

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            body_limit: DEFAULT_BODY_LIMIT,
            ssl_redirect: false,
            balance: Balance::RoundRobin,
            body_idle: BodyIdle::AsHead,
            forwarded: false,
        }
    }
}

pub const ANNOTATION_PREFIX: &str = "nodeless.io/";

/// "10", "1k", "8m", "1g" -> bytes.
fn size(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_lowercase();
    let (num, mult) = match v.chars().last()? {
        'k' => (&v[..v.len() - 1], 1u64 << 10),
        'm' => (&v[..v.len() - 1], 1 << 20),
        'g' => (&v[..v.len() - 1], 1 << 30),
        _ => (v.as_str(), 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

impl Settings {
    /// The settings an Ingress's annotations ask for; a value that does not parse keeps the
    /// default and is reported.
    pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> (Settings, Vec<String>) {
        let mut s = Settings::default();
        let mut problems = Vec::new();
        for (k, v) in annotations.into_iter().flatten() {
            let Some(name) = k.strip_prefix(ANNOTATION_PREFIX) else {
                continue;
            };
            let secs = || v.trim().parse::<u64>().ok().filter(|n| *n > 0).map(Duration::from_secs);
            let ok = match name {
                "proxy-connect-timeout" => secs().map(|d| s.connect_timeout = d).is_some(),
                "proxy-read-timeout" => secs().map(|d| s.read_timeout = d).is_some(),
                "proxy-body-size" => size(v).map(|n| s.body_limit = n).is_some(),
                "ssl-redirect" => v.parse::<bool>().map(|b| s.ssl_redirect = b).is_ok(),
                "load-balance" => {
                    let balance = match v.as_str() {
                        "round-robin" => Some(Balance::RoundRobin),
                        "least-request" => Some(Balance::LeastRequest),
                        _ => None,
                    };
                    balance.map(|b| s.balance = b).is_some()
                }
                _ => true,
            };
            if !ok {
                problems.push(format!("annotation {k}: {v:?} is not a valid value"));
            }
        }
        (s, problems)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Exact,
    Prefix,
}

/// One path rule, normalised for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub kind: PathKind,
    /// The path as written.
    pub path: String,
    /// For `Prefix`: the path's elements (empty for `/`).
    elements: Vec<String>,
}

impl PathRule {
    pub fn new(kind: PathKind, path: &str) -> PathRule {
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        };
        let elements = path.split('/').filter(|e| !e.is_empty()).map(str::to_string).collect();
        PathRule { kind, path, elements }
    }

    pub fn matches(&self, request_path: &str) -> bool {
        match self.kind {
            PathKind::Exact => self.path == request_path,
            PathKind::Prefix => {
                let mut req = request_path.split('/').filter(|e| !e.is_empty());
                self.elements.iter().all(|e| req.next() == Some(e.as_str()))
            }
        }
    }

    /// The length that decides between matching rules: a `Prefix` rule's trailing `/` does not
    /// count, so `Exact /foo` beats `Prefix /foo/` for `/foo`.
    fn weight(&self) -> (usize, u8) {
        let len = match self.kind {
            PathKind::Exact => self.path.len(),
            PathKind::Prefix => self.path.trim_end_matches('/').len(),
        };
        (len, if self.kind == PathKind::Exact { 1 } else { 0 })
    }
}

/// Where a matched request goes.
#[derive(Debug, Clone)]
pub enum Target {
    Upstream(Arc<Upstream>),
    /// The backend cannot take requests; the reason is the 503's body.
    Unavailable(String),
}

#[derive(Debug, Clone)]
pub struct Route {
    pub path: PathRule,
    pub target: Target,
    /// `namespace/name` of the Ingress the rule came from.
    pub ingress: String,
    /// That Ingress's settings.
    pub settings: Arc<Settings>,
}

/// A TLS host and the Secret holding its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsHost {
    pub host: String,
    /// `namespace/name`.
    pub secret: String,
}

#[derive(Debug, Default)]
pub struct Table {
    exact: HashMap<String, Vec<Route>>,
    /// Keyed by the domain after `*.`.
    wildcard: HashMap<String, Vec<Route>>,
    any_host: Vec<Route>,
    default_backend: Option<Route>,
    /// Annotations that did not parse, for the log.
    pub problems: Vec<String>,
    /// Hosts with TLS and their Secrets, in Ingress order (older first).
    pub tls: Vec<TlsHost>,
    /// The Ingresses served (`namespace/name`), for status and logs.
    pub ingresses: Vec<String>,
    /// The KIngresses' routes (Knative Serving), tried before the Ingresses'.
    pub knative: knative::Routes,
}

/// The outcome of routing one request.
#[derive(Debug, Clone)]
pub enum Decision<'a> {
    Route(&'a Route),
    /// The default backend (its route's path is `/`).
    Default(&'a Route),
    NotFound,
}

impl Table {
    pub fn route(&self, host: &str, path: &str) -> Decision<'_> {
        let host = normalize_host(host);
        let groups = [
            self.exact.get(&host),
            wildcard_domain(&host).and_then(|d| self.wildcard.get(d)),
            Some(&self.any_host),
        ];
        for routes in groups.into_iter().flatten() {
            // Sorted best first: the first match wins.
            if let Some(r) = routes.iter().find(|r| r.path.matches(path)) {
                return Decision::Route(r);
            }
        }
        match &self.default_backend {
            Some(r) => Decision::Default(r),
            None => Decision::NotFound,
        }
    }

    /// Every upstream in the table (each once), for health and metrics.
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        let mut seen: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
        let all = self
            .exact
            .values()
            .chain(self.wildcard.values())
            .flatten()
            .chain(self.any_host.iter())
            .map(|r| &r.target)
            .chain(self.default_backend.iter().map(|d| &d.target));
        for t in all {
            if let Target::Upstream(u) = t {
                seen.entry(u.name.clone()).or_insert_with(|| u.clone());
            }
        }
        for u in self.knative.upstreams() {
            seen.entry(u.name.clone()).or_insert_with(|| u.clone());
        }
        seen.into_values().collect()
    }
}

/// Lower case, without a port.
pub fn normalize_host(host: &str) -> String {
    let h = if host.starts_with('[') {
        host.split(']').next().map(|s| format!("{s}]")).unwrap_or_default()
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host).to_string()
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// The domain a single-label wildcard would name for this host: `bar.foo.com` -> `foo.com`.
fn wildcard_domain(host: &str) -> Option<&str> {
    host.split_once('.').map(|(_, rest)| rest).filter(|r| !r.is_empty())
}

/// Whether this ingress serves `ingress`, given the cluster's IngressClasses.
pub fn ours(ingress: &Ingress, classes: &[Arc<IngressClass>]) -> bool {
    let mine = |c: &IngressClass| c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER);
    let class_name = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| {
            ingress
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/ingress.class").cloned())
        });
    match class_name {
        Some(name) => classes
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some(name.as_str()) && mine(c)),
        None => classes.iter().any(|c| {
            mine(c)
                && c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS))
                    .map(|v| v == "true")
                    .unwrap_or(false)
        }),
    }
}

/// Service ports and their ready endpoints, looked up by the backends.
struct Backends<'a> {
    /// The previous table's upstreams by name, whose endpoint state carries over.
    prior: HashMap<String, Arc<Upstream>>,
    services: HashMap<(String, String), &'a Service>,
    slices: SlicesByService<'a>,
    built: HashMap<(String, String, String), Target>,
}

impl<'a> Backends<'a> {
    fn new(services: &'a [Arc<Service>], slices: &'a [Arc<EndpointSlice>], prior: &Table) -> Backends<'a> {
        let services = services
            .iter()
            .map(|s| {
                (
                    (
                        s.metadata.namespace.clone().unwrap_or_default(),
                        s.metadata.name.clone().unwrap_or_default(),
                    ),
                    s.as_ref(),
                )
            })
            .collect();
        let prior = prior.upstreams().into_iter().map(|u| (u.name.clone(), u)).collect();
        Backends {
            prior,
            services,
            slices: SlicesByService::new(slices),
            built: HashMap::new(),
        }
    }

    fn target(&mut self, namespace: &str, backend: &IngressBackend) -> Target {
        let Some(svc) = &backend.service else {
            return Target::Unavailable("resource backends are not supported by this ingress".into());
        };
        let port_key = svc
            .port
            .as_ref()
            .map(|p| {
                p.name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| p.number.unwrap_or(0).to_string())
            })
            .unwrap_or_default();
        let key = (namespace.to_string(), svc.name.clone(), port_key.clone());
        if let Some(t) = self.built.get(&key) {
            return t.clone();
        }
        let t = self.resolve(namespace, &svc.name, svc.port.as_ref(), &port_key);
        self.built.insert(key, t.clone());
        t
    }

    fn resolve(
        &self,
        namespace: &str,
        name: &str,
        port: Option<&k8s_openapi::api::networking::v1::ServiceBackendPort>,
        port_key: &str,
    ) -> Target {
        let label = format!("{namespace}/{name}:{port_key}");
        let Some(service) = self.services.get(&(namespace.to_string(), name.to_string())) else {
            return Target::Unavailable(format!("service {namespace}/{name} does not exist"));
        };
        let ports = service.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
        let found = ports.iter().find(|p| match port {
            Some(bp) => match (&bp.name, bp.number) {
                (Some(n), _) if !n.is_empty() => p.name.as_deref() == Some(n.as_str()),
                (_, Some(num)) => p.port == num,
                _ => false,
            },
            None => ports.len() == 1,
        });
        let Some(sp) = found else {
            return Target::Unavailable(format!("service {namespace}/{name} has no port {port_key}"));
        };
        if sp.protocol.as_deref().unwrap_or("TCP") != "TCP" {
            return Target::Unavailable(format!("port {port_key} of service {namespace}/{name} is not TCP"));
        }
        let endpoints = port_endpoints(self.slices.get(namespace, name), sp).ready;
        if endpoints.is_empty() {
            return Target::Unavailable(format!("service {label} has no ready endpoints"));
        }
        let mut u = Upstream::new(label, endpoints, sp.app_protocol.as_deref() == Some(H2C));
        if let Some(p) = self.prior.get(&u.name) {
            u.inherit(p);
        }
        Target::Upstream(Arc::new(u))
    }
}

/// Build the table from the cluster's objects: the Ingresses of this controller's classes, the
/// oldest first (it wins ties). The balancer's state for endpoints that `prior` (the table in
/// use) also has carries over.
pub fn build(
    ingresses: &[Arc<Ingress>],
    classes: &[Arc<IngressClass>],
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    prior: &Table,
) -> Table {
    let mut mine: Vec<&Ingress> = ingresses
        .iter()
        .map(|i| i.as_ref())
        .filter(|i| ours(i, classes))
        .collect();
    mine.sort_by(|a, b| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            &a.metadata.namespace,
            &a.metadata.name,
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &b.metadata.namespace,
                &b.metadata.name,
            ))
    });
    let mut backends = Backends::new(services, slices, prior);
    let mut table = Table::default();
    for ing in mine {
        let ns = ing.metadata.namespace.clone().unwrap_or_default();
        let id = format!("{ns}/{}", ing.metadata.name.clone().unwrap_or_default());
        table.ingresses.push(id.clone());
        let (settings, problems) = Settings::from_annotations(ing.metadata.annotations.as_ref());
        table
            .problems
            .extend(problems.into_iter().map(|p| format!("ingress {id}: {p}")));
        let settings = Arc::new(settings);
        let Some(spec) = &ing.spec else { continue };
        if let (None, Some(b)) = (&table.default_backend, &spec.default_backend) {
            table.default_backend = Some(Route {
                path: PathRule::new(PathKind::Prefix, "/"),
                target: backends.target(&ns, b),
                ingress: id.clone(),
                settings: settings.clone(),
            });
        }
        for tls in spec.tls.iter().flatten() {
            let Some(secret) = &tls.secret_name else { continue };
            for h in tls.hosts.iter().flatten() {
                let host = h.to_ascii_lowercase();
                if !table.tls.iter().any(|t| t.host == host) {
                    table.tls.push(TlsHost {
                        host,
                        secret: format!("{ns}/{secret}"),
                    });
                }
            }
        }
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.as_deref().map(|h| h.to_ascii_lowercase());
            let list = match host.as_deref() {
                None | Some("") => &mut table.any_host,
                Some(h) => match h.strip_prefix("*.") {
                    Some(domain) => table.wildcard.entry(domain.to_string()).or_default(),
                    None => table.exact.entry(h.to_string()).or_default(),
                },
            };
            for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let kind = if p.path_type == "Exact" {
                    PathKind::Exact
                } else {
                    PathKind::Prefix
                };
                let path = PathRule::new(kind, p.path.as_deref().unwrap_or("/"));
                // The first (older) Ingress keeps a path both define.
                if list.iter().any(|r| r.path == path) {
                    continue;
                }
                list.push(Route {
                    path,
                    target: backends.target(&ns, &p.backend),
                    ingress: id.clone(),
                    settings: settings.clone(),
                });
            }
        }
    }
    for list in table
        .exact
        .values_mut()
        .chain(table.wildcard.values_mut())
        .chain(std::iter::once(&mut table.any_host))
    {
        // Best first; a stable sort keeps the older Ingress first among equals.
        list.sort_by_key(|r| std::cmp::Reverse(r.path.weight()));
    }
    table
}

/// The PEM certificate chain and key of a `kubernetes.io/tls` Secret.
pub fn secret_pem(secret: &Secret) -> Result<(Vec<u8>, Vec<u8>), String> {
    let data = secret.data.as_ref().ok_or("the secret has no data")?;
    let crt = data.get("tls.crt").ok_or("the secret has no tls.crt")?;
    let key = data.get("tls.key").ok_or("the secret has no tls.key")?;
    Ok((crt.0.clone(), key.0.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::EJECT_AFTER;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn class() -> Arc<IngressClass> {
        obj(
            json!({"metadata": {"name": "nodeless", "annotations": {DEFAULT_CLASS: "true"}}, "spec": {"controller": CONTROLLER}}),
        )
    }

    fn service(name: &str, ports: serde_json::Value) -> Arc<Service> {
        obj(json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"ports": ports}}))
    }

    fn slice(service: &str, port_name: &str, port: u16, ready: &[(&str, bool)]) -> Arc<EndpointSlice> {
        let eps: Vec<_> = ready
            .iter()
            .map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r}}))
            .collect();
        obj(
            json!({"metadata": {"name": format!("{service}-x"), "namespace": "default", "labels": {keys::SERVICE_NAME: service}},
            "addressType": "IPv4", "ports": [{"name": port_name, "port": port, "protocol": "TCP"}], "endpoints": eps}),
        )
    }

    fn ingress(name: &str, created: &str, spec: serde_json::Value) -> Arc<Ingress> {
        obj(json!({"metadata": {"name": name, "namespace": "default", "creationTimestamp": created}, "spec": spec}))
    }

    fn path(p: &str, kind: &str, svc: &str) -> serde_json::Value {
        json!({"path": p, "pathType": kind, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
    }

    /// A table where each service `s<N>` has one endpoint 10.0.0.N:8080.
    fn table(ingresses: &[Arc<Ingress>]) -> Table {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for n in 1..=9 {
            services.push(service(
                &format!("s{n}"),
                json!([{"name": "http", "port": 80, "targetPort": 8080}]),
            ));
            slices.push(slice(&format!("s{n}"), "http", 8080, &[(&format!("10.0.0.{n}"), true)]));
        }
        build(ingresses, &[class()], &services, &slices, &Table::default())
    }

    /// The service a request is routed to, or "404".
    fn to(t: &Table, host: &str, p: &str) -> String {
        match t.route(host, p) {
            Decision::Route(Route {
                target: Target::Upstream(u),
                ..
            })
            | Decision::Default(Route {
                target: Target::Upstream(u),
                ..
            }) => u.name.split(['/', ':']).nth(1).unwrap_or_default().to_string(),
            Decision::Route(Route {
                target: Target::Unavailable(m),
                ..
            })
            | Decision::Default(Route {
                target: Target::Unavailable(m),
                ..
            }) => format!("503 {m}"),
            Decision::NotFound => "404".into(),
        }
    }

    #[test]
    fn exact_and_prefix_paths() {
        let t = table(&[ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"rules": [{"http": {"paths": [
            path("/foo", "Exact", "s1"), path("/aaa", "Prefix", "s2"), path("/aaa/bbb/", "Prefix", "s3"), path("/", "Prefix", "s4"), path("/x", "ImplementationSpecific", "s5")]}}]}),
        )]);
        assert_eq!(to(&t, "h", "/foo"), "s1");
        assert_eq!(to(&t, "h", "/foo/"), "s4", "Exact /foo does not match /foo/");
        assert_eq!(to(&t, "h", "/aaa"), "s2");
        assert_eq!(to(&t, "h", "/aaa/"), "s2");
        assert_eq!(to(&t, "h", "/aaa/ccc"), "s2");
        assert_eq!(to(&t, "h", "/aaaccc"), "s4", "Prefix /aaa does not match /aaaccc");
        assert_eq!(
            to(&t, "h", "/aaa/bbb"),
            "s3",
            "the longest prefix wins, its trailing slash ignored"
        );
        assert_eq!(to(&t, "h", "/aaa/bbbb"), "s2");
        assert_eq!(to(&t, "h", "/x/y"), "s5", "ImplementationSpecific is a prefix");
        assert_eq!(to(&t, "h", "/"), "s4");
    }

    #[test]
    fn exact_beats_an_equally_long_prefix() {
        let t = table(&[ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"rules": [{"http": {"paths": [path("/foo/", "Prefix", "s1"), path("/foo", "Exact", "s2")]}}]}),
        )]);
        assert_eq!(to(&t, "h", "/foo"), "s2");
        assert_eq!(to(&t, "h", "/foo/bar"), "s1");
    }

    #[test]
    fn hosts_exact_wildcard_and_any() {
        let t = table(&[ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"rules": [
            {"host": "foo.com", "http": {"paths": [path("/", "Prefix", "s1")]}},
            {"host": "*.foo.com", "http": {"paths": [path("/", "Prefix", "s2")]}},
            {"host": "only.example", "http": {"paths": [path("/api", "Prefix", "s3")]}},
            {"http": {"paths": [path("/", "Prefix", "s4")]}}]}),
        )]);
        assert_eq!(to(&t, "foo.com", "/"), "s1");
        assert_eq!(to(&t, "FOO.com:8080", "/"), "s1", "case and port do not count");
        assert_eq!(to(&t, "bar.foo.com", "/"), "s2");
        assert_eq!(to(&t, "baz.bar.foo.com", "/"), "s4", "a wildcard covers one label only");
        assert_eq!(to(&t, "other.example", "/"), "s4");
        assert_eq!(to(&t, "only.example", "/api/v1"), "s3");
        assert_eq!(
            to(&t, "only.example", "/web"),
            "s4",
            "a host's unmatched path falls through to the host-less rules"
        );
    }

    #[test]
    fn default_backend_and_not_found() {
        let t = table(&[ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"rules": [{"host": "a.example", "http": {"paths": [path("/", "Prefix", "s1")]}}]}),
        )]);
        assert_eq!(to(&t, "b.example", "/"), "404");
        let t = table(&[ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"defaultBackend": {"service": {"name": "s7", "port": {"number": 80}}}, "rules": [{"host": "a.example", "http": {"paths": [path("/", "Prefix", "s1")]}}]}),
        )]);
        assert_eq!(to(&t, "b.example", "/"), "s7");
    }

    #[test]
    fn the_older_ingress_wins_a_path_both_define() {
        let newer = ingress(
            "new",
            "2026-02-01T00:00:00Z",
            json!({"rules": [{"http": {"paths": [path("/p", "Prefix", "s2"), path("/q", "Prefix", "s3")]}}]}),
        );
        let older = ingress(
            "old",
            "2026-01-01T00:00:00Z",
            json!({"rules": [{"http": {"paths": [path("/p", "Prefix", "s1")]}}]}),
        );
        let t = table(&[newer, older]);
        assert_eq!(to(&t, "h", "/p"), "s1");
        assert_eq!(to(&t, "h", "/q"), "s3", "the newer one's other paths merge in");
    }

    #[test]
    fn backends_by_port_name_ready_endpoints_and_clear_failures() {
        let services = vec![
            service(
                "web",
                json!([{"name": "http", "port": 80, "targetPort": 8080}, {"name": "grpc", "port": 9000, "targetPort": 9000, "appProtocol": H2C}]),
            ),
            service("empty", json!([{"name": "http", "port": 80}])),
        ];
        let slices = vec![
            slice(
                "web",
                "http",
                8080,
                &[("10.0.0.1", true), ("10.0.0.2", false), ("10.0.0.3", true)],
            ),
            slice("web", "grpc", 9000, &[("10.0.0.1", true)]),
        ];
        let ing = ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"rules": [{"http": {"paths": [
            {"path": "/by-name", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
            {"path": "/grpc", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 9000}}}},
            {"path": "/missing", "pathType": "Prefix", "backend": {"service": {"name": "nope", "port": {"number": 80}}}},
            {"path": "/badport", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 81}}}},
            {"path": "/empty", "pathType": "Prefix", "backend": {"service": {"name": "empty", "port": {"number": 80}}}}]}}]}),
        );
        let t = build(&[ing], &[class()], &services, &slices, &Table::default());
        match t.route("h", "/by-name") {
            Decision::Route(Route {
                target: Target::Upstream(u),
                ..
            }) => {
                assert_eq!(
                    u.endpoints,
                    vec!["10.0.0.1:8080".parse().unwrap(), "10.0.0.3:8080".parse().unwrap()],
                    "ready endpoints only"
                );
                assert!(!u.h2c);
                let a = u.pick(Balance::RoundRobin, &[]).unwrap();
                let b = u.pick(Balance::RoundRobin, &[]).unwrap();
                assert_ne!(a, b, "round robin");
                assert_ne!(
                    u.pick(Balance::RoundRobin, &[a]),
                    Some(a),
                    "an endpoint tried already is skipped"
                );
            }
            other => panic!("{other:?}"),
        }
        match t.route("h", "/grpc") {
            Decision::Route(Route {
                target: Target::Upstream(u),
                ..
            }) => assert!(u.h2c, "appProtocol kubernetes.io/h2c"),
            other => panic!("{other:?}"),
        }
        assert_eq!(to(&t, "h", "/missing"), "503 service default/nope does not exist");
        assert_eq!(to(&t, "h", "/badport"), "503 service default/web has no port 81");
        assert_eq!(
            to(&t, "h", "/empty"),
            "503 service default/empty:80 has no ready endpoints"
        );
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint_and_failures_eject() {
        let u = Upstream::new(
            "default/s:80".into(),
            (1..=3).map(|n| format!("10.0.0.{n}:80").parse().unwrap()).collect(),
            false,
        );
        // Endpoint 0 busy, 1 busier, 2 idle: two choices never land on the busiest of a pair.
        for _ in 0..5 {
            u.start(0);
        }
        for _ in 0..9 {
            u.start(1);
        }
        let picks: Vec<usize> = (0..60).map(|_| u.pick(Balance::LeastRequest, &[]).unwrap()).collect();
        assert!(
            picks.iter().filter(|&&i| i == 2).count() > picks.iter().filter(|&&i| i == 1).count(),
            "{picks:?}"
        );
        assert!(
            picks.iter().filter(|&&i| i == 1).count() <= 20,
            "the busiest is picked only when drawn twice: {picks:?}"
        );
        u.done(0);
        assert_eq!(u.outstanding(0), 4);
        // Passive ejection after three connect failures in a row; a success in between resets.
        u.connect_failed(2);
        u.connect_failed(2);
        u.connected(2);
        u.connect_failed(2);
        assert!(!u.ejected(2));
        u.connect_failed(2);
        u.connect_failed(2);
        assert!(u.ejected(2));
        assert!(
            (0..30).all(|_| u.pick(Balance::RoundRobin, &[]) != Some(2)),
            "an ejected endpoint is left out"
        );
        // With every other endpoint tried, the ejected one is still a better guess than nothing.
        assert_eq!(u.pick(Balance::RoundRobin, &[0, 1]), Some(2));
    }

    #[test]
    fn a_rebuild_keeps_ejections_and_requests_under_way() {
        let services = vec![service(
            "web",
            json!([{"name": "http", "port": 80, "targetPort": 8080}]),
        )];
        let ing = ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"rules": [{"http": {"paths": [path("/", "Prefix", "web")]}}]}),
        );
        let upstream = |t: &Table| match t.route("h", "/") {
            Decision::Route(Route {
                target: Target::Upstream(u),
                ..
            }) => u.clone(),
            other => panic!("{other:?}"),
        };
        let first = build(
            std::slice::from_ref(&ing),
            &[class()],
            &services,
            &[slice("web", "http", 8080, &[("10.0.0.1", true), ("10.0.0.2", true)])],
            &Table::default(),
        );
        let u1 = upstream(&first);
        for _ in 0..EJECT_AFTER {
            u1.connect_failed(1);
        }
        u1.start(0);
        // An endpoint joins: a new table, whose upstream has the old endpoints' state.
        let second = build(
            &[ing],
            &[class()],
            &services,
            &[slice(
                "web",
                "http",
                8080,
                &[("10.0.0.1", true), ("10.0.0.2", true), ("10.0.0.3", true)],
            )],
            &first,
        );
        let u2 = upstream(&second);
        assert_eq!(u2.endpoints.len(), 3);
        assert!(
            u2.ejected(1) && !u2.ejected(2),
            "10.0.0.2 stays ejected, the new 10.0.0.3 is not"
        );
        assert_eq!(u2.outstanding(0), 1);
        // The request started on the old table ends there, and is counted off in the new one.
        u1.done(0);
        assert_eq!(u2.outstanding(0), 0);
    }

    #[test]
    fn annotations() {
        let a: BTreeMap<String, String> = [
            ("nodeless.io/proxy-connect-timeout", "2"),
            ("nodeless.io/proxy-read-timeout", "30"),
            ("nodeless.io/proxy-body-size", "8k"),
            ("nodeless.io/ssl-redirect", "true"),
            ("nodeless.io/load-balance", "least-request"),
            ("other.io/x", "y"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (s, problems) = Settings::from_annotations(Some(&a));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            s,
            Settings {
                connect_timeout: Duration::from_secs(2),
                read_timeout: Duration::from_secs(30),
                body_limit: 8192,
                ssl_redirect: true,
                balance: Balance::LeastRequest,
                body_idle: BodyIdle::AsHead,
                forwarded: false,
            }
        );
        let bad: BTreeMap<String, String> = [
            ("nodeless.io/proxy-read-timeout".to_string(), "soon".to_string()),
            ("nodeless.io/load-balance".to_string(), "random".to_string()),
        ]
        .into();
        let (s, problems) = Settings::from_annotations(Some(&bad));
        assert_eq!(s, Settings::default(), "bad values keep the defaults");
        assert_eq!(
            Settings::default().body_limit,
            DEFAULT_BODY_LIMIT,
            "64 MiB without the annotation"
        );
        let none: BTreeMap<String, String> = [("nodeless.io/proxy-body-size".to_string(), "0".to_string())]
            .into_iter()
            .collect();
        assert_eq!(
            Settings::from_annotations(Some(&none)).0.body_limit,
            0,
            "\"0\": no limit"
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn classes() {
        let mine = obj::<IngressClass>(json!({"metadata": {"name": "nl"}, "spec": {"controller": CONTROLLER}}));
        let other = obj::<IngressClass>(
            json!({"metadata": {"name": "nginx", "annotations": {DEFAULT_CLASS: "true"}}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
        );
        let named = |c: Option<&str>| ingress("a", "2026-01-01T00:00:00Z", json!({"ingressClassName": c, "rules": []}));
        assert!(ours(&named(Some("nl")), &[mine.clone(), other.clone()]));
        assert!(!ours(&named(Some("nginx")), &[mine.clone(), other.clone()]));
        assert!(
            !ours(&named(None), &[mine.clone(), other.clone()]),
            "no class, and the default is someone else's"
        );
        assert!(ours(&named(None), &[class()]), "no class, and ours is the default");
        assert!(!ours(&named(Some("absent")), &[class()]));
    }

    #[test]
    fn tls_hosts_keep_the_older_secret() {
        let a = ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"tls": [{"hosts": ["a.example", "*.w.example"], "secretName": "certa"}], "rules": []}),
        );
        let b = ingress(
            "b",
            "2026-02-01T00:00:00Z",
            json!({"tls": [{"hosts": ["a.example", "b.example"], "secretName": "certb"}], "rules": []}),
        );
        let t = table(&[b, a]);
        assert_eq!(
            t.tls,
            vec![
                TlsHost {
                    host: "a.example".into(),
                    secret: "default/certa".into()
                },
                TlsHost {
                    host: "*.w.example".into(),
                    secret: "default/certa".into()
                },
                TlsHost {
                    host: "b.example".into(),
                    secret: "default/certb".into()
                },
            ]
        );
    }
}
