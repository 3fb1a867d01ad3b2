//! ReplicaSet → Pods: keep `spec.replicas` pods running from the template, report status. The
//! legacy ReplicationController (core/v1, selector a plain map) is run by the same code. A pod the
//! API refuses (a quota, a LimitRange, a missing ServiceAccount) is a `FailedCreate` warning
//! event and a `ReplicaFailure` condition naming why, as Kubernetes reports it, and is tried
//! again with a back-off; the condition goes once the pods can be made.

use futures::future::join_all;
use serde_json::{Value, json};

use super::{
    all_keys, event, is_deleting, owned_by, owner_keys, owner_ref, pod_active, pod_ready, split_key, str_at, uid,
};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::store::Event;

/// Pods created per round, concurrently, so their writes share durable commits.
const CREATE_CHUNK: usize = 64;

/// The kinds that keep a number of pods from a template.
pub struct Replicated {
    group: &'static str,
    plural: &'static str,
    api_version: &'static str,
    kind: &'static str,
}

pub const REPLICA_SET: Replicated = Replicated {
    group: "apps",
    plural: "replicasets",
    api_version: "apps/v1",
    kind: "ReplicaSet",
};

pub const REPLICATION_CONTROLLER: Replicated = Replicated {
    group: "",
    plural: "replicationcontrollers",
    api_version: "v1",
    kind: "ReplicationController",
};

impl Replicated {
    fn prefix(&self) -> String {
        let g = if self.group.is_empty() { "core" } else { self.group };
        format!("/{g}/{}/", self.plural)
    }
}

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    let mut keys = interested_in(&REPLICA_SET, ev);
    keys.extend(interested_in(&REPLICATION_CONTROLLER, ev));
    keys
}

fn interested_in(r: &Replicated, ev: &Event) -> Vec<String> {
    owner_keys(ev, &r.prefix(), r.kind, "/core/pods/")
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    let mut keys = all_keys(client, REPLICA_SET.group, REPLICA_SET.plural);
    keys.extend(all_keys(
        client,
        REPLICATION_CONTROLLER.group,
        REPLICATION_CONTROLLER.plural,
    ));
    keys
}

/// Seconds since the pod's Ready condition turned true.
pub(super) fn ready_for(p: &Value) -> i64 {
    let since = p
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type") == Some(&json!("Ready")))
        .and_then(|c| c.get("lastTransitionTime").and_then(Value::as_str))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    since
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        .unwrap_or(0)
}

fn pod_from_template(r: &Replicated, rs: &Value) -> Value {
    let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
    meta["generateName"] = json!(format!("{}-", str_at(rs, "/metadata/name")));
    meta["ownerReferences"] = json!([owner_ref(r.api_version, r.kind, rs)]);
    if let Some(m) = meta.as_object_mut() {
        m.remove("name");
        m.remove("namespace");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template.get("spec").cloned().unwrap_or(json!({}))})
}

/// Which pods to remove first: unscheduled, then pending, then not ready, then the newest.
fn deletion_rank(p: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let scheduled = u8::from(!str_at(p, "/spec/nodeName").is_empty());
    let running = u8::from(str_at(p, "/status/phase") == "Running");
    let ready = u8::from(pod_ready(p));
    (
        scheduled,
        running,
        ready,
        std::cmp::Reverse(str_at(p, "/metadata/creationTimestamp").to_string()),
    )
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    let r = if key.starts_with(&REPLICATION_CONTROLLER.prefix()) {
        &REPLICATION_CONTROLLER
    } else {
        &REPLICA_SET
    };
    let rs_res = client.served(r.group, r.plural);
    let pods_res = client.served("", "pods");
    let (ns, name) = split_key(&key);
    let Some(rs) = client.get(&rs_res, ns, name) else {
        return Ok(());
    };
    if is_deleting(&rs.obj) {
        return Ok(());
    }
    let rs_uid = uid(&rs.obj).to_string();
    let pods = client.list(&pods_res, ns, &|p| owned_by(p, &rs_uid));
    let mut active: Vec<&Value> = pods.iter().map(|s| &*s.obj).filter(|p| pod_active(p)).collect();
    let desired = rs
        .obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0) as usize;
    // A create the API refused (a 4xx other than a race): why, for the status and the event.
    let mut refused: Option<ApiError> = None;
    if active.len() < desired {
        let missing = desired - active.len();
        for chunk_start in (0..missing).step_by(CREATE_CHUNK) {
            let n = CREATE_CHUNK.min(missing - chunk_start);
            let creates = (0..n).map(|_| client.create(&pods_res, ns, pod_from_template(r, &rs.obj)));
            for r in join_all(creates).await {
                match r {
                    Ok(_) => {}
                    Err(e) if (400..500).contains(&e.code()) && e.code() != 409 => {
                        refused.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            if refused.is_some() {
                break;
            }
        }
    } else if active.len() > desired {
        active.sort_by_key(|p| deletion_rank(p));
        let doomed: Vec<String> = active[..active.len() - desired]
            .iter()
            .map(|p| str_at(p, "/metadata/name").to_string())
            .collect();
        let deletes = doomed.iter().map(|n| client.delete(&pods_res, ns, n, None));
        for r in join_all(deletes).await {
            r?;
        }
    }
    // Status from what exists now.
    let pods = client.list(&pods_res, ns, &|p| owned_by(p, &rs_uid));
    let active: Vec<&Value> = pods.iter().map(|s| &*s.obj).filter(|p| pod_active(p)).collect();
    let min_ready = rs
        .obj
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let ready = active.iter().filter(|p| pod_ready(p)).count();
    let available = active
        .iter()
        .filter(|p| pod_ready(p) && ready_for(p) >= min_ready)
        .count();
    let selector_labels = rs
        .obj
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    let fully_labeled = active
        .iter()
        .filter(|p| {
            selector_labels
                .as_object()
                .into_iter()
                .flatten()
                .all(|(k, v)| p.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let mut status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.obj.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
    });
    if let Some(e) = &refused {
        let message = e.to_string();
        let was = rs
            .obj
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| str_at(c, "/type") == "ReplicaFailure"));
        let since = match was {
            Some(c) if str_at(c, "/message") == message => c["lastTransitionTime"].clone(),
            _ => json!(crate::api::objects::now_rfc3339()),
        };
        status["conditions"] = json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": message, "lastTransitionTime": since}]);
    }
    if rs.obj.get("status") != Some(&status) {
        let mut new = (*rs.obj).clone();
        new["status"] = status;
        client.update_status(&rs_res, &rs, new).await?;
    }
    if let Some(e) = refused {
        event(
            &client,
            &rs.obj,
            "Warning",
            "FailedCreate",
            &format!("Error creating: {e}"),
            "replicaset-controller",
        )
        .await;
        return Err(e);
    }
    // Pods that are ready but not yet available (minReadySeconds) are counted again on the
    // next change or the periodic resync.
    Ok(())
}
