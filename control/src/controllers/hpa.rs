//! HorizontalPodAutoscaler (`autoscaling/v2`) on CPU and memory, with Kubernetes' algorithm:
//! every [`SYNC_EVERY`] each autoscaler reads its target's pods' usage (`crate::usage`, what the
//! nodes measure), proposes `ceil(current × usage / target)` replicas per metric (nothing changes
//! within a 10% tolerance), takes the largest proposal, stabilizes it over the behavior's window
//! (the highest recommendation of the last 5 minutes before scaling down, by default), limits the
//! change by the behavior's policies (by default up to double or +4 pods per 15 s, down to any
//! number), keeps it within min/max, and sets the target's replicas through its scale.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nodeless_types::quantity::parse_quantity;
use serde_json::{Value, json};

use super::{Outcome, all_keys, event, own_keys, split_key, str_at};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::api::select::LabelSelector;
use crate::store::Event;

const GROUP: &str = "autoscaling";
const PLURAL: &str = "horizontalpodautoscalers";
/// kube-controller-manager's `--horizontal-pod-autoscaler-sync-period`.
pub const SYNC_EVERY: Duration = Duration::from_secs(15);
/// Usage within this share of the target changes nothing.
const TOLERANCE: f64 = 0.1;
const DEFAULT_DOWN_WINDOW: i64 = 300;

/// What the controller remembers between syncs, per autoscaler: its recommendations and the
/// scale changes it made, with when (as kube-controller-manager keeps them, in memory).
#[derive(Default)]
struct Memory {
    recommendations: Vec<(Instant, i64)>,
    changes: Vec<(Instant, i64)>,
}

static MEMORY: std::sync::LazyLock<Mutex<HashMap<String, Memory>>> = std::sync::LazyLock::new(Default::default);

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    own_keys(ev, GROUP, PLURAL)
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    all_keys(client, GROUP, PLURAL)
}

/// A target's scale: the resource, its replicas and its pod selector.
fn target_of(
    client: &LocalClient,
    ns: &str,
    r: &Value,
) -> Result<(std::sync::Arc<crate::api::registry::Served>, crate::store::Stored), String> {
    let kind = str_at(r, "/kind");
    let name = str_at(r, "/name");
    let Some((group, plural)) = super::scalable(kind) else {
        return Err(format!("the HPA controller does not scale {kind:?}"));
    };
    let served = client
        .lookup(group, "v1", plural)
        .ok_or_else(|| format!("{kind} is not served"))?;
    let obj = client
        .get(&served, Some(ns), name)
        .ok_or_else(|| format!("{kind} {ns}/{name} not found"))?;
    Ok((served, obj))
}

/// One metric's view: usage summed over the pods that report it, requests summed likewise.
struct Reading {
    /// Proposed replicas.
    proposal: i64,
    /// The status entry (`currentMetrics[]`).
    current: Value,
}

fn milli(q: Option<&Value>) -> Option<i64> {
    parse_quantity(q?.as_str()?).ok().and_then(|q| i64::try_from(q.0).ok())
}

/// The pod's request of a resource, in milli-units (millicores, or milli-bytes).
fn request(pod: &Value, resource: &str) -> Option<i64> {
    let containers = pod.pointer("/spec/containers")?.as_array()?;
    let mut total = 0;
    for c in containers {
        total += milli(c.pointer(&format!("/resources/requests/{resource}")))?;
    }
    Some(total)
}

fn ceil_div(a: f64) -> i64 {
    (a - 1e-9).ceil().max(0.0) as i64
}

/// The proposal for a usage `ratio` of the target across `n` pods: none within the tolerance.
fn propose(ratio: f64, n: f64, current: i64) -> i64 {
    if (ratio - 1.0).abs() <= TOLERANCE {
        current
    } else {
        ceil_div(ratio * n)
    }
}

/// A `Pods` metric: Knative's request metrics, `concurrency` (requests in flight) and `rps`
/// (requests per second), which ingress-l7 measures for each Knative revision (the pods'
/// `serving.knative.dev/revision` label says which), averaged over the revision's stable window
/// as Knative's autoscaler serves them to its HPAs. Other pods have no such metrics: an error
/// that says so.
fn read_request_metric(client: &LocalClient, metric: &Value, pods: &[Value], current: i64) -> Result<Reading, String> {
    let name = str_at(metric, "/pods/metric/name");
    let rps = match name {
        "rps" => true,
        "concurrency" => false,
        _ => {
            return Err(format!(
                "unable to get pods metric {name:?}: the metrics served are Knative's request metrics, concurrency and rps"
            ));
        }
    };
    let target = metric.pointer("/pods/target").cloned().unwrap_or(Value::Null);
    if str_at(&target, "/type") != "AverageValue" {
        return Err(format!(
            "target type {:?} is not supported for pods metrics: only AverageValue is",
            str_at(&target, "/type")
        ));
    }
    let want = milli(target.get("averageValue")).ok_or("averageValue is not a quantity")?;
    if want <= 0 {
        return Err("averageValue must be above 0".into());
    }
    let label = format!(
        "/metadata/labels/{}",
        nodeless_types::knative::REVISION.replace('/', "~1")
    );
    let mut revisions: Vec<(&str, &str)> = pods
        .iter()
        .filter_map(|p| Some((str_at(p, "/metadata/namespace"), p.pointer(&label)?.as_str()?)))
        .collect();
    revisions.sort_unstable();
    revisions.dedup();
    if revisions.is_empty() {
        return Err(format!(
            "unable to get pods metric {name}: requests are measured for Knative revisions' pods only"
        ));
    }
    let mut total = 0.0;
    for (ns, rev) in &revisions {
        total += crate::controllers::knative::autoscaler::revision_metric(client, ns, rev, rps)
            .ok_or_else(|| format!("unable to get pods metric {name}: revision {ns}/{rev} has no PodAutoscaler"))?;
    }
    let ready = pods.iter().filter(|p| super::pod_ready(p)).count().max(1) as f64;
    let average = total / ready;
    let wanted = want as f64 / 1000.0;
    Ok(Reading {
        proposal: propose(average / wanted, ready, current),
        current: json!({"type": "Pods", "pods": {"metric": {"name": name}, "current": {
            "averageValue": format!("{}m", (average * 1000.0).round() as i64)}}}),
    })
}

fn read_metric(client: &LocalClient, metric: &Value, pods: &[Value], current: i64) -> Result<Reading, String> {
    let ty = str_at(metric, "/type");
    if ty == "Pods" {
        return read_request_metric(client, metric, pods, current);
    }
    if ty != "Resource" && ty != "ContainerResource" {
        return Err(format!(
            "metric type {ty:?} is not supported: Resource metrics (cpu, memory) and Pods metrics (Knative's concurrency and rps) are"
        ));
    }
    let key = if ty == "Resource" {
        "resource"
    } else {
        "containerResource"
    };
    let resource = str_at(metric, &format!("/{key}/name"));
    if resource != "cpu" && resource != "memory" {
        return Err(format!(
            "resource {resource:?} is not measured: only cpu and memory are"
        ));
    }
    if ty == "ContainerResource" {
        return Err("ContainerResource metrics are not supported yet".into());
    }
    let target = metric
        .pointer(&format!("/{key}/target"))
        .cloned()
        .unwrap_or(Value::Null);
    // Usage (milli-units) and requests of each pod with a reading.
    let mut used = 0i64;
    let mut requested = 0i64;
    let mut measured = 0i64;
    let mut missing_requests = false;
    for p in pods {
        let ns = str_at(p, "/metadata/namespace");
        let name = str_at(p, "/metadata/name");
        let Some((cores, bytes)) = client.state.usage.pod_total(ns, name) else {
            continue;
        };
        let u = if resource == "cpu" {
            (cores * 1000.0).round() as i64
        } else {
            bytes as i64 * 1000
        };
        used += u;
        measured += 1;
        match request(p, resource) {
            Some(r) => requested += r,
            None => missing_requests = true,
        }
    }
    if measured == 0 {
        return Err(format!(
            "unable to get metrics for resource {resource}: no metrics returned from the resource metrics API"
        ));
    }
    let quantity = |m: i64| {
        if resource == "cpu" {
            format!("{m}m")
        } else {
            format!("{}", m / 1000)
        }
    };
    match str_at(&target, "/type") {
        "Utilization" => {
            if missing_requests || requested == 0 {
                return Err(format!("missing request for {resource}"));
            }
            let want = target.get("averageUtilization").and_then(Value::as_i64).unwrap_or(80) as f64;
            let utilization = used as f64 * 100.0 / requested as f64;
            Ok(Reading {
                proposal: propose(utilization / want, measured as f64, current),
                current: json!({"type": "Resource", "resource": {"name": resource, "current": {
                    "averageUtilization": utilization.round() as i64, "averageValue": quantity(used / measured)}}}),
            })
        }
        "AverageValue" => {
            let want = milli(target.get("averageValue")).ok_or("averageValue is not a quantity")?;
            if want <= 0 {
                return Err("averageValue must be above 0".into());
            }
            Ok(Reading {
                proposal: propose(used as f64 / (want as f64 * measured as f64), measured as f64, current),
                current: json!({"type": "Resource", "resource": {"name": resource, "current": {"averageValue": quantity(used / measured)}}}),
            })
        }
        other => Err(format!("target type {other:?} is not supported for resource metrics")),
    }
}

/// The change the behavior's policies allow from `current` toward `desired`.
fn limit(rules: &Value, up: bool, current: i64, desired: i64, changes: &[(Instant, i64)], now: Instant) -> i64 {
    let select = rules.get("selectPolicy").and_then(Value::as_str).unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let policies = rules
        .get("policies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut bounds = Vec::new();
    for p in &policies {
        let period = Duration::from_secs(p.get("periodSeconds").and_then(Value::as_u64).unwrap_or(15));
        let value = p.get("value").and_then(Value::as_i64).unwrap_or(0);
        // Replicas at the start of the period: undo the changes made within it.
        let moved: i64 = changes
            .iter()
            .filter(|(t, d)| now.duration_since(*t) < period && (*d > 0) == up)
            .map(|(_, d)| d)
            .sum();
        let start = current - moved;
        let bound = match (p.get("type").and_then(Value::as_str), up) {
            (Some("Pods"), true) => start + value,
            (Some("Pods"), false) => start - value,
            (_, true) => (start as f64 * (1.0 + value as f64 / 100.0)).ceil() as i64,
            (_, false) => (start as f64 * (1.0 - value as f64 / 100.0)).ceil() as i64,
        };
        bounds.push(bound);
    }
    if bounds.is_empty() {
        return desired;
    }
    let pick = match (select, up) {
        ("Min", true) | ("Max", false) => bounds.iter().min(),
        _ => bounds.iter().max(),
    };
    let b = *pick.unwrap_or(&desired);
    if up {
        desired.min(b.max(current))
    } else {
        desired.max(b.min(current))
    }
}

fn behavior_rules(hpa: &Value, up: bool) -> Value {
    let key = if up { "scaleUp" } else { "scaleDown" };
    let mut r = hpa
        .pointer(&format!("/spec/behavior/{key}"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    if r.get("policies").is_none() {
        r["policies"] = if up {
            json!([{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}])
        } else {
            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}])
        };
    }
    if r.get("stabilizationWindowSeconds").is_none() {
        r["stabilizationWindowSeconds"] = json!(if up { 0 } else { DEFAULT_DOWN_WINDOW });
    }
    r
}

fn condition(ty: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({"type": ty, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message,
        "lastTransitionTime": crate::api::objects::now_rfc3339()})
}

pub async fn reconcile(client: LocalClient, key: String) -> Outcome {
    let (ns, name) = split_key(&key);
    let ns = ns.unwrap_or("default").to_string();
    let served = client.lookup(GROUP, "v2", PLURAL).ok_or(ApiError::NoRoute)?;
    let Some(hpa) = client.get(&served, Some(&ns), name) else {
        MEMORY.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        return Ok(None);
    };
    let obj = &hpa.obj;
    let min = obj.pointer("/spec/minReplicas").and_then(Value::as_i64).unwrap_or(1);
    let max = obj.pointer("/spec/maxReplicas").and_then(Value::as_i64).unwrap_or(min);
    let (target_res, target) = match target_of(
        &client,
        &ns,
        obj.pointer("/spec/scaleTargetRef").unwrap_or(&Value::Null),
    ) {
        Ok(t) => t,
        Err(why) => {
            let mut status = obj.get("status").cloned().unwrap_or_else(|| json!({}));
            status["conditions"] = json!([condition("AbleToScale", false, "FailedGetScale", &why)]);
            write_status(&client, &served, &hpa, status).await?;
            return Ok(Some(SYNC_EVERY));
        }
    };
    let current = target
        .obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let selector = LabelSelector::from_object(target.obj.pointer("/spec/selector").unwrap_or(&Value::Null));
    let pod_res = client.served("", "pods");
    let pods: Vec<Value> = client
        .list(&pod_res, Some(&ns), &|p| selector.matches(p) && super::pod_active(p))
        .into_iter()
        .map(|s| (*s.obj).clone())
        .collect();
    let metrics = obj
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut proposals = Vec::new();
    let mut current_metrics = Vec::new();
    let mut failure = None;
    for m in &metrics {
        match read_metric(&client, m, &pods, current) {
            Ok(r) => {
                proposals.push(r.proposal);
                current_metrics.push(r.current);
            }
            Err(e) => {
                let reason = if str_at(m, "/type") == "Pods" {
                    "FailedGetPodsMetric"
                } else {
                    "FailedGetResourceMetric"
                };
                failure = Some((reason, e));
            }
        }
    }
    let mut status = json!({
        "currentReplicas": current,
        "desiredReplicas": obj.pointer("/status/desiredReplicas").cloned().unwrap_or(json!(current)),
        "currentMetrics": current_metrics,
    });
    if let Some(t) = obj.pointer("/status/lastScaleTime") {
        status["lastScaleTime"] = t.clone();
    }
    if proposals.is_empty() {
        let (reason, why) = failure.unwrap_or(("InvalidMetricSourceType", "no metrics to scale on".into()));
        status["conditions"] = json!([
            condition(
                "AbleToScale",
                true,
                "SucceededGetScale",
                "the HPA controller was able to get the target's current scale"
            ),
            condition(
                "ScalingActive",
                false,
                reason,
                &format!("the HPA was unable to compute the replica count: {why}")
            ),
        ]);
        write_status(&client, &served, &hpa, status).await?;
        return Ok(Some(SYNC_EVERY));
    }
    let proposal = proposals.into_iter().max().unwrap_or(current);
    let now = Instant::now();
    let (desired, limited) = {
        let mut memory = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
        let mem = memory.entry(key.clone()).or_default();
        let up_rules = behavior_rules(obj, true);
        let down_rules = behavior_rules(obj, false);
        let window = |r: &Value| Duration::from_secs(r["stabilizationWindowSeconds"].as_u64().unwrap_or(0));
        let keep = window(&up_rules).max(window(&down_rules)).max(Duration::from_secs(600));
        mem.recommendations.retain(|(t, _)| now.duration_since(*t) <= keep);
        mem.changes
            .retain(|(t, _)| now.duration_since(*t) <= Duration::from_secs(1800));
        mem.recommendations.push((now, proposal));
        // Stabilize: no higher than the lowest recent recommendation when going up, no lower
        // than the highest when going down.
        let within = |w: Duration| {
            mem.recommendations
                .iter()
                .filter(move |(t, _)| now.duration_since(*t) <= w)
                .map(|(_, r)| *r)
        };
        let up_cap = within(window(&up_rules)).min().unwrap_or(proposal);
        let down_floor = within(window(&down_rules)).max().unwrap_or(proposal);
        let stabilized = if proposal > current {
            up_cap.max(current)
        } else if proposal < current {
            down_floor.min(current)
        } else {
            current
        };
        let limited = if stabilized > current {
            limit(&up_rules, true, current, stabilized, &mem.changes, now)
        } else if stabilized < current {
            limit(&down_rules, false, current, stabilized, &mem.changes, now)
        } else {
            current
        };
        let bounded = limited.clamp(min, max.max(min));
        (bounded, bounded != stabilized)
    };
    status["desiredReplicas"] = json!(desired);
    let mut conditions = vec![
        condition(
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size",
        ),
        condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            "the HPA was able to successfully calculate a replica count",
        ),
    ];
    if limited {
        conditions.push(condition(
            "ScalingLimited",
            true,
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count, or limited by the behavior",
        ));
    } else {
        conditions.push(condition(
            "ScalingLimited",
            false,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        ));
    }
    if desired != current {
        let mut new = (*target.obj).clone();
        new["spec"]["replicas"] = json!(desired);
        client.update(&target_res, &target, new).await?;
        MEMORY
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .changes
            .push((now, desired - current));
        status["lastScaleTime"] = json!(crate::api::objects::now_rfc3339());
        let reason = if desired > current { "above" } else { "below" };
        // Kubernetes' wording, for the first metric.
        let which = current_metrics
            .first()
            .map(|m| match str_at(m, "/type") {
                "Pods" => format!("pods metric {}", str_at(m, "/pods/metric/name")),
                _ => format!(
                    "{} resource utilization (percentage of request)",
                    str_at(m, "/resource/name")
                ),
            })
            .unwrap_or_default();
        event(
            &client,
            obj,
            "Normal",
            "SuccessfulRescale",
            &format!("New size: {desired}; reason: {which} {reason} target"),
            "horizontal-pod-autoscaler",
        )
        .await;
    }
    status["conditions"] = json!(conditions);
    write_status(&client, &served, &hpa, status).await?;
    Ok(Some(SYNC_EVERY))
}

async fn write_status(
    client: &LocalClient,
    served: &crate::api::registry::Served,
    hpa: &crate::store::Stored,
    mut status: Value,
) -> Result<(), ApiError> {
    // Conditions keep their transition time while their status stays.
    let old = hpa
        .obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in status
        .get_mut("conditions")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(o) = old
            .iter()
            .find(|o| o.get("type") == c.get("type") && o.get("status") == c.get("status"))
        {
            c["lastTransitionTime"] = o["lastTransitionTime"].clone();
        }
    }
    if hpa.obj.get("status") == Some(&status) {
        return Ok(());
    }
    let mut new = (*hpa.obj).clone();
    new["status"] = status;
    client.update_status(served, hpa, new).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_limit_as_kubernetes_defaults_do() {
        let now = Instant::now();
        let hpa = json!({"spec": {}});
        let up = behavior_rules(&hpa, true);
        // Up to double or +4, whichever is more, per 15 s.
        assert_eq!(limit(&up, true, 1, 10, &[], now), 5);
        assert_eq!(limit(&up, true, 10, 40, &[], now), 20);
        // What was added within the period counts against it.
        assert_eq!(limit(&up, true, 5, 10, &[(now, 4)], now), 5);
        let down = behavior_rules(&hpa, false);
        assert_eq!(down["stabilizationWindowSeconds"], 300);
        assert_eq!(limit(&down, false, 10, 1, &[], now), 1);
        let slow = json!({"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]});
        assert_eq!(limit(&slow, false, 10, 1, &[], now), 9);
        let off = json!({"selectPolicy": "Disabled"});
        assert_eq!(limit(&off, true, 3, 9, &[], now), 3);
    }
}
