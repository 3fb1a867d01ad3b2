//! Kind-specific steps around writes: ClusterIP allocation for Services and serving CRDs.

use std::sync::Arc;

use serde_json::{Value, json};

use super::ApiState;
use super::error::{ApiError, invalid};
use super::registry::Served;

fn is(served: &Served, group: &str, kind: &str) -> bool {
    served.def.group == group && served.def.kind == kind
}

fn wants_cluster_ip(obj: &Value) -> bool {
    obj.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName")
}

/// Allocate or reserve a Service's ClusterIP; returns what was claimed (to undo on failure).
fn claim_cluster_ip(state: &ApiState, served: &Served, obj: &mut Value) -> Result<Option<String>, ApiError> {
    if !wants_cluster_ip(obj) {
        return Ok(None);
    }
    let requested = obj
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let ip = match requested.as_str() {
        "None" => {
            obj["spec"]["clusterIPs"] = json!(["None"]);
            return Ok(None);
        }
        "" => state
            .cluster_ips
            .allocate()
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .to_string(),
        ip => {
            state.cluster_ips.reserve(ip).map_err(|e| {
                invalid(
                    served,
                    obj,
                    "spec.clusterIPs",
                    "FieldValueInvalid",
                    format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: {e}"),
                )
            })?;
            ip.to_string()
        }
    };
    obj["spec"]["clusterIP"] = json!(ip);
    obj["spec"]["clusterIPs"] = json!([ip]);
    Ok(Some(ip))
}

pub fn before_create(state: &ApiState, served: &Served, obj: &mut Value) -> Result<Option<String>, ApiError> {
    crate::knative::admit::admit(&state.store, served, obj, None)?;
    if is(served, "", "Service") {
        return claim_cluster_ip(state, served, obj);
    }
    if is(served, "apiextensions.k8s.io", "CustomResourceDefinition") {
        check_crd(served, obj)?;
        accept_crd(obj);
    }
    if is(served, "certificates.k8s.io", "CertificateSigningRequest") {
        if let Some(user) = crate::auth::requester() {
            crate::admission::certificates::stamp_requester(obj, &user);
        }
    }
    Ok(None)
}

pub fn undo_create(state: &ApiState, claimed: Option<&str>) {
    if let Some(ip) = claimed {
        state.cluster_ips.release(ip);
    }
}

pub fn before_update(state: &ApiState, served: &Served, new: &mut Value, old: &Value) -> Result<(), ApiError> {
    crate::knative::admit::admit(&state.store, served, new, Some(old))?;
    if is(served, "", "Service") {
        let old_ip = old
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let new_ip = new
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match (wants_cluster_ip(old), wants_cluster_ip(new)) {
            (true, true) => {
                if new_ip.is_empty() {
                    new["spec"]["clusterIP"] = json!(old_ip);
                    if let Some(ips) = old.pointer("/spec/clusterIPs") {
                        new["spec"]["clusterIPs"] = ips.clone();
                    }
                } else if new_ip != old_ip {
                    return Err(invalid(
                        served,
                        new,
                        "spec.clusterIPs[0]",
                        "FieldValueInvalid",
                        format!("Invalid value: [\"{new_ip}\"]: may not change once set"),
                    ));
                }
            }
            (false, true) => {
                claim_cluster_ip(state, served, new)?;
            }
            (true, false) => {
                state.cluster_ips.release(&old_ip);
                if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
            }
            (false, false) => {}
        }
    }
    if is(served, "certificates.k8s.io", "CertificateSigningRequest") && new.get("spec") != old.get("spec") {
        return Err(invalid(
            served,
            new,
            "spec",
            "FieldValueForbidden",
            "Forbidden: a certificate signing request's spec is immutable".into(),
        ));
    }
    if is(served, "apiextensions.k8s.io", "CustomResourceDefinition") {
        check_crd(served, new)?;
        for field in ["/spec/group", "/spec/names/plural", "/spec/scope"] {
            if new.pointer(field) != old.pointer(field) {
                let path = field.trim_start_matches('/').replace('/', ".");
                return Err(invalid(
                    served,
                    new,
                    &path,
                    "FieldValueInvalid",
                    "Invalid value: field is immutable".into(),
                ));
            }
        }
    }
    Ok(())
}

pub fn after_delete(state: &ApiState, served: &Served, obj: &Value) {
    if is(served, "", "Service") {
        if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str) {
            state.cluster_ips.release(ip);
        }
    }
}

/// Re-read the CRDs into the registry after any CRD write, so a CRD is served as soon as its
/// create returns.
pub async fn after_write(state: &ApiState, served: &Served) {
    if is(served, "apiextensions.k8s.io", "CustomResourceDefinition") {
        refresh_crds(state);
    }
}

pub fn refresh_crds(state: &ApiState) {
    let Some(crds) = state
        .registry
        .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    else {
        return;
    };
    let (items, _, _) = state.store.list(&crds.prefix(), None, 0, &|o| {
        o.pointer("/metadata/deletionTimestamp").is_none()
    });
    let objs: Vec<Arc<Value>> = items.into_iter().map(|s| s.obj).collect();
    state.registry.set_crds(&objs);
}

/// The structural checks a CRD must pass before it is served.
fn check_crd(served: &Served, crd: &Value) -> Result<(), ApiError> {
    let s = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    let (group, plural, kind) = (s("/spec/group"), s("/spec/names/plural"), s("/spec/names/kind"));
    let name = super::objects::name_of(crd).to_string();
    if group.is_empty() {
        return Err(invalid(
            served,
            crd,
            "spec.group",
            "FieldValueRequired",
            "Required value".into(),
        ));
    }
    if plural.is_empty() {
        return Err(invalid(
            served,
            crd,
            "spec.names.plural",
            "FieldValueRequired",
            "Required value".into(),
        ));
    }
    if kind.is_empty() {
        return Err(invalid(
            served,
            crd,
            "spec.names.kind",
            "FieldValueRequired",
            "Required value".into(),
        ));
    }
    if name != format!("{plural}.{group}") {
        return Err(invalid(
            served,
            crd,
            "metadata.name",
            "FieldValueInvalid",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if !matches!(s("/spec/scope").as_str(), "Namespaced" | "Cluster") {
        return Err(invalid(
            served,
            crd,
            "spec.scope",
            "FieldValueNotSupported",
            format!(
                "Unsupported value: \"{}\": supported values: \"Cluster\", \"Namespaced\"",
                s("/spec/scope")
            ),
        ));
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        return Err(invalid(
            served,
            crd,
            "spec.versions",
            "FieldValueInvalid",
            "Invalid value: null: must have exactly one version marked as storage version".into(),
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage") == Some(&json!(true)))
        .count();
    if storage != 1 {
        return Err(invalid(
            served,
            crd,
            "spec.versions",
            "FieldValueInvalid",
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if v.pointer("/schema/openAPIV3Schema").is_none() {
            return Err(invalid(
                served,
                crd,
                &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "FieldValueRequired",
                "Required value: schemas are required".into(),
            ));
        }
    }
    Ok(())
}

/// Mark a CRD accepted and established, as the apiextensions controllers do.
fn accept_crd(crd: &mut Value) {
    let now = super::objects::now_rfc3339();
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let mut accepted = names.clone();
    if accepted.get("singular").is_none() {
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        accepted["singular"] = json!(kind);
    }
    if accepted.get("listKind").is_none() {
        let kind = names.get("kind").and_then(Value::as_str).unwrap_or_default();
        accepted["listKind"] = json!(format!("{kind}List"));
    }
    let storage: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("storage") == Some(&json!(true)))
        .filter_map(|v| v.get("name").cloned())
        .collect();
    crd["status"] = json!({
        "acceptedNames": accepted,
        "storedVersions": storage,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    });
}
