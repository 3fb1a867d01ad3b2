//! Deletion: preconditions, graceful pod deletion, finalizers and propagationPolicy.

use std::sync::Arc;

use http::Response;
use serde_json::{Value, json};

use super::ApiState;
use super::commit::{UpdateCtx, commit_update};
use super::error::{ApiError, not_found, store_err};
use super::http::{Body, BodyType, Want, json_response, parse_value, respond};
use super::objects;
use super::query::{ListOpts, Query, dry_run};
use super::registry::Served;
use crate::store::Write;
use nodeless_types::keys;

#[derive(Debug, Default)]
struct DeleteOptions {
    propagation: Option<String>,
    grace: Option<i64>,
    uid: Option<String>,
    resource_version: Option<String>,
}

fn options(q: &Query, raw: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut o = DeleteOptions::default();
    if !raw.iter().all(u8::is_ascii_whitespace) {
        let ty = if super::proto::is_enveloped(raw) {
            BodyType::Protobuf
        } else {
            BodyType::Json
        };
        let body = parse_value(raw, ty)?;
        o.propagation = body.get("propagationPolicy").and_then(Value::as_str).map(String::from);
        o.grace = body.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.uid = body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from);
        o.resource_version = body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
        if body.get("orphanDependents") == Some(&json!(true)) && o.propagation.is_none() {
            o.propagation = Some("Orphan".into());
        }
    }
    if let Some(p) = q.get("propagationPolicy") {
        o.propagation = Some(p.clone());
    }
    if let Some(g) = q.get("gracePeriodSeconds") {
        o.grace = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("gracePeriodSeconds: invalid value \"{g}\"")))?,
        );
    }
    match o.propagation.as_deref() {
        None | Some("Background" | "Foreground" | "Orphan") => Ok(o),
        Some(other) => Err(ApiError::bad_request(format!(
            "propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
        ))),
    }
}

fn is_kind(served: &Served, group: &str, kind: &str) -> bool {
    served.def.group == group && served.def.kind == kind
}

/// Whether a pod's node will carry out a graceful deletion (it exists and is Ready).
fn node_will_kill(state: &ApiState, pod: &Value) -> bool {
    let Some(node) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return false;
    };
    if matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    let Some(nodes) = state.registry.lookup("", "v1", "nodes") else {
        return false;
    };
    state.store.get(&nodes.key(None, node)).is_some_and(|n| {
        n.obj
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c.get("type") == Some(&json!("Ready")) && c.get("status") == Some(&json!("True")))
    })
}

pub(super) async fn delete(
    state: &ApiState,
    served: &Served,
    ns: Option<&str>,
    name: &str,
    q: &Query,
    raw: &[u8],
    answer: Want,
) -> Result<Response<Body>, ApiError> {
    let opts = options(q, raw)?;
    let out = delete_object(state, served, ns, name, &opts, dry_run(q)).await?;
    Ok(respond(answer, 200, &out, &[]))
}

/// Delete with `DeleteOptions` given as an object (an eviction's `deleteOptions`).
pub(super) async fn delete_with_options(
    state: &ApiState,
    served: &Served,
    ns: Option<&str>,
    name: &str,
    options_obj: Option<&Value>,
) -> Result<Value, ApiError> {
    let raw = options_obj.map(|o| o.to_string()).unwrap_or_default();
    let opts = options(&Query::default(), raw.as_bytes())?;
    delete_object(state, served, ns, name, &opts, false).await
}

async fn delete_object(
    state: &ApiState,
    served: &Served,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
    dry: bool,
) -> Result<Value, ApiError> {
    let key = served.key(ns, name);
    for _ in 0..8 {
        let cur = state.store.get(&key).ok_or_else(|| not_found(served, name))?;
        let obj = &*cur.obj;
        let conflict = ApiError::PreconditionFailed;
        if let Some(uid) = &opts.uid {
            if obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                let have = obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
                return Err(conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                )));
            }
        }
        if let Some(rv) = &opts.resource_version {
            if *rv != cur.rev.to_string() {
                return Err(conflict(format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    cur.rev
                )));
            }
        }
        let already = obj.pointer("/metadata/deletionTimestamp").is_some();
        let mut new = obj.clone();
        let meta = objects::meta_mut(&mut new);
        let mut finalizers: Vec<Value> = meta
            .get("finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let policy_finalizer = match opts.propagation.as_deref() {
            Some("Foreground") => Some(keys::FOREGROUND_FINALIZER),
            Some("Orphan") => Some(keys::ORPHAN_FINALIZER),
            _ => None,
        };
        if let Some(f) = policy_finalizer {
            if !finalizers.iter().any(|x| x == f) && !already {
                finalizers.push(json!(f));
            }
        }
        let is_pod = is_kind(served, "", "Pod");
        let is_namespace = is_kind(served, "", "Namespace");
        let grace = opts
            .grace
            .or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30);
        let graceful_pod = is_pod && grace > 0 && node_will_kill(state, obj);
        // A pod already terminating may be deleted again with a grace its node will not honour
        // (e.g. --grace-period=0): that removes it now. Anything else: a second request changes nothing.
        let remove_pod_now = is_pod && !graceful_pod;
        if already && !remove_pod_now {
            return Ok(obj.clone());
        }
        let write = if is_namespace {
            let ts = objects::now_rfc3339();
            meta.insert("deletionTimestamp".into(), json!(ts));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            new["status"]["phase"] = json!("Terminating");
            Some(new)
        } else if graceful_pod {
            let when = chrono::Utc::now() + chrono::Duration::seconds(grace);
            meta.insert(
                "deletionTimestamp".into(),
                json!(when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            if !finalizers.is_empty() {
                meta.insert("finalizers".into(), json!(finalizers));
            }
            Some(new)
        } else if !finalizers.is_empty() {
            meta.insert("deletionTimestamp".into(), json!(objects::now_rfc3339()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            meta.insert("finalizers".into(), json!(finalizers));
            Some(new)
        } else {
            None
        };
        if dry {
            return Ok(write.unwrap_or_else(|| obj.clone()));
        }
        let result = match write {
            Some(mut updated) => {
                if let Some(m) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                state
                    .store
                    .write(Write::Update {
                        key: key.clone(),
                        obj: updated,
                        expect_rev: Some(cur.rev),
                    })
                    .await
            }
            None => {
                state
                    .store
                    .write(Write::Delete {
                        key: key.clone(),
                        expect_rev: Some(cur.rev),
                    })
                    .await
            }
        };
        match result {
            Ok(stored) => {
                if stored.obj.pointer("/metadata/deletionTimestamp").is_some() && !already {
                    super::hooks::after_write(state, served).await;
                }
                if state.store.get(&key).is_none() {
                    super::hooks::after_delete(state, served, &stored.obj);
                    super::hooks::after_write(state, served).await;
                }
                return Ok(Arc::unwrap_or_clone(stored.obj));
            }
            Err(crate::store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(store_err(served, name, e)),
        }
    }
    Err(ApiError::Conflict {
        resource: served.def.qualified_resource(),
        name: name.to_string(),
        subject: super::error::subject(served, name),
    })
}

pub(super) async fn delete_collection(
    state: &ApiState,
    served: &Served,
    ns: Option<&str>,
    q: &Query,
) -> Result<Response<Body>, ApiError> {
    let sel = ListOpts::parse(q)?;
    let opts = options(q, b"")?;
    let (items, _, _) = state.store.list(&served.ns_prefix(ns), None, 0, &|o| sel.matches(o));
    let mut deleted = Vec::new();
    for item in items {
        let name = objects::name_of(&item.obj).to_string();
        let item_ns = item
            .obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(String::from);
        match delete_object(state, served, item_ns.as_deref(), &name, &opts, dry_run(q)).await {
            Ok(v) => deleted.push(v),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": served.def.list_kind,
        "apiVersion": served.def.api_version(),
        "metadata": {"resourceVersion": state.store.revision().to_string()},
        "items": deleted,
    });
    Ok(json_response(200, &list, &[]))
}

/// `PUT /api/v1/namespaces/<name>/finalize`: set `spec.finalizers`; a terminating namespace with
/// none left is removed.
pub(super) async fn finalize_namespace(
    state: &ApiState,
    served: &Served,
    name: &str,
    body: Value,
) -> Result<Response<Body>, ApiError> {
    let key = served.key(None, name);
    let cur = state.store.get(&key).ok_or_else(|| not_found(served, name))?;
    let mut new = (*cur.obj).clone();
    new["spec"]["finalizers"] = body.pointer("/spec/finalizers").cloned().unwrap_or(json!([]));
    let out = commit_update(state, served, &key, &cur, new, &UpdateCtx { sub: None, dry: false }).await?;
    Ok(json_response(200, &out, &[]))
}
