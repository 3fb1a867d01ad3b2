//! Kubernetes strategic merge patch, as kubectl sends it (`apply`, `patch`, `edit`): maps merge,
//! keyed lists merge by their merge key, and the `$patch`, `$retainKeys`,
//! `$setElementOrder/<field>` and `$deleteFromPrimitiveList/<field>` directives.

use serde_json::{Map, Value};

use super::PatchError;
use super::schema::{ListStrategy, list_strategy};

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";
const RETAIN_KEYS: &str = "$retainKeys";
const PATCH: &str = "$patch";

/// Apply a strategic merge patch to a copy of `doc`. `kind` selects the merge keys; an empty kind
/// treats every list as atomic.
pub fn strategic_merge_patch(doc: &Value, patch: &Value, kind: &str) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else {
        return Err(PatchError::Invalid(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let mut out = doc.clone();
    if !out.is_object() {
        out = Value::Object(Map::new());
    }
    let mut path = Vec::new();
    match merge_map(out.as_object_mut().expect("made an object above"), p, &mut path, kind)? {
        MapOutcome::Keep => Ok(out),
        MapOutcome::Replace(v) => Ok(v),
        MapOutcome::Delete => Ok(Value::Object(Map::new())),
    }
}

/// Remove every directive from a value being inserted as is.
fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|x| !(x.is_object() && x.get(PATCH).is_some() && x.as_object().is_some_and(|m| m.len() == 1)))
                .map(strip)
                .collect(),
        ),
        other => other.clone(),
    }
}

enum MapOutcome {
    Keep,
    Replace(Value),
    Delete,
}

fn merge_map(
    doc: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
    kind: &str,
) -> Result<MapOutcome, PatchError> {
    match patch.get(PATCH).and_then(Value::as_str) {
        Some("replace") => return Ok(MapOutcome::Replace(strip(&Value::Object(patch.clone())))),
        Some("delete") => return Ok(MapOutcome::Delete),
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Invalid(format!(
                "unknown patch directive \"{other}\" at {}",
                path.join(".")
            )));
        }
    }
    let mut orders: Vec<(&str, &Vec<Value>)> = Vec::new();
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVE) {
            let gone = v
                .as_array()
                .ok_or_else(|| PatchError::Invalid(format!("{k} must be a list")))?;
            if let Some(Value::Array(list)) = doc.get_mut(field) {
                list.retain(|x| !gone.contains(x));
            }
        } else if let Some(field) = k.strip_prefix(SET_ORDER) {
            orders.push((
                field,
                v.as_array()
                    .ok_or_else(|| PatchError::Invalid(format!("{k} must be a list")))?,
            ));
        }
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            doc.remove(k);
            continue;
        }
        path.push(k.clone());
        match v {
            Value::Object(pm) => {
                let entry = doc.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                match merge_map(entry.as_object_mut().expect("made an object above"), pm, path, kind)? {
                    MapOutcome::Keep => {}
                    MapOutcome::Replace(nv) => *entry = nv,
                    MapOutcome::Delete => {
                        doc.remove(k);
                    }
                }
            }
            Value::Array(items) => {
                let segs: Vec<&str> = path.iter().map(String::as_str).collect();
                let merged = match list_strategy(kind, &segs) {
                    ListStrategy::Replace => strip(v),
                    ListStrategy::Set => {
                        // A set is a list of primitives (finalizers): an object or a list in it is
                        // refused, as the API would refuse the object it made.
                        if let Some(i) = items.iter().position(|x| x.is_object() || x.is_array()) {
                            return Err(PatchError::Invalid(format!(
                                "{}[{i}]: a list of strings cannot hold an object or a list",
                                path.join(".")
                            )));
                        }
                        let mut cur = doc.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                        for x in items {
                            if !cur.contains(x) {
                                cur.push(x.clone());
                            }
                        }
                        Value::Array(cur)
                    }
                    ListStrategy::Merge(key) => {
                        let cur = doc.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                        Value::Array(merge_keyed(cur, items, key, path, kind)?)
                    }
                };
                doc.insert(k.clone(), merged);
            }
            other => {
                doc.insert(k.clone(), other.clone());
            }
        }
        path.pop();
    }
    for (field, order) in orders {
        if let Some(Value::Array(list)) = doc.get_mut(field) {
            reorder(list, order);
        }
    }
    if let Some(retain) = patch.get(RETAIN_KEYS).and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        doc.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(MapOutcome::Keep)
}

fn key_of<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|m| m.get(key))
}

fn merge_keyed(
    mut cur: Vec<Value>,
    items: &[Value],
    key: &str,
    path: &mut Vec<String>,
    kind: &str,
) -> Result<Vec<Value>, PatchError> {
    if items
        .iter()
        .any(|x| x.get(PATCH).and_then(Value::as_str) == Some("replace") && x.as_object().is_some_and(|m| m.len() == 1))
    {
        return Ok(items
            .iter()
            .filter(|x| !(x.get(PATCH).is_some() && x.as_object().is_some_and(|m| m.len() == 1)))
            .map(strip)
            .collect());
    }
    for item in items {
        let Some(k) = key_of(item, key) else {
            cur.push(strip(item));
            continue;
        };
        let pos = cur.iter().position(|c| key_of(c, key) == Some(k));
        if item.get(PATCH).and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                cur.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => {
                let target = &mut cur[i];
                if let (Value::Object(tm), Value::Object(pm)) = (&mut *target, item) {
                    match merge_map(tm, pm, path, kind)? {
                        MapOutcome::Keep => {}
                        MapOutcome::Replace(nv) => *target = nv,
                        MapOutcome::Delete => {
                            cur.remove(i);
                        }
                    }
                } else {
                    *target = strip(item);
                }
            }
            None => cur.push(strip(item)),
        }
    }
    Ok(cur)
}

/// Order a list as `$setElementOrder` says: the listed elements in that order first (matched by
/// value, or by their one key for objects), then any others in their present order.
fn reorder(list: &mut Vec<Value>, order: &[Value]) {
    let matches = |elem: &Value, o: &Value| match o {
        Value::Object(om) => om.iter().all(|(k, v)| elem.get(k) == Some(v)),
        other => elem == other,
    };
    let mut rest: Vec<Value> = std::mem::take(list);
    for o in order {
        if let Some(i) = rest.iter().position(|e| matches(e, o)) {
            list.push(rest.remove(i));
        }
    }
    list.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"spec": {"containers": [
                {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "side", "image": "s:1"}]}}}})
    }

    #[test]
    fn kubectl_apply_env_change() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
            "containers": [{"$setElementOrder/env": [{"name": "A"}, {"name": "B"}], "env": [{"name": "A", "value": "9"}], "name": "app"}]}}}});
        let out = strategic_merge_patch(&deployment(), &patch, "Deployment").unwrap();
        assert_eq!(
            out.pointer("/spec/template/spec/containers/0/env"),
            Some(&json!([{"name": "A", "value": "9"}, {"name": "B", "value": "2"}]))
        );
        assert_eq!(
            out.pointer("/spec/template/spec/containers/0/image"),
            Some(&json!("a:1"))
        );
        assert_eq!(
            out.pointer("/spec/template/spec/containers/1/name"),
            Some(&json!("side"))
        );
        assert!(!out.to_string().contains('$'));
    }

    #[test]
    fn delete_directives_and_retain_keys() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "env": [{"name": "B", "$patch": "delete"}]},
            {"name": "side", "$patch": "delete"}]}}}});
        let out = strategic_merge_patch(&deployment(), &patch, "Deployment").unwrap();
        assert_eq!(
            out.pointer("/spec/template/spec/containers/0/env"),
            Some(&json!([{"name": "A", "value": "1"}]))
        );
        assert_eq!(
            out.pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .map(Vec::len),
            Some(1)
        );
        let recreate =
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
        let out = strategic_merge_patch(&deployment(), &recreate, "Deployment").unwrap();
        assert_eq!(out.pointer("/spec/strategy"), Some(&json!({"type": "Recreate"})));
    }

    #[test]
    fn structured_element_in_a_set_list_is_refused() {
        // libFuzzer's find (2026-12-06): a directive inside an object appended to finalizers
        // stayed in the object.
        let doc = json!({"metadata": {"name": "p", "finalizers": ["a"]}});
        let patch = json!({"metadata": {"finalizers": [[""], {"$setElementOrder/containers": null}]}});
        let err = strategic_merge_patch(&doc, &patch, "Pod").unwrap_err();
        assert!(err.to_string().contains("metadata.finalizers[0]"), "{err}");
        let patch = json!({"metadata": {"finalizers": ["b", {"x": 1}]}});
        let err = strategic_merge_patch(&doc, &patch, "Pod").unwrap_err();
        assert!(err.to_string().contains("metadata.finalizers[1]"), "{err}");
        let ok = strategic_merge_patch(&doc, &json!({"metadata": {"finalizers": ["b", "a"]}}), "Pod").unwrap();
        assert_eq!(ok["metadata"]["finalizers"], json!(["a", "b"]));
    }

    #[test]
    fn replace_and_primitive_lists() {
        let doc = json!({"metadata": {"finalizers": ["a"]}, "spec": {"tolerations": [{"key": "x"}]}});
        let patch = json!({"metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"tolerations": [{"key": "y"}]}});
        let out = strategic_merge_patch(&doc, &patch, "Pod").unwrap();
        assert_eq!(out.pointer("/metadata/finalizers"), Some(&json!(["b"])));
        assert_eq!(out.pointer("/spec/tolerations"), Some(&json!([{"key": "y"}])));
        let out = strategic_merge_patch(
            &deployment(),
            &json!({"spec": {"template": {"$patch": "replace", "spec": {}}}}),
            "Deployment",
        )
        .unwrap();
        assert_eq!(out.pointer("/spec/template"), Some(&json!({"spec": {}})));
    }
}
