//! Names outside the cluster go to upstream resolvers through a cache: positive and negative
//! answers kept for their TTL (RFC 2308 for negative ones), bounded in entries, identical
//! queries in flight coalesced into one upstream query, and stale answers served (RFC 8767)
//! while every upstream fails.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::net::xfer::{DnsExchange, DnsHandle, FirstAnswer};
use hickory_server::proto::op::{DnsRequest, DnsRequestOptions, Edns, Message, Query, ResponseCode};
use hickory_server::proto::rr::{DNSClass, LowerName, RData, Record, RecordType};

#[derive(Clone, Debug)]
pub struct ForwardConfig {
    pub upstreams: Vec<SocketAddr>,
    /// Per upstream and attempt.
    pub timeout: Duration,
    /// Rounds over all upstreams before giving up.
    pub attempts: usize,
    pub max_entries: u64,
    /// Longest time an answer is kept fresh, whatever its TTL.
    pub max_ttl: Duration,
    /// Longest time a negative answer is kept.
    pub max_negative_ttl: Duration,
    /// How long past its TTL an answer may still be served while upstreams fail.
    pub stale_for: Duration,
}

impl ForwardConfig {
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        ForwardConfig {
            upstreams,
            timeout: Duration::from_millis(1500),
            attempts: 2,
            max_entries: 100_000,
            max_ttl: Duration::from_secs(3600),
            max_negative_ttl: Duration::from_secs(300),
            stale_for: Duration::from_secs(3600),
        }
    }
}

/// The nameservers of a resolv.conf (port 53).
pub fn resolv_conf_upstreams(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| v.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

type Key = (LowerName, RecordType, DNSClass);

/// One upstream query in flight, awaited by everyone who asked the same question meanwhile.
type Fetch = Shared<BoxFuture<'static, Result<Arc<Cached>, String>>>;

/// An upstream's answer as kept in the cache.
#[derive(Debug)]
pub struct Cached {
    pub response_code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    stored: Instant,
    ttl: Duration,
}

/// What the forwarder hands the server: records with TTLs already lowered by their age.
#[derive(Debug)]
pub struct Forwarded {
    pub response_code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// How much longer this answer stays fresh; None for a stale one.
    pub fresh_for: Option<Duration>,
}

impl Cached {
    fn fresh(&self) -> bool {
        self.stored.elapsed() < self.ttl
    }

    fn view(&self, stale: bool) -> Forwarded {
        let elapsed = self.stored.elapsed();
        let age = elapsed.as_secs().min(u64::from(u32::MAX)) as u32;
        let adjust = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    // RFC 8767: stale answers go out with a short TTL.
                    r.ttl = if stale { 30 } else { r.ttl.saturating_sub(age) };
                    r
                })
                .collect()
        };
        Forwarded {
            response_code: self.response_code,
            answers: adjust(&self.answers),
            authorities: adjust(&self.authorities),
            additionals: adjust(&self.additionals),
            fresh_for: (!stale).then(|| self.ttl.saturating_sub(elapsed)),
        }
    }
}

#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ForwardConfig,
    udp: Vec<(SocketAddr, DnsExchange<TokioRuntimeProvider>)>,
    cache: moka::future::Cache<Key, Arc<Cached>>,
    inflight: Mutex<HashMap<Key, Fetch>>,
    stats: Stats,
}

#[derive(Default)]
pub struct Stats {
    pub upstream_queries: std::sync::atomic::AtomicU64,
    pub stale_served: std::sync::atomic::AtomicU64,
}

impl Forwarder {
    /// Must be called inside the Tokio runtime (the UDP exchanges run background tasks).
    pub fn new(cfg: ForwardConfig) -> Forwarder {
        let udp = cfg
            .upstreams
            .iter()
            .map(|a| {
                (
                    *a,
                    UdpClientStream::builder(*a, TokioRuntimeProvider::new())
                        .with_timeout(Some(cfg.timeout))
                        .with_max_retries(0)
                        .exchange(),
                )
            })
            .collect();
        let cache = moka::future::Cache::builder()
            .max_capacity(cfg.max_entries)
            .time_to_live(cfg.max_ttl + cfg.stale_for)
            .build();
        Forwarder {
            inner: Arc::new(Inner {
                cfg,
                udp,
                cache,
                inflight: Mutex::new(HashMap::new()),
                stats: Stats::default(),
            }),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn has_upstreams(&self) -> bool {
        !self.inner.udp.is_empty()
    }

    /// The answer for a question: from the cache while fresh, else from an upstream (one query
    /// for all who ask at once), else the stale cached answer, else an error.
    pub async fn resolve(&self, name: &LowerName, qtype: RecordType, class: DNSClass) -> Result<Forwarded, String> {
        let key = (name.clone(), qtype, class);
        let cached = self.inner.cache.get(&key).await;
        if let Some(c) = cached.as_ref().filter(|c| c.fresh()) {
            crate::metrics::metrics().cache_hit(c.response_code == ResponseCode::NXDomain || c.answers.is_empty());
            return Ok(c.view(false));
        }
        crate::metrics::metrics().cache_miss();
        match self.fetch_coalesced(key.clone()).await {
            Ok(c) => Ok(c.view(false)),
            Err(e) => match cached {
                Some(c) if c.stored.elapsed() < c.ttl + self.inner.cfg.stale_for => {
                    self.inner
                        .stats
                        .stale_served
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(c.view(true))
                }
                _ => Err(e),
            },
        }
    }

    async fn fetch_coalesced(&self, key: Key) -> Result<Arc<Cached>, String> {
        let fut = {
            let mut inflight = self.inner.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight
                .entry(key.clone())
                .or_insert_with(|| {
                    let this = self.clone();
                    let key = key.clone();
                    async move {
                        let result = this.fetch(&key).await;
                        if let Ok(c) = &result {
                            this.inner.cache.insert(key.clone(), c.clone()).await;
                        }
                        this.inner
                            .inflight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key);
                        result
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        fut.await
    }

    async fn fetch(&self, key: &Key) -> Result<Arc<Cached>, String> {
        if self.inner.udp.is_empty() {
            return Err("no upstream resolvers".into());
        }
        let mut last = String::new();
        for _ in 0..self.inner.cfg.attempts.max(1) {
            for (addr, udp) in &self.inner.udp {
                self.inner
                    .stats
                    .upstream_queries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let start = Instant::now();
                let answer = self.exchange(*addr, udp, key).await;
                crate::metrics::metrics().forwarded(
                    *addr,
                    answer.as_ref().ok().map(|m| m.metadata.response_code),
                    start.elapsed(),
                );
                match answer {
                    // A failing upstream is not an answer: try the next one.
                    Ok(m) if matches!(m.metadata.response_code, ResponseCode::ServFail | ResponseCode::Refused) => {
                        last = format!("{addr}: {}", m.metadata.response_code);
                    }
                    Ok(m) => return Ok(Arc::new(self.to_cached(m))),
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
        }
        Err(last)
    }

    async fn exchange(
        &self,
        addr: SocketAddr,
        udp: &DnsExchange<TokioRuntimeProvider>,
        key: &Key,
    ) -> Result<Message, String> {
        let mut query = Query::query(key.0.clone().into(), key.1);
        query.query_class = key.2;
        let mut msg = Message::query();
        msg.metadata.recursion_desired = true;
        msg.add_query(query);
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        msg.set_edns(edns);
        let req = DnsRequest::new(msg, DnsRequestOptions::default());
        let resp = udp.send(req.clone()).first_answer().await.map_err(|e| e.to_string())?;
        if !resp.metadata.truncation {
            return Ok(resp.into_message());
        }
        let tcp = TcpClientStream::exchange(addr, None, self.inner.cfg.timeout, None, TokioRuntimeProvider::new())
            .await
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(self.inner.cfg.timeout, tcp.send(req).first_answer())
            .await
            .map_err(|_| "timed out over TCP".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(resp.into_message())
    }

    fn to_cached(&self, m: Message) -> Cached {
        let cfg = &self.inner.cfg;
        let negative = m.answers.is_empty();
        let ttl = if negative {
            // RFC 2308: the SOA's TTL, at most its minimum field.
            let soa = m.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(s) => Some(r.ttl.min(s.minimum)),
                _ => None,
            });
            Duration::from_secs(u64::from(soa.unwrap_or(30))).min(cfg.max_negative_ttl)
        } else {
            Duration::from_secs(u64::from(m.answers.iter().map(|r| r.ttl).min().unwrap_or(0))).min(cfg.max_ttl)
        };
        Cached {
            response_code: m.metadata.response_code,
            answers: m.answers,
            authorities: m.authorities,
            additionals: m.additionals,
            stored: Instant::now(),
            ttl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_come_from_resolv_conf() {
        let text = "# comment\nnameserver 192.0.2.1\nsearch example.com\nnameserver fd00::53\nnameserver bogus\n";
        assert_eq!(
            resolv_conf_upstreams(text),
            vec!["192.0.2.1:53".parse().unwrap(), "[fd00::53]:53".parse().unwrap()]
        );
    }
}
