//! Files a pod's containers see that the node writes: /etc/hosts, /etc/hostname,
//! /etc/resolv.conf (from dnsPolicy and dnsConfig), and the simple volumes
//! (emptyDir, configMap, secret); the CSI-shaped drivers of `volumes/` take over the rest.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Volume};
use kube::Api;

use crate::spec::BindMount;

pub struct DnsSettings<'a> {
    pub cluster_dns: Option<&'a str>,
    pub cluster_domain: &'a str,
    /// The node's own resolv.conf (for dnsPolicy Default, and ClusterFirst without cluster DNS).
    pub host_resolv: &'a str,
}

pub fn hosts_file(pod: &Pod, pod_ip: &str) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let hostname = spec.and_then(|s| s.hostname.clone()).unwrap_or(name);
    let mut s = String::from("# Kubernetes-managed hosts file (nodeless).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !pod_ip.is_empty() {
        s.push_str(&format!("{pod_ip}\t{hostname}\n"));
    }
    for a in spec.and_then(|s| s.host_aliases.clone()).unwrap_or_default() {
        s.push_str(&format!("{}\t{}\n", a.ip, a.hostnames.unwrap_or_default().join("\t")));
    }
    s
}

pub fn resolv_conf(pod: &Pod, dns: &DnsSettings<'_>) -> String {
    let spec = pod.spec.as_ref();
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let policy = spec.and_then(|s| s.dns_policy.clone()).unwrap_or_else(|| "ClusterFirst".into());
    let host_net = spec.and_then(|s| s.host_network).unwrap_or(false);
    let (mut servers, mut search, mut options): (Vec<String>, Vec<String>, Vec<String>) = (Vec::new(), Vec::new(), Vec::new());
    let from_host = |servers: &mut Vec<String>, search: &mut Vec<String>, options: &mut Vec<String>| {
        for line in dns.host_resolv.lines() {
            let mut w = line.split_whitespace();
            match w.next() {
                Some("nameserver") => servers.extend(w.next().map(str::to_string)),
                Some("search") | Some("domain") => search.extend(w.map(str::to_string)),
                Some("options") => options.extend(w.map(str::to_string)),
                _ => {}
            }
        }
    };
    let cluster_first = policy == "ClusterFirstWithHostNet" || (policy == "ClusterFirst" && !host_net);
    match (policy.as_str(), dns.cluster_dns) {
        ("None", _) => {}
        (_, Some(server)) if cluster_first => {
            servers.push(server.to_string());
            let z = dns.cluster_domain;
            search.extend([format!("{ns}.svc.{z}"), format!("svc.{z}"), z.to_string()]);
            options.push("ndots:5".into());
        }
        _ => from_host(&mut servers, &mut search, &mut options),
    }
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        servers.extend(cfg.nameservers.clone().unwrap_or_default());
        search.extend(cfg.searches.clone().unwrap_or_default());
        for o in cfg.options.clone().unwrap_or_default() {
            let name = o.name.unwrap_or_default();
            options.retain(|x| x.split(':').next() != Some(name.as_str()));
            options.push(match o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    servers.dedup();
    search.dedup();
    let mut out = String::new();
    for s in servers.iter().take(3) {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.iter().take(32).cloned().collect::<Vec<_>>().join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

fn write_key_files(dir: &Path, data: Vec<(String, Vec<u8>)>, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (key, value) in data {
        if key.contains("..") || key.starts_with('/') {
            return Err(format!("key path {key:?} leaves the volume"));
        }
        let p = dir.join(&key);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&p, value).map_err(|e| format!("{}: {e}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// Choose keys (all, or `items` with their paths and modes).
fn select(data: Vec<(String, Vec<u8>)>, items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>, what: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    match items {
        None => Ok(data),
        Some(items) => items
            .iter()
            .map(|i| {
                data.iter().find(|(k, _)| *k == i.key).map(|(_, v)| (i.path.clone(), v.clone())).ok_or_else(|| format!("{what}: key {:?} not found", i.key))
            })
            .collect(),
    }
}

/// Prepare each volume under `dir` and return its host path; unsupported kinds are an error
/// naming the volume (CreateContainerConfigError).
pub async fn prepare_volumes(client: &kube::Client, pod: &Pod, dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = Vec::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default() {
        let path = dir.join(&v.name);
        prepare_one(client, &ns, &v, &path).await?;
        out.push((v.name.clone(), path));
    }
    Ok(out)
}

async fn prepare_one(client: &kube::Client, ns: &str, v: &Volume, path: &Path) -> Result<(), String> {
    if v.empty_dir.is_some() {
        return std::fs::create_dir_all(path).map_err(|e| format!("volume {:?}: {e}", v.name));
    }
    if let Some(cm) = &v.config_map {
        let got = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(&cm.name).await.map_err(|e| format!("volume {:?}: {e}", v.name))?;
        let Some(got) = got else {
            if cm.optional.unwrap_or(false) {
                return std::fs::create_dir_all(path).map_err(|e| e.to_string());
            }
            return Err(format!("configmap \"{}\" not found", cm.name));
        };
        let mut data: Vec<(String, Vec<u8>)> = got.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        data.extend(got.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
        let data = select(data, cm.items.as_ref(), &format!("configmap {:?}", cm.name))?;
        return write_key_files(path, data, cm.default_mode.unwrap_or(0o644) as u32);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let got = Api::<Secret>::namespaced(client.clone(), ns).get_opt(&name).await.map_err(|e| format!("volume {:?}: {e}", v.name))?;
        let Some(got) = got else {
            if s.optional.unwrap_or(false) {
                return std::fs::create_dir_all(path).map_err(|e| e.to_string());
            }
            return Err(format!("secret \"{name}\" not found"));
        };
        let data: Vec<(String, Vec<u8>)> = got.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
        let data = select(data, s.items.as_ref(), &format!("secret {name:?}"))?;
        return write_key_files(path, data, s.default_mode.unwrap_or(0o644) as u32);
    }
    Err(format!("volume {:?}: this volume type is not supported by the node yet (emptyDir, configMap and secret are)", v.name))
}

/// The bind mounts for one container's volumeMounts.
pub fn volume_mounts(c: &k8s_openapi::api::core::v1::Container, volumes: &[(String, PathBuf)]) -> Result<Vec<BindMount>, String> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let (_, host) = volumes.iter().find(|(n, _)| *n == m.name).ok_or_else(|| format!("volumeMount {:?}: no volume of that name", m.name))?;
        let mut source = host.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub.split('/').any(|c| c == "..") || sub.starts_with('/') {
                return Err(format!("volumeMount {:?}: subPath {sub:?} leaves the volume", m.name));
            }
            source = host.join(sub);
            if !source.exists() {
                std::fs::create_dir_all(&source).map_err(|e| format!("subPath {sub}: {e}"))?;
            }
        }
        out.push(BindMount { source, destination: m.mount_path.clone(), read_only: m.read_only.unwrap_or(false) });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn cluster_first_search_path() {
        let p = pod(serde_json::json!({"metadata": {"name": "a", "namespace": "shop"}, "spec": {"containers": [], "dnsPolicy": "ClusterFirst",
            "dnsConfig": {"options": [{"name": "ndots", "value": "2"}], "searches": ["corp.example"]}}}));
        let dns = DnsSettings { cluster_dns: Some("10.96.0.10"), cluster_domain: "cluster.local", host_resolv: "nameserver 1.1.1.1\n" };
        assert_eq!(resolv_conf(&p, &dns), "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:2\n");
        let p = pod(serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [], "dnsPolicy": "Default"}}));
        assert_eq!(resolv_conf(&p, &dns), "nameserver 1.1.1.1\n");
    }
}
