//! Knative Serving's routes: the KIngresses (`networking.internal.knative.dev/v1alpha1`
//! `Ingress`) control makes from Routes, read into a table beside the Ingress one
//! ([`crate::routes::Table::knative`]). Like [`crate::routes`], nothing here does I/O: the
//! watch hands in the objects, and the fronts ask [`Routes::find`] through the admission policy.
//!
//! What a KIngress says, and how it is served:
//! - rules with `hosts` (exact, case-insensitive, the port ignored) and a `visibility`:
//!   `ExternalIP` rules are served on every listener, `ClusterLocal` ones only on the internal
//!   listener (`--internal-http`);
//! - each rule's paths in order, the first that matches winning: `path` is a plain prefix
//!   (default `/`), and a path with `headers` matches only when each named request header equals
//!   its `exact` value (a tag's `Knative-Serving-Tag` on the main host);
//! - a matched path picks one of its `splits` at random, weighted by `percent` (a split at 0 is
//!   never picked), and the path's and the split's `appendHeaders` go on the forwarded request,
//!   replacing the client's fields of the same names;
//! - a split names a Service; a revision's Service (labelled `serving.knative.dev/revision`)
//!   goes through the activator ([`crate::activator`]): its requests wait for a ready pod, and
//!   for one under its `containerConcurrency`, instead of being refused;
//! - `httpOption: Redirected` answers plain HTTP with a redirect to HTTPS.
//!
//! KIngresses whose `networking.knative.dev/ingress.class` annotation is absent or
//! `nodeless.ingress.networking.knative.dev` are served; others are left alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use nodeless_types::knative as kn;
use nodeless_watch::{SlicesByService, port_endpoints};
use serde::Deserialize;

use super::{BodyIdle, H2C, Settings, Table, Target, normalize_host};
use crate::activator::{Activator, Config, Revision, RevisionRoute};
use crate::balance::Upstream;

/// The KIngress kind, as the watch asks for it.
pub fn api_resource() -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: kn::NETWORKING_GROUP.into(),
        version: "v1alpha1".into(),
        api_version: format!("{}/v1alpha1", kn::NETWORKING_GROUP),
        kind: "Ingress".into(),
        plural: "ingresses".into(),
    }
}

/// A KIngress's spec, as Knative defines it (fields this ingress does not use are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// `Enabled` (default) or `Redirected`.
    #[serde(default)]
    pub http_option: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub hosts: Vec<String>,
    /// `ExternalIP` (default) or `ClusterLocal`.
    #[serde(default)]
    pub visibility: Option<String>,
    #[serde(default)]
    pub http: Option<Http>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Http {
    #[serde(default)]
    pub paths: Vec<PathSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathSpec {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderMatch>,
    #[serde(default)]
    pub append_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub splits: Vec<SplitSpec>,
}

#[derive(Debug, Default, Deserialize)]
pub struct HeaderMatch {
    #[serde(default)]
    pub exact: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SplitSpec {
    pub service_name: String,
    #[serde(default)]
    pub service_namespace: Option<String>,
    /// A number or a port name (Knative's IntOrString).
    #[serde(default)]
    pub service_port: Option<serde_json::Value>,
    #[serde(default)]
    pub percent: Option<u32>,
    #[serde(default)]
    pub append_headers: BTreeMap<String, String>,
}

/// One split of a path: where it sends a request, how often, and what it adds to it.
#[derive(Debug, Clone)]
pub struct Split {
    pub target: Target,
    pub percent: u32,
    /// The path's and then the split's `appendHeaders` (the split's win over the path's).
    pub append: Arc<[(String, String)]>,
    /// The revision, when the Service is a revision's: its requests go through the activator.
    pub revision: Option<Arc<Revision>>,
    /// The revision's timeouts (its Service's annotations), and the KIngress's redirect.
    pub settings: Arc<Settings>,
}

/// One path of a rule, ready for matching.
#[derive(Debug, Clone)]
pub struct Path {
    pub prefix: String,
    /// Request fields (lower case) and the values they must equal.
    pub headers: Vec<(String, String)>,
    pub splits: Vec<Split>,
    total: u32,
    /// `kingress namespace/name`, for metrics and the log.
    pub ingress: String,
}

impl Path {
    fn matches<'h>(&self, path: &str, header: &dyn Fn(&str) -> Option<&'h [u8]>) -> bool {
        path.starts_with(&self.prefix)
            && self
                .headers
                .iter()
                .all(|(name, want)| header(name).is_some_and(|v| v == want.as_bytes()))
    }

    /// The split a draw in `0..total` falls on (a split at 0 % takes no draws); `None` when no
    /// split has any weight.
    pub fn split_at(&self, draw: u32) -> Option<&Split> {
        let mut left = draw;
        for s in &self.splits {
            if left < s.percent {
                return Some(s);
            }
            left -= s.percent;
        }
        None
    }

    /// A split picked at random by weight.
    pub fn pick(&self) -> Option<&Split> {
        if self.total == 0 {
            return None;
        }
        self.split_at(draw(self.total))
    }
}

/// A number in `0..n` (n > 0), from a per-thread xorshift64* seeded by std's random hasher keys:
/// enough for spreading traffic, with no dependency and no lock per request.
fn draw(n: u32) -> u32 {
    use std::cell::Cell;
    use std::hash::BuildHasher;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().hash_one(0u64) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        ((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % u64::from(n)) as u32
    })
}

/// What a split's Service port resolves to: the target, the revision (a revision's Service) and
/// its settings.
type Resolved = (Target, Option<Arc<Revision>>, Config);

/// A KIngress served, for its status.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub namespace: String,
    pub name: String,
    pub generation: i64,
}

/// The Knative part of the routing table.
#[derive(Debug, Default)]
pub struct Routes {
    /// `ExternalIP` rules by host.
    external: HashMap<String, Vec<Path>>,
    /// `ClusterLocal` rules by host.
    local: HashMap<String, Vec<Path>>,
    pub served: Vec<Served>,
    pub revisions: Vec<RevisionRoute>,
    /// What did not parse, for the log.
    pub problems: Vec<String>,
}

impl Routes {
    /// The first path of `host`'s rules that matches: the external rules, then (on the internal
    /// listener) the cluster-local ones.
    pub fn find<'h>(
        &self,
        host: &str,
        path: &str,
        internal: bool,
        header: &dyn Fn(&str) -> Option<&'h [u8]>,
    ) -> Option<&Path> {
        if self.external.is_empty() && self.local.is_empty() {
            return None;
        }
        let host = normalize_host(host);
        let local = internal.then(|| self.local.get(&host)).flatten();
        self.external
            .get(&host)
            .into_iter()
            .chain(local)
            .flatten()
            .find(|p| p.matches(path, header))
    }

    /// Every upstream of the splits (each once), so the next table's carry their state.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.external
            .values()
            .chain(self.local.values())
            .flatten()
            .flat_map(|p| p.splits.iter())
            .filter_map(|s| match &s.target {
                Target::Upstream(u) => Some(u),
                Target::Unavailable(_) => None,
            })
    }
}

/// Whether this ingress serves the KIngress: its class annotation is absent or ours.
pub fn ours(k: &DynamicObject) -> bool {
    k.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(kn::INGRESS_CLASS))
        .is_none_or(|c| c == kn::NODELESS_INGRESS_CLASS)
}

/// A revision Service's settings, from its annotations; a value that does not parse keeps the
/// default and is reported.
pub fn revision_config(service: &Service, problems: &mut Vec<String>) -> Config {
    let mut c = Config::default();
    let id = format!(
        "service {}/{}",
        service.metadata.namespace.as_deref().unwrap_or_default(),
        service.metadata.name.as_deref().unwrap_or_default()
    );
    for (k, v) in service.metadata.annotations.iter().flatten() {
        let secs = || v.trim().parse::<u64>().ok().filter(|n| *n > 0).map(Duration::from_secs);
        let ok = match k.as_str() {
            kn::CONTAINER_CONCURRENCY => v.trim().parse::<usize>().map(|n| c.concurrency = n).is_ok(),
            kn::TIMEOUT_SECONDS => secs().map(|d| c.timeout = d).is_some(),
            kn::RESPONSE_START_TIMEOUT_SECONDS => secs().map(|d| c.response_start = Some(d)).is_some(),
            kn::IDLE_TIMEOUT_SECONDS => secs().map(|d| c.idle = Some(d)).is_some(),
            _ => true,
        };
        if !ok {
            problems.push(format!("{id}: annotation {k}: {v:?} is not a valid value"));
        }
    }
    c
}

/// Build the Knative table from the KIngresses, Services and EndpointSlices. Revisions are
/// taken from (or added to) `activator`'s registry, and the balancer's state for endpoints that
/// `prior` also has carries over.
pub fn build(
    kingresses: &[Arc<DynamicObject>],
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    activator: &Activator,
    prior: &Table,
) -> Routes {
    let mut routes = Routes::default();
    let mut mine: Vec<&DynamicObject> = kingresses.iter().map(|k| k.as_ref()).filter(|k| ours(k)).collect();
    // Older first, so that of two KIngresses claiming a host and path the older one is tried first.
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
    let services: HashMap<(&str, &str), &Service> = services
        .iter()
        .map(|s| {
            (
                (
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default(),
                ),
                s.as_ref(),
            )
        })
        .collect();
    let slices = SlicesByService::new(slices);
    let prior_upstreams = prior.upstreams();
    let prior: HashMap<&str, &Arc<Upstream>> = prior_upstreams.iter().map(|u| (u.name.as_str(), u)).collect();
    let mut built: HashMap<(String, String, String), Resolved> = HashMap::new();
    for k in mine {
        let ns = k.metadata.namespace.clone().unwrap_or_default();
        let name = k.metadata.name.clone().unwrap_or_default();
        let id = format!("kingress {ns}/{name}");
        let spec: Spec = match k.data.get("spec").cloned().map(serde_json::from_value).transpose() {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                routes.problems.push(format!("{id}: {e}"));
                continue;
            }
        };
        routes.served.push(Served {
            namespace: ns.clone(),
            name: name.clone(),
            generation: k.metadata.generation.unwrap_or(0),
        });
        let redirect = spec.http_option.as_deref() == Some("Redirected");
        for rule in &spec.rules {
            let local = rule.visibility.as_deref() == Some("ClusterLocal");
            let mut paths = Vec::new();
            for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let mut splits = Vec::new();
                for s in &p.splits {
                    let sns = s
                        .service_namespace
                        .clone()
                        .filter(|n| !n.is_empty())
                        .unwrap_or(ns.clone());
                    let port = match &s.service_port {
                        Some(serde_json::Value::Number(n)) => n.to_string(),
                        Some(serde_json::Value::String(n)) => n.clone(),
                        _ => String::new(),
                    };
                    let key = (sns.clone(), s.service_name.clone(), port.clone());
                    let (target, revision, config) = built
                        .entry(key)
                        .or_insert_with(|| {
                            resolve(
                                &services,
                                &slices,
                                &prior,
                                activator,
                                &sns,
                                &s.service_name,
                                &port,
                                &mut routes.problems,
                                &mut routes.revisions,
                            )
                        })
                        .clone();
                    let mut append: Vec<(String, String)> =
                        p.append_headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    for (k, v) in &s.append_headers {
                        append.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
                        append.push((k.clone(), v.clone()));
                    }
                    let settings = Settings {
                        // Knative's timeouts: `responseStartTimeoutSeconds` (else
                        // `timeoutSeconds`) bounds the wait for the response to start; after
                        // its first byte only `idleTimeoutSeconds` (0 or unset: none) bounds
                        // each wait between reads.
                        read_timeout: config.response_start.unwrap_or(config.timeout),
                        body_idle: config.idle.map_or(BodyIdle::Unbounded, BodyIdle::Limit),
                        forwarded: true,
                        ssl_redirect: redirect,
                        ..Settings::default()
                    };
                    splits.push(Split {
                        target,
                        percent: s.percent.unwrap_or(if p.splits.len() == 1 { 100 } else { 0 }),
                        append: append.into(),
                        revision,
                        settings: Arc::new(settings),
                    });
                }
                let headers = p
                    .headers
                    .iter()
                    .map(|(k, m)| (k.to_ascii_lowercase(), m.exact.clone().unwrap_or_default()))
                    .collect();
                paths.push(Path {
                    prefix: p.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into()),
                    headers,
                    total: splits.iter().map(|s| s.percent).sum(),
                    splits,
                    ingress: id.clone(),
                });
            }
            let table = if local { &mut routes.local } else { &mut routes.external };
            for h in &rule.hosts {
                table
                    .entry(normalize_host(h))
                    .or_default()
                    .extend(paths.iter().cloned());
            }
        }
    }
    routes
}

/// The target of one split's Service port, its revision (for a revision's Service) and the
/// revision's settings. A revision's Service with no ready endpoints is still a target: its
/// requests wait in the activator.
#[allow(clippy::too_many_arguments)]
fn resolve(
    services: &HashMap<(&str, &str), &Service>,
    slices: &SlicesByService<'_>,
    prior: &HashMap<&str, &Arc<Upstream>>,
    activator: &Activator,
    namespace: &str,
    name: &str,
    port: &str,
    problems: &mut Vec<String>,
    revisions: &mut Vec<RevisionRoute>,
) -> Resolved {
    let unavailable = |why: String| (Target::Unavailable(why), None, Config::default());
    let Some(service) = services.get(&(namespace, name)) else {
        return unavailable(format!("service {namespace}/{name} does not exist"));
    };
    let ports = service.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
    let found = ports.iter().find(|p| match port.parse::<i32>() {
        Ok(n) => p.port == n,
        Err(_) if port.is_empty() => ports.len() == 1,
        Err(_) => p.name.as_deref() == Some(port),
    });
    let Some(sp) = found else {
        return unavailable(format!("service {namespace}/{name} has no port {port}"));
    };
    let label = format!("{namespace}/{name}:{}", sp.port);
    let endpoints = port_endpoints(slices.get(namespace, name), sp).ready;
    let revision_name = service.metadata.labels.as_ref().and_then(|l| l.get(kn::REVISION));
    let Some(revision_name) = revision_name else {
        if endpoints.is_empty() {
            return unavailable(format!("service {label} has no ready endpoints"));
        }
        let mut u = Upstream::new(label, endpoints, sp.app_protocol.as_deref() == Some(H2C));
        if let Some(p) = prior.get(u.name.as_str()) {
            u.inherit(p);
        }
        return (Target::Upstream(Arc::new(u)), None, Config::default());
    };
    let config = revision_config(service, problems);
    let mut u = Upstream::new(label, endpoints, sp.app_protocol.as_deref() == Some(H2C));
    if let Some(p) = prior.get(u.name.as_str()) {
        u.inherit(p);
    }
    let u = Arc::new(u);
    let revision = activator.revision(namespace, revision_name);
    if !revisions.iter().any(|r| Arc::ptr_eq(&r.revision, &revision)) {
        revisions.push(RevisionRoute {
            revision: revision.clone(),
            upstream: Some(u.clone()),
            config: config.clone(),
        });
    }
    (Target::Upstream(u), Some(revision), config)
}

#[cfg(test)]
mod tests;
