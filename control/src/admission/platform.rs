//! What a serverless Kubernetes does not run. Each rule names itself and says why.

use nodeless_types::{caps, pod_features};
use serde_json::Value;

use super::Policy;

fn pod_spec<'a>(group: &str, kind: &str, obj: &'a Value) -> Option<&'a Value> {
    match (group, kind) {
        ("", "Pod") => obj.get("spec"),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") | ("batch", "Job") => {
            obj.pointer("/spec/template/spec")
        }
        ("batch", "CronJob") => obj.pointer("/spec/jobTemplate/spec/template/spec"),
        _ => None,
    }
}

fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["containers", "initContainers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |l| spec.get(l).and_then(Value::as_array).into_iter().flatten())
}

/// Where a kind keeps its pod spec, as a field path prefix.
fn spec_path(group: &str, kind: &str) -> &'static str {
    match (group, kind) {
        ("", "Pod") => "spec.",
        ("batch", "CronJob") => "spec.jobTemplate.spec.template.spec.",
        _ => "spec.template.spec.",
    }
}

const NO_NODE: &str = "pods run in sandboxes on virtual nodes, so there is no node";

/// The rule an object breaks, with the message the user sees.
pub fn check(group: &str, kind: &str, obj: &Value, policy: &Policy) -> Option<(&'static str, String)> {
    if group == "apps" && kind == "DaemonSet" {
        return Some((
            "nodeless.io/no-daemonset",
            format!("DaemonSet is not supported: {NO_NODE} to run a per-node agent on; use a Deployment"),
        ));
    }
    if group.is_empty() && kind == "Service" && obj.pointer("/spec/type").and_then(Value::as_str) == Some("NodePort") {
        return Some((
            "nodeless.io/no-nodeport",
            format!(
                "Service type NodePort is not supported: {NO_NODE} to open a port on; use type LoadBalancer or an Ingress"
            ),
        ));
    }
    let spec = pod_spec(group, kind, obj)?;
    for c in containers(spec) {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        if c.get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|p| p.get("hostPort").and_then(Value::as_i64).is_some_and(|h| h != 0))
        {
            return Some((
                "nodeless.io/no-hostport",
                format!(
                    "container \"{name}\" asks for a hostPort, which is not supported: {NO_NODE} port to bind; expose the port through a Service"
                ),
            ));
        }
        if c.pointer("/securityContext/privileged") == Some(&Value::Bool(true)) {
            return Some((
                "nodeless.io/no-privileged",
                format!(
                    "container \"{name}\" asks to run privileged, which is not supported: a privileged container could escape its sandbox"
                ),
            ));
        }
        // The node's own rule, so what is admitted is what the node runs.
        let listed = |field: &str| {
            c.pointer(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
        };
        if let Err(e) = caps::effective(
            &listed("/securityContext/capabilities/add"),
            &listed("/securityContext/capabilities/drop"),
        ) {
            return Some(("nodeless.io/no-privileged", format!("container \"{name}\": {e}")));
        }
    }
    // What the node could not honour: the node's own rule, so nothing admitted fails there.
    if let Ok(typed) = serde_json::from_value::<k8s_openapi::api::core::v1::PodSpec>(spec.clone()) {
        if let Some(why) = pod_features::unsupported(&typed) {
            return Some((
                "nodeless.io/unsupported-pod-feature",
                format!("{}{why}", spec_path(group, kind)),
            ));
        }
    }
    if spec.get("hostNetwork") == Some(&Value::Bool(true)) && !policy.allow_host_network {
        return Some(("nodeless.io/no-host-network", "hostNetwork is not allowed on this cluster: each pod gets its own network identity (start nodeless with --allow-host-network to permit it)".into()));
    }
    if spec.get("hostUsers") == Some(&Value::Bool(true)) {
        let field = spec_path(group, kind);
        return Some((
            "nodeless.io/no-host-users",
            format!(
                "{field}hostUsers: Forbidden: true is not supported: every pod runs in its own user namespace, so that root in a pod is not root on the node; leave it unset or false"
            ),
        ));
    }
    for (field, what) in [
        ("hostPID", "the host's process namespace"),
        ("hostIPC", "the host's IPC namespace"),
    ] {
        if spec.get(field) == Some(&Value::Bool(true)) {
            return Some((
                "nodeless.io/no-host-namespaces",
                format!("{field} is not supported: {NO_NODE} and no {what} to share"),
            ));
        }
    }
    if let Some(v) = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v.get("hostPath").is_some())
    {
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        return Some((
            "nodeless.io/no-hostpath",
            format!(
                "volume \"{name}\" is a hostPath, which is not supported: {NO_NODE} filesystem to mount; use emptyDir, a ConfigMap/Secret, disk, NAS or OSS"
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules() {
        let p = Policy::default();
        assert_eq!(
            check("apps", "DaemonSet", &json!({}), &p).unwrap().0,
            "nodeless.io/no-daemonset"
        );
        assert_eq!(
            check("", "Service", &json!({"spec": {"type": "NodePort"}}), &p)
                .unwrap()
                .0,
            "nodeless.io/no-nodeport"
        );
        let pod = |c: Value| json!({"spec": {"containers": [c]}});
        assert_eq!(
            check(
                "",
                "Pod",
                &pod(json!({"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]})),
                &p
            )
            .unwrap()
            .0,
            "nodeless.io/no-hostport"
        );
        assert_eq!(
            check(
                "",
                "Pod",
                &pod(json!({"name": "c", "securityContext": {"privileged": true}})),
                &p
            )
            .unwrap()
            .0,
            "nodeless.io/no-privileged"
        );
        let d = json!({"spec": {"template": {"spec": {"hostNetwork": true, "containers": []}}}});
        assert_eq!(
            check("apps", "Deployment", &d, &p).unwrap().0,
            "nodeless.io/no-host-network"
        );
        assert!(
            check(
                "apps",
                "Deployment",
                &d,
                &Policy {
                    allow_host_network: true
                }
            )
            .is_none()
        );
        assert!(
            check(
                "",
                "Pod",
                &pod(json!({"name": "c", "ports": [{"containerPort": 80}]})),
                &p
            )
            .is_none()
        );
        // A RuntimeClass is judged when the pod is made (see `runtime_class`), not in a template.
        let d = json!({"spec": {"template": {"spec": {"runtimeClassName": "microvm", "containers": [{"name": "c"}]}}}});
        assert!(check("apps", "Deployment", &d, &p).is_none());
        // What the node cannot honour, with the field path of the kind.
        let d = json!({"spec": {"template": {"spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}, "containers": [{"name": "c"}]}}}});
        let (rule, message) = check("apps", "Deployment", &d, &p).unwrap();
        assert_eq!(rule, "nodeless.io/unsupported-pod-feature");
        assert!(
            message.starts_with("spec.template.spec.securityContext.seccompProfile.type: "),
            "{message}"
        );
        let (_, message) = check(
            "",
            "Pod",
            &pod(json!({"name": "c", "securityContext": {"seccompProfile": {"type": "Unconfined"}}})),
            &p,
        )
        .unwrap();
        assert!(
            message.starts_with("spec.containers[0].securityContext.seccompProfile.type: Unconfined"),
            "{message}"
        );
        let host_users = |v: bool| json!({"spec": {"hostUsers": v, "containers": []}});
        let (rule, message) = check("", "Pod", &host_users(true), &p).unwrap();
        assert_eq!(rule, "nodeless.io/no-host-users");
        assert!(message.starts_with("spec.hostUsers: Forbidden"), "{message}");
        assert!(check("", "Pod", &host_users(false), &p).is_none());
        let d = json!({"spec": {"template": {"spec": {"hostUsers": true, "containers": []}}}});
        assert!(
            check("apps", "Deployment", &d, &p)
                .unwrap()
                .1
                .starts_with("spec.template.spec.hostUsers")
        );
    }

    #[test]
    fn capabilities_are_the_nodes_rule_in_any_spelling() {
        let p = Policy::default();
        let pod = |add: Value, drop: Value| json!({"spec": {"containers": [{"name": "c", "securityContext": {"capabilities": {"add": add, "drop": drop}}}]}});
        for cap in [
            "sys_admin",
            "Cap_Sys_Admin",
            "CAP_SYS_ADMIN",
            "SYS_ADMIN",
            "all",
            "sys_module",
            "SYS_PTRACE",
        ] {
            let (rule, msg) = check("", "Pod", &pod(json!([cap]), json!([])), &p).expect(cap);
            assert_eq!(rule, "nodeless.io/no-privileged");
            assert!(msg.contains(&caps::canonical(cap)), "{msg}");
            // The node refuses exactly what admission refuses.
            assert!(caps::effective(&[cap], &[] as &[&str]).is_err(), "{cap}");
        }
        for (add, drop) in [
            (json!(["net_admin"]), json!([])),
            (json!(["Chown"]), json!(["ALL"])),
            (json!([]), json!(["all"])),
        ] {
            assert!(check("", "Pod", &pod(add, drop), &p).is_none());
        }
    }
}
