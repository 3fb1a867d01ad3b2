//! Prometheus metrics, under CoreDNS's names so its dashboards and alerts read them:
//! `coredns_dns_requests_total{proto,type}`, `coredns_dns_responses_total{rcode}`,
//! `coredns_dns_request_duration_seconds{type}`, `coredns_cache_hits_total{type}` (an answer
//! sent again from a receive loop's kept answers or the forwarding cache; `success` or
//! `denial`), `coredns_cache_misses_total`, `coredns_forward_requests_total{to}`,
//! `coredns_forward_responses_total{to,rcode}` and
//! `coredns_forward_request_duration_seconds{to}`; and the guard's own
//! `nodeless_dns_guarded_total{action}` (`truncated`, `dropped`, `refused`).
//!
//! One set per process ([`metrics`]), served by [`serve`]. The counters a query touches are
//! made once, up front, per query type and response code, so counting one is an atomic add
//! (the UDP loop answers hundreds of thousands a second).

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::RecordType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// The query types counted by name; the rest are `other`, as CoreDNS does.
const TYPES: [&str; 11] = [
    "A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "ANY", "other",
];
/// Response codes by their value (0-5), then `other`.
const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarded {
    Truncated,
    Dropped,
    Refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    proto: &'static str,
    #[prometheus(flatten)]
    t: TypeLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RcodeLabels {
    rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToLabels {
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToRcodeLabels {
    to: String,
    rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

pub struct DnsMetrics {
    registry: Registry,
    requests: [[Counter; TYPES.len()]; 2],
    responses: [Counter; RCODES.len()],
    duration: [Durations; TYPES.len()],
    /// Success, denial.
    cache_hits: [Counter; 2],
    cache_misses: Counter,
    forward_requests: Family<ToLabels, Counter>,
    forward_responses: Family<ToRcodeLabels, Counter>,
    forward_duration: Family<ToLabels, Histogram>,
    guarded: [Counter; 3],
}

fn type_index(t: RecordType) -> usize {
    match t {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::CNAME => 2,
        RecordType::MX => 3,
        RecordType::NS => 4,
        RecordType::PTR => 5,
        RecordType::SOA => 6,
        RecordType::SRV => 7,
        RecordType::TXT => 8,
        RecordType::ANY => 9,
        _ => 10,
    }
}

fn rcode_index(code: u16) -> usize {
    usize::from(code).min(RCODES.len() - 1)
}

/// Durations from 25 µs to about 6.5 s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, BUCKETS))
}

/// Buckets of [`Durations`] and of the forward histogram: 25 µs doubling.
const BUCKETS: u16 = 19;
const FIRST_BUCKET_NS: u64 = 25_000;

/// A histogram of request durations, lock-free: prometheus-client's takes a write lock per
/// observation, which two receive loops answering 100k queries a second each contend on.
/// Counts per bucket, the count and the sum (in nanoseconds) are atomics; the encoder adds
/// the buckets up.
#[derive(Clone, Debug, Default)]
struct Durations(std::sync::Arc<DurationCells>);

#[derive(Debug, Default)]
struct DurationCells {
    /// Per bucket, not cumulative; the last is +Inf.
    buckets: [std::sync::atomic::AtomicU64; BUCKETS as usize + 1],
    count: std::sync::atomic::AtomicU64,
    sum_ns: std::sync::atomic::AtomicU64,
}

/// The bucket of a duration in nanoseconds: bucket i holds durations up to 25 µs × 2^i.
fn bucket_of(ns: u64) -> usize {
    let over = ns.saturating_sub(1) / FIRST_BUCKET_NS;
    (u64::BITS - over.leading_zeros()).min(u32::from(BUCKETS)) as usize
}

impl Durations {
    fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.add(bucket_of(ns), 1, ns);
    }

    /// `n` observations in bucket `i`, `ns` nanoseconds in all.
    fn add(&self, i: usize, n: u64, ns: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.0;
        c.buckets[i].fetch_add(n, Relaxed);
        c.count.fetch_add(n, Relaxed);
        c.sum_ns.fetch_add(ns, Relaxed);
    }
}

/// One UDP receive loop's counts of the answers it sent from kept bytes, added to the shared
/// counters once per batch of packets: the loops do not fight over the counters' cache lines
/// for every answer.
#[derive(Default)]
pub struct Tally {
    /// Per query type: answers, and per bucket of duration (with the nanoseconds).
    answers: [u64; TYPES.len()],
    buckets: [[u64; BUCKETS as usize + 1]; TYPES.len()],
    ns: [u64; TYPES.len()],
    rcodes: [u64; RCODES.len()],
    /// Success, denial.
    hits: [u64; 2],
    any: bool,
}

impl Tally {
    /// An answer sent again from kept bytes (a cache hit).
    pub fn kept(&mut self, qtype: RecordType, rcode: u16, denial: bool, took: Duration) {
        let t = type_index(qtype);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.answers[t] += 1;
        self.buckets[t][bucket_of(ns)] += 1;
        self.ns[t] += ns;
        self.rcodes[rcode_index(rcode)] += 1;
        self.hits[usize::from(denial)] += 1;
        self.any = true;
    }

    /// Add what was counted to `m` (the process's [`metrics`]), and start again.
    pub fn flush(&mut self, m: &DnsMetrics) {
        if !self.any {
            return;
        }
        for t in 0..TYPES.len() {
            if self.answers[t] == 0 {
                continue;
            }
            m.requests[0][t].inc_by(self.answers[t]);
            for (b, n) in self.buckets[t].iter().enumerate().filter(|(_, n)| **n > 0) {
                m.duration[t].add(b, *n, 0);
            }
            m.duration[t]
                .0
                .sum_ns
                .fetch_add(self.ns[t], std::sync::atomic::Ordering::Relaxed);
        }
        for (r, n) in self.rcodes.iter().enumerate().filter(|(_, n)| **n > 0) {
            m.responses[r].inc_by(*n);
        }
        for (h, n) in self.hits.iter().enumerate().filter(|(_, n)| **n > 0) {
            m.cache_hits[h].inc_by(*n);
        }
        *self = Self::default();
    }
}

impl TypedMetric for Durations {
    const TYPE: MetricType = MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for Durations {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.0;
        let buckets: Vec<(f64, u64)> = (0..=BUCKETS)
            .map(|i| {
                let upper = if i == BUCKETS {
                    f64::MAX
                } else {
                    (FIRST_BUCKET_NS << i) as f64 / 1e9
                };
                (upper, c.buckets[usize::from(i)].load(Relaxed))
            })
            .collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            c.sum_ns.load(Relaxed) as f64 / 1e9,
            c.count.load(Relaxed),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl DnsMetrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let requests_family = Family::<RequestLabels, Counter>::default();
        let requests = [Proto::Udp, Proto::Tcp].map(|p| {
            let proto = if p == Proto::Udp { "udp" } else { "tcp" };
            TYPES.map(|t| {
                requests_family
                    .get_or_create(&RequestLabels {
                        proto,
                        t: TypeLabels { r#type: t },
                    })
                    .clone()
            })
        });
        let responses_family = Family::<RcodeLabels, Counter>::default();
        let responses = RCODES.map(|rcode| responses_family.get_or_create(&RcodeLabels { rcode }).clone());
        let duration_family = Family::<TypeLabels, Durations>::default();
        let duration = TYPES.map(|t| duration_family.get_or_create(&TypeLabels { r#type: t }).clone());
        let hits_family = Family::<TypeLabels, Counter>::default();
        let cache_hits = ["success", "denial"].map(|t| hits_family.get_or_create(&TypeLabels { r#type: t }).clone());
        let cache_misses = Counter::default();
        let forward_requests = Family::<ToLabels, Counter>::default();
        let forward_responses = Family::<ToRcodeLabels, Counter>::default();
        let forward_duration =
            Family::<ToLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
        let guarded_family = Family::<ActionLabels, Counter>::default();
        let guarded = ["truncated", "dropped", "refused"]
            .map(|action| guarded_family.get_or_create(&ActionLabels { action }).clone());
        registry.register(
            "coredns_dns_requests",
            "DNS requests by transport and query type",
            requests_family,
        );
        registry.register(
            "coredns_dns_responses",
            "DNS responses by response code",
            responses_family,
        );
        registry.register(
            "coredns_dns_request_duration_seconds",
            "Time to answer a request, by query type",
            duration_family,
        );
        registry.register(
            "coredns_cache_hits",
            "Answers sent again from kept answers or the forwarding cache",
            hits_family,
        );
        registry.register(
            "coredns_cache_misses",
            "Questions the forwarding cache could not answer",
            cache_misses.clone(),
        );
        registry.register(
            "coredns_forward_requests",
            "Queries sent to each upstream",
            forward_requests.clone(),
        );
        registry.register(
            "coredns_forward_responses",
            "Answers from each upstream by response code",
            forward_responses.clone(),
        );
        registry.register(
            "coredns_forward_request_duration_seconds",
            "Round trip to each upstream",
            forward_duration.clone(),
        );
        registry.register(
            "nodeless_dns_guarded",
            "UDP askers over their rate (truncated or dropped) or outside the allowed networks (refused)",
            guarded_family,
        );
        Self {
            registry,
            requests,
            responses,
            duration,
            cache_hits,
            cache_misses,
            forward_requests,
            forward_responses,
            forward_duration,
            guarded,
        }
    }

    /// A request answered: its transport, type, response code and time.
    pub fn answered(&self, proto: Proto, qtype: RecordType, rcode: u16, took: Duration) {
        let t = type_index(qtype);
        self.requests[usize::from(proto == Proto::Tcp)][t].inc();
        self.responses[rcode_index(rcode)].inc();
        self.duration[t].observe(took);
    }

    /// A request that could not be read as one (FORMERR): counted under `other`.
    pub fn malformed(&self, proto: Proto) {
        self.requests[usize::from(proto == Proto::Tcp)][TYPES.len() - 1].inc();
        self.responses[rcode_index(ResponseCode::FormErr.into())].inc();
    }

    /// An answer sent again without being worked out: `denial` for NXDOMAIN or an empty answer.
    pub fn cache_hit(&self, denial: bool) {
        self.cache_hits[usize::from(denial)].inc();
    }

    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub fn guarded(&self, g: Guarded) {
        self.guarded[g as usize].inc();
    }

    /// One query to an upstream: its response code (None: no answer) and round trip.
    pub fn forwarded(&self, to: SocketAddr, rcode: Option<ResponseCode>, took: Duration) {
        let to = to.to_string();
        self.forward_requests.get_or_create(&ToLabels { to: to.clone() }).inc();
        if let Some(code) = rcode {
            let rcode = RCODES[rcode_index(code.into())];
            self.forward_responses
                .get_or_create(&ToRcodeLabels { to: to.clone(), rcode })
                .inc();
        }
        self.forward_duration
            .get_or_create(&ToLabels { to })
            .observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

static METRICS: LazyLock<DnsMetrics> = LazyLock::new(DnsMetrics::new);

/// The process's DNS metrics.
pub fn metrics() -> &'static DnsMetrics {
    &METRICS
}

/// Serve `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let (code, body) = if req.uri().path() == "/metrics" {
                    (200, metrics().encode())
                } else {
                    (404, "not found: metrics are at /metrics\n".to_string())
                };
                hyper::Response::builder()
                    .status(code)
                    .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    .body(Full::new(Bytes::from(body)))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_doubling_buckets_from_25_microseconds() {
        let d = Durations::default();
        for us in [1, 25, 26, 50, 51, 100_000_000] {
            d.observe(Duration::from_micros(us));
        }
        let counts: Vec<u64> =
            d.0.buckets
                .iter()
                .map(|b| b.load(std::sync::atomic::Ordering::Relaxed))
                .collect();
        assert_eq!(&counts[..3], &[2, 2, 1], "<=25 us, <=50 us, <=100 us");
        assert_eq!(counts[BUCKETS as usize], 1, "100 s is past the last bucket");
        assert_eq!(d.0.count.load(std::sync::atomic::Ordering::Relaxed), 6);
    }

    #[test]
    fn a_loops_tally_adds_up_once_flushed() {
        let m = DnsMetrics::new();
        let line = "coredns_cache_hits_total{type=\"denial\"} ";
        let value = |m: &DnsMetrics| {
            m.encode()
                .lines()
                .find_map(|l| l.strip_prefix(line))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut tally = Tally::default();
        for _ in 0..3 {
            tally.kept(RecordType::AAAA, 3, true, Duration::from_micros(5));
        }
        assert_eq!(value(&m), 0, "nothing shows before the flush");
        tally.flush(&m);
        assert_eq!(value(&m), 3);
        tally.flush(&m);
        assert_eq!(value(&m), 3, "a flush adds once");
        assert!(
            m.encode()
                .contains("coredns_dns_requests_total{proto=\"udp\",type=\"AAAA\"} 3")
        );
    }

    #[test]
    fn counts_show_under_coredns_names() {
        let m = DnsMetrics::new();
        m.answered(Proto::Udp, RecordType::A, 0, Duration::from_micros(40));
        m.answered(Proto::Tcp, RecordType::SRV, 3, Duration::from_millis(2));
        m.answered(Proto::Udp, RecordType::CAA, 0, Duration::from_micros(40));
        m.cache_hit(true);
        m.cache_miss();
        m.guarded(Guarded::Refused);
        m.forwarded(
            "192.0.2.1:53".parse().unwrap(),
            Some(ResponseCode::NXDomain),
            Duration::from_millis(5),
        );
        let text = m.encode();
        for line in [
            "coredns_dns_requests_total{proto=\"udp\",type=\"A\"} 1",
            "coredns_dns_requests_total{proto=\"tcp\",type=\"SRV\"} 1",
            "coredns_dns_requests_total{proto=\"udp\",type=\"other\"} 1",
            "coredns_dns_responses_total{rcode=\"NOERROR\"} 2",
            "coredns_dns_responses_total{rcode=\"NXDOMAIN\"} 1",
            "coredns_cache_hits_total{type=\"denial\"} 1",
            "coredns_cache_misses_total 1",
            "nodeless_dns_guarded_total{action=\"refused\"} 1",
            "coredns_forward_requests_total{to=\"192.0.2.1:53\"} 1",
            "coredns_forward_responses_total{to=\"192.0.2.1:53\",rcode=\"NXDOMAIN\"} 1",
            "coredns_dns_request_duration_seconds_count{type=\"SRV\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
