//! When to try again to make a pod's sandbox after a start failed. Each failure waits out a
//! back-off that doubles, from `--restart-backoff` up to its cap, as container restarts do.
//! Before this a failed start was tried again at every event the worker got, its own status
//! patches included: about five FailedCreatePodSandBox events a second per pod.

use std::time::Duration;

use tokio::time::Instant;

/// The last failed sandbox start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxFailure {
    pub message: String,
    /// Not tried again before this.
    pub retry_at: Instant,
    /// What the failure after the next one waits.
    next_backoff: Duration,
}

impl SandboxFailure {
    /// Record a failed start at `now`, after `previous` (the one before, if any); `base` and
    /// `max` are the node's back-off settings.
    pub fn after(
        previous: Option<&SandboxFailure>,
        message: String,
        now: Instant,
        base: Duration,
        max: Duration,
    ) -> Self {
        let wait = previous.map_or(base, |p| p.next_backoff).min(max);
        SandboxFailure {
            message,
            retry_at: now + wait,
            next_backoff: (wait * 2).min(max),
        }
    }

    /// Whether the back-off has run out at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.retry_at <= now
    }

    /// Whether `message` is news (an event is emitted only then).
    pub fn is_new(previous: Option<&SandboxFailure>, message: &str) -> bool {
        previous.is_none_or(|p| p.message != message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_the_cap_and_is_not_cut_short() {
        let (base, max) = (Duration::from_secs(10), Duration::from_secs(60));
        let t0 = Instant::now();
        let mut last: Option<SandboxFailure> = None;
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..5 {
            let f = SandboxFailure::after(last.as_ref(), "volume \"v\": nope".into(), now, base, max);
            assert!(!f.due(now) && !f.due(now + Duration::from_secs(9)));
            waits.push((f.retry_at - now).as_secs());
            now = f.retry_at;
            assert!(f.due(now));
            last = Some(f);
        }
        assert_eq!(waits, [10, 20, 40, 60, 60]);
        assert!(!SandboxFailure::is_new(last.as_ref(), "volume \"v\": nope"));
        assert!(SandboxFailure::is_new(last.as_ref(), "network: other"));
        assert!(SandboxFailure::is_new(None, "x"));
    }
}
