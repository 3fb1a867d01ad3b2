//! StatefulSet (`apps/v1`) → pods with stable identities, as Kubernetes' controller keeps them:
//! pod `<set>-<ordinal>` for each ordinal from `spec.ordinals.start` on, its hostname its own
//! name and its subdomain the set's `serviceName` (so the headless Service gives it the DNS
//! name `<pod>.<service>.<ns>.svc.<zone>`), labelled with its name, index and revision.
//!
//! - `OrderedReady` (the default): ordinal n is made only once every lower one is Running and
//!   Ready, and removed (scaling down) from the highest, one at a time, only while the others
//!   are; `Parallel` makes and removes them all at once.
//! - Each template is a revision (`<set>-<hash>`), kept as a ControllerRevision (what `kubectl
//!   rollout history|undo` read). `RollingUpdate` replaces pods not at the update revision from
//!   the highest ordinal down to the partition, one at a time, each after the ones above are
//!   Ready again; pods below the partition keep (and are remade at) the current revision.
//!   `OnDelete` replaces nothing: a pod the user deletes comes back at the update revision.
//! - A pod that failed or finished is deleted and made again under the same name.
//! - With `minReadySeconds`, a pod counts (for the next ordinal, the rollout and
//!   `availableReplicas`) once it has been Ready that long; the set is looked at again then.
//! - `volumeClaimTemplates`: each ordinal gets its claims `<template>-<set>-<ordinal>`, made
//!   before its pod and named in the pod's volumes, so a replaced pod finds its disk again. The
//!   claims outlive the pods; `persistentVolumeClaimRetentionPolicy` says whether they go with
//!   the set (`whenDeleted: Delete`: the set owns them, the garbage collector takes them) and
//!   when the set scales down (`whenScaled: Delete`).

use serde_json::{Value, json};
use sha2::Digest;

use super::{Outcome, all_keys, is_deleting, owned_by, owner_keys, owner_ref, pod_ready, split_key, str_at, uid};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::store::Event;

const PREFIX: &str = "/apps/statefulsets/";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
pub const REVISION_LABEL: &str = "controller-revision-hash";

pub fn interested(client: &LocalClient, ev: &Event) -> Vec<String> {
    let mut keys = owner_keys(ev, PREFIX, "StatefulSet", "/core/pods/");
    if keys.is_empty() {
        keys = owner_keys(ev, PREFIX, "StatefulSet", "/apps/controllerrevisions/");
    }
    // A claim gone: a set waiting to remake it (its ordinal was blocked on its deletion).
    if ev.key.starts_with("/core/persistentvolumeclaims/") && ev.kind == crate::store::EventType::Deleted {
        let sets = client.served("apps", "statefulsets");
        let ns = str_at(&ev.obj, "/metadata/namespace");
        keys.extend(super::keys_where(client, &sets, Some(ns), &|_| true));
    }
    keys
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    all_keys(client, "apps", "statefulsets")
}

/// The revision name of a template: `<set>-<hash of the template>`.
fn revision_name(set: &str, template: &Value) -> String {
    let digest = sha2::Sha256::digest(template.to_string().as_bytes());
    format!("{set}-{}", &hex::encode(digest)[..10])
}

/// A pod's ordinal, from its name `<set>-<n>`.
fn ordinal(set: &str, pod: &Value) -> Option<i64> {
    str_at(pod, "/metadata/name")
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

fn running_and_ready(p: &Value) -> bool {
    !is_deleting(p) && str_at(p, "/status/phase") == "Running" && pod_ready(p)
}

/// Running, Ready, and Ready for at least `min_ready` seconds.
fn available(p: &Value, min_ready: i64) -> bool {
    running_and_ready(p) && (min_ready <= 0 || super::replicaset::ready_for(p) >= min_ready)
}

fn pod_for(sts: &Value, template: &Value, revision: &str, n: i64) -> Value {
    let set = str_at(sts, "/metadata/name");
    let name = format!("{set}-{n}");
    let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
    if !meta.is_object() {
        meta = json!({});
    }
    meta["name"] = json!(name);
    meta["ownerReferences"] = json!([owner_ref("apps/v1", "StatefulSet", sts)]);
    if !meta.get("labels").is_some_and(Value::is_object) {
        meta["labels"] = json!({});
    }
    meta["labels"][POD_NAME_LABEL] = json!(name);
    meta["labels"][POD_INDEX_LABEL] = json!(n.to_string());
    meta["labels"][REVISION_LABEL] = json!(revision);
    if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
        m.remove("generateName");
    }
    let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
    let claims = claim_templates(sts);
    if !claims.is_empty() {
        let mut volumes: Vec<Value> = spec
            .get("volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| !claims.iter().any(|c| str_at(c, "/metadata/name") == str_at(v, "/name")))
            .collect();
        for c in &claims {
            let t = str_at(c, "/metadata/name");
            volumes.push(json!({"name": t, "persistentVolumeClaim": {"claimName": claim_name(t, set, n)}}));
        }
        spec["volumes"] = json!(volumes);
    }
    spec["hostname"] = json!(name);
    let service = str_at(sts, "/spec/serviceName");
    if !service.is_empty() {
        spec["subdomain"] = json!(service);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

fn claim_templates(sts: &Value) -> Vec<Value> {
    sts.pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The claim of template `t` for ordinal `n`: `<template>-<set>-<ordinal>`, Kubernetes' name.
fn claim_name(t: &str, set: &str, n: i64) -> String {
    format!("{t}-{set}-{n}")
}

/// Make the claims of ordinal `n` that do not exist yet, from the set's templates. Whether the
/// ordinal's pod may be made: not while one of its claims is being deleted (the pod would hold
/// it, and it would never go), as Kubernetes waits.
async fn ensure_claims(client: &LocalClient, sts: &Value, ns: &str, n: i64) -> Result<bool, ApiError> {
    let pvcs = client.served("", "persistentvolumeclaims");
    let set = str_at(sts, "/metadata/name");
    let delete_with_set = str_at(sts, "/spec/persistentVolumeClaimRetentionPolicy/whenDeleted") == "Delete";
    for t in claim_templates(sts) {
        let name = claim_name(str_at(&t, "/metadata/name"), set, n);
        if let Some(c) = client.get(&pvcs, Some(ns), &name) {
            if is_deleting(&c.obj) {
                tracing::debug!(namespace = %ns, claim = %name, "waiting for the claim being deleted to go");
                return Ok(false);
            }
            continue;
        }
        let mut meta = t.get("metadata").cloned().filter(Value::is_object).unwrap_or(json!({}));
        meta["name"] = json!(name);
        if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        // The set's selector labels, so the claims are found as the set's.
        if let Some(sel) = sts.pointer("/spec/selector/matchLabels").and_then(Value::as_object) {
            if !meta.get("labels").is_some_and(Value::is_object) {
                meta["labels"] = json!({});
            }
            for (k, v) in sel {
                meta["labels"][k] = v.clone();
            }
        }
        if delete_with_set {
            meta["ownerReferences"] = json!([owner_ref("apps/v1", "StatefulSet", sts)]);
        }
        let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
            "spec": t.get("spec").cloned().unwrap_or(json!({}))});
        match client.create(&pvcs, Some(ns), claim).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// With `whenScaled: Delete`, the claims of an ordinal the set scaled away from go with it.
async fn delete_scaled_claims(client: &LocalClient, sts: &Value, ns: &str, n: i64) -> Result<(), ApiError> {
    if str_at(sts, "/spec/persistentVolumeClaimRetentionPolicy/whenScaled") != "Delete" {
        return Ok(());
    }
    let pvcs = client.served("", "persistentvolumeclaims");
    let set = str_at(sts, "/metadata/name");
    for t in claim_templates(sts) {
        let name = claim_name(str_at(&t, "/metadata/name"), set, n);
        match client.delete(&pvcs, Some(ns), &name, None).await {
            Ok(()) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The ControllerRevisions of a set, by name: their templates and revision numbers.
fn revisions(client: &LocalClient, ns: &str, sts_uid: &str) -> Vec<(String, Value, i64)> {
    let res = client.served("apps", "controllerrevisions");
    client
        .list(&res, Some(ns), &|r| owned_by(r, sts_uid))
        .iter()
        .map(|r| {
            (
                str_at(&r.obj, "/metadata/name").to_string(),
                r.obj.pointer("/data/spec/template").cloned().unwrap_or(Value::Null),
                r.obj.get("revision").and_then(Value::as_i64).unwrap_or(0),
            )
        })
        .collect()
}

/// Record the set's template as a ControllerRevision (or make an old one the newest again, as
/// `rollout undo` does), and drop the oldest beyond `revisionHistoryLimit` that no pod uses.
/// Returns the revisions other than `name` that are kept (one listing serves both).
async fn record_revision(
    client: &LocalClient,
    sts: &Value,
    ns: &str,
    name: &str,
    template: &Value,
    in_use: &[String],
) -> Result<Vec<(String, Value, i64)>, ApiError> {
    let res = client.served("apps", "controllerrevisions");
    let known = revisions(client, ns, uid(sts));
    let newest = known.iter().map(|r| r.2).max().unwrap_or(0);
    let mut stored = template.clone();
    stored["$patch"] = json!("replace");
    match known.iter().find(|r| r.0 == name) {
        Some((_, _, n)) if *n == newest => {}
        Some(_) => {
            if let Some(cur) = client.get(&res, Some(ns), name) {
                let mut new = (*cur.obj).clone();
                new["revision"] = json!(newest + 1);
                client.update(&res, &cur, new).await?;
            }
        }
        None => {
            let mut labels = sts.pointer("/spec/selector/matchLabels").cloned().unwrap_or(json!({}));
            labels[REVISION_LABEL] = json!(name);
            let obj = json!({
                "apiVersion": "apps/v1", "kind": "ControllerRevision",
                "metadata": {"name": name, "namespace": ns, "labels": labels,
                    "ownerReferences": [owner_ref("apps/v1", "StatefulSet", sts)]},
                "data": {"spec": {"template": stored}},
                "revision": newest + 1,
            });
            match client.create(&res, Some(ns), obj).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let limit = sts
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_i64)
        .unwrap_or(10)
        .max(0) as usize;
    let mut old: Vec<(String, i64)> = known
        .iter()
        .filter(|r| r.0 != name && !in_use.contains(&r.0))
        .map(|r| (r.0.clone(), r.2))
        .collect();
    old.sort_by_key(|r| r.1);
    let extra = old.len().saturating_sub(limit);
    let dropped: Vec<String> = old.into_iter().take(extra).map(|r| r.0).collect();
    for n in &dropped {
        client.delete(&res, Some(ns), n, None).await?;
    }
    Ok(known
        .into_iter()
        .filter(|r| r.0 != name && !dropped.contains(&r.0))
        .collect())
}

pub async fn reconcile(client: LocalClient, key: String) -> Outcome {
    let sets = client.served("apps", "statefulsets");
    let pods_res = client.served("", "pods");
    let (ns, name) = split_key(&key);
    let ns = ns.unwrap_or("default").to_string();
    let Some(cur) = client.get(&sets, Some(&ns), name) else {
        return Ok(None);
    };
    let sts = &cur.obj;
    if is_deleting(sts) {
        return Ok(None);
    }
    let spec = sts.get("spec").cloned().unwrap_or(json!({}));
    let replicas = spec.get("replicas").and_then(Value::as_i64).unwrap_or(1).max(0);
    let start = spec
        .pointer("/ordinals/start")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .max(0);
    let end = start + replicas;
    let parallel = str_at(&spec, "/podManagementPolicy") == "Parallel";
    let min_ready = spec.get("minReadySeconds").and_then(Value::as_i64).unwrap_or(0);
    let ok = |p: &Value| available(p, min_ready);
    let on_delete = str_at(&spec, "/updateStrategy/type") == "OnDelete";
    let partition = spec
        .pointer("/updateStrategy/rollingUpdate/partition")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let template = spec.get("template").cloned().unwrap_or(json!({}));
    let update_rev = revision_name(name, &template);
    let current_rev = sts
        .pointer("/status/currentRevision")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .unwrap_or(&update_rev)
        .to_string();
    let sts_uid = uid(sts).to_string();
    let pods: Vec<Value> = client
        .list(&pods_res, Some(&ns), &|p| owned_by(p, &sts_uid))
        .iter()
        .map(|s| (*s.obj).clone())
        .collect();
    let in_use: Vec<String> = pods
        .iter()
        .map(|p| str_at(p, &format!("/metadata/labels/{REVISION_LABEL}")).to_string())
        .chain([current_rev.clone(), update_rev.clone()])
        .collect();
    let kept = record_revision(&client, sts, &ns, &update_rev, &template, &in_use).await?;
    let by_ordinal = |n: i64| pods.iter().find(|p| ordinal(name, p) == Some(n));
    let revision_of = |p: &Value| str_at(p, &format!("/metadata/labels/{REVISION_LABEL}")).to_string();
    // The template a pod of ordinal n is made from: the update revision's at or above the
    // partition, the current one's below it (kept in its ControllerRevision).
    let current_template = kept
        .into_iter()
        .find(|r| r.0 == current_rev)
        .map(|r| r.1)
        .filter(|t| t.is_object())
        .map(|mut t| {
            if let Some(m) = t.as_object_mut() {
                m.remove("$patch");
            }
            t
        });
    let make = |n: i64| {
        if on_delete || n - start >= partition || current_template.is_none() {
            pod_for(sts, &template, &update_rev, n)
        } else {
            let t = current_template.as_ref().unwrap_or(&template);
            pod_for(sts, t, &current_rev, n)
        }
    };

    // Pods that failed or finished go, to be made again under their name.
    for p in &pods {
        if !is_deleting(p) && matches!(str_at(p, "/status/phase"), "Failed" | "Succeeded") {
            client
                .delete(&pods_res, Some(&ns), str_at(p, "/metadata/name"), None)
                .await?;
        }
    }
    let mut blocked = false;
    // Make what is missing, in order (OrderedReady: wait for each to be Running and Ready).
    for n in start..end {
        match by_ordinal(n) {
            None => {
                if !ensure_claims(&client, sts, &ns, n).await? {
                    blocked = true;
                    if parallel {
                        continue;
                    }
                    break;
                }
                match client.create(&pods_res, Some(&ns), make(n)).await {
                    Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
                if !parallel {
                    blocked = true;
                    break;
                }
            }
            Some(p) if !parallel && !ok(p) => {
                blocked = true;
                break;
            }
            Some(_) => {}
        }
    }
    // Remove what is beyond the replicas, from the highest ordinal.
    let mut extra: Vec<&Value> = pods
        .iter()
        .filter(|p| ordinal(name, p).is_none_or(|n| n < start || n >= end))
        .collect();
    extra.sort_by_key(|p| std::cmp::Reverse(ordinal(name, p).unwrap_or(i64::MAX)));
    for p in extra {
        if is_deleting(p) {
            if !parallel {
                blocked = true;
                break;
            }
            continue;
        }
        if !parallel && blocked {
            break;
        }
        client
            .delete(&pods_res, Some(&ns), str_at(p, "/metadata/name"), None)
            .await?;
        if let Some(n) = ordinal(name, p) {
            delete_scaled_claims(&client, sts, &ns, n).await?;
        }
        if !parallel {
            blocked = true;
            break;
        }
    }
    // Roll: the highest ordinal at or above the partition not at the update revision, once
    // every pod in range is Running and Ready.
    let all_ready = (start..end).all(|n| by_ordinal(n).is_some_and(ok));
    if !on_delete && !blocked && all_ready {
        if let Some(p) = (start..end)
            .rev()
            .filter(|n| n - start >= partition)
            .filter_map(by_ordinal)
            .find(|p| revision_of(p) != update_rev)
        {
            client
                .delete(&pods_res, Some(&ns), str_at(p, "/metadata/name"), None)
                .await?;
        }
    }

    // Status, from the pods as they are now.
    let pods: Vec<Value> = client
        .list(&pods_res, Some(&ns), &|p| owned_by(p, &sts_uid))
        .iter()
        .map(|s| (*s.obj).clone())
        .collect();
    let live: Vec<&Value> = pods.iter().filter(|p| !is_deleting(p)).collect();
    let count = |f: &dyn Fn(&Value) -> bool| live.iter().filter(|p| f(p)).count() as i64;
    let ready = count(&|p| running_and_ready(p));
    let available_now = count(&|p| ok(p));
    let updated = count(&|p| revision_of(p) == update_rev);
    let current = count(&|p| revision_of(p) == current_rev);
    let done =
        updated == replicas && ready == replicas && live.len() as i64 == replicas && (on_delete || partition <= 0);
    let mut status = json!({
        "observedGeneration": sts.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": available_now,
        "currentReplicas": if done { updated } else { current },
        "updatedReplicas": updated,
        "currentRevision": if done { update_rev.clone() } else { current_rev },
        "updateRevision": update_rev,
        "collisionCount": 0,
    });
    if let Some(c) = sts.pointer("/status/conditions") {
        status["conditions"] = c.clone();
    }
    if sts.get("status") != Some(&status) {
        let mut new = (**sts).clone();
        new["status"] = status;
        client.update_status(&sets, &cur, new).await?;
    }
    // Ready pods not yet available are counted again once they have been Ready long enough.
    Ok((ready > available_now).then(|| std::time::Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_named_by_ordinal_with_their_identity() {
        let sts = json!({"metadata": {"name": "web", "uid": "u1"}, "spec": {"serviceName": "nginx"}});
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let p = pod_for(&sts, &t, "web-abc", 2);
        assert_eq!(p["metadata"]["name"], "web-2");
        assert_eq!(p["spec"]["hostname"], "web-2");
        assert_eq!(p["spec"]["subdomain"], "nginx");
        assert_eq!(p["metadata"]["labels"][POD_INDEX_LABEL], "2");
        assert_eq!(p["metadata"]["labels"][POD_NAME_LABEL], "web-2");
        assert_eq!(p["metadata"]["labels"][REVISION_LABEL], "web-abc");
        assert_eq!(p["metadata"]["labels"]["app"], "web");
        assert_eq!(ordinal("web", &p), Some(2));
        assert_eq!(ordinal("we", &p), None, "web-2 is not a pod of set we");
    }

    #[test]
    fn min_ready_seconds_hold_a_pod_back_until_it_has_been_ready_that_long() {
        let since = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
        let pod = json!({"metadata": {"name": "web-0"}, "status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": since}]}});
        assert!(available(&pod, 0));
        assert!(available(&pod, 3));
        assert!(!available(&pod, 10), "ready for 5 s, not 10");
        let unready = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}});
        assert!(!available(&unready, 0));
    }

    #[test]
    fn a_revision_follows_the_template() {
        let a = json!({"spec": {"containers": [{"image": "x:1"}]}});
        let b = json!({"spec": {"containers": [{"image": "x:2"}]}});
        assert_eq!(revision_name("web", &a), revision_name("web", &a.clone()));
        assert_ne!(revision_name("web", &a), revision_name("web", &b));
        assert!(revision_name("web", &a).starts_with("web-"));
    }
}
