//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` holds the union of the rules
//! of every ClusterRole its selectors match, kept current as those roles come, change and go
//! (how `admin`, `edit` and `view` grow when a CRD's roles are labelled to join them).

use serde_json::{Value, json};

use super::str_at;
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::api::select::LabelSelector;
use crate::store::Event;

const GROUP: &str = "rbac.authorization.k8s.io";
const PREFIX: &str = "/rbac.authorization.k8s.io/clusterroles/";

fn aggregated_keys(client: &LocalClient) -> Vec<String> {
    let served = client.served(GROUP, "clusterroles");
    client
        .list(&served, None, &|o| o.get("aggregationRule").is_some())
        .iter()
        .map(|s| served.key(None, str_at(&s.obj, "/metadata/name")))
        .collect()
}

/// Any ClusterRole's change may change what an aggregated one holds.
pub fn interested(client: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with(PREFIX) {
        aggregated_keys(client)
    } else {
        Vec::new()
    }
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    aggregated_keys(client)
}

/// The rules an aggregated role should hold: those of every other matching role, each once, in
/// name order.
fn union(client: &LocalClient, role: &Value) -> Vec<Value> {
    let served = client.served(GROUP, "clusterroles");
    let name = str_at(role, "/metadata/name");
    let selectors: Vec<LabelSelector> = role
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(LabelSelector::from_object).collect())
        .unwrap_or_default();
    let mut rules: Vec<Value> = Vec::new();
    for other in client.list(&served, None, &|_| true) {
        if str_at(&other.obj, "/metadata/name") == name {
            continue;
        }
        let labels = other.obj.pointer("/metadata/labels");
        if !selectors.iter().any(|s| !s.is_empty() && s.matches_labels(labels)) {
            continue;
        }
        for r in other.obj.get("rules").and_then(Value::as_array).into_iter().flatten() {
            if !rules.contains(r) {
                rules.push(r.clone());
            }
        }
    }
    rules
}

/// Bring one aggregated role up to date; whether it changed.
async fn aggregate(client: &LocalClient, name: &str) -> Result<bool, ApiError> {
    let served = client.served(GROUP, "clusterroles");
    let Some(current) = client.get(&served, None, name) else {
        return Ok(false);
    };
    if current.obj.get("aggregationRule").is_none() {
        return Ok(false);
    }
    let rules = json!(union(client, &current.obj));
    if current.obj.get("rules").unwrap_or(&Value::Null) == &rules
        || (rules.as_array().is_some_and(Vec::is_empty) && current.obj.get("rules").is_none())
    {
        return Ok(false);
    }
    let mut want = (*current.obj).clone();
    want["rules"] = rules;
    client.update(&served, &current, want).await?;
    Ok(true)
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    let name = key.strip_prefix(PREFIX).unwrap_or(&key).to_string();
    aggregate(&client, &name).await.map(|_| ())
}

/// Aggregate every role until nothing changes (aggregated roles feed each other: `view` into
/// `edit` into `admin`), at most a few rounds.
pub async fn aggregate_all(client: &LocalClient) -> Result<(), ApiError> {
    for _ in 0..8 {
        let mut changed = false;
        for key in aggregated_keys(client) {
            let name = key.strip_prefix(PREFIX).unwrap_or(&key).to_string();
            changed |= aggregate(client, &name).await?;
        }
        if !changed {
            break;
        }
    }
    Ok(())
}
