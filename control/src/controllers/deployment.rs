//! Deployment → ReplicaSets: one ReplicaSet per pod template (named by its hash), rolled by
//! RollingUpdate (maxSurge/maxUnavailable) or Recreate; revisions for `kubectl rollout undo`.

use serde_json::{Value, json};

use super::{controller_ref, int_or_percent, is_deleting, owner_ref, split_key, str_at, uid};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::store::{Event, Stored};
use nodeless_types::keys;

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with("/apps/deployments/") {
        return vec![ev.key.clone()];
    }
    if ev.key.starts_with("/apps/replicasets/") {
        if let Some(r) = controller_ref(&ev.obj).filter(|r| r.get("kind") == Some(&json!("Deployment"))) {
            return vec![format!(
                "/apps/deployments/{}/{}",
                str_at(&ev.obj, "/metadata/namespace"),
                str_at(r, "/name")
            )];
        }
    }
    Vec::new()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    super::all_keys(client, "apps", "deployments")
}

const HASH_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The pod-template-hash of a template: short, stable, safe in names and labels.
pub fn template_hash(template: &Value) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(template.to_string().as_bytes());
    digest[..10]
        .iter()
        .map(|b| HASH_ALPHABET[*b as usize % HASH_ALPHABET.len()] as char)
        .collect()
}

fn without_hash_label(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(keys::POD_TEMPLATE_HASH);
    }
    t
}

fn revision(rs: &Value) -> i64 {
    rs.pointer(&format!(
        "/metadata/annotations/{}",
        keys::DEPLOYMENT_REVISION.replace('/', "~1")
    ))
    .and_then(Value::as_str)
    .and_then(|r| r.parse().ok())
    .unwrap_or(0)
}

fn spec_replicas(rs: &Value) -> i64 {
    rs.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)
}

fn status_i(v: &Value, field: &str) -> i64 {
    v.pointer(&format!("/status/{field}"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

async fn scale(client: &LocalClient, rs: &Stored, replicas: i64, d: &Value, max_surge: i64) -> Result<(), ApiError> {
    let res = client.served("apps", "replicasets");
    let mut new = (*rs.obj).clone();
    new["spec"]["replicas"] = json!(replicas);
    let ann = new["metadata"]
        .as_object_mut()
        .map(|m| m.entry("annotations").or_insert_with(|| json!({})));
    if let Some(a) = ann.and_then(Value::as_object_mut) {
        let desired = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        a.insert(keys::DESIRED_REPLICAS.into(), json!(desired.to_string()));
        a.insert(keys::MAX_REPLICAS.into(), json!((desired + max_surge).to_string()));
    }
    if *rs.obj != new {
        client.update(&res, rs, new).await?;
    }
    Ok(())
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    let d_res = client.served("apps", "deployments");
    let rs_res = client.served("apps", "replicasets");
    let (ns, name) = split_key(&key);
    let Some(d) = client.get(&d_res, ns, name) else {
        return Ok(());
    };
    if is_deleting(&d.obj) {
        return Ok(());
    }
    let d_uid = uid(&d.obj).to_string();
    let owned = |c: &LocalClient| {
        let mut v = c.list(&rs_res, ns, &|r| {
            controller_ref(r).is_some_and(|o| str_at(o, "/uid") == d_uid)
        });
        v.sort_by_key(|s| revision(&s.obj));
        v
    };
    let mut rss = owned(&client);
    let template = d.obj.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let replicas = d.obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let max_rev = rss.iter().map(|s| revision(&s.obj)).max().unwrap_or(0);
    let paused = d.obj.pointer("/spec/paused") == Some(&json!(true));
    let strategy = str_at(&d.obj, "/spec/strategy/type").to_string();
    let surge = if strategy == "Recreate" {
        0
    } else {
        int_or_percent(
            d.obj.pointer("/spec/strategy/rollingUpdate/maxSurge"),
            replicas,
            true,
            1,
        )
    };
    let mut unavail = int_or_percent(
        d.obj.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
        replicas,
        false,
        0,
    );
    if surge == 0 && unavail == 0 {
        unavail = 1;
    }

    let mut new_rs = rss
        .iter()
        .find(|s| without_hash_label(s.obj.pointer("/spec/template").unwrap_or(&Value::Null)) == template)
        .cloned();
    if !paused {
        match &new_rs {
            None => {
                let hash = template_hash(&template);
                let mut t = template.clone();
                t["metadata"]["labels"][keys::POD_TEMPLATE_HASH] = json!(hash);
                let mut selector = d.obj.pointer("/spec/selector").cloned().unwrap_or(json!({}));
                selector["matchLabels"][keys::POD_TEMPLATE_HASH] = json!(hash);
                let mut labels = template.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
                labels[keys::POD_TEMPLATE_HASH] = json!(hash);
                let rs = json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {
                        "name": format!("{name}-{hash}"),
                        "labels": labels,
                        "annotations": {
                            keys::DEPLOYMENT_REVISION: (max_rev + 1).to_string(),
                            keys::DESIRED_REPLICAS: replicas.to_string(),
                            keys::MAX_REPLICAS: (replicas + surge).to_string(),
                        },
                        "ownerReferences": [owner_ref("apps/v1", "Deployment", &d.obj)],
                    },
                    "spec": {
                        "replicas": 0,
                        "minReadySeconds": d.obj.pointer("/spec/minReadySeconds").cloned().unwrap_or(json!(0)),
                        "selector": selector,
                        "template": t,
                    },
                });
                client.create(&rs_res, ns, rs).await?;
                rss = owned(&client);
                new_rs = rss
                    .iter()
                    .find(|s| without_hash_label(s.obj.pointer("/spec/template").unwrap_or(&Value::Null)) == template)
                    .cloned();
            }
            Some(rs) if revision(&rs.obj) < max_rev => {
                // Rolled back to an older template: it becomes the newest revision again.
                let mut new = (*rs.obj).clone();
                new["metadata"]["annotations"][keys::DEPLOYMENT_REVISION] = json!((max_rev + 1).to_string());
                client.update(&rs_res, rs, new).await?;
                rss = owned(&client);
                new_rs = rss.iter().find(|s| uid(&s.obj) == uid(&rs.obj)).cloned();
            }
            Some(_) => {}
        }
    }
    let olds: Vec<Stored> = rss
        .iter()
        .filter(|s| new_rs.as_ref().is_none_or(|n| uid(&n.obj) != uid(&s.obj)))
        .cloned()
        .collect();

    if let (Some(new), false) = (&new_rs, paused) {
        if strategy == "Recreate" {
            for old in &olds {
                if spec_replicas(&old.obj) > 0 {
                    scale(&client, old, 0, &d.obj, surge).await?;
                }
            }
            let old_pods: i64 = olds.iter().map(|s| status_i(&s.obj, "replicas")).sum();
            if old_pods == 0 && spec_replicas(&new.obj) != replicas {
                scale(&client, new, replicas, &d.obj, surge).await?;
            }
        } else {
            let total: i64 = rss.iter().map(|s| spec_replicas(&s.obj)).sum();
            let new_spec = spec_replicas(&new.obj);
            let mut target = new_spec;
            if new_spec > replicas {
                target = replicas;
            } else if new_spec < replicas {
                let allowed = replicas + surge - total;
                if allowed > 0 {
                    target = replicas.min(new_spec + allowed);
                }
            }
            if target != new_spec {
                scale(&client, new, target, &d.obj, surge).await?;
            }
            // Scale old ReplicaSets down as far as availability allows, oldest first.
            let min_available = replicas - unavail;
            let all_pods: i64 = olds.iter().map(|s| spec_replicas(&s.obj)).sum::<i64>() + target;
            let new_unavailable = (target - status_i(&new.obj, "availableReplicas")).max(0);
            let mut budget = all_pods - min_available - new_unavailable;
            let mut remaining: Vec<(Stored, i64)> = olds.iter().map(|s| (s.clone(), spec_replicas(&s.obj))).collect();
            // First the old pods that are not available anyway.
            for (rs, reps) in remaining.iter_mut() {
                if budget <= 0 {
                    break;
                }
                let unhealthy = (*reps - status_i(&rs.obj, "availableReplicas")).max(0).min(budget);
                if unhealthy > 0 {
                    *reps -= unhealthy;
                    budget -= unhealthy;
                }
            }
            let available: i64 = olds.iter().map(|s| status_i(&s.obj, "availableReplicas")).sum::<i64>()
                + status_i(&new.obj, "availableReplicas");
            let mut can_remove = (available - min_available).max(0);
            for (rs, reps) in remaining.iter_mut() {
                let healthy_take = (*reps).min(can_remove).min(status_i(&rs.obj, "availableReplicas"));
                if healthy_take > 0 && can_remove > 0 {
                    *reps -= healthy_take;
                    can_remove -= healthy_take;
                }
            }
            for (rs, reps) in &remaining {
                if *reps != spec_replicas(&rs.obj) {
                    scale(&client, rs, *reps, &d.obj, surge).await?;
                }
            }
        }
        // Keep revisionHistoryLimit old, empty ReplicaSets.
        let limit = d
            .obj
            .pointer("/spec/revisionHistoryLimit")
            .and_then(Value::as_i64)
            .unwrap_or(10)
            .max(0) as usize;
        let empty: Vec<&Stored> = olds
            .iter()
            .filter(|s| spec_replicas(&s.obj) == 0 && status_i(&s.obj, "replicas") == 0)
            .collect();
        if empty.len() > limit {
            for rs in &empty[..empty.len() - limit] {
                client
                    .delete(&rs_res, ns, str_at(&rs.obj, "/metadata/name"), None)
                    .await?;
            }
        }
    }

    // Status and the revision annotation from the ReplicaSets as they are now.
    let rss = owned(&client);
    let new_now = new_rs
        .as_ref()
        .and_then(|n| rss.iter().find(|s| uid(&s.obj) == uid(&n.obj)));
    let sum = |f: &str| rss.iter().map(|s| status_i(&s.obj, f)).sum::<i64>();
    let total = sum("replicas");
    let updated = new_now.map(|n| status_i(&n.obj, "replicas")).unwrap_or(0);
    let available = sum("availableReplicas");
    let complete = updated == replicas && total == replicas && available == replicas;
    let min_available = replicas - unavail;
    let now = crate::api::objects::now_rfc3339();
    let old_conditions = d
        .obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let condition = |ty: &str, status: &str, reason: &str, message: String| {
        let prev = old_conditions.iter().find(|c| c.get("type") == Some(&json!(ty)));
        let same =
            prev.is_some_and(|p| p.get("status") == Some(&json!(status)) && p.get("reason") == Some(&json!(reason)));
        let (transition, update) = match prev {
            Some(p) if same => (
                p.get("lastTransitionTime").cloned().unwrap_or(json!(now)),
                p.get("lastUpdateTime").cloned().unwrap_or(json!(now)),
            ),
            Some(p) if p.get("status") == Some(&json!(status)) => {
                (p.get("lastTransitionTime").cloned().unwrap_or(json!(now)), json!(now))
            }
            _ => (json!(now), json!(now)),
        };
        json!({"type": ty, "status": status, "lastUpdateTime": update, "lastTransitionTime": transition, "reason": reason, "message": message})
    };
    let rs_name = new_now
        .map(|n| str_at(&n.obj, "/metadata/name").to_string())
        .unwrap_or_default();
    let progressing = if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
        )
    } else {
        condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{rs_name}\" is progressing."),
        )
    };
    let available_cond = if available >= min_available {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    let mut conditions = vec![available_cond, progressing];
    // A ReplicaSet whose pods the API refuses: its ReplicaFailure, as Kubernetes copies it up.
    if let Some(failure) = rss.iter().find_map(|s| {
        s.obj
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| str_at(c, "/type") == "ReplicaFailure" && str_at(c, "/status") == "True")
            })
    }) {
        conditions.push(condition(
            "ReplicaFailure",
            "True",
            str_at(failure, "/reason"),
            str_at(failure, "/message").to_string(),
        ));
    }
    let status = json!({
        "observedGeneration": d.obj.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": sum("readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": (replicas - available).max(0),
        "conditions": conditions,
    });
    let mut cur = d;
    if let Some(n) = new_now {
        let rev = revision(&n.obj).to_string();
        let ann_ptr = format!("/metadata/annotations/{}", keys::DEPLOYMENT_REVISION.replace('/', "~1"));
        if cur.obj.pointer(&ann_ptr) != Some(&json!(rev)) {
            let mut new = (*cur.obj).clone();
            let meta = new["metadata"].as_object_mut().expect("stored objects have metadata");
            let ann = meta.entry("annotations").or_insert_with(|| json!({}));
            ann[keys::DEPLOYMENT_REVISION] = json!(rev);
            client.update(&d_res, &cur, new).await?;
            cur = client
                .get(&d_res, ns, name)
                .ok_or_else(|| client.not_found(&d_res, name))?;
        }
    }
    // Timestamps in conditions alone are no reason to write.
    let current = cur.obj.get("status").cloned().unwrap_or(json!({}));
    if without_condition_times(&current) != without_condition_times(&status) {
        let mut new = (*cur.obj).clone();
        new["status"] = status;
        client.update_status(&d_res, &cur, new).await?;
    }
    Ok(())
}

fn without_condition_times(status: &Value) -> Value {
    let mut s = status.clone();
    for c in s
        .get_mut("conditions")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(m) = c.as_object_mut() {
            m.remove("lastUpdateTime");
            m.remove("lastTransitionTime");
        }
    }
    s
}
