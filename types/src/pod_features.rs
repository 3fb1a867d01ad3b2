//! What a pod asks of the node that the node cannot honour, refused with a reason before any
//! of it runs: a pod that asks for a runtime, a security profile or a kernel setting the node
//! lacks must fail, never run without it. Control's admission refuses the same things for pods
//! it sees with this same rule; on the node it holds for pods that reach it from another control
//! plane. Field paths are relative to the pod spec (`runtimeClassName`, …): callers put
//! `spec.` or a template's path before them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodSpec, SeccompProfile, SecurityContext};

/// The namespaced sysctls Kubernetes calls safe (kubelet allows them without
/// `--allowed-unsafe-sysctls`): they act on the pod's own namespaces only.
const SAFE_SYSCTLS: [&str; 9] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
];

fn seccomp_refusal(p: &SeccompProfile, field: &str) -> Option<String> {
    match p.type_.as_str() {
        "RuntimeDefault" => None,
        "Unconfined" => Some(format!(
            "{field}.type: Unconfined is not allowed: every container runs under the node's seccomp profile"
        )),
        "Localhost" => Some(format!(
            "{field}.type: Localhost profiles are not supported by this node (it has none installed); use RuntimeDefault, which is applied always"
        )),
        other => Some(format!("{field}.type: {other:?} is not a seccomp profile type")),
    }
}

/// Why the node cannot run a pod of this spec as asked, if it cannot.
pub fn unsupported(spec: &PodSpec) -> Option<String> {
    if let Some(why) = spec
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .and_then(|p| seccomp_refusal(p, "securityContext.seccompProfile"))
    {
        return Some(why);
    }
    if let Some(p) = spec
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.as_ref())
        .filter(|p| p.type_ == "Localhost")
    {
        return Some(format!(
            "securityContext.appArmorProfile: Localhost profile {:?} cannot be applied: this node has no AppArmor",
            p.localhost_profile.clone().unwrap_or_default()
        ));
    }
    let mut all: Vec<(&str, usize, Option<&SecurityContext>)> = Vec::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        all.push(("initContainers", i, c.security_context.as_ref()));
    }
    for (i, c) in spec.containers.iter().enumerate() {
        all.push(("containers", i, c.security_context.as_ref()));
    }
    for (i, c) in spec.ephemeral_containers.iter().flatten().enumerate() {
        all.push(("ephemeralContainers", i, c.security_context.as_ref()));
    }
    for (list, i, sc) in all {
        let field = format!("{list}[{i}].securityContext");
        if let Some(why) = sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .and_then(|p| seccomp_refusal(p, &format!("{field}.seccompProfile")))
        {
            return Some(why);
        }
        if sc
            .and_then(|s| s.app_armor_profile.as_ref())
            .is_some_and(|p| p.type_ == "Localhost")
        {
            return Some(format!(
                "{field}.appArmorProfile: Localhost profiles cannot be applied: this node has no AppArmor"
            ));
        }
        if sc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked") {
            return Some(format!(
                "{field}.procMount: Unmasked is not allowed: /proc stays masked in every container"
            ));
        }
    }
    sysctls(spec).err()
}

/// The pod's sysctls, for its containers' OCI spec: the safe ones only; any other is an error
/// naming it.
pub fn sysctls(spec: &PodSpec) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let listed = spec.security_context.as_ref().and_then(|s| s.sysctls.as_ref());
    for (i, s) in listed.into_iter().flatten().enumerate() {
        let name = s.name.replace('/', ".");
        if !SAFE_SYSCTLS.contains(&name.as_str()) {
            return Err(format!(
                "securityContext.sysctls[{i}].name: {:?} is not allowed: only the namespaced sysctls Kubernetes calls safe are ({})",
                s.name,
                SAFE_SYSCTLS.join(", ")
            ));
        }
        out.insert(name, s.value.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> PodSpec {
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn what_the_node_cannot_honour_is_refused_with_the_field() {
        let c = serde_json::json!([{"name": "c"}]);
        assert_eq!(unsupported(&pod(serde_json::json!({"containers": c}))), None);
        // A RuntimeClass is for control's admission (does it exist) and the node (does it have
        // the handler) to judge.
        assert_eq!(
            unsupported(&pod(
                serde_json::json!({"containers": c, "runtimeClassName": "microvm"})
            )),
            None
        );
        let cases = [
            (
                serde_json::json!({"containers": c, "securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
                "securityContext.seccompProfile.type",
            ),
            (
                serde_json::json!({"containers": [{"name": "c", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "x.json"}}}]}),
                "containers[0].securityContext.seccompProfile.type",
            ),
            (
                serde_json::json!({"containers": [{"name": "c", "securityContext": {"procMount": "Unmasked"}}]}),
                "containers[0].securityContext.procMount",
            ),
            (
                serde_json::json!({"containers": c, "securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}}}),
                "securityContext.appArmorProfile",
            ),
            (
                serde_json::json!({"containers": c, "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}),
                "securityContext.sysctls[0].name",
            ),
        ];
        for (spec, field) in cases {
            let why = unsupported(&pod(spec)).unwrap_or_default();
            assert!(why.starts_with(field), "{field}: {why}");
        }
        let ok = pod(
            serde_json::json!({"containers": [{"name": "c", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}],
            "securityContext": {"sysctls": [{"name": "net/ipv4/ip_unprivileged_port_start", "value": "0"}]}}),
        );
        assert_eq!(unsupported(&ok), None);
        assert_eq!(
            sysctls(&ok)
                .unwrap()
                .get("net.ipv4.ip_unprivileged_port_start")
                .map(String::as_str),
            Some("0")
        );
    }
}
