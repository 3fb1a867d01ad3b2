//! Controllers inside control. Each one follows the same loop ([`drive`]): watch every change,
//! turn each change into the keys it affects, reconcile those keys (deduplicated, after a few
//! milliseconds so bursts coalesce), and resync everything periodically to heal anything missed.

mod certificates;
mod clusterrole;
pub mod cronhpa;
mod cronjob;
mod deployment;
mod disruption;
mod endpoints;
mod gc;
mod hpa;
pub mod job;
pub mod knative;
mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
mod quota;
mod replicaset;
mod scheduler;
mod statefulset;
mod token_secrets;
pub mod volumes;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::store::Event;

/// Start every controller; returns their tasks. `drivers` are the CSI drivers control
/// provisions, attaches and expands volumes with; with `cluster_cidr`, Nodes without pod CIDRs
/// get a block of it.
pub fn start(
    client: LocalClient,
    drivers: volumes::Drivers,
    cluster_cidr: Option<ipnet::Ipv4Net>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let attach_drivers = drivers.clone();
    let mut tasks = Vec::new();
    if let Some(cluster) = cluster_cidr {
        // Hosts that join from elsewhere: their Nodes get pod CIDRs, and a host that stops
        // renewing its Lease is taken for lost (`node_lifecycle`).
        tasks.push(tokio::spawn(node_lifecycle::run(client.clone())));
        tasks.push(tokio::spawn(drive(
            client.clone(),
            "node-ipam",
            node_ipam::interested,
            node_ipam::resync,
            move |c, k| Box::pin(done(node_ipam::reconcile(c, cluster, k))),
        )));
    }
    tasks.extend([
        tokio::spawn(drive(
            client.clone(),
            "persistentvolume",
            volumes::interested,
            volumes::resync,
            move |c, k| Box::pin(volumes::reconcile(c, drivers.clone(), k)),
        )),
        tokio::spawn(drive(
            client.clone(),
            "ephemeral-volume",
            volumes::ephemeral::interested,
            volumes::ephemeral::resync,
            |c, k| Box::pin(volumes::ephemeral::reconcile(c, k)),
        )),
        tokio::spawn(drive(
            client.clone(),
            "volume-attach",
            volumes::attach::interested,
            volumes::attach::resync,
            move |c, k| Box::pin(volumes::attach::reconcile(c, attach_drivers.clone(), k)),
        )),
        tokio::spawn(drive(
            client.clone(),
            "replicaset",
            replicaset::interested,
            replicaset::resync,
            |c, k| Box::pin(done(replicaset::reconcile(c, k))),
        )),
        tokio::spawn(drive(
            client.clone(),
            "deployment",
            deployment::interested,
            deployment::resync,
            |c, k| Box::pin(done(deployment::reconcile(c, k))),
        )),
        tokio::spawn(drive(
            client.clone(),
            "endpointslice",
            endpoints::interested,
            endpoints::resync,
            |c, k| Box::pin(done(endpoints::reconcile(c, k))),
        )),
        tokio::spawn(drive(
            client.clone(),
            "scheduler",
            scheduler::interested,
            scheduler::resync,
            |c, k| Box::pin(done(scheduler::reconcile(c, k))),
        )),
        tokio::spawn(drive(
            client.clone(),
            "namespace",
            namespace::interested,
            namespace::resync,
            |c, k| Box::pin(done(namespace::reconcile(c, k))),
        )),
        tokio::spawn(drive(
            client.clone(),
            "knative-service",
            knative::service::interested,
            knative::service::resync,
            |c, k| Box::pin(done(knative::service::reconcile(c, k))),
        )),
        tokio::spawn(drive(
            client.clone(),
            "knative-configuration",
            knative::configuration::interested,
            knative::configuration::resync,
            |c, k| Box::pin(done(knative::configuration::reconcile(c, k))),
        )),
        tokio::spawn(drive(
            client.clone(),
            "knative-revision",
            knative::revision::interested,
            knative::revision::resync,
            |c, k| Box::pin(done(knative::revision::reconcile(c, k))),
        )),
        tokio::spawn(drive(
            client.clone(),
            "knative-route",
            knative::route::interested,
            knative::route::resync,
            |c, k| Box::pin(done(knative::route::reconcile(c, k))),
        )),
        tokio::spawn(drive(client.clone(), "job", job::interested, job::resync, |c, k| {
            Box::pin(job::reconcile(c, k))
        })),
        tokio::spawn(drive(
            client.clone(),
            "cronjob",
            cronjob::interested,
            cronjob::resync,
            |c, k| Box::pin(cronjob::reconcile(c, k)),
        )),
        tokio::spawn(drive(
            client.clone(),
            "clusterrole-aggregation",
            clusterrole::interested,
            clusterrole::resync,
            |c, k| Box::pin(done(clusterrole::reconcile(c, k))),
        )),
        tokio::spawn(drive(
            client.clone(),
            "horizontal-pod-autoscaler",
            hpa::interested,
            hpa::resync,
            |c, k| Box::pin(hpa::reconcile(c, k)),
        )),
        tokio::spawn(drive(
            client.clone(),
            "statefulset",
            statefulset::interested,
            statefulset::resync,
            |c, k| Box::pin(statefulset::reconcile(c, k)),
        )),
        tokio::spawn(drive(
            client.clone(),
            "serviceaccount-token",
            token_secrets::interested,
            token_secrets::resync,
            |c, k| Box::pin(token_secrets::reconcile(c, k)),
        )),
        tokio::spawn(drive(
            client.clone(),
            "cron-horizontal-pod-autoscaler",
            cronhpa::interested,
            cronhpa::resync,
            |c, k| Box::pin(cronhpa::reconcile(c, k)),
        )),
        tokio::spawn(drive(
            client.clone(),
            "resourcequota",
            quota::interested,
            quota::resync,
            |c, k| Box::pin(done(quota::reconcile(c, k))),
        )),
        tokio::spawn(drive(
            client.clone(),
            "disruption",
            disruption::interested,
            disruption::resync,
            |c, k| Box::pin(done(disruption::reconcile(c, k))),
        )),
        tokio::spawn(drive(
            client.clone(),
            "certificatesigningrequest",
            certificates::interested,
            certificates::resync,
            |c, k| Box::pin(certificates::reconcile(c, k)),
        )),
        tokio::spawn(knative::autoscaler::run(client.clone())),
        tokio::spawn(drive(
            client,
            "garbage-collector",
            gc::interested,
            gc::resync,
            |c, k| Box::pin(done(gc::reconcile(c, k))),
        )),
    ]);
    tasks
}

pub use clusterrole::aggregate_all as aggregate_cluster_roles;

const RESYNC_EVERY: Duration = Duration::from_secs(30);
const COALESCE: Duration = Duration::from_millis(3);
/// A key whose reconcile lost a race (a conflict) is tried again this soon.
const RACE_RETRY: Duration = Duration::from_millis(20);
/// A key whose reconcile failed otherwise waits 20 ms, doubling with each failure in a row up to
/// this, so an object that keeps failing (refused by admission, say) does not spin its
/// controller; short enough that a fix to the object is taken up soon.
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a reconcile ends with: done, or done and to be looked at again after a while (a
/// deadline, a back-off, a schedule), whatever changes in between.
pub type Outcome = Result<Option<Duration>, ApiError>;

/// A reconcile that never asks to be looked at again.
async fn done(f: impl std::future::Future<Output = Result<(), ApiError>>) -> Outcome {
    f.await.map(|()| None)
}

type Interested = fn(&LocalClient, &Event) -> Vec<String>;
type Resync = fn(&LocalClient) -> Vec<String>;

/// How long a key waits after its `failures`-th failure in a row.
fn failure_backoff(failures: u32) -> Duration {
    RACE_RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(FAILURE_BACKOFF_MAX)
}

async fn drive<R>(client: LocalClient, name: &'static str, interested: Interested, resync: Resync, reconcile: R)
where
    R: Fn(LocalClient, String) -> BoxFuture<'static, Outcome> + Send + 'static,
{
    // Failures in a row per key, and the keys waiting out their back-off.
    let mut failures: std::collections::HashMap<String, u32> = Default::default();
    let mut waiting: Vec<(tokio::time::Instant, String)> = Vec::new();
    // Keys a reconcile asked to see again at a time; changes before then still reconcile them.
    let mut timers: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
    loop {
        let rev = client.state.store.revision();
        let Ok(mut watch) = client.state.store.watch("/", rev) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut dirty: BTreeSet<String> = resync(&client).into_iter().collect();
        let mut tick = tokio::time::interval(RESYNC_EVERY);
        tick.tick().await;
        loop {
            let next_due = waiting.iter().map(|(t, _)| *t).chain(timers.values().copied()).min();
            tokio::select! {
                ev = watch.next() => match ev {
                    Some(e) => dirty.extend(interested(&client, &e)),
                    // Fell behind the change stream: start over from a full resync.
                    None => break,
                },
                _ = tick.tick() => dirty.extend(resync(&client)),
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now)), if next_due.is_some() => {
                    let now = tokio::time::Instant::now();
                    let (due, later): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|(t, _)| *t <= now);
                    waiting = later;
                    dirty.extend(due.into_iter().map(|(_, k)| k));
                    timers.retain(|k, t| {
                        let due = *t <= now;
                        if due {
                            dirty.insert(k.clone());
                        }
                        !due
                    });
                }
                _ = tokio::time::sleep(COALESCE), if !dirty.is_empty() => {
                    let keys = std::mem::take(&mut dirty);
                    for key in keys {
                        // A key waiting out a back-off goes when it is due, not before.
                        if waiting.iter().any(|(_, k)| *k == key) {
                            continue;
                        }
                        let delay = match reconcile(client.clone(), key.clone()).await {
                            Ok(again) => {
                                failures.remove(&key);
                                match again {
                                    Some(after) => timers.insert(key, tokio::time::Instant::now() + after),
                                    None => timers.remove(&key),
                                };
                                continue;
                            }
                            Err(ApiError::NotFound { .. }) => {
                                failures.remove(&key);
                                continue;
                            }
                            Err(ApiError::Conflict { .. }) | Err(ApiError::AlreadyExists { .. }) => RACE_RETRY,
                            Err(e) => {
                                let n = failures.entry(key.clone()).or_default();
                                *n = n.saturating_add(1);
                                if *n == 1 || n.is_power_of_two() {
                                    tracing::warn!(controller = name, %key, failures = *n, error = %e, "reconcile failed");
                                }
                                failure_backoff(*n)
                            }
                        };
                        waiting.push((tokio::time::Instant::now() + delay, key));
                    }
                }
            }
        }
    }
}

/// `(namespace, name)` from a store key `/<group>/<plural>/<ns>/<name>` or `/<group>/<plural>/<name>`.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    let parts: Vec<&str> = key.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [_, _, ns, name] => (Some(ns), name),
        [_, _, name] => (None, name),
        _ => (None, ""),
    }
}

/// The group and plural of a kind with a scale that autoscalers set (HPA, CronHPA).
pub fn scalable(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "Deployment" => Some(("apps", "deployments")),
        "ReplicaSet" => Some(("apps", "replicasets")),
        "StatefulSet" => Some(("apps", "statefulsets")),
        "ReplicationController" => Some(("", "replicationcontrollers")),
        _ => None,
    }
}

pub fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

pub fn uid(v: &Value) -> &str {
    str_at(v, "/metadata/uid")
}

pub fn is_deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp").is_some()
}

/// Store keys of every object of a resource (a controller's resync).
pub fn all_keys(client: &LocalClient, group: &str, plural: &str) -> Vec<String> {
    keys_of(client, &client.served(group, plural))
}

/// Store keys of every object of a served resource.
pub fn keys_of(client: &LocalClient, res: &crate::api::registry::Served) -> Vec<String> {
    keys_where(client, res, None, &|_| true)
}

/// Store keys of the objects of a served resource (in `ns`, or everywhere) that `keep` keeps.
pub fn keys_where(
    client: &LocalClient,
    res: &crate::api::registry::Served,
    ns: Option<&str>,
    keep: &dyn Fn(&Value) -> bool,
) -> Vec<String> {
    client
        .list(res, ns, keep)
        .iter()
        .map(|s| {
            res.key(
                s.obj.pointer("/metadata/namespace").and_then(Value::as_str),
                str_at(&s.obj, "/metadata/name"),
            )
        })
        .collect()
}

/// Whether `child`'s controller is the object with uid `owner_uid`.
pub fn owned_by(child: &Value, owner_uid: &str) -> bool {
    controller_ref(child).is_some_and(|r| str_at(r, "/uid") == owner_uid)
}

/// A timestamp field of an object, if set and well-formed.
pub fn time_at(v: &Value, ptr: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The keys a change concerns for a controller of `owner_kind` (objects under `owner_prefix`):
/// the object itself, or, for a change to one of its children under `child_prefix`, the owner
/// named by the child's controller reference (before and after the change).
/// The event's key when it is an object of `group`'s `plural` itself (a controller of that kind
/// looks at its own objects only).
pub fn own_keys(ev: &Event, group: &str, plural: &str) -> Vec<String> {
    if ev.key.starts_with(&format!("/{group}/{plural}/")) {
        vec![ev.key.clone()]
    } else {
        Vec::new()
    }
}

pub fn owner_keys(ev: &Event, owner_prefix: &str, owner_kind: &str, child_prefix: &str) -> Vec<String> {
    if ev.key.starts_with(owner_prefix) {
        return vec![ev.key.clone()];
    }
    let mut keys = Vec::new();
    if ev.key.starts_with(child_prefix) {
        for obj in std::iter::once(&ev.obj).chain(ev.prev.iter()) {
            if let Some(r) = controller_ref(obj).filter(|r| r.get("kind") == Some(&json!(owner_kind))) {
                let k = format!(
                    "{owner_prefix}{}/{}",
                    str_at(obj, "/metadata/namespace"),
                    str_at(r, "/name")
                );
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
    }
    keys
}

/// The controller owner reference of an object, if any.
pub fn controller_ref(v: &Value) -> Option<&Value> {
    v.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("controller") == Some(&json!(true)))
}

pub fn owner_ref(api_version: &str, kind: &str, owner: &Value) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "name": str_at(owner, "/metadata/name"), "uid": uid(owner),
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// Whether a pod is counted as running or about to run (not finished, not being deleted).
pub fn pod_active(p: &Value) -> bool {
    !is_deleting(p) && !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed")
}

pub fn pod_ready(p: &Value) -> bool {
    condition_true(p, "Ready")
}

pub fn condition_true(v: &Value, ty: &str) -> bool {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c.get("type") == Some(&json!(ty)) && c.get("status") == Some(&json!("True")))
}

/// Record an Event about `obj`, as `kubectl describe` shows them.
pub async fn event(client: &LocalClient, obj: &Value, ty: &str, reason: &str, message: &str, component: &str) {
    let events = client.served("", "events");
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let now = crate::api::objects::now_rfc3339();
    let name = str_at(obj, "/metadata/name");
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": name, "namespace": ns,
            "uid": uid(obj), "resourceVersion": obj.pointer("/metadata/resourceVersion"),
        },
        "reason": reason, "message": message, "type": ty,
        "source": {"component": component},
        "reportingComponent": component, "reportingInstance": component,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    if let Err(e) = client.create(&events, Some(ns), ev).await {
        tracing::debug!(error = %e, "recording an event failed");
    }
}

/// Resolve an int-or-percent (`2`, `"25%"`) against `total`, rounding up or down.
pub fn int_or_percent(v: Option<&Value>, total: i64, round_up: bool, default: i64) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
        Some(Value::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) => {
                let x = p * total;
                if round_up { (x + 99) / 100 } else { x / 100 }
            }
            None => s.parse().unwrap_or(default),
        },
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_key_backs_off_doubling_to_a_cap() {
        assert_eq!(failure_backoff(1), Duration::from_millis(20));
        assert_eq!(failure_backoff(2), Duration::from_millis(40));
        assert_eq!(failure_backoff(5), Duration::from_millis(320));
        assert_eq!(failure_backoff(9), Duration::from_millis(5120).min(FAILURE_BACKOFF_MAX));
        assert_eq!(failure_backoff(20), FAILURE_BACKOFF_MAX);
        assert_eq!(failure_backoff(u32::MAX), FAILURE_BACKOFF_MAX);
    }

    #[test]
    fn keys_and_percentages() {
        assert_eq!(split_key("/apps/deployments/ns/web"), (Some("ns"), "web"));
        assert_eq!(split_key("/core/nodes/n1"), (None, "n1"));
        assert_eq!(int_or_percent(Some(&json!("25%")), 3, true, 0), 1);
        assert_eq!(int_or_percent(Some(&json!("25%")), 3, false, 0), 0);
        assert_eq!(int_or_percent(Some(&json!(2)), 3, false, 0), 2);
        assert_eq!(int_or_percent(None, 3, false, 7), 7);
    }
}
