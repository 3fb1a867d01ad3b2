//! The scheduler: binds pending pods to registered virtual nodes that are Ready, schedulable,
//! match the pod's nodeSelector and whose taints the pod tolerates. A pod that fits nowhere
//! stays Pending with a PodScheduled=False condition and an event that says why.

use serde_json::{Value, json};

use super::{condition_true, event, is_deleting, split_key, str_at, volumes};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::store::Event;

fn pending(p: &Value) -> bool {
    str_at(p, "/spec/nodeName").is_empty()
        && !is_deleting(p)
        && !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed")
}

pub fn interested(client: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with("/core/pods/") && ev.kind != crate::store::EventType::Deleted && pending(&ev.obj) {
        return vec![ev.key.clone()];
    }
    if ev.key.starts_with("/core/nodes/") {
        return resync(client);
    }
    // A claim bound or made: the pods waiting for it.
    if ev.key.starts_with("/core/persistentvolumeclaims/") {
        let ns = str_at(&ev.obj, "/metadata/namespace");
        let claim = str_at(&ev.obj, "/metadata/name");
        let pods = client.served("", "pods");
        return super::keys_where(client, &pods, Some(ns), &|p| {
            pending(p) && volumes::claim_names(p).iter().any(|c| c == claim)
        });
    }
    Vec::new()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    let pods = client.served("", "pods");
    client
        .list(&pods, None, &pending)
        .iter()
        .map(|s| {
            pods.key(
                s.obj.pointer("/metadata/namespace").and_then(Value::as_str),
                str_at(&s.obj, "/metadata/name"),
            )
        })
        .collect()
}

/// Whether one toleration tolerates one taint.
fn tolerates(t: &Value, taint: &Value) -> bool {
    let effect = str_at(t, "/effect");
    if !effect.is_empty() && effect != str_at(taint, "/effect") {
        return false;
    }
    let key = str_at(t, "/key");
    let exists = str_at(t, "/operator") == "Exists";
    if key.is_empty() {
        return exists;
    }
    key == str_at(taint, "/key") && (exists || str_at(t, "/value") == str_at(taint, "/value"))
}

/// Why a node cannot take the pod, or None when it can.
pub fn unfit(pod: &Value, node: &Value) -> Option<&'static str> {
    if !condition_true(node, "Ready") {
        return Some("node(s) were not ready");
    }
    if node.pointer("/spec/unschedulable") == Some(&json!(true)) {
        return Some("node(s) were unschedulable");
    }
    if let Some(sel) = pod.pointer("/spec/nodeSelector").and_then(Value::as_object) {
        let labels = node.pointer("/metadata/labels");
        if !sel.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v)) {
            return Some("node(s) didn't match Pod's node affinity/selector");
        }
    }
    let tolerations = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for taint in node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if !matches!(str_at(taint, "/effect"), "NoSchedule" | "NoExecute") {
            continue;
        }
        if !tolerations.iter().any(|t| tolerates(t, taint)) {
            return Some("node(s) had untolerated taint");
        }
    }
    None
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    let pods = client.served("", "pods");
    let nodes = client.served("", "nodes");
    let (ns, name) = split_key(&key);
    let Some(pod) = client.get(&pods, ns, name) else {
        return Ok(());
    };
    if !pending(&pod.obj) {
        return Ok(());
    }
    let all = client.list(&nodes, None, &|_| true);
    let claims = volumes::scheduling(&client, &pod.obj);
    if let volumes::Scheduling::Unschedulable(why) = &claims {
        let message = format!("0/{} nodes are available: {why}.", all.len());
        return unschedulable(&client, &pod, message).await;
    }
    let mut reasons: Vec<(&'static str, usize)> = Vec::new();
    let mut fit = Vec::new();
    for n in &all {
        match unfit(&pod.obj, &n.obj) {
            None => fit.push(n),
            Some(r) => match reasons.iter_mut().find(|(x, _)| *x == r) {
                Some((_, c)) => *c += 1,
                None => reasons.push((r, 1)),
            },
        }
    }
    if !fit.is_empty() {
        // A node already chosen for the pod's volumes is kept; otherwise, virtual nodes having
        // no real capacity limit, pods spread evenly by picking at random.
        let node = claims
            .chosen_node()
            .and_then(|chosen| fit.iter().find(|n| str_at(&n.obj, "/metadata/name") == chosen))
            .copied()
            .unwrap_or_else(|| fit[rand::random::<u64>() as usize % fit.len()]);
        let node_name = str_at(&node.obj, "/metadata/name");
        return match claims {
            volumes::Scheduling::Ready => client.bind(ns.unwrap_or("default"), name, node_name).await,
            // Claims waiting for their first consumer are provisioned where the pod goes; the
            // pod is bound once they are (their changes bring it back here).
            volumes::Scheduling::WaitForVolumes(waiting) => volumes::select_node(&client, &waiting, node_name).await,
            volumes::Scheduling::Unschedulable(_) => Ok(()),
        };
    }
    let message = if all.is_empty() {
        "0/0 nodes are available: no virtual node is registered.".to_string()
    } else {
        let parts: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
        format!("0/{} nodes are available: {}.", all.len(), parts.join(", "))
    };
    unschedulable(&client, &pod, message).await
}

/// Mark a pod Unschedulable with the reason (once per reason) and say so in an event.
async fn unschedulable(client: &LocalClient, pod: &crate::store::Stored, message: String) -> Result<(), ApiError> {
    let pods = client.served("", "pods");
    let conds = pod
        .obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let already = conds
        .iter()
        .any(|c| c.get("type") == Some(&json!("PodScheduled")) && c.get("message") == Some(&json!(message)));
    if already {
        return Ok(());
    }
    let mut new = (*pod.obj).clone();
    let mut conds: Vec<Value> = conds
        .into_iter()
        .filter(|c| c.get("type") != Some(&json!("PodScheduled")))
        .collect();
    conds.push(
        json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        "lastProbeTime": null, "lastTransitionTime": crate::api::objects::now_rfc3339()}),
    );
    new["status"]["conditions"] = json!(conds);
    client.update_status(&pods, pod, new).await?;
    event(
        client,
        &pod.obj,
        "Warning",
        "FailedScheduling",
        &message,
        "default-scheduler",
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: Value, taints: Value) -> Value {
        json!({"metadata": {"labels": labels}, "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    }

    #[test]
    fn selectors_and_taints() {
        let taint = json!([{"key": "virtual-kubelet.io/provider", "value": "nodeless", "effect": "NoSchedule"}]);
        let n = node(json!({"type": "virtual-kubelet"}), taint);
        let plain = json!({"spec": {}});
        assert_eq!(unfit(&plain, &n), Some("node(s) had untolerated taint"));
        let tolerant = json!({"spec": {"tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}]}});
        assert_eq!(unfit(&tolerant, &n), None);
        let wrong_sel = json!({"spec": {"nodeSelector": {"type": "other"}, "tolerations": [{"operator": "Exists"}]}});
        assert_eq!(
            unfit(&wrong_sel, &n),
            Some("node(s) didn't match Pod's node affinity/selector")
        );
        let not_ready = json!({"metadata": {}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        assert_eq!(unfit(&plain, &not_ready), Some("node(s) were not ready"));
    }
}
