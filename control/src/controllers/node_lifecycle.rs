//! Node lifecycle: a Node whose Lease (`kube-node-lease/<node>`) stops being renewed is lost.
//!
//! As Kubernetes' node lifecycle controller does: when a Node's Lease has not changed for its
//! `leaseDurationSeconds` (by this replica's clock, from when it saw the Lease last change, so
//! clocks need not agree) the Node's Ready condition becomes `Unknown`, it is tainted
//! `node.kubernetes.io/unreachable` (NoSchedule and NoExecute), and its pods' Ready conditions
//! become False at once, so EndpointSlices stop sending to them. Pods are then evicted (deleted)
//! once their `tolerationSeconds` for the NoExecute taint have passed since it was added (300 s
//! for a pod that does not say, as DefaultTolerationSeconds gives every pod); their ReplicaSets
//! replace them on the hosts that are left. A Lease renewed
//! again takes the taints off and makes the Node Ready.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{condition_true, event, is_deleting, str_at};
use crate::api::local::LocalClient;

/// The taint of a Node whose Lease lapsed.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// How long a pod that does not say stays on a lost node (Kubernetes' DefaultTolerationSeconds
/// admission writes this into every pod; here it is applied at eviction, and pods are left as
/// they were written).
const DEFAULT_TOLERATION_SECONDS: i64 = 300;
/// How often Leases and evictions are looked at.
const EVERY: Duration = Duration::from_secs(1);
/// A Node whose Lease does not say how long it lasts.
const DEFAULT_LEASE: Duration = Duration::from_secs(40);

pub async fn run(client: LocalClient) {
    let nodes = client.served("", "nodes");
    let leases = client.served("coordination.k8s.io", "leases");
    let pods = client.served("", "pods");
    // Per node: the Lease's revision as last seen, and when this replica saw it change.
    let mut seen: HashMap<String, (u64, Instant)> = HashMap::new();
    loop {
        tokio::time::sleep(EVERY).await;
        let now = Instant::now();
        for node in client.list(&nodes, None, &|_| true) {
            let name = str_at(&node.obj, "/metadata/name").to_string();
            let Some(lease) = client.get(&leases, Some("kube-node-lease"), &name) else {
                // A node that never took a Lease (an older node, a test's stand-in) is not judged.
                continue;
            };
            let since = match seen.get(&name) {
                Some((rev, at)) if *rev == lease.rev => *at,
                _ => {
                    seen.insert(name.clone(), (lease.rev, now));
                    now
                }
            };
            let duration = lease
                .obj
                .pointer("/spec/leaseDurationSeconds")
                .and_then(Value::as_u64)
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_LEASE);
            let lapsed = now.duration_since(since) >= duration;
            let tainted = has_unreachable_taint(&node.obj);
            if lapsed && !tainted {
                if let Err(e) = mark_unreachable(&client, &name).await {
                    tracing::warn!(node = %name, error = %e, "marking a lost node");
                    continue;
                }
                for pod in client.list(&pods, None, &|p| str_at(p, "/spec/nodeName") == name) {
                    mark_pod_not_ready(&client, &pod).await;
                }
            } else if !lapsed && tainted {
                if let Err(e) = mark_reachable(&client, &name).await {
                    tracing::warn!(node = %name, error = %e, "marking a node that came back");
                }
            }
        }
        seen.retain(|name, _| client.get(&nodes, None, name).is_some());
        evict(&client).await;
    }
}

fn has_unreachable_taint(node: &Value) -> bool {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .is_some_and(|t| t.iter().any(|t| str_at(t, "/key") == UNREACHABLE))
}

/// Set the Node's Ready condition (on the newest copy) and its unreachable taints, added or
/// taken off.
async fn set_node(client: &LocalClient, name: &str, reachable: bool) -> Result<(), String> {
    let nodes = client.served("", "nodes");
    let stamp = crate::api::objects::now_rfc3339();
    let current = client.get(&nodes, None, name).ok_or("gone")?;
    let mut obj = (*current.obj).clone();
    let mut taints: Vec<Value> = obj
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    taints.retain(|t| str_at(t, "/key") != UNREACHABLE);
    if !reachable {
        for effect in ["NoSchedule", "NoExecute"] {
            taints.push(json!({"key": UNREACHABLE, "effect": effect, "timeAdded": stamp}));
        }
    }
    obj["spec"]["taints"] = json!(taints);
    client.update(&nodes, &current, obj).await.map_err(|e| e.to_string())?;
    let current = client.get(&nodes, None, name).ok_or("gone")?;
    let mut obj = (*current.obj).clone();
    let (status, reason, message) = if reachable {
        ("True", "KubeletReady", "the node renews its Lease again")
    } else {
        ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
    };
    if let Some(conds) = obj.pointer_mut("/status/conditions").and_then(Value::as_array_mut) {
        for c in conds.iter_mut() {
            if c["type"] == "Ready" && c["status"] != status {
                c["status"] = json!(status);
                c["reason"] = json!(reason);
                c["message"] = json!(message);
                c["lastTransitionTime"] = json!(stamp);
            }
        }
    }
    client
        .update_status(&nodes, &current, obj)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

async fn mark_unreachable(client: &LocalClient, name: &str) -> Result<(), String> {
    set_node(client, name, false).await?;
    tracing::warn!(node = %name, "the node stopped renewing its Lease: tainted {UNREACHABLE}");
    if let Some(node) = client.get(&client.served("", "nodes"), None, name) {
        event(
            client,
            &node.obj,
            "Normal",
            "NodeNotReady",
            &format!("Node {name} status is now: NodeNotReady (its Lease lapsed)"),
            "node-controller",
        )
        .await;
    }
    Ok(())
}

async fn mark_reachable(client: &LocalClient, name: &str) -> Result<(), String> {
    set_node(client, name, true).await?;
    tracing::info!(node = %name, "the node renews its Lease again");
    Ok(())
}

/// The pod's Ready condition False (it runs on a node nobody hears from).
async fn mark_pod_not_ready(client: &LocalClient, pod: &crate::store::Stored) {
    if !condition_true(&pod.obj, "Ready") {
        return;
    }
    let pods = client.served("", "pods");
    let mut obj = (*pod.obj).clone();
    let stamp = crate::api::objects::now_rfc3339();
    if let Some(conds) = obj.pointer_mut("/status/conditions").and_then(Value::as_array_mut) {
        for c in conds.iter_mut() {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                c["status"] = json!("False");
                c["reason"] = json!("NodeNotReady");
                c["lastTransitionTime"] = json!(stamp);
            }
        }
    }
    if let Err(e) = client.update_status(&pods, pod, obj).await {
        tracing::debug!(error = %e, "marking a pod on a lost node not ready");
    }
}

/// Delete pods on nodes with a NoExecute taint they do not tolerate, or tolerate for a time that
/// has passed.
async fn evict(client: &LocalClient) {
    let nodes = client.served("", "nodes");
    let pods = client.served("", "pods");
    let now = chrono::Utc::now();
    for node in client.list(&nodes, None, &|n| has_unreachable_taint(n)) {
        let name = str_at(&node.obj, "/metadata/name");
        let taints: Vec<Value> = node
            .obj
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .map(|t| t.iter().filter(|t| t["effect"] == "NoExecute").cloned().collect())
            .unwrap_or_default();
        for pod in client.list(&pods, None, &|p| str_at(p, "/spec/nodeName") == name && !is_deleting(p)) {
            let due = taints.iter().any(|taint| {
                let added = chrono::DateTime::parse_from_rfc3339(str_at(taint, "/timeAdded"))
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .unwrap_or(now);
                match toleration_seconds(&pod.obj, taint) {
                    None => now.signed_duration_since(added).num_seconds() >= DEFAULT_TOLERATION_SECONDS,
                    Some(None) => false,
                    Some(Some(secs)) => now.signed_duration_since(added).num_seconds() >= secs,
                }
            });
            if !due {
                continue;
            }
            let ns = str_at(&pod.obj, "/metadata/namespace");
            let pod_name = str_at(&pod.obj, "/metadata/name");
            event(
                client,
                &pod.obj,
                "Normal",
                "TaintManagerEviction",
                &format!("Marking for deletion Pod {ns}/{pod_name}"),
                "taint-eviction-controller",
            )
            .await;
            if let Err(e) = client.delete(&pods, Some(ns), pod_name, None).await {
                tracing::warn!(pod = %pod_name, error = %e, "evicting a pod from a lost node");
            }
        }
    }
}

/// How the pod tolerates a NoExecute taint: it does not say (None: the default applies), for
/// ever (Some(None)), or for so many seconds.
fn toleration_seconds(pod: &Value, taint: &Value) -> Option<Option<i64>> {
    let tolerations = pod.pointer("/spec/tolerations").and_then(Value::as_array)?;
    let mut best: Option<Option<i64>> = None;
    for t in tolerations {
        let effect = str_at(t, "/effect");
        if !effect.is_empty() && effect != "NoExecute" {
            continue;
        }
        let key_matches = match str_at(t, "/key") {
            "" => str_at(t, "/operator") == "Exists",
            k => k == str_at(taint, "/key"),
        };
        let value_matches = str_at(t, "/operator") == "Exists" || str_at(t, "/value") == str_at(taint, "/value");
        if !key_matches || !value_matches {
            continue;
        }
        let secs = t.get("tolerationSeconds").and_then(Value::as_i64);
        best = Some(match (best, secs) {
            (None, s) => s,
            (Some(None), _) | (_, None) => None,
            (Some(Some(a)), Some(b)) => Some(a.max(b)),
        });
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerations_for_the_unreachable_taint() {
        let taint = json!({"key": UNREACHABLE, "effect": "NoExecute"});
        let pod = |t: Value| json!({"spec": {"tolerations": t}});
        assert_eq!(toleration_seconds(&json!({"spec": {}}), &taint), None);
        assert_eq!(
            toleration_seconds(
                &pod(
                    json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}])
                ),
                &taint
            ),
            Some(Some(5))
        );
        assert_eq!(
            toleration_seconds(&pod(json!([{"operator": "Exists"}])), &taint),
            Some(None)
        );
        assert_eq!(
            toleration_seconds(&pod(json!([{"key": "other", "operator": "Exists"}])), &taint),
            None
        );
        assert_eq!(
            toleration_seconds(
                &pod(json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"}])),
                &taint
            ),
            None
        );
    }
}
