//! The balancer's state: the ready endpoints of one Service port (an [`Upstream`]) with, for
//! each, the requests under way, connect failures in a row and ejection, and the choice between
//! them ([`Balance`]). The routing table holds upstreams; the activator counts on them too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
}

/// What the balancer keeps about one endpoint: requests under way, connect failures in a row,
/// and until when it is ejected. It is shared with the next table's upstream for the same
/// Service port and address, so a rebuild (any change in the cluster) neither forgets an
/// ejection nor loses count of the requests still under way.
#[derive(Debug, Default)]
pub struct EndpointState {
    outstanding: AtomicUsize,
    failures: AtomicUsize,
    /// Milliseconds since [`epoch`] until which the endpoint is left out (0: not ejected).
    ejected_until: AtomicU64,
}

/// The process's clock origin for ejection deadlines.
fn now_ms() -> u64 {
    static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}

/// An upstream: the ready endpoints of one Service port, with the balancer's state for each.
#[derive(Debug)]
pub struct Upstream {
    /// `namespace/service:port`, for logs, metrics and error bodies.
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    /// HTTP/2 without TLS to the endpoints (the port's appProtocol is `kubernetes.io/h2c`).
    pub h2c: bool,
    next: AtomicUsize,
    state: Vec<Arc<EndpointState>>,
}

/// Connect failures in a row that eject an endpoint, and for how long.
pub const EJECT_AFTER: usize = 3;
pub const EJECT_FOR: Duration = Duration::from_secs(10);

impl Upstream {
    pub fn new(name: String, endpoints: Vec<SocketAddr>, h2c: bool) -> Upstream {
        let state = endpoints.iter().map(|_| Arc::default()).collect();
        Upstream {
            name,
            endpoints,
            h2c,
            next: AtomicUsize::new(0),
            state,
        }
    }

    /// Take over the state `prior` (the same Service port in the previous table) keeps for the
    /// endpoints both have.
    pub fn inherit(&mut self, prior: &Upstream) {
        for (i, addr) in self.endpoints.iter().enumerate() {
            if let Some(j) = prior.endpoints.iter().position(|a| a == addr) {
                self.state[i] = prior.state[j].clone();
            }
        }
        self.next.store(prior.next.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Pick an endpoint (its index) by `balance` among those not tried already for this
    /// request (`skip`) and not ejected; when that leaves none, ejection is ignored (a guess
    /// beats a certain failure), then what was tried. Nothing is allocated: this runs for every
    /// request.
    pub fn pick(&self, balance: Balance, skip: &[usize]) -> Option<usize> {
        let now = now_ms();
        let live = |i: usize| self.state[i].ejected_until.load(Ordering::Relaxed) <= now;
        let all = 0..self.endpoints.len();
        let filters: [&dyn Fn(usize) -> bool; 3] =
            [&|i| !skip.contains(&i) && live(i), &|i| !skip.contains(&i), &|_| true];
        let (eligible, count) = filters
            .into_iter()
            .map(|f| (f, all.clone().filter(|&i| f(i)).count()))
            .find(|(_, n)| *n > 0)?;
        let nth = |k: usize| all.clone().filter(|&i| eligible(i)).nth(k % count);
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match balance {
            Balance::RoundRobin => nth(n),
            Balance::LeastRequest => {
                // Power of two choices: two distinct candidates (a cheap spread of the
                // round-robin counter stands for randomness), the one with fewer requests under
                // way.
                let a = nth(n)?;
                if count == 1 {
                    return Some(a);
                }
                let b = nth(n + 1 + (n.wrapping_mul(2_654_435_761) >> 7) % (count - 1))?;
                Some(if self.outstanding(b) < self.outstanding(a) {
                    b
                } else {
                    a
                })
            }
        }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.endpoints[i]
    }

    /// A request to endpoint `i` starts; `done` when it ends.
    pub fn start(&self, i: usize) {
        self.state[i].outstanding.fetch_add(1, Ordering::Relaxed);
    }

    pub fn done(&self, i: usize) {
        let _ = self.state[i]
            .outstanding
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    pub fn outstanding(&self, i: usize) -> usize {
        self.state[i].outstanding.load(Ordering::Relaxed)
    }

    /// A connect to endpoint `i` failed: after `EJECT_AFTER` in a row it is left out for
    /// `EJECT_FOR` (passive ejection).
    pub fn connect_failed(&self, i: usize) {
        let st = &self.state[i];
        if st.failures.fetch_add(1, Ordering::Relaxed) + 1 >= EJECT_AFTER {
            st.ejected_until
                .store(now_ms() + EJECT_FOR.as_millis() as u64, Ordering::Relaxed);
            st.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Leave the endpoint out now (a revision's pod that refused a connection is going away:
    /// its replacement, or another pod, takes the retry).
    pub fn eject(&self, i: usize) {
        let st = &self.state[i];
        st.ejected_until
            .store(now_ms() + EJECT_FOR.as_millis() as u64, Ordering::Relaxed);
        st.failures.store(0, Ordering::Relaxed);
    }

    pub fn connected(&self, i: usize) {
        self.state[i].failures.store(0, Ordering::Relaxed);
    }

    pub fn ejected(&self, i: usize) -> bool {
        self.state[i].ejected_until.load(Ordering::Relaxed) > now_ms()
    }
}
