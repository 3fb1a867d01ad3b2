//! Custom resources against their CRD's structural schema: unknown fields are pruned (or refused
//! under `fieldValidation=Strict`), and types, required fields, enums and bounds are checked.

use serde_json::{Map, Value};

use super::error::{ApiError, Cause, Subject};
use super::objects::FieldValidation;
use super::registry::Served;

struct Checker {
    unknown: Vec<String>,
    causes: Vec<Cause>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Checker {
    fn cause(&mut self, path: &str, reason: &str, message: String) {
        self.causes.push(Cause {
            reason: reason.into(),
            message,
            field: path.into(),
        });
    }

    fn walk(&mut self, v: &mut Value, schema: &Value, path: &str) {
        if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            if !matches!(type_name(v), "integer" | "string") {
                self.cause(
                    path,
                    "FieldValueTypeInvalid",
                    format!(
                        "Invalid value: \"{}\": {path} in body must be of type int-or-string",
                        type_name(v)
                    ),
                );
            }
            return;
        }
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            let got = type_name(v);
            let ok = got == t
                || (t == "number" && got == "integer")
                || (v.is_null() && schema.get("nullable") == Some(&Value::Bool(true)));
            if !ok {
                self.cause(
                    path,
                    "FieldValueTypeInvalid",
                    format!("Invalid value: \"{got}\": {path} in body must be of type {t}: \"{got}\""),
                );
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(v) {
                let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
                self.cause(
                    path,
                    "FieldValueNotSupported",
                    format!("Unsupported value: {v}: supported values: {}", list.join(", ")),
                );
            }
        }
        if let Some(n) = v.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    self.cause(
                        path,
                        "FieldValueInvalid",
                        format!("Invalid value: {v}: {path} in body should be greater than or equal to {min}"),
                    );
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    self.cause(
                        path,
                        "FieldValueInvalid",
                        format!("Invalid value: {v}: {path} in body should be less than or equal to {max}"),
                    );
                }
            }
        }
        if let Some(s) = v.as_str() {
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                if regex::Regex::new(p).is_ok_and(|re| !re.is_match(s)) {
                    self.cause(
                        path,
                        "FieldValueInvalid",
                        format!("Invalid value: \"{s}\": {path} in body should match '{p}'"),
                    );
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if s.chars().count() as u64 > max {
                    self.cause(
                        path,
                        "FieldValueTooLong",
                        format!("Too long: may not be more than {max} bytes"),
                    );
                }
            }
        }
        match v {
            Value::Object(map) => self.object(map, schema, path),
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter_mut().enumerate() {
                        self.walk(item, item_schema, &format!("{path}[{i}]"));
                    }
                }
            }
            _ => {}
        }
    }

    fn object(&mut self, map: &mut Map<String, Value>, schema: &Value, path: &str) {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !map.contains_key(req) {
                self.cause(&join(req), "FieldValueRequired", "Required value".into());
            }
        }
        let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties").filter(|a| a.is_object());
        let keys: Vec<String> = map.keys().cloned().collect();
        for k in keys {
            if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            let sub = props.and_then(|p| p.get(&k)).or(additional);
            match sub {
                Some(s) => {
                    if let Some(child) = map.get_mut(&k) {
                        self.walk(child, s, &join(&k));
                    }
                }
                None if preserve || (props.is_none() && additional.is_none() && schema.get("type").is_none()) => {}
                None => {
                    self.unknown.push(join(&k));
                    map.remove(&k);
                }
            }
        }
    }
}

/// Check (and prune) a custom resource. Returns the object and the warnings for unknown fields.
pub fn check(served: &Served, mut obj: Value, validation: FieldValidation) -> Result<(Value, Vec<String>), ApiError> {
    let Some(schema) = served.schema.as_ref() else {
        return Ok((obj, Vec::new()));
    };
    let mut c = Checker {
        unknown: Vec::new(),
        causes: Vec::new(),
    };
    c.walk(&mut obj, schema, "");
    let kind = &served.def.kind;
    if !c.unknown.is_empty() && validation == FieldValidation::Strict {
        let listed: Vec<String> = c.unknown.iter().map(|p| format!("unknown field \"{p}\"")).collect();
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
            served.def.version,
            listed.join(", ")
        )));
    }
    if !c.causes.is_empty() {
        let name = super::objects::name_of(&obj).to_string();
        let details: Vec<String> = c.causes.iter().map(|x| format!("{}: {}", x.field, x.message)).collect();
        let joined = if details.len() == 1 {
            details[0].clone()
        } else {
            format!("[{}]", details.join(", "))
        };
        return Err(ApiError::Invalid {
            message: format!("{}.{} \"{name}\" is invalid: {joined}", kind, served.def.group),
            causes: c.causes,
            subject: Subject {
                group: served.def.group.clone(),
                kind: kind.clone(),
                name,
            },
        });
    }
    let warnings = if validation == FieldValidation::Warn {
        c.unknown.iter().map(|p| format!("unknown field \"{p}\"")).collect()
    } else {
        Vec::new()
    };
    Ok((obj, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeless_types::{ResourceDef, Scope};
    use serde_json::json;

    fn served() -> Served {
        Served {
            def: ResourceDef {
                group: "example.com".into(),
                version: "v1".into(),
                kind: "Widget".into(),
                list_kind: "WidgetList".into(),
                plural: "widgets".into(),
                singular: "widget".into(),
                scope: Scope::Namespaced,
                short_names: vec![],
                categories: vec![],
                subresources: vec![],
                storage: nodeless_types::catalogue::Storage::Stored,
            },
            schema: Some(json!({"type": "object", "properties": {"spec": {"type": "object",
                "required": ["size"],
                "properties": {"size": {"type": "integer", "minimum": 1}, "color": {"type": "string", "enum": ["red", "blue"]}}}}})),
            columns: None,
            custom: true,
            scale_paths: None,
            view_of: None,
        }
    }

    #[test]
    fn prunes_and_validates() {
        let obj = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 2, "extra": 1}});
        let (out, warnings) = check(&served(), obj.clone(), FieldValidation::Warn).unwrap();
        assert!(out.pointer("/spec/extra").is_none());
        assert_eq!(warnings, vec!["unknown field \"spec.extra\"".to_string()]);
        assert_eq!(check(&served(), obj, FieldValidation::Strict).unwrap_err().code(), 400);
        let bad = json!({"metadata": {"name": "w"}, "spec": {"size": 0, "color": "green"}});
        let err = check(&served(), bad, FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code(), 422);
        let msg = err.to_string();
        assert!(msg.contains("spec.size") && msg.contains("spec.color"), "{msg}");
        let missing = json!({"metadata": {"name": "w"}, "spec": {}});
        assert!(
            check(&served(), missing, FieldValidation::Strict)
                .unwrap_err()
                .to_string()
                .contains("spec.size: Required value")
        );
    }
}
