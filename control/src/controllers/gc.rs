//! Garbage collection by ownerReferences: dependents of a deleted owner are deleted (Background),
//! deleted first (Foreground, `foregroundDeletion` finalizer) or released (Orphan, `orphan`
//! finalizer). Also removes terminating pods whose node is gone or not Ready.

use serde_json::{Value, json};

use super::{condition_true, is_deleting, split_key, str_at, uid};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::store::{Event, EventType, Stored};
use nodeless_types::keys;

const OWNER: &str = "owner:";
const SCAN: &str = "scan";

fn has_finalizer(v: &Value, f: &str) -> bool {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == f))
}

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    let mut keys = Vec::new();
    if ev.kind == EventType::Deleted {
        keys.push(format!("{OWNER}{}", uid(&ev.obj)));
    } else if is_deleting(&ev.obj)
        && (has_finalizer(&ev.obj, keys::FOREGROUND_FINALIZER) || has_finalizer(&ev.obj, keys::ORPHAN_FINALIZER))
    {
        keys.push(ev.key.clone());
    }
    if ev.key.starts_with("/core/pods/") && is_deleting(&ev.obj) {
        keys.push(ev.key.clone());
    }
    if ev.key.starts_with("/core/nodes/") {
        keys.push(SCAN.to_string());
    }
    keys
}

pub fn resync(_: &LocalClient) -> Vec<String> {
    vec![SCAN.to_string()]
}

/// Every object (any resource) that lists `owner_uid` among its owners.
fn dependents(client: &LocalClient, owner_uid: &str) -> Vec<(String, Stored)> {
    let (items, _, _) = client.state.store.list("/", None, 0, &|o| {
        o.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|refs| refs.iter().any(|r| str_at(r, "/uid") == owner_uid))
    });
    items.into_iter().map(|s| (key_of(client, &s.obj), s)).collect()
}

fn key_of(client: &LocalClient, obj: &Value) -> String {
    let (group, version) = match str_at(obj, "/apiVersion").split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), str_at(obj, "/apiVersion").to_string()),
    };
    let kind = str_at(obj, "/kind");
    match client.state.registry.by_kind(&group, kind) {
        Some(s) if s.def.version == version || !version.is_empty() => s.key(
            obj.pointer("/metadata/namespace").and_then(Value::as_str),
            str_at(obj, "/metadata/name"),
        ),
        _ => String::new(),
    }
}

/// Whether the owner a reference names still exists (same uid).
fn owner_exists(client: &LocalClient, dependent: &Value, r: &Value) -> bool {
    let (group, _) = str_at(r, "/apiVersion").split_once('/').unwrap_or(("", ""));
    let Some(served) = client.state.registry.by_kind(group, str_at(r, "/kind")) else {
        return false;
    };
    let ns = if served.def.namespaced() {
        dependent.pointer("/metadata/namespace").and_then(Value::as_str)
    } else {
        None
    };
    client
        .get(&served, ns, str_at(r, "/name"))
        .is_some_and(|o| uid(&o.obj) == str_at(r, "/uid"))
}

async fn release(client: &LocalClient, key: &str, dep: &Stored, owner_uid: &str) -> Result<(), ApiError> {
    let (group, plural) = served_of(key);
    let Some(served) = client.state.registry.by_plural(&group, &plural) else {
        return Ok(());
    };
    let mut new = (*dep.obj).clone();
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        let remaining: Vec<Value> = meta
            .get("ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| str_at(r, "/uid") != owner_uid)
            .cloned()
            .collect();
        if remaining.is_empty() {
            meta.remove("ownerReferences");
        } else {
            meta.insert("ownerReferences".into(), Value::Array(remaining));
        }
    }
    client.update(&served, dep, new).await.map(|_| ())
}

fn served_of(key: &str) -> (String, String) {
    let parts: Vec<&str> = key.trim_start_matches('/').split('/').collect();
    let group = if parts.first() == Some(&"core") {
        String::new()
    } else {
        parts.first().unwrap_or(&"").to_string()
    };
    (group, parts.get(1).unwrap_or(&"").to_string())
}

async fn delete_dependent(client: &LocalClient, key: &str, policy: &str) -> Result<(), ApiError> {
    let (group, plural) = served_of(key);
    let Some(served) = client.state.registry.by_plural(&group, &plural) else {
        return Ok(());
    };
    let (ns, name) = split_key(key);
    client.delete(&served, ns, name, Some(policy)).await
}

/// Dependents of a gone owner: released when another owner remains, deleted otherwise.
async fn owner_gone(client: &LocalClient, owner_uid: &str) -> Result<(), ApiError> {
    for (key, dep) in dependents(client, owner_uid) {
        if key.is_empty() {
            continue;
        }
        let refs = dep
            .obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let others_alive = refs
            .iter()
            .filter(|r| str_at(r, "/uid") != owner_uid)
            .any(|r| owner_exists(client, &dep.obj, r));
        if others_alive {
            release(client, &key, &dep, owner_uid).await?;
        } else if !is_deleting(&dep.obj) {
            delete_dependent(client, &key, "Background").await?;
        }
    }
    Ok(())
}

async fn remove_finalizer(client: &LocalClient, key: &str, obj: &Stored, f: &str) -> Result<(), ApiError> {
    let (group, plural) = served_of(key);
    let Some(served) = client.state.registry.by_plural(&group, &plural) else {
        return Ok(());
    };
    let mut new = (*obj.obj).clone();
    if let Some(fs) = new.pointer_mut("/metadata/finalizers").and_then(Value::as_array_mut) {
        fs.retain(|x| x != f);
    }
    client.update(&served, obj, new).await.map(|_| ())
}

/// Pods being deleted on a node that is gone or not Ready will never be cleaned up by that node.
async fn collect_pod(client: &LocalClient, key: &str) -> Result<(), ApiError> {
    let pods = client.served("", "pods");
    let nodes = client.served("", "nodes");
    let (ns, name) = split_key(key);
    let Some(pod) = client.get(&pods, ns, name) else {
        return Ok(());
    };
    if !is_deleting(&pod.obj) {
        return Ok(());
    }
    let node = str_at(&pod.obj, "/spec/nodeName");
    let node_ok = !node.is_empty()
        && client
            .get(&nodes, None, node)
            .is_some_and(|n| condition_true(&n.obj, "Ready"));
    if !node_ok
        && pod
            .obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    {
        client.force_delete(&pods, &pod).await?;
    }
    Ok(())
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    if let Some(owner_uid) = key.strip_prefix(OWNER) {
        return owner_gone(&client, owner_uid).await;
    }
    if key == SCAN {
        // Heal anything missed: dependents whose owners are all gone, and stuck deletions.
        let (items, _, _) = client.state.store.list("/", None, 0, &|o| {
            o.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|r| !r.is_empty())
                || is_deleting(o)
        });
        for s in items {
            let k = key_of(&client, &s.obj);
            if k.is_empty() {
                continue;
            }
            if is_deleting(&s.obj) {
                Box::pin(reconcile(client.clone(), k.clone())).await?;
            }
            let refs = s
                .obj
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !refs.is_empty() && !refs.iter().any(|r| owner_exists(&client, &s.obj, r)) && !is_deleting(&s.obj) {
                delete_dependent(&client, &k, "Background").await?;
            }
        }
        return Ok(());
    }
    if key.starts_with("/core/pods/") {
        collect_pod(&client, &key).await?;
    }
    let (group, plural) = served_of(&key);
    let Some(served) = client.state.registry.by_plural(&group, &plural) else {
        return Ok(());
    };
    let (ns, name) = split_key(&key);
    let Some(obj) = client.get(&served, ns, name) else {
        return Ok(());
    };
    if !is_deleting(&obj.obj) {
        return Ok(());
    }
    let my_uid = uid(&obj.obj).to_string();
    if has_finalizer(&obj.obj, keys::ORPHAN_FINALIZER) {
        for (k, dep) in dependents(&client, &my_uid) {
            if !k.is_empty() {
                release(&client, &k, &dep, &my_uid).await?;
            }
        }
        let obj = client
            .get(&served, ns, name)
            .ok_or_else(|| client.not_found(&served, name))?;
        return remove_finalizer(&client, &key, &obj, keys::ORPHAN_FINALIZER).await;
    }
    if has_finalizer(&obj.obj, keys::FOREGROUND_FINALIZER) {
        let deps = dependents(&client, &my_uid);
        let blocking: Vec<_> = deps.iter().filter(|(k, _)| !k.is_empty()).collect();
        if blocking.is_empty() {
            return remove_finalizer(&client, &key, &obj, keys::FOREGROUND_FINALIZER).await;
        }
        for (k, dep) in blocking {
            if !is_deleting(&dep.obj) {
                delete_dependent(&client, k, "Foreground").await?;
            }
        }
        let _ = json!(null);
    }
    Ok(())
}
