//! ResourceQuota status: `status.hard` and `status.used` kept current as the namespace's objects
//! come and go (`kubectl describe quota`, `kubectl get quota`). Admission counts from the store
//! itself (see `admission::quota`), so what it refuses does not wait for this.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{all_keys, split_key, str_at};
use crate::admission::quota;
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::store::Event;

const PREFIX: &str = "/core/resourcequotas/";

/// A change in a namespace that has quotas: each of its quotas.
pub fn interested(client: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with(PREFIX) {
        return vec![ev.key.clone()];
    }
    let ns = str_at(&ev.obj, "/metadata/namespace");
    if ns.is_empty() {
        return Vec::new();
    }
    let (quotas, _, _) = client.state.store.list(&format!("{PREFIX}{ns}/"), None, 0, &|_| true);
    quotas
        .iter()
        .map(|q| format!("{PREFIX}{ns}/{}", str_at(&q.obj, "/metadata/name")))
        .collect()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    all_keys(client, "", "resourcequotas")
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    let (ns, name) = split_key(&key);
    let ns = ns.unwrap_or("default");
    let served = client.served("", "resourcequotas");
    let Some(q) = client.get(&served, Some(ns), name) else {
        return Ok(());
    };
    let mut objects = BTreeMap::new();
    for (g, p) in quota::counted(std::slice::from_ref(&q.obj)) {
        let dir = if g.is_empty() { "core".to_string() } else { g.clone() };
        let (items, _, _) = client
            .state
            .store
            .list(&format!("/{dir}/{p}/{ns}/"), None, 0, &|_| true);
        objects.insert((g, p), items.into_iter().map(|s| (*s.obj).clone()).collect::<Vec<_>>());
    }
    let used: serde_json::Map<String, Value> = quota::used(&q.obj, &objects)
        .into_iter()
        .map(|(k, v)| {
            let shown = quota::show(&k, v);
            (k, json!(shown))
        })
        .collect();
    let status = json!({"hard": q.obj.pointer("/spec/hard").cloned().unwrap_or(json!({})), "used": used});
    if q.obj.get("status") == Some(&status) {
        return Ok(());
    }
    let mut new = (*q.obj).clone();
    new["status"] = status;
    client.update_status(&served, &q, new).await.map(|_| ())
}
