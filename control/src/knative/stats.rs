//! What the ingresses report about each revision ([`nodeless_types::knative::Stats`]), kept for
//! the autoscaler: per revision and reporter, one sample per report, for as long as the longest
//! window may look back. A report with `poke` wakes the autoscaler at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nodeless_types::knative::Stats;

/// The longest window an annotation may ask for (`autoscaling.knative.dev/window` ≤ 1h).
const KEEP: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    concurrency: f64,
    rps: f64,
}

#[derive(Default)]
struct Revision {
    by_reporter: HashMap<String, VecDeque<Sample>>,
    /// The last moment a request arrived, was in flight or waited.
    last_active: Option<Instant>,
    queued: u64,
}

/// What the autoscaler reads for one revision over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observed {
    /// Requests in flight, averaged over the window, summed over the ingresses.
    pub concurrency: f64,
    /// Requests per second over the window, summed over the ingresses.
    pub rps: f64,
}

impl Observed {
    /// The metric an autoscaler scales on: requests per second, or requests in flight with
    /// those `queued` at the ingress added (they are load no pod has taken yet).
    pub fn metric(&self, rps: bool, queued: f64) -> f64 {
        if rps { self.rps } else { self.concurrency + queued }
    }
}

#[derive(Default)]
pub struct Sink {
    inner: Mutex<HashMap<(String, String), Revision>>,
    pokes: Mutex<Vec<(String, String)>>,
    /// Notified when a report pokes a revision.
    pub poked: tokio::sync::Notify,
}

impl Sink {
    pub fn record(&self, stats: &Stats) {
        self.record_at(stats, Instant::now());
    }

    fn record_at(&self, stats: &Stats, now: Instant) {
        let window = Duration::from_millis(stats.window_ms.max(1)).as_secs_f64();
        let mut poked = false;
        {
            let mut inner = self.inner.lock().unwrap();
            for r in &stats.revisions {
                let rev = inner.entry((r.namespace.clone(), r.revision.clone())).or_default();
                let samples = rev.by_reporter.entry(stats.reporter.clone()).or_default();
                samples.push_back(Sample {
                    at: now,
                    concurrency: r.average_concurrency.max(0.0),
                    rps: r.requests as f64 / window,
                });
                while samples.front().is_some_and(|s| now.duration_since(s.at) > KEEP) {
                    samples.pop_front();
                }
                rev.queued = r.queued;
                if r.average_concurrency > 0.0 || r.requests > 0 || r.queued > 0 || r.poke {
                    rev.last_active = Some(now);
                }
                if r.poke {
                    self.pokes
                        .lock()
                        .unwrap()
                        .push((r.namespace.clone(), r.revision.clone()));
                    poked = true;
                }
            }
        }
        if poked {
            self.poked.notify_one();
        }
    }

    /// The revisions poked since the last call.
    pub fn take_pokes(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.pokes.lock().unwrap())
    }

    /// Averages over the last `window` (a reporter's missing seconds count as zero).
    pub fn observed(&self, ns: &str, rev: &str, window: Duration) -> Observed {
        self.observed_at(ns, rev, window, Instant::now())
    }

    fn observed_at(&self, ns: &str, rev: &str, window: Duration, now: Instant) -> Observed {
        let inner = self.inner.lock().unwrap();
        let Some(r) = inner.get(&(ns.to_string(), rev.to_string())) else {
            return Observed::default();
        };
        let mut out = Observed::default();
        // Reports come about once a second: a window of n seconds averages n buckets.
        let buckets = window.as_secs_f64().max(1.0).round();
        for samples in r.by_reporter.values() {
            let inside = samples.iter().rev().take_while(|s| now.duration_since(s.at) <= window);
            let (mut c, mut q) = (0.0, 0.0);
            for s in inside {
                c += s.concurrency;
                q += s.rps;
            }
            out.concurrency += c / buckets;
            out.rps += q / buckets;
        }
        out
    }

    /// When the revision last saw a request (in flight, arriving or waiting), if ever.
    pub fn last_active(&self, ns: &str, rev: &str) -> Option<Instant> {
        self.inner
            .lock()
            .unwrap()
            .get(&(ns.to_string(), rev.to_string()))
            .and_then(|r| r.last_active)
    }

    /// Requests waiting for a pod of the revision, as last reported.
    pub fn queued(&self, ns: &str, rev: &str) -> u64 {
        self.inner
            .lock()
            .unwrap()
            .get(&(ns.to_string(), rev.to_string()))
            .map_or(0, |r| r.queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeless_types::knative::RevisionStat;

    fn report(reporter: &str, conc: f64, requests: u64, poke: bool) -> Stats {
        Stats {
            reporter: reporter.into(),
            window_ms: 1000,
            revisions: vec![RevisionStat {
                namespace: "default".into(),
                revision: "hello-00001".into(),
                average_concurrency: conc,
                requests,
                queued: 0,
                poke,
            }],
        }
    }

    #[test]
    fn windows_average_and_sum_reporters() {
        let sink = Sink::default();
        let t0 = Instant::now();
        for i in 0..6 {
            sink.record_at(&report("a", 4.0, 10, false), t0 + Duration::from_secs(i));
            sink.record_at(&report("b", 2.0, 0, false), t0 + Duration::from_secs(i));
        }
        let now = t0 + Duration::from_secs(5);
        let six = sink.observed_at("default", "hello-00001", Duration::from_secs(6), now);
        assert!((six.concurrency - 6.0).abs() < 1e-9, "{six:?}");
        assert!((six.rps - 10.0).abs() < 1e-9, "{six:?}");
        // Over 60 s the same six seconds average to a tenth.
        let sixty = sink.observed_at("default", "hello-00001", Duration::from_secs(60), now);
        assert!((sixty.concurrency - 0.6).abs() < 1e-9, "{sixty:?}");
        assert_eq!(
            sink.observed("default", "nope", Duration::from_secs(6)),
            Observed::default()
        );
        assert!(sink.take_pokes().is_empty());
        sink.record(&report("a", 0.0, 0, true));
        assert_eq!(
            sink.take_pokes(),
            vec![("default".to_string(), "hello-00001".to_string())]
        );
        assert!(sink.last_active("default", "hello-00001").is_some());
    }
}
