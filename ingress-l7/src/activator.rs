//! The activator: what stands between a request for a Knative revision and the revision's pods.
//! There is no queue-proxy beside the pods: the ingress sees every request a revision gets, so
//! it is the one place that can hold a request while the revision scales from zero, keep each
//! pod under its `containerConcurrency`, and tell the autoscaler what the revision's traffic is.
//!
//! - A request for a revision takes a [`Permit`] ([`Revision::enter`]) before it is sent: one of
//!   the revision's ready endpoints with fewer than `containerConcurrency` requests from this
//!   ingress under way (any ready endpoint when it is 0), the least busy first. When there is
//!   none, the request waits in the revision's queue (bounded: [`QUEUE_CAPACITY`] by default,
//!   then 503) until a permit is given back or the table gives the revision new endpoints (the
//!   EndpointSlice watch's rebuild, [`Activator::apply`]), or until the revision's
//!   `timeoutSeconds` since it arrived (504 naming the revision).
//! - The permit is given back when the response ends (or the request fails), whichever front
//!   carried it: the HTTP/1.1 and HTTP/2 fronts, the HTTP/3 one and pingora's fallback all ask
//!   [`Revision::enter`] and send the request to the permit's endpoint.
//! - Per revision it keeps what the autoscaler reads ([`Activator::stats`]): requests arrived,
//!   the time-weighted average of requests under way at its pods, and requests waiting now. A
//!   request that starts waiting on a revision with no ready pod at all asks for a report at
//!   once (a poke, at most one every [`POKE_EVERY`] per revision): scale from zero starts with
//!   the first request, not with the next report.
//!
//! The per-pod count is this ingress's own: several ingresses in front of the same pods would
//! each allow `containerConcurrency`. Nodeless runs one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nodeless_types::knative::RevisionStat;
use tokio::sync::Notify;

use crate::balance::Upstream;
use crate::metrics::{Metrics, RevisionLabels};

pub mod report;

/// A revision referenced by the table, with its current upstream and settings: what
/// [`Activator::apply`] hands to the revision's waiting requests.
#[derive(Debug, Clone)]
pub struct RevisionRoute {
    pub revision: Arc<Revision>,
    pub upstream: Option<Arc<Upstream>>,
    pub config: Config,
}

/// Requests that may wait for one revision at once; one more gets 503.
pub const QUEUE_CAPACITY: usize = 1000;
/// The shortest time between two pokes for one revision.
pub const POKE_EVERY: Duration = Duration::from_millis(100);
/// `timeoutSeconds` when the revision's Service does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A revision's settings, from its Service's annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Requests under way at one pod at most (0: no limit).
    pub concurrency: usize,
    /// The longest a request may wait for a pod (and, without `response_start`, for the
    /// response to start).
    pub timeout: Duration,
    pub response_start: Option<Duration>,
    pub idle: Option<Duration>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            concurrency: 0,
            timeout: DEFAULT_TIMEOUT,
            response_start: None,
            idle: None,
        }
    }
}

/// Why a request was not let through; [`Refused::answer`] is the ingress's response.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    QueueFull {
        revision: String,
        capacity: usize,
    },
    /// No ready pod (or none under its concurrency, `busy`) within the revision's timeout.
    TimedOut {
        revision: String,
        waited: Duration,
        busy: bool,
    },
}

impl Refused {
    pub fn answer(&self) -> (u16, String) {
        match self {
            Refused::QueueFull { revision, capacity } => (
                503,
                format!("the queue of revision {revision} is full ({capacity} requests waiting for a pod)"),
            ),
            Refused::TimedOut {
                revision,
                waited,
                busy: false,
            } => (
                504,
                format!("revision {revision} had no ready pod within {}s", waited.as_secs()),
            ),
            Refused::TimedOut {
                revision,
                waited,
                busy: true,
            } => (
                504,
                format!(
                    "revision {revision} had no pod under its container concurrency within {}s",
                    waited.as_secs()
                ),
            ),
        }
    }
}

/// What every revision shares: where pokes go, the queue's capacity, the metrics.
struct Shared {
    metrics: Arc<Metrics>,
    poke: Notify,
    queue: usize,
}

/// The revisions the table routes to, each kept across rebuilds with its queue and counts.
pub struct Activator {
    shared: Arc<Shared>,
    revisions: Mutex<HashMap<(String, String), Arc<Revision>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Activator {
    /// `queue`: requests that may wait per revision ([`QUEUE_CAPACITY`] in the ingress).
    pub fn new(metrics: Arc<Metrics>, queue: usize) -> Activator {
        Activator {
            shared: Arc::new(Shared {
                metrics,
                poke: Notify::new(),
                queue,
            }),
            revisions: Mutex::default(),
        }
    }

    /// The revision `namespace/name`, made on first use.
    pub fn revision(&self, namespace: &str, name: &str) -> Arc<Revision> {
        lock(&self.revisions)
            .entry((namespace.to_string(), name.to_string()))
            .or_insert_with(|| {
                let now = Instant::now();
                Arc::new(Revision {
                    id: format!("{namespace}/{name}"),
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    shared: self.shared.clone(),
                    changed: Notify::new(),
                    state: Mutex::new(State {
                        upstream: None,
                        config: Config::default(),
                        in_flight: HashMap::new(),
                        total: 0,
                        waiting: 0,
                        arrivals: 0,
                        area: 0.0,
                        since: now,
                        window: now,
                        last_poke: None,
                        poke: false,
                        reported: false,
                        next: 0,
                    }),
                })
            })
            .clone()
    }

    /// A new table is in: each revision it routes to gets its endpoints and settings, and its
    /// waiting requests look again. Revisions it no longer routes to leave the registry (their
    /// requests under way keep them until they end).
    pub fn apply(&self, routes: &[RevisionRoute]) {
        for r in routes {
            {
                let mut st = lock(&r.revision.state);
                st.upstream = r.upstream.clone();
                st.config = r.config.clone();
            }
            r.revision.changed.notify_waiters();
        }
        lock(&self.revisions).retain(|_, rev| routes.iter().any(|r| Arc::ptr_eq(&r.revision, rev)));
    }

    /// Wait until a request asks for a report at once.
    pub async fn poked(&self) {
        self.shared.poke.notified().await
    }

    /// What each revision saw since the window began, for the revisions with traffic or a
    /// queue, or that were in the last report (so the autoscaler sees them go quiet), or that
    /// were poked. `reset` starts the next window (the regular report; a poke's report does not).
    pub fn stats(&self, reset: bool) -> Vec<RevisionStat> {
        let now = Instant::now();
        let revisions: Vec<Arc<Revision>> = lock(&self.revisions).values().cloned().collect();
        let mut out = Vec::new();
        for r in revisions {
            let mut st = lock(&r.state);
            st.advance(now);
            let window = now.duration_since(st.window).as_secs_f64();
            let average = if window > 0.0 {
                st.area / window
            } else {
                st.total as f64
            };
            let active = st.arrivals > 0 || st.area > 0.0 || st.waiting > 0 || st.total > 0;
            let poke = std::mem::take(&mut st.poke);
            if active || st.reported || poke {
                out.push(RevisionStat {
                    namespace: r.namespace.clone(),
                    revision: r.name.clone(),
                    average_concurrency: average,
                    requests: st.arrivals,
                    queued: st.waiting as u64,
                    poke,
                });
            }
            if reset {
                st.area = 0.0;
                st.arrivals = 0;
                st.window = now;
                st.reported = active;
            }
        }
        out.sort_by(|a, b| (&a.namespace, &a.revision).cmp(&(&b.namespace, &b.revision)));
        out
    }
}

/// One revision: its endpoints as the table has them, the requests under way at each, and the
/// requests waiting.
pub struct Revision {
    pub namespace: String,
    pub name: String,
    /// `namespace/name`.
    pub id: String,
    shared: Arc<Shared>,
    state: Mutex<State>,
    /// Told when a permit is given back or the endpoints change.
    changed: Notify,
}

impl std::fmt::Debug for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revision").field("id", &self.id).finish_non_exhaustive()
    }
}

struct State {
    upstream: Option<Arc<Upstream>>,
    config: Config,
    /// Requests under way by endpoint address (kept across tables, which index differently).
    in_flight: HashMap<SocketAddr, usize>,
    total: usize,
    waiting: usize,
    /// Requests arrived in this window.
    arrivals: u64,
    /// Requests under way integrated over time (request-seconds) in this window, up to `since`.
    area: f64,
    since: Instant,
    window: Instant,
    last_poke: Option<Instant>,
    poke: bool,
    /// Whether the last report had traffic for this revision.
    reported: bool,
    /// Where the search for a free endpoint starts (turns, so equals share the load).
    next: usize,
}

impl State {
    fn advance(&mut self, now: Instant) {
        self.area += self.total as f64 * now.saturating_duration_since(self.since).as_secs_f64();
        self.since = now;
    }

    fn ready(&self) -> usize {
        self.upstream.as_ref().map_or(0, |u| u.endpoints.len())
    }

    /// An endpoint with room, the least busy first (not ejected ones, unless only those have
    /// room), counted as under way.
    fn take(&mut self, now: Instant) -> Option<(Arc<Upstream>, usize)> {
        let u = self.upstream.clone()?;
        let n = u.endpoints.len();
        if n == 0 {
            return None;
        }
        let cc = self.config.concurrency;
        let start = self.next;
        self.next = self.next.wrapping_add(1);
        let busy = |i: usize| self.in_flight.get(&u.addr(i)).copied().unwrap_or(0);
        let best = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| cc == 0 || busy(i) < cc)
            .min_by_key(|&i| (u.ejected(i), busy(i)))?;
        self.advance(now);
        *self.in_flight.entry(u.addr(best)).or_default() += 1;
        self.total += 1;
        Some((u, best))
    }
}

impl Revision {
    /// A permit to send one request (arrived at `arrived`) to one of the revision's pods: at
    /// once when a pod has room, else after waiting in the revision's queue.
    pub async fn enter(self: &Arc<Self>, arrived: Instant) -> Result<Permit, Refused> {
        let (deadline, timeout, cold) = {
            let mut st = lock(&self.state);
            st.arrivals += 1;
            if let Some((upstream, endpoint)) = st.take(Instant::now()) {
                return Ok(self.permit(upstream, endpoint));
            }
            if st.waiting >= self.shared.queue {
                return Err(Refused::QueueFull {
                    revision: self.id.clone(),
                    capacity: self.shared.queue,
                });
            }
            st.waiting += 1;
            self.gauge(st.waiting);
            let cold = st.ready() == 0;
            if cold {
                self.poke(&mut st);
            }
            (arrived + st.config.timeout, st.config.timeout, cold)
        };
        let mut waiting = Waiting(Some(self.as_ref()));
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let busy = {
                let mut st = lock(&self.state);
                if let Some((upstream, endpoint)) = st.take(Instant::now()) {
                    st.waiting -= 1;
                    self.gauge(st.waiting);
                    waiting.0 = None;
                    drop(st);
                    if cold {
                        self.shared
                            .metrics
                            .revision_cold_start
                            .get_or_create(&self.labels())
                            .observe(arrived.elapsed().as_secs_f64());
                    }
                    return Ok(self.permit(upstream, endpoint));
                }
                if st.ready() == 0 {
                    self.poke(&mut st);
                }
                st.ready() > 0
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return Err(Refused::TimedOut { revision: self.id.clone(), waited: timeout, busy });
                }
            }
        }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        lock(&self.state).waiting
    }

    /// Requests under way at the revision's pods now.
    pub fn under_way(&self) -> usize {
        lock(&self.state).total
    }

    pub(crate) fn labels(&self) -> RevisionLabels {
        RevisionLabels {
            revision: self.id.clone(),
        }
    }

    fn gauge(&self, waiting: usize) {
        self.shared
            .metrics
            .revision_queue
            .get_or_create(&self.labels())
            .set(waiting as i64);
    }

    fn poke(&self, st: &mut State) {
        let now = Instant::now();
        if st.last_poke.is_none_or(|t| now.duration_since(t) >= POKE_EVERY) {
            st.last_poke = Some(now);
            st.poke = true;
            self.shared.poke.notify_one();
        }
    }

    fn permit(self: &Arc<Self>, upstream: Arc<Upstream>, endpoint: usize) -> Permit {
        Permit {
            revision: self.clone(),
            addr: upstream.addr(endpoint),
            upstream,
            endpoint,
        }
    }

    fn release(&self, addr: SocketAddr) {
        {
            let mut st = lock(&self.state);
            st.advance(Instant::now());
            if let Some(n) = st.in_flight.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    st.in_flight.remove(&addr);
                }
            }
            st.total = st.total.saturating_sub(1);
        }
        self.changed.notify_waiters();
    }
}

/// A waiting request, counted in its revision's queue until it leaves (with a permit, on
/// timeout, or because its client went away).
struct Waiting<'a>(Option<&'a Revision>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.0 {
            let mut st = lock(&r.state);
            st.waiting = st.waiting.saturating_sub(1);
            r.gauge(st.waiting);
        }
    }
}

/// Leave to send one request to `upstream`'s endpoint `endpoint`; the request counts as under
/// way at that pod until the permit is dropped.
pub struct Permit {
    revision: Arc<Revision>,
    addr: SocketAddr,
    pub upstream: Arc<Upstream>,
    pub endpoint: usize,
}

impl Permit {
    pub fn revision(&self) -> &Revision {
        &self.revision
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.revision.release(self.addr);
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit({} at {})", self.revision.id, self.addr)
    }
}

/// The gate every front passes a request through once it is admitted: for a revision, a
/// permit (after waiting, if it must), and the upstream and endpoint to use; for anything else,
/// nothing (the front picks an endpoint itself). `Err`: the ingress's answer.
pub(crate) async fn gate(revision: Option<&Arc<Revision>>, arrived: Instant) -> Result<Option<Permit>, (u16, String)> {
    match revision {
        None => Ok(None),
        Some(r) => r.enter(arrived).await.map(Some).map_err(|e| e.answer()),
    }
}

#[cfg(test)]
mod tests;
