//! The eviction subresource (`POST pods/<name>/eviction`, policy/v1 Eviction): a pod is deleted
//! only if the PodDisruptionBudget that selects it allows one more disruption now, which the
//! eviction spends (recorded in the budget's `disruptedPods` until the pod is gone); otherwise
//! 429 with the budget's reason, as the apiserver answers `kubectl drain`.

use std::sync::Arc;

use ::http::Response;
use serde_json::{Value, json};

use super::ApiState;
use super::commit::{UpdateCtx, commit_update};
use super::error::{ApiError, Cause, not_found};
use super::http::{Body, Want, respond};
use super::registry::Served;
use super::select::LabelSelector;

/// Whether a budget's selector picks a pod (an empty or missing selector picks none, as in v1).
pub fn selects(pdb: &Value, pod: &Value) -> bool {
    let Some(sel) = pdb.pointer("/spec/selector").filter(|s| !s.is_null()) else {
        return false;
    };
    let sel = LabelSelector::from_object(sel);
    !sel.is_empty() && sel.matches(pod)
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn int(v: &Value, p: &str, default: i64) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(default)
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True"))
}

fn too_many(message: String, why: String) -> ApiError {
    ApiError::TooManyRequests {
        message,
        cause: Cause {
            reason: "DisruptionBudget".into(),
            message: why,
            field: String::new(),
        },
    }
}

pub(super) async fn evict(
    state: &Arc<ApiState>,
    pods: &Served,
    ns: &str,
    name: &str,
    body: Value,
    answer: Want,
) -> Result<Response<Body>, ApiError> {
    let pod = state
        .store
        .get(&pods.key(Some(ns), name))
        .ok_or_else(|| not_found(pods, name))?;
    let done = || json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    let options = body.get("deleteOptions").filter(|o| o.is_object());
    let terminal = matches!(s(&pod.obj, "/status/phase"), "Succeeded" | "Failed");
    let pdbs_res = state
        .registry
        .lookup("policy", "v1", "poddisruptionbudgets")
        .ok_or(ApiError::NoRoute)?;
    let (pdbs, _, _) = state
        .store
        .list(&pdbs_res.ns_prefix(Some(ns)), None, 0, &|b| selects(b, &pod.obj));
    if terminal || pdbs.is_empty() || pod.obj.pointer("/metadata/deletionTimestamp").is_some() {
        super::delete::delete_with_options(state, pods, Some(ns), name, options).await?;
        return Ok(respond(answer, 201, &done(), &[]));
    }
    if pdbs.len() > 1 {
        return Err(ApiError::Internal(
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
        ));
    }
    let pdb = &pdbs[0];
    let pdb_name = s(&pdb.obj, "/metadata/name").to_string();
    let refused = "Cannot evict pod as it would violate the pod's disruption budget.".to_string();
    let generation = int(&pdb.obj, "/metadata/generation", 1);
    let observed = int(&pdb.obj, "/status/observedGeneration", 0);
    if observed < generation {
        return Err(too_many(
            refused,
            format!("The disruption budget {pdb_name} is still being processed by the server."),
        ));
    }
    let desired = int(&pdb.obj, "/status/desiredHealthy", 0);
    let healthy = int(&pdb.obj, "/status/currentHealthy", 0);
    // An unready pod takes nothing from the budget when the budget says so.
    let policy = s(&pdb.obj, "/spec/unhealthyPodEvictionPolicy");
    if !ready(&pod.obj) && (policy == "AlwaysAllow" || healthy >= desired) {
        super::delete::delete_with_options(state, pods, Some(ns), name, options).await?;
        return Ok(respond(answer, 201, &done(), &[]));
    }
    let allowed = int(&pdb.obj, "/status/disruptionsAllowed", 0);
    if allowed <= 0 {
        return Err(too_many(
            refused,
            format!("The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently"),
        ));
    }
    // Spend one disruption, then delete: a conflict (another eviction spent it first) is a 429
    // the client retries, as on Kubernetes.
    let mut spent = (*pdb.obj).clone();
    spent["status"]["disruptionsAllowed"] = json!(allowed - 1);
    spent["status"]["disruptedPods"][name] = json!(super::objects::now_rfc3339());
    let key = pdbs_res.key(Some(ns), &pdb_name);
    match commit_update(
        state,
        &pdbs_res,
        &key,
        pdb,
        spent,
        &UpdateCtx {
            sub: Some("status"),
            dry: false,
        },
    )
    .await
    {
        Ok(_) => {}
        Err(ApiError::Conflict { .. }) => {
            return Err(too_many(
                refused,
                format!("The disruption budget {pdb_name} changed; try again"),
            ));
        }
        Err(e) => return Err(e),
    }
    super::delete::delete_with_options(state, pods, Some(ns), name, options).await?;
    Ok(respond(answer, 201, &done(), &[]))
}
