//! Configuration → Revisions: each template (each generation, or each
//! `spec.template.metadata.name`) is one immutable Revision; the latest created and the latest
//! ready are in the status; revisions no longer routed are collected as `config-gc` says.

use serde_json::{Value, json};

use super::{
    SERVING_API, condition, inherited, is_ready, keys_of, ns_name, owner_keys, prefix, served, set_condition,
    write_status,
};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::controllers::{is_deleting, owner_ref, str_at};
use crate::knative::admit::{CREATOR, LAST_MODIFIER};
use crate::knative::{config, duration};
use crate::store::Event;
use nodeless_types::knative::{CONFIGURATION, CONFIGURATION_GENERATION, SERVICE};

/// Annotation that keeps a revision from collection.
const NO_GC: &str = "serving.knative.dev/no-gc";
/// Annotation on a revision: when a Route last sent it traffic (set by the route controller).
pub const ROUTING_STATE_MODIFIED: &str = "serving.knative.dev/routingStateModified";
/// Label on a revision: `active` while a Route sends it traffic, `reserve` after.
pub const ROUTING_STATE: &str = "serving.knative.dev/routingState";
/// Annotation on a revision: the Routes that send it traffic, comma-separated.
pub const ROUTES: &str = "serving.knative.dev/routes";

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with(&prefix("configurations")) {
        return vec![ev.key.clone()];
    }
    if ev.key.starts_with(&prefix("revisions")) {
        return owner_keys(ev, "Configuration", "configurations");
    }
    Vec::new()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    keys_of(client, "configurations")
}

fn generation_of(rev: &Value) -> i64 {
    rev.pointer(&format!(
        "/metadata/labels/{}",
        CONFIGURATION_GENERATION.replace('/', "~1")
    ))
    .and_then(Value::as_str)
    .and_then(|g| g.parse().ok())
    .unwrap_or(0)
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    let (Some(configs), Some(revisions)) = (served(&client, "configurations"), served(&client, "revisions")) else {
        return Ok(());
    };
    let (ns, name) = ns_name(&key);
    let Some(cur) = client.get(&configs, Some(&ns), &name) else {
        return Ok(());
    };
    let cfg = &cur.obj;
    if is_deleting(cfg) {
        return Ok(());
    }
    let generation = cfg.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
    let template = cfg.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let rev_name = match template.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) => n.to_string(),
        None => format!("{name}-{generation:05}"),
    };
    let mut status = cfg.get("status").cloned().unwrap_or(json!({}));
    let latest = match client.get(&revisions, Some(&ns), &rev_name) {
        Some(r) => {
            let owned = crate::controllers::controller_ref(&r.obj)
                .is_some_and(|o| str_at(o, "/uid") == str_at(cfg, "/metadata/uid"));
            if !owned {
                set_condition(
                    &mut status,
                    "Ready",
                    "False",
                    "RevisionFailed",
                    &format!("Revision \"{rev_name}\" exists and is not owned by Configuration \"{name}\""),
                );
                return write_status(&client, &configs, &cur, status).await;
            }
            (*r.obj).clone()
        }
        None => {
            let meta = template.get("metadata");
            let mut labels = inherited(meta, "labels");
            labels.insert(CONFIGURATION.into(), json!(name));
            labels.insert(CONFIGURATION_GENERATION.into(), json!(generation.to_string()));
            if let Some(s) = cfg.pointer(&format!("/metadata/labels/{}", SERVICE.replace('/', "~1"))) {
                labels.insert(SERVICE.into(), s.clone());
            }
            let mut annotations = inherited(meta, "annotations");
            // The revision's creator is whoever last changed the configuration's spec.
            let author = cfg
                .pointer(&format!("/metadata/annotations/{}", LAST_MODIFIER.replace('/', "~1")))
                .cloned()
                .unwrap_or(json!(crate::auth::ADMIN_USER));
            annotations.insert(CREATOR.into(), author);
            let rev = json!({
                "apiVersion": SERVING_API, "kind": "Revision",
                "metadata": {"name": rev_name, "namespace": ns, "labels": labels, "annotations": annotations,
                    "ownerReferences": [owner_ref(SERVING_API, "Configuration", cfg)]},
                "spec": template.get("spec").cloned().unwrap_or(json!({})),
            });
            match client.create(&revisions, Some(&ns), rev).await {
                Ok(r) => r,
                // Refused by the checks Knative's webhook makes.
                Err(e @ (ApiError::Invalid { .. } | ApiError::BadRequest(_))) => {
                    set_condition(&mut status, "Ready", "False", "RevisionFailed", &e.to_string());
                    return write_status(&client, &configs, &cur, status).await;
                }
                Err(e) => return Err(e),
            }
        }
    };
    status["latestCreatedRevisionName"] = json!(rev_name);
    // The latest ready moves forward only: to the newest revision (by generation) that is ready.
    let owned: Vec<Value> = client
        .list(&revisions, Some(&ns), &|r| {
            crate::controllers::controller_ref(r).is_some_and(|o| str_at(o, "/uid") == str_at(cfg, "/metadata/uid"))
        })
        .into_iter()
        .map(|s| (*s.obj).clone())
        .collect();
    let newest_ready = owned
        .iter()
        .filter(|r| is_ready(r))
        .max_by_key(|r| generation_of(r))
        .map(|r| str_at(r, "/metadata/name").to_string());
    if let Some(n) = newest_ready {
        let prior = status
            .get("latestReadyRevisionName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let prior_gen = owned
            .iter()
            .find(|r| str_at(r, "/metadata/name") == prior)
            .map(generation_of)
            .unwrap_or(-1);
        let gen_n = owned
            .iter()
            .find(|r| str_at(r, "/metadata/name") == n)
            .map(generation_of)
            .unwrap_or(0);
        if gen_n >= prior_gen {
            status["latestReadyRevisionName"] = json!(n);
        }
    }
    match condition(&latest, "Ready") {
        Some(("True", _, _)) => set_condition(&mut status, "Ready", "True", "", ""),
        Some(("False", _, message)) => {
            let message = format!("Revision \"{rev_name}\" failed with message: {message}.");
            set_condition(&mut status, "Ready", "False", "RevisionFailed", &message)
        }
        _ => set_condition(&mut status, "Ready", "Unknown", "", ""),
    }
    collect_garbage(&client, cfg, &owned, &status).await;
    write_status(&client, &configs, &cur, status).await
}

/// Delete the revisions `config-gc` lets go: never the latest created or ready, one a Route
/// sends traffic to, or one marked `no-gc`; among the rest (oldest first), those over
/// `max-non-active-revisions`, and those older than `retain-since-create-time` and idle longer
/// than `retain-since-last-active-time` while more than `min-non-active-revisions` remain.
async fn collect_garbage(client: &LocalClient, cfg: &Value, owned: &[Value], status: &Value) {
    let Some(revisions) = served(client, "revisions") else {
        return;
    };
    let gc = config::read(&client.state.store, "config-gc");
    let num = |k: &str, d: i64| gc.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(d);
    let dur = |k: &str| gc.get(k).filter(|v| *v != "disabled").and_then(|v| duration::parse(v));
    let (min_keep, max_keep) = (
        num("min-non-active-revisions", 20),
        num("max-non-active-revisions", 1000),
    );
    let (since_create, since_active) = (dur("retain-since-create-time"), dur("retain-since-last-active-time"));
    let keep_names = [
        status
            .get("latestCreatedRevisionName")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        status
            .get("latestReadyRevisionName")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    ];
    let routes = served(client, "routes");
    let ns = str_at(cfg, "/metadata/namespace");
    let routed: Vec<String> = routes
        .map(|r| {
            client
                .list(&r, Some(ns), &|_| true)
                .iter()
                .flat_map(|rt| {
                    ["/spec/traffic", "/status/traffic"]
                        .iter()
                        .filter_map(|p| rt.obj.pointer(p).and_then(Value::as_array).cloned())
                        .flatten()
                        .filter_map(|t| t.get("revisionName").and_then(Value::as_str).map(String::from))
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .unwrap_or_default();
    let now = chrono::Utc::now();
    let age = |r: &Value, ptr: &str| {
        r.pointer(ptr)
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| (now - t.with_timezone(&chrono::Utc)).to_std().unwrap_or_default())
    };
    let mut idle: Vec<&Value> = owned
        .iter()
        .filter(|r| {
            let n = str_at(r, "/metadata/name");
            !keep_names.contains(&n)
                && !routed.iter().any(|x| x == n)
                && r.pointer(&format!("/metadata/annotations/{}", NO_GC.replace('/', "~1"))) != Some(&json!("true"))
                && r.pointer(&format!("/metadata/labels/{}", ROUTING_STATE.replace('/', "~1")))
                    != Some(&json!("active"))
        })
        .collect();
    idle.sort_by_key(|r| generation_of(r));
    let mut remaining = idle.len() as i64;
    for r in idle {
        let too_many = max_keep > 0 && remaining > max_keep;
        let created = age(r, "/metadata/creationTimestamp");
        let active = age(
            r,
            &format!("/metadata/annotations/{}", ROUTING_STATE_MODIFIED.replace('/', "~1")),
        )
        .or(created);
        let stale = remaining > min_keep
            && since_create.is_some_and(|d| created.is_some_and(|a| a > d))
            && since_active.is_none_or(|d| active.is_some_and(|a| a > d));
        if too_many || stale {
            let name = str_at(r, "/metadata/name");
            if client.delete(&revisions, Some(ns), name, None).await.is_ok() {
                tracing::info!(namespace = ns, revision = name, "collected an idle revision");
            }
            remaining -= 1;
        }
    }
}
