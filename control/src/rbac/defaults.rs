//! The roles and bindings every cluster starts with: Kubernetes' user-facing roles (`cluster-admin`,
//! and `admin`, `edit`, `view` aggregated from the `system:aggregate-to-*` roles), the discovery
//! roles every signed-in user has, Knative's namespaced roles, and Nodeless's own two subjects:
//! the admin token's user is in `system:masters`; the read-only token's user is bound to
//! `nodeless:cluster-viewer` (`view` plus reading the cluster-scoped kinds and `/metrics`).
//!
//! Like the apiserver, control puts them back at every start when they are missing, and resets
//! those still annotated `rbac.authorization.kubernetes.io/autoupdate: "true"`; an administrator
//! who wants to change one sets that annotation to `"false"` first.

use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::auth::{AUTHENTICATED, SUPERUSERS, VIEWER_USER};

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const GROUP: &str = "rbac.authorization.k8s.io";
const AGGREGATE_TO: &str = "rbac.authorization.k8s.io/aggregate-to-";
const TO_CLUSTER_VIEWER: &str = "nodeless.io/aggregate-to-cluster-viewer";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
/// Every verb of a stored resource.
const ALL: &[&str] = nodeless_types::catalogue::Storage::Stored.verbs();

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(paths: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": paths, "verbs": verbs})
}

fn meta(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for (k, v) in labels {
        l.insert((*k).into(), json!(v));
    }
    json!({"name": name, "labels": l, "annotations": {AUTOUPDATE: "true"}})
}

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({"apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRole", "metadata": meta(name, labels), "rules": rules})
}

/// A role made of every role labelled `<label>: "true"`.
fn aggregated(name: &str, labels: &[(&str, &str)], selectors: &[&str]) -> Value {
    let selectors: Vec<Value> = selectors.iter().map(|l| json!({"matchLabels": {*l: "true"}})).collect();
    json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRole", "metadata": meta(name, labels),
        "aggregationRule": {"clusterRoleSelectors": selectors}, "rules": [],
    })
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, who)| json!({"apiGroup": GROUP, "kind": kind, "name": who}))
        .collect();
    json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRoleBinding", "metadata": meta(name, &[]),
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role}, "subjects": subjects,
    })
}

fn to(role: &str) -> String {
    format!("{AGGREGATE_TO}{role}")
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let (to_admin, to_edit, to_view) = (to("admin"), to("edit"), to("view"));
    let knative = ["serving.knative.dev"];
    vec![
        role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated("admin", &[], &[&to_admin]),
        aggregated("edit", &[(&to_admin, "true")], &[&to_edit]),
        aggregated("view", &[(&to_edit, "true")], &[&to_view]),
        role(
            "system:aggregate-to-admin",
            &[(&to_admin, "true")],
            vec![
                rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
                rule(&[GROUP], &["rolebindings", "roles"], ALL),
            ],
        ),
        role(
            "system:aggregate-to-edit",
            &[(&to_edit, "true")],
            vec![
                rule(
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                    READ,
                ),
                rule(&[""], &["serviceaccounts"], &["impersonate"]),
                rule(
                    &[""],
                    &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"],
                    WRITE,
                ),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                    WRITE,
                ),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                    WRITE,
                ),
                rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
                rule(&["batch"], &["cronjobs", "jobs"], WRITE),
                rule(&["policy"], &["poddisruptionbudgets"], WRITE),
                rule(&["networking.k8s.io"], &["ingresses", "networkpolicies"], WRITE),
                rule(&["coordination.k8s.io"], &["leases"], ALL),
            ],
        ),
        role(
            "system:aggregate-to-view",
            &[(&to_view, "true")],
            vec![
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                    READ,
                ),
                rule(
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                    READ,
                ),
                rule(&[""], &["namespaces"], READ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                    READ,
                ),
                rule(
                    &["autoscaling"],
                    &["horizontalpodautoscalers", "horizontalpodautoscalers/status"],
                    READ,
                ),
                rule(
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                    READ,
                ),
                rule(
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                    READ,
                ),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                    READ,
                ),
            ],
        ),
        // Knative's namespaced roles, as Knative Serving's release ships them.
        role(
            "knative-serving-namespaced-admin",
            &[(&to_admin, "true")],
            vec![rule(&knative, &["*"], &["*"])],
        ),
        role(
            "knative-serving-namespaced-edit",
            &[(&to_edit, "true")],
            vec![rule(&knative, &["*"], &["create", "update", "patch", "delete"])],
        ),
        role(
            "knative-serving-namespaced-view",
            &[(&to_view, "true")],
            vec![rule(&knative, &["*"], READ)],
        ),
        // What metrics-server's release adds, so `view` may run `kubectl top`.
        role(
            "system:aggregated-metrics-reader",
            &[(&to_view, "true"), (&to_edit, "true"), (&to_admin, "true")],
            vec![rule(&["metrics.k8s.io"], &["pods", "nodes"], READ)],
        ),
        role(
            "system:discovery",
            &[],
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
        role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(
                &["/.well-known/openid-configuration", "/openid/v1/jwks"],
                &["get"],
            )],
        ),
        role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
            ],
        ),
        role(
            "system:monitoring",
            &[],
            vec![urls(
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
                &["get"],
            )],
        ),
        role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
            ],
        ),
        // A joining host: its bootstrap token may ask for a node's client certificate and
        // watch for it; the request is approved on its own (`nodeclient`), as is a node's
        // request to renew its own (`selfnodeclient`).
        role(
            "system:node-bootstrapper",
            &[],
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
                &["create", "get", "list", "watch"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[],
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
                &["create"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[],
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
                &["create"],
            )],
        ),
        aggregated("nodeless:cluster-viewer", &[], &[&to_view, TO_CLUSTER_VIEWER]),
        role(
            "nodeless:aggregate-to-cluster-viewer",
            &[(TO_CLUSTER_VIEWER, "true")],
            vec![
                rule(&[""], &["nodes", "nodes/status", "namespaces"], READ),
                rule(&["apiextensions.k8s.io"], &["customresourcedefinitions"], READ),
                rule(&["networking.k8s.io"], &["ingressclasses"], READ),
                rule(
                    &[GROUP],
                    &["clusterroles", "clusterrolebindings", "roles", "rolebindings"],
                    READ,
                ),
                urls(&["/metrics"], &["get"]),
            ],
        ),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", &[("Group", SUPERUSERS)]),
        binding("system:discovery", "system:discovery", &[("Group", AUTHENTICATED)]),
        binding("system:basic-user", "system:basic-user", &[("Group", AUTHENTICATED)]),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            &[("Group", "system:serviceaccounts")],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[("Group", AUTHENTICATED), ("Group", "system:unauthenticated")],
        ),
        binding(
            "system:monitoring",
            "system:monitoring",
            &[("Group", "system:monitoring")],
        ),
        binding("nodeless:viewer", "nodeless:cluster-viewer", &[("User", VIEWER_USER)]),
        binding(
            "nodeless:node-bootstrapper",
            "system:node-bootstrapper",
            &[("Group", crate::auth::bootstrap::BOOTSTRAPPERS)],
        ),
        binding(
            "nodeless:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[("Group", crate::auth::bootstrap::BOOTSTRAPPERS)],
        ),
        binding(
            "nodeless:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[("Group", crate::auth::NODES)],
        ),
    ]
}

/// Create what is missing and reset what is still marked for automatic update.
pub async fn install(client: &LocalClient) -> Result<(), ApiError> {
    for (plural, objects) in [
        ("clusterroles", cluster_roles()),
        ("clusterrolebindings", cluster_role_bindings()),
    ] {
        let served = client.served(GROUP, plural);
        for obj in objects {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match client.get(&served, None, name) {
                None => {
                    client.create(&served, None, obj.clone()).await?;
                }
                Some(current) => {
                    let auto = current
                        .obj
                        .pointer(&format!("/metadata/annotations/{}", AUTOUPDATE.replace('/', "~1")))
                        .and_then(Value::as_str);
                    if auto != Some("true") {
                        continue;
                    }
                    let mut want = (*current.obj).clone();
                    for field in ["rules", "aggregationRule", "roleRef", "subjects"] {
                        match obj.get(field) {
                            // An aggregated role's rules are the aggregator's to fill in.
                            Some(_) if field == "rules" && obj.get("aggregationRule").is_some() => {}
                            Some(v) => want[field] = v.clone(),
                            None => {
                                if let Some(m) = want.as_object_mut() {
                                    m.remove(field);
                                }
                            }
                        }
                    }
                    want["metadata"]["labels"] = obj["metadata"]["labels"].clone();
                    if want != *current.obj {
                        client.update(&served, &current, want).await?;
                    }
                }
            }
        }
    }
    crate::controllers::aggregate_cluster_roles(client).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_binding_names_a_default_role() {
        let roles = cluster_roles();
        let names: Vec<&str> = roles
            .iter()
            .filter_map(|r| r.pointer("/metadata/name")?.as_str())
            .collect();
        for b in cluster_role_bindings() {
            let role = b.pointer("/roleRef/name").and_then(Value::as_str).unwrap();
            assert!(names.contains(&role), "{role}");
        }
        // Every rule reads as Kubernetes' PolicyRule.
        for r in &roles {
            let rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule> =
                serde_json::from_value(r["rules"].clone()).unwrap();
            assert!(r.get("aggregationRule").is_some() || !rules.is_empty(), "{r}");
        }
    }
}
