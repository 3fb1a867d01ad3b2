//! The KPA: every two seconds, and at once when an ingress pokes a revision at zero, each
//! PodAutoscaler's desired scale from what the ingresses report ([`crate::knative::stats`]), by
//! Knative's algorithm and defaults: the average concurrency (or requests/s) over the stable
//! window (60 s) and the panic window (10 % of it), a per-pod target of `target` ×
//! utilisation (100 × 70 %), panic mode when the panic window asks for twice the ready pods
//! (then never down until a stable window passes), scale-up at most ×1000 and scale-down at
//! most ÷2 per decision, `scale-down-delay`, min/max scale, and zero only after the
//! scale-to-zero grace period (30 s) without a request. The revision controller copies the
//! desired scale into the Deployment.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{served, set_active, set_condition, write_status};
use crate::api::local::LocalClient;
use crate::controllers::str_at;
use crate::knative::{config, duration};

const TICK: Duration = Duration::from_secs(2);
/// ASK's reserved instance: keep one pod instead of none.
const RESERVE_INSTANCE: &str = "knative.aliyun.com/reserve-instance";

/// What the autoscaler remembers of a revision between decisions.
#[derive(Default)]
struct Memory {
    first_seen: Option<Instant>,
    panic_until: Option<Instant>,
    panic_pods: i64,
    reached_initial: bool,
    /// When the initial scale was reached: idle time counts from then at the earliest.
    reached_at: Option<Instant>,
    /// Recent decisions, for `scale-down-delay`.
    recent: VecDeque<(Instant, i64)>,
    /// The revision's labels in control's `/metrics`, once published.
    metrics: Option<crate::metrics::RevisionLabels>,
}

/// The settings of one revision: its annotations over `config-autoscaler`.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub rps: bool,
    pub target: f64,
    pub utilization: f64,
    pub window: Duration,
    pub panic_window: Duration,
    pub panic_threshold: f64,
    pub min: i64,
    pub max: i64,
    pub initial: i64,
    pub activation: i64,
    pub max_up: f64,
    pub max_down: f64,
    pub to_zero: bool,
    pub grace: Duration,
    pub retention: Duration,
    pub down_delay: Duration,
}

impl Settings {
    pub fn of(pa: &Value, cfg: &std::collections::BTreeMap<String, String>) -> Settings {
        let ann = |k: &str| {
            pa.pointer(&format!("/metadata/annotations/autoscaling.knative.dev~1{k}"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| cfg.get(k).cloned())
        };
        let num = |k: &str, d: f64| ann(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(d);
        let dur = |k: &str, d: Duration| ann(k).and_then(|v| duration::parse(&v)).unwrap_or(d);
        let rps = ann("metric").as_deref() == Some("rps");
        let cc = pa
            .pointer("/spec/containerConcurrency")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let default_target = if rps {
            num("requests-per-second-target-default", 200.0)
        } else if cc > 0 {
            cc as f64
        } else {
            num("container-concurrency-target-default", 100.0)
        };
        let target = pa
            .pointer("/metadata/annotations/autoscaling.knative.dev~1target")
            .and_then(Value::as_str)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(default_target);
        let utilization = pa
            .pointer("/metadata/annotations/autoscaling.knative.dev~1target-utilization-percentage")
            .and_then(Value::as_str)
            .or(cfg.get("container-concurrency-target-percentage").map(String::as_str))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(70.0);
        let window = pa
            .pointer("/metadata/annotations/autoscaling.knative.dev~1window")
            .and_then(Value::as_str)
            .or(cfg.get("stable-window").map(String::as_str))
            .and_then(duration::parse)
            .unwrap_or(Duration::from_secs(60));
        let panic_pct = num("panic-window-percentage", 10.0);
        let reserve = pa.pointer(&format!(
            "/metadata/annotations/{}",
            RESERVE_INSTANCE.replace('/', "~1")
        )) == Some(&json!("enable"));
        let min = num("min-scale", 0.0) as i64;
        Settings {
            rps,
            target,
            utilization,
            window,
            panic_window: window.mul_f64(panic_pct / 100.0).max(Duration::from_secs(1)),
            panic_threshold: num("panic-threshold-percentage", 200.0) / 100.0,
            min: if reserve { min.max(1) } else { min },
            max: num("max-scale", 0.0) as i64,
            initial: num("initial-scale", 1.0) as i64,
            activation: (num("activation-scale", 1.0) as i64).max(1),
            max_up: num("max-scale-up-rate", 1000.0),
            max_down: num("max-scale-down-rate", 2.0),
            to_zero: cfg.get("enable-scale-to-zero").map(String::as_str) != Some("false"),
            grace: cfg
                .get("scale-to-zero-grace-period")
                .and_then(|v| duration::parse(v))
                .unwrap_or(Duration::from_secs(30)),
            retention: dur("scale-to-zero-pod-retention-period", Duration::ZERO),
            down_delay: dur("scale-down-delay", Duration::ZERO),
        }
    }

    fn per_pod(&self) -> f64 {
        (self.target * self.utilization / 100.0).max(0.01)
    }
}

/// What one decision sees.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inputs {
    /// The metric over the stable and panic windows (queued requests included).
    pub stable: f64,
    pub panic: f64,
    pub ready: i64,
    /// The scale decided last time (None: never).
    pub current: Option<i64>,
    /// How long since the revision last saw a request (or since it was created).
    pub idle: Duration,
    pub poked: bool,
}

/// One KPA decision (pure, for tests): the desired scale.
fn decide(s: &Settings, i: Inputs, mem: &mut Memory, now: Instant) -> i64 {
    let ready = i.ready.max(1) as f64;
    let up_limit = (s.max_up * ready).ceil() as i64;
    let down_limit = (ready / s.max_down).floor() as i64;
    let want_stable = (i.stable / s.per_pod()).ceil() as i64;
    let want_panic = (i.panic / s.per_pod()).ceil() as i64;
    let clamp = |n: i64| {
        if i.ready > 0 {
            n.clamp(down_limit.min(up_limit), up_limit)
        } else {
            n
        }
    };
    let (stable, panic) = (clamp(want_stable), clamp(want_panic));
    if i.ready > 0 && want_panic as f64 / ready >= s.panic_threshold {
        mem.panic_until = Some(now + s.window);
    }
    let mut desired = match mem.panic_until {
        Some(t) if now < t => {
            mem.panic_pods = mem.panic_pods.max(panic).max(i.ready);
            mem.panic_pods
        }
        _ => {
            mem.panic_until = None;
            mem.panic_pods = 0;
            stable
        }
    };
    if s.down_delay.is_zero() {
        mem.recent.clear();
    }
    mem.recent.push_back((now, desired));
    while mem
        .recent
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > s.down_delay)
    {
        mem.recent.pop_front();
    }
    desired = mem.recent.iter().map(|(_, d)| *d).max().unwrap_or(desired);
    if !mem.reached_initial {
        if i.ready >= s.initial || i.current.is_some_and(|c| c != s.initial) {
            mem.reached_initial = true;
            mem.reached_at = Some(now);
        } else {
            desired = desired.max(s.initial);
        }
    }
    if desired == 0 {
        let current = i.current.unwrap_or(0).max(i.ready);
        let idle = match mem.reached_at {
            Some(t) => i.idle.min(now.duration_since(t)),
            None => i.idle,
        };
        let may_zero = s.to_zero && idle >= s.grace.max(s.retention);
        if !may_zero && current > 0 {
            desired = 1;
        }
    }
    if i.poked || (i.ready == 0 && i.stable + i.panic > 0.0) {
        desired = desired.max(s.activation);
    }
    desired = desired.max(s.min);
    if s.max > 0 {
        desired = desired.min(s.max);
    }
    desired
}

/// Whether a PodAutoscaler is the KPA's (the default class) rather than the HPA's
/// (`hpa.autoscaling.knative.dev`: an `autoscaling/v2` HPA scales the revision, see `revision`).
pub fn is_kpa(pa: &Value) -> bool {
    matches!(
        pa.pointer(&format!("/metadata/annotations/{}", CLASS.replace('/', "~1")))
            .and_then(Value::as_str),
        None | Some(KPA_CLASS)
    )
}

pub const CLASS: &str = "autoscaling.knative.dev/class";
pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";
pub const HPA_CLASS: &str = "hpa.autoscaling.knative.dev";

/// A revision's request metric as the autoscalers read it: requests in flight (queued ones
/// included) or requests per second, summed over its pods, averaged over its stable window
/// (its `autoscaling.knative.dev/window`, else `config-autoscaler`'s). None when the revision
/// has no PodAutoscaler.
pub fn revision_metric(client: &LocalClient, ns: &str, revision: &str, rps: bool) -> Option<f64> {
    let pas = served(client, "podautoscalers")?;
    let pa = client.get(&pas, Some(ns), revision)?;
    let s = Settings::of(&pa.obj, &config::read(&client.state.store, "config-autoscaler"));
    let sink = &client.state.revision_stats;
    let queued = sink.queued(ns, revision) as f64;
    Some(sink.observed(ns, revision, s.window).metric(rps, queued))
}

pub async fn run(client: LocalClient) {
    let mut memory: HashMap<(String, String), Memory> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        let poked: Vec<(String, String)> = tokio::select! {
            _ = tick.tick() => Vec::new(),
            _ = client.state.revision_stats.poked.notified() => client.state.revision_stats.take_pokes(),
        };
        let Some(pas) = served(&client, "podautoscalers") else {
            continue;
        };
        let all = client.list(&pas, None, &|_| true);
        memory.retain(|(ns, n), mem| {
            let kept = all
                .iter()
                .any(|p| str_at(&p.obj, "/metadata/namespace") == ns && str_at(&p.obj, "/metadata/name") == n);
            if let Some(labels) = mem.metrics.as_ref().filter(|_| !kept) {
                client.state.metrics.forget_revision(labels);
            }
            kept
        });
        let cfg = config::read(&client.state.store, "config-autoscaler");
        for pa in all {
            let ns = str_at(&pa.obj, "/metadata/namespace").to_string();
            let name = str_at(&pa.obj, "/metadata/name").to_string();
            let is_poked = poked.iter().any(|(a, b)| *a == ns && *b == name);
            if !poked.is_empty() && !is_poked {
                continue;
            }
            if !is_kpa(&pa.obj) {
                mirror_hpa(&client, &pas, &pa).await;
                continue;
            }
            let mem = memory.entry((ns.clone(), name.clone())).or_default();
            let now = Instant::now();
            let first = *mem.first_seen.get_or_insert(now);
            let s = Settings::of(&pa.obj, &cfg);
            let sink = &client.state.revision_stats;
            let (stable, panic) = (
                sink.observed(&ns, &name, s.window),
                sink.observed(&ns, &name, s.panic_window),
            );
            let queued = sink.queued(&ns, &name) as f64;
            let metric = |o: crate::knative::stats::Observed| o.metric(s.rps, queued);
            let deployments = client.served("apps", "deployments");
            let target = str_at(&pa.obj, "/spec/scaleTargetRef/name").to_string();
            let ready = client
                .get(&deployments, Some(&ns), &target)
                .and_then(|d| d.obj.pointer("/status/readyReplicas").and_then(Value::as_i64))
                .unwrap_or(0);
            let current = pa.obj.pointer("/status/desiredScale").and_then(Value::as_i64);
            if current.is_some() && mem.first_seen == Some(now) {
                // Decided before a restart of control: the initial scale is behind it.
                mem.reached_initial = true;
            }
            let last = sink.last_active(&ns, &name).map_or(first, |t| t.max(first));
            let inputs = Inputs {
                stable: metric(stable),
                panic: metric(panic),
                ready,
                current,
                idle: now.duration_since(last),
                poked: is_poked,
            };
            let desired = decide(&s, inputs, mem, now);
            let m = &client.state.metrics;
            let labels = mem.metrics.get_or_insert_with(|| crate::metrics::RevisionLabels {
                namespace_name: ns.clone(),
                configuration_name: str_at(
                    &pa.obj,
                    &format!(
                        "/metadata/labels/{}",
                        nodeless_types::knative::CONFIGURATION.replace('/', "~1")
                    ),
                )
                .to_string(),
                revision_name: name.clone(),
            });
            m.desired_pods.get_or_create(labels).set(desired);
            m.actual_pods.get_or_create(labels).set(ready);
            m.panic_mode
                .get_or_create(labels)
                .set(i64::from(mem.panic_until.is_some_and(|t| t > now)));
            m.stable_metric.get_or_create(labels).set(inputs.stable);
            m.panic_metric.get_or_create(labels).set(inputs.panic);
            let mut status = pa.obj.get("status").cloned().unwrap_or(json!({}));
            status["desiredScale"] = json!(desired);
            status["actualScale"] = json!(ready);
            set_condition(&mut status, "Ready", "True", "", "");
            set_active(&mut status, ready, desired);
            if current != Some(desired) {
                tracing::info!(namespace = %ns, revision = %name, from = ?current, to = desired, ready, stable = inputs.stable, panic = inputs.panic, "scale");
            }
            if let Err(e) = write_status(&client, &pas, &pa, status).await {
                tracing::debug!(namespace = %ns, revision = %name, error = %e, "writing the PodAutoscaler status failed");
            }
        }
    }
}

/// A PodAutoscaler of the HPA class: its HPA scales the Deployment, and its status says what
/// the Deployment has (as Knative's HPA reconciler copies the HPA's status).
async fn mirror_hpa(client: &LocalClient, pas: &crate::api::registry::Served, pa: &crate::store::Stored) {
    let ns = str_at(&pa.obj, "/metadata/namespace");
    let deployments = client.served("apps", "deployments");
    let target = str_at(&pa.obj, "/spec/scaleTargetRef/name");
    let Some(d) = client.get(&deployments, Some(ns), target) else {
        return;
    };
    let at = |p: &str| d.obj.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let (desired, ready) = (at("/spec/replicas"), at("/status/readyReplicas"));
    let mut status = pa.obj.get("status").cloned().unwrap_or(json!({}));
    status["desiredScale"] = json!(desired);
    status["actualScale"] = json!(ready);
    set_condition(&mut status, "Ready", "True", "", "");
    set_active(&mut status, ready, desired);
    if let Err(e) = write_status(client, pas, pa, status).await {
        tracing::debug!(namespace = %ns, revision = %str_at(&pa.obj, "/metadata/name"), error = %e, "writing the PodAutoscaler status failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::of(&json!({"metadata": {}}), &Default::default())
    }

    #[test]
    fn knative_defaults() {
        let s = settings();
        assert_eq!((s.target, s.utilization, s.per_pod()), (100.0, 70.0, 70.0));
        assert_eq!(
            (s.window, s.panic_window),
            (Duration::from_secs(60), Duration::from_secs(6))
        );
        assert_eq!((s.panic_threshold, s.max_up, s.max_down), (2.0, 1000.0, 2.0));
        assert_eq!((s.grace, s.min, s.max, s.initial), (Duration::from_secs(30), 0, 0, 1));
        let cc1 = Settings::of(&json!({"spec": {"containerConcurrency": 1}}), &Default::default());
        assert_eq!(cc1.target, 1.0);
        let ann = Settings::of(
            &json!({"metadata": {"annotations": {"autoscaling.knative.dev/window": "6s", "autoscaling.knative.dev/min-scale": "2", "knative.aliyun.com/reserve-instance": "enable", "autoscaling.knative.dev/metric": "rps"}}}),
            &Default::default(),
        );
        assert!(ann.rps);
        assert_eq!((ann.window, ann.min, ann.target), (Duration::from_secs(6), 2, 200.0));
        let reserve = Settings::of(
            &json!({"metadata": {"annotations": {"knative.aliyun.com/reserve-instance": "enable"}}}),
            &Default::default(),
        );
        assert_eq!(reserve.min, 1);
    }

    #[test]
    fn scales_with_load_panics_and_goes_to_zero_after_grace() {
        let s = settings();
        let mut m = Memory::default();
        let t = Instant::now();
        let base = Inputs {
            ready: 1,
            current: Some(1),
            ..Default::default()
        };
        // 140 in flight on one pod: stable wants 2, panic wants 2 (= 2× ready: panic).
        let d = decide(
            &s,
            Inputs {
                stable: 140.0,
                panic: 140.0,
                ..base
            },
            &mut m,
            t,
        );
        assert_eq!(d, 2);
        assert!(m.panic_until.is_some());
        // In panic, a drop in load does not scale down.
        let d = decide(
            &s,
            Inputs {
                stable: 10.0,
                panic: 10.0,
                ready: 2,
                current: Some(2),
                ..base
            },
            &mut m,
            t + Duration::from_secs(2),
        );
        assert_eq!(d, 2);
        // A stable window later, down by at most half.
        let mut m = Memory {
            reached_initial: true,
            ..Default::default()
        };
        let d = decide(
            &s,
            Inputs {
                stable: 0.0,
                panic: 0.0,
                ready: 10,
                current: Some(10),
                idle: Duration::from_secs(1),
                ..base
            },
            &mut m,
            t,
        );
        assert_eq!(d, 5);
        // Idle within the grace period: one pod stays; past it, zero.
        let d = decide(
            &s,
            Inputs {
                ready: 1,
                current: Some(1),
                idle: Duration::from_secs(10),
                ..base
            },
            &mut m,
            t,
        );
        assert_eq!(d, 1);
        let d = decide(
            &s,
            Inputs {
                ready: 1,
                current: Some(1),
                idle: Duration::from_secs(31),
                ..base
            },
            &mut m,
            t,
        );
        assert_eq!(d, 0);
        // A poke at zero wakes it at once.
        let d = decide(
            &s,
            Inputs {
                ready: 0,
                current: Some(0),
                idle: Duration::ZERO,
                poked: true,
                ..base
            },
            &mut m,
            t,
        );
        assert_eq!(d, 1);
        // A step of 100 queued requests at zero: ceil(100 / 70) pods.
        let d = decide(
            &s,
            Inputs {
                stable: 100.0,
                panic: 100.0,
                ready: 0,
                current: Some(1),
                ..base
            },
            &mut m,
            t,
        );
        assert_eq!(d, 2);
    }

    #[test]
    fn initial_scale_is_held_until_reached() {
        let s = Settings {
            initial: 3,
            ..settings()
        };
        let mut m = Memory::default();
        let t = Instant::now();
        let d = decide(
            &s,
            Inputs {
                ready: 0,
                current: None,
                idle: Duration::from_secs(100),
                ..Default::default()
            },
            &mut m,
            t,
        );
        assert_eq!(d, 3);
        let d = decide(
            &s,
            Inputs {
                ready: 3,
                current: Some(3),
                idle: Duration::from_secs(100),
                ..Default::default()
            },
            &mut m,
            t,
        );
        assert!(d < 3, "{d}");
        // Pods ready before the first decision are kept through the grace period.
        let mut m = Memory::default();
        let d = decide(
            &settings(),
            Inputs {
                ready: 1,
                current: None,
                idle: Duration::ZERO,
                ..Default::default()
            },
            &mut m,
            t,
        );
        assert_eq!(d, 1);
    }
}
