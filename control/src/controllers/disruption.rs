//! PodDisruptionBudget status, as Kubernetes' disruption controller keeps it: how many of the
//! selected pods are expected (their controllers' replicas, or the pods themselves), how many are
//! healthy (Ready), how many must stay healthy (`minAvailable`, or expected less
//! `maxUnavailable`; percentages round up), and so how many voluntary disruptions (evictions)
//! are allowed now. The eviction subresource (`api::pods::evict`) reads and spends them.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{all_keys, condition_true, controller_ref, is_deleting, split_key, str_at};
use crate::api::error::ApiError;
use crate::api::eviction::selects;
use crate::api::local::LocalClient;
use crate::store::Event;

const PREFIX: &str = "/policy/poddisruptionbudgets/";
/// An eviction not yet seen through (the pod still there) counts against the budget this long.
const DISRUPTION_GRACE: chrono::TimeDelta = chrono::TimeDelta::minutes(2);

pub fn interested(client: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with(PREFIX) {
        return vec![ev.key.clone()];
    }
    if !ev.key.starts_with("/core/pods/") {
        return Vec::new();
    }
    let ns = str_at(&ev.obj, "/metadata/namespace");
    let (pdbs, _, _) = client.state.store.list(&format!("{PREFIX}{ns}/"), None, 0, &|_| true);
    pdbs.iter()
        .filter(|p| selects(&p.obj, &ev.obj) || ev.prev.as_ref().is_some_and(|prev| selects(&p.obj, prev)))
        .map(|p| format!("{PREFIX}{ns}/{}", str_at(&p.obj, "/metadata/name")))
        .collect()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    all_keys(client, "policy", "poddisruptionbudgets")
}

/// A count or a percentage of `total` (rounded up).
fn amount(v: &Value, total: i64) -> i64 {
    match v {
        Value::String(p) => p
            .strip_suffix('%')
            .and_then(|n| n.parse::<i64>().ok())
            .map(|n| (total * n + 99) / 100)
            .unwrap_or(0),
        other => other.as_i64().unwrap_or(0),
    }
}

/// The replicas of the controllers of `pods` (each counted once), or the pods when one has none.
fn expected(client: &LocalClient, ns: &str, pods: &[Value]) -> i64 {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for p in pods {
        let Some(owner) = controller_ref(p) else {
            return pods.len() as i64;
        };
        let (group, plural) = match str_at(owner, "/kind") {
            "ReplicaSet" => ("apps", "replicasets"),
            "StatefulSet" => ("apps", "statefulsets"),
            "ReplicationController" => ("", "replicationcontrollers"),
            "Job" => ("batch", "jobs"),
            _ => return pods.len() as i64,
        };
        let name = str_at(owner, "/name").to_string();
        if !seen.insert((plural, name.clone())) {
            continue;
        }
        let Some(served) = client.lookup(group, "v1", plural) else {
            return pods.len() as i64;
        };
        let Some(obj) = client.get(&served, Some(ns), &name) else {
            return pods.len() as i64;
        };
        let path = if plural == "jobs" {
            "/spec/parallelism"
        } else {
            "/spec/replicas"
        };
        total += obj.obj.pointer(path).and_then(Value::as_i64).unwrap_or(1);
    }
    total
}

/// The status a budget should have now.
pub fn status(client: &LocalClient, pdb: &Value) -> Value {
    let ns = str_at(pdb, "/metadata/namespace");
    let pod_res = client.served("", "pods");
    let pods: Vec<Value> = client
        .list(&pod_res, Some(ns), &|p| selects(pdb, p) && !is_deleting(p))
        .into_iter()
        .map(|s| (*s.obj).clone())
        .filter(|p| !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed"))
        .collect();
    let healthy = pods.iter().filter(|p| condition_true(p, "Ready")).count() as i64;
    let spec = pdb.get("spec").cloned().unwrap_or(Value::Null);
    let (min, max) = (
        spec.get("minAvailable").filter(|v| !v.is_null()),
        spec.get("maxUnavailable").filter(|v| !v.is_null()),
    );
    let (expected, desired) = match (min, max) {
        (Some(m @ Value::Number(_)), _) => (pods.len() as i64, amount(m, 0)),
        (Some(m), _) => {
            let e = expected(client, ns, &pods);
            (e, amount(m, e))
        }
        (None, Some(m)) => {
            let e = expected(client, ns, &pods);
            (e, (e - amount(m, e)).max(0))
        }
        (None, None) => (pods.len() as i64, pods.len() as i64),
    };
    // Evictions granted whose pods are not gone yet still count against the budget.
    let now = chrono::Utc::now();
    let mut disrupted = serde_json::Map::new();
    for (pod, at) in pdb
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let when = at.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let still = pods.iter().any(|p| str_at(p, "/metadata/name") == pod);
        if still && when.is_some_and(|w| now.signed_duration_since(w) < DISRUPTION_GRACE) {
            disrupted.insert(pod.clone(), at.clone());
        }
    }
    let allowed = (healthy - desired - disrupted.len() as i64).max(0);
    let (ok, reason, message) = if allowed > 0 {
        (true, "SufficientPods", String::new())
    } else {
        (false, "InsufficientPods", String::new())
    };
    let old = pdb.pointer("/status/conditions/0");
    let since = old
        .filter(|c| str_at(c, "/status") == if ok { "True" } else { "False" })
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(crate::api::objects::now_rfc3339()));
    json!({
        "observedGeneration": pdb.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "disruptedPods": disrupted,
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "conditions": [{"type": "DisruptionAllowed", "status": if ok { "True" } else { "False" }, "reason": reason,
            "message": message, "observedGeneration": pdb.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "lastTransitionTime": since}],
    })
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    let (ns, name) = split_key(&key);
    let served = client.served("policy", "poddisruptionbudgets");
    let Some(pdb) = client.get(&served, ns, name) else {
        return Ok(());
    };
    let status = status(&client, &pdb.obj);
    if pdb.obj.get("status") == Some(&status) {
        return Ok(());
    }
    let mut new = (*pdb.obj).clone();
    new["status"] = status;
    client.update_status(&served, &pdb, new).await.map(|_| ())
}
