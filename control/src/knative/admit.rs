//! What Knative's webhook does to Service, Configuration, Revision and Route writes: fill in the
//! defaults (so `kubectl get -o yaml` shows them) and refuse what Knative refuses, every refusal
//! at once and in its words, naming the field ([`super::field_error`]); the pod spec's checks
//! are in [`super::podspec`].

use serde_json::{Value, json};

use super::config::RevisionDefaults;
use super::field_error::{FieldError, FieldErrors};
use super::podspec;
use crate::api::error::ApiError;
use crate::api::registry::Served;
use nodeless_types::knative::SERVING_GROUP;

/// Default request timeout of a revision (config-defaults).
const CONTAINER_NAME: &str = "user-container";
/// Annotations naming who created an object and who last changed its spec.
pub const CREATOR: &str = "serving.knative.dev/creator";
pub const LAST_MODIFIER: &str = "serving.knative.dev/lastModifier";
/// The autoscaler's annotations, which only a revision (or a template) may carry.
const AUTOSCALING: &str = "autoscaling.knative.dev";
const MIN_SCALE: &str = "autoscaling.knative.dev/min-scale";
const MAX_SCALE: &str = "autoscaling.knative.dev/max-scale";
const ACTIVATION_SCALE: &str = "autoscaling.knative.dev/activation-scale";
const INITIAL_SCALE: &str = "autoscaling.knative.dev/initial-scale";
/// Kubernetes' words for a name that is not a DNS-1035 label (`validation.IsDNS1035Label`).
const DNS1035_LABEL: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Default and check a write of a `serving.knative.dev` object (`old` on update).
pub fn admit(
    store: &crate::store::Store,
    served: &Served,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if served.def.group != SERVING_GROUP {
        return Ok(());
    }
    let kind = served.def.kind.as_str();
    let defaults = RevisionDefaults::read(store);
    match kind {
        "Service" | "Configuration" => default_parent(obj, kind, old, &defaults),
        "Revision" => {
            if let Some(spec) = obj.get_mut("spec") {
                default_revision_spec(spec, &defaults);
            }
        }
        "Route" => {
            default_traffic(obj);
            set_authors(obj, old);
        }
        _ => return Ok(()),
    }
    let mut errs = check(kind, obj, old, &defaults);
    zero_initial_scale(store, kind, obj, old, &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.into_api_error())
    }
}

/// Knative's refusals of a defaulted write. A write that leaves the spec and annotations as they
/// were (a status update, a controller's labels, a finalizer) is not checked again, as Knative's
/// webhook leaves status updates alone: the object was admitted, perhaps under older rules, and
/// refusing now would keep its controller from reporting on it.
fn check(kind: &str, obj: &Value, old: Option<&Value>, d: &RevisionDefaults) -> FieldErrors {
    let mut errs = FieldErrors::default();
    let annotations = |o: &Value| o.pointer("/metadata/annotations").cloned();
    if old.is_some_and(|o| o.get("spec") == obj.get("spec") && annotations(o) == annotations(obj)) {
        return errs;
    }
    match kind {
        "Service" | "Configuration" => check_parent(obj, kind, old, d, &mut errs),
        "Revision" => {
            autoscaling(obj, "metadata.annotations", &mut errs);
            match old {
                Some(o) if o.get("spec") != obj.get("spec") => errs.push(
                    FieldError::generic("Immutable fields changed (-old +new)", &["spec".into()])
                        .with_details(diff(o.get("spec"), obj.get("spec"))),
                ),
                Some(_) => {}
                None => podspec::check(obj.get("spec").unwrap_or(&Value::Null), "spec", d, &mut errs),
            }
        }
        "Route" => {
            no_autoscaling(obj, &mut errs);
            traffic(obj, false, &mut errs);
        }
        _ => {}
    }
    errs
}

/// Knative's defaults of a Service or Configuration: the template's, a Service's traffic (all
/// to the latest revision), and the authors.
fn default_parent(obj: &mut Value, kind: &str, old: Option<&Value>, d: &RevisionDefaults) {
    if let Some(t) = obj.pointer_mut("/spec/template") {
        default_template(t, d);
    }
    if kind == "Service"
        && obj
            .pointer("/spec/traffic")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    {
        obj["spec"]["traffic"] = json!([{"latestRevision": true, "percent": 100}]);
    }
    default_traffic(obj);
    set_authors(obj, old);
}

/// Knative's defaulting of traffic targets: `latestRevision` is whether the target names no
/// revision.
fn default_traffic(obj: &mut Value) {
    let Some(list) = obj.pointer_mut("/spec/traffic").and_then(Value::as_array_mut) else {
        return;
    };
    for t in list.iter_mut().filter(|t| t.is_object()) {
        if t.get("latestRevision").is_none() {
            let named = t
                .get("revisionName")
                .and_then(Value::as_str)
                .is_some_and(|r| !r.is_empty());
            t["latestRevision"] = json!(!named);
        }
    }
}

/// Who made the object and who last changed its spec (Knative's `creator` and `lastModifier`).
/// A write through the API is its requester's; writes by the controllers carry the annotations
/// of the object they follow, which they copy (and otherwise are the admin's).
fn set_authors(obj: &mut Value, old: Option<&Value>) {
    let requester = crate::auth::requester();
    let user = requester.as_ref().map_or(crate::auth::ADMIN_USER, |u| u.name.as_str());
    let ann = |o: &Value, k: &str| {
        o.pointer(&format!("/metadata/annotations/{}", k.replace('/', "~1")))
            .and_then(Value::as_str)
            .map(String::from)
    };
    // A user's new object is the user's, whatever annotations it came with.
    let by_user = requester.is_some();
    let creator = match old {
        Some(o) => ann(o, CREATOR),
        None if by_user => None,
        None => ann(obj, CREATOR),
    };
    let modifier = match old {
        Some(o) if o.get("spec") == obj.get("spec") => ann(o, LAST_MODIFIER).or_else(|| ann(obj, LAST_MODIFIER)),
        Some(_) => Some(user.to_string()),
        None if by_user => None,
        None => ann(obj, LAST_MODIFIER),
    };
    if !obj.pointer("/metadata/annotations").is_some_and(Value::is_object) {
        obj["metadata"]["annotations"] = json!({});
    }
    let a = &mut obj["metadata"]["annotations"];
    a[CREATOR] = json!(creator.unwrap_or_else(|| user.to_string()));
    a[LAST_MODIFIER] = json!(modifier.unwrap_or_else(|| user.to_string()));
}

fn default_revision_spec(spec: &mut Value, d: &RevisionDefaults) {
    if !spec.is_object() {
        return;
    }
    if spec.get("timeoutSeconds").is_none() {
        spec["timeoutSeconds"] = json!(d.timeout);
    }
    if spec.get("containerConcurrency").is_none() {
        spec["containerConcurrency"] = json!(d.concurrency);
    }
    if spec.get("enableServiceLinks").is_none() {
        spec["enableServiceLinks"] = json!(false);
    }
    if let Some(cs) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        let single = cs.len() == 1;
        for (i, c) in cs.iter_mut().enumerate() {
            if c.is_object() && c.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                c["name"] = json!(if single {
                    CONTAINER_NAME.to_string()
                } else {
                    format!("{CONTAINER_NAME}-{i}")
                });
            }
        }
    }
}

fn default_template(t: &mut Value, d: &RevisionDefaults) {
    if let Some(spec) = t.get_mut("spec") {
        default_revision_spec(spec, d);
    }
}

/// Service and Configuration: their own annotations, the template (its spec, annotations and
/// name), and the traffic (Service).
fn check_parent(obj: &Value, kind: &str, old: Option<&Value>, d: &RevisionDefaults, errs: &mut FieldErrors) {
    no_autoscaling(obj, errs);
    let null = Value::Null;
    let t = obj.pointer("/spec/template").unwrap_or(&null);
    podspec::check(t.get("spec").unwrap_or(&null), "spec.template.spec", d, errs);
    autoscaling(t, "spec.template.metadata.annotations", errs);
    template_name(obj, t, old, errs);
    if kind == "Service" {
        traffic(obj, true, errs);
    }
}

/// A template that names its revision: a DNS-1035 label, `<parent>-…`, and a new name for each
/// change (a revision is immutable).
fn template_name(obj: &Value, t: &Value, old: Option<&Value>, errs: &mut FieldErrors) {
    let Some(rev) = t.pointer("/metadata/name").and_then(Value::as_str) else {
        return;
    };
    let at = "spec.template.metadata.name";
    let meta = |k: &str| {
        obj.pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let (name, generate_name) = (meta("name"), meta("generateName"));
    if !dns1035_label(rev) {
        errs.push(FieldError::invalid_value(
            format!("not a DNS 1035 label: [{DNS1035_LABEL}]"),
            at,
        ));
    } else if name.is_empty() && !generate_name.is_empty() {
        errs.push(FieldError::disallowed(&[at.into()]));
    } else if !rev.starts_with(&format!("{name}-")) {
        errs.push(FieldError::invalid_value(
            format!("\"{rev}\" must have prefix \"{name}-\""),
            at,
        ));
    }
    if let Some(o) = old {
        let before = o.pointer("/spec/template");
        if before.and_then(|b| b.pointer("/metadata/name")) == t.pointer("/metadata/name") && before != Some(t) {
            errs.push(
                FieldError::generic(
                    "Saw the following changes without a name change (-old +new)",
                    &[at.into()],
                )
                .with_details(diff(before, Some(t))),
            );
        }
    }
}

/// The fields that differ between two versions, one `-path: old` / `+path: new` pair a line:
/// the details of a refused change to something immutable.
fn diff(old: Option<&Value>, new: Option<&Value>) -> String {
    fn walk(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
        match (old, new) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(&p, a.get(k), b.get(k), out);
                }
            }
            (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    walk(&format!("{path}[{i}]"), Some(x), Some(y), out);
                }
            }
            (a, b) if a != b => {
                if let Some(a) = a {
                    out.push(format!("-{path}: {a}"));
                }
                if let Some(b) = b {
                    out.push(format!("+{path}: {b}"));
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out.join("\n")
}

fn dns1035_label(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A Service, Configuration or Route may not carry the autoscaler's annotations: they belong on
/// the template.
fn no_autoscaling(obj: &Value, errs: &mut FieldErrors) {
    let Some(a) = obj.pointer("/metadata/annotations").and_then(Value::as_object) else {
        return;
    };
    for k in a.keys().filter(|k| k.starts_with(AUTOSCALING)) {
        errs.push(
            FieldError::invalid_key_name(k, "metadata.annotations").with_details(
                "autoscaling annotations must be put under \"spec.template.metadata.annotations\" to work",
            ),
        );
    }
}

/// `initial-scale: "0"` is refused unless `config-autoscaler` says `allow-zero-initial-scale:
/// "true"` (Knative's `validateInitialScale`), on a write that sets or changes it.
fn zero_initial_scale(
    store: &crate::store::Store,
    kind: &str,
    obj: &Value,
    old: Option<&Value>,
    errs: &mut FieldErrors,
) {
    let at = if kind == "Revision" {
        "/metadata/annotations"
    } else {
        "/spec/template/metadata/annotations"
    };
    let value = |o: &Value| {
        o.pointer(&format!("{at}/{}", INITIAL_SCALE.replace('/', "~1")))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let v = value(obj);
    if v.as_deref() != Some("0") || old.and_then(value) == v {
        return;
    }
    let cfg = crate::knative::config::read(store, "config-autoscaler");
    if cfg.get("allow-zero-initial-scale").map(String::as_str) != Some("true") {
        let path = at.trim_start_matches('/').replace('/', ".");
        errs.push(FieldError::invalid_value("0", format!("{path}.{INITIAL_SCALE}")));
    }
}

/// Knative's checks of the `autoscaling.knative.dev/` annotations of a revision or template
/// (`autoscaling.ValidateAnnotations`).
fn autoscaling(obj: &Value, at: &str, errs: &mut FieldErrors) {
    let Some(a) = obj.pointer("/metadata/annotations").and_then(Value::as_object) else {
        return;
    };
    let get = |k: &str| a.get(k).and_then(Value::as_str);
    let path = |k: &str| format!("{at}.{k}");
    // A whole number of at least 0.
    let int_ge0 = |k: &str, errs: &mut FieldErrors| -> i64 {
        let Some(v) = get(k) else { return 0 };
        match v.parse::<i64>() {
            Ok(n) if (0..=i64::from(i32::MAX)).contains(&n) => n,
            Ok(_) => {
                errs.push(FieldError::out_of_bounds(v, 0, i32::MAX, path(k)));
                0
            }
            Err(_) => {
                errs.push(FieldError::invalid_value(v, path(k)));
                0
            }
        }
    };
    let min = int_ge0(MIN_SCALE, errs);
    let max = int_ge0(MAX_SCALE, errs);
    if max != 0 && max < min {
        errs.push(FieldError::generic(
            format!("max-scale={max} is less than min-scale={min}"),
            &[path(MAX_SCALE), path(MIN_SCALE)],
        ));
    }
    if let Some(v) = get(ACTIVATION_SCALE) {
        let message = match v.parse::<i64>() {
            Err(_) => Some(format!("invalid value: {v}")),
            Ok(n) if min > n => Some(format!("min-scale={min} is greater than activation-scale={n}")),
            Ok(n) if max != 0 && max < n => Some(format!("max-scale={max} is less than activation-scale={n}")),
            Ok(n) if n < 2 => Some(format!("activation-scale={n} must be greater than 1")),
            Ok(_) => None,
        };
        if let Some(m) = message {
            errs.push(FieldError::generic(m, &[path(ACTIVATION_SCALE)]));
        }
    }
    // A number, with its text as written (Knative's messages quote the text).
    let float = |k: &str, errs: &mut FieldErrors| -> Option<(&str, f64)> {
        let v = get(k)?;
        let f = v.parse::<f64>().ok();
        if f.is_none() {
            errs.push(FieldError::invalid_value(v, path(k)));
        }
        f.map(|f| (v, f))
    };
    let k = "autoscaling.knative.dev/target";
    if let Some((v, _)) = float(k, errs).filter(|(_, f)| *f < 0.01) {
        errs.push(FieldError::generic(
            format!("target {v} should be at least 0.01"),
            &[path(k)],
        ));
    }
    for (k, lo, hi) in [
        ("autoscaling.knative.dev/target-utilization-percentage", 1.0, 100.0),
        ("autoscaling.knative.dev/panic-window-percentage", 1.0, 100.0),
        ("autoscaling.knative.dev/panic-threshold-percentage", 110.0, 1000.0),
    ] {
        if let Some((v, _)) = float(k, errs).filter(|(_, f)| !(lo..=hi).contains(f)) {
            errs.push(FieldError::out_of_bounds(v, lo, hi, path(k)));
        }
    }
    let k = "autoscaling.knative.dev/target-burst-capacity";
    if let Some(v) = get(k) {
        if !v.parse::<f64>().is_ok_and(|f| f >= 0.0 || f == -1.0) {
            errs.push(FieldError::invalid_value(v, path(k)));
        }
    }
    for (k, lo) in [
        ("autoscaling.knative.dev/window", 6),
        ("autoscaling.knative.dev/scale-down-delay", 0),
        ("autoscaling.knative.dev/scale-to-zero-pod-retention-period", 0),
    ] {
        let Some(v) = get(k) else { continue };
        match super::duration::parse(v) {
            None => errs.push(FieldError::invalid_value(v, path(k))),
            Some(d) if d.as_secs() < lo || d.as_secs_f64() > 3600.0 => {
                errs.push(FieldError::out_of_bounds(v, format!("{lo}s"), "1h0m0s", path(k)))
            }
            Some(d) if d.subsec_nanos() != 0 && !k.ends_with("retention-period") => errs.push(FieldError::generic(
                "must be specified with at most second precision",
                &[path(k)],
            )),
            Some(_) => {}
        }
    }
    let kpa = get("autoscaling.knative.dev/class").is_none_or(|c| c == "kpa.autoscaling.knative.dev");
    if let Some(m) = get("autoscaling.knative.dev/metric") {
        if kpa && !matches!(m, "concurrency" | "rps") {
            errs.push(FieldError::invalid_value(m, path("autoscaling.knative.dev/metric")));
        }
    }
    if let Some(c) = get("autoscaling.knative.dev/class") {
        if c.ends_with(".knative.dev") && !matches!(c, "kpa.autoscaling.knative.dev" | "hpa.autoscaling.knative.dev") {
            errs.push(FieldError::invalid_value(c, path("autoscaling.knative.dev/class")));
        }
    }
    if let Some(v) = get(INITIAL_SCALE) {
        match v.parse::<i64>() {
            Err(_) => errs.push(FieldError::invalid_value(v, path(INITIAL_SCALE))),
            Ok(n) if n < 0 => errs.push(FieldError::invalid_value(
                v,
                format!("{} must be greater than 0", path(INITIAL_SCALE)),
            )),
            Ok(_) => {}
        }
    }
}

/// A traffic block (`service`: a Service's, whose targets follow its own Configuration): one
/// target each, percents in 0..=100 summing to 100, tags DNS-1035 labels and unique.
fn traffic(obj: &Value, service: bool, errs: &mut FieldErrors) {
    let at = "spec.traffic";
    let null = Value::Null;
    let list = obj.pointer("/spec/traffic").unwrap_or(&null);
    let list = match list {
        Value::Array(l) => l.as_slice(),
        Value::Null => &[],
        _ => {
            errs.push(FieldError::invalid_value(list, at));
            return;
        }
    };
    let mut sum = 0;
    let mut tags: Vec<(&str, usize)> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let here = |f: &str| format!("{at}[{i}].{f}");
        let s = |f: &str| t.get(f).and_then(Value::as_str).filter(|s| !s.is_empty());
        let (rev, cfg) = (s("revisionName"), s("configurationName"));
        if let Some(latest) = t.get("latestRevision").and_then(Value::as_bool) {
            if rev.is_some() == latest {
                errs.push(FieldError::generic(
                    format!(
                        "may not set revisionName \"{}\" when latestRevision is {latest}",
                        rev.unwrap_or_default()
                    ),
                    &[here("latestRevision")],
                ));
            }
        }
        match (rev, cfg) {
            (_, Some(_)) if service => errs.push(FieldError::disallowed(&[here("configurationName")])),
            (Some(_), Some(_)) => errs.push(FieldError::multiple_one_of(&[
                here("configurationName"),
                here("revisionName"),
            ])),
            (None, None) if !service => errs.push(FieldError::missing_one_of(&[
                here("configurationName"),
                here("revisionName"),
            ])),
            _ => {}
        }
        match t.get("percent") {
            None | Some(Value::Null) => {}
            Some(p) => match p.as_i64().filter(|p| (0..=100).contains(p)) {
                Some(p) => sum += p,
                None => errs.push(FieldError::out_of_bounds(p, 0, 100, here("percent"))),
            },
        }
        if s("url").is_some() {
            errs.push(FieldError::disallowed(&[here("url")]));
        }
        if let Some(tag) = s("tag") {
            if !dns1035_label(tag) {
                errs.push(FieldError::invalid_value(
                    format!("not a DNS 1035 label: [{DNS1035_LABEL}]"),
                    here("tag"),
                ));
            }
            match tags.iter().find(|(t, _)| *t == tag) {
                Some((_, first)) => errs.push(FieldError::generic(
                    format!("Multiple definitions for \"{tag}\""),
                    &[here("tag"), format!("{at}[{first}].tag")],
                )),
                None => tags.push((tag, i)),
            }
        }
    }
    if sum != 100 {
        errs.push(FieldError::generic(
            format!("Traffic targets sum to {sum}, want 100"),
            &[at.into()],
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "hello"}, "spec": spec})
    }

    #[test]
    fn config_defaults_set_and_bound_the_revision_spec() {
        let cfg: std::collections::BTreeMap<String, String> = [
            ("revision-timeout-seconds", "120"),
            ("max-revision-timeout-seconds", "200"),
            ("container-concurrency", "5"),
            ("container-concurrency-max-limit", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let d = RevisionDefaults::of(&cfg);
        let mut obj = svc(json!({"template": {"spec": {"containers": [{"image": "x"}]}}}));
        default_parent(&mut obj, "Service", None, &d);
        assert_eq!(obj.pointer("/spec/template/spec/timeoutSeconds"), Some(&json!(120)));
        assert_eq!(obj.pointer("/spec/template/spec/containerConcurrency"), Some(&json!(5)));
        let mut errs = FieldErrors::default();
        obj["spec"]["template"]["spec"]["timeoutSeconds"] = json!(300);
        obj["spec"]["template"]["spec"]["containerConcurrency"] = json!(11);
        check_parent(&obj, "Service", None, &d, &mut errs);
        let text = errs.to_string();
        assert!(
            text.contains("expected 0 <= 300 <= 200: spec.template.spec.timeoutSeconds"),
            "{text}"
        );
        assert!(
            text.contains("expected 0 <= 11 <= 10: spec.template.spec.containerConcurrency"),
            "{text}"
        );
        // Knative's own defaults when the ConfigMap says nothing.
        assert_eq!(
            RevisionDefaults::default(),
            RevisionDefaults {
                timeout: 300,
                max_timeout: 600,
                concurrency: 0,
                max_concurrency: 1000
            }
        );
    }

    /// A Service's refusals once defaulted, as Knative prints them ("" when admitted).
    fn check_update(obj: &Value, old: Option<&Value>) -> String {
        let mut obj = obj.clone();
        default_parent(&mut obj, "Service", old, &RevisionDefaults::default());
        let mut errs = FieldErrors::default();
        check_parent(&obj, "Service", old, &RevisionDefaults::default(), &mut errs);
        errs.to_string()
    }

    fn refusals(obj: &Value) -> String {
        check_update(obj, None)
    }

    fn with_traffic(traffic: Value) -> String {
        refusals(&svc(
            json!({"template": {"spec": {"containers": [{"image": "x"}]}}, "traffic": traffic}),
        ))
    }

    #[test]
    fn traffic_rules() {
        assert_eq!(with_traffic(json!([{"latestRevision": true, "percent": 100}])), "");
        assert_eq!(
            with_traffic(json!([{"revisionName": "hello-1", "percent": 40}, {"latestRevision": true, "percent": 50}])),
            "Traffic targets sum to 90, want 100: spec.traffic"
        );
        assert_eq!(
            with_traffic(
                json!([{"revisionName": "hello-1", "percent": 50, "tag": "a"}, {"latestRevision": true, "percent": 50, "tag": "a"}])
            ),
            "Multiple definitions for \"a\": spec.traffic[0].tag, spec.traffic[1].tag"
        );
        assert_eq!(
            with_traffic(json!([{"revisionName": "r", "latestRevision": true, "percent": 100}])),
            "may not set revisionName \"r\" when latestRevision is true: spec.traffic[0].latestRevision"
        );
        assert_eq!(
            with_traffic(json!([{"latestRevision": true, "percent": 101}])),
            "Traffic targets sum to 0, want 100: spec.traffic\nexpected 0 <= 101 <= 100: spec.traffic[0].percent"
        );
        assert_eq!(
            with_traffic(json!([{"configurationName": "c", "percent": 100}])),
            "must not set the field(s): spec.traffic[0].configurationName"
        );
        assert!(
            with_traffic(json!([{"latestRevision": true, "percent": 100, "tag": "1a"}]))
                .starts_with("invalid value: not a DNS 1035 label: [a DNS-1035 label must consist of"),
        );
        // A Route's targets name a revision or a configuration.
        let mut errs = FieldErrors::default();
        traffic(&json!({"spec": {"traffic": [{"percent": 100}]}}), false, &mut errs);
        assert_eq!(
            errs.to_string(),
            "expected exactly one, got neither: spec.traffic[0].configurationName, spec.traffic[0].revisionName"
        );
    }

    #[test]
    fn template_rules() {
        let named =
            |n: &str| svc(json!({"template": {"metadata": {"name": n}, "spec": {"containers": [{"image": "x"}]}}}));
        assert_eq!(
            refusals(&named("other-1")),
            "invalid value: \"other-1\" must have prefix \"hello-\": spec.template.metadata.name"
        );
        assert_eq!(refusals(&named("hello-v2")), "");
        let mut generated = named("hello-v2");
        generated["metadata"] = json!({"generateName": "hello-"});
        assert_eq!(
            refusals(&generated),
            "must not set the field(s): spec.template.metadata.name"
        );
        let with_ann = svc(
            json!({"template": {"metadata": {"annotations": {MIN_SCALE: "3", MAX_SCALE: "2"}}, "spec": {"containers": [{"image": "x"}]}}}),
        );
        assert_eq!(
            refusals(&with_ann),
            "max-scale=2 is less than min-scale=3: spec.template.metadata.annotations.autoscaling.knative.dev/max-scale, spec.template.metadata.annotations.autoscaling.knative.dev/min-scale"
        );
        let mut old = named("hello-a");
        default_parent(&mut old, "Service", None, &RevisionDefaults::default());
        let mut renamed = old.clone();
        renamed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        assert_eq!(
            check_update(&renamed, Some(&old)),
            "Saw the following changes without a name change (-old +new): spec.template.metadata.name\n-spec.containers[0].image: \"x\"\n+spec.containers[0].image: \"y\""
        );
        // No template at all: no container.
        assert_eq!(
            refusals(&svc(json!({}))),
            "missing field(s): spec.template.spec.containers"
        );
    }

    #[test]
    fn autoscaling_annotations_belong_on_the_template() {
        let mut o = svc(json!({"template": {"spec": {"containers": [{"image": "x"}]}}}));
        o["metadata"]["annotations"] = json!({MIN_SCALE: "1"});
        assert_eq!(
            refusals(&o),
            "invalid key name \"autoscaling.knative.dev/min-scale\": metadata.annotations\nautoscaling annotations must be put under \"spec.template.metadata.annotations\" to work"
        );
        let ann = |k: &str, v: &str| {
            let mut errs = FieldErrors::default();
            autoscaling(
                &json!({"metadata": {"annotations": {k: v}}}),
                "metadata.annotations",
                &mut errs,
            );
            errs.to_string()
        };
        assert_eq!(
            ann(MIN_SCALE, "x"),
            "invalid value: x: metadata.annotations.autoscaling.knative.dev/min-scale"
        );
        assert_eq!(
            ann(MIN_SCALE, "-1"),
            "expected 0 <= -1 <= 2147483647: metadata.annotations.autoscaling.knative.dev/min-scale"
        );
        assert_eq!(
            ann("autoscaling.knative.dev/window", "2s"),
            "expected 6s <= 2s <= 1h0m0s: metadata.annotations.autoscaling.knative.dev/window"
        );
        assert_eq!(
            ann("autoscaling.knative.dev/metric", "cpu"),
            "invalid value: cpu: metadata.annotations.autoscaling.knative.dev/metric"
        );
        assert_eq!(
            ann(ACTIVATION_SCALE, "1"),
            "activation-scale=1 must be greater than 1: metadata.annotations.autoscaling.knative.dev/activation-scale"
        );
        assert_eq!(
            ann("autoscaling.knative.dev/target", "0"),
            "target 0 should be at least 0.01: metadata.annotations.autoscaling.knative.dev/target"
        );
        assert_eq!(ann("autoscaling.knative.dev/window", "60s"), "");
        assert_eq!(ann(INITIAL_SCALE, "0"), "");
    }

    #[test]
    fn traffic_and_authors_defaults() {
        let mut o = svc(json!({"template": {"spec": {"containers": [{"image": "x"}]}},
            "traffic": [{"tag": "latest", "percent": 100}, {"revisionName": "hello-1", "percent": 0}]}));
        default_traffic(&mut o);
        assert_eq!(o["spec"]["traffic"][0]["latestRevision"], true);
        assert_eq!(o["spec"]["traffic"][1]["latestRevision"], false);
        assert_eq!(refusals(&o), "");
        set_authors(&mut o, None);
        let admin = crate::auth::ADMIN_USER;
        assert_eq!(o["metadata"]["annotations"][CREATOR], admin);
        assert_eq!(o["metadata"]["annotations"][LAST_MODIFIER], admin);
        let mut inherited = svc(json!({}));
        inherited["metadata"]["annotations"] = json!({CREATOR: "someone", LAST_MODIFIER: "someone"});
        set_authors(&mut inherited, None);
        assert_eq!(inherited["metadata"]["annotations"][CREATOR], "someone");
        let old = inherited.clone();
        let mut same = inherited.clone();
        set_authors(&mut same, Some(&old));
        assert_eq!(
            same["metadata"]["annotations"][LAST_MODIFIER], "someone",
            "no spec change"
        );
    }

    #[test]
    fn defaults() {
        let mut named = json!({"spec": {"containers": [{"image": "x", "name": ""}]}});
        default_template(&mut named, &RevisionDefaults::default());
        assert_eq!(named["spec"]["containers"][0]["name"], "user-container");
        let mut t = json!({"spec": {"containers": [{"image": "x"}]}});
        default_template(&mut t, &RevisionDefaults::default());
        assert_eq!(t["spec"]["timeoutSeconds"], 300);
        assert_eq!(t["spec"]["containerConcurrency"], 0);
        assert_eq!(t["spec"]["containers"][0]["name"], "user-container");
    }

    #[test]
    fn what_was_admitted_is_not_checked_again() {
        // Admitted under older rules, before Knative's reserved variables were refused.
        let mut stored = svc(
            json!({"template": {"spec": {"containers": [{"image": "x", "env": [{"name": "PORT", "value": "1"}]}]}}}),
        );
        default_parent(&mut stored, "Service", None, &RevisionDefaults::default());
        let mut status = stored.clone();
        status["status"] = json!({"observedGeneration": 1});
        assert!(check("Service", &status, Some(&stored), &RevisionDefaults::default()).is_empty());
        assert_eq!(
            check("Service", &stored, None, &RevisionDefaults::default()).to_string(),
            "\"PORT\" is a reserved environment variable: spec.template.spec.containers[0].env[0].name"
        );
        let mut changed = stored.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        assert!(!check("Service", &changed, Some(&stored), &RevisionDefaults::default()).is_empty());
    }

    #[test]
    fn a_diff_names_each_changed_field() {
        assert_eq!(
            diff(
                Some(&json!({"a": 1, "b": [1]})),
                Some(&json!({"a": 2, "b": [1], "c": true}))
            ),
            "-a: 1\n+a: 2\n+c: true"
        );
    }
}
