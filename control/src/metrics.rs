//! control's Prometheus metrics, served at `/metrics` to any authenticated client (as
//! kube-apiserver serves its own to those allowed the non-resource URL). Names and labels are
//! kube-apiserver's where it has the metric: `apiserver_request_total` and
//! `apiserver_request_duration_seconds` by verb, group, version, resource and subresource (WATCH
//! requests are counted, not timed: they last as long as the client stays), and
//! `apiserver_registered_watchers` by group, version and kind. The store's group commit is
//! `nodeless_store_commit_duration_seconds` (kube-apiserver's etcd metrics have no equivalent
//! for an embedded store). The Knative autoscaler's are Knative's: `autoscaler_desired_pods`,
//! `autoscaler_actual_pods`, `autoscaler_panic_mode` and the stable and panic concurrency or rps,
//! per revision.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The labels of `apiserver_request_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub code: String,
}

/// The labels of `apiserver_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatcherLabels {
    pub group: String,
    pub version: String,
    pub kind: String,
}

/// Knative's labels for a revision's autoscaler metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub namespace_name: String,
    pub configuration_name: String,
    pub revision_name: String,
}

/// A fresh request-duration histogram: 5 ms to about 41 s (kube-apiserver's range).
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    pub watchers: Family<WatcherLabels, Gauge>,
    pub desired_pods: Family<RevisionLabels, Gauge>,
    pub actual_pods: Family<RevisionLabels, Gauge>,
    pub panic_mode: Family<RevisionLabels, Gauge>,
    pub stable_metric: Family<RevisionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub panic_metric: Family<RevisionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Metrics {
    /// With the store's commit histogram (kept by its writer thread).
    pub fn new(store_commits: Histogram) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_histogram),
            watchers: Family::default(),
            desired_pods: Family::default(),
            actual_pods: Family::default(),
            panic_mode: Family::default(),
            stable_metric: Family::default(),
            panic_metric: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "apiserver_request",
            "Requests answered, by verb, group, version, resource, subresource and HTTP code",
            m.requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Time to answer a request (to the response's head for streams; WATCH not timed)",
            m.request_duration.clone(),
        );
        registry.register(
            "apiserver_registered_watchers",
            "Watches open now, by group, version and kind",
            m.watchers.clone(),
        );
        registry.register(
            "nodeless_store_commit_duration_seconds",
            "Time of one group commit of the store (every write waiting in it shares it)",
            store_commits,
        );
        registry.register(
            "autoscaler_desired_pods",
            "Pods the Knative autoscaler wants for the revision",
            m.desired_pods.clone(),
        );
        registry.register(
            "autoscaler_actual_pods",
            "Ready pods of the revision",
            m.actual_pods.clone(),
        );
        registry.register(
            "autoscaler_panic_mode",
            "1 while the revision's autoscaler is in panic mode",
            m.panic_mode.clone(),
        );
        registry.register(
            "autoscaler_stable_metric",
            "The revision's concurrency (or requests/s) averaged over the stable window",
            m.stable_metric.clone(),
        );
        registry.register(
            "autoscaler_panic_metric",
            "The revision's concurrency (or requests/s) averaged over the panic window",
            m.panic_metric.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Count a watch as open until the returned guard is dropped.
    pub fn watching(&self, group: &str, version: &str, kind: &str) -> Watching {
        let gauge = self
            .watchers
            .get_or_create(&WatcherLabels {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
            })
            .clone();
        gauge.inc();
        Watching(gauge)
    }

    /// Forget a revision's autoscaler metrics (its PodAutoscaler is gone).
    pub fn forget_revision(&self, labels: &RevisionLabels) {
        self.desired_pods.remove(labels);
        self.actual_pods.remove(labels);
        self.panic_mode.remove(labels);
        self.stable_metric.remove(labels);
        self.panic_metric.remove(labels);
    }
}

/// An open watch, counted in `apiserver_registered_watchers` while it lives.
pub struct Watching(Gauge);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// kube-apiserver's verb for a request: GET, LIST, WATCH, POST, PUT, PATCH, DELETE or
/// DELETECOLLECTION.
pub fn verb(method: &http::Method, named: bool, watch: bool) -> &'static str {
    match *method {
        _ if watch => "WATCH",
        http::Method::GET | http::Method::HEAD if named => "GET",
        http::Method::GET | http::Method::HEAD => "LIST",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE if named => "DELETE",
        http::Method::DELETE => "DELETECOLLECTION",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_kube_apiservers() {
        use http::Method;
        assert_eq!(verb(&Method::GET, true, false), "GET");
        assert_eq!(verb(&Method::GET, false, false), "LIST");
        assert_eq!(verb(&Method::GET, false, true), "WATCH");
        assert_eq!(verb(&Method::DELETE, false, false), "DELETECOLLECTION");
        assert_eq!(verb(&Method::DELETE, true, false), "DELETE");
    }

    #[test]
    fn a_watch_is_counted_while_it_lives_and_a_gone_revision_is_forgotten() {
        let m = Metrics::new(Histogram::new(exponential_buckets(0.001, 2.0, 4)));
        let w = m.watching("apps", "v1", "Deployment");
        let open = r#"apiserver_registered_watchers{group="apps",version="v1",kind="Deployment"} 1"#;
        assert!(m.encode().contains(open), "{}", m.encode());
        drop(w);
        assert!(m.encode().contains(&open.replace(" 1", " 0")));
        let rev = RevisionLabels {
            namespace_name: "default".into(),
            configuration_name: "hello".into(),
            revision_name: "hello-00001".into(),
        };
        m.desired_pods.get_or_create(&rev).set(3);
        let line = r#"autoscaler_desired_pods{namespace_name="default",configuration_name="hello",revision_name="hello-00001"} 3"#;
        assert!(m.encode().contains(line), "{}", m.encode());
        m.forget_revision(&rev);
        assert!(!m.encode().contains("hello-00001"));
        m.requests
            .get_or_create(&RequestLabels {
                verb: "LIST".into(),
                group: String::new(),
                version: "v1".into(),
                resource: "pods".into(),
                subresource: String::new(),
                code: "200".into(),
            })
            .inc();
        assert!(
            m.encode().contains(
                r#"apiserver_request_total{verb="LIST",group="",version="v1",resource="pods",subresource="",code="200"} 1"#
            ),
            "{}",
            m.encode()
        );
    }
}
