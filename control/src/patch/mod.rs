//! Patches on JSON values: RFC 6902 JSON patch, RFC 7386 merge patch, Kubernetes strategic merge
//! patch (with the list merge keys of the built-in types) and server-side apply.

mod apply;
#[doc(hidden)]
pub mod fuzz;
mod json_patch;
mod schema;
mod strategic;

pub use apply::{ApplyConflict, Conflict, apply, managed_fields_of};
pub use json_patch::json_patch;
pub use schema::{ListStrategy, list_strategy};
pub use strategic::strategic_merge_patch;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("{0}")]
    Invalid(String),
    #[error("test operation failed at {0}")]
    TestFailed(String),
    #[error("path {0} does not exist")]
    Missing(String),
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(doc: &Value, patch: &Value) -> Value {
    let mut out = doc.clone();
    merge_into(&mut out, patch);
    out
}

fn merge_into(doc: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Default::default());
    }
    let d = doc.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            d.remove(k);
        } else {
            merge_into(d.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        let out = merge_patch(&doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(out, json!({"a": "z", "c": {"d": "e"}}));
        assert_eq!(
            merge_patch(&json!({"a": [1, 2]}), &json!({"a": [3]})),
            json!({"a": [3]})
        );
    }
}
