//! Fuzz targets for what a client's request body becomes: the body decoded as JSON or YAML
//! ([`crate::api::http::parse_value`]) and the three patch kinds applied to an object. `fuzz/`
//! runs them under libfuzzer and `tests/fuzz_props.rs` on stable; both panic when a property
//! fails, not only when the code under test does.
//!
//! The patch targets build the object and the patch from choices (keys, list indexes, escapes
//! and `$` directives an attacker would try), since random bytes are rarely a JSON patch.

use serde_json::{Map, Value, json};

use super::{PatchError, json_patch, merge_patch, strategic_merge_patch};
use crate::api::http::{BodyType, parse_value};

/// A request body in any of the media types the API takes: decoded, or refused with a 400.
pub fn body(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    const TYPES: [BodyType; 6] = [
        BodyType::Json,
        BodyType::Yaml,
        BodyType::JsonPatch,
        BodyType::MergePatch,
        BodyType::StrategicMergePatch,
        BodyType::ApplyPatch,
    ];
    let ty = TYPES[usize::from(which) % TYPES.len()];
    match parse_value(bytes, ty) {
        Ok(v) => {
            // What was decoded encodes and decodes to itself (no NaN, no lone surrogate).
            let again: Value = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
            assert_eq!(again, v);
        }
        Err(e) => {
            assert_eq!(e.code(), 400, "a body refused with {}: {e}", e.code());
            assert_eq!(e.status()["code"], 400);
        }
    }
}

/// Reads an input as a stream of choices; past its end every choice is 0.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn pick<'v>(&mut self, from: &[&'v str]) -> &'v str {
        from[self.below(from.len())]
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

const KEYS: [&str; 12] = [
    "a",
    "b",
    "name",
    "spec",
    "containers",
    "metadata",
    "finalizers",
    "x/y",
    "m~n",
    "",
    "0",
    "-",
];

/// A JSON value from choices, at most `depth` deep.
fn value(c: &mut Choices<'_>, depth: usize, keys: &[&str]) -> Value {
    match c.below(if depth == 0 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(c.below(2) == 0),
        2 => json!(c.below(4)),
        3 => json!(c.pick(&["x", "y", "", "a"])),
        4 => json!(c.pick(keys)),
        5 | 6 => {
            let mut m = Map::new();
            for _ in 0..c.below(4) {
                let k = c.pick(keys).to_string();
                m.insert(k, value(c, depth - 1, keys));
            }
            Value::Object(m)
        }
        _ => Value::Array((0..c.below(4)).map(|_| value(c, depth - 1, keys)).collect()),
    }
}

/// A JSON pointer from choices: keys, indexes good and bad, escapes, and pointers that are not.
fn pointer(c: &mut Choices<'_>) -> String {
    const SEGMENTS: [&str; 16] = [
        "a",
        "b",
        "name",
        "spec",
        "0",
        "1",
        "2",
        "-",
        "01",
        "+1",
        "18446744073709551616",
        "",
        "x~1y",
        "m~0n",
        "~2",
        "~",
    ];
    match c.below(10) {
        0 => String::new(),
        1 => c.pick(&["a", "/", "//"]).to_string(),
        _ => (0..1 + c.below(3)).map(|_| format!("/{}", c.pick(&SEGMENTS))).collect(),
    }
}

/// A JSON patch operation from choices, now and then missing a field or naming no op.
fn operation(c: &mut Choices<'_>) -> Value {
    let op = c.pick(&["add", "remove", "replace", "move", "copy", "test", "nope"]);
    let mut o = json!({"op": op, "path": pointer(c)});
    if matches!(op, "move" | "copy") || c.below(8) == 0 {
        o["from"] = json!(pointer(c));
    }
    if matches!(op, "add" | "replace" | "test") && c.below(10) != 0 {
        o["value"] = value(c, 2, &KEYS);
    }
    if c.below(20) == 0 {
        o.as_object_mut().unwrap().remove("op");
    }
    o
}

fn check_patch_error(e: &PatchError) {
    assert!(!e.to_string().is_empty());
}

/// A JSON patch: applied whole, it gives what applying its operations one at a time gives
/// (the same document, or an error at the same operation); an add is read back by a test of
/// what it added; a remove is undone by adding back what it removed.
pub fn json(data: &[u8]) {
    let mut c = Choices(data);
    let doc = value(&mut c, 3, &KEYS);
    let mut ops = Vec::new();
    while !c.done() && ops.len() < 8 {
        ops.push(operation(&mut c));
    }
    let whole = json_patch(&doc, &Value::Array(ops.clone()));
    let mut state = doc.clone();
    let mut failed = None;
    for (i, op) in ops.iter().enumerate() {
        match json_patch(&state, &json!([op])) {
            Ok(next) => {
                let (kind, path) = (
                    op["op"].as_str().unwrap_or_default(),
                    op["path"].as_str().unwrap_or_default(),
                );
                if kind == "add" && !path.ends_with("/-") {
                    let test = json!([{"op": "test", "path": path, "value": op["value"]}]);
                    assert!(
                        json_patch(&next, &test).is_ok(),
                        "{op} on {state} gave {next}, which does not test"
                    );
                }
                if kind == "remove" {
                    let removed = json_patch(&state, &json!([{"op": "copy", "from": path, "path": ""}])).unwrap();
                    let back = json_patch(&next, &json!([{"op": "add", "path": path, "value": removed}]));
                    assert_eq!(
                        back.ok().as_ref(),
                        Some(&state),
                        "{op} on {state} is not undone by adding back"
                    );
                }
                state = next;
            }
            Err(e) => {
                check_patch_error(&e);
                failed = Some(i);
                break;
            }
        }
    }
    match (whole, failed) {
        (Ok(out), None) => {
            assert_eq!(out, state, "whole and one at a time differ");
            assert!(json_patch(&out, &json!([{"op": "test", "path": "", "value": out}])).is_ok());
        }
        (Err(e), Some(_)) => check_patch_error(&e),
        (whole, failed) => {
            panic!("the patch whole gave {whole:?}, one at a time failed at {failed:?}: {ops:?} on {doc}")
        }
    }
    // Not an array: refused.
    assert!(matches!(
        json_patch(&doc, &json!({"op": "add"})),
        Err(PatchError::Invalid(_))
    ));
}

/// A merge patch (RFC 7386): applying it twice is applying it once, a null removes its member,
/// and what is not an object replaces the document.
pub fn merge(data: &[u8]) {
    let mut c = Choices(data);
    let doc = value(&mut c, 3, &KEYS);
    let patch = value(&mut c, 3, &KEYS);
    let once = merge_patch(&doc, &patch);
    assert_eq!(merge_patch(&once, &patch), once, "merging {patch} into {doc} twice");
    match &patch {
        Value::Object(p) => {
            let out = once.as_object().expect("an object patch gives an object");
            for (k, v) in p {
                if v.is_null() {
                    assert!(!out.contains_key(k), "{k} stayed after a null");
                } else if !v.is_object() {
                    assert_eq!(out.get(k), Some(v));
                }
            }
        }
        other => assert_eq!(&once, other),
    }
}

/// Keys a strategic patch uses, directives included, on the lists of a pod.
const STRATEGIC_KEYS: [&str; 16] = [
    "spec",
    "containers",
    "name",
    "image",
    "env",
    "value",
    "metadata",
    "finalizers",
    "$patch",
    "$retainKeys",
    "$setElementOrder/containers",
    "$deleteFromPrimitiveList/finalizers",
    "$setElementOrder/env",
    "a",
    "",
    "$x",
];

fn has_directive(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| k.starts_with('$') || has_directive(v)),
        Value::Array(a) => a.iter().any(has_directive),
        _ => false,
    }
}

fn has_list(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.values().any(has_list),
        Value::Array(_) => true,
        _ => false,
    }
}

/// A strategic merge patch on a pod or a custom resource: applied, or refused with a typed
/// error; it never leaves a `$` directive in the object it did not find there; and with no
/// directives and no list to merge by key it is a merge patch.
pub fn strategic(data: &[u8]) {
    let mut c = Choices(data);
    let kind = c.pick(&["Pod", "Deployment", "", "Service"]);
    let base = json!({"metadata": {"name": "p", "finalizers": ["a", "b"]}, "spec": {"containers": [{"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}]}, {"name": "b"}]}});
    let doc = if c.below(3) == 0 {
        value(&mut c, 3, &STRATEGIC_KEYS)
    } else {
        base
    };
    let patch = if c.below(5) == 0 {
        value(&mut c, 4, &STRATEGIC_KEYS)
    } else {
        Value::Object(Map::from_iter([(
            "spec".to_string(),
            value(&mut c, 4, &STRATEGIC_KEYS),
        )]))
    };
    match strategic_merge_patch(&doc, &patch, kind) {
        Ok(out) => {
            if !has_directive(&doc) {
                assert!(!has_directive(&out), "{patch} left a directive in {out}");
            }
            if patch.is_object() && !has_directive(&patch) && (kind.is_empty() || !has_list(&patch)) {
                assert_eq!(out, merge_patch(&doc, &patch), "{patch} on {doc} as {kind:?}");
            }
        }
        Err(e) => {
            check_patch_error(&e);
            assert!(matches!(e, PatchError::Invalid(_)), "{e}");
        }
    }
}
