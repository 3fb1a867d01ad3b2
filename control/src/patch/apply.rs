//! Server-side apply: the applied configuration is merged into the live object (maps by key,
//! keyed lists by merge key, atomic lists replaced), the fields each apply manager set are
//! recorded in `metadata.managedFields` (FieldsV1 form), fields a manager stops applying are
//! removed unless another manager owns them, and changing a field another apply manager owns is
//! a conflict unless forced. Non-apply updates are not tracked as owners (a simplification of
//! the apiserver, where they are).

use serde_json::{Map, Value, json};

use super::schema::{ListStrategy, list_strategy};

#[derive(Clone, Debug)]
pub struct Conflict {
    pub manager: String,
    /// Dotted path, as the apiserver prints it (`.spec.replicas`).
    pub field: String,
}

#[derive(Debug)]
pub struct ApplyConflict {
    pub conflicts: Vec<Conflict>,
}

impl std::fmt::Display for ApplyConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.conflicts.len();
        write!(f, "Apply failed with {n} conflict{}: ", if n == 1 { "" } else { "s" })?;
        let parts: Vec<String> = self
            .conflicts
            .iter()
            .map(|c| format!("conflict with \"{}\": {}", c.manager, c.field))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

impl std::error::Error for ApplyConflict {}

/// `metadata.managedFields` of an object.
pub fn managed_fields_of(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Identity fields no manager owns.
fn untracked(path: &[&str]) -> bool {
    matches!(
        path,
        ["apiVersion"]
            | ["kind"]
            | ["metadata", "name"]
            | ["metadata", "namespace"]
            | ["metadata", "resourceVersion"]
            | ["metadata", "managedFields"]
            | ["metadata", "uid"]
            | ["metadata", "creationTimestamp"]
            | ["metadata", "generation"]
    )
}

/// The FieldsV1 set of everything `v` sets.
fn fields(v: &Value, path: &mut Vec<String>, kind: &str) -> Value {
    let mut out = Map::new();
    let Value::Object(m) = v else { return Value::Object(out) };
    for (k, child) in m {
        path.push(k.clone());
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        if !untracked(&segs) {
            let sub = match child {
                Value::Object(_) => fields(child, path, kind),
                Value::Array(items) => match list_strategy(kind, &segs) {
                    ListStrategy::Merge(key) => {
                        let mut lm = Map::new();
                        for item in items {
                            if let Some(kv) = item.get(key) {
                                let mut elem = fields(item, path, kind).as_object().cloned().unwrap_or_default();
                                elem.insert(".".into(), json!({}));
                                lm.insert(format!("k:{}", json!({key: kv})), Value::Object(elem));
                            }
                        }
                        Value::Object(lm)
                    }
                    ListStrategy::Set => Value::Object(items.iter().map(|i| (format!("v:{i}"), json!({}))).collect()),
                    ListStrategy::Replace => json!({}),
                },
                _ => json!({}),
            };
            out.insert(format!("f:{k}"), sub);
        }
        path.pop();
    }
    Value::Object(out)
}

/// Every leaf path of a FieldsV1 set.
fn leaves(set: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Some(m) = set.as_object() else { return };
    if m.is_empty() {
        out.push(prefix.clone());
        return;
    }
    for (k, v) in m {
        if k == "." {
            out.push(prefix.clone());
            continue;
        }
        prefix.push(k.clone());
        leaves(v, prefix, out);
        prefix.pop();
    }
}

fn contains(set: &Value, path: &[String]) -> bool {
    let mut cur = set;
    for seg in path {
        match cur.get(seg) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    true
}

/// Find the child of `v` a FieldsV1 segment names.
fn step<'a>(v: &'a Value, seg: &str) -> Option<&'a Value> {
    if let Some(f) = seg.strip_prefix("f:") {
        return v.get(f);
    }
    let items = v.as_array()?;
    if let Some(k) = seg.strip_prefix("k:") {
        let key: Value = serde_json::from_str(k).ok()?;
        let km = key.as_object()?;
        return items.iter().find(|i| km.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
    }
    let want: Value = serde_json::from_str(seg.strip_prefix("v:")?).ok()?;
    items.iter().find(|i| **i == want)
}

fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, seg| step(cur, seg))
}

fn remove_at(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for seg in parents {
        let next = match seg.strip_prefix("f:") {
            Some(f) => cur.get_mut(f),
            None => {
                let found = step(cur, seg).cloned();
                cur.as_array_mut()
                    .and_then(|a| a.iter_mut().find(|i| Some(&**i) == found.as_ref()))
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last.strip_prefix("f:") {
        Some(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        None => {
            let found = step(cur, last).cloned();
            if let (Some(a), Some(found)) = (cur.as_array_mut(), found) {
                a.retain(|i| *i != found);
            }
        }
    }
}

fn merge(live: &mut Value, applied: &Value, path: &mut Vec<String>, kind: &str) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                path.push(k.clone());
                let segs: Vec<&str> = path.iter().map(String::as_str).collect();
                match (l.get_mut(k), av) {
                    (Some(lv @ Value::Object(_)), Value::Object(_)) => merge(lv, av, path, kind),
                    (Some(Value::Array(litems)), Value::Array(aitems)) => match list_strategy(kind, &segs) {
                        ListStrategy::Merge(key) => {
                            for ai in aitems {
                                match litems
                                    .iter_mut()
                                    .find(|li| li.get(key).is_some() && li.get(key) == ai.get(key))
                                {
                                    Some(li) => merge(li, ai, path, kind),
                                    None => litems.push(ai.clone()),
                                }
                            }
                        }
                        ListStrategy::Set => {
                            for ai in aitems {
                                if !litems.contains(ai) {
                                    litems.push(ai.clone());
                                }
                            }
                        }
                        ListStrategy::Replace => *litems = aitems.clone(),
                    },
                    _ => {
                        l.insert(k.clone(), av.clone());
                    }
                }
                path.pop();
            }
        }
        (live, applied) => *live = applied.clone(),
    }
}

fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|s| match s.strip_prefix("f:") {
            Some(f) => format!(".{f}"),
            None => format!("[{}]", s.trim_start_matches("k:").trim_start_matches("v:")),
        })
        .collect()
}

/// Apply `applied` for `manager` over `live` (None: the object does not exist yet). Returns the
/// new object with its managedFields.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    kind: &str,
    api_version: &str,
    now: &str,
) -> Result<Value, ApplyConflict> {
    let mut out = live.cloned().unwrap_or_else(|| json!({}));
    let mut managed = live.map(managed_fields_of).unwrap_or_default();
    let new_set = fields(applied, &mut Vec::new(), kind);
    let mut new_leaves = Vec::new();
    leaves(&new_set, &mut Vec::new(), &mut new_leaves);

    // Conflicts: a field another apply manager owns, set here to a different value.
    let mut conflicts = Vec::new();
    for entry in managed.iter_mut() {
        let other = entry
            .get("manager")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if other == manager || entry.get("operation").and_then(Value::as_str) != Some("Apply") {
            continue;
        }
        let mut owned = entry.get("fieldsV1").cloned().unwrap_or(json!({}));
        let mut taken = false;
        for leaf in &new_leaves {
            if !contains(&owned, leaf) {
                continue;
            }
            let differs = value_at(&out, leaf) != value_at(applied, leaf);
            if differs {
                if force {
                    remove_owned(&mut owned, leaf);
                    taken = true;
                } else {
                    conflicts.push(Conflict {
                        manager: other.clone(),
                        field: dotted(leaf),
                    });
                }
            }
        }
        if taken {
            entry["fieldsV1"] = owned;
        }
    }
    if !conflicts.is_empty() {
        return Err(ApplyConflict { conflicts });
    }

    merge(&mut out, applied, &mut Vec::new(), kind);

    // Fields this manager applied before and no longer does go, unless someone else owns them.
    let old_set = managed
        .iter()
        .find(|e| {
            e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some("Apply")
        })
        .and_then(|e| e.get("fieldsV1").cloned());
    if let Some(old) = old_set {
        let mut old_leaves = Vec::new();
        leaves(&old, &mut Vec::new(), &mut old_leaves);
        for leaf in old_leaves {
            if contains(&new_set, &leaf) {
                continue;
            }
            let others_own = managed.iter().any(|e| {
                e.get("manager").and_then(Value::as_str) != Some(manager)
                    && e.get("fieldsV1").is_some_and(|f| contains(f, &leaf))
            });
            if !others_own {
                remove_at(&mut out, &leaf);
            }
        }
    }

    managed.retain(|e| {
        !(e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply"))
    });
    managed.push(json!({
        "manager": manager, "operation": "Apply", "apiVersion": api_version, "time": now,
        "fieldsType": "FieldsV1", "fieldsV1": new_set,
    }));
    if !out.get("metadata").is_some_and(Value::is_object) {
        out["metadata"] = json!({});
    }
    out["metadata"]["managedFields"] = Value::Array(managed);
    Ok(out)
}

/// Drop one leaf from a FieldsV1 set.
fn remove_owned(set: &mut Value, leaf: &[String]) {
    let Some((last, parents)) = leaf.split_last() else {
        return;
    };
    let mut cur = set;
    for seg in parents {
        match cur.get_mut(seg) {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}, "data": data})
    }

    #[test]
    fn reapply_removes_dropped_fields() {
        let first = apply(
            None,
            &cm(json!({"x": "1", "y": "2"})),
            "me",
            false,
            "ConfigMap",
            "v1",
            "t",
        )
        .unwrap();
        assert_eq!(first["data"], json!({"x": "1", "y": "2"}));
        let fields = &first["metadata"]["managedFields"][0]["fieldsV1"];
        assert_eq!(fields["f:data"], json!({"f:x": {}, "f:y": {}}));
        let second = apply(
            Some(&first),
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "3"}}),
            "me",
            false,
            "ConfigMap",
            "v1",
            "t",
        )
        .unwrap();
        assert_eq!(second["data"], json!({"x": "3"}));
        assert!(
            second["metadata"]
                .get("labels")
                .is_none_or(|l| l.as_object().is_none_or(|m| m.is_empty())),
            "{second}"
        );
    }

    #[test]
    fn conflicts_and_force() {
        let first = apply(None, &cm(json!({"x": "1"})), "a", false, "ConfigMap", "v1", "t").unwrap();
        let err = apply(Some(&first), &cm(json!({"x": "2"})), "b", false, "ConfigMap", "v1", "t").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"a\": .data.x"
        );
        // Same value: shared ownership, no conflict.
        assert!(apply(Some(&first), &cm(json!({"x": "1"})), "b", false, "ConfigMap", "v1", "t").is_ok());
        let forced = apply(Some(&first), &cm(json!({"x": "2"})), "b", true, "ConfigMap", "v1", "t").unwrap();
        assert_eq!(forced["data"]["x"], "2");
        let a = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "a")
            .unwrap();
        assert!(a["fieldsV1"]["f:data"].get("f:x").is_none(), "{a}");
    }

    #[test]
    fn keyed_lists_merge_by_name() {
        let dep = |img: &str| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": img}]}}}})
        };
        let mut live = apply(None, &dep("a:1"), "me", false, "Deployment", "apps/v1", "t").unwrap();
        live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
        let out = apply(Some(&live), &dep("a:2"), "me", false, "Deployment", "apps/v1", "t").unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "app", "image": "a:2", "imagePullPolicy": "IfNotPresent"}])
        );
        let f = &out["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"];
        assert!(f.get("k:{\"name\":\"app\"}").is_some(), "{f}");
    }
}
