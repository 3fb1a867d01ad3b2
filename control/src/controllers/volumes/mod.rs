//! PersistentVolumes and their claims, as kube-controller-manager's PV controller and the CSI
//! sidecars do it together:
//!
//! - **Binding.** A claim naming a volume (`spec.volumeName`) gets that one; otherwise the
//!   smallest Available volume of its class that has its access modes, volume mode, at least
//!   its size and the labels its selector asks for. Both sides are written: the volume's
//!   `claimRef`, the claim's `volumeName`, and phase Bound on each.
//! - **Provisioning.** A claim nothing fits whose class names a driver control knows gets a new
//!   volume through the driver's CreateVolume, named `pvc-<claim uid>` (so a retry is the same
//!   volume), with the class's reclaim policy and mount options. A `WaitForFirstConsumer` class
//!   waits until the scheduler has picked a node for a pod of the claim
//!   (`volume.kubernetes.io/selected-node`). Why a claim waits is an event on it.
//! - **Release and reclaim.** A volume whose claim is gone is Released; with `Delete` it is
//!   deleted through the driver (once no node has it attached) and then its object; with
//!   `Retain` it stays for an administrator. A driver that refuses leaves it Failed, with the
//!   reason.
//! - **Protection.** A deleted claim stays while a pod that is not finished uses it
//!   (`kubernetes.io/pvc-protection`); a deleted volume stays while it is bound
//!   (`kubernetes.io/pv-protection`).
//! - **Expansion.** A bound claim whose request grows (admission checked the class allows it)
//!   is expanded through ControllerExpandVolume; the volume gets the new size; when the driver
//!   says the node must grow the filesystem the claim carries `FileSystemResizePending` until
//!   the node has done it, else its capacity is the new size at once.
//!
//! Attaching volumes to nodes is [`attach`]'s.

pub mod attach;
pub mod csi;
pub mod ephemeral;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use nodeless_csi::capability;
use serde_json::{Value, json};

use super::{Outcome, event, is_deleting, pod_active, split_key, str_at};
use crate::admission::storage::{PV_PROTECTION, PVC_PROTECTION};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::store::{Event, Stored};

pub use csi::Drivers;

pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const STORAGE_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// How soon a claim waiting for something outside the store (a class made later, a driver
/// that failed) is looked at again.
const RETRY: Duration = Duration::from_secs(10);
const COMPONENT: &str = "persistentvolume-controller";

fn claims(client: &LocalClient) -> std::sync::Arc<crate::api::registry::Served> {
    client.served("", "persistentvolumeclaims")
}

fn volumes(client: &LocalClient) -> std::sync::Arc<crate::api::registry::Served> {
    client.served("", "persistentvolumes")
}

/// The secret references a StorageClass may give, as the external provisioner reads them:
/// `csi.storage.k8s.io/<kind>-secret-{name,namespace}` → the PV's `spec.csi.<field>`.
const SECRET_REFS: [(&str, &str); 4] = [
    ("node-publish", "nodePublishSecretRef"),
    ("node-stage", "nodeStageSecretRef"),
    ("controller-publish", "controllerPublishSecretRef"),
    ("controller-expand", "controllerExpandSecretRef"),
];

/// A StorageClass's secret reference of `kind` for a claim, its templates filled
/// (`${pvc.namespace}`, `${pvc.name}`, `${pv.name}`); `None` when the class names none.
fn secret_ref(parameters: &BTreeMap<String, String>, kind: &str, pvc: &Value, pv: &str) -> Option<(String, String)> {
    let fill = |s: &str| {
        s.replace("${pvc.namespace}", str_at(pvc, "/metadata/namespace"))
            .replace("${pvc.name}", str_at(pvc, "/metadata/name"))
            .replace("${pv.name}", pv)
    };
    let name = parameters.get(&format!("csi.storage.k8s.io/{kind}-secret-name"))?;
    let ns = parameters
        .get(&format!("csi.storage.k8s.io/{kind}-secret-namespace"))
        .map(String::as_str)
        .unwrap_or("default");
    Some((fill(ns), fill(name)))
}

/// The data of Secret `ns/name`, decoded (what a CSI call carries as `secrets`).
fn secret_data(client: &LocalClient, ns: &str, name: &str) -> Result<HashMap<String, String>, String> {
    use base64::Engine;
    let secret = client
        .get(&client.served("", "secrets"), Some(ns), name)
        .ok_or_else(|| format!("secret \"{ns}/{name}\" not found"))?;
    let mut out = HashMap::new();
    for (k, v) in secret.obj.get("data").and_then(Value::as_object).into_iter().flatten() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .map_err(|e| format!("secret \"{ns}/{name}\" key {k:?}: {e}"))?;
        out.insert(k.clone(), String::from_utf8_lossy(&bytes).into_owned());
    }
    Ok(out)
}

fn annotation<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn bytes_of(q: Option<&Value>) -> Option<i64> {
    crate::admission::storage::quantity_of(q).map(|q| q.units_ceil() as i64)
}

/// The size a claim asks for, in bytes.
fn requested(pvc: &Value) -> i64 {
    bytes_of(pvc.pointer("/spec/resources/requests/storage")).unwrap_or(0)
}

fn class_of(obj: &Value) -> &str {
    str_at(obj, "/spec/storageClassName")
}

fn volume_mode(obj: &Value) -> &str {
    match str_at(obj, "/spec/volumeMode") {
        "" => "Filesystem",
        m => m,
    }
}

/// Whether a pod's volumes name the claim.
fn uses_claim(pod: &Value, claim: &str) -> bool {
    claim_names(pod).iter().any(|c| c == claim)
}

/// The claims a pod's volumes name (generic ephemeral volumes make `<pod>-<volume>`).
pub fn claim_names(pod: &Value) -> Vec<String> {
    let pod_name = str_at(pod, "/metadata/name");
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            if let Some(c) = v.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str) {
                Some(c.to_string())
            } else if v.get("ephemeral").is_some() {
                Some(format!("{pod_name}-{}", str_at(v, "/name")))
            } else {
                None
            }
        })
        .collect()
}

/// Events a claim or volume gets only when what they say changes: the controller looks at a
/// waiting claim every few seconds, and `kubectl describe` should show one line, not hundreds.
fn once(obj: &Value, reason: &str, message: &str) -> bool {
    static LAST: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let said = format!("{reason}\n{message}");
    let mut last = LAST.lock().unwrap();
    if last.len() > 10_000 {
        last.clear();
    }
    last.insert(super::uid(obj).to_string(), said.clone()).as_deref() != Some(said.as_str())
}

async fn note(client: &LocalClient, obj: &Value, ty: &str, reason: &str, message: &str) {
    if once(obj, reason, message) {
        event(client, obj, ty, reason, message, COMPONENT).await;
    }
}

pub fn interested(client: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with("/core/persistentvolumeclaims/") {
        let mut keys = vec![ev.key.clone()];
        // A claim gone or changed: the volume bound to it.
        for obj in std::iter::once(&ev.obj).chain(ev.prev.iter()) {
            let v = str_at(obj, "/spec/volumeName");
            if !v.is_empty() {
                keys.push(volumes(client).key(None, v));
            }
        }
        return keys;
    }
    if ev.key.starts_with("/core/persistentvolumes/") {
        let mut keys = vec![ev.key.clone()];
        let ns = str_at(&ev.obj, "/spec/claimRef/namespace");
        let name = str_at(&ev.obj, "/spec/claimRef/name");
        if !name.is_empty() {
            keys.push(claims(client).key(Some(ns), name));
        } else {
            // A volume made Available: the claims still waiting may fit it.
            keys.extend(pending_claims(client));
        }
        return keys;
    }
    if ev.key.starts_with("/storage.k8s.io/storageclasses/") {
        return pending_claims(client);
    }
    // A pod gone or finished: a deleted claim it held may go now.
    if ev.key.starts_with("/core/pods/") {
        let ns = str_at(&ev.obj, "/metadata/namespace");
        return claim_names(&ev.obj)
            .into_iter()
            .map(|c| claims(client).key(Some(ns), &c))
            .collect();
    }
    if ev.key.starts_with("/storage.k8s.io/volumeattachments/") {
        let pv = str_at(&ev.obj, "/spec/source/persistentVolumeName");
        return vec![volumes(client).key(None, pv)];
    }
    Vec::new()
}

fn pending_claims(client: &LocalClient) -> Vec<String> {
    let c = claims(client);
    super::keys_where(client, &c, None, &|p| str_at(p, "/status/phase") != "Bound")
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    let mut keys = super::all_keys(client, "", "persistentvolumeclaims");
    keys.extend(super::all_keys(client, "", "persistentvolumes"));
    keys
}

pub async fn reconcile(client: LocalClient, drivers: Drivers, key: String) -> Outcome {
    if key.starts_with("/core/persistentvolumes/") {
        return reconcile_volume(&client, &drivers, &key).await;
    }
    reconcile_claim(&client, &drivers, &key).await
}

fn remove_finalizer(obj: &Value, f: &str) -> Option<Value> {
    let list = obj.pointer("/metadata/finalizers").and_then(Value::as_array)?;
    if !list.iter().any(|x| x == f) {
        return None;
    }
    let mut new = obj.clone();
    new["metadata"]["finalizers"] = json!(list.iter().filter(|x| *x != f).collect::<Vec<_>>());
    Some(new)
}

async fn reconcile_claim(client: &LocalClient, drivers: &Drivers, key: &str) -> Outcome {
    let (ns, name) = split_key(key);
    let ns = ns.unwrap_or_default();
    let pvcs = claims(client);
    let Some(pvc) = client.get(&pvcs, Some(ns), name) else {
        return Ok(None);
    };
    if is_deleting(&pvc.obj) {
        let pods = client.served("", "pods");
        let in_use = !client
            .list(&pods, Some(ns), &|p| {
                uses_claim(p, name) && !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed")
            })
            .is_empty();
        if !in_use {
            if let Some(new) = remove_finalizer(&pvc.obj, PVC_PROTECTION) {
                client.update(&pvcs, &pvc, new).await?;
            }
        }
        return Ok(None);
    }
    let volume_name = str_at(&pvc.obj, "/spec/volumeName").to_string();
    if !volume_name.is_empty() {
        return bound_claim(client, drivers, &pvc, &volume_name).await;
    }
    if let Some(pv) = find_volume(client, &pvc.obj) {
        bind(client, &pvc, &pv).await?;
        return Ok(None);
    }
    // Made before there was a default class: it gets the default now, as Kubernetes assigns
    // one retroactively (an explicit "" stays classless).
    if pvc.obj.pointer("/spec/storageClassName").is_none_or(Value::is_null) {
        if let Some(class) = crate::admission::storage::default_class(&client.state.store) {
            let mut new = (*pvc.obj).clone();
            new["spec"]["storageClassName"] = json!(class);
            client.update(&pvcs, &pvc, new).await?;
            return Ok(None);
        }
    }
    provision(client, drivers, &pvc).await
}

/// A claim that names its volume: bind it if it is not yet, report it Lost if the volume is
/// gone, and expand it when its request grew.
async fn bound_claim(client: &LocalClient, drivers: &Drivers, pvc: &Stored, volume_name: &str) -> Outcome {
    let pvs = volumes(client);
    let Some(pv) = client.get(&pvs, None, volume_name) else {
        if str_at(&pvc.obj, "/status/phase") == "Bound" {
            let mut new = (*pvc.obj).clone();
            new["status"]["phase"] = json!("Lost");
            client.update_status(&claims(client), pvc, new).await?;
            note(
                client,
                &pvc.obj,
                "Warning",
                "ClaimLost",
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
            )
            .await;
        } else {
            let msg = format!("volume \"{volume_name}\" not found");
            note(client, &pvc.obj, "Warning", "FailedBinding", &msg).await;
        }
        return Ok(Some(RETRY));
    };
    let claimed_by = str_at(&pv.obj, "/spec/claimRef/uid");
    let ours = claimed_by == super::uid(&pvc.obj);
    if !ours {
        let free = str_at(&pv.obj, "/spec/claimRef/name").is_empty()
            || (str_at(&pv.obj, "/spec/claimRef/name") == str_at(&pvc.obj, "/metadata/name")
                && str_at(&pv.obj, "/spec/claimRef/namespace") == str_at(&pvc.obj, "/metadata/namespace")
                && claimed_by.is_empty());
        if free {
            if let Some(why) = unfit(&pvc.obj, &pv.obj) {
                let msg = format!("Cannot bind to requested volume \"{volume_name}\": {why}");
                note(client, &pvc.obj, "Warning", "VolumeMismatch", &msg).await;
                return Ok(Some(RETRY));
            }
            bind(client, pvc, &pv).await?;
            return Ok(None);
        }
        let msg = format!("volume \"{volume_name}\" already bound to a different claim.");
        note(client, &pvc.obj, "Warning", "FailedBinding", &msg).await;
        return Ok(Some(RETRY));
    }
    if str_at(&pvc.obj, "/status/phase") != "Bound" {
        bind(client, pvc, &pv).await?;
        return Ok(None);
    }
    expand(client, drivers, pvc, &pv).await
}

/// Why a volume cannot serve a claim, or None.
fn unfit(pvc: &Value, pv: &Value) -> Option<String> {
    if class_of(pvc) != class_of(pv) {
        return Some("storageClassName does not match".into());
    }
    let have = strings(pv.pointer("/spec/accessModes"));
    if !strings(pvc.pointer("/spec/accessModes"))
        .iter()
        .all(|m| have.contains(m))
    {
        return Some("incompatible accessMode".into());
    }
    if volume_mode(pvc) != volume_mode(pv) {
        return Some("incompatible volumeMode".into());
    }
    if bytes_of(pv.pointer("/spec/capacity/storage")).unwrap_or(0) < requested(pvc) {
        return Some("requested PV is too small".into());
    }
    if let Some(sel) = pvc.pointer("/spec/selector").filter(|s| s.is_object()) {
        if !crate::api::select::LabelSelector::from_object(sel).matches_labels(pv.pointer("/metadata/labels")) {
            return Some("the volume's labels do not match the claim's selector".into());
        }
    }
    None
}

/// The smallest Available volume that fits the claim (static binding); pre-bound volumes
/// (a `claimRef` naming this claim) first.
fn find_volume(client: &LocalClient, pvc: &Value) -> Option<Stored> {
    let ns = str_at(pvc, "/metadata/namespace");
    let name = str_at(pvc, "/metadata/name");
    let uid = super::uid(pvc);
    let all = client.list(&volumes(client), None, &|pv| !is_deleting(pv));
    let prebound = |pv: &Value| {
        let claimed = str_at(pv, "/spec/claimRef/uid");
        str_at(pv, "/spec/claimRef/name") == name
            && str_at(pv, "/spec/claimRef/namespace") == ns
            && (claimed.is_empty() || claimed == uid)
    };
    if let Some(pv) = all.iter().find(|pv| prebound(&pv.obj) && unfit(pvc, &pv.obj).is_none()) {
        return Some(pv.clone());
    }
    all.into_iter()
        .filter(|pv| str_at(&pv.obj, "/spec/claimRef/name").is_empty())
        .filter(|pv| str_at(&pv.obj, "/status/phase") == "Available")
        .filter(|pv| unfit(pvc, &pv.obj).is_none())
        .min_by_key(|pv| bytes_of(pv.obj.pointer("/spec/capacity/storage")).unwrap_or(i64::MAX))
}

/// Bind both sides: the volume's claimRef and phase first (so no other claim takes it), then
/// the claim's volumeName and status.
async fn bind(client: &LocalClient, pvc: &Stored, pv: &Stored) -> Result<(), ApiError> {
    let pvs = volumes(client);
    let pvcs = claims(client);
    let mut pv_now = pv.clone();
    if str_at(&pv.obj, "/spec/claimRef/uid") != super::uid(&pvc.obj) {
        let mut new = (*pv.obj).clone();
        new["spec"]["claimRef"] = json!({
            "kind": "PersistentVolumeClaim", "apiVersion": "v1",
            "namespace": str_at(&pvc.obj, "/metadata/namespace"),
            "name": str_at(&pvc.obj, "/metadata/name"),
            "uid": super::uid(&pvc.obj),
            "resourceVersion": pvc.rev.to_string(),
        });
        if annotation(&pv.obj, PROVISIONED_BY).is_empty() || str_at(&pv.obj, "/spec/claimRef/name").is_empty() {
            new["metadata"]["annotations"][BOUND_BY_CONTROLLER] = json!("yes");
        }
        let stored = client.update(&pvs, pv, new).await?;
        pv_now = client
            .get(&pvs, None, str_at(&stored, "/metadata/name"))
            .ok_or_else(|| client.not_found(&pvs, str_at(&stored, "/metadata/name")))?;
    }
    if str_at(&pv_now.obj, "/status/phase") != "Bound" {
        let mut new = (*pv_now.obj).clone();
        new["status"]["phase"] = json!("Bound");
        client.update_status(&pvs, &pv_now, new).await?;
    }
    let pv_name = str_at(&pv.obj, "/metadata/name");
    let mut claim = pvc.clone();
    if str_at(&pvc.obj, "/spec/volumeName") != pv_name || annotation(&pvc.obj, BIND_COMPLETED).is_empty() {
        let mut new = (*pvc.obj).clone();
        new["spec"]["volumeName"] = json!(pv_name);
        new["metadata"]["annotations"][BIND_COMPLETED] = json!("yes");
        new["metadata"]["annotations"][BOUND_BY_CONTROLLER] = json!("yes");
        client.update(&pvcs, pvc, new).await?;
        claim = client
            .get(
                &pvcs,
                Some(str_at(&pvc.obj, "/metadata/namespace")),
                str_at(&pvc.obj, "/metadata/name"),
            )
            .ok_or_else(|| client.not_found(&pvcs, str_at(&pvc.obj, "/metadata/name")))?;
    }
    let mut new = (*claim.obj).clone();
    new["status"]["phase"] = json!("Bound");
    new["status"]["accessModes"] = pv.obj.pointer("/spec/accessModes").cloned().unwrap_or(json!([]));
    new["status"]["capacity"] =
        json!({"storage": pv.obj.pointer("/spec/capacity/storage").cloned().unwrap_or(json!("0"))});
    if new != *claim.obj {
        client.update_status(&pvcs, &claim, new).await?;
    }
    Ok(())
}

/// Make a volume for a claim nothing fits, through its class's driver.
async fn provision(client: &LocalClient, drivers: &Drivers, pvc: &Stored) -> Outcome {
    let class_name = class_of(&pvc.obj).to_string();
    if class_name.is_empty() {
        note(
            client,
            &pvc.obj,
            "Normal",
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set",
        )
        .await;
        return Ok(None);
    }
    let Some(class) = client.get(&client.served("storage.k8s.io", "storageclasses"), None, &class_name) else {
        let msg = format!("storageclass.storage.k8s.io \"{class_name}\" not found");
        note(client, &pvc.obj, "Warning", "ProvisioningFailed", &msg).await;
        return Ok(Some(RETRY));
    };
    let driver = str_at(&class.obj, "/provisioner").to_string();
    let wait_for_consumer = str_at(&class.obj, "/volumeBindingMode") == "WaitForFirstConsumer";
    let node = annotation(&pvc.obj, SELECTED_NODE).to_string();
    if wait_for_consumer && node.is_empty() {
        note(
            client,
            &pvc.obj,
            "Normal",
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding",
        )
        .await;
        return Ok(None);
    }
    if !drivers.knows(&driver) {
        let msg = format!(
            "Waiting for a volume to be created either by the external provisioner '{driver}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
        );
        note(client, &pvc.obj, "Normal", "ExternalProvisioning", &msg).await;
        return Ok(Some(RETRY));
    }
    let pvcs = claims(client);
    if annotation(&pvc.obj, STORAGE_PROVISIONER) != driver {
        let mut new = (*pvc.obj).clone();
        new["metadata"]["annotations"][STORAGE_PROVISIONER] = json!(driver);
        new["metadata"]["annotations"][STORAGE_PROVISIONER_BETA] = json!(driver);
        client.update(&pvcs, pvc, new).await?;
        return Ok(None);
    }
    let ns = str_at(&pvc.obj, "/metadata/namespace");
    let claim = str_at(&pvc.obj, "/metadata/name");
    let pv_name = capability::provisioned_name(super::uid(&pvc.obj));
    let pvs = volumes(client);
    // Made already (a retry after the volume's object was written): bind to it.
    if let Some(pv) = client.get(&pvs, None, &pv_name) {
        bind(client, pvc, &pv).await?;
        return Ok(None);
    }
    note(
        client,
        &pvc.obj,
        "Normal",
        "Provisioning",
        &format!("External provisioner is provisioning volume for claim \"{ns}/{claim}\""),
    )
    .await;
    let modes = strings(pvc.obj.pointer("/spec/accessModes"));
    let parameters: BTreeMap<String, String> = class
        .obj
        .get("parameters")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // `csi.storage.k8s.io/fstype` is the external provisioner's spelling; the disk driver's own
    // parameter is `fsType`.
    let fs_type = parameters
        .get("csi.storage.k8s.io/fstype")
        .or_else(|| parameters.get("fsType"))
        .cloned()
        .unwrap_or_default();
    let mount_options = strings(class.obj.get("mountOptions"));
    let cap = capability::volume_capability(&modes, volume_mode(&pvc.obj), &fs_type, &mount_options);
    let provisioner_secret = secret_ref(&parameters, "provisioner", &pvc.obj, &pv_name);
    let secrets = match &provisioner_secret {
        Some((sns, sname)) => match secret_data(client, sns, sname) {
            Ok(d) => d,
            Err(why) => {
                let msg = format!("failed to provision volume with StorageClass \"{class_name}\": {why}");
                note(client, &pvc.obj, "Warning", "ProvisioningFailed", &msg).await;
                return Ok(Some(RETRY));
            }
        },
        None => HashMap::new(),
    };
    let refs: Vec<(&str, (String, String))> = SECRET_REFS
        .iter()
        .filter_map(|(kind, field)| secret_ref(&parameters, kind, &pvc.obj, &pv_name).map(|r| (*field, r)))
        .collect();
    let driver_params: BTreeMap<String, String> = parameters
        .into_iter()
        .filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/"))
        .collect();
    let volume = match drivers
        .create(&driver, &pv_name, requested(&pvc.obj), cap, driver_params, secrets)
        .await
    {
        Ok(v) => v,
        Err(why) => {
            let msg = format!("failed to provision volume with StorageClass \"{class_name}\": {why}");
            note(client, &pvc.obj, "Warning", "ProvisioningFailed", &msg).await;
            return Ok(Some(RETRY));
        }
    };
    let mut attributes: serde_json::Map<String, Value> = volume
        .volume_context
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    attributes.insert(
        "storage.kubernetes.io/csiProvisionerIdentity".into(),
        json!(format!("nodeless-{driver}")),
    );
    let mut csi_source = json!({"driver": driver, "volumeHandle": volume.volume_id, "volumeAttributes": attributes});
    for (field, (sns, sname)) in refs {
        csi_source[field] = json!({"name": sname, "namespace": sns});
    }
    let (deletion_name, deletion_ns) = provisioner_secret.map(|(ns, name)| (name, ns)).unwrap_or_default();
    if volume_mode(&pvc.obj) != "Block" {
        csi_source["fsType"] = json!(if fs_type.is_empty() { "ext4" } else { fs_type.as_str() });
    }
    let mut pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: driver,
            "volume.kubernetes.io/provisioner-deletion-secret-name": deletion_name,
            "volume.kubernetes.io/provisioner-deletion-secret-namespace": deletion_ns}},
        "spec": {
            "capacity": {"storage": capability::quantity(volume.capacity_bytes.max(requested(&pvc.obj)))},
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": match str_at(&class.obj, "/reclaimPolicy") { "" => "Delete", p => p },
            "storageClassName": class_name,
            "volumeMode": volume_mode(&pvc.obj),
            "csi": csi_source,
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns, "name": claim,
                "uid": super::uid(&pvc.obj), "resourceVersion": pvc.rev.to_string()},
        },
    });
    if !mount_options.is_empty() {
        pv["spec"]["mountOptions"] = json!(mount_options);
    }
    let created = client.create(&pvs, None, pv).await?;
    note(
        client,
        &pvc.obj,
        "Normal",
        "ProvisioningSucceeded",
        &format!("Successfully provisioned volume {pv_name}"),
    )
    .await;
    let pv = client
        .get(&pvs, None, str_at(&created, "/metadata/name"))
        .ok_or_else(|| client.not_found(&pvs, &pv_name))?;
    bind(client, pvc, &pv).await?;
    Ok(None)
}

/// Grow a bound claim's volume when its request is larger than what it has.
async fn expand(client: &LocalClient, drivers: &Drivers, pvc: &Stored, pv: &Stored) -> Outcome {
    let want = requested(&pvc.obj);
    let has = bytes_of(pv.obj.pointer("/spec/capacity/storage")).unwrap_or(0);
    let pvcs = claims(client);
    if want <= has {
        // The volume is as large as asked: the claim's capacity follows once no node still has
        // to grow its filesystem.
        let pending = pvc
            .obj
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| str_at(c, "/type") == "FileSystemResizePending"));
        let shown = bytes_of(pvc.obj.pointer("/status/capacity/storage")).unwrap_or(0);
        if !pending && shown < has {
            let mut new = (*pvc.obj).clone();
            new["status"]["capacity"]["storage"] =
                pv.obj.pointer("/spec/capacity/storage").cloned().unwrap_or(json!("0"));
            client.update_status(&pvcs, pvc, new).await?;
        }
        return Ok(None);
    }
    let driver = str_at(&pv.obj, "/spec/csi/driver").to_string();
    let handle = str_at(&pv.obj, "/spec/csi/volumeHandle").to_string();
    if !drivers.knows(&driver) {
        let msg = format!(
            "waiting for an external controller to expand this PVC (driver {driver:?} is not served by this control plane)"
        );
        note(client, &pvc.obj, "Normal", "ExternalExpanding", &msg).await;
        return Ok(Some(RETRY));
    }
    note(
        client,
        &pvc.obj,
        "Normal",
        "Resizing",
        &format!(
            "External resizer is resizing volume {}",
            str_at(&pv.obj, "/metadata/name")
        ),
    )
    .await;
    let cap = capability::volume_capability(
        &strings(pv.obj.pointer("/spec/accessModes")),
        volume_mode(&pv.obj),
        str_at(&pv.obj, "/spec/csi/fsType"),
        &strings(pv.obj.pointer("/spec/mountOptions")),
    );
    let (bytes, node_expansion) = match drivers.expand(&driver, &handle, want, cap).await {
        Ok(r) => r,
        Err(why) => {
            let msg = format!(
                "resize volume \"{}\" by resizer \"{driver}\" failed: {why}",
                str_at(&pv.obj, "/metadata/name")
            );
            note(client, &pvc.obj, "Warning", "VolumeResizeFailed", &msg).await;
            return Ok(Some(RETRY));
        }
    };
    let pvs = volumes(client);
    let mut new_pv = (*pv.obj).clone();
    new_pv["spec"]["capacity"]["storage"] = json!(capability::quantity(bytes));
    client.update(&pvs, pv, new_pv).await?;
    let mut new = (*pvc.obj).clone();
    new["status"]["allocatedResources"] = json!({"storage": capability::quantity(bytes)});
    let mut conds: Vec<Value> = new
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !matches!(str_at(c, "/type"), "Resizing" | "FileSystemResizePending"))
        .collect();
    if node_expansion && volume_mode(&pv.obj) != "Block" {
        conds.push(json!({"type": "FileSystemResizePending", "status": "True",
            "lastTransitionTime": crate::api::objects::now_rfc3339(),
            "message": "Waiting for user to (re-)start a pod to finish file system resize of volume on node."}));
    } else {
        new["status"]["capacity"]["storage"] = json!(capability::quantity(bytes));
    }
    new["status"]["conditions"] = json!(conds);
    client.update_status(&pvcs, pvc, new).await?;
    note(
        client,
        &pvc.obj,
        "Normal",
        if node_expansion {
            "FileSystemResizeRequired"
        } else {
            "VolumeResizeSuccessful"
        },
        &if node_expansion {
            "Require file system resize of volume on node".to_string()
        } else {
            format!(
                "resize volume \"{}\" by resizer \"{driver}\" succeeded",
                str_at(&pv.obj, "/metadata/name")
            )
        },
    )
    .await;
    Ok(None)
}

async fn set_volume_phase(
    client: &LocalClient,
    pv: &Stored,
    phase: &str,
    message: Option<&str>,
) -> Result<(), ApiError> {
    if str_at(&pv.obj, "/status/phase") == phase && message.is_none_or(|m| str_at(&pv.obj, "/status/message") == m) {
        return Ok(());
    }
    let mut new = (*pv.obj).clone();
    new["status"]["phase"] = json!(phase);
    match message {
        Some(m) => new["status"]["message"] = json!(m),
        None => {
            if let Some(s) = new.get_mut("status").and_then(Value::as_object_mut) {
                s.remove("message");
            }
        }
    }
    new["status"]["lastPhaseTransitionTime"] = json!(crate::api::objects::now_rfc3339());
    client.update_status(&volumes(client), pv, new).await.map(|_| ())
}

async fn reconcile_volume(client: &LocalClient, drivers: &Drivers, key: &str) -> Outcome {
    let (_, name) = split_key(key);
    let pvs = volumes(client);
    let Some(pv) = client.get(&pvs, None, name) else {
        return Ok(None);
    };
    let claim_ns = str_at(&pv.obj, "/spec/claimRef/namespace");
    let claim_name = str_at(&pv.obj, "/spec/claimRef/name");
    let claim_uid = str_at(&pv.obj, "/spec/claimRef/uid");
    let claim = if claim_name.is_empty() {
        None
    } else {
        client.get(&claims(client), Some(claim_ns), claim_name)
    };
    let claim_alive = claim
        .as_ref()
        .is_some_and(|c| claim_uid.is_empty() || super::uid(&c.obj) == claim_uid);
    if is_deleting(&pv.obj) {
        // pv-protection: the object goes once no claim holds it.
        if !claim_alive || str_at(&pv.obj, "/status/phase") != "Bound" {
            if let Some(new) = remove_finalizer(&pv.obj, PV_PROTECTION) {
                client.update(&pvs, &pv, new).await?;
            }
        }
        return Ok(None);
    }
    // No claim, or pre-bound by its author to a claim that has not taken it yet (no uid: the
    // claim may not even exist yet): Available, never released, never deleted.
    if claim_name.is_empty() || claim_uid.is_empty() {
        let points_back = claim
            .as_ref()
            .is_some_and(|c| str_at(&c.obj, "/spec/volumeName") == name);
        if !points_back {
            set_volume_phase(client, &pv, "Available", None).await?;
        }
        return Ok(None);
    }
    if claim_alive {
        // Bound once the claim points back (the claim's reconcile writes both sides).
        let points_back = claim
            .as_ref()
            .is_some_and(|c| str_at(&c.obj, "/spec/volumeName") == name);
        if points_back {
            set_volume_phase(client, &pv, "Bound", None).await?;
        } else if claim_uid.is_empty() {
            // Pre-bound by its author to a claim that has not taken it yet.
            set_volume_phase(client, &pv, "Available", None).await?;
        }
        return Ok(None);
    }
    // The claim is gone: released, then reclaimed as the policy says (a volume whose deletion
    // failed stays Failed, and the deletion is tried again).
    if str_at(&pv.obj, "/status/phase") != "Failed" {
        set_volume_phase(client, &pv, "Released", None).await?;
    }
    if str_at(&pv.obj, "/spec/persistentVolumeReclaimPolicy") != "Delete" {
        return Ok(None);
    }
    let driver = str_at(&pv.obj, "/spec/csi/driver").to_string();
    if !drivers.knows(&driver) {
        return Ok(None);
    }
    // A volume still attached somewhere is deleted once it is detached.
    let attached = client
        .list(&client.served("storage.k8s.io", "volumeattachments"), None, &|va| {
            str_at(va, "/spec/source/persistentVolumeName") == name
        })
        .len();
    if attached > 0 {
        return Ok(Some(Duration::from_secs(2)));
    }
    let pv = client
        .get(&pvs, None, name)
        .ok_or_else(|| client.not_found(&pvs, name))?;
    // The provisioner's secret, as recorded on the volume when it was made.
    let secrets = match (
        annotation(&pv.obj, "volume.kubernetes.io/provisioner-deletion-secret-namespace"),
        annotation(&pv.obj, "volume.kubernetes.io/provisioner-deletion-secret-name"),
    ) {
        (_, "") => Ok(HashMap::new()),
        (sns, sname) => secret_data(client, sns, sname),
    };
    let deleted = match secrets {
        Ok(secrets) => {
            drivers
                .delete(&driver, str_at(&pv.obj, "/spec/csi/volumeHandle"), secrets)
                .await
        }
        Err(why) => Err(why),
    };
    if let Err(why) = deleted {
        let msg = format!("rpc error deleting volume {name}: {why}");
        note(client, &pv.obj, "Warning", "VolumeFailedDelete", &msg).await;
        set_volume_phase(client, &pv, "Failed", Some(&msg)).await?;
        return Ok(Some(RETRY));
    }
    // The volume is gone: its object too (pv-protection lets it go, it is not bound).
    client.delete(&pvs, None, name, None).await?;
    if let Some(pv) = client.get(&pvs, None, name) {
        if let Some(new) = remove_finalizer(&pv.obj, PV_PROTECTION) {
            client.update(&pvs, &pv, new).await?;
        }
    }
    Ok(None)
}

/// Whether a pod holds a claim: a pod not finished uses it.
pub fn pod_holds(pod: &Value, claim: &str) -> bool {
    pod_active(pod) && uses_claim(pod, claim)
}

/// What a pod's claims say about scheduling it, as kube-scheduler's VolumeBinding plugin decides.
#[derive(Debug)]
pub enum Scheduling {
    /// Every claim is bound (or the pod has none): bind the pod.
    Ready,
    /// Some claims wait for their first consumer: they are provisioned on the node chosen, then
    /// the pod is bound there. Holds the claims, and the node already chosen, if any.
    WaitForVolumes(Vec<Stored>),
    /// The pod cannot go anywhere yet, with the scheduler's reason.
    Unschedulable(String),
}

impl Scheduling {
    /// The node a pod's waiting claims were provisioned for.
    pub fn chosen_node(&self) -> Option<&str> {
        match self {
            Scheduling::WaitForVolumes(claims) => claims
                .iter()
                .map(|c| annotation(&c.obj, SELECTED_NODE))
                .find(|n| !n.is_empty()),
            _ => None,
        }
    }
}

pub fn scheduling(client: &LocalClient, pod: &Value) -> Scheduling {
    let ns = str_at(pod, "/metadata/namespace");
    let pvcs = claims(client);
    let classes = client.served("storage.k8s.io", "storageclasses");
    let mut waiting = Vec::new();
    let pod_name = str_at(pod, "/metadata/name");
    let ephemeral: Vec<String> = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("ephemeral").is_some())
        .map(|v| format!("{pod_name}-{}", str_at(v, "/name")))
        .collect();
    for name in claim_names(pod) {
        let Some(c) = client.get(&pvcs, Some(ns), &name) else {
            return Scheduling::Unschedulable(format!("persistentvolumeclaim \"{name}\" not found"));
        };
        if ephemeral.contains(&name) && !super::owned_by(&c.obj, super::uid(pod)) {
            return Scheduling::Unschedulable(format!(
                "PVC {ns}/{name} was not created for pod {ns}/{pod_name} (pod is not owner)"
            ));
        }
        if is_deleting(&c.obj) {
            return Scheduling::Unschedulable(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        if strings(c.obj.pointer("/spec/accessModes"))
            .iter()
            .any(|m| m == "ReadWriteOncePod")
        {
            let pods = client.served("", "pods");
            let me = super::uid(pod);
            let other = client.list(&pods, Some(ns), &|p| {
                super::uid(p) != me && pod_holds(p, &name) && !str_at(p, "/spec/nodeName").is_empty()
            });
            if !other.is_empty() {
                return Scheduling::Unschedulable(format!(
                    "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode (claim \"{name}\")"
                ));
            }
        }
        if str_at(&c.obj, "/status/phase") == "Bound" {
            continue;
        }
        let wait_for_consumer = client
            .get(&classes, None, class_of(&c.obj))
            .is_some_and(|sc| str_at(&sc.obj, "/volumeBindingMode") == "WaitForFirstConsumer");
        if !wait_for_consumer {
            return Scheduling::Unschedulable("pod has unbound immediate PersistentVolumeClaims".into());
        }
        waiting.push(c);
    }
    if waiting.is_empty() {
        Scheduling::Ready
    } else {
        Scheduling::WaitForVolumes(waiting)
    }
}

/// Mark the waiting claims for provisioning on `node` (`volume.kubernetes.io/selected-node`).
pub async fn select_node(client: &LocalClient, waiting: &[Stored], node: &str) -> Result<(), ApiError> {
    let pvcs = claims(client);
    for c in waiting {
        if annotation(&c.obj, SELECTED_NODE) == node {
            continue;
        }
        let mut new = (*c.obj).clone();
        new["metadata"]["annotations"][SELECTED_NODE] = json!(node);
        client.update(&pvcs, c, new).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(class: &str, size: &str, modes: &[&str], labels: Value) -> Value {
        json!({"metadata": {"name": "v", "labels": labels},
            "spec": {"storageClassName": class, "capacity": {"storage": size}, "accessModes": modes}})
    }

    fn pvc(class: &str, size: &str, modes: &[&str]) -> Value {
        json!({"metadata": {"name": "c", "namespace": "n"},
            "spec": {"storageClassName": class, "resources": {"requests": {"storage": size}}, "accessModes": modes}})
    }

    #[test]
    fn volumes_fit_claims_by_class_size_modes_and_labels() {
        let claim = pvc("fast", "1Gi", &["ReadWriteOnce"]);
        assert_eq!(
            unfit(
                &claim,
                &pv("fast", "2Gi", &["ReadWriteOnce", "ReadOnlyMany"], json!({}))
            ),
            None
        );
        assert_eq!(
            unfit(&claim, &pv("slow", "2Gi", &["ReadWriteOnce"], json!({}))).as_deref(),
            Some("storageClassName does not match")
        );
        assert_eq!(
            unfit(&claim, &pv("fast", "512Mi", &["ReadWriteOnce"], json!({}))).as_deref(),
            Some("requested PV is too small")
        );
        assert_eq!(
            unfit(&claim, &pv("fast", "2Gi", &["ReadOnlyMany"], json!({}))).as_deref(),
            Some("incompatible accessMode")
        );
        let mut picky = claim.clone();
        picky["spec"]["selector"] = json!({"matchLabels": {"zone": "a"}});
        assert!(unfit(&picky, &pv("fast", "2Gi", &["ReadWriteOnce"], json!({"zone": "b"}))).is_some());
        assert!(unfit(&picky, &pv("fast", "2Gi", &["ReadWriteOnce"], json!({"zone": "a"}))).is_none());
        let mut block = claim.clone();
        block["spec"]["volumeMode"] = json!("Block");
        assert_eq!(
            unfit(&block, &pv("fast", "2Gi", &["ReadWriteOnce"], json!({}))).as_deref(),
            Some("incompatible volumeMode")
        );
    }

    #[test]
    fn pods_name_their_claims_and_ephemeral_ones() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "c1"}},
            {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
            {"name": "tmp", "emptyDir": {}}]}});
        assert_eq!(claim_names(&pod), vec!["c1".to_string(), "p-scratch".to_string()]);
        assert!(uses_claim(&pod, "p-scratch"));
        assert!(!uses_claim(&pod, "tmp"));
    }
}
