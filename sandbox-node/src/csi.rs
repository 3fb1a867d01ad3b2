//! The node's CSI volume plugin, as kubelet's: a pod's `persistentVolumeClaim` (and generic
//! `ephemeral`) volumes are found through their claim and its bound PersistentVolume, waited for
//! until attached (the VolumeAttachment control makes, when the driver needs one), staged once
//! per node (NodeStageVolume at `<data>/csi/staging/<driver>/<volume>`), and published per pod
//! (NodePublishVolume at `<pod>/csi/<volume name>/mount`). Containers see the published
//! directory through a bind at `<pod>/volumes/<name>` that is idmapped into the pod's user
//! namespace, so file owners on the disk are the pod's own ids (0…65535), whichever range the
//! pod has on this host, as kubelet's idmapped mounts do.
//!
//! What was published is written beside it (`<pod>/csi/<name>.json`) before the call, so a
//! restarted node still unpublishes and unstages it when the pod goes, and reports it in
//! `node.status.volumesInUse` until then (control detaches only what no node uses). A driver
//! that restarts changes nothing for mounted volumes: the mounts are the kernel's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Volume};
use k8s_openapi::api::storage::v1::{CSIDriver, VolumeAttachment};
use kube::Api;
use nodeless_csi::capability;
use nodeless_csi::csi::node_client::NodeClient;
use nodeless_csi::csi::{self, node_service_capability};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tonic::transport::Channel;

/// How long a pod's volume may take to be attached before its sandbox fails (and is tried
/// again after the back-off): kubelet's two minutes.
const ATTACH_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// One published volume of a pod, as saved beside it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Published {
    pub driver: String,
    pub volume_id: String,
    /// Where it is staged on the node, if the driver stages.
    pub staging: Option<PathBuf>,
    /// Where the driver published it for the pod.
    pub target: PathBuf,
    /// Where the containers' mounts take it from (an idmapped bind of `target`).
    pub view: PathBuf,
    pub namespace: String,
    pub claim: String,
    pub pv: String,
    /// A raw block volume: `target` (and `view`) is its device node.
    #[serde(default)]
    pub block: bool,
    /// Published read-only (the pod's volume or the PersistentVolume says so).
    #[serde(default)]
    pub read_only: bool,
}

impl Published {
    /// The pod volume's name (the record's file name, `<pod>/csi/<name>.json`).
    pub fn name(&self) -> String {
        self.target
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn unique_name(&self) -> String {
        capability::unique_name(&self.driver, &self.volume_id)
    }
}

/// The node's CSI drivers: name → endpoint, and where it stages volumes.
#[derive(Clone, Debug, Default)]
pub struct CsiPlugins {
    pub drivers: BTreeMap<String, String>,
    /// `<data>/csi`.
    pub root: PathBuf,
}

fn err(what: &str, s: tonic::Status) -> String {
    format!("{what}: rpc error: code = {:?} desc = {}", s.code(), s.message())
}

impl CsiPlugins {
    async fn node(&self, driver: &str) -> Result<NodeClient<Channel>, String> {
        let endpoint = self.drivers.get(driver).ok_or_else(|| {
            format!("kubernetes.io/csi: driver name {driver} not found in the list of registered CSI drivers")
        })?;
        let ch = nodeless_csi::connect(endpoint)
            .await
            .map_err(|e| format!("kubernetes.io/csi: connecting to driver {driver} at {endpoint}: {e}"))?;
        Ok(NodeClient::new(ch))
    }

    /// Whether the driver stages volumes (NodeStageVolume) before publishing them.
    async fn stages(&self, c: &mut NodeClient<Channel>) -> Result<bool, String> {
        let caps = c
            .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
            .await
            .map_err(|s| err("NodeGetCapabilities", s))?
            .into_inner();
        Ok(caps.capabilities.iter().any(|c| {
            matches!(&c.r#type, Some(node_service_capability::Type::Rpc(r))
                if r.r#type == node_service_capability::rpc::Type::StageUnstageVolume as i32)
        }))
    }

    fn staging_path(&self, driver: &str, volume_id: &str) -> PathBuf {
        let h = hex::encode(sha2::Sha256::digest(volume_id.as_bytes()));
        self.root
            .join("staging")
            .join(driver)
            .join(&h[..32])
            .join("globalmount")
    }

    /// Register the node's drivers in its CSINode (driver → its node id), as kubelet's plugin
    /// registration does.
    pub async fn register(&self, client: &kube::Client, node: &str) -> Result<(), String> {
        let mut drivers = Vec::new();
        for name in self.drivers.keys() {
            let mut c = self.node(name).await?;
            let info = c
                .node_get_info(csi::NodeGetInfoRequest::default())
                .await
                .map_err(|s| err("NodeGetInfo", s))?
                .into_inner();
            let mut d = serde_json::json!({"name": name, "nodeID": info.node_id, "topologyKeys": null});
            if info.max_volumes_per_node > 0 {
                d["allocatable"] = serde_json::json!({"count": info.max_volumes_per_node});
            }
            drivers.push(d);
        }
        let api: Api<k8s_openapi::api::storage::v1::CSINode> = Api::all(client.clone());
        let obj = serde_json::json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
            "metadata": {"name": node}, "spec": {"drivers": drivers}});
        let pp = kube::api::PatchParams::apply("nodeless-node").force();
        api.patch(node, &pp, &kube::api::Patch::Apply(&obj))
            .await
            .map_err(|e| format!("registering CSINode {node}: {e}"))?;
        Ok(())
    }

    /// Mount one claim volume of a pod: its view for the containers, and what was published.
    pub async fn mount(
        &self,
        client: &kube::Client,
        node: &str,
        pod: &Pod,
        v: &Volume,
        pod_dir: &Path,
        userns: Option<(&Path, u32)>,
    ) -> Result<Published, String> {
        let userns_base = userns.map(|(_, base)| base);
        let userns = userns.map(|(path, _)| path);
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let (claim, read_only) = if let Some(c) = &v.persistent_volume_claim {
            (c.claim_name.clone(), c.read_only.unwrap_or(false))
        } else if v.ephemeral.is_some() {
            (format!("{pod_name}-{}", v.name), false)
        } else {
            return Err(format!("volume {:?}: not a claim", v.name));
        };
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let pvc = pvcs
            .get_opt(&claim)
            .await
            .map_err(|e| format!("volume {:?}: reading claim {claim:?}: {e}", v.name))?
            .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty() && pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" is not bound yet"))?;
        let pvs: Api<PersistentVolume> = Api::all(client.clone());
        let pv = pvs
            .get(&pv_name)
            .await
            .map_err(|e| format!("volume {:?}: reading PersistentVolume {pv_name:?}: {e}", v.name))?;
        let spec = pv.spec.clone().unwrap_or_default();
        let source = spec
            .csi
            .clone()
            .ok_or_else(|| format!("PersistentVolume {pv_name:?} is not a CSI volume"))?;
        let driver = source.driver.clone();
        let mut c = self.node(&driver).await?;
        let volume_mode = spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into());
        let block = volume_mode == "Block";
        // The attachment control made for this node, when the driver needs one.
        let drivers: Api<CSIDriver> = Api::all(client.clone());
        let driver_spec = drivers.get_opt(&driver).await.ok().flatten().map(|d| d.spec);
        let attach_required = driver_spec.as_ref().and_then(|d| d.attach_required).unwrap_or(true);
        let mut publish_context = HashMap::new();
        if attach_required {
            let name = capability::attachment_name(&source.volume_handle, &driver, node);
            // Control attaches it once the pod is bound here, which is when the node sees the
            // pod too: wait for it, as kubelet's WaitForAttach does, up to its two minutes.
            let vas: Api<VolumeAttachment> = Api::all(client.clone());
            let since = std::time::Instant::now();
            let mut pause = std::time::Duration::from_millis(20);
            loop {
                let va = vas
                    .get_opt(&name)
                    .await
                    .map_err(|e| format!("reading VolumeAttachment {name}: {e}"))?;
                match va.and_then(|va| va.status) {
                    Some(s) if s.attached => {
                        publish_context = s.attachment_metadata.unwrap_or_default().into_iter().collect();
                        break;
                    }
                    Some(s) if s.attach_error.is_some() => {
                        let why = s.attach_error.and_then(|e| e.message).unwrap_or_default();
                        return Err(format!("AttachVolume.Attach failed for volume \"{pv_name}\" : {why}"));
                    }
                    _ if since.elapsed() > ATTACH_WAIT => {
                        return Err(format!(
                            "volume \"{pv_name}\" is not attached to node {node} after {} s",
                            ATTACH_WAIT.as_secs()
                        ));
                    }
                    _ => {}
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(500));
            }
        }
        let modes = spec.access_modes.clone().unwrap_or_default();
        let mount_flags = spec.mount_options.clone().unwrap_or_default();
        let cap = capability::volume_capability(
            &modes,
            &volume_mode,
            source.fs_type.as_deref().unwrap_or(""),
            &mount_flags,
        );
        let context: HashMap<String, String> = source
            .volume_attributes
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let stage_secrets = secrets_of(client, source.node_stage_secret_ref.as_ref(), &pv_name).await?;
        let publish_secrets = secrets_of(client, source.node_publish_secret_ref.as_ref(), &pv_name).await?;
        let dir = pod_dir.join("csi");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let staging = if self.stages(&mut c).await? {
            Some(self.staging_path(&driver, &source.volume_handle))
        } else {
            None
        };
        let published = Published {
            driver: driver.clone(),
            volume_id: source.volume_handle.clone(),
            staging: staging.clone(),
            target: dir.join(&v.name).join(if block { "dev" } else { "mount" }),
            view: if block {
                dir.join(&v.name).join("dev")
            } else {
                pod_dir.join("volumes").join(&v.name)
            },
            namespace: ns.clone(),
            claim: claim.clone(),
            pv: pv_name.clone(),
            block,
            read_only: read_only || source.read_only.unwrap_or(false),
        };
        // Saved first: whatever happens next, teardown knows what to undo.
        let record = dir.join(format!("{}.json", v.name));
        std::fs::write(&record, serde_json::to_vec(&published).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", record.display()))?;
        if let Some(staging) = &staging {
            std::fs::create_dir_all(staging).map_err(|e| format!("{}: {e}", staging.display()))?;
            c.node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: source.volume_handle.clone(),
                publish_context: publish_context.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(cap.clone()),
                volume_context: context.clone(),
                secrets: stage_secrets,
            })
            .await
            .map_err(|s| err(&format!("MountVolume.MountDevice failed for volume \"{pv_name}\""), s))?;
        }
        if let Some(parent) = published.target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        c.node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: source.volume_handle.clone(),
            publish_context,
            staging_target_path: staging.as_ref().map(|s| s.display().to_string()).unwrap_or_default(),
            target_path: published.target.display().to_string(),
            volume_capability: Some(cap),
            readonly: published.read_only,
            volume_context: context,
            secrets: publish_secrets,
        })
        .await
        .map_err(|s| err(&format!("MountVolume.SetUp failed for volume \"{pv_name}\""), s))?;
        if block {
            // The device node is the loop device's own inode: the pod's root gets it, as a
            // device it was given (it is this volume's alone while published).
            if let Some(base) = userns_base {
                rustix::fs::chown(
                    &published.target,
                    Some(rustix::fs::Uid::from_raw(base)),
                    Some(rustix::fs::Gid::from_raw(base)),
                )
                .map_err(|e| format!("volume {:?}: giving the device to the pod: {e}", v.name))?;
            }
            return Ok(published);
        }
        let fs_group = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let policy = driver_spec
            .as_ref()
            .and_then(|d| d.fs_group_policy.clone())
            .unwrap_or_else(|| "ReadWriteOnceWithFSType".into());
        let applies = match policy.as_str() {
            "File" => true,
            "None" => false,
            _ => {
                source.fs_type.as_deref().is_some_and(|f| !f.is_empty())
                    && modes.iter().any(|m| m == "ReadWriteOnce" || m == "ReadWriteOncePod")
            }
        };
        // A read-only volume is left as it is, as kubelet leaves it.
        let applies = applies && !published.read_only;
        if let Some(gid) = fs_group.and_then(|s| s.fs_group).filter(|_| applies) {
            let on_root_mismatch = fs_group.and_then(|s| s.fs_group_change_policy.as_deref()) == Some("OnRootMismatch");
            let ro = read_only || source.read_only.unwrap_or(false);
            // On the driver's mount, not the view: ids there are the pod's own.
            set_volume_ownership(&published.target, gid as u32, ro, on_root_mismatch)
                .map_err(|e| format!("volume {:?}: applying fsGroup {gid}: {e}", v.name))?;
        }
        view(&published.target, &published.view, userns)
            .map_err(|e| format!("volume {:?}: mounting it for the pod: {e}", v.name))?;
        Ok(published)
    }

    /// Undo every CSI volume of a pod: its views, NodeUnpublish, and NodeUnstage for volumes no
    /// other pod of the node still has. Every step is tried; the errors are returned (and the
    /// pod's directory must then stay: a volume may still be mounted in it).
    pub async fn unmount_pod(&self, pods_dir: &Path, pod_dir: &Path) -> Vec<String> {
        let mut errors = Vec::new();
        for (record, p) in records(pod_dir) {
            let _ = rustix::mount::unmount(&p.view, rustix::mount::UnmountFlags::DETACH);
            let mut c = match self.node(&p.driver).await {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if let Err(s) = c
                .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                    volume_id: p.volume_id.clone(),
                    target_path: p.target.display().to_string(),
                })
                .await
            {
                errors.push(err(
                    &format!("UnmountVolume.TearDown failed for volume \"{}\"", p.pv),
                    s,
                ));
                continue;
            }
            // The record goes only once the volume is unstaged too (or another pod of the node
            // still has it): until then the node reports it in use, and control does not detach it.
            if let Some(staging) = &p.staging {
                let others = published(pods_dir)
                    .iter()
                    .any(|o| o.unique_name() == p.unique_name() && o.target != p.target);
                if !others {
                    if let Err(s) = c
                        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                            volume_id: p.volume_id.clone(),
                            staging_target_path: staging.display().to_string(),
                        })
                        .await
                    {
                        errors.push(err(&format!("UnmountDevice failed for volume \"{}\"", p.pv), s));
                        continue;
                    }
                }
            }
            let _ = std::fs::remove_file(&record);
        }
        errors
    }

    /// Grow the filesystem of a volume whose claim waits for it (`FileSystemResizePending`):
    /// NodeExpandVolume, then the claim's capacity is what was allocated.
    pub async fn expand(&self, client: &kube::Client, p: &Published) -> Result<bool, String> {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &p.namespace);
        let Some(pvc) = pvcs.get_opt(&p.claim).await.map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        let status = pvc.status.clone().unwrap_or_default();
        let pending = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "FileSystemResizePending" && c.status == "True");
        if !pending {
            return Ok(false);
        }
        let want = status
            .allocated_resources
            .as_ref()
            .and_then(|r| r.get("storage"))
            .cloned()
            .ok_or("the claim has no allocatedResources")?;
        let bytes = nodeless_types::quantity::parse_quantity(&want.0)
            .map_err(|e| format!("allocatedResources: {e}"))?
            .units_ceil() as i64;
        let mut c = self.node(&p.driver).await?;
        c.node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: p.volume_id.clone(),
            volume_path: p.target.display().to_string(),
            capacity_range: Some(capability::at_least(bytes)),
            staging_target_path: p.staging.as_ref().map(|s| s.display().to_string()).unwrap_or_default(),
            ..Default::default()
        })
        .await
        .map_err(|s| err("NodeExpandVolume", s))?;
        let conditions: Vec<serde_json::Value> = status
            .conditions
            .iter()
            .flatten()
            .filter(|c| c.type_ != "FileSystemResizePending")
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .collect();
        let patch = serde_json::json!({"status": {"capacity": {"storage": want}, "conditions": conditions}});
        pvcs.patch_status(
            &p.claim,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map_err(|e| format!("updating claim {}: {e}", p.claim))?;
        Ok(true)
    }
}

/// A pod's published volumes, from the records beside them.
pub fn records(pod_dir: &Path) -> Vec<(PathBuf, Published)> {
    std::fs::read_dir(pod_dir.join("csi"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let rec = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            Some((p, rec))
        })
        .collect()
}

/// Every volume a pod of the node has published (`node.status.volumesInUse`).
pub fn published(pods_dir: &Path) -> Vec<Published> {
    std::fs::read_dir(pods_dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| records(&e.path()).into_iter().map(|(_, p)| p))
        .collect()
}

/// The unique names of the volumes in use on the node.
pub fn in_use(pods_dir: &Path) -> BTreeSet<String> {
    published(pods_dir).iter().map(Published::unique_name).collect()
}

impl CsiPlugins {
    /// NodeGetVolumeStats of a published volume: its bytes and inodes.
    pub async fn usage(&self, p: &Published) -> Result<crate::metrics::VolumeUsage, String> {
        use csi::volume_usage::Unit;
        let mut c = self.node(&p.driver).await?;
        let out = c
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: p.volume_id.clone(),
                volume_path: p.target.display().to_string(),
                staging_target_path: p.staging.as_ref().map(|s| s.display().to_string()).unwrap_or_default(),
            })
            .await
            .map_err(|s| err("NodeGetVolumeStats", s))?
            .into_inner();
        let mut u = crate::metrics::VolumeUsage::default();
        for x in out.usage {
            if x.unit == Unit::Bytes as i32 {
                (u.capacity_bytes, u.available_bytes, u.used_bytes) = (x.total, x.available, x.used);
            } else if x.unit == Unit::Inodes as i32 {
                (u.inodes, u.inodes_free, u.inodes_used) = (x.total, x.available, x.used);
            }
        }
        Ok(u)
    }
}

/// The file system type and source the mount table gives for the mount at `target`.
pub fn mounted_from(target: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = target.to_string_lossy();
    text.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let point = f.nth(4)?;
        if point != want {
            return None;
        }
        let mut rest = l.split(" - ").nth(1)?.split(' ');
        Some((rest.next()?.to_string(), rest.next()?.to_string()))
    })
}

/// The data of the Secret a PersistentVolume names for a CSI call (`nodePublishSecretRef`,
/// `nodeStageSecretRef`), as kubelet hands it to the driver; none when it names none.
async fn secrets_of(
    client: &kube::Client,
    r: Option<&k8s_openapi::api::core::v1::SecretReference>,
    pv: &str,
) -> Result<HashMap<String, String>, String> {
    let Some(r) = r else {
        return Ok(HashMap::new());
    };
    let name = r.name.clone().unwrap_or_default();
    let ns = r.namespace.clone().unwrap_or_else(|| "default".into());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secrets
        .get_opt(&name)
        .await
        .map_err(|e| format!("reading secret {ns}/{name} of PersistentVolume {pv:?}: {e}"))?
        .ok_or_else(|| format!("secret {ns}/{name} of PersistentVolume {pv:?} not found"))?;
    let mut out: HashMap<String, String> = secret.string_data.unwrap_or_default().into_iter().collect();
    for (k, v) in secret.data.unwrap_or_default() {
        out.insert(k, String::from_utf8_lossy(&v.0).into_owned());
    }
    Ok(out)
}

/// kubelet's fsGroup ownership: every file and directory of the volume gets group `gid` and
/// group read/write (and search), directories the set-group-id bit so new files inherit the
/// group; read-only volumes group read only. `OnRootMismatch` skips the walk when the root
/// already has them. Links are changed, never followed.
pub fn set_volume_ownership(root: &Path, gid: u32, read_only: bool, on_root_mismatch: bool) -> std::io::Result<usize> {
    use rustix::fs::{AtFlags, FileType};
    let mask = if read_only { 0o440 } else { 0o660 };
    if on_root_mismatch {
        let st = rustix::fs::stat(root)?;
        let want = mask | 0o110 | 0o2000;
        if st.st_gid == gid && (st.st_mode as u32) & want == want {
            return Ok(0);
        }
    }
    crate::beneath::walk(root, |dir, name| {
        let flags = if name.is_empty() {
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW
        } else {
            AtFlags::SYMLINK_NOFOLLOW
        };
        let st = rustix::fs::statat(dir, name, flags)?;
        rustix::fs::chownat(dir, name, None, Some(rustix::fs::Gid::from_raw(gid)), flags)?;
        let kind = FileType::from_raw_mode(st.st_mode as _);
        if kind == FileType::Symlink {
            return Ok(false);
        }
        let is_dir = kind == FileType::Directory;
        let mut mode = (st.st_mode as u32 & 0o7777) | mask;
        if is_dir {
            mode |= 0o2000 | 0o110;
        }
        crate::beneath::chmod_no_follow(dir, name, mode)?;
        Ok(is_dir)
    })
}

/// Mount the published `target` at `at` for the pod: idmapped through its user namespace when
/// it has one (so ids on the volume are the pod's own), a plain bind otherwise.
fn view(target: &Path, at: &Path, userns: Option<&Path>) -> std::io::Result<()> {
    use rustix::mount::{MoveMountFlags, OpenTreeFlags};
    std::fs::create_dir_all(at)?;
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        target,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    if let Some(ns) = userns {
        let ns = std::fs::File::open(ns)?;
        composefs_ioctls::mount::mount_setattr_idmap(&tree, &ns)?;
    }
    rustix::mount::move_mount(
        std::os::fd::AsFd::as_fd(&tree),
        c"",
        rustix::fs::CWD,
        at,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_group_reaches_every_entry_and_never_follows_a_link() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("vol");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), b"x").unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"y").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let before = std::fs::metadata(&outside).unwrap();
        let n = set_volume_ownership(&root, 4242, false, false).unwrap();
        assert_eq!(n, 4);
        for p in [root.clone(), root.join("sub"), root.join("sub/f")] {
            let m = std::fs::symlink_metadata(&p).unwrap();
            assert_eq!(m.gid(), 4242, "{}", p.display());
            assert_eq!(m.mode() & 0o060, 0o060, "{}", p.display());
        }
        assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o2000, 0o2000);
        assert_eq!(std::fs::symlink_metadata(root.join("link")).unwrap().gid(), 4242);
        let after = std::fs::metadata(&outside).unwrap();
        assert_eq!((after.gid(), after.mode()), (before.gid(), before.mode()));
        // OnRootMismatch: a root that has it already is not walked again.
        assert_eq!(set_volume_ownership(&root, 4242, false, true).unwrap(), 0);
    }

    #[test]
    fn records_name_what_is_in_use() {
        let d = tempfile::tempdir().unwrap();
        let pod = d.path().join("pod-a");
        std::fs::create_dir_all(pod.join("csi")).unwrap();
        let p = Published {
            driver: "disk.csi.nodeless.io".into(),
            volume_id: "v-1".into(),
            staging: None,
            target: pod.join("csi/data/mount"),
            view: pod.join("volumes/data"),
            namespace: "n".into(),
            claim: "c".into(),
            pv: "pvc-1".into(),
            block: false,
            read_only: false,
        };
        std::fs::write(pod.join("csi/data.json"), serde_json::to_vec(&p).unwrap()).unwrap();
        std::fs::write(pod.join("csi/garbage.json"), b"{").unwrap();
        assert_eq!(records(&pod).len(), 1);
        assert_eq!(
            in_use(d.path()).into_iter().collect::<Vec<_>>(),
            vec!["kubernetes.io/csi/disk.csi.nodeless.io^v-1".to_string()]
        );
    }
}
