//! RFC 6902 JSON patch. Applied to a copy: an error leaves the input untouched.

use serde_json::Value;

use super::PatchError;

fn unescape(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

fn split(pointer: &str) -> Result<Vec<String>, PatchError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| PatchError::Invalid(format!("path \"{pointer}\" must start with /")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(doc: &'a mut Value, segs: &[String], path: &str) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for s in segs {
        cur = match cur {
            Value::Object(m) => m.get_mut(s),
            Value::Array(a) => s.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError::Missing(path.to_string()))?;
    }
    Ok(cur)
}

fn get(doc: &Value, path: &str) -> Result<Value, PatchError> {
    let segs = split(path)?;
    let mut cur = doc;
    for s in &segs {
        cur = match cur {
            Value::Object(m) => m.get(s),
            Value::Array(a) => s.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError::Missing(path.to_string()))?;
    }
    Ok(cur.clone())
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    let segs = split(path)?;
    let Some((last, parents)) = segs.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents, path)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| PatchError::Invalid(format!("bad array index in {path}")))?;
                if i > a.len() {
                    return Err(PatchError::Missing(path.to_string()));
                }
                a.insert(i, value);
            }
        }
        _ => return Err(PatchError::Missing(path.to_string())),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let segs = split(path)?;
    let (last, parents) = segs
        .split_last()
        .ok_or_else(|| PatchError::Invalid("cannot remove the whole document".into()))?;
    match parent_mut(doc, parents, path)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| PatchError::Missing(path.to_string())),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| PatchError::Invalid(format!("bad array index in {path}")))?;
            if i >= a.len() {
                return Err(PatchError::Missing(path.to_string()));
            }
            Ok(a.remove(i))
        }
        _ => Err(PatchError::Missing(path.to_string())),
    }
}

/// Apply an RFC 6902 patch (an array of operations) to a copy of `doc`.
pub fn json_patch(doc: &Value, ops: &Value) -> Result<Value, PatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| PatchError::Invalid("a JSON patch must be an array of operations".into()))?;
    let mut out = doc.clone();
    for (n, op) in ops.iter().enumerate() {
        let field = |k: &str| {
            op.get(k)
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| PatchError::Invalid(format!("operation {n}: \"{k}\" is required")))
        };
        let path = field("path")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| PatchError::Invalid(format!("operation {n}: \"value\" is required")))
        };
        match field("op")?.as_str() {
            "add" => add(&mut out, &path, value()?)?,
            "remove" => {
                remove(&mut out, &path)?;
            }
            "replace" => {
                remove(&mut out, &path)?;
                add(&mut out, &path, value()?)?;
            }
            "move" => {
                let v = remove(&mut out, &field("from")?)?;
                add(&mut out, &path, v)?;
            }
            "copy" => {
                let v = get(&out, &field("from")?)?;
                add(&mut out, &path, v)?;
            }
            "test" => {
                if get(&out, &path)? != value()? {
                    return Err(PatchError::TestFailed(path));
                }
            }
            other => return Err(PatchError::Invalid(format!("operation {n}: unknown op \"{other}\""))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations() {
        let doc = json!({"a": {"b": [1, 2]}, "x/y": 1});
        let ops = json!([
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "add", "path": "/a/b/0", "value": 0},
            {"op": "replace", "path": "/x~1y", "value": 2},
            {"op": "copy", "from": "/a/b", "path": "/c"},
            {"op": "move", "from": "/c", "path": "/d"},
            {"op": "remove", "path": "/a/b/1"},
            {"op": "test", "path": "/d/3", "value": 3},
        ]);
        assert_eq!(
            json_patch(&doc, &ops).unwrap(),
            json!({"a": {"b": [0, 2, 3]}, "x/y": 2, "d": [0, 1, 2, 3]})
        );
    }

    #[test]
    fn failures_leave_no_trace() {
        let doc = json!({"a": 1});
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&doc, &json!([{"op": "test", "path": "/a", "value": 2}])).is_err());
        assert!(json_patch(&doc, &json!({"op": "add"})).is_err());
        assert_eq!(doc, json!({"a": 1}));
    }
}
