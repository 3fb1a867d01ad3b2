//! Files a pod's containers see that the node writes: /etc/hosts, /etc/hostname,
//! /etc/resolv.conf (from dnsPolicy and dnsConfig), and the simple volumes (emptyDir, configMap,
//! secret, downwardAPI, projected); the CSI-shaped drivers of `volumes/` take over the rest.
//! All but emptyDir are read-only in the pod, assembled by [`super::volume_data`] and written
//! by [`super::projection`]; subPaths are resolved beneath their volume and mounted by descriptor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use nix::mount::MsFlags;
use rustix::fs::OFlags;

use super::{projection, volume_data};
use crate::beneath::{self, Resolve};
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
    let mut s = String::from(
        "# Kubernetes-managed hosts file (nodeless).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
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
    let policy = spec
        .and_then(|s| s.dns_policy.clone())
        .unwrap_or_else(|| "ClusterFirst".into());
    let host_net = spec.and_then(|s| s.host_network).unwrap_or(false);
    let (mut servers, mut search, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        (Vec::new(), Vec::new(), Vec::new());
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
        out.push_str(&format!(
            "search {}\n",
            search.iter().take(32).cloned().collect::<Vec<_>>().join(" ")
        ));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// A pod volume prepared on the node.
#[derive(Clone, Debug)]
pub struct PodVolume {
    pub name: String,
    pub path: PathBuf,
    /// configMap, secret, downwardAPI and projected volumes: the node writes them, the pod only
    /// reads them.
    pub read_only: bool,
    /// A CSI volume: its files keep their own owners (seen through an idmapped mount), the node
    /// never changes them.
    pub csi: bool,
    /// A raw block volume (`volumeMode: Block`): `path` is its device node, for `volumeDevices`.
    pub block: bool,
}

/// The first volume of the pod the node cannot honour, from its spec alone: checked before the
/// sandbox is made, so such a pod costs no namespace or network attachment.
pub fn unsupported_volume(pod: &Pod) -> Option<String> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    volumes.into_iter().flatten().find_map(volume_data::unsupported)
}

/// Prepare each volume under `<pod_dir>/volumes` and return where it is; unsupported kinds are
/// an error naming the volume (CreateContainerConfigError). Claims are mounted through the
/// node's CSI drivers (see `crate::csi`), idmapped by `userns` when the pod has one; a claim
/// volume already published (a restarted node adopting the pod) is taken as it is.
pub async fn prepare_volumes(
    ctx: &crate::context::NodeCtx,
    pod: &Pod,
    pod_dir: &Path,
    userns: Option<(&Path, u32)>,
) -> Result<Vec<PodVolume>, String> {
    let lookup = volume_data::ApiLookup {
        client: ctx.client.clone(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
    };
    let dir = pod_dir.join("volumes");
    let published = crate::csi::records(pod_dir);
    let mut out = Vec::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default() {
        let path = dir.join(&v.name);
        if v.persistent_volume_claim.is_some() || v.ephemeral.is_some() {
            let done = published
                .iter()
                .find(|(_, p)| p.name() == v.name && is_mount_point(&p.view))
                .map(|(_, p)| p.clone());
            let p = match done {
                Some(p) => p,
                None => {
                    let p = ctx.csi.mount(&ctx.client, &ctx.name, pod, &v, pod_dir, userns).await?;
                    // Which file system serves it (a NAS volume: the kernel's NFS client, or
                    // the user-space one where the kernel has none), as the mount table says.
                    if let Some((fs, source)) = crate::csi::mounted_from(&p.target) {
                        let msg = format!("MountVolume.SetUp succeeded for volume \"{}\" ({fs} {source})", v.name);
                        crate::context::emit_event(ctx, pod, "Normal", "SuccessfulMountVolume", &msg);
                    }
                    p
                }
            };
            out.push(PodVolume {
                name: v.name.clone(),
                path: p.view.clone(),
                read_only: p.read_only,
                csi: true,
                block: p.block,
            });
            continue;
        }
        let read_only = prepare_one(&lookup, pod, &v, &path).await?;
        out.push(PodVolume {
            name: v.name.clone(),
            path,
            read_only,
            csi: false,
            block: false,
        });
    }
    Ok(out)
}

/// Whether something is mounted at `path` (it is on another device than its parent).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (std::fs::metadata(path), path.parent().map(std::fs::metadata)) else {
        return false;
    };
    me.dev() != parent.dev() || me.ino() == parent.ino()
}

/// Write the pod's volumes that hold ServiceAccount tokens again, with fresh tokens (the
/// atomic writer swaps them under the running containers).
pub async fn refresh_tokens(client: &kube::Client, pod: &Pod, volumes: &[PodVolume]) -> Result<(), String> {
    let lookup = volume_data::ApiLookup {
        client: client.clone(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
    };
    let specs = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for v in specs.into_iter().flatten().filter(|v| volume_data::holds_token(v)) {
        let Some(at) = volumes.iter().find(|p| p.name == v.name) else {
            continue;
        };
        if let Some(files) = volume_data::files(&lookup, pod, v).await? {
            projection::write(&at.path, &files).map_err(|e| format!("volume {:?}: {e}", v.name))?;
        }
    }
    Ok(())
}

/// Read the pod's configMap, secret, downwardAPI and projected volumes again (not those with a
/// token: they are written with each fresh token) and write the ones whose data changed since
/// they were last written, as a new version swapped in. `written` keeps a digest of each.
pub async fn refresh_data(
    client: &kube::Client,
    pod: &Pod,
    volumes: &[PodVolume],
    written: &mut std::collections::HashMap<String, [u8; 32]>,
) -> Result<usize, String> {
    use sha2::Digest;
    let lookup = volume_data::ApiLookup {
        client: client.clone(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
    };
    let specs = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    let mut changed = 0;
    for v in specs.into_iter().flatten().filter(|v| !volume_data::holds_token(v)) {
        let Some(at) = volumes.iter().find(|p| p.name == v.name && p.read_only) else {
            continue;
        };
        let Some(files) = volume_data::files(&lookup, pod, v).await? else {
            continue;
        };
        let mut h = sha2::Sha256::new();
        for f in &files {
            h.update(f.path.as_bytes());
            h.update([0]);
            h.update(f.mode.to_le_bytes());
            h.update((f.bytes.len() as u64).to_le_bytes());
            h.update(&f.bytes);
        }
        let digest: [u8; 32] = h.finalize().into();
        if written.get(&v.name) == Some(&digest) {
            continue;
        }
        // The first look after the pod started (or was adopted) writes too: what changed since
        // the sandbox was made reaches it then.
        projection::write(&at.path, &files).map_err(|e| format!("volume {:?}: {e}", v.name))?;
        changed += 1;
        written.insert(v.name.clone(), digest);
    }
    Ok(changed)
}

/// Make one volume at `path`; whether the pod only reads it.
async fn prepare_one(lookup: &volume_data::ApiLookup, pod: &Pod, v: &Volume, path: &Path) -> Result<bool, String> {
    if let Some(e) = &v.empty_dir {
        std::fs::create_dir_all(path).map_err(|e| format!("volume {:?}: {e}", v.name))?;
        if let Some(why) = volume_data::unsupported(v) {
            return Err(why);
        }
        if e.medium.as_deref() == Some("Memory") {
            memory_medium(pod, v, path)?;
        }
        return Ok(false);
    }
    if let Some(why) = volume_data::unsupported(v) {
        return Err(why);
    }
    match volume_data::files(lookup, pod, v).await? {
        Some(files) => {
            projection::write(path, &files).map_err(|e| format!("volume {:?}: {e}", v.name))?;
            Ok(true)
        }
        None => Err(format!(
            "volume {:?}: this volume type is not supported by the node yet",
            v.name
        )),
    }
}

/// A memory-backed emptyDir: a tmpfs at `path` (kept if one is there already: an adopted pod),
/// as large as its `sizeLimit`, else the pod's memory limit (the sum of its containers'), else
/// half the host's memory (tmpfs's own default). What is written there is charged to the
/// pod's memory.
fn memory_medium(pod: &Pod, v: &Volume, path: &Path) -> Result<(), String> {
    use nodeless_types::quantity::parse_quantity;
    let parse = |q: &str| parse_quantity(q).ok().map(|q| q.units_ceil().max(0) as u64);
    let limit = v
        .empty_dir
        .as_ref()
        .and_then(|e| e.size_limit.as_ref())
        .and_then(|q| parse(&q.0));
    let pod_limit = pod.spec.as_ref().and_then(|s| {
        s.containers
            .iter()
            .map(|c| {
                c.resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get("memory"))
                    .and_then(|q| parse(&q.0))
            })
            .sum::<Option<u64>>()
    });
    let size = match (limit, pod_limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if is_mount_point(path) {
        return Ok(());
    }
    let data = match size {
        Some(bytes) => format!("size={},mode=0777", bytes.max(4096)),
        None => "mode=0777".to_string(),
    };
    nix::mount::mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| format!("volume {:?}: mounting its tmpfs: {e}", v.name))
}

/// The bind mounts for one container's volumeMounts. A `subPath` (or `subPathExpr`, expanded
/// from the container's environment) is opened beneath its volume — links inside the volume
/// are followed, links out of it are an error — and the directory or file found is bind-mounted
/// by descriptor at `subpaths/<n>` under `bundle`, which the runtime then mounts: what the pod
/// does to the path afterwards changes nothing. The caller unmounts those once the container
/// runs (see `teardown::unmount_bundle`).
pub fn volume_mounts(
    c: &Container,
    volumes: &[PodVolume],
    vars: &BTreeMap<String, String>,
    bundle: &Path,
) -> Result<Vec<BindMount>, String> {
    let mut out = Vec::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let vol = volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| format!("volumeMount {:?}: no volume of that name", m.name))?;
        if vol.block {
            return Err(format!(
                "volumeMount {:?}: the volume is a raw block device (volumeMode: Block); use it through volumeDevices",
                m.name
            ));
        }
        let read_only = vol.read_only || m.read_only.unwrap_or(false);
        let sub = match (
            m.sub_path.as_deref().filter(|s| !s.is_empty()),
            m.sub_path_expr.as_deref().filter(|s| !s.is_empty()),
        ) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "volumeMount {:?}: subPath and subPathExpr are mutually exclusive",
                    m.name
                ));
            }
            (Some(s), None) => Some(s.to_string()),
            (None, Some(e)) => Some(super::container::expand(e, vars)),
            (None, None) => None,
        };
        let source = match sub {
            None => vol.path.clone(),
            Some(sub) => {
                let target = bundle.join("subpaths").join(i.to_string());
                bind_sub_path(&vol.path, &sub, &target)
                    .map_err(|e| format!("volumeMount {:?}: subPath {sub:?}: {e}", m.name))?;
                target
            }
        };
        out.push(BindMount {
            source,
            destination: m.mount_path.clone(),
            read_only,
        });
    }
    Ok(out)
}

/// The raw block devices of one container's `volumeDevices`.
pub fn volume_devices(c: &Container, volumes: &[PodVolume]) -> Result<Vec<crate::spec::BlockDevice>, String> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = Vec::new();
    for d in c.volume_devices.iter().flatten() {
        let vol = volumes
            .iter()
            .find(|v| v.name == d.name)
            .ok_or_else(|| format!("volumeDevice {:?}: no volume of that name", d.name))?;
        if !vol.block {
            return Err(format!(
                "volumeDevice {:?}: the volume is not a raw block volume (its claim's volumeMode is not Block); mount it with volumeMounts",
                d.name
            ));
        }
        let meta = std::fs::metadata(&vol.path).map_err(|e| format!("volumeDevice {:?}: {e}", d.name))?;
        if !meta.file_type().is_block_device() {
            return Err(format!(
                "volumeDevice {:?}: {} is not a block device",
                d.name,
                vol.path.display()
            ));
        }
        let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
        out.push(crate::spec::BlockDevice {
            source: vol.path.clone(),
            destination: d.device_path.clone(),
            read_only: vol.read_only,
            major: rustix::fs::major(rdev),
            minor: rustix::fs::minor(rdev),
        });
    }
    Ok(out)
}

/// Open `sub` beneath the volume at `volume` (creating directories that are missing, as
/// kubelet does) and bind-mount what it names onto `target`, by descriptor.
fn bind_sub_path(volume: &Path, sub: &str, target: &Path) -> Result<(), String> {
    let rel = beneath::relative(Path::new(sub)).map_err(|e| e.to_string())?;
    let root = beneath::open_dir(volume).map_err(|e| e.to_string())?;
    let found = match beneath::open(&root, &rel, OFlags::PATH, 0, Resolve::Beneath) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            beneath::mkdir_all_owned(&root, &rel, 0o755, Resolve::Beneath, true).map_err(|e| e.to_string())?
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            return Err("it leaves the volume (through a symlink)".into());
        }
        Err(e) => return Err(e.to_string()),
    };
    let st = rustix::fs::fstat(&found).map_err(|e| e.to_string())?;
    let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let made = if is_dir {
        std::fs::create_dir(target)
    } else {
        std::fs::File::create(target).map(drop)
    };
    made.map_err(|e| format!("{}: {e}", target.display()))?;
    nix::mount::mount(
        Some(&beneath::fd_path(&found)),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind-mounting it: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn cluster_first_search_path() {
        let p = pod(
            serde_json::json!({"metadata": {"name": "a", "namespace": "shop"}, "spec": {"containers": [], "dnsPolicy": "ClusterFirst",
            "dnsConfig": {"options": [{"name": "ndots", "value": "2"}], "searches": ["corp.example"]}}}),
        );
        let dns = DnsSettings {
            cluster_dns: Some("10.96.0.10"),
            cluster_domain: "cluster.local",
            host_resolv: "nameserver 1.1.1.1\n",
        };
        assert_eq!(
            resolv_conf(&p, &dns),
            "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:2\n"
        );
        let p = pod(serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [], "dnsPolicy": "Default"}}));
        assert_eq!(resolv_conf(&p, &dns), "nameserver 1.1.1.1\n");
    }
}
