//! NodeRestriction: a node's credentials write only what is its own, checked on the object (the
//! node authorizer, `crate::rbac::node`, decides on the request; a create's name is only here).
//! A node may create or change only its own Node and its own Lease in `kube-node-lease`, may not
//! set labels under `node-restriction.kubernetes.io/` (an administrator's, to place workloads
//! on trusted hosts), may change only pods bound to it and may create none.

use serde_json::Value;

use crate::rbac::node::LEASE_NAMESPACE;

/// Labels only an administrator sets on Nodes.
const RESTRICTED_LABELS: &str = "node-restriction.kubernetes.io/";

fn restricted_labels(obj: Option<&Value>) -> Vec<(String, Value)> {
    obj.and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| {
            k.starts_with(RESTRICTED_LABELS)
                || k.split_once('/')
                    .is_some_and(|(p, _)| p.ends_with(".node-restriction.kubernetes.io"))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Why node `node` may not write `obj` (over `old`), if it may not.
pub fn check(node: &str, group: &str, kind: &str, obj: &Value, old: Option<&Value>) -> Option<String> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let namespace = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match (group, kind) {
        ("", "Node") => {
            if name != node {
                return Some(format!("node \"{node}\" is not allowed to modify node \"{name}\""));
            }
            if restricted_labels(Some(obj)) != restricted_labels(old) {
                return Some(format!(
                    "node \"{node}\" is not allowed to modify labels with the prefix {RESTRICTED_LABELS}"
                ));
            }
            None
        }
        ("coordination.k8s.io", "Lease") if namespace == LEASE_NAMESPACE && name != node => Some(format!(
            "node \"{node}\" is not allowed to modify the lease \"{name}\" of another node"
        )),
        ("", "Pod") => match old {
            None => Some(format!("node \"{node}\" may not create pods")),
            Some(old) if old.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) => Some(format!(
                "node \"{node}\" may not change pod \"{namespace}/{name}\": it is not bound to it"
            )),
            Some(_) => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_node_writes_only_its_own() {
        let node = |name: &str, labels: Value| json!({"metadata": {"name": name, "labels": labels}});
        assert_eq!(check("a", "", "Node", &node("a", json!({"x": "1"})), None), None);
        assert!(check("a", "", "Node", &node("b", json!({})), None).is_some());
        let fenced = node("a", json!({"node-restriction.kubernetes.io/trusted": "yes"}));
        assert!(
            check("a", "", "Node", &fenced, None).is_some(),
            "a node cannot vouch for itself"
        );
        assert_eq!(
            check("a", "", "Node", &fenced, Some(&fenced)),
            None,
            "what the admin set stays"
        );
        assert!(
            check("a", "", "Node", &node("a", json!({})), Some(&fenced)).is_some(),
            "nor remove it"
        );
        let lease = |name: &str| json!({"metadata": {"name": name, "namespace": LEASE_NAMESPACE}});
        assert_eq!(check("a", "coordination.k8s.io", "Lease", &lease("a"), None), None);
        assert!(check("a", "coordination.k8s.io", "Lease", &lease("b"), None).is_some());
        let pod = |node: &str| json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": node}});
        assert!(
            check("a", "", "Pod", &pod("a"), None).is_some(),
            "no pods made by nodes"
        );
        assert_eq!(check("a", "", "Pod", &pod("a"), Some(&pod("a"))), None);
        assert!(check("a", "", "Pod", &pod("a"), Some(&pod("b"))).is_some());
    }
}
