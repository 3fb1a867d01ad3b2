//! The API resources Nodeless serves, as discovery documents describe them.

use serde::{Deserialize, Serialize};

/// Whether objects of a resource live in a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// How a resource's objects come to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Storage {
    /// Written by clients, kept in the store: every verb.
    Stored,
    /// A question answered when it is created, never kept (SelfSubjectAccessReview,
    /// TokenReview…): `create` only.
    Review,
    /// Measured when read, never written (PodMetrics, NodeMetrics): `get` and `list` only.
    Computed,
}

impl Storage {
    /// The verbs a resource of this storage serves, as discovery lists them.
    pub const fn verbs(self) -> &'static [&'static str] {
        match self {
            Storage::Stored => &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            Storage::Review => &["create"],
            Storage::Computed => &["get", "list"],
        }
    }
}

/// One served resource (one plural name in one group/version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDef {
    /// API group; "" for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub scope: Scope,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources served under `<object>/<name>` (e.g. "status", "scale", "log").
    pub subresources: Vec<String>,
    /// Whether objects are stored, or answered without being stored.
    pub storage: Storage,
}

impl ResourceDef {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `Deployment.apps`, or `Pod` for the core group: how the apiserver names a kind in messages.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// `deployments.apps`, or `pods`: how the apiserver names a resource in messages.
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn namespaced(&self) -> bool {
        self.scope == Scope::Namespaced
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.iter().any(|s| s == sub)
    }
}

struct Row {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    scope: Scope,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
    storage: Storage,
    version: &'static str,
}

const ROWS: &[Row] = &[
    row(
        "",
        "Namespace",
        "namespaces",
        Scope::Cluster,
        &["ns"],
        &[],
        &["status", "finalize"],
    ),
    row(
        "",
        "Pod",
        "pods",
        Scope::Namespaced,
        &["po"],
        &["all"],
        &[
            "status",
            "ephemeralcontainers",
            "log",
            "exec",
            "attach",
            "portforward",
            "binding",
            "eviction",
        ],
    ),
    row(
        "",
        "Service",
        "services",
        Scope::Namespaced,
        &["svc"],
        &["all"],
        &["status"],
    ),
    row("", "Endpoints", "endpoints", Scope::Namespaced, &["ep"], &[], &[]),
    row("", "ConfigMap", "configmaps", Scope::Namespaced, &["cm"], &[], &[]),
    row(
        "",
        "LimitRange",
        "limitranges",
        Scope::Namespaced,
        &["limits"],
        &[],
        &[],
    ),
    row(
        "",
        "ReplicationController",
        "replicationcontrollers",
        Scope::Namespaced,
        &["rc"],
        &["all"],
        &["status", "scale"],
    ),
    row("", "Secret", "secrets", Scope::Namespaced, &[], &[], &[]),
    row(
        "",
        "ResourceQuota",
        "resourcequotas",
        Scope::Namespaced,
        &["quota"],
        &[],
        &["status"],
    ),
    row("", "Node", "nodes", Scope::Cluster, &["no"], &[], &["status"]),
    row(
        "",
        "PersistentVolume",
        "persistentvolumes",
        Scope::Cluster,
        &["pv"],
        &[],
        &["status"],
    ),
    row(
        "",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        Scope::Namespaced,
        &["pvc"],
        &[],
        &["status"],
    ),
    row("", "Event", "events", Scope::Namespaced, &["ev"], &[], &[]),
    row(
        "",
        "ServiceAccount",
        "serviceaccounts",
        Scope::Namespaced,
        &["sa"],
        &[],
        &["token"],
    ),
    row(
        "apps",
        "Deployment",
        "deployments",
        Scope::Namespaced,
        &["deploy"],
        &["all"],
        &["status", "scale"],
    ),
    row(
        "apps",
        "ReplicaSet",
        "replicasets",
        Scope::Namespaced,
        &["rs"],
        &["all"],
        &["status", "scale"],
    ),
    row(
        "apps",
        "StatefulSet",
        "statefulsets",
        Scope::Namespaced,
        &["sts"],
        &["all"],
        &["status", "scale"],
    ),
    row(
        "apps",
        "ControllerRevision",
        "controllerrevisions",
        Scope::Namespaced,
        &[],
        &[],
        &[],
    ),
    row("batch", "Job", "jobs", Scope::Namespaced, &[], &["all"], &["status"]),
    row(
        "policy",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        Scope::Namespaced,
        &["pdb"],
        &[],
        &["status"],
    ),
    Row {
        group: "autoscaling",
        kind: "HorizontalPodAutoscaler",
        plural: "horizontalpodautoscalers",
        scope: Scope::Namespaced,
        short: &["hpa"],
        categories: &["all"],
        subresources: &["status"],
        storage: Storage::Stored,
        version: "v2",
    },
    row(
        "batch",
        "CronJob",
        "cronjobs",
        Scope::Namespaced,
        &["cj"],
        &["all"],
        &["status"],
    ),
    // Served so kubectl knows the kind; admission refuses every DaemonSet with the reason.
    row(
        "apps",
        "DaemonSet",
        "daemonsets",
        Scope::Namespaced,
        &["ds"],
        &[],
        &["status"],
    ),
    row(
        "networking.k8s.io",
        "Ingress",
        "ingresses",
        Scope::Namespaced,
        &["ing"],
        &[],
        &["status"],
    ),
    row(
        "networking.k8s.io",
        "IngressClass",
        "ingressclasses",
        Scope::Cluster,
        &[],
        &[],
        &[],
    ),
    row(
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
        Scope::Namespaced,
        &[],
        &[],
        &[],
    ),
    row(
        "certificates.k8s.io",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        Scope::Cluster,
        &["csr"],
        &[],
        &["status", "approval"],
    ),
    row(
        "coordination.k8s.io",
        "Lease",
        "leases",
        Scope::Namespaced,
        &[],
        &[],
        &[],
    ),
    row(
        STORAGE,
        "StorageClass",
        "storageclasses",
        Scope::Cluster,
        &["sc"],
        &[],
        &[],
    ),
    row(STORAGE, "CSIDriver", "csidrivers", Scope::Cluster, &[], &[], &[]),
    row(
        "node.k8s.io",
        "RuntimeClass",
        "runtimeclasses",
        Scope::Cluster,
        &[],
        &[],
        &[],
    ),
    row(STORAGE, "CSINode", "csinodes", Scope::Cluster, &[], &[], &[]),
    row(
        STORAGE,
        "VolumeAttachment",
        "volumeattachments",
        Scope::Cluster,
        &[],
        &[],
        &["status"],
    ),
    row(RBAC, "ClusterRole", "clusterroles", Scope::Cluster, &[], &[], &[]),
    row(
        RBAC,
        "ClusterRoleBinding",
        "clusterrolebindings",
        Scope::Cluster,
        &[],
        &[],
        &[],
    ),
    row(RBAC, "Role", "roles", Scope::Namespaced, &[], &[], &[]),
    row(RBAC, "RoleBinding", "rolebindings", Scope::Namespaced, &[], &[], &[]),
    review(
        AUTHZ,
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        Scope::Cluster,
    ),
    review(
        AUTHZ,
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        Scope::Cluster,
    ),
    review(AUTHZ, "SubjectAccessReview", "subjectaccessreviews", Scope::Cluster),
    review(
        AUTHZ,
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        Scope::Namespaced,
    ),
    review(AUTHN, "TokenReview", "tokenreviews", Scope::Cluster),
    review(AUTHN, "SelfSubjectReview", "selfsubjectreviews", Scope::Cluster),
    measured("PodMetrics", "pods", Scope::Namespaced),
    measured("NodeMetrics", "nodes", Scope::Cluster),
    row(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        Scope::Cluster,
        &["crd", "crds"],
        &[],
        &["status"],
    ),
];

const RBAC: &str = "rbac.authorization.k8s.io";
const STORAGE: &str = "storage.k8s.io";
const AUTHZ: &str = "authorization.k8s.io";
const AUTHN: &str = "authentication.k8s.io";

/// A resource whose objects are never stored: answered (reviews) or measured (metrics).
const fn unstored(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    scope: Scope,
    storage: Storage,
) -> Row {
    Row {
        group,
        kind,
        plural,
        scope,
        short: &[],
        categories: &[],
        subresources: &[],
        storage,
        version,
    }
}

const fn review(group: &'static str, kind: &'static str, plural: &'static str, scope: Scope) -> Row {
    unstored(group, "v1", kind, plural, scope, Storage::Review)
}

const fn measured(kind: &'static str, plural: &'static str, scope: Scope) -> Row {
    unstored("metrics.k8s.io", "v1beta1", kind, plural, scope, Storage::Computed)
}

const fn row(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    scope: Scope,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
) -> Row {
    Row {
        group,
        kind,
        plural,
        scope,
        short,
        categories,
        subresources,
        storage: Storage::Stored,
        version: "v1",
    }
}

/// Marker for the built-in catalogue; call [`builtin`] to get the definitions.
pub const BUILTIN: usize = ROWS.len();

/// Every built-in resource, in discovery order.
pub fn builtin() -> Vec<ResourceDef> {
    ROWS.iter()
        .map(|r| ResourceDef {
            group: r.group.to_string(),
            version: r.version.to_string(),
            kind: r.kind.to_string(),
            list_kind: format!("{}List", r.kind),
            plural: r.plural.to_string(),
            singular: r.kind.to_ascii_lowercase(),
            scope: r.scope,
            short_names: r.short.iter().map(|s| s.to_string()).collect(),
            categories: r.categories.iter().map(|s| s.to_string()).collect(),
            subresources: r.subresources.iter().map(|s| s.to_string()).collect(),
            storage: r.storage,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_are_unique_per_group() {
        let defs = builtin();
        for (i, a) in defs.iter().enumerate() {
            for b in &defs[i + 1..] {
                assert!(!(a.group == b.group && a.plural == b.plural), "{} twice", a.plural);
            }
        }
        assert_eq!(defs.len(), BUILTIN);
    }

    #[test]
    fn names_read_like_the_apiserver() {
        let defs = builtin();
        let deploy = defs.iter().find(|d| d.kind == "Deployment").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.qualified_kind(), "Deployment.apps");
        assert_eq!(deploy.qualified_resource(), "deployments.apps");
        let pod = defs.iter().find(|d| d.kind == "Pod").unwrap();
        assert_eq!(pod.api_version(), "v1");
        assert_eq!(pod.qualified_resource(), "pods");
        assert!(pod.has_subresource("log"));
    }
}
