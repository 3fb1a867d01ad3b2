//! Attaching volumes to nodes, as Kubernetes' attach-detach controller and the CSI
//! external-attacher do it together: a volume a pod on a node needs gets a VolumeAttachment
//! (`csi-<sha256(volume, driver, node)>`), which is attached through the driver's
//! ControllerPublishVolume (`status.attached`, the publish context in `attachmentMetadata`, or
//! `attachError` with the driver's words). Once no pod on that node needs it and the node no
//! longer lists it in `status.volumesInUse` (it has unmounted it), it is detached through
//! ControllerUnpublishVolume and the attachment deleted. Drivers whose CSIDriver says
//! `attachRequired: false` are never attached, and attachments of an attacher control does not
//! serve are left to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use nodeless_csi::capability::attachment_name;
use serde_json::{Value, json};

use super::{Drivers, claim_names, strings, volume_mode};
use crate::api::local::LocalClient;
use crate::controllers::{Outcome, split_key, str_at};
use crate::store::{Event, Stored};

fn attachments(client: &LocalClient) -> std::sync::Arc<crate::api::registry::Served> {
    client.served("storage.k8s.io", "volumeattachments")
}

/// Whether the driver's volumes must be attached (no CSIDriver object: they must, as in Kubernetes).
fn attach_required(client: &LocalClient, driver: &str) -> bool {
    client
        .get(&client.served("storage.k8s.io", "csidrivers"), None, driver)
        .is_none_or(|d| d.obj.pointer("/spec/attachRequired") != Some(&json!(false)))
}

/// The driver's id for a node: what the node reported in its CSINode, else the node's name.
pub fn node_id(client: &LocalClient, driver: &str, node: &str) -> String {
    client
        .get(&client.served("storage.k8s.io", "csinodes"), None, node)
        .and_then(|n| {
            n.obj
                .pointer("/spec/drivers")
                .and_then(Value::as_array)?
                .iter()
                .find(|d| str_at(d, "/name") == driver)
                .map(|d| str_at(d, "/nodeID").to_string())
        })
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| node.to_string())
}

fn pv_key(client: &LocalClient, pv: &str) -> String {
    client.served("", "persistentvolumes").key(None, pv)
}

/// The volumes a pod's claims are bound to.
fn pod_volumes(client: &LocalClient, pod: &Value) -> Vec<String> {
    let ns = str_at(pod, "/metadata/namespace");
    let pvcs = client.served("", "persistentvolumeclaims");
    claim_names(pod)
        .iter()
        .filter_map(|c| client.get(&pvcs, Some(ns), c))
        .map(|c| str_at(&c.obj, "/spec/volumeName").to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

pub fn interested(client: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with("/core/pods/") {
        let mut keys: BTreeSet<String> = BTreeSet::new();
        for obj in std::iter::once(&ev.obj).chain(ev.prev.iter()) {
            if !str_at(obj, "/spec/nodeName").is_empty() {
                keys.extend(pod_volumes(client, obj).iter().map(|v| pv_key(client, v)));
            }
        }
        return keys.into_iter().collect();
    }
    if ev.key.starts_with("/core/persistentvolumeclaims/") {
        let v = str_at(&ev.obj, "/spec/volumeName");
        return if v.is_empty() {
            Vec::new()
        } else {
            vec![pv_key(client, v)]
        };
    }
    if ev.key.starts_with("/storage.k8s.io/volumeattachments/") {
        return vec![pv_key(client, str_at(&ev.obj, "/spec/source/persistentVolumeName"))];
    }
    if ev.key.starts_with("/core/persistentvolumes/") {
        return vec![ev.key.clone()];
    }
    // A node's volumesInUse changed: the volumes attached to it may be detached now.
    if ev.key.starts_with("/core/nodes/") {
        let node = str_at(&ev.obj, "/metadata/name");
        return client
            .list(&attachments(client), None, &|va| str_at(va, "/spec/nodeName") == node)
            .iter()
            .map(|va| pv_key(client, str_at(&va.obj, "/spec/source/persistentVolumeName")))
            .collect();
    }
    Vec::new()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    let mut keys: BTreeSet<String> = client
        .list(&attachments(client), None, &|_| true)
        .iter()
        .map(|va| pv_key(client, str_at(&va.obj, "/spec/source/persistentVolumeName")))
        .collect();
    keys.extend(super::super::all_keys(client, "", "persistentvolumes"));
    keys.into_iter().collect()
}

/// Whether a node reports the volume mounted (`status.volumesInUse`).
fn in_use_on(client: &LocalClient, node: &str, unique: &str) -> bool {
    client.get(&client.served("", "nodes"), None, node).is_some_and(|n| {
        strings(n.obj.pointer("/status/volumesInUse"))
            .iter()
            .any(|v| v == unique)
    })
}

pub async fn reconcile(client: LocalClient, drivers: Drivers, key: String) -> Outcome {
    let (_, pv_name) = split_key(&key);
    let pv = client.get(&client.served("", "persistentvolumes"), None, pv_name);
    let driver = pv
        .as_ref()
        .map(|pv| str_at(&pv.obj, "/spec/csi/driver").to_string())
        .unwrap_or_default();
    let handle = pv
        .as_ref()
        .map(|pv| str_at(&pv.obj, "/spec/csi/volumeHandle").to_string())
        .unwrap_or_default();
    let existing: Vec<Stored> = client.list(&attachments(&client), None, &|va| {
        str_at(va, "/spec/source/persistentVolumeName") == pv_name
    });
    // The nodes whose pods need the volume now.
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    if let Some(pv) = pv
        .as_ref()
        .filter(|_| !driver.is_empty() && attach_required(&client, &driver))
    {
        let claim_ns = str_at(&pv.obj, "/spec/claimRef/namespace");
        let claim = str_at(&pv.obj, "/spec/claimRef/name");
        // Only the claim this volume is bound to: not a later claim of the same name.
        let bound = client
            .get(&client.served("", "persistentvolumeclaims"), Some(claim_ns), claim)
            .is_some_and(|c| {
                crate::controllers::uid(&c.obj) == str_at(&pv.obj, "/spec/claimRef/uid")
                    && str_at(&c.obj, "/spec/volumeName") == pv_name
            });
        if !claim.is_empty() && bound {
            let pods = client.served("", "pods");
            for p in client.list(&pods, Some(claim_ns), &|p| super::pod_holds(p, claim)) {
                let node = str_at(&p.obj, "/spec/nodeName");
                if !node.is_empty() {
                    wanted.insert(node.to_string());
                }
            }
        }
    }
    let vas = attachments(&client);
    let mut again = None;
    for node in &wanted {
        let name = attachment_name(&handle, &driver, node);
        if existing.iter().any(|va| str_at(&va.obj, "/metadata/name") == name) {
            continue;
        }
        let va = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
            "metadata": {"name": name},
            "spec": {"attacher": driver, "nodeName": node, "source": {"persistentVolumeName": pv_name}},
        });
        client.create(&vas, None, va).await?;
    }
    let existing: Vec<Stored> = client.list(&vas, None, &|va| {
        str_at(va, "/spec/source/persistentVolumeName") == pv_name
    });
    for va in existing {
        let node = str_at(&va.obj, "/spec/nodeName").to_string();
        let va_driver = str_at(&va.obj, "/spec/attacher").to_string();
        // An attacher control does not serve manages its own attachments.
        if !drivers.knows(&va_driver) {
            continue;
        }
        let attached = va.obj.pointer("/status/attached") == Some(&json!(true));
        let id = node_id(&client, &va_driver, &node);
        if wanted.contains(&node) {
            if attached {
                continue;
            }
            let Some(pv) = pv.as_ref() else { continue };
            let cap = nodeless_csi::capability::volume_capability(
                &strings(pv.obj.pointer("/spec/accessModes")),
                volume_mode(&pv.obj),
                str_at(&pv.obj, "/spec/csi/fsType"),
                &strings(pv.obj.pointer("/spec/mountOptions")),
            );
            let context: HashMap<String, String> = pv
                .obj
                .pointer("/spec/csi/volumeAttributes")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let readonly = pv.obj.pointer("/spec/csi/readOnly") == Some(&json!(true));
            let mut new = (*va.obj).clone();
            match drivers.publish(&va_driver, &handle, &id, cap, readonly, context).await {
                Ok(publish_context) => {
                    let meta: BTreeMap<String, String> = publish_context.into_iter().collect();
                    new["status"] = json!({"attached": true, "attachmentMetadata": meta});
                }
                Err(why) => {
                    new["status"] = json!({"attached": false, "attachError": {
                        "time": crate::api::objects::now_rfc3339(), "message": why}});
                    again = Some(super::RETRY);
                }
            }
            if new != *va.obj {
                client.update_status(&vas, &va, new).await?;
            }
            continue;
        }
        // Not needed on this node: detach once the node has let go of it.
        if in_use_on(
            &client,
            &node,
            &nodeless_csi::capability::unique_name(&va_driver, &handle),
        ) {
            continue;
        }
        if attached {
            if let Err(why) = drivers.unpublish(&va_driver, &handle, &id).await {
                let mut new = (*va.obj).clone();
                new["status"]["detachError"] = json!({"time": crate::api::objects::now_rfc3339(), "message": why});
                if new != *va.obj {
                    client.update_status(&vas, &va, new).await?;
                }
                again = Some(super::RETRY);
                continue;
            }
        }
        client
            .delete(&vas, None, str_at(&va.obj, "/metadata/name"), None)
            .await?;
    }
    Ok(again)
}
