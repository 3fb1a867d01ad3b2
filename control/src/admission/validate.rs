//! Schema-level validation of the built-in kinds, with the apiserver's field paths and messages.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::Cause;
use super::names;
use nodeless_types::quantity::{QUANTITY_MSG, parse_quantity};

type Causes = Vec<Cause>;

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

pub fn validate(group: &str, kind: &str, obj: &Value, old: Option<&Value>) -> Causes {
    let mut c = Vec::new();
    let naming: fn(&str) -> Option<String> = match (group, kind) {
        ("", "Namespace" | "Service") => names::dns1123_label,
        // RBAC's names only have to be a path segment: `system:aggregate-to-admin`.
        ("rbac.authorization.k8s.io", _) => names::path_segment,
        _ => names::dns1123_subdomain,
    };
    metadata(obj, naming, &mut c);
    match (group, kind) {
        ("", "Pod") => {
            if let Some(spec) = obj.get("spec") {
                pod_spec(spec, "spec", false, &mut c);
            } else {
                c.push(Cause::required("spec"));
            }
            if let Some(old) = old {
                pod_update(obj, old, &mut c);
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => workload(kind, obj, old, &mut c),
        ("batch", "Job") => {
            let spec = obj.get("spec").unwrap_or(&Value::Null);
            job_spec(spec, old.and_then(|o| o.get("spec")), "spec", &mut c);
        }
        ("batch", "CronJob") => cronjob(obj, &mut c),
        ("", "ReplicationController") => {
            // The selector is a plain map; checked as a workload's matchLabels would be.
            let mut as_rs = obj.clone();
            if let Some(sel) = obj.pointer("/spec/selector").cloned() {
                as_rs["spec"]["selector"] = json!({"matchLabels": sel});
            }
            let old_rs = old.map(|o| {
                let mut o = o.clone();
                if let Some(sel) = o.pointer("/spec/selector").cloned() {
                    o["spec"]["selector"] = json!({"matchLabels": sel});
                }
                o
            });
            workload(kind, &as_rs, old_rs.as_ref(), &mut c);
        }
        ("", "Service") => service(obj, old, &mut c),
        ("", "ConfigMap") => config_data(obj, false, &mut c),
        ("", "Secret") => {
            config_data(obj, true, &mut c);
            if s(obj, "/type") == Some("kubernetes.io/service-account-token")
                && s(obj, "/metadata/annotations/kubernetes.io~1service-account.name").is_none_or(str::is_empty)
            {
                c.push(Cause::required(
                    "metadata.annotations[kubernetes.io/service-account.name]".to_string(),
                ));
            }
            if s(obj, "/type") == Some("kubernetes.io/tls") {
                for k in ["tls.crt", "tls.key"] {
                    if obj.pointer("/data").and_then(|d| d.get(k)).is_none() {
                        c.push(Cause::required(format!("data[{k}]")));
                    }
                }
            }
        }
        ("networking.k8s.io", "Ingress") => ingress(obj, &mut c),
        ("autoscaling", "HorizontalPodAutoscaler") => hpa(obj, &mut c),
        ("", "ResourceQuota") => resource_quota(obj, &mut c),
        ("policy", "PodDisruptionBudget") => pdb(obj, &mut c),
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => rbac_rules(obj, kind == "Role", &mut c),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            rbac_binding(obj, old, kind == "RoleBinding", &mut c)
        }
        ("", "PersistentVolume" | "PersistentVolumeClaim") | ("storage.k8s.io", _) => {
            super::storage::validate(group, kind, obj, old, &mut c)
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let t = s(obj, "/addressType").unwrap_or_default();
            if !matches!(t, "IPv4" | "IPv6" | "FQDN") {
                c.push(Cause::unsupported("addressType", t, &["FQDN", "IPv4", "IPv6"]));
            }
        }
        _ => {}
    }
    c
}

/// A disruption budget: `minAvailable` or `maxUnavailable` (not both), each a count or a
/// percentage, and a known unhealthy-pod eviction policy.
fn pdb(obj: &Value, c: &mut Causes) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let (min, max) = (spec.get("minAvailable"), spec.get("maxUnavailable"));
    if min.is_some_and(|v| !v.is_null()) && max.is_some_and(|v| !v.is_null()) {
        c.push(Cause::invalid(
            "spec",
            spec,
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for (f, v) in [("minAvailable", min), ("maxUnavailable", max)] {
        let Some(v) = v.filter(|v| !v.is_null()) else { continue };
        let ok = match v {
            Value::Number(n) => n.as_i64().is_some_and(|n| n >= 0),
            Value::String(p) => p
                .strip_suffix('%')
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n <= 100),
            _ => false,
        };
        if !ok {
            c.push(Cause::invalid(
                format!("spec.{f}"),
                v,
                "must be a non-negative integer or a percentage between 0% and 100%",
            ));
        }
    }
    if let Some(p) = s(spec, "/unhealthyPodEvictionPolicy") {
        if !matches!(p, "IfHealthyBudget" | "AlwaysAllow") {
            c.push(Cause::unsupported(
                "spec.unhealthyPodEvictionPolicy",
                p,
                &["AlwaysAllow", "IfHealthyBudget"],
            ));
        }
    }
}

/// A quota: quantities for its limits, scopes admission enforces, no `scopeSelector` (not
/// enforced here, so refused rather than ignored).
fn resource_quota(obj: &Value, c: &mut Causes) {
    for (k, v) in obj
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if v.as_str().is_none_or(|q| parse_quantity(q).is_err()) {
            c.push(Cause::invalid(format!("spec.hard[{k}]"), v, QUANTITY_MSG));
        }
    }
    for (i, sc) in arr(obj.get("spec").unwrap_or(&Value::Null), "scopes")
        .iter()
        .enumerate()
    {
        let sc = sc.as_str().unwrap_or_default();
        if !super::quota::SCOPES.contains(&sc) {
            c.push(Cause::unsupported(
                format!("spec.scopes[{i}]"),
                sc,
                super::quota::SCOPES,
            ));
        }
    }
    if obj.pointer("/spec/scopeSelector").is_some_and(|v| !v.is_null()) {
        c.push(Cause::invalid(
            "spec.scopeSelector",
            obj.pointer("/spec/scopeSelector").unwrap_or(&Value::Null),
            "scope selectors are not supported by this cluster; use spec.scopes",
        ));
    }
}

/// An autoscaler: a target by kind and name, 1 ≤ minReplicas ≤ maxReplicas, metrics of a known
/// type with a target, and behavior policies with positive values.
fn hpa(obj: &Value, c: &mut Causes) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    for f in ["kind", "name"] {
        if s(spec, &format!("/scaleTargetRef/{f}")).unwrap_or_default().is_empty() {
            c.push(Cause::required(format!("spec.scaleTargetRef.{f}")));
        }
    }
    let min = spec.get("minReplicas").and_then(Value::as_i64).unwrap_or(1);
    if min < 1 {
        c.push(Cause::invalid(
            "spec.minReplicas",
            &json!(min),
            "must be greater than or equal to 1",
        ));
    }
    match spec.get("maxReplicas").and_then(Value::as_i64) {
        None => c.push(Cause::required("spec.maxReplicas")),
        Some(max) if max < min => c.push(Cause::invalid(
            "spec.maxReplicas",
            &json!(max),
            "must be greater than or equal to `minReplicas`",
        )),
        Some(_) => {}
    }
    for (i, m) in arr(spec, "metrics").iter().enumerate() {
        let at = format!("spec.metrics[{i}]");
        let ty = s(m, "/type").unwrap_or_default();
        let key = match ty {
            "Resource" => "resource",
            "ContainerResource" => "containerResource",
            "Pods" => "pods",
            "Object" => "object",
            "External" => "external",
            _ => {
                c.push(Cause::unsupported(
                    format!("{at}.type"),
                    ty,
                    &["ContainerResource", "External", "Object", "Pods", "Resource"],
                ));
                continue;
            }
        };
        let Some(source) = m.get(key) else {
            c.push(Cause::required_because(
                format!("{at}.{key}"),
                &format!("must populate information for the given metric source (type {ty})"),
            ));
            continue;
        };
        let target = source.get("target").unwrap_or(&Value::Null);
        let tty = s(target, "/type").unwrap_or_default();
        if !matches!(tty, "Utilization" | "Value" | "AverageValue") {
            c.push(Cause::unsupported(
                format!("{at}.{key}.target.type"),
                tty,
                &["AverageValue", "Utilization", "Value"],
            ));
        }
        if tty == "Utilization"
            && target
                .get("averageUtilization")
                .and_then(Value::as_i64)
                .is_none_or(|u| u < 1)
        {
            c.push(Cause::required_because(
                format!("{at}.{key}.target.averageUtilization"),
                "must be set and greater than 0 for a Utilization target",
            ));
        }
    }
    for dir in ["scaleUp", "scaleDown"] {
        let rules = spec.pointer(&format!("/behavior/{dir}")).unwrap_or(&Value::Null);
        if let Some(w) = rules.get("stabilizationWindowSeconds").and_then(Value::as_i64) {
            if !(0..=3600).contains(&w) {
                c.push(Cause::invalid(
                    format!("spec.behavior.{dir}.stabilizationWindowSeconds"),
                    &json!(w),
                    "must be between 0 and 3600",
                ));
            }
        }
        for (i, p) in arr(rules, "policies").iter().enumerate() {
            let at = format!("spec.behavior.{dir}.policies[{i}]");
            if !matches!(s(p, "/type"), Some("Pods" | "Percent")) {
                c.push(Cause::unsupported(
                    format!("{at}.type"),
                    s(p, "/type").unwrap_or_default(),
                    &["Percent", "Pods"],
                ));
            }
            if p.get("value").and_then(Value::as_i64).is_none_or(|v| v < 1) {
                c.push(Cause::invalid(
                    format!("{at}.value"),
                    p.get("value").unwrap_or(&Value::Null),
                    "must be greater than zero",
                ));
            }
            if p.get("periodSeconds")
                .and_then(Value::as_i64)
                .is_none_or(|v| !(1..=1800).contains(&v))
            {
                c.push(Cause::invalid(
                    format!("{at}.periodSeconds"),
                    p.get("periodSeconds").unwrap_or(&Value::Null),
                    "must be greater than zero and less than or equal to 1800",
                ));
            }
        }
    }
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    arr(v, key)
        .iter()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

/// A role's rules: each grants verbs on resources of API groups, or (cluster roles only) on
/// non-resource URLs, not both.
fn rbac_rules(obj: &Value, namespaced: bool, c: &mut Causes) {
    for (i, rule) in arr(obj, "rules").iter().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        if strings(rule, "verbs").is_empty() {
            c.push(Cause::required_because(
                at("verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = strings(rule, "nonResourceURLs");
        let resources = strings(rule, "resources");
        if !urls.is_empty() {
            if namespaced {
                c.push(Cause::invalid(
                    at("nonResourceURLs"),
                    &json!(urls),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !resources.is_empty() || !strings(rule, "apiGroups").is_empty() {
                c.push(Cause::invalid(
                    at("nonResourceURLs"),
                    &json!(urls),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if rule
            .get("apiGroups")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            c.push(Cause::required_because(
                at("apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if resources.is_empty() {
            c.push(Cause::required_because(
                at("resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

/// A binding names a role of its own kind's reach, which never changes, and subjects of the
/// three kinds.
fn rbac_binding(obj: &Value, old: Option<&Value>, namespaced: bool, c: &mut Causes) {
    let role_ref = obj.get("roleRef").unwrap_or(&Value::Null);
    if s(role_ref, "/apiGroup") != Some("rbac.authorization.k8s.io") {
        c.push(Cause::unsupported(
            "roleRef.apiGroup",
            s(role_ref, "/apiGroup").unwrap_or_default(),
            &["rbac.authorization.k8s.io"],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["ClusterRole", "Role"]
    } else {
        &["ClusterRole"]
    };
    let kind = s(role_ref, "/kind").unwrap_or_default();
    if !kinds.contains(&kind) {
        c.push(Cause::unsupported("roleRef.kind", kind, kinds));
    }
    if s(role_ref, "/name").unwrap_or_default().is_empty() {
        c.push(Cause::required("roleRef.name"));
    }
    if let Some(old_ref) = old.and_then(|o| o.get("roleRef")) {
        if old_ref != role_ref {
            c.push(Cause::invalid("roleRef", role_ref, "cannot change roleRef"));
        }
    }
    for (i, sub) in arr(obj, "subjects").iter().enumerate() {
        let at = |f: &str| format!("subjects[{i}].{f}");
        let kind = s(sub, "/kind").unwrap_or_default();
        if s(sub, "/name").unwrap_or_default().is_empty() {
            c.push(Cause::required(at("name")));
        }
        match kind {
            "ServiceAccount" => {
                if !matches!(s(sub, "/apiGroup"), None | Some("")) {
                    c.push(Cause::unsupported(
                        at("apiGroup"),
                        s(sub, "/apiGroup").unwrap_or_default(),
                        &[""],
                    ));
                }
                if !namespaced && s(sub, "/namespace").unwrap_or_default().is_empty() {
                    c.push(Cause::required(at("namespace")));
                }
            }
            "User" | "Group" => {
                if s(sub, "/apiGroup") != Some("rbac.authorization.k8s.io") {
                    c.push(Cause::unsupported(
                        at("apiGroup"),
                        s(sub, "/apiGroup").unwrap_or_default(),
                        &["rbac.authorization.k8s.io"],
                    ));
                }
            }
            _ => c.push(Cause::unsupported(
                at("kind"),
                kind,
                &["Group", "ServiceAccount", "User"],
            )),
        }
    }
}

fn metadata(obj: &Value, naming: fn(&str) -> Option<String>, c: &mut Causes) {
    let name = s(obj, "/metadata/name").unwrap_or_default();
    if !name.is_empty() {
        if let Some(why) = naming(name) {
            c.push(Cause::invalid("metadata.name", &json!(name), &why));
        }
    }
    if let Some(ns) = s(obj, "/metadata/namespace").filter(|n| !n.is_empty()) {
        if let Some(why) = names::dns1123_label(ns) {
            c.push(Cause::invalid("metadata.namespace", &json!(ns), &why));
        }
    }
    labels(obj.pointer("/metadata/labels"), "metadata.labels", c);
    if let Some(ann) = obj.pointer("/metadata/annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in ann {
            total += k.len() + v.as_str().map(str::len).unwrap_or(0);
            if let Some(why) = names::qualified_name(k) {
                c.push(Cause::invalid("metadata.annotations", &json!(k), &why));
            }
        }
        if total > 256 * 1024 {
            c.push(Cause {
                field: "metadata.annotations".into(),
                reason: "FieldValueTooLong",
                message: "Too long: must have at most 262144 bytes".into(),
            });
        }
    }
}

fn labels(l: Option<&Value>, field: &str, c: &mut Causes) {
    for (k, v) in l.and_then(Value::as_object).into_iter().flatten() {
        if let Some(why) = names::qualified_name(k) {
            c.push(Cause::invalid(field, &json!(k), &why));
        }
        if let Some(why) = v.as_str().and_then(names::label_value) {
            c.push(Cause::invalid(field.to_string(), v, &why));
        }
    }
}

fn quantities(res: &Value, path: &str, c: &mut Causes) {
    for section in ["requests", "limits"] {
        for (k, v) in res.get(section).and_then(Value::as_object).into_iter().flatten() {
            let text = match v {
                Value::String(t) => t.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            match parse_quantity(&text) {
                Err(_) => c.push(Cause::invalid(format!("{path}.{section}[{k}]"), v, QUANTITY_MSG)),
                Ok(q) if q.milli() < 0 => c.push(Cause::invalid(
                    format!("{path}.{section}[{k}]"),
                    v,
                    "must be greater than or equal to 0",
                )),
                Ok(_) => {}
            }
        }
    }
    for k in ["cpu", "memory"] {
        let q = |sec: &str| {
            res.pointer(&format!("/{sec}/{k}"))
                .and_then(|v| {
                    v.as_str()
                        .map(String::from)
                        .or_else(|| v.as_i64().map(|n| n.to_string()))
                })
                .and_then(|t| parse_quantity(&t).ok())
        };
        if let (Some(r), Some(l)) = (q("requests"), q("limits")) {
            if r > l {
                let shown = res.pointer(&format!("/requests/{k}")).cloned().unwrap_or_default();
                c.push(Cause::invalid(
                    format!("{path}.requests"),
                    &shown,
                    &format!(
                        "must be less than or equal to {k} limit of {}",
                        res.pointer(&format!("/limits/{k}"))
                            .map(|v| v.as_str().map(String::from).unwrap_or(v.to_string()))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
    }
}

fn probe(p: &Value, path: &str, c: &mut Causes) {
    let handlers = ["exec", "httpGet", "tcpSocket", "grpc"]
        .iter()
        .filter(|h| p.get(**h).is_some())
        .count();
    if handlers == 0 {
        c.push(Cause::required_because(path.to_string(), "must specify a handler type"));
    } else if handlers > 1 {
        c.push(Cause::forbidden(
            path.to_string(),
            "may not specify more than 1 handler type",
        ));
    }
}

fn container(
    ct: &Value,
    path: &str,
    volumes: &HashSet<String>,
    names_seen: &mut HashSet<String>,
    template: bool,
    c: &mut Causes,
) {
    let name = s(ct, "/name").unwrap_or_default();
    if name.is_empty() {
        c.push(Cause::required(format!("{path}.name")));
    } else if let Some(why) = names::dns1123_label(name) {
        c.push(Cause::invalid(format!("{path}.name"), &json!(name), &why));
    } else if !names_seen.insert(name.to_string()) {
        c.push(Cause::duplicate(format!("{path}.name"), name));
    }
    if s(ct, "/image").unwrap_or_default().trim().is_empty() {
        let _ = template;
        c.push(Cause::required(format!("{path}.image")));
    }
    let mut port_names = HashSet::new();
    for (i, p) in arr(ct, "ports").iter().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        match p.get("containerPort").and_then(Value::as_i64) {
            None => c.push(Cause::required(format!("{pp}.containerPort"))),
            Some(n) if !(1..=65535).contains(&n) => c.push(Cause::invalid(
                format!("{pp}.containerPort"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            )),
            _ => {}
        }
        if let Some(proto) = s(p, "/protocol") {
            if !matches!(proto, "TCP" | "UDP" | "SCTP") {
                c.push(Cause::unsupported(
                    format!("{pp}.protocol"),
                    proto,
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
        if let Some(n) = s(p, "/name") {
            if let Some(why) = names::port_name(n) {
                c.push(Cause::invalid(format!("{pp}.name"), &json!(n), &why));
            } else if !port_names.insert(n.to_string()) {
                c.push(Cause::duplicate(format!("{pp}.name"), n));
            }
        }
    }
    for (i, e) in arr(ct, "env").iter().enumerate() {
        let ep = format!("{path}.env[{i}]");
        let n = s(e, "/name").unwrap_or_default();
        if n.is_empty() {
            c.push(Cause::required(format!("{ep}.name")));
        } else if let Some(why) = names::env_name(n) {
            c.push(Cause::invalid(format!("{ep}.name"), &json!(n), &why));
        }
        if let Some(vf) = e.get("valueFrom").and_then(Value::as_object) {
            if e.get("value").and_then(Value::as_str).is_some_and(|v| !v.is_empty()) {
                c.push(Cause::invalid(
                    format!("{ep}.valueFrom"),
                    &json!(""),
                    "may not be specified when `value` is not empty",
                ));
            }
            if vf.len() != 1 {
                c.push(Cause::invalid(
                    format!("{ep}.valueFrom"),
                    &json!(""),
                    "may not have more than one field specified at a time",
                ));
            }
        }
    }
    if let Some(res) = ct.get("resources") {
        quantities(res, &format!("{path}.resources"), c);
    }
    for (i, m) in arr(ct, "volumeMounts").iter().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        let n = s(m, "/name").unwrap_or_default();
        if n.is_empty() {
            c.push(Cause::required(format!("{mp}.name")));
        } else if !volumes.contains(n) {
            c.push(Cause {
                field: format!("{mp}.name"),
                reason: "FieldValueNotFound",
                message: format!("Not found: \"{n}\""),
            });
        }
        if s(m, "/mountPath").unwrap_or_default().is_empty() {
            c.push(Cause::required(format!("{mp}.mountPath")));
        }
    }
    for pr in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = ct.get(pr) {
            probe(p, &format!("{path}.{pr}"), c);
        }
    }
}

pub fn pod_spec(spec: &Value, path: &str, template: bool, c: &mut Causes) {
    let mut volumes = HashSet::new();
    for (i, v) in arr(spec, "volumes").iter().enumerate() {
        let vp = format!("{path}.volumes[{i}]");
        let n = s(v, "/name").unwrap_or_default();
        if n.is_empty() {
            c.push(Cause::required(format!("{vp}.name")));
        } else if let Some(why) = names::dns1123_label(n) {
            c.push(Cause::invalid(format!("{vp}.name"), &json!(n), &why));
        } else if !volumes.insert(n.to_string()) {
            c.push(Cause::duplicate(format!("{vp}.name"), n));
        }
        let sources = v
            .as_object()
            .map(|m| m.keys().filter(|k| *k != "name").count())
            .unwrap_or(0);
        if let Some(t) = v.pointer("/ephemeral/volumeClaimTemplate") {
            super::storage::claim_spec(
                t.get("spec").unwrap_or(&Value::Null),
                &format!("{vp}.ephemeral.volumeClaimTemplate.spec"),
                c,
            );
        } else if v.get("ephemeral").is_some() {
            c.push(Cause::required(format!("{vp}.ephemeral.volumeClaimTemplate")));
        }
        if sources == 0 {
            c.push(Cause::required_because(vp.clone(), "must specify a volume type"));
        } else if sources > 1 {
            c.push(Cause::forbidden(vp, "may not specify more than 1 volume type"));
        }
    }
    let cs = arr(spec, "containers");
    if cs.is_empty() {
        c.push(Cause::required(format!("{path}.containers")));
    }
    let mut seen = HashSet::new();
    for (i, ct) in cs.iter().enumerate() {
        container(ct, &format!("{path}.containers[{i}]"), &volumes, &mut seen, template, c);
    }
    for (i, ct) in arr(spec, "initContainers").iter().enumerate() {
        container(
            ct,
            &format!("{path}.initContainers[{i}]"),
            &volumes,
            &mut seen,
            template,
            c,
        );
    }
    if let Some(rp) = s(spec, "/restartPolicy") {
        let allowed: &[&str] = if template {
            &["Always"]
        } else {
            &["Always", "OnFailure", "Never"]
        };
        if !allowed.contains(&rp) {
            c.push(Cause::unsupported(format!("{path}.restartPolicy"), rp, allowed));
        }
    }
    if let Some(dp) = s(spec, "/dnsPolicy") {
        let allowed = ["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"];
        if !allowed.contains(&dp) {
            c.push(Cause::unsupported(format!("{path}.dnsPolicy"), dp, &allowed));
        }
    }
    if let Some(g) = spec.get("terminationGracePeriodSeconds").and_then(Value::as_i64) {
        if g < 0 {
            c.push(Cause::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                &json!(g),
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// The fields of a pod's spec an update may change, as Kubernetes allows (its ephemeral
/// containers change through their own subresource, checked there).
fn pod_update(obj: &Value, old: &Value, c: &mut Causes) {
    let strip = |spec: Option<&Value>| {
        let mut spec = spec.cloned().unwrap_or(Value::Null);
        if let Some(m) = spec.as_object_mut() {
            for f in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
                "ephemeralContainers",
                "schedulingGates",
            ] {
                m.remove(f);
            }
            for list in ["containers", "initContainers"] {
                for ct in m.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                    if let Some(ct) = ct.as_object_mut() {
                        ct.remove("image");
                    }
                }
            }
        }
        spec
    };
    let (new_spec, old_spec) = (obj.get("spec"), old.get("spec"));
    // The node a pod is bound to is set once, by its binding.
    let node = |s: Option<&Value>| s.and_then(|s| s.get("nodeName")).cloned();
    let bound_now = node(old_spec).is_none() && node(new_spec).is_some();
    let (mut a, mut b) = (strip(new_spec), strip(old_spec));
    if bound_now {
        for s in [&mut a, &mut b] {
            if let Some(m) = s.as_object_mut() {
                m.remove("nodeName");
            }
        }
    }
    if a != b {
        c.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`",
        ));
    }
}

/// A pod's ephemeral containers after a write to `pods/ephemeralcontainers`: those it had stay
/// as they were; each new one is a valid container with a unique name and none of the fields
/// an ephemeral container may not have (ports, probes, resources, lifecycle), targeting a
/// container of the pod if it names one.
pub fn ephemeral_containers(pod: &Value, old: &Value) -> Causes {
    let mut c = Vec::new();
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let before = arr(old.get("spec").unwrap_or(&Value::Null), "ephemeralContainers");
    let now = arr(spec, "ephemeralContainers");
    for (i, e) in before.iter().enumerate() {
        let name = s(e, "/name").unwrap_or_default();
        match now.iter().find(|n| s(n, "/name") == Some(name)) {
            Some(n) if n == e => {}
            Some(_) => c.push(Cause::forbidden(
                format!("spec.ephemeralContainers[{i}]"),
                &format!("existing ephemeral container {name:?} may not be changed"),
            )),
            None => c.push(Cause::forbidden(
                "spec.ephemeralContainers",
                &format!("existing ephemeral container {name:?} may not be removed"),
            )),
        }
    }
    let volumes: HashSet<String> = arr(spec, "volumes")
        .iter()
        .filter_map(|v| s(v, "/name").map(str::to_string))
        .collect();
    let regular: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| arr(spec, l))
        .filter_map(|ct| s(ct, "/name"))
        .collect();
    let mut seen: HashSet<String> = regular.iter().map(|n| n.to_string()).collect();
    for (i, e) in now.iter().enumerate() {
        let path = format!("spec.ephemeralContainers[{i}]");
        container(e, &path, &volumes, &mut seen, false, &mut c);
        for f in [
            "ports",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "resources",
            "lifecycle",
        ] {
            if e.get(f)
                .is_some_and(|v| !v.is_null() && v != &json!({}) && v != &json!([]))
            {
                c.push(Cause::forbidden(
                    format!("{path}.{f}"),
                    "cannot be set for an Ephemeral Container",
                ));
            }
        }
        if let Some(t) = s(e, "/targetContainerName")
            && !regular.contains(&t)
        {
            c.push(Cause {
                field: format!("{path}.targetContainerName"),
                reason: "FieldValueNotFound",
                message: format!("Not found: {t:?}"),
            });
        }
    }
    c
}

fn int_or_percent_ok(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Number(_)) => true,
        Some(Value::String(t)) => t.strip_suffix('%').is_some_and(|p| p.parse::<u32>().is_ok()),
        _ => false,
    }
}

fn is_zero(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Number(n)) if n.as_i64() == Some(0))
        || matches!(v, Some(Value::String(t)) if t == "0%" || t == "0")
}

/// A Job's spec (or a CronJob's job template's): pods that end, sane counts, a selector that
/// picks the template, and what may not change once it runs.
fn job_spec(spec: &Value, old: Option<&Value>, path: &str, c: &mut Causes) {
    let tspec = spec.pointer("/template/spec");
    match tspec {
        // As a pod's, not a workload's: a Job's pods end (their restart policy is checked here).
        Some(ps) => pod_spec(ps, &format!("{path}.template.spec"), false, c),
        None => c.push(Cause::required(format!("{path}.template"))),
    }
    let restart = tspec.and_then(|t| s(t, "/restartPolicy")).unwrap_or("Always");
    if !matches!(restart, "Never" | "OnFailure") {
        c.push(Cause::unsupported(
            format!("{path}.template.spec.restartPolicy"),
            restart,
            &["OnFailure", "Never"],
        ));
    }
    for (field, min) in [
        ("parallelism", 0),
        ("completions", 0),
        ("backoffLimit", 0),
        ("activeDeadlineSeconds", 1),
        ("ttlSecondsAfterFinished", 0),
    ] {
        if let Some(n) = spec.get(field).and_then(Value::as_i64) {
            if n < min {
                let what = if min == 0 {
                    "must be greater than or equal to 0"
                } else {
                    "must be greater than 0"
                };
                c.push(Cause::invalid(format!("{path}.{field}"), &json!(n), what));
            }
        }
    }
    let mode = s(spec, "/completionMode").unwrap_or("NonIndexed");
    if !matches!(mode, "NonIndexed" | "Indexed") {
        c.push(Cause::unsupported(
            format!("{path}.completionMode"),
            mode,
            &["NonIndexed", "Indexed"],
        ));
    }
    if mode == "Indexed" && spec.get("completions").is_none_or(Value::is_null) {
        c.push(Cause::required_because(
            format!("{path}.completions"),
            "when completion mode is Indexed",
        ));
    }
    if let Some(ml) = spec.pointer("/selector/matchLabels").and_then(Value::as_object) {
        let tlabels = spec.pointer("/template/metadata/labels");
        if !ml.iter().all(|(k, v)| tlabels.and_then(|l| l.get(k)) == Some(v)) {
            c.push(Cause::invalid(
                format!("{path}.template.metadata.labels"),
                tlabels.unwrap_or(&json!({})),
                "`selector` does not match template `labels`",
            ));
        }
    }
    if let Some(old) = old {
        for field in ["selector", "completionMode", "template"] {
            if old.get(field) != spec.get(field) {
                c.push(Cause::invalid(
                    format!("{path}.{field}"),
                    spec.get(field).unwrap_or(&Value::Null),
                    "field is immutable",
                ));
            }
        }
    }
}

fn cronjob(obj: &Value, c: &mut Causes) {
    let name = s(obj, "/metadata/name").unwrap_or_default();
    // Job names get 11 more characters (`-<minutes>`), and must stay DNS labels.
    if name.len() > 52 {
        c.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be no more than 52 characters",
        ));
    }
    match s(obj, "/spec/schedule") {
        None | Some("") => c.push(Cause::required("spec.schedule")),
        Some(sched) => {
            if let Some(why) = crate::schedule::check(sched, s(obj, "/spec/timeZone")) {
                let field = if why.contains("time zone") {
                    "spec.timeZone"
                } else {
                    "spec.schedule"
                };
                let value = obj
                    .pointer(&format!("/{}", field.replace('.', "/")))
                    .unwrap_or(&Value::Null);
                c.push(Cause::invalid(field, value, &why));
            }
        }
    }
    let policy = s(obj, "/spec/concurrencyPolicy").unwrap_or("Allow");
    if !matches!(policy, "Allow" | "Forbid" | "Replace") {
        c.push(Cause::unsupported(
            "spec.concurrencyPolicy",
            policy,
            &["Allow", "Forbid", "Replace"],
        ));
    }
    match obj.pointer("/spec/jobTemplate/spec") {
        Some(js) => job_spec(js, None, "spec.jobTemplate.spec", c),
        None => c.push(Cause::required("spec.jobTemplate")),
    }
}

fn workload(kind: &str, obj: &Value, old: Option<&Value>, c: &mut Causes) {
    let selector = obj.pointer("/spec/selector");
    let match_labels = selector.and_then(|s| s.get("matchLabels")).and_then(Value::as_object);
    let has_exprs = selector
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if match_labels.is_none_or(|m| m.is_empty()) && !has_exprs {
        c.push(Cause::required("spec.selector"));
    }
    let tlabels = obj.pointer("/spec/template/metadata/labels");
    if let Some(ml) = match_labels {
        let ok = ml.iter().all(|(k, v)| tlabels.and_then(|l| l.get(k)) == Some(v));
        if !ok {
            c.push(Cause::invalid(
                "spec.template.metadata.labels",
                tlabels.unwrap_or(&json!({})),
                "`selector` does not match template `labels`",
            ));
        }
    }
    labels(tlabels, "spec.template.metadata.labels", c);
    if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64) {
        if r < 0 {
            c.push(Cause::invalid(
                "spec.replicas",
                &json!(r),
                "must be greater than or equal to 0",
            ));
        }
    }
    match obj.pointer("/spec/template/spec") {
        // A StatefulSet's claim templates are volumes of its pods too.
        Some(spec) if kind == "StatefulSet" => {
            let mut spec = spec.clone();
            let claims: Vec<Value> = obj
                .pointer("/spec/volumeClaimTemplates")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|t| json!({"name": s(t, "/metadata/name").unwrap_or_default(), "persistentVolumeClaim": {"claimName": "-"}}))
                .collect();
            if !claims.is_empty() {
                let mut vols: Vec<Value> = arr(&spec, "volumes")
                    .iter()
                    .filter(|v| !claims.iter().any(|c| c.get("name") == v.get("name")))
                    .cloned()
                    .collect();
                vols.extend(claims);
                spec["volumes"] = json!(vols);
            }
            pod_spec(&spec, "spec.template.spec", true, c)
        }
        Some(spec) => pod_spec(spec, "spec.template.spec", true, c),
        None => c.push(Cause::required("spec.template")),
    }
    if kind == "Deployment" {
        let t = s(obj, "/spec/strategy/type").unwrap_or("RollingUpdate");
        if !matches!(t, "RollingUpdate" | "Recreate") {
            c.push(Cause::unsupported(
                "spec.strategy.type",
                t,
                &["Recreate", "RollingUpdate"],
            ));
        }
        let ru = obj.pointer("/spec/strategy/rollingUpdate");
        if t == "Recreate" && ru.is_some_and(|v| !v.is_null()) {
            c.push(Cause::forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            ));
        }
        let (surge, unavail) = (
            ru.and_then(|r| r.get("maxSurge")),
            ru.and_then(|r| r.get("maxUnavailable")),
        );
        for (f, v) in [("maxSurge", surge), ("maxUnavailable", unavail)] {
            if !int_or_percent_ok(v) {
                c.push(Cause::invalid(format!("spec.strategy.rollingUpdate.{f}"), v.unwrap_or(&Value::Null), "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
            }
        }
        if is_zero(surge) && is_zero(unavail) {
            c.push(Cause::invalid(
                "spec.strategy.rollingUpdate.maxUnavailable",
                unavail.unwrap_or(&Value::Null),
                "may not be 0 when `maxSurge` is 0",
            ));
        }
    }
    if kind == "StatefulSet" {
        stateful_set(obj, old, c);
    }
    if let Some(old) = old {
        if old.pointer("/spec/selector") != obj.pointer("/spec/selector") {
            c.push(Cause::invalid(
                "spec.selector",
                obj.pointer("/spec/selector").unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    }
}

/// A StatefulSet's own rules, in Kubernetes' words.
fn stateful_set(obj: &Value, old: Option<&Value>, c: &mut Causes) {
    for (i, t) in obj
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("spec.volumeClaimTemplates[{i}]");
        if s(t, "/metadata/name").is_none_or(str::is_empty) {
            c.push(Cause::required(format!("{path}.metadata.name")));
        }
        super::storage::claim_spec(t.get("spec").unwrap_or(&Value::Null), &format!("{path}.spec"), c);
    }
    let policy = s(obj, "/spec/podManagementPolicy").unwrap_or("OrderedReady");
    if !matches!(policy, "OrderedReady" | "Parallel") {
        c.push(Cause::unsupported(
            "spec.podManagementPolicy",
            policy,
            &["OrderedReady", "Parallel"],
        ));
    }
    let strategy = s(obj, "/spec/updateStrategy/type").unwrap_or("RollingUpdate");
    if !matches!(strategy, "RollingUpdate" | "OnDelete") {
        c.push(Cause::unsupported(
            "spec.updateStrategy.type",
            strategy,
            &["OnDelete", "RollingUpdate"],
        ));
    }
    if let Some(p) = obj
        .pointer("/spec/updateStrategy/rollingUpdate/partition")
        .and_then(Value::as_i64)
        .filter(|p| *p < 0)
    {
        c.push(Cause::invalid(
            "spec.updateStrategy.rollingUpdate.partition",
            &json!(p),
            "must be greater than or equal to 0",
        ));
    }
    if let Some(old) = old {
        const MUTABLE: [&str; 7] = [
            "replicas",
            "ordinals",
            "template",
            "updateStrategy",
            "revisionHistoryLimit",
            "persistentVolumeClaimRetentionPolicy",
            "minReadySeconds",
        ];
        let rest = |o: &Value| {
            let mut spec = o.get("spec").cloned().unwrap_or(json!({}));
            if let Some(m) = spec.as_object_mut() {
                m.retain(|k, _| !MUTABLE.contains(&k.as_str()));
            }
            spec
        };
        if rest(obj) != rest(old) {
            c.push(Cause::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
}

fn service(obj: &Value, _old: Option<&Value>, c: &mut Causes) {
    let ty = s(obj, "/spec/type").unwrap_or("ClusterIP");
    if !matches!(ty, "ClusterIP" | "ExternalName" | "LoadBalancer" | "NodePort") {
        c.push(Cause::unsupported(
            "spec.type",
            ty,
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let ports = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let headless = s(obj, "/spec/clusterIP") == Some("None");
    if ty == "ExternalName" {
        match s(obj, "/spec/externalName") {
            None | Some("") => c.push(Cause::required("spec.externalName")),
            Some(n) => {
                if let Some(why) = names::dns1123_subdomain(n.trim_end_matches('.')) {
                    c.push(Cause::invalid("spec.externalName", &json!(n), &why));
                }
            }
        }
    } else if ports.is_empty() && !headless {
        c.push(Cause::required("spec.ports"));
    }
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        match p.get("port").and_then(Value::as_i64) {
            None => c.push(Cause::required(format!("{pp}.port"))),
            Some(n) if !(1..=65535).contains(&n) => c.push(Cause::invalid(
                format!("{pp}.port"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            )),
            _ => {}
        }
        match s(p, "/name") {
            Some(n) if !n.is_empty() => {
                if let Some(why) = names::dns1123_label(n) {
                    c.push(Cause::invalid(format!("{pp}.name"), &json!(n), &why));
                } else if !seen.insert(n.to_string()) {
                    c.push(Cause::duplicate(format!("{pp}.name"), n));
                }
            }
            _ if ports.len() > 1 => c.push(Cause::required(format!("{pp}.name"))),
            _ => {}
        }
        if let Some(proto) = s(p, "/protocol") {
            if !matches!(proto, "TCP" | "UDP" | "SCTP") {
                c.push(Cause::unsupported(
                    format!("{pp}.protocol"),
                    proto,
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) if !(1..=65535).contains(&n.as_i64().unwrap_or(0)) => {
                c.push(Cause::invalid(
                    format!("{pp}.targetPort"),
                    &json!(n),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            Some(Value::String(n)) => {
                if let Some(why) = names::port_name(n) {
                    c.push(Cause::invalid(format!("{pp}.targetPort"), &json!(n), &why));
                }
            }
            _ => {}
        }
    }
    labels(obj.pointer("/spec/selector"), "spec.selector", c);
}

fn config_data(obj: &Value, secret: bool, c: &mut Causes) {
    let mut total = 0usize;
    let data = obj.get("data").and_then(Value::as_object);
    let binary = obj.get("binaryData").and_then(Value::as_object);
    for (field, map) in [("data", data), ("binaryData", binary)] {
        for (k, v) in map.into_iter().flatten() {
            total += k.len() + v.as_str().map(str::len).unwrap_or(0);
            if let Some(why) = names::config_key(k) {
                c.push(Cause::invalid(format!("{field}[{k}]"), &json!(k), &why));
            }
            if field == "binaryData" && data.is_some_and(|d| d.contains_key(k)) {
                c.push(Cause::invalid(
                    format!("binaryData[{k}]"),
                    &json!(k),
                    "duplicate of key present in data",
                ));
            }
        }
    }
    let limit = 1024 * 1024;
    if total > limit {
        let field = if secret { "data" } else { "[]" };
        c.push(Cause {
            field: field.into(),
            reason: "FieldValueTooLong",
            message: format!("Too long: must have at most {limit} bytes"),
        });
    }
}

fn backend(b: &Value, path: &str, c: &mut Causes) {
    let svc = b.get("service");
    match (svc, b.get("resource")) {
        (Some(_), Some(_)) => c.push(Cause::invalid(
            path.to_string(),
            &json!(""),
            "cannot set both resource and service backends",
        )),
        (None, None) => c.push(Cause::invalid(
            path.to_string(),
            &json!(""),
            "resource or service backend is required",
        )),
        _ => {}
    }
    if let Some(svc) = svc {
        if s(svc, "/name").unwrap_or_default().is_empty() {
            c.push(Cause::required(format!("{path}.service.name")));
        }
        let (num, name) = (svc.pointer("/port/number"), svc.pointer("/port/name"));
        match (num, name) {
            (Some(_), Some(_)) => c.push(Cause::invalid(
                format!("{path}.service.port"),
                &json!(""),
                "cannot set both port name & port number",
            )),
            (None, None) => c.push(Cause::invalid(
                format!("{path}.service.port"),
                &json!(""),
                "port name or number is required",
            )),
            _ => {}
        }
    }
}

fn ingress(obj: &Value, c: &mut Causes) {
    let rules = obj
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(b) = obj.pointer("/spec/defaultBackend") {
        backend(b, "spec.defaultBackend", c);
    } else if rules.is_empty() {
        c.push(Cause::invalid(
            "spec.rules",
            &json!([]),
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        let rp = format!("spec.rules[{i}]");
        if let Some(host) = s(r, "/host").filter(|h| !h.is_empty()) {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.contains('*') {
                c.push(Cause::invalid(
                    format!("{rp}.host"),
                    &json!(host),
                    "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain",
                ));
            } else if let Some(why) = names::dns1123_subdomain(bare) {
                c.push(Cause::invalid(format!("{rp}.host"), &json!(host), &why));
            }
        }
        for (j, p) in r
            .pointer("/http/paths")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let pp = format!("{rp}.http.paths[{j}]");
            let pt = s(p, "/pathType").unwrap_or_default();
            match pt {
                "" => c.push(Cause::required(format!("{pp}.pathType"))),
                "Exact" | "Prefix" => {
                    if !s(p, "/path").unwrap_or_default().starts_with('/') {
                        c.push(Cause::invalid(
                            format!("{pp}.path"),
                            p.get("path").unwrap_or(&json!("")),
                            "must be an absolute path",
                        ));
                    }
                }
                "ImplementationSpecific" => {}
                other => c.push(Cause::unsupported(
                    format!("{pp}.pathType"),
                    other,
                    &["Exact", "ImplementationSpecific", "Prefix"],
                )),
            }
            match p.get("backend") {
                Some(b) => backend(b, &format!("{pp}.backend"), c),
                None => c.push(Cause::required(format!("{pp}.backend"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(c: &Causes) -> Vec<&str> {
        c.iter().map(|x| x.field.as_str()).collect()
    }

    #[test]
    fn deployment_rules() {
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": -1, "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"restartPolicy": "Never", "containers": [
                {"name": "c"}, {"name": "c", "image": "i", "ports": [{"containerPort": 70000}],
                 "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi", "cpu": "12 GB"}}}]}}}});
        let c = validate("apps", "Deployment", &d, None);
        let f = fields(&c);
        for want in [
            "spec.template.metadata.labels",
            "spec.replicas",
            "spec.template.spec.containers[0].image",
            "spec.template.spec.containers[1].name",
            "spec.template.spec.containers[1].ports[0].containerPort",
            "spec.template.spec.containers[1].resources.limits[cpu]",
            "spec.template.spec.restartPolicy",
        ] {
            assert!(f.contains(&want), "{want} missing from {f:?}");
        }
        let dup = c
            .iter()
            .find(|x| x.field == "spec.template.spec.containers[1].name")
            .unwrap();
        assert_eq!(dup.message, "Duplicate value: \"c\"");
        assert_eq!(
            c.iter()
                .find(|x| x.field.ends_with("containers[0].image"))
                .unwrap()
                .message,
            "Required value"
        );
    }

    #[test]
    fn names_services_ingresses() {
        let c = validate("", "ConfigMap", &json!({"metadata": {"name": "Bad_Name"}}), None);
        assert_eq!(fields(&c), ["metadata.name"]);
        assert!(
            c[0].message
                .starts_with("Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain")
        );
        let svc = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}, {"port": 0, "name": "b"}]}});
        let f = validate("", "Service", &svc, None);
        assert_eq!(fields(&f), ["spec.ports[0].name", "spec.ports[1].port"]);
        let ing = json!({"metadata": {"name": "i"}, "spec": {"rules": [{"host": "*.*.x.com", "http": {"paths": [{"path": "a", "pathType": "Prefix",
            "backend": {"service": {"name": "s", "port": {}}}}]}}]}});
        let f = validate("networking.k8s.io", "Ingress", &ing, None);
        assert_eq!(
            fields(&f),
            [
                "spec.rules[0].host",
                "spec.rules[0].http.paths[0].path",
                "spec.rules[0].http.paths[0].backend.service.port"
            ]
        );
    }

    #[test]
    fn valid_objects_pass_and_selector_is_immutable() {
        let d = json!({"metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web"}}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"volumes": [{"name": "v", "emptyDir": {}}], "containers": [
                {"name": "c", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/v"}], "ports": [{"name": "http", "containerPort": 80}],
                 "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}}}]}}}});
        assert!(validate("apps", "Deployment", &d, None).is_empty());
        let mut moved = d.clone();
        moved["spec"]["selector"]["matchLabels"]["app"] = json!("b");
        moved["spec"]["template"]["metadata"]["labels"]["app"] = json!("b");
        assert_eq!(
            fields(&validate("apps", "Deployment", &moved, Some(&d))),
            ["spec.selector"]
        );
    }
}
