//! Namespaces: a `default` ServiceAccount in each; deleting a namespace deletes everything in
//! it, then the namespace itself.

use serde_json::{Value, json};

use super::{is_deleting, split_key, str_at};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::store::{Event, EventType};

pub fn interested(client: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with("/core/namespaces/") {
        return vec![ev.key.clone()];
    }
    // Something left a namespace: if that namespace is terminating, look at it again.
    if ev.kind == EventType::Deleted {
        if let Some(ns) = ev.obj.pointer("/metadata/namespace").and_then(Value::as_str) {
            let key = format!("/core/namespaces/{ns}");
            if client.state.store.get(&key).is_some_and(|n| is_deleting(&n.obj)) {
                return vec![key];
            }
        }
    }
    // What the controller keeps in each namespace, changed or gone.
    let kept = (ev.key.starts_with("/core/serviceaccounts/") && ev.kind == EventType::Deleted)
        || (ev.key.starts_with("/core/configmaps/")
            && ev.kind != EventType::Added
            && str_at(&ev.obj, "/metadata/name") == crate::admission::service_account::ROOT_CA_CONFIGMAP);
    if kept {
        let ns = str_at(&ev.obj, "/metadata/namespace");
        return vec![format!("/core/namespaces/{ns}")];
    }
    Vec::new()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    let ns = client.served("", "namespaces");
    client
        .list(&ns, None, &|_| true)
        .iter()
        .map(|s| ns.key(None, str_at(&s.obj, "/metadata/name")))
        .collect()
}

/// The cluster CA in the namespace (`kube-root-ca.crt`), for pods' token volumes, as
/// Kubernetes' root CA publisher keeps it.
async fn publish_root_ca(client: &LocalClient, ns: &str) -> Result<(), ApiError> {
    use crate::admission::service_account::ROOT_CA_CONFIGMAP;
    let cms = client.served("", "configmaps");
    let data = json!({"ca.crt": client.state.ca_pem});
    match client.get(&cms, Some(ns), ROOT_CA_CONFIGMAP) {
        Some(current) if current.obj.get("data") == Some(&data) => Ok(()),
        Some(current) => {
            let mut want = (*current.obj).clone();
            want["data"] = data;
            client.update(&cms, &current, want).await.map(|_| ())
        }
        None => {
            let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CA_CONFIGMAP, "annotations": {"kubernetes.io/description":
                    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                "data": data});
            match client.create(&cms, Some(ns), obj).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) | Err(ApiError::Forbidden(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    let ns_res = client.served("", "namespaces");
    let (_, name) = split_key(&key);
    let Some(ns) = client.get(&ns_res, None, name) else {
        return Ok(());
    };
    if !is_deleting(&ns.obj) {
        publish_root_ca(&client, name).await?;
        let sa = client.served("", "serviceaccounts");
        if client.get(&sa, Some(name), "default").is_none() {
            let obj = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
            match client.create(&sa, Some(name), obj).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) | Err(ApiError::Forbidden(_)) => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
    let mut remaining = 0usize;
    for served in client.state.registry.all() {
        if !served.def.namespaced() {
            continue;
        }
        let items = client.list(&served, Some(name), &|_| true);
        remaining += items.len();
        for item in items {
            if is_deleting(&item.obj) {
                // Already going; a pod whose node is gone is removed outright.
                if served.def.kind == "Pod" && served.def.group.is_empty() {
                    let node = str_at(&item.obj, "/spec/nodeName");
                    let nodes = client.served("", "nodes");
                    if node.is_empty() || client.get(&nodes, None, node).is_none() {
                        client.force_delete(&served, &item).await?;
                    }
                }
                continue;
            }
            client
                .delete(
                    &served,
                    Some(name),
                    str_at(&item.obj, "/metadata/name"),
                    Some("Background"),
                )
                .await?;
        }
    }
    if remaining == 0 {
        client.force_delete(&ns_res, &ns).await?;
    }
    Ok(())
}
