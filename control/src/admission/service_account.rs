//! The ServiceAccount admission step: a pod that does not opt out (`automountServiceAccountToken:
//! false` on the pod, or on its ServiceAccount) gets the `kube-api-access-<id>` volume kubelet
//! fills (a token bound to the pod, the cluster CA, the namespace), mounted read-only at
//! `/var/run/secrets/kubernetes.io/serviceaccount` in every container, as on Kubernetes, so
//! in-cluster clients find their credentials where they look.

use serde_json::{Value, json};

pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap every namespace holds with the cluster CA (`ca.crt`).
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The lifetime the admission asks for; a token asked for with it and bound to a pod is issued
/// for longer (see `reviews`), as the apiserver's `--service-account-extend-token-expiration`.
pub const DEFAULT_TOKEN_SECONDS: i64 = 3607;

/// Letters Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
const SUFFIX: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn suffix() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..5).map(|_| SUFFIX[rng.gen_range(0..SUFFIX.len())] as char).collect()
}

/// Add the token volume and its mounts to a new pod's spec, unless it opted out or already
/// mounts something at the path. `sa_automount` is the ServiceAccount's setting, if it has one.
pub fn mount_token(pod: &mut Value, sa_automount: Option<bool>) {
    let Some(spec) = pod.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    let wanted = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or(sa_automount)
        .unwrap_or(true);
    if !wanted {
        return;
    }
    let has_volume = |spec: &Value| {
        spec.get("volumes").and_then(Value::as_array).is_some_and(|vs| {
            vs.iter().any(|v| {
                v.pointer("/name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.starts_with("kube-api-access-"))
            })
        })
    };
    if has_volume(spec) {
        return;
    }
    let name = format!("kube-api-access-{}", suffix());
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            let mounts = c.get("volumeMounts").and_then(Value::as_array);
            if mounts.is_some_and(|m| {
                m.iter()
                    .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH))
            }) {
                continue;
            }
            if !c.get("volumeMounts").is_some_and(Value::is_array) {
                c["volumeMounts"] = json!([]);
            }
            if let Some(m) = c["volumeMounts"].as_array_mut() {
                m.push(json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH}));
                mounted = true;
            }
        }
    }
    if !mounted {
        return;
    }
    if !spec.get("volumes").is_some_and(Value::is_array) {
        spec["volumes"] = json!([]);
    }
    if let Some(vs) = spec["volumes"].as_array_mut() {
        vs.push(json!({
            "name": name,
            "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": DEFAULT_TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]},
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn every_container_gets_the_token_unless_the_pod_or_its_account_says_no() {
        let mut p = pod(json!({"initContainers": [{"name": "i"}], "containers": [{"name": "a"},
            {"name": "b", "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]}]}));
        mount_token(&mut p, None);
        let vol = p["spec"]["volumes"][0].clone();
        let name = vol["name"].as_str().unwrap().to_string();
        assert!(name.starts_with("kube-api-access-") && name.len() == "kube-api-access-".len() + 5);
        assert_eq!(vol["projected"]["sources"][0]["serviceAccountToken"]["path"], "token");
        assert_eq!(p["spec"]["initContainers"][0]["volumeMounts"][0]["name"], json!(name));
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"][0]["readOnly"], true);
        // A container that mounts its own there keeps it.
        assert_eq!(p["spec"]["containers"][1]["volumeMounts"].as_array().unwrap().len(), 1);
        // Once is enough (an update, a second admission).
        let before = p.clone();
        mount_token(&mut p, None);
        assert_eq!(p, before);

        let mut off = pod(json!({"automountServiceAccountToken": false, "containers": [{"name": "a"}]}));
        mount_token(&mut off, Some(true));
        assert!(off["spec"].get("volumes").is_none());
        let mut by_account = pod(json!({"containers": [{"name": "a"}]}));
        mount_token(&mut by_account, Some(false));
        assert!(by_account["spec"].get("volumes").is_none());
        // The pod's own choice beats its account's.
        let mut pod_says_yes = pod(json!({"automountServiceAccountToken": true, "containers": [{"name": "a"}]}));
        mount_token(&mut pod_says_yes, Some(false));
        assert!(pod_says_yes["spec"]["volumes"].is_array());
    }
}
