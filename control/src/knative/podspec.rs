//! Knative's checks of a revision's pod spec, as knative.dev/serving v0.42 makes them
//! (`ValidatePodSpec` and the field masks of `pkg/apis/serving`): the container fields a revision
//! may not set (`hostPort`, `stdin`, `lifecycle`…), the one port that serves and what it may
//! say, the names, ports and variables Knative keeps for itself, the service account's name,
//! the timeout and the concurrency. Each refusal names the field in Knative's words.

use serde_json::Value;

use super::config::RevisionDefaults;
use super::field_error::{FieldError, FieldErrors};

const MAX_ID: i64 = i32::MAX as i64;

/// How Go tells that a field is set, which is what Knative's masks compare: a pointer, slice or
/// map when present (even `false` or `[]`), a plain value when not its zero value.
#[derive(Clone, Copy)]
enum Set {
    WhenPresent,
    WhenNotZero,
}

/// The fields Knative's masks leave out, per type: `ContainerMask`, `ContainerPortMask`,
/// `VolumeMountMask`, `SecurityContextMask`.
const CONTAINER_DISALLOWED: [(&str, Set); 7] = [
    ("lifecycle", Set::WhenPresent),
    ("resizePolicy", Set::WhenPresent),
    ("restartPolicy", Set::WhenPresent),
    ("stdin", Set::WhenNotZero),
    ("stdinOnce", Set::WhenNotZero),
    ("tty", Set::WhenNotZero),
    ("volumeDevices", Set::WhenPresent),
];
const PORT_DISALLOWED: [(&str, Set); 2] = [("hostIP", Set::WhenNotZero), ("hostPort", Set::WhenNotZero)];
const MOUNT_DISALLOWED: [(&str, Set); 2] = [
    ("mountPropagation", Set::WhenPresent),
    ("subPathExpr", Set::WhenNotZero),
];
const SECURITY_CONTEXT_DISALLOWED: [(&str, Set); 4] = [
    ("privileged", Set::WhenPresent),
    ("procMount", Set::WhenPresent),
    ("seLinuxOptions", Set::WhenPresent),
    ("windowsOptions", Set::WhenPresent),
];

/// The queue-proxy's ports (and the profiling port): no container may serve on them.
const RESERVED_PORTS: [i64; 6] = [8012, 8013, 8022, 9090, 9091, 8008];
/// Variables Knative sets in the serving container; sidecars may set `PORT`.
const RESERVED_ENV: [&str; 4] = ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];
const RESERVED_CONTAINER_NAME: &str = "queue-proxy";
const PORT_NAMES: [&str; 3] = ["", "h2c", "http1"];

/// Kubernetes' words for a name that is not a DNS-1123 subdomain (`validation.IsDNS1123Subdomain`).
const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_set(v: Option<&Value>, set: Set) -> bool {
    match (v, set) {
        (None | Some(Value::Null), _) => false,
        (Some(_), Set::WhenPresent) => true,
        (Some(Value::Bool(b)), Set::WhenNotZero) => *b,
        (Some(Value::Number(n)), Set::WhenNotZero) => n.as_f64() != Some(0.0),
        (Some(Value::String(s)), Set::WhenNotZero) => !s.is_empty(),
        (Some(_), Set::WhenNotZero) => true,
    }
}

/// `apis.CheckDisallowedFields`: one refusal naming every field of `obj` outside the mask.
fn disallowed(obj: &Value, fields: &[(&str, Set)], at: &str, errs: &mut FieldErrors) {
    let set: Vec<String> = fields
        .iter()
        .filter(|(f, s)| is_set(obj.get(*f), *s))
        .map(|(f, _)| format!("{at}.{f}"))
        .collect();
    if !set.is_empty() {
        errs.push(FieldError::disallowed(&set));
    }
}

fn list<'a>(v: &'a Value, field: &str) -> &'a [Value] {
    v.get(field)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Check a revision spec (`at` is where it sits: `spec`, or `spec.template.spec`).
pub fn check(spec: &Value, at: &str, d: &RevisionDefaults, errs: &mut FieldErrors) {
    let (max_timeout, max_concurrency) = (d.max_timeout, d.max_concurrency);
    let containers = list(spec, "containers");
    // The one serving port, across all containers.
    let ports: usize = containers.iter().map(|c| list(c, "ports").len()).sum();
    if ports == 0 && containers.len() > 1 {
        errs.push(FieldError::missing(format!("{at}.containers[*].ports")));
    }
    if ports > 1 {
        errs.push(
            FieldError::generic(
                "more than one container port is set",
                &[format!("{at}.containers[*].ports")],
            )
            .with_details("Only a single port is allowed across all containers"),
        );
    }
    if containers.is_empty() {
        errs.push(FieldError::missing(format!("{at}.containers")));
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let here = format!("{at}.containers[{i}]");
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        if containers.len() > 1 {
            if names.contains(&name) {
                errs.push(FieldError::generic(
                    format!("duplicate container name \"{name}\""),
                    &[format!("{here}.name")],
                ));
            }
            names.push(name);
        }
        // The serving container is the only one, or the one that names a port.
        let serving = containers.len() == 1 || !list(c, "ports").is_empty();
        container(c, &here, serving, errs);
    }
    if let Some(sa) = spec.get("serviceAccountName").and_then(Value::as_str) {
        if !sa.is_empty() {
            if sa.len() > 253 {
                errs.push(
                    FieldError::invalid_value(sa, format!("{at}.serviceAccountName"))
                        .with_details("must be no more than 253 characters"),
                );
            }
            if !dns1123_subdomain(sa) {
                errs.push(
                    FieldError::invalid_value(sa, format!("{at}.serviceAccountName")).with_details(DNS1123_SUBDOMAIN),
                );
            }
        }
    }
    if let Some(v) = spec.get("timeoutSeconds") {
        if v.as_i64() != Some(0) && !v.as_i64().is_some_and(|n| (0..=max_timeout).contains(&n)) {
            errs.push(FieldError::out_of_bounds(
                v,
                0,
                max_timeout,
                format!("{at}.timeoutSeconds"),
            ));
        }
    }
    if let Some(v) = spec.get("containerConcurrency") {
        if !v.as_i64().is_some_and(|n| (0..=max_concurrency).contains(&n)) {
            errs.push(FieldError::out_of_bounds(
                v,
                0,
                max_concurrency,
                format!("{at}.containerConcurrency"),
            ));
        }
    }
    for field in ["responseStartTimeoutSeconds", "idleTimeoutSeconds"] {
        if let Some(v) = spec.get(field) {
            if !v.as_i64().is_some_and(|n| (0..=max_timeout).contains(&n)) {
                errs.push(FieldError::out_of_bounds(v, 0, max_timeout, format!("{at}.{field}")));
            }
        }
    }
}

/// Knative's `validate` of one container, and of the serving one's port.
fn container(c: &Value, here: &str, serving: bool, errs: &mut FieldErrors) {
    disallowed(c, &CONTAINER_DISALLOWED, here, errs);
    if c.get("name").and_then(Value::as_str) == Some(RESERVED_CONTAINER_NAME) {
        errs.push(FieldError::generic(
            format!("\"{RESERVED_CONTAINER_NAME}\" is a reserved container name"),
            &[format!("{here}.name")],
        ));
    }
    for (j, e) in list(c, "env").iter().enumerate() {
        let name = e.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            errs.push(FieldError::missing(format!("{here}.env[{j}].name")));
        } else if RESERVED_ENV.contains(&name) && (serving || name != "PORT") {
            errs.push(FieldError::generic(
                format!("\"{name}\" is a reserved environment variable"),
                &[format!("{here}.env[{j}].name")],
            ));
        }
    }
    if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
        errs.push(FieldError::missing(format!("{here}.image")));
    }
    // Only the first port is the serving one; a second is refused above.
    if let Some(p) = list(c, "ports").first() {
        let at = format!("{here}.ports");
        disallowed(p, &PORT_DISALLOWED, &at, errs);
        let n = p.get("containerPort").cloned().unwrap_or(Value::from(0));
        if let Some(n) = n.as_i64().filter(|n| RESERVED_PORTS.contains(n)) {
            errs.push(
                FieldError::invalid_value(format!("{n} is a reserved port"), format!("{at}.containerPort"))
                    .with_details(format!("{n} is a reserved port, please use a different value")),
            );
        }
        if !n.as_i64().is_some_and(|n| (0..=65535).contains(&n)) {
            errs.push(FieldError::out_of_bounds(n, 0, 65535, format!("{at}.containerPort")));
        }
        if let Some(proto) = p.get("protocol").and_then(Value::as_str) {
            if !matches!(proto, "" | "TCP") {
                errs.push(FieldError::invalid_value(proto, format!("{at}.protocol")));
            }
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if !PORT_NAMES.contains(&name) {
            errs.push(
                FieldError::generic(format!("Port name {name} is not allowed"), std::slice::from_ref(&at))
                    .with_details("Name must be empty, or one of: 'h2c', 'http1'"),
            );
        }
    }
    if let Some(sc) = c.get("securityContext").filter(|s| s.is_object()) {
        let at = format!("{here}.securityContext");
        disallowed(sc, &SECURITY_CONTEXT_DISALLOWED, &at, errs);
        for field in ["runAsUser", "runAsGroup"] {
            if let Some(v) = sc.get(field).filter(|v| !v.is_null()) {
                if !v.as_i64().is_some_and(|n| (0..=MAX_ID).contains(&n)) {
                    errs.push(FieldError::out_of_bounds(v, 0, MAX_ID, format!("{at}.{field}")));
                }
            }
        }
    }
    if let Some(p) = c.get("terminationMessagePolicy").and_then(Value::as_str) {
        if !matches!(p, "" | "File" | "FallbackToLogsOnError") {
            errs.push(FieldError::invalid_value(p, format!("{here}.terminationMessagePolicy")));
        }
    }
    for (j, m) in list(c, "volumeMounts").iter().enumerate() {
        disallowed(m, &MOUNT_DISALLOWED, &format!("{here}.volumeMounts[{j}]"), errs);
    }
}

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The refusals of a template's spec with one container `c` and the pod fields `extra`, as
    /// Knative prints them.
    fn refusals(c: Value, extra: Value) -> String {
        let mut spec = json!({"containers": [c]});
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        let mut errs = FieldErrors::default();
        check(&spec, "spec.template.spec", &RevisionDefaults::default(), &mut errs);
        errs.to_string()
    }

    #[test]
    fn the_service_account_is_refused_in_knative_words() {
        // TestServiceAccountValidation compares this text.
        assert_eq!(
            refusals(json!({"image": "x"}), json!({"serviceAccountName": "foo@bar.baz"})),
            format!("invalid value: foo@bar.baz: spec.template.spec.serviceAccountName\n{DNS1123_SUBDOMAIN}")
        );
        assert_eq!(
            refusals(json!({"image": "x"}), json!({"serviceAccountName": "robot"})),
            ""
        );
    }

    #[test]
    fn fields_outside_the_masks_are_refused() {
        // Go's client sends `containerPort: 0` beside a hostPort (TestShouldNotContainerConstraints).
        assert_eq!(
            refusals(
                json!({"image": "x", "ports": [{"containerPort": 0, "hostPort": 80}]}),
                json!({})
            ),
            "must not set the field(s): spec.template.spec.containers[0].ports.hostPort"
        );
        assert_eq!(
            refusals(
                json!({"image": "x", "ports": [{"hostIP": "10.0.0.1", "hostPort": 80}]}),
                json!({})
            ),
            "must not set the field(s): spec.template.spec.containers[0].ports.hostIP, spec.template.spec.containers[0].ports.hostPort"
        );
        for field in ["stdin", "stdinOnce", "tty"] {
            assert_eq!(
                refusals(json!({"image": "x", field: true}), json!({})),
                format!("must not set the field(s): spec.template.spec.containers[0].{field}")
            );
            // Go's zero value is no value.
            assert_eq!(refusals(json!({"image": "x", field: false}), json!({})), "");
        }
        assert_eq!(
            refusals(
                json!({"image": "x", "lifecycle": {"preStop": {"exec": {"command": ["true"]}}}, "tty": true}),
                json!({})
            ),
            "must not set the field(s): spec.template.spec.containers[0].lifecycle, spec.template.spec.containers[0].tty"
        );
        assert_eq!(
            refusals(
                json!({"image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v", "mountPropagation": "Bidirectional"}]}),
                json!({})
            ),
            "must not set the field(s): spec.template.spec.containers[0].volumeMounts[0].mountPropagation"
        );
        assert_eq!(
            refusals(
                json!({"image": "x", "securityContext": {"privileged": false}}),
                json!({})
            ),
            "must not set the field(s): spec.template.spec.containers[0].securityContext.privileged"
        );
    }

    #[test]
    fn values_out_of_bounds() {
        assert_eq!(
            refusals(json!({"image": "x", "securityContext": {"runAsUser": -10}}), json!({})),
            "expected 0 <= -10 <= 2147483647: spec.template.spec.containers[0].securityContext.runAsUser"
        );
        assert_eq!(
            refusals(json!({"image": "x"}), json!({"containerConcurrency": 1001})),
            "expected 0 <= 1001 <= 1000: spec.template.spec.containerConcurrency"
        );
        assert_eq!(
            refusals(json!({"image": "x"}), json!({"timeoutSeconds": 601})),
            "expected 0 <= 601 <= 600: spec.template.spec.timeoutSeconds"
        );
        assert_eq!(
            refusals(json!({"image": "x", "ports": [{"containerPort": 70000}]}), json!({})),
            "expected 0 <= 70000 <= 65535: spec.template.spec.containers[0].ports.containerPort"
        );
    }

    #[test]
    fn the_serving_port() {
        assert_eq!(
            refusals(
                json!({"image": "x", "ports": [{"containerPort": 80}, {"containerPort": 81}]}),
                json!({})
            ),
            "more than one container port is set: spec.template.spec.containers[*].ports\nOnly a single port is allowed across all containers"
        );
        assert_eq!(
            refusals(json!({"image": "x", "ports": [{"name": "grpc"}]}), json!({})),
            "Port name grpc is not allowed: spec.template.spec.containers[0].ports\nName must be empty, or one of: 'h2c', 'http1'"
        );
        assert_eq!(
            refusals(json!({"image": "x", "ports": [{"containerPort": 8012}]}), json!({})),
            "invalid value: 8012 is a reserved port: spec.template.spec.containers[0].ports.containerPort\n8012 is a reserved port, please use a different value"
        );
        assert_eq!(
            refusals(
                json!({"image": "x", "ports": [{"containerPort": 80, "protocol": "UDP"}]}),
                json!({})
            ),
            "invalid value: UDP: spec.template.spec.containers[0].ports.protocol"
        );
        assert_eq!(
            refusals(json!({"image": "x", "ports": [{"name": "h2c"}]}), json!({})),
            ""
        );
        let mut errs = FieldErrors::default();
        check(
            &json!({"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}),
            "spec",
            &RevisionDefaults::default(),
            &mut errs,
        );
        assert_eq!(errs.to_string(), "missing field(s): spec.containers[*].ports");
    }

    #[test]
    fn what_knative_keeps_for_itself() {
        assert_eq!(
            refusals(
                json!({"image": "x", "env": [{"name": "PORT", "value": "1"}]}),
                json!({})
            ),
            "\"PORT\" is a reserved environment variable: spec.template.spec.containers[0].env[0].name"
        );
        assert_eq!(
            refusals(json!({"image": "x", "name": "queue-proxy"}), json!({})),
            "\"queue-proxy\" is a reserved container name: spec.template.spec.containers[0].name"
        );
        assert_eq!(
            refusals(json!({}), json!({})),
            "missing field(s): spec.template.spec.containers[0].image"
        );
        let mut errs = FieldErrors::default();
        check(&json!({}), "spec", &RevisionDefaults::default(), &mut errs);
        assert_eq!(errs.to_string(), "missing field(s): spec.containers");
    }
}
