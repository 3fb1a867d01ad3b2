//! The node authorizer: what a host's own credentials (`system:node:<name>` in `system:nodes`)
//! may do, decided from what is bound to that node, as the apiserver's Node authorizer and RBAC's
//! `system:node` role decide it together. A node may:
//!
//! - read the cluster state every kubelet, service proxy and DNS server reads: nodes, pods,
//!   services, endpoints and slices, runtime classes, CSI drivers, storage classes, volume
//!   attachments, PrivateZones, namespaces;
//! - read a Secret, ConfigMap, PersistentVolumeClaim or PersistentVolume only while a pod bound
//!   to it uses it, and ask for a ServiceAccount token only for such a pod's ServiceAccount;
//! - write its own Node and Lease, the status of its own pods, delete its own pods, and write
//!   events and certificate signing requests.
//!
//! Anything else is left to RBAC, which grants nodes nothing by default. Creates carry their name
//! in the body; NodeRestriction admission (`crate::admission::node_restriction`) checks those.

use serde_json::Value;

use super::{Attributes, Decision};
use crate::store::Store;

/// The namespace of nodes' heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

const READ: &[&str] = &["get", "list", "watch"];

/// What every node may read: (group, resource).
const CLUSTER_STATE: &[(&str, &str)] = &[
    ("", "nodes"),
    ("", "pods"),
    ("", "services"),
    ("", "endpoints"),
    ("", "namespaces"),
    ("discovery.k8s.io", "endpointslices"),
    ("node.k8s.io", "runtimeclasses"),
    ("storage.k8s.io", "csidrivers"),
    ("storage.k8s.io", "csinodes"),
    ("storage.k8s.io", "storageclasses"),
    ("storage.k8s.io", "volumeattachments"),
    ("network.nodeless.io", "privatezones"),
];

fn allow(why: &str) -> Option<Decision> {
    Some(Decision {
        allowed: true,
        reason: format!("node authorizer: {why}"),
    })
}

/// Allowed for node `node`, or `None`: no opinion (RBAC decides).
pub fn authorize(store: &Store, node: &str, attrs: &Attributes) -> Option<Decision> {
    let Attributes::Resource {
        verb,
        group,
        resource,
        subresource,
        namespace,
        name,
    } = attrs
    else {
        return None;
    };
    let (verb, group, resource) = (verb.as_str(), group.as_str(), resource.as_str());
    let (sub, ns, name) = (subresource.as_deref(), namespace.as_deref(), name.as_deref());
    let reading = READ.contains(&verb);
    match (group, resource, sub) {
        ("", "nodes", None | Some("status")) if name == Some(node) => allow("its own Node"),
        // A create's name is in its body: NodeRestriction admission holds it to its own.
        ("", "nodes", None) if verb == "create" => allow("registering its Node"),
        ("coordination.k8s.io", "leases", None)
            if ns == Some(LEASE_NAMESPACE) && (name == Some(node) || verb == "create") =>
        {
            allow("its own Lease")
        }
        ("", "pods", Some("status")) if matches!(verb, "update" | "patch") => {
            bound_pod(store, node, ns?, name?).then(|| allow("the status of a pod bound to it"))?
        }
        ("", "pods", None) if verb == "delete" => {
            bound_pod(store, node, ns?, name?).then(|| allow("a pod bound to it"))?
        }
        ("", "events", None) | ("events.k8s.io", "events", None) if matches!(verb, "create" | "update" | "patch") => {
            allow("events")
        }
        ("certificates.k8s.io", "certificatesigningrequests", None)
            if matches!(verb, "create" | "get" | "list" | "watch") =>
        {
            allow("certificate signing requests")
        }
        ("", "serviceaccounts", Some("token")) if verb == "create" => used_by_pod(store, node, ns?, |refs| {
            refs.service_accounts.iter().any(|s| s == name.unwrap_or_default())
        })
        .then(|| allow("a token for the ServiceAccount of a pod bound to it"))?,
        ("", kind @ ("secrets" | "configmaps" | "persistentvolumeclaims"), None) if verb == "get" => {
            let want = name?;
            used_by_pod(store, node, ns?, |refs| {
                let list = match kind {
                    "secrets" => &refs.secrets,
                    "configmaps" => &refs.config_maps,
                    _ => &refs.claims,
                };
                list.iter().any(|n| n == want)
            })
            .then(|| allow("an object a pod bound to it uses"))?
        }
        ("", "persistentvolumes", None) if verb == "get" => {
            let pv = store.get(&format!("/core/persistentvolumes/{}", name?))?;
            let claim_ns = pv.obj.pointer("/spec/claimRef/namespace").and_then(Value::as_str)?;
            let claim = pv.obj.pointer("/spec/claimRef/name").and_then(Value::as_str)?;
            used_by_pod(store, node, claim_ns, |refs| refs.claims.iter().any(|c| c == claim))
                .then(|| allow("the volume of a claim a pod bound to it uses"))?
        }
        (g, r, None) if reading && CLUSTER_STATE.contains(&(g, r)) => allow("cluster state"),
        (g, r, Some("status")) if reading && CLUSTER_STATE.contains(&(g, r)) => allow("cluster state"),
        _ => None,
    }
}

fn bound_pod(store: &Store, node: &str, ns: &str, name: &str) -> bool {
    store
        .get(&format!("/core/pods/{ns}/{name}"))
        .is_some_and(|p| p.obj.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
}

/// Whether a pod bound to `node` in `ns` uses what `wanted` looks for.
fn used_by_pod(store: &Store, node: &str, ns: &str, wanted: impl Fn(&Refs) -> bool) -> bool {
    let (pods, _, _) = store.list(&format!("/core/pods/{ns}/"), None, 0, &|p| {
        p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
    });
    pods.iter().any(|p| wanted(&Refs::of(&p.obj)))
}

/// What a pod refers to by name in its namespace.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refs {
    pub secrets: Vec<String>,
    pub config_maps: Vec<String>,
    pub claims: Vec<String>,
    pub service_accounts: Vec<String>,
}

impl Refs {
    pub fn of(pod: &Value) -> Refs {
        let mut refs = Refs::default();
        let spec = pod.get("spec").cloned().unwrap_or(Value::Null);
        refs.walk(&spec);
        refs.service_accounts.push(
            spec.get("serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string(),
        );
        // A generic ephemeral volume's claim is named after the pod and the volume.
        let pod_name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for v in spec.get("volumes").and_then(Value::as_array).into_iter().flatten() {
            if v.get("ephemeral").is_some() {
                let vol = v.get("name").and_then(Value::as_str).unwrap_or_default();
                refs.claims.push(format!("{pod_name}-{vol}"));
            }
        }
        refs
    }

    fn walk(&mut self, v: &Value) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let named = || child.get("name").and_then(Value::as_str).map(str::to_string);
                    match k.as_str() {
                        "secretName" => self.secrets.extend(child.as_str().map(str::to_string)),
                        "secret"
                        | "secretRef"
                        | "secretKeyRef"
                        | "nodePublishSecretRef"
                        | "nodeStageSecretRef"
                        | "nodeExpandSecretRef"
                        | "controllerPublishSecretRef" => self.secrets.extend(named()),
                        "imagePullSecrets" => self.secrets.extend(
                            child
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_string)),
                        ),
                        "configMap" | "configMapRef" | "configMapKeyRef" => self.config_maps.extend(named()),
                        "claimName" => self.claims.extend(child.as_str().map(str::to_string)),
                        _ => {}
                    }
                    self.walk(child);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| self.walk(i)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::Write;

    #[test]
    fn a_pod_names_what_it_uses() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "serviceAccountName": "builder",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "configMap": {"name": "vol-cm"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "d", "projected": {"sources": [{"secret": {"name": "proj-secret"}}, {"configMap": {"name": "kube-root-ca.crt"}}]}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "e", "csi": {"driver": "x", "nodePublishSecretRef": {"name": "csi-secret"}}},
            ],
            "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "env-secret"}}, {"configMapRef": {"name": "env-cm"}}],
                             "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "key-secret", "key": "k"}}}]}],
        }});
        let r = Refs::of(&pod);
        for s in [
            "pull",
            "vol-secret",
            "proj-secret",
            "csi-secret",
            "env-secret",
            "key-secret",
        ] {
            assert!(r.secrets.iter().any(|x| x == s), "{s} in {:?}", r.secrets);
        }
        for c in ["vol-cm", "kube-root-ca.crt", "env-cm"] {
            assert!(r.config_maps.iter().any(|x| x == c), "{c} in {:?}", r.config_maps);
        }
        assert_eq!(r.claims, ["data", "p-scratch"]);
        assert_eq!(r.service_accounts, ["builder"]);
    }

    #[tokio::test]
    async fn a_node_touches_only_what_is_bound_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        for (name, node, secret) in [("mine", "a", "s-mine"), ("theirs", "b", "s-theirs")] {
            let pod = json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"nodeName": node,
                "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": secret}}]}]}});
            store
                .write(Write::Create {
                    key: format!("/core/pods/ns/{name}"),
                    obj: pod,
                })
                .await
                .unwrap();
        }
        let ok = |a: Attributes| authorize(&store, "a", &a).is_some_and(|d| d.allowed);
        assert!(ok(Attributes::resource(
            "patch",
            "",
            "nodes",
            Some("status"),
            None,
            Some("a")
        )));
        assert!(!ok(Attributes::resource(
            "patch",
            "",
            "nodes",
            Some("status"),
            None,
            Some("b")
        )));
        assert!(!ok(Attributes::resource("delete", "", "nodes", None, None, Some("b"))));
        assert!(ok(Attributes::resource(
            "update",
            "coordination.k8s.io",
            "leases",
            None,
            Some(LEASE_NAMESPACE),
            Some("a")
        )));
        assert!(!ok(Attributes::resource(
            "update",
            "coordination.k8s.io",
            "leases",
            None,
            Some(LEASE_NAMESPACE),
            Some("b")
        )));
        assert!(!ok(Attributes::resource(
            "update",
            "coordination.k8s.io",
            "leases",
            None,
            Some("kube-system"),
            Some("a")
        )));
        assert!(ok(Attributes::resource(
            "patch",
            "",
            "pods",
            Some("status"),
            Some("ns"),
            Some("mine")
        )));
        assert!(!ok(Attributes::resource(
            "patch",
            "",
            "pods",
            Some("status"),
            Some("ns"),
            Some("theirs")
        )));
        assert!(
            !ok(Attributes::resource(
                "patch",
                "",
                "pods",
                None,
                Some("ns"),
                Some("mine")
            )),
            "only the status"
        );
        assert!(ok(Attributes::resource(
            "delete",
            "",
            "pods",
            None,
            Some("ns"),
            Some("mine")
        )));
        assert!(!ok(Attributes::resource(
            "delete",
            "",
            "pods",
            None,
            Some("ns"),
            Some("theirs")
        )));
        assert!(ok(Attributes::resource(
            "get",
            "",
            "secrets",
            None,
            Some("ns"),
            Some("s-mine")
        )));
        assert!(!ok(Attributes::resource(
            "get",
            "",
            "secrets",
            None,
            Some("ns"),
            Some("s-theirs")
        )));
        assert!(!ok(Attributes::resource("list", "", "secrets", None, Some("ns"), None)));
        assert!(ok(Attributes::resource(
            "create",
            "",
            "serviceaccounts",
            Some("token"),
            Some("ns"),
            Some("default")
        )));
        assert!(!ok(Attributes::resource(
            "create",
            "",
            "serviceaccounts",
            Some("token"),
            Some("other"),
            Some("default")
        )));
        assert!(ok(Attributes::resource("watch", "", "pods", None, None, None)));
        assert!(ok(Attributes::resource(
            "list",
            "discovery.k8s.io",
            "endpointslices",
            None,
            None,
            None
        )));
        assert!(!ok(Attributes::resource("create", "", "pods", None, Some("ns"), None)));
        assert!(!ok(Attributes::resource(
            "update",
            "",
            "services",
            None,
            Some("ns"),
            Some("x")
        )));
        assert!(!ok(Attributes::resource(
            "list",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            None,
            None
        )));
    }
}
