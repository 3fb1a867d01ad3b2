//! Generic ephemeral volumes, as Kubernetes' ephemeral volume controller makes them: a pod's
//! `ephemeral` volume gets a claim `<pod>-<volume>` from its `volumeClaimTemplate`, owned by
//! the pod, so it is provisioned like any claim and goes (through the garbage collector) with
//! the pod. A claim of that name the pod does not own is never taken: the pod waits, and an
//! event says why.

use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::controllers::{Outcome, event, is_deleting, owned_by, owner_ref, split_key, str_at, uid};
use crate::store::Event;

fn ephemeral_volumes(pod: &Value) -> Vec<&Value> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("ephemeral").is_some())
        .collect()
}

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with("/core/pods/") && !ephemeral_volumes(&ev.obj).is_empty() {
        return vec![ev.key.clone()];
    }
    Vec::new()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    let pods = client.served("", "pods");
    super::super::keys_where(client, &pods, None, &|p| !ephemeral_volumes(p).is_empty())
}

pub async fn reconcile(client: LocalClient, key: String) -> Outcome {
    let (ns, name) = split_key(&key);
    let ns = ns.unwrap_or_default();
    let pods = client.served("", "pods");
    let Some(pod) = client.get(&pods, Some(ns), name) else {
        return Ok(None);
    };
    if is_deleting(&pod.obj) {
        return Ok(None);
    }
    let pvcs = client.served("", "persistentvolumeclaims");
    for v in ephemeral_volumes(&pod.obj) {
        let claim = format!("{name}-{}", str_at(v, "/name"));
        if let Some(existing) = client.get(&pvcs, Some(ns), &claim) {
            if !owned_by(&existing.obj, uid(&pod.obj)) {
                let msg = format!("PVC {ns}/{claim} was not created for pod {ns}/{name} (pod is not owner)");
                super::note(&client, &pod.obj, "Warning", "FailedBinding", &msg).await;
            }
            continue;
        }
        let template = v
            .pointer("/ephemeral/volumeClaimTemplate")
            .cloned()
            .unwrap_or(json!({}));
        let mut meta = template
            .get("metadata")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or(json!({}));
        meta["name"] = json!(claim);
        meta["ownerReferences"] = json!([owner_ref("v1", "Pod", &pod.obj)]);
        if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
            m.remove("generateName");
        }
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
            "spec": template.get("spec").cloned().unwrap_or(json!({}))});
        match client.create(&pvcs, Some(ns), pvc).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => {
                let msg = format!("creating the claim of ephemeral volume {:?}: {e}", str_at(v, "/name"));
                event(&client, &pod.obj, "Warning", "FailedBinding", &msg, "ephemeral_volume").await;
                return Err(e);
            }
        }
    }
    Ok(None)
}
