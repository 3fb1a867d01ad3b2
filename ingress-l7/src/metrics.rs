//! What the ingress counts, for Prometheus (`/metrics` on `--metrics`): requests by Ingress,
//! Service and status, request latency by Ingress and Service, and upstream errors by kind; and
//! the access log, one structured line a request, at most `--access-log-rate` lines a second
//! (the lines left out are counted and reported once a second). Per Knative revision: requests
//! by status class, latency, the queue of requests waiting for a pod, and the cold-start wait
//! (how long a request waited because its revision had no ready pod).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Request {
    pub ingress: String,
    pub service: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub ingress: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamError {
    pub ingress: String,
    pub service: String,
    pub kind: String,
}

/// A Knative revision, `namespace/name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionRequest {
    pub revision: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub class: String,
}

fn cold_start_histogram() -> Histogram {
    // 10 ms to ~5 min: a pod's start, up to the default timeoutSeconds.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<Request, Counter>,
    pub latency: Family<Route, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<UpstreamError, Counter>,
    pub revision_requests: Family<RevisionRequest, Counter>,
    pub revision_latency: Family<RevisionLabels, Histogram, fn() -> Histogram>,
    pub revision_queue: Family<RevisionLabels, Gauge>,
    pub revision_cold_start: Family<RevisionLabels, Histogram, fn() -> Histogram>,
    log: AccessLog,
}

impl Metrics {
    pub fn new(access_log_per_second: u64) -> Metrics {
        let mut registry = Registry::with_prefix("nodeless_ingress");
        let requests = Family::<Request, Counter>::default();
        let latency = Family::<Route, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let upstream_errors = Family::<UpstreamError, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by Ingress, Service and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from the request's header to the end of the response",
            latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failures talking to endpoints, by kind",
            upstream_errors.clone(),
        );
        let revision_requests = Family::<RevisionRequest, Counter>::default();
        let revision_latency =
            Family::<RevisionLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let revision_queue = Family::<RevisionLabels, Gauge>::default();
        let revision_cold_start =
            Family::<RevisionLabels, Histogram, fn() -> Histogram>::new_with_constructor(cold_start_histogram);
        registry.register(
            "revision_requests",
            "Requests for Knative revisions answered, by revision and status class",
            revision_requests.clone(),
        );
        registry.register(
            "revision_request_duration_seconds",
            "Time from a revision's request's header to the end of its response, waiting included",
            revision_latency.clone(),
        );
        registry.register(
            "revision_queue_depth",
            "Requests waiting for a pod of the revision (none ready, or all at their concurrency)",
            revision_queue.clone(),
        );
        registry.register(
            "revision_cold_start_seconds",
            "How long a request waited because its revision had no ready pod",
            revision_cold_start.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            upstream_errors,
            revision_requests,
            revision_latency,
            revision_queue,
            revision_cold_start,
            log: AccessLog {
                per_second: access_log_per_second,
                ..Default::default()
            },
        }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Whether this request's access-log line may be written (the rate limit).
    pub fn may_log(&self) -> bool {
        self.log.admit()
    }

    /// Count a finished request.
    pub fn count(
        &self,
        ingress: &str,
        service: &str,
        code: u16,
        took: std::time::Duration,
        upstream_error: Option<&str>,
    ) {
        let route = Route {
            ingress: ingress.to_string(),
            service: service.to_string(),
        };
        self.requests
            .get_or_create(&Request {
                ingress: route.ingress.clone(),
                service: route.service.clone(),
                code,
            })
            .inc();
        self.latency.get_or_create(&route).observe(took.as_secs_f64());
        if let Some(kind) = upstream_error {
            self.upstream_errors
                .get_or_create(&UpstreamError {
                    ingress: route.ingress.clone(),
                    service: route.service.clone(),
                    kind: kind.to_string(),
                })
                .inc();
        }
    }

    /// Count a finished request for a Knative revision (`namespace/name`), beside [`Metrics::count`].
    pub fn count_revision(&self, revision: &str, code: u16, took: std::time::Duration) {
        let class = match code {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.revision_requests
            .get_or_create(&RevisionRequest {
                revision: revision.to_string(),
                class: class.to_string(),
            })
            .inc();
        self.revision_latency
            .get_or_create(&RevisionLabels {
                revision: revision.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Write a finished request's access-log line; call when [`Metrics::may_log`] allows.
    pub fn log(&self, r: &Finished<'_>) {
        tracing::info!(target: "access", client = %r.client, protocol = r.protocol, method = %r.method, host = %r.host, path = %r.path, code = r.code, ingress = %r.ingress, service = %r.service, upstream = %r.upstream, ms = r.took.as_secs_f64() * 1000.0, id = %r.id, error = %r.error);
    }
}

/// One finished request, as counted and logged.
pub struct Finished<'a> {
    pub client: &'a str,
    /// `HTTP/1.1`, `HTTP/2` or `HTTP/3`.
    pub protocol: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub code: u16,
    /// `namespace/name`, or `-`.
    pub ingress: &'a str,
    /// `namespace/service:port`, or `-`.
    pub service: &'a str,
    /// The endpoint last tried, or `-`.
    pub upstream: &'a str,
    pub took: std::time::Duration,
    pub id: &'a str,
    /// Why the request failed, if it did (empty otherwise).
    pub error: &'a str,
}

#[derive(Default)]
struct AccessLog {
    per_second: u64,
    second: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
}

impl AccessLog {
    fn admit(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.written.store(0, Ordering::Relaxed);
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                tracing::info!(target: "access", dropped, "access log lines left out (rate limit)");
            }
        }
        if self.written.fetch_add(1, Ordering::Relaxed) < self.per_second {
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_and_the_log_is_rate_limited() {
        let m = Metrics::new(3);
        m.requests
            .get_or_create(&Request {
                ingress: "default/a".into(),
                service: "default/s:80".into(),
                code: 200,
            })
            .inc();
        m.latency
            .get_or_create(&Route {
                ingress: "default/a".into(),
                service: "default/s:80".into(),
            })
            .observe(0.002);
        m.upstream_errors
            .get_or_create(&UpstreamError {
                ingress: "default/a".into(),
                service: "default/s:80".into(),
                kind: "connect".into(),
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(
                r#"nodeless_ingress_requests_total{ingress="default/a",service="default/s:80",code="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("nodeless_ingress_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"nodeless_ingress_upstream_errors_total{ingress="default/a",service="default/s:80",kind="connect"} 1"#
            ),
            "{text}"
        );
        let admitted = (0..10).filter(|_| m.may_log()).count();
        // Within one second three lines pass (a second boundary in between lets up to six).
        assert!((3..=6).contains(&admitted), "{admitted}");
    }
}
