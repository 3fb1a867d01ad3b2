//! How the lists of the built-in types merge, from their `patchStrategy`/`patchMergeKey` tags
//! in k8s.io/api. Lists not named here are replaced whole (atomic).

/// How a list field merges in a strategic merge patch and in server-side apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// Elements are objects matched by this key.
    Merge(&'static str),
    /// Elements are primitives merged as a set.
    Set,
    /// The patch replaces the list.
    Replace,
}

const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// Where the pod spec sits in each kind that carries one.
fn pod_spec_root(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &["spec"],
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "Job" | "ReplicationController" => {
            &["spec", "template", "spec"]
        }
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        _ => &[],
    }
}

fn pod_spec_list(rel: &[&str]) -> Option<ListStrategy> {
    Some(match rel {
        [c] if CONTAINER_LISTS.contains(c) => ListStrategy::Merge("name"),
        [c, "ports"] if CONTAINER_LISTS.contains(c) => ListStrategy::Merge("containerPort"),
        [c, "env"] if CONTAINER_LISTS.contains(c) => ListStrategy::Merge("name"),
        [c, "volumeMounts"] if CONTAINER_LISTS.contains(c) => ListStrategy::Merge("mountPath"),
        [c, "volumeDevices"] if CONTAINER_LISTS.contains(c) => ListStrategy::Merge("devicePath"),
        ["volumes"] => ListStrategy::Merge("name"),
        ["imagePullSecrets"] => ListStrategy::Merge("name"),
        ["hostAliases"] => ListStrategy::Merge("ip"),
        ["topologySpreadConstraints"] => ListStrategy::Merge("topologyKey"),
        ["resourceClaims"] => ListStrategy::Merge("name"),
        ["schedulingGates"] => ListStrategy::Merge("name"),
        _ => return None,
    })
}

/// The strategy of the list at `path` (field names from the object root, no indices) in `kind`.
/// An empty kind means a custom resource or a view such as Scale: every list is atomic.
pub fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    if kind.is_empty() {
        return ListStrategy::Replace;
    }
    match path {
        ["metadata", "finalizers"] => return ListStrategy::Set,
        ["metadata", "ownerReferences"] => return ListStrategy::Merge("uid"),
        ["status", "conditions"]
            if matches!(
                kind,
                "Pod" | "Node" | "Deployment" | "ReplicaSet" | "Namespace" | "DaemonSet"
            ) =>
        {
            return ListStrategy::Merge("type");
        }
        ["status", "addresses"] if kind == "Node" => return ListStrategy::Merge("type"),
        ["spec", "ports"] if kind == "Service" => return ListStrategy::Merge("port"),
        _ => {}
    }
    let root = pod_spec_root(kind);
    if !root.is_empty() && path.len() > root.len() && path[..root.len()] == *root {
        if let Some(s) = pod_spec_list(&path[root.len()..]) {
            return s;
        }
    }
    ListStrategy::Replace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_merge_keys() {
        assert_eq!(
            list_strategy("Deployment", &["spec", "template", "spec", "containers"]),
            ListStrategy::Merge("name")
        );
        assert_eq!(
            list_strategy("Pod", &["spec", "containers", "env"]),
            ListStrategy::Merge("name")
        );
        assert_eq!(
            list_strategy("Pod", &["spec", "initContainers", "ports"]),
            ListStrategy::Merge("containerPort")
        );
        assert_eq!(
            list_strategy("Service", &["spec", "ports"]),
            ListStrategy::Merge("port")
        );
        assert_eq!(list_strategy("Pod", &["spec", "tolerations"]), ListStrategy::Replace);
        assert_eq!(
            list_strategy("ConfigMap", &["metadata", "finalizers"]),
            ListStrategy::Set
        );
        assert_eq!(list_strategy("", &["spec", "containers"]), ListStrategy::Replace);
    }
}
