//! From a pod's container to an OCI container spec: command and args against the image's
//! entrypoint, environment (with `valueFrom` and `$(VAR)` expansion), user and groups,
//! capabilities, resource limits.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;
use nodeless_types::quantity::parse_quantity;

use crate::beneath::{self, Resolve};
use crate::image::ImageConfig;

/// The largest image /etc/passwd or /etc/group the node reads for a user name.
const MAX_ACCOUNTS_FILE: u64 = 4 << 20;
use crate::spec::{Limits, capabilities};

/// Expand `$(NAME)` from `vars`; `$$(NAME)` is a literal `$(NAME)`; unknown names stay as written.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&s[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The process arguments: the container's command replaces the image's entrypoint (and then
/// the image's cmd is not used); the container's args replace the image's cmd.
pub fn process_args(c: &Container, image: &ImageConfig, vars: &BTreeMap<String, String>) -> Vec<String> {
    let (entry, cmd) = match (&c.command, &c.args) {
        (Some(command), args) => (command.clone(), args.clone().unwrap_or_default()),
        (None, Some(args)) => (image.entrypoint.clone(), args.clone()),
        (None, None) => (image.entrypoint.clone(), image.cmd.clone()),
    };
    entry.into_iter().chain(cmd).map(|a| expand(&a, vars)).collect()
}

pub(super) fn field_ref(pod: &Pod, path: &str, pod_ip: &str, host_ip: &str) -> Result<String, String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |p: &str, prefix: &str| {
        p.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        p => {
            if let Some(k) = map_key(p, "metadata.labels['") {
                m.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else if let Some(k) = map_key(p, "metadata.annotations['") {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k).cloned())
                    .unwrap_or_default()
            } else {
                return Err(format!("fieldRef {p:?} is not supported"));
            }
        }
    })
}

pub(super) fn resource_ref(c: &Container, resource: &str, divisor: Option<&str>) -> Result<String, String> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("resourceFieldRef {resource:?} is not supported"))?;
    let r = c.resources.as_ref();
    let q = match kind {
        "limits" => r.and_then(|r| r.limits.as_ref()).and_then(|l| l.get(name)),
        "requests" => r.and_then(|r| r.requests.as_ref()).and_then(|l| l.get(name)),
        _ => return Err(format!("resourceFieldRef {resource:?} is not supported")),
    };
    let milli = match q {
        Some(q) => parse_quantity(&q.0).map_err(|e| format!("{resource}: {e}"))?.milli(),
        // Unset limits read as the node's capacity, as kubelet reports allocatable.
        None => {
            if name == "cpu" {
                1_000_000
            } else {
                1i128 << 50
            }
        }
    };
    let div = divisor
        .map(parse_quantity)
        .transpose()
        .map_err(|e| format!("divisor: {e}"))?
        .map_or(1000, |d| d.milli())
        .max(1);
    Ok(((milli + div - 1) / div).to_string())
}

async fn config_value(
    client: &kube::Client,
    ns: &str,
    secret: bool,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, String> {
    let data = config_map_all(client, ns, secret, name, optional).await?;
    match data.get(key) {
        Some(v) => Ok(Some(v.clone())),
        None if optional => Ok(None),
        None => Err(format!(
            "couldn't find key {key} in {} {ns}/{name}",
            if secret { "Secret" } else { "ConfigMap" }
        )),
    }
}

async fn config_map_all(
    client: &kube::Client,
    ns: &str,
    secret: bool,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, String>, String> {
    let what = if secret { "secret" } else { "configmap" };
    let data = if secret {
        Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| format!("{what} {name:?}: {e}"))?
            .map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).to_string()))
                    .collect()
            })
    } else {
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| format!("{what} {name:?}: {e}"))?
            .map(|c| c.data.unwrap_or_default())
    };
    match data {
        Some(d) => Ok(d),
        None if optional => Ok(BTreeMap::new()),
        None => Err(format!("{what} \"{name}\" not found")),
    }
}

/// The container's environment, in order: the image's, `envFrom`, then `env`; later names win.
/// An error is what kubelet reports as CreateContainerConfigError.
pub async fn environment(
    client: &kube::Client,
    pod: &Pod,
    c: &Container,
    image: &ImageConfig,
    pod_ip: &str,
    host_ip: &str,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut order: Vec<String> = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let set = |order: &mut Vec<String>, vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(&mut order, &mut vars, k.to_string(), v.to_string());
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(cm) = &from.config_map_ref {
            config_map_all(client, &ns, false, &cm.name, cm.optional.unwrap_or(false)).await?
        } else if let Some(s) = &from.secret_ref {
            config_map_all(client, &ns, true, &s.name, s.optional.unwrap_or(false)).await?
        } else {
            BTreeMap::new()
        };
        for (k, v) in data {
            set(&mut order, &mut vars, format!("{prefix}{k}"), v);
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => Some(expand(e.value.as_deref().unwrap_or_default(), &vars)),
            Some(src) => {
                if let Some(r) = &src.config_map_key_ref {
                    config_value(client, &ns, false, &r.name, &r.key, r.optional.unwrap_or(false)).await?
                } else if let Some(r) = &src.secret_key_ref {
                    config_value(client, &ns, true, &r.name, &r.key, r.optional.unwrap_or(false)).await?
                } else if let Some(r) = &src.field_ref {
                    Some(field_ref(pod, &r.field_path, pod_ip, host_ip)?)
                } else if let Some(r) = &src.resource_field_ref {
                    Some(resource_ref(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))?)
                } else {
                    None
                }
            }
        };
        if let Some(v) = value {
            set(&mut order, &mut vars, e.name.clone(), v);
        }
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars[&k].clone();
            (k, v)
        })
        .collect())
}

/// cgroup limits from the container's resources.
pub fn limits(c: &Container) -> Result<Limits, String> {
    let r = c.resources.as_ref();
    let get = |which: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
               name: &str| {
        which
            .and_then(|m| m.get(name))
            .map(|q| parse_quantity(&q.0).map_err(|e| format!("resources {name}: {e}")))
            .transpose()
    };
    let limits = r.and_then(|r| r.limits.as_ref());
    let requests = r.and_then(|r| r.requests.as_ref());
    Ok(Limits {
        memory_bytes: get(limits, "memory")?.map(|q| q.units_ceil() as i64),
        cpu_millis: get(limits, "cpu")?.map(|q| q.milli().max(10) as i64),
        cpu_request_millis: get(requests, "cpu")?.or(get(limits, "cpu")?).map(|q| q.milli() as i64),
        // The pod's cgroup caps its processes (`cgroups::POD_PIDS_MAX`), all containers together.
        pids: None,
    })
}

/// The effective user: container securityContext over the pod's over the image's `User`
/// (numbers, or names looked up in the image's /etc/passwd and /etc/group).
pub fn user(
    pod: &Pod,
    c: &Container,
    image_user: &str,
    rootfs: &std::path::Path,
) -> Result<(u32, u32, Vec<u32>), String> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = c.security_context.as_ref();
    let (img_user, img_group) = image_user
        .split_once(':')
        .map_or((image_user, None), |(u, g)| (u, Some(g)));
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        // The image's file: resolved inside its rootfs, bounded, a regular file only.
        let root = beneath::open_dir(rootfs).ok()?;
        let text = String::from_utf8(
            beneath::read(
                &root,
                std::path::Path::new(file),
                Resolve::InRoot,
                MAX_ACCOUNTS_FILE,
                false,
            )
            .ok()?,
        )
        .ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.first() != Some(&name) {
                return None;
            }
            Some((
                f.get(2)?.parse().ok()?,
                f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0),
            ))
        })
    };
    let (mut uid, mut gid) = (0u32, 0u32);
    if !img_user.is_empty() {
        match img_user.parse::<u32>() {
            Ok(u) => uid = u,
            Err(_) => {
                let (u, g) = lookup("etc/passwd", img_user)
                    .ok_or_else(|| format!("unable to find user {img_user}: no matching entries in passwd file"))?;
                uid = u;
                gid = g;
            }
        }
    }
    if let Some(g) = img_group {
        gid = g
            .parse()
            .ok()
            .or_else(|| lookup("etc/group", g).map(|(id, _)| id))
            .ok_or_else(|| format!("unable to find group {g}"))?;
    }
    if let Some(u) = csc.and_then(|s| s.run_as_user).or(psc.and_then(|s| s.run_as_user)) {
        uid = u as u32;
    }
    if let Some(g) = csc.and_then(|s| s.run_as_group).or(psc.and_then(|s| s.run_as_group)) {
        gid = g as u32;
    }
    let non_root = csc
        .and_then(|s| s.run_as_non_root)
        .or(psc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if non_root && uid == 0 {
        return Err("container has runAsNonRoot and image will run as root".into());
    }
    let mut groups: Vec<u32> = psc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|g| g as u32)
        .collect();
    if let Some(fs) = psc.and_then(|s| s.fs_group) {
        groups.push(fs as u32);
    }
    Ok((uid, gid, groups))
}

/// Capabilities after the container's securityContext.
pub fn caps(c: &Container) -> Result<Vec<String>, String> {
    let cap = c.security_context.as_ref().and_then(|s| s.capabilities.as_ref());
    capabilities(
        &cap.and_then(|c| c.add.clone()).unwrap_or_default(),
        &cap.and_then(|c| c.drop.clone()).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
    }

    #[test]
    fn command_and_args_against_the_image() {
        let image = ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            ..Default::default()
        };
        let vars = BTreeMap::new();
        let mut c = Container::default();
        assert_eq!(process_args(&c, &image, &vars), ["/entry", "serve"]);
        c.args = Some(vec!["other".into()]);
        assert_eq!(process_args(&c, &image, &vars), ["/entry", "other"]);
        c.command = Some(vec!["/bin/sh".into()]);
        c.args = None;
        assert_eq!(process_args(&c, &image, &vars), ["/bin/sh"]);
    }
}
