//! What a slow or hostile client may hold of the ingress: how long it may take over its TLS
//! handshake, over a request head, and idle between requests, and how many connections all
//! clients together may have open. Without these a client that opens connections and sends
//! nothing (or a byte now and then, slowloris) keeps a task, a socket and its buffers for ever,
//! and enough of them run the process out of descriptors (nofile is 20,000 here).
//!
//! The checks are per connection, never per request: the cap is one atomic add when a
//! connection is accepted and one when it closes; the head and idle limits are the deadline the
//! HTTP/1.1 path already sets for reading a head (a second clock read only when a head arrives
//! in pieces), and the HTTP/2 path's idle timer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The most request-line-and-header bytes taken; more gets 431 (nginx allows 4 x 8 KiB by
/// default), on every listener. Pingora itself stops reading at 1 MiB and drops the connection.
/// An endpoint's response head is held to the same.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A connection's limits, the same on every TCP listener (plain and TLS; HTTP/1.1 and HTTP/2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// From accept to a finished TLS handshake. 10 s: Go's `TLSHandshakeTimeout` default; a real
    /// client needs two round trips.
    pub tls_handshake: Duration,
    /// From a head's first byte to its end. 30 s: between Apache's `mod_reqtimeout` (20 s, 40 s
    /// while data flows) and nginx's `client_header_timeout` (60 s); a 64 KiB head needs about
    /// 2 KiB/s to make it.
    pub header: Duration,
    /// Between requests: from the end of a response to the next head's first byte (HTTP/1.1),
    /// with no stream open (HTTP/2), and before a new plain connection says which it speaks.
    /// 60 s, as before these were settings (nginx's `keepalive_timeout` is 75 s).
    pub idle: Duration,
    /// Client connections open at once, over all worker threads; one over it is closed at once.
    /// 16,384: under the 20,000 descriptors a process may have here, with room for the upstream
    /// connections (pooled per worker) and the watch.
    pub max_connections: usize,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            tls_handshake: Duration::from_secs(10),
            header: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            max_connections: 16_384,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error("{0} must be above zero")]
    Zero(&'static str),
}

impl ClientLimits {
    /// Zero would close every connection at once.
    pub fn validate(&self) -> Result<(), LimitsError> {
        for (d, name) in [
            (self.tls_handshake, "the TLS handshake timeout"),
            (self.header, "the header timeout"),
            (self.idle, "the idle timeout"),
        ] {
            if d.is_zero() {
                return Err(LimitsError::Zero(name));
            }
        }
        if self.max_connections == 0 {
            return Err(LimitsError::Zero("the connection cap"));
        }
        Ok(())
    }
}

/// The connection cap, shared by every worker thread.
#[derive(Debug)]
pub struct Gate {
    max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
    /// When a refusal was last logged (seconds since `epoch`), so the log says it once a second.
    logged: AtomicU64,
    epoch: std::time::Instant,
}

/// A connection let in: counted until dropped.
#[derive(Debug)]
pub struct Admitted(Arc<Gate>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    pub fn new(max: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            logged: AtomicU64::new(u64::MAX),
            epoch: std::time::Instant::now(),
        })
    }

    /// A place for one more connection, or `None` (counted, and logged at most once a second
    /// with the count so far) when the cap is reached: the caller closes it at once.
    pub fn admit(self: &Arc<Gate>) -> Option<Admitted> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            let now = self.epoch.elapsed().as_secs();
            let last = self.logged.load(Ordering::Relaxed);
            if last != now
                && self
                    .logged
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    max = self.max,
                    refused_so_far = refused,
                    "connection cap reached: new connections are closed at once"
                );
            }
            return None;
        }
        Some(Admitted(self.clone()))
    }

    /// Connections refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_refuses_the_one_over_and_frees_a_place_when_one_closes() {
        let gate = Gate::new(2);
        let a = gate.admit().unwrap();
        let _b = gate.admit().unwrap();
        assert!(gate.admit().is_none());
        assert!(gate.admit().is_none());
        assert_eq!((gate.open(), gate.refused()), (2, 2));
        drop(a);
        assert!(gate.admit().is_some());
        assert_eq!(gate.refused(), 2);
    }

    #[test]
    fn zero_limits_are_refused() {
        assert_eq!(ClientLimits::default().validate(), Ok(()));
        let bad = ClientLimits {
            idle: Duration::ZERO,
            ..ClientLimits::default()
        };
        assert_eq!(bad.validate(), Err(LimitsError::Zero("the idle timeout")));
        assert!(
            ClientLimits {
                max_connections: 0,
                ..ClientLimits::default()
            }
            .validate()
            .is_err()
        );
    }
}
