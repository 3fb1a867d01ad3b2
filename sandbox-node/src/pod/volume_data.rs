//! What the node writes into a configMap, secret, downwardAPI or projected volume: the files
//! with their paths and modes, assembled as kubelet does (`items` choose and rename keys, a
//! key's `mode` beats the volume's `defaultMode`, 0644 unless set; a projected volume's later
//! source wins a path two of them name). Writing them is [`super::projection`]'s, one writer
//! for every kind, so the pod never gets a path the node writes through.
//!
//! ConfigMaps, Secrets and ServiceAccount tokens come through [`Lookup`], the seam the unit tests
//! fake. A `serviceAccountToken` source gets a token bound to the pod (TokenRequest, as kubelet
//! asks for one), which the worker rewrites before it expires ([`token_lifetime`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, ServiceAccountTokenProjection,
    Volume, VolumeProjection,
};
use kube::Api;

use super::container;
use super::projection::File;

/// kubelet's default mode for a volume's files.
const DEFAULT_MODE: i32 = 0o644;

/// Where ConfigMaps and Secrets come from: the API server, or a test's table. `None` is "not
/// found".
#[async_trait]
pub trait Lookup: Send + Sync {
    async fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String>;
    async fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String>;
    /// A token of the pod's ServiceAccount, bound to the pod, for `audience` (the API's when
    /// `None`), valid `seconds`.
    async fn token(&self, pod: &Pod, audience: Option<&str>, seconds: i64) -> Result<Vec<u8>, String>;
}

/// kubelet's default lifetime of a projected token, and the least the API server grants.
const TOKEN_SECONDS: i64 = 3600;
const TOKEN_MIN_SECONDS: i64 = 600;

fn token_seconds(t: &ServiceAccountTokenProjection) -> i64 {
    t.expiration_seconds.unwrap_or(TOKEN_SECONDS)
}

/// The shortest lifetime of the tokens the pod's volumes hold, if they hold any: the worker
/// rewrites those volumes at 80% of it, as kubelet does.
pub fn token_lifetime(pod: &Pod) -> Option<std::time::Duration> {
    pod.spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
        .map(token_seconds)
        .min()
        .map(|s| std::time::Duration::from_secs(s.max(TOKEN_MIN_SECONDS) as u64))
}

/// Whether a volume holds a ServiceAccount token.
pub fn holds_token(v: &Volume) -> bool {
    v.projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten())
        .any(|s| s.service_account_token.is_some())
}

/// The API server, in the pod's namespace.
pub struct ApiLookup {
    pub client: kube::Client,
    pub namespace: String,
}

#[async_trait]
impl Lookup for ApiLookup {
    async fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let got = Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await
            .map_err(|e| format!("configmap {name:?}: {e}"))?;
        Ok(got.map(|c| {
            let mut data: BTreeMap<String, Vec<u8>> = c
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(c.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
            data
        }))
    }

    async fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let got = Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await
            .map_err(|e| format!("secret {name:?}: {e}"))?;
        Ok(got.map(|s| s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()))
    }

    async fn token(&self, pod: &Pod, audience: Option<&str>, seconds: i64) -> Result<Vec<u8>, String> {
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: audience.map(|a| vec![a.to_string()]),
                expiration_seconds: Some(seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer: TokenRequest = Api::<ServiceAccount>::namespaced(self.client.clone(), &self.namespace)
            .create_subresource("token", &sa, &Default::default(), &request)
            .await
            .map_err(|e| format!("token of serviceaccount {sa:?}: {e}"))?;
        let token = answer.status.and_then(|s| s.token).unwrap_or_default();
        if token.is_empty() {
            return Err(format!("token of serviceaccount {sa:?}: the API server returned none"));
        }
        Ok(token.into_bytes())
    }
}

/// Why a volume cannot be honoured on this node, found from the spec alone (so that the node
/// refuses it before it makes any namespace or network): a kind the node does not have, or a
/// projected source it cannot fill.
pub fn unsupported(v: &Volume) -> Option<String> {
    if let Some(m) = v
        .empty_dir
        .as_ref()
        .and_then(|e| e.medium.as_deref())
        .filter(|m| !m.is_empty() && *m != "Memory")
    {
        return Some(format!(
            "volume {:?}: emptyDir medium {m:?} is not supported by this node (\"\" or \"Memory\")",
            v.name
        ));
    }
    if v.empty_dir.is_some()
        || v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.persistent_volume_claim.is_some()
        || v.ephemeral.is_some()
    {
        return None;
    }
    let Some(p) = &v.projected else {
        return Some(format!(
            "volume {:?}: this volume type is not supported by the node (emptyDir, configMap, secret, downwardAPI, projected, persistentVolumeClaim and ephemeral are)",
            v.name
        ));
    };
    for s in p.sources.iter().flatten() {
        if let Some(t) = &s.service_account_token {
            if token_seconds(t) < TOKEN_MIN_SECONDS {
                return Some(format!(
                    "volume {:?}: serviceAccountToken expirationSeconds {} is less than 10 minutes",
                    v.name,
                    token_seconds(t)
                ));
            }
            continue;
        }
        if s.config_map.is_none() && s.secret.is_none() && s.downward_api.is_none() {
            return Some(format!(
                "volume {:?}: a projected source other than configMap, secret, downwardAPI or serviceAccountToken is not supported by the node yet",
                v.name
            ));
        }
    }
    None
}

fn mode(m: Option<i32>) -> u32 {
    (m.unwrap_or(DEFAULT_MODE) & 0o7777) as u32
}

/// Choose keys: all of them with `default_mode`, or `items` with their paths and modes. A key
/// an item names that is not there is an error, unless the source is optional.
fn key_files(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
    what: &str,
) -> Result<Vec<File>, String> {
    let Some(items) = items else {
        return Ok(data
            .into_iter()
            .map(|(path, bytes)| File {
                path,
                bytes,
                mode: mode(default_mode),
            })
            .collect());
    };
    let mut out = Vec::new();
    for i in items {
        match data.get(&i.key) {
            Some(bytes) => out.push(File {
                path: i.path.clone(),
                bytes: bytes.clone(),
                mode: mode(i.mode.or(default_mode)),
            }),
            None if optional => {}
            None => return Err(format!("{what}: key {:?} not found", i.key)),
        }
    }
    Ok(out)
}

/// A ConfigMap's or Secret's files; a missing object is no files when optional.
async fn object_files(
    lookup: &dyn Lookup,
    secret: bool,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Vec<File>, String> {
    let (got, kind) = if secret {
        (lookup.secret(name).await?, "secret")
    } else {
        (lookup.config_map(name).await?, "configmap")
    };
    match got {
        Some(data) => key_files(data, items, default_mode, optional, &format!("{kind} {name:?}")),
        None if optional => Ok(Vec::new()),
        None => Err(format!("{kind} \"{name}\" not found")),
    }
}

/// A map as kubelet writes `metadata.labels` or `metadata.annotations`: `key="value"` lines,
/// sorted, values quoted.
fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

fn downward_files(pod: &Pod, items: &[DownwardAPIVolumeFile], default_mode: Option<i32>) -> Result<Vec<File>, String> {
    let mut out = Vec::new();
    for i in items {
        let value = if let Some(f) = &i.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
                p => container::field_ref(pod, p, "", "")?,
            }
        } else if let Some(r) = &i.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or_default();
            let spec = pod.spec.as_ref();
            let c: &Container = spec
                .into_iter()
                .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
                .find(|c| c.name == name)
                .ok_or_else(|| format!("downwardAPI {:?}: resourceFieldRef names no container {name:?}", i.path))?;
            container::resource_ref(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))?
        } else {
            return Err(format!(
                "downwardAPI {:?}: neither fieldRef nor resourceFieldRef",
                i.path
            ));
        };
        out.push(File {
            path: i.path.clone(),
            bytes: value.into_bytes(),
            mode: mode(i.mode.or(default_mode)),
        });
    }
    Ok(out)
}

async fn projected_source(
    lookup: &dyn Lookup,
    pod: &Pod,
    s: &VolumeProjection,
    default_mode: Option<i32>,
) -> Result<Vec<File>, String> {
    if let Some(cm) = &s.config_map {
        let optional = cm.optional.unwrap_or(false);
        return object_files(lookup, false, &cm.name, cm.items.as_ref(), default_mode, optional).await;
    }
    if let Some(sec) = &s.secret {
        let optional = sec.optional.unwrap_or(false);
        return object_files(lookup, true, &sec.name, sec.items.as_ref(), default_mode, optional).await;
    }
    if let Some(d) = &s.downward_api {
        return downward_files(pod, d.items.as_deref().unwrap_or_default(), default_mode);
    }
    if let Some(t) = &s.service_account_token {
        let bytes = lookup
            .token(pod, t.audience.as_deref().filter(|a| !a.is_empty()), token_seconds(t))
            .await?;
        return Ok(vec![File {
            path: t.path.clone(),
            bytes,
            mode: mode(default_mode),
        }]);
    }
    // `unsupported` refused the rest before the sandbox was made.
    Err("a projected source the node cannot fill".into())
}

/// The files of volume `v` if it is one the node writes (configMap, secret, downwardAPI,
/// projected); `None` for any other kind. An error names the volume.
pub async fn files(lookup: &dyn Lookup, pod: &Pod, v: &Volume) -> Result<Option<Vec<File>>, String> {
    let named = |e: String| format!("volume {:?}: {e}", v.name);
    if let Some(cm) = &v.config_map {
        let optional = cm.optional.unwrap_or(false);
        return object_files(lookup, false, &cm.name, cm.items.as_ref(), cm.default_mode, optional)
            .await
            .map(Some);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let optional = s.optional.unwrap_or(false);
        return object_files(lookup, true, &name, s.items.as_ref(), s.default_mode, optional)
            .await
            .map(Some);
    }
    if let Some(d) = &v.downward_api {
        return downward_files(pod, d.items.as_deref().unwrap_or_default(), d.default_mode)
            .map(Some)
            .map_err(named);
    }
    let Some(p) = &v.projected else {
        return Ok(None);
    };
    if let Some(why) = unsupported(v) {
        return Err(why);
    }
    // Later sources win a path, as in kubelet's projected payload.
    let mut by_path: BTreeMap<String, File> = BTreeMap::new();
    for s in p.sources.iter().flatten() {
        for f in projected_source(lookup, pod, s, p.default_mode).await.map_err(named)? {
            by_path.insert(f.path.clone(), f);
        }
    }
    Ok(Some(by_path.into_values().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Table(BTreeMap<String, BTreeMap<String, Vec<u8>>>);

    #[async_trait]
    impl Lookup for Table {
        async fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
            Ok(self.0.get(&format!("cm/{name}")).cloned())
        }
        async fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
            Ok(self.0.get(&format!("secret/{name}")).cloned())
        }
        async fn token(&self, pod: &Pod, audience: Option<&str>, seconds: i64) -> Result<Vec<u8>, String> {
            let name = pod.metadata.name.clone().unwrap_or_default();
            Ok(format!("token-of-{name}-for-{}-{seconds}s", audience.unwrap_or("api")).into_bytes())
        }
    }

    fn table() -> Table {
        let obj = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect::<BTreeMap<_, _>>()
        };
        Table(BTreeMap::from([
            ("cm/conf".to_string(), obj(&[("a", "1"), ("b", "2")])),
            ("secret/creds".to_string(), obj(&[("user", "u"), ("pass", "p")])),
        ]))
    }

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                "labels": {"app": "x", "tier": "web"}, "annotations": {"note": "say \"hi\""}},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}}],
                "volumes": volumes}}))
        .unwrap()
    }

    fn volume(p: &Pod, i: usize) -> Volume {
        p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[i].clone()
    }

    fn summary(files: &[File]) -> Vec<(String, String, u32)> {
        files
            .iter()
            .map(|f| (f.path.clone(), String::from_utf8_lossy(&f.bytes).into_owned(), f.mode))
            .collect()
    }

    #[tokio::test]
    async fn projected_sources_items_modes_and_the_last_source_wins() {
        let p = pod(
            serde_json::json!([{"name": "projectedv", "projected": {"defaultMode": 0o440, "sources": [
            {"configMap": {"name": "conf", "items": [{"key": "a", "path": "dir/a", "mode": 0o400}, {"key": "b", "path": "same"}]}},
            {"secret": {"name": "creds"}},
            {"secret": {"name": "missing", "optional": true}},
            {"configMap": {"name": "conf", "optional": true, "items": [{"key": "nope", "path": "n"}]}},
            {"downwardAPI": {"items": [
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}, "mode": 0o444},
                {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}},
                {"path": "same", "fieldRef": {"fieldPath": "metadata.uid"}}]}}]}}]),
        );
        let got = files(&table(), &p, &volume(&p, 0)).await.unwrap().unwrap();
        let s = |p: &str, v: &str, m: u32| (p.to_string(), v.to_string(), m);
        assert_eq!(
            summary(&got),
            vec![
                s("annotations", "note=\"say \\\"hi\\\"\"", 0o444),
                s("dir/a", "1", 0o400),
                s("labels", "app=\"x\"\ntier=\"web\"", 0o440),
                s("mem", "64", 0o440),
                s("name", "p", 0o440),
                s("pass", "p", 0o440),
                s("same", "u-1", 0o440),
                s("user", "u", 0o440),
            ]
        );
    }

    #[tokio::test]
    async fn what_is_missing_and_not_optional_is_an_error_naming_it() {
        let p = pod(serde_json::json!([
            {"name": "v0", "projected": {"sources": [{"secret": {"name": "missing"}}]}},
            {"name": "v1", "projected": {"sources": [{"configMap": {"name": "conf", "items": [{"key": "nope", "path": "n"}]}}]}},
            {"name": "v2", "configMap": {"name": "conf", "defaultMode": 0o400}},
            {"name": "v3", "downwardAPI": {"items": [{"path": "x", "resourceFieldRef": {"containerName": "other", "resource": "limits.cpu"}}]}}]));
        let t = table();
        let e = files(&t, &p, &volume(&p, 0)).await.unwrap_err();
        assert!(
            e.contains("\"v0\"") && e.contains("secret \"missing\" not found"),
            "{e}"
        );
        let e = files(&t, &p, &volume(&p, 1)).await.unwrap_err();
        assert!(e.contains("key \"nope\" not found"), "{e}");
        let got = files(&t, &p, &volume(&p, 2)).await.unwrap().unwrap();
        assert_eq!(summary(&got)[0], ("a".to_string(), "1".to_string(), 0o400));
        let e = files(&t, &p, &volume(&p, 3)).await.unwrap_err();
        assert!(e.contains("no container \"other\""), "{e}");
    }

    #[tokio::test]
    async fn a_service_account_token_is_the_pods_and_too_short_a_life_is_refused() {
        let p = pod(serde_json::json!([
            {"name": "token", "projected": {"sources": [{"configMap": {"name": "conf", "items": [{"key": "a", "path": "a"}]}},
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 7200, "audience": "vault"}}]}},
            {"name": "nfs", "nfs": {"server": "s", "path": "/"}},
            {"name": "fine", "projected": {"sources": [{"configMap": {"name": "conf"}}]}},
            {"name": "short", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 60}}]}}]));
        assert_eq!(unsupported(&volume(&p, 0)), None);
        let got = files(&table(), &p, &volume(&p, 0)).await.unwrap().unwrap();
        assert_eq!(
            summary(&got),
            vec![
                ("a".to_string(), "1".to_string(), 0o644),
                ("token".to_string(), "token-of-p-for-vault-7200s".to_string(), 0o644)
            ]
        );
        assert!(holds_token(&volume(&p, 0)) && !holds_token(&volume(&p, 2)));
        let why = unsupported(&volume(&p, 3)).unwrap();
        assert!(
            why.contains("\"short\"") && why.contains("less than 10 minutes"),
            "{why}"
        );
        // The worker rewrites at 80% of the shortest lifetime; 60 s counts as the least, 600.
        assert_eq!(token_lifetime(&p), Some(std::time::Duration::from_secs(600)));
        assert!(
            unsupported(&volume(&p, 1))
                .unwrap()
                .contains("is not supported by the node")
        );
        assert_eq!(unsupported(&volume(&p, 2)), None);
    }
}
