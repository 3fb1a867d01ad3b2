//! What Knative's webhook does to Service, Configuration, Revision and Route writes: fill in the
//! defaults (so `kubectl get -o yaml` shows them) and refuse what Knative refuses, naming the
//! field.

use serde_json::{Value, json};

use crate::api::error::{ApiError, invalid};
use crate::api::registry::Served;
use nodeless_types::knative::SERVING_GROUP;

/// Default request timeout of a revision, and the most one may ask (config-defaults).
const DEFAULT_TIMEOUT: i64 = 300;
const MAX_TIMEOUT: i64 = 600;
const MAX_CONCURRENCY: i64 = 1000;
const CONTAINER_NAME: &str = "user-container";
/// Annotations naming who created an object and who last changed its spec.
pub const CREATOR: &str = "serving.knative.dev/creator";
pub const LAST_MODIFIER: &str = "serving.knative.dev/lastModifier";
/// Container fields Knative refuses in a revision.
const DISALLOWED_CONTAINER_FIELDS: [&str; 4] = ["lifecycle", "stdin", "stdinOnce", "tty"];
/// Annotations of the autoscaler that take a whole number.
const INT_ANNOTATIONS: [&str; 5] = [
    "autoscaling.knative.dev/min-scale",
    "autoscaling.knative.dev/max-scale",
    "autoscaling.knative.dev/initial-scale",
    "autoscaling.knative.dev/activation-scale",
    "autoscaling.knative.dev/target-burst-capacity",
];

type Check = Result<(), (String, String)>;

fn bad(field: impl Into<String>, message: impl Into<String>) -> Check {
    Err((field.into(), message.into()))
}

/// Default and check a write of a `serving.knative.dev` object (`old` on update).
pub fn admit(served: &Served, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    if served.def.group != SERVING_GROUP {
        return Ok(());
    }
    let kind = served.def.kind.clone();
    let r = match kind.as_str() {
        "Service" | "Configuration" => {
            if let Some(t) = obj.pointer_mut("/spec/template") {
                default_template(t);
            } else {
                return Err(invalid(
                    served,
                    obj,
                    "spec.template",
                    "FieldValueRequired",
                    "Required value".into(),
                ));
            }
            if kind == "Service" && obj.pointer("/spec/traffic").is_none() {
                obj["spec"]["traffic"] = json!([{"latestRevision": true, "percent": 100}]);
            }
            default_traffic(obj);
            set_authors(obj, old);
            check_parent(obj, &kind, old)
        }
        "Revision" => {
            if let Some(spec) = obj.get_mut("spec") {
                default_revision_spec(spec);
            }
            match old {
                Some(o) if o.get("spec") != obj.get("spec") => bad("spec", "Immutable fields changed"),
                _ => revision_spec(obj.get("spec").unwrap_or(&Value::Null), "spec")
                    .and_then(|_| annotations(obj, "metadata.annotations")),
            }
        }
        "Route" => {
            default_traffic(obj);
            set_authors(obj, old);
            traffic(obj, "spec.traffic", false)
        }
        _ => Ok(()),
    };
    r.map_err(|(field, message)| invalid(served, obj, &field, "FieldValueInvalid", message))
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
/// Every write through the API is the admin token's until RBAC brings users of its own; writes
/// by the controllers carry the annotations of the object they follow, which they copy.
fn set_authors(obj: &mut Value, old: Option<&Value>) {
    let user = crate::auth::Role::Admin.user();
    let ann = |o: &Value, k: &str| {
        o.pointer(&format!("/metadata/annotations/{}", k.replace('/', "~1")))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let creator = match old {
        Some(o) => ann(o, CREATOR),
        None => ann(obj, CREATOR),
    };
    let modifier = match old {
        Some(o) if o.get("spec") == obj.get("spec") => ann(o, LAST_MODIFIER).or_else(|| ann(obj, LAST_MODIFIER)),
        Some(_) => Some(user.to_string()),
        None => ann(obj, LAST_MODIFIER),
    };
    if !obj.pointer("/metadata/annotations").is_some_and(Value::is_object) {
        obj["metadata"]["annotations"] = json!({});
    }
    let a = &mut obj["metadata"]["annotations"];
    a[CREATOR] = json!(creator.unwrap_or_else(|| user.to_string()));
    a[LAST_MODIFIER] = json!(modifier.unwrap_or_else(|| user.to_string()));
}

/// A revision's name for a template that names one: it must be `<parent>-<suffix>`.
pub fn revision_name_ok(parent: &str, name: &str) -> bool {
    name.strip_prefix(parent)
        .is_some_and(|s| s.len() > 1 && s.starts_with('-'))
}

fn default_revision_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    if spec.get("timeoutSeconds").is_none() {
        spec["timeoutSeconds"] = json!(DEFAULT_TIMEOUT);
    }
    if spec.get("containerConcurrency").is_none() {
        spec["containerConcurrency"] = json!(0);
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

fn default_template(t: &mut Value) {
    if let Some(spec) = t.get_mut("spec") {
        default_revision_spec(spec);
    }
}

/// Service and Configuration: the template, its name, the traffic (Service).
fn check_parent(obj: &Value, kind: &str, old: Option<&Value>) -> Check {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let t = obj.pointer("/spec/template").unwrap_or(&Value::Null);
    revision_spec(t.get("spec").unwrap_or(&Value::Null), "spec.template.spec")?;
    annotations(t, "spec.template.metadata.annotations")?;
    annotations(obj, "metadata.annotations")?;
    if let Some(rev) = t.pointer("/metadata/name").and_then(Value::as_str) {
        if !revision_name_ok(name, rev) {
            return bad(
                "spec.template.metadata.name",
                format!("\"{rev}\" must have prefix \"{name}-\""),
            );
        }
        // A named template is one revision: changing it without a new name would rewrite an
        // immutable revision.
        if let Some(o) = old {
            let same_name = o.pointer("/spec/template/metadata/name") == t.pointer("/metadata/name");
            if same_name && o.pointer("/spec/template") != Some(t) {
                return bad(
                    "spec.template.metadata.name",
                    format!(
                        "Saw changes to the template without a name change: \"{rev}\" already names the old template"
                    ),
                );
            }
        }
    }
    if kind == "Service" {
        traffic(obj, "spec.traffic", true)?;
    }
    Ok(())
}

fn revision_spec(spec: &Value, at: &str) -> Check {
    let containers = spec.get("containers").and_then(Value::as_array);
    let Some(containers) = containers.filter(|c| !c.is_empty()) else {
        return bad(
            format!("{at}.containers"),
            "Required value: a revision needs a container",
        );
    };
    let with_ports = containers.iter().filter(|c| c.get("ports").is_some()).count();
    if containers.len() > 1 && with_ports != 1 {
        return bad(
            format!("{at}.containers"),
            "exactly one container of several must name its port",
        );
    }
    if let Some(sa) = spec.get("serviceAccountName").and_then(Value::as_str) {
        if !sa.is_empty() && !dns1123_subdomain(sa) {
            return bad(
                format!("{at}.serviceAccountName"),
                format!("invalid value: {sa}: {at}.serviceAccountName\n{DNS1123_SUBDOMAIN}"),
            );
        }
    }
    for (i, c) in containers.iter().enumerate() {
        let here = format!("{at}.containers[{i}]");
        if let Some(f) = DISALLOWED_CONTAINER_FIELDS.iter().find(|f| c.get(**f).is_some()) {
            return bad(format!("{here}.{f}"), format!("must not set the field(s): {here}.{f}"));
        }
        if let Some(u) = c.pointer("/securityContext/runAsUser") {
            if u.as_i64().is_none_or(|u| u < 0) {
                return bad(
                    format!("{here}.securityContext.runAsUser"),
                    format!("expected 0 <= {u} <= 2147483647"),
                );
            }
        }
        for (j, m) in c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if m.get("mountPropagation").is_some() {
                return bad(
                    format!("{here}.volumeMounts[{j}].mountPropagation"),
                    format!("must not set the field(s): {here}.volumeMounts[{j}].mountPropagation"),
                );
            }
        }
        if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
            return bad(format!("{here}.image"), "Required value");
        }
        let ports = c
            .get("ports")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if ports.len() > 1 {
            return bad(format!("{here}.ports"), "More than one container port is set");
        }
        if let Some(p) = ports.first() {
            let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
            if !matches!(name, "" | "http1" | "h2c") {
                return bad(
                    format!("{here}.ports.name"),
                    format!("Invalid value: \"{name}\": must be \"http1\" or \"h2c\""),
                );
            }
            if let Some(n) = p.get("containerPort") {
                // 0 (or none) is the default port, 8080.
                if !n.as_i64().is_some_and(|n| (0..=65535).contains(&n)) {
                    return bad(
                        format!("{here}.ports.containerPort"),
                        format!("Invalid value: {n}: must be between 0 and 65535"),
                    );
                }
            }
        }
    }
    for (field, max) in [
        ("containerConcurrency", MAX_CONCURRENCY),
        ("timeoutSeconds", MAX_TIMEOUT),
    ] {
        if let Some(v) = spec.get(field) {
            if !v.as_i64().is_some_and(|n| (0..=max).contains(&n)) {
                return bad(
                    format!("{at}.{field}"),
                    format!("Invalid value: {v}: must be between 0 and {max}"),
                );
            }
        }
    }
    for field in ["responseStartTimeoutSeconds", "idleTimeoutSeconds"] {
        if let Some(v) = spec.get(field) {
            let limit = spec
                .get("timeoutSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(MAX_TIMEOUT);
            if !v.as_i64().is_some_and(|n| (0..=limit.max(MAX_TIMEOUT)).contains(&n)) {
                return bad(
                    format!("{at}.{field}"),
                    format!("Invalid value: {v}: must be between 0 and {MAX_TIMEOUT}"),
                );
            }
        }
    }
    Ok(())
}

/// Kubernetes' words for a name that is not a DNS-1123 subdomain.
const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";

fn dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The `autoscaling.knative.dev/` annotations Knative checks.
fn annotations(obj: &Value, at: &str) -> Check {
    let Some(a) = obj.pointer("/metadata/annotations").and_then(Value::as_object) else {
        return Ok(());
    };
    let get = |k: &str| a.get(k).and_then(Value::as_str);
    for k in INT_ANNOTATIONS {
        if let Some(v) = get(k) {
            let ok = if k.ends_with("target-burst-capacity") {
                v.parse::<f64>().is_ok_and(|n| n >= -1.0)
            } else {
                v.parse::<i64>().is_ok_and(|n| n >= 0)
            };
            if !ok {
                return bad(format!("{at}.{k}"), format!("invalid value: \"{v}\""));
            }
        }
    }
    let min = get("autoscaling.knative.dev/min-scale").and_then(|v| v.parse::<i64>().ok());
    let max = get("autoscaling.knative.dev/max-scale").and_then(|v| v.parse::<i64>().ok());
    if let (Some(lo), Some(hi)) = (min, max) {
        if hi != 0 && lo > hi {
            return bad(
                format!("{at}.autoscaling.knative.dev/max-scale"),
                format!("max-scale={hi} is less than min-scale={lo}"),
            );
        }
    }
    if let Some(m) = get("autoscaling.knative.dev/metric") {
        if !matches!(m, "concurrency" | "rps") {
            return bad(
                format!("{at}.autoscaling.knative.dev/metric"),
                format!("invalid value: \"{m}\": must be \"concurrency\" or \"rps\""),
            );
        }
    }
    for k in [
        "autoscaling.knative.dev/target",
        "autoscaling.knative.dev/target-utilization-percentage",
    ] {
        if let Some(v) = get(k) {
            if !v.parse::<f64>().is_ok_and(|n| n > 0.0) {
                return bad(format!("{at}.{k}"), format!("invalid value: \"{v}\": must be above 0"));
            }
        }
    }
    if let Some(v) = get("autoscaling.knative.dev/window") {
        let d = super::duration::parse(v);
        if !d.is_some_and(|d| (6..=3600).contains(&d.as_secs())) {
            return bad(
                format!("{at}.autoscaling.knative.dev/window"),
                format!("invalid value: \"{v}\": must be between 6s and 1h"),
            );
        }
    }
    for k in [
        "autoscaling.knative.dev/scale-down-delay",
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
    ] {
        if let Some(v) = get(k) {
            if super::duration::parse(v).is_none_or(|d| d.as_secs() > 3600) {
                return bad(format!("{at}.{k}"), format!("invalid value: \"{v}\""));
            }
        }
    }
    Ok(())
}

/// A traffic block: percents in 0..=100 summing to 100, one target each, unique tags.
fn traffic(obj: &Value, at: &str, service: bool) -> Check {
    let Some(list) = obj.pointer("/spec/traffic") else {
        return Ok(());
    };
    let Some(list) = list.as_array() else {
        return bad(at, "must be a list");
    };
    if list.is_empty() {
        return Ok(());
    }
    let mut sum = 0;
    let mut tags: Vec<&str> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let percent = match t.get("percent") {
            None | Some(Value::Null) => 0,
            Some(p) => match p.as_i64().filter(|p| (0..=100).contains(p)) {
                Some(p) => p,
                None => {
                    return bad(
                        format!("{here}.percent"),
                        format!("Invalid value: {p}: must be between 0 and 100"),
                    );
                }
            },
        };
        sum += percent;
        let rev = t.get("revisionName").and_then(Value::as_str).filter(|s| !s.is_empty());
        let cfg = t
            .get("configurationName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let latest = t.get("latestRevision").and_then(Value::as_bool);
        if service && cfg.is_some() {
            return bad(format!("{here}.configurationName"), "must not be set");
        }
        match (rev, latest) {
            (Some(_), Some(true)) => {
                return bad(
                    format!("{here}.latestRevision"),
                    "may not set revisionName and latestRevision: true",
                );
            }
            (None, Some(false)) => {
                return bad(
                    format!("{here}.revisionName"),
                    "Required value: latestRevision is false",
                );
            }
            (None, None) if service || cfg.is_none() => {
                return bad(
                    format!("{here}.revisionName"),
                    "expected exactly one, got neither: revisionName, latestRevision",
                );
            }
            _ => {}
        }
        if rev.is_some() && cfg.is_some() {
            return bad(
                format!("{here}.configurationName"),
                "expected exactly one, got both: configurationName, revisionName",
            );
        }
        if let Some(tag) = t.get("tag").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            if tags.contains(&tag) {
                return bad(format!("{here}.tag"), format!("Multiple definitions for \"{tag}\""));
            }
            if !tag
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                || tag.starts_with('-')
                || tag.ends_with('-')
            {
                return bad(format!("{here}.tag"), format!("Invalid value: \"{tag}\": a DNS label"));
            }
            tags.push(tag);
        }
    }
    if sum != 100 {
        return bad(at, format!("Traffic targets sum to {sum}, want 100"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "hello"}, "spec": spec})
    }

    fn check(obj: &Value) -> Check {
        check_parent(obj, "Service", None)
    }

    #[test]
    fn traffic_rules() {
        let t = |traffic: Value| {
            check(&svc(
                json!({"template": {"spec": {"containers": [{"image": "x"}]}}, "traffic": traffic}),
            ))
        };
        assert!(t(json!([{"latestRevision": true, "percent": 100}])).is_ok());
        let e = t(json!([{"revisionName": "hello-1", "percent": 40}, {"latestRevision": true, "percent": 50}]))
            .unwrap_err();
        assert_eq!(e.0, "spec.traffic");
        assert!(e.1.contains("sum to 90"), "{e:?}");
        let e = t(json!([{"revisionName": "hello-1", "percent": 50, "tag": "a"}, {"latestRevision": true, "percent": 50, "tag": "a"}])).unwrap_err();
        assert_eq!(e.0, "spec.traffic[1].tag");
        let e = t(json!([{"percent": 100}])).unwrap_err();
        assert_eq!(e.0, "spec.traffic[0].revisionName");
        let e = t(json!([{"revisionName": "r", "latestRevision": true, "percent": 100}])).unwrap_err();
        assert_eq!(e.0, "spec.traffic[0].latestRevision");
        let e = t(json!([{"latestRevision": true, "percent": 101}])).unwrap_err();
        assert_eq!(e.0, "spec.traffic[0].percent");
    }

    #[test]
    fn template_rules() {
        let e = check(&svc(
            json!({"template": {"metadata": {"name": "other-1"}, "spec": {"containers": [{"image": "x"}]}}}),
        ))
        .unwrap_err();
        assert_eq!(e.0, "spec.template.metadata.name");
        assert!(
            check(&svc(
                json!({"template": {"metadata": {"name": "hello-v2"}, "spec": {"containers": [{"image": "x"}]}}})
            ))
            .is_ok()
        );
        let e = check(&svc(json!({"template": {"spec": {"containers": [{"image": "x", "ports": [{"containerPort": 80}, {"containerPort": 81}]}]}}}))).unwrap_err();
        assert_eq!(e.0, "spec.template.spec.containers[0].ports");
        let e = check(&svc(
            json!({"template": {"spec": {"containers": [{"image": "x"}], "containerConcurrency": 1001}}}),
        ))
        .unwrap_err();
        assert_eq!(e.0, "spec.template.spec.containerConcurrency");
        let e = check(&svc(json!({"template": {"spec": {"containers": [{}]}}}))).unwrap_err();
        assert_eq!(e.0, "spec.template.spec.containers[0].image");
        let e = check(&svc(json!({"template": {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "3", "autoscaling.knative.dev/max-scale": "2"}}, "spec": {"containers": [{"image": "x"}]}}}))).unwrap_err();
        assert_eq!(
            e.0,
            "spec.template.metadata.annotations.autoscaling.knative.dev/max-scale"
        );
        let mut named =
            svc(json!({"template": {"metadata": {"name": "hello-a"}, "spec": {"containers": [{"image": "x"}]}}}));
        let old = named.clone();
        named["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        let e = check_parent(&named, "Service", Some(&old)).unwrap_err();
        assert_eq!(e.0, "spec.template.metadata.name");
    }

    #[test]
    fn knative_refuses_what_a_revision_may_not_hold() {
        let spec = |c: Value, extra: Value| {
            let mut s = json!({"template": {"spec": {"containers": [c]}}});
            if let Some(m) = extra.as_object() {
                for (k, v) in m {
                    s["template"]["spec"][k] = v.clone();
                }
            }
            check(&svc(s))
        };
        for field in ["lifecycle", "stdin", "stdinOnce", "tty"] {
            let e = spec(json!({"image": "x", field: true}), json!({})).unwrap_err();
            assert_eq!(e.0, format!("spec.template.spec.containers[0].{field}"));
        }
        let e = spec(json!({"image": "x", "securityContext": {"runAsUser": -10}}), json!({})).unwrap_err();
        assert_eq!(e.0, "spec.template.spec.containers[0].securityContext.runAsUser");
        let e = spec(json!({"image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v", "mountPropagation": "Bidirectional"}]}), json!({})).unwrap_err();
        assert_eq!(e.0, "spec.template.spec.containers[0].volumeMounts[0].mountPropagation");
        let e = spec(json!({"image": "x"}), json!({"serviceAccountName": "foo@bar.baz"})).unwrap_err();
        assert!(
            e.1.contains("foo@bar.baz: spec.template.spec.serviceAccountName"),
            "{e:?}"
        );
        assert!(spec(json!({"image": "x"}), json!({"serviceAccountName": "robot"})).is_ok());
        assert!(spec(json!({"image": "x", "ports": [{"name": "h2c"}]}), json!({})).is_ok());
        assert!(
            spec(
                json!({"image": "x", "ports": [{"name": "h2c", "containerPort": 0}]}),
                json!({})
            )
            .is_ok()
        );
    }

    #[test]
    fn traffic_and_authors_defaults() {
        let mut o = svc(json!({"template": {"spec": {"containers": [{"image": "x"}]}},
            "traffic": [{"tag": "latest", "percent": 100}, {"revisionName": "hello-1", "percent": 0}]}));
        default_traffic(&mut o);
        assert_eq!(o["spec"]["traffic"][0]["latestRevision"], true);
        assert_eq!(o["spec"]["traffic"][1]["latestRevision"], false);
        assert!(check(&o).is_ok());
        set_authors(&mut o, None);
        let admin = crate::auth::Role::Admin.user();
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
        default_template(&mut named);
        assert_eq!(named["spec"]["containers"][0]["name"], "user-container");
        let mut t = json!({"spec": {"containers": [{"image": "x"}]}});
        default_template(&mut t);
        assert_eq!(t["spec"]["timeoutSeconds"], 300);
        assert_eq!(t["spec"]["containerConcurrency"], 0);
        assert_eq!(t["spec"]["containers"][0]["name"], "user-container");
        assert!(revision_name_ok("hello", "hello-00001"));
        assert!(!revision_name_ok("hello", "hello"));
        assert!(!revision_name_ok("hello", "hellothere-1"));
    }
}
