//! PATCH bodies: JSON patch, merge patch, strategic merge patch and server-side apply, through
//! the `nodeless-patch` crate; errors become Kubernetes statuses here.

use serde_json::Value;

use crate::patch;

use super::error::{ApiError, Cause, Subject};
use super::http::BodyType;
use super::registry::Served;

/// The kind whose list merge keys apply; custom resources have none (every list is atomic).
fn schema_kind(served: &Served) -> &str {
    if served.custom { "" } else { &served.def.kind }
}

fn patch_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::Invalid {
        message: format!("the patch could not be applied: {e}"),
        causes: Vec::new(),
        subject: Subject::default(),
    }
}

/// Apply a JSON, merge or strategic patch to `doc` (used for the Scale view too).
pub fn apply_plain_patch(ty: BodyType, doc: &Value, patch: &Value) -> Result<Value, ApiError> {
    match ty {
        BodyType::JsonPatch => patch::json_patch(doc, patch).map_err(patch_error),
        BodyType::MergePatch | BodyType::Json => Ok(patch::merge_patch(doc, patch)),
        BodyType::StrategicMergePatch => patch::strategic_merge_patch(doc, patch, "").map_err(patch_error),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "{ty:?} is not a patch type for this resource"
        ))),
    }
}

/// Apply a PATCH body of type `ty` to the current object.
pub fn apply_patch(
    served: &Served,
    ty: BodyType,
    current: &Value,
    patch: &Value,
    manager: Option<&str>,
    force: bool,
) -> Result<Value, ApiError> {
    let kind = schema_kind(served);
    match ty {
        BodyType::JsonPatch => patch::json_patch(current, patch).map_err(patch_error),
        BodyType::MergePatch => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            Ok(patch::merge_patch(current, patch))
        }
        BodyType::StrategicMergePatch => {
            if served.custom {
                return Err(ApiError::UnsupportedMediaType(
                    "strategic merge patch is not supported for custom resources: use a merge or JSON patch".into(),
                ));
            }
            patch::strategic_merge_patch(current, patch, kind).map_err(patch_error)
        }
        BodyType::ApplyPatch => {
            check_applied(served, patch)?;
            let now = super::objects::now_rfc3339();
            patch::apply(Some(current), patch, manager.unwrap_or_default(), force, kind, &served.def.api_version(), &now)
                .map_err(|c| apply_conflict(served, current, c))
        }
        BodyType::Json | BodyType::Yaml | BodyType::Protobuf => Err(ApiError::UnsupportedMediaType(
            "the body of a PATCH must be application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json or application/apply-patch+yaml".into(),
        )),
    }
}

/// The object server-side apply creates when nothing exists yet.
pub fn apply_create(served: &Served, patch: &Value, manager: &str) -> Result<Value, ApiError> {
    check_applied(served, patch)?;
    let now = super::objects::now_rfc3339();
    patch::apply(
        None,
        patch,
        manager,
        false,
        schema_kind(served),
        &served.def.api_version(),
        &now,
    )
    .map_err(|c| apply_conflict(served, patch, c))
}

fn check_applied(served: &Served, patch: &Value) -> Result<(), ApiError> {
    if !patch.is_object() {
        return Err(ApiError::bad_request("an apply patch must be an object"));
    }
    for (field, want) in [
        ("apiVersion", served.def.api_version()),
        ("kind", served.def.kind.clone()),
    ] {
        match patch.get(field).and_then(Value::as_str) {
            Some(v) if v == want => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "{field} in the applied configuration is \"{v}\", expected \"{want}\""
                )));
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "{field} must be set in an applied configuration"
                )));
            }
        }
    }
    Ok(())
}

fn apply_conflict(served: &Served, obj: &Value, c: patch::ApplyConflict) -> ApiError {
    let name = super::objects::name_of(obj).to_string();
    let causes = c
        .conflicts
        .iter()
        .map(|x| Cause {
            reason: "FieldManagerConflict".into(),
            message: format!("conflict with \"{}\"", x.manager),
            field: x.field.clone(),
        })
        .collect();
    ApiError::ApplyConflict {
        message: c.to_string(),
        causes,
        subject: Subject {
            group: served.def.group.clone(),
            kind: served.def.plural.clone(),
            name,
        },
    }
}
