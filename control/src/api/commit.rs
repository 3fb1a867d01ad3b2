//! The one way an object already stored changes: [`commit_update`], through which update, patch,
//! scale, the status subresource, delete's finalizer handling and in-process callers all pass, and
//! the admission it runs (which create runs too).

use std::sync::Arc;

use serde_json::{Value, json};

use super::ApiState;
use super::error::{ApiError, Cause, Subject, store_err, subject};
use super::objects;
use super::registry::Served;
use crate::store::{Stored, Write};

/// The 422 for an object of `served` that breaks `causes`.
fn invalid(served: &Served, name: &str, causes: &[crate::admission::Cause]) -> ApiError {
    ApiError::Invalid {
        message: crate::admission::invalid_message(&served.def.qualified_kind(), name, causes),
        causes: causes
            .iter()
            .map(|c| Cause {
                reason: c.reason.to_string(),
                message: c.message.clone(),
                field: c.field.clone(),
            })
            .collect(),
        subject: Subject {
            group: served.def.group.clone(),
            kind: served.def.kind.clone(),
            name: name.to_string(),
        },
    }
}

/// Run admission: the apiserver's validation and the platform's rules.
pub fn admit(state: &ApiState, served: &Served, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    use crate::admission::Verdict;
    let name = objects::name_of(obj).to_string();
    if let Some(user) = crate::auth::requester()
        && let Some(node) = user.node_name()
        && let Some(why) =
            crate::admission::node_restriction::check(node, &served.def.group, &served.def.kind, obj, old)
    {
        return Err(ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: {why} (NodeRestriction)",
            served.def.qualified_resource()
        )));
    }
    match crate::admission::admit(&served.def.group, &served.def.kind, obj, old, &state.policy) {
        Verdict::Allowed => {
            let causes = crate::admission::storage::check(&state.store, &served.def.group, &served.def.kind, obj, old);
            if !causes.is_empty() {
                return Err(invalid(served, &name, &causes));
            }
            no_escalation(state, served, obj)
        }
        Verdict::Invalid(causes) => Err(invalid(served, &name, &causes)),
        Verdict::Forbidden { rule, message } => Err(ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: {message} (rule {rule})",
            served.def.qualified_resource()
        ))),
    }
}

/// RBAC's escalation check: a user may write a role only with rules the user has, and bind a
/// role only with the rules it grants, unless granted `escalate` (roles) or `bind` (bindings).
/// Writes by control itself (no requester) are trusted.
fn no_escalation(state: &ApiState, served: &Served, obj: &Value) -> Result<(), ApiError> {
    use crate::rbac::{self, Attributes};
    if served.def.group != "rbac.authorization.k8s.io" {
        return Ok(());
    }
    let Some(user) = crate::auth::requester() else {
        return Ok(());
    };
    let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
    let name = objects::name_of(obj);
    let may = |verb: &str, plural: &str, name: &str| {
        rbac::authorize(
            &state.store,
            &user,
            &Attributes::resource(verb, &served.def.group, plural, None, ns, Some(name)),
        )
        .allowed
    };
    let wanted = match served.def.kind.as_str() {
        "Role" | "ClusterRole" => {
            if may("escalate", &served.def.plural, name) {
                return Ok(());
            }
            let mut rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule> =
                serde_json::from_value(obj.get("rules").cloned().unwrap_or_else(|| json!([]))).unwrap_or_default();
            // Aggregation may gather anything: it takes the right to grant everything.
            if obj.get("aggregationRule").is_some() {
                rules = serde_json::from_value(json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]))
                    .unwrap_or_default();
            }
            rules
        }
        _ => {
            let role_ref = obj.get("roleRef").cloned().unwrap_or(Value::Null);
            let role_name = role_ref.get("name").and_then(Value::as_str).unwrap_or_default();
            let role_plural = match role_ref.get("kind").and_then(Value::as_str) {
                Some("Role") => "roles",
                _ => "clusterroles",
            };
            if may("bind", role_plural, role_name) {
                return Ok(());
            }
            rbac::role_rules(&state.store, &role_ref, ns).ok_or_else(|| {
                ApiError::Forbidden(format!(
                    "{} \"{name}\" is forbidden: user \"{}\" may not bind {role_plural} \"{role_name}\": it does not exist",
                    served.def.qualified_resource(),
                    user.name
                ))
            })?
        }
    };
    let owned: Vec<_> = rbac::rules_for(&state.store, &user, ns)
        .into_iter()
        .flat_map(|(r, _)| r)
        .collect();
    match rbac::uncovered(&owned, &wanted) {
        None => Ok(()),
        Some(missing) => Err(ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{missing}",
            served.def.qualified_resource(),
            user.name,
            user.groups
        ))),
    }
}

/// The new object of an update, before it is committed.
pub struct UpdateCtx<'a> {
    pub sub: Option<&'a str>,
    pub dry: bool,
}

/// Commit `new` over `current`: subresource rules, immutable metadata, defaults, generation,
/// admission, deletion when the last finalizer goes, and no write at all when nothing changed.
pub async fn commit_update(
    state: &ApiState,
    served: &Served,
    key: &str,
    current: &Stored,
    mut new: Value,
    ctx: &UpdateCtx<'_>,
) -> Result<Value, ApiError> {
    let old = &*current.obj;
    let name = objects::name_of(old).to_string();
    if let Some(rv) = new
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        if rv != current.rev.to_string() {
            return Err(ApiError::Conflict {
                resource: served.def.qualified_resource(),
                name: name.clone(),
                subject: subject(served, &name),
            });
        }
    }
    let body_name = objects::name_of(&new);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    objects::meta_mut(&mut new).insert("name".into(), json!(name));
    match ctx.sub {
        Some("status") => {
            // Only the status changes through /status.
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        Some("approval") => {
            // Only the Approved and Denied conditions change through /approval (kubectl
            // certificate approve/deny); the signer's status stays as it is.
            let conditions = new.pointer("/status/conditions").cloned();
            new = old.clone();
            let keep: Vec<Value> = old
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|c| !matches!(c.get("type").and_then(Value::as_str), Some("Approved" | "Denied")))
                .cloned()
                .collect();
            let decided: Vec<Value> = conditions
                .as_ref()
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|c| matches!(c.get("type").and_then(Value::as_str), Some("Approved" | "Denied")))
                .cloned()
                .collect();
            let causes = crate::admission::certificates::approval(old, &decided);
            if !causes.is_empty() {
                return Err(invalid(served, &name, &causes));
            }
            new["status"]["conditions"] = json!(keep.into_iter().chain(decided).collect::<Vec<_>>());
        }
        Some("ephemeralcontainers") => {
            // Only the pod's ephemeral containers change through /ephemeralcontainers: added,
            // never changed or taken away (checked with the pod's own rules at admission).
            let added = new.pointer("/spec/ephemeralContainers").cloned();
            new = old.clone();
            match added {
                Some(list) => new["spec"]["ephemeralContainers"] = list,
                None => {
                    if let Some(m) = new.get_mut("spec").and_then(Value::as_object_mut) {
                        m.remove("ephemeralContainers");
                    }
                }
            }
            super::objects::apply_defaults(&served.def.group, &served.def.kind, &mut new);
            let causes = crate::admission::validate::ephemeral_containers(&new, old);
            if !causes.is_empty() {
                return Err(invalid(served, &name, &causes));
            }
        }
        _ => {
            if served.def.group.is_empty()
                && served.def.kind == "Pod"
                && new.pointer("/spec/ephemeralContainers") != old.pointer("/spec/ephemeralContainers")
            {
                let cause = crate::admission::Cause::forbidden(
                    "spec.ephemeralContainers",
                    "cannot be changed by updating the pod: use its ephemeralcontainers subresource (kubectl debug)",
                );
                return Err(invalid(served, &name, &[cause]));
            }
            if served.def.has_subresource("status") {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            objects::keep_immutable_meta(&mut new, old);
            objects::apply_defaults(&served.def.group, &served.def.kind, &mut new);
            objects::bump_generation(&mut new, old);
        }
    }
    if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(current.rev.to_string()));
    }
    if new == *old {
        return Ok(new);
    }
    admit(state, served, &new, Some(old))?;
    super::hooks::before_update(state, served, &mut new, old)?;
    if ctx.dry {
        return Ok(new);
    }
    let deleting = new.pointer("/metadata/deletionTimestamp").is_some()
        && new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        && !(served.def.group.is_empty() && served.def.kind == "Namespace");
    let write = if deleting {
        Write::Delete {
            key: key.to_string(),
            expect_rev: Some(current.rev),
        }
    } else {
        Write::Update {
            key: key.to_string(),
            obj: new,
            expect_rev: Some(current.rev),
        }
    };
    let stored = state
        .store
        .write(write)
        .await
        .map_err(|e| store_err(served, &name, e))?;
    if deleting {
        super::hooks::after_delete(state, served, &stored.obj);
    }
    super::hooks::after_write(state, served).await;
    Ok(Arc::unwrap_or_clone(stored.obj))
}
