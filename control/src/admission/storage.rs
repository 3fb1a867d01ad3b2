//! Storage admission, as the apiserver's plugins do it: a new claim without a class gets the
//! default StorageClass (`DefaultStorageClass`); claims and volumes get their protection
//! finalizers (`StorageObjectInUseProtection`), so a claim a pod uses, or a volume bound to a
//! claim, is not gone while in use; a claim grows only when its class allows it, and never
//! shrinks. The binder (`controllers::volumes`) does the rest.

use serde_json::{Value, json};

use super::{Cause, Quantity, parse_quantity};
use crate::store::Store;

pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// The annotation that makes a StorageClass the default one.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// Its beta spelling, which kubectl and Kubernetes still honour.
const DEFAULT_CLASS_BETA: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// Whether a StorageClass is marked the default.
pub fn is_default_class(class: &Value) -> bool {
    let anns = class.pointer("/metadata/annotations");
    [DEFAULT_CLASS, DEFAULT_CLASS_BETA]
        .iter()
        .any(|k| anns.and_then(|a| a.get(*k)).and_then(Value::as_str) == Some("true"))
}

/// The default StorageClass: of several, the newest (as Kubernetes picks since 1.26), then by name.
pub fn default_class(store: &Store) -> Option<String> {
    let (classes, _, _) = store.list("/storage.k8s.io/storageclasses/", None, 0, &is_default_class);
    classes
        .iter()
        .max_by(|a, b| {
            let at = |s: &crate::store::Stored| s.obj.pointer("/metadata/creationTimestamp").cloned();
            at(a)
                .as_ref()
                .and_then(Value::as_str)
                .cmp(&at(b).as_ref().and_then(Value::as_str))
                .then_with(|| name(&b.obj).cmp(name(&a.obj)))
        })
        .map(|s| name(&s.obj).to_string())
}

fn name(v: &Value) -> &str {
    v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

fn add_finalizer(obj: &mut Value, f: &str) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(a) = list.as_array_mut() {
        if !a.iter().any(|x| x == f) {
            a.push(json!(f));
        }
    } else {
        *list = json!([f]);
    }
}

/// What a new claim or volume gets before it is stored.
pub fn on_create(store: &Store, group: &str, kind: &str, obj: &mut Value) {
    match (group, kind) {
        ("", "PersistentVolumeClaim") => {
            // Absent means "the default class"; an explicit "" means "no class" (static volumes only).
            let unset = obj.pointer("/spec/storageClassName").is_none_or(Value::is_null);
            if unset {
                if let Some(class) = default_class(store) {
                    obj["spec"]["storageClassName"] = json!(class);
                }
            }
            add_finalizer(obj, PVC_PROTECTION);
        }
        ("", "PersistentVolume") => add_finalizer(obj, PV_PROTECTION),
        _ => {}
    }
}

/// A quantity as an object holds it: a string (`1Gi`) or a bare number.
pub fn quantity_of(q: Option<&Value>) -> Option<Quantity> {
    let s = match q? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    parse_quantity(&s).ok()
}

fn storage_request(pvc: &Value) -> Option<Quantity> {
    quantity_of(pvc.pointer("/spec/resources/requests/storage"))
}

/// Checks that need other objects: a claim's growth needs a class that allows expansion.
pub fn check(store: &Store, group: &str, kind: &str, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    if (group, kind) != ("", "PersistentVolumeClaim") {
        return causes;
    }
    let Some(old) = old else { return causes };
    let (Some(now), Some(was)) = (storage_request(obj), storage_request(old)) else {
        return causes;
    };
    const FIELD: &str = "spec.resources.requests.storage";
    if now.milli() < was.milli() {
        causes.push(Cause::forbidden(FIELD, "field can not be less than previous value"));
        return causes;
    }
    if now.milli() == was.milli() {
        return causes;
    }
    let class = obj
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let allows = !class.is_empty()
        && store
            .get(&format!("/storage.k8s.io/storageclasses/{class}"))
            .is_some_and(|c| c.obj.get("allowVolumeExpansion") == Some(&json!(true)));
    let bound = !obj
        .pointer("/spec/volumeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty();
    if !allows || !bound {
        causes.push(Cause::forbidden(
            FIELD,
            "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
        ));
    }
    causes
}

const ACCESS_MODES: [&str; 4] = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"];
const VOLUME_MODES: [&str; 2] = ["Filesystem", "Block"];

fn text<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn access_modes(spec: &Value, path: &str, c: &mut Vec<Cause>) {
    let modes = spec.get("accessModes").and_then(Value::as_array);
    let Some(modes) = modes.filter(|m| !m.is_empty()) else {
        c.push(Cause::required(format!("{path}.accessModes")));
        return;
    };
    for m in modes {
        let m = m.as_str().unwrap_or_default();
        if !ACCESS_MODES.contains(&m) {
            c.push(Cause::unsupported(format!("{path}.accessModes"), m, &ACCESS_MODES));
        }
    }
    if modes.len() > 1 && modes.iter().any(|m| m == "ReadWriteOncePod") {
        c.push(Cause::forbidden(
            format!("{path}.accessModes"),
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

fn volume_mode(spec: &Value, path: &str, c: &mut Vec<Cause>) {
    if let Some(m) = text(spec, "/volumeMode") {
        if !VOLUME_MODES.contains(&m) {
            c.push(Cause::unsupported(format!("{path}.volumeMode"), m, &VOLUME_MODES));
        }
    }
}

/// A positive storage quantity at `ptr` of `spec`, or the cause.
fn positive_storage(spec: &Value, ptr: &str, field: &str, c: &mut Vec<Cause>) {
    match spec.pointer(ptr) {
        None | Some(Value::Null) => c.push(Cause::required(field)),
        Some(v) => {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match parse_quantity(&s) {
                Ok(q) if q.milli() > 0 => {}
                Ok(_) => c.push(Cause::invalid(field, v, "must be greater than zero")),
                Err(_) => c.push(Cause::invalid(
                    field,
                    v,
                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                )),
            }
        }
    }
}

/// A claim's spec (`path` is `spec`, or a template's `spec.volumeClaimTemplates[i].spec`).
pub fn claim_spec(spec: &Value, path: &str, c: &mut Vec<Cause>) {
    access_modes(spec, path, c);
    volume_mode(spec, path, c);
    positive_storage(
        spec,
        "/resources/requests/storage",
        &format!("{path}.resources[storage]"),
        c,
    );
}

/// The volume sources a PersistentVolume may have here: CSI volumes, served by the platform's
/// drivers (or any CSI driver a node has).
const PV_SOURCES: [&str; 1] = ["csi"];

/// Kubernetes' own rules for the storage kinds, in its words.
pub fn validate(group: &str, kind: &str, obj: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match (group, kind) {
        ("", "PersistentVolumeClaim") => {
            claim_spec(spec, "spec", c);
            if let Some(old) = old {
                // Only the request may change (growing, checked in [`check`]), and the binder
                // fills in the volume's name once.
                let mut a = spec.clone();
                let mut b = old.get("spec").cloned().unwrap_or(Value::Null);
                for s in [&mut a, &mut b] {
                    if let Some(r) = s.pointer_mut("/resources").and_then(Value::as_object_mut) {
                        r.remove("requests");
                    }
                }
                if text(&b, "/volumeName").is_none_or(str::is_empty) {
                    for s in [&mut a, &mut b] {
                        if let Some(m) = s.as_object_mut() {
                            m.remove("volumeName");
                        }
                    }
                }
                // A claim made before any default class existed gets one later (Kubernetes'
                // retroactive default StorageClass assignment).
                if b.get("storageClassName").is_none_or(Value::is_null) {
                    for s in [&mut a, &mut b] {
                        if let Some(m) = s.as_object_mut() {
                            m.remove("storageClassName");
                        }
                    }
                }
                if a != b {
                    c.push(Cause::forbidden(
                        "spec",
                        "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
                    ));
                }
            }
        }
        ("", "PersistentVolume") => {
            access_modes(spec, "spec", c);
            volume_mode(spec, "spec", c);
            positive_storage(spec, "/capacity/storage", "spec.capacity[storage]", c);
            let sources: Vec<&String> = spec
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, v)| v.is_object() && !NOT_SOURCES.contains(&k.as_str()))
                        .map(|(k, _)| k)
                        .collect()
                })
                .unwrap_or_default();
            match sources.as_slice() {
                [] => c.push(Cause::required_because("spec", "must specify a volume type")),
                [one] if PV_SOURCES.contains(&one.as_str()) => {
                    for f in ["driver", "volumeHandle"] {
                        if text(spec, &format!("/csi/{f}")).is_none_or(str::is_empty) {
                            c.push(Cause::required(format!("spec.csi.{f}")));
                        }
                    }
                }
                [one] => c.push(Cause::forbidden(
                    format!("spec.{one}"),
                    "only CSI volumes are supported on this platform (there is no node filesystem to mount): use a StorageClass of disk.csi.nodeless.io, or a csi volume source",
                )),
                _ => c.push(Cause::forbidden("spec", "may not specify more than 1 volume type")),
            }
            if let Some(p) = text(spec, "/persistentVolumeReclaimPolicy") {
                let allowed = ["Retain", "Delete"];
                if !allowed.contains(&p) {
                    c.push(Cause::unsupported("spec.persistentVolumeReclaimPolicy", p, &allowed));
                }
            }
            if let Some(old) = old {
                let was = old.get("spec").unwrap_or(&Value::Null);
                if spec.get("csi") != was.get("csi") && was.get("csi").is_some() {
                    c.push(Cause::forbidden(
                        "spec.persistentvolumesource",
                        "spec.persistentvolumesource is immutable after creation",
                    ));
                }
                if spec.get("volumeMode") != was.get("volumeMode") {
                    c.push(Cause::invalid(
                        "spec.volumeMode",
                        spec.get("volumeMode").unwrap_or(&Value::Null),
                        "field is immutable",
                    ));
                }
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            if text(obj, "/provisioner").is_none_or(str::is_empty) {
                c.push(Cause::required("provisioner"));
            }
            if let Some(p) = text(obj, "/reclaimPolicy") {
                if !["Retain", "Delete"].contains(&p) {
                    c.push(Cause::unsupported("reclaimPolicy", p, &["Delete", "Retain"]));
                }
            }
            if let Some(m) = text(obj, "/volumeBindingMode") {
                let allowed = ["Immediate", "WaitForFirstConsumer"];
                if !allowed.contains(&m) {
                    c.push(Cause::unsupported("volumeBindingMode", m, &allowed));
                }
            }
            if let Some(old) = old {
                for f in ["parameters", "provisioner", "reclaimPolicy", "volumeBindingMode"] {
                    if obj.get(f) != old.get(f) {
                        c.push(Cause::forbidden(f, &format!("updates to {f} are forbidden.")));
                    }
                }
            }
        }
        ("storage.k8s.io", "VolumeAttachment") => {
            for (ptr, field) in [
                ("/spec/attacher", "spec.attacher"),
                ("/spec/nodeName", "spec.nodeName"),
                ("/spec/source/persistentVolumeName", "spec.source.persistentVolumeName"),
            ] {
                if text(obj, ptr).is_none_or(str::is_empty) {
                    c.push(Cause::required(field));
                }
            }
            if let Some(old) = old {
                if old.get("spec") != obj.get("spec") {
                    c.push(Cause::invalid("spec", spec, "field is immutable"));
                }
            }
        }
        _ => {}
    }
}

/// Fields of a PersistentVolume's spec that are objects but not volume sources.
const NOT_SOURCES: [&str; 4] = ["capacity", "claimRef", "nodeAffinity", "mountOptions"];

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(objs: &[(&str, Value)]) -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        for (k, v) in objs {
            futures::executor::block_on(store.write(crate::store::Write::Create {
                key: k.to_string(),
                obj: v.clone(),
            }))
            .unwrap();
        }
        (store, dir)
    }

    fn class(name: &str, default: bool, expand: bool, created: &str) -> Value {
        json!({"metadata": {"name": name, "creationTimestamp": created,
            "annotations": {DEFAULT_CLASS: if default { "true" } else { "false" }}},
            "provisioner": "disk.csi.nodeless.io", "allowVolumeExpansion": expand})
    }

    #[test]
    fn new_claims_get_the_newest_default_class_and_the_finalizer() {
        let (store, _dir) = store_with(&[
            (
                "/storage.k8s.io/storageclasses/old",
                class("old", true, false, "2026-01-01T00:00:00Z"),
            ),
            (
                "/storage.k8s.io/storageclasses/new",
                class("new", true, false, "2026-02-01T00:00:00Z"),
            ),
            (
                "/storage.k8s.io/storageclasses/other",
                class("other", false, false, "2026-03-01T00:00:00Z"),
            ),
        ]);
        let mut pvc = json!({"metadata": {"name": "c"}, "spec": {}});
        on_create(&store, "", "PersistentVolumeClaim", &mut pvc);
        assert_eq!(pvc["spec"]["storageClassName"], "new");
        assert_eq!(pvc["metadata"]["finalizers"], json!([PVC_PROTECTION]));
        // An explicit empty class stays empty: the claim wants a static volume.
        let mut none = json!({"metadata": {"name": "c"}, "spec": {"storageClassName": ""}});
        on_create(&store, "", "PersistentVolumeClaim", &mut none);
        assert_eq!(none["spec"]["storageClassName"], "");
        let mut pv = json!({"metadata": {"name": "v", "finalizers": [PV_PROTECTION]}});
        on_create(&store, "", "PersistentVolume", &mut pv);
        assert_eq!(pv["metadata"]["finalizers"], json!([PV_PROTECTION]));
    }

    #[test]
    fn claims_grow_only_where_the_class_allows_and_never_shrink() {
        let (store, _dir) = store_with(&[
            (
                "/storage.k8s.io/storageclasses/grow",
                class("grow", false, true, "2026-01-01T00:00:00Z"),
            ),
            (
                "/storage.k8s.io/storageclasses/fixed",
                class("fixed", false, false, "2026-01-01T00:00:00Z"),
            ),
        ]);
        let pvc = |class: &str, size: &str| {
            json!({"metadata": {"name": "c"}, "spec": {"storageClassName": class, "volumeName": "pv-1",
                "resources": {"requests": {"storage": size}}}})
        };
        let grow = |class: &str, from: &str, to: &str| {
            check(
                &store,
                "",
                "PersistentVolumeClaim",
                &pvc(class, to),
                Some(&pvc(class, from)),
            )
        };
        assert!(grow("grow", "1Gi", "2Gi").is_empty());
        assert!(grow("grow", "1Gi", "1024Mi").is_empty());
        let shrink = grow("grow", "2Gi", "1Gi");
        assert_eq!(shrink.len(), 1);
        assert!(shrink[0].message.contains("less than previous value"));
        let fixed = grow("fixed", "1Gi", "2Gi");
        assert!(fixed[0].message.contains("must support resize"), "{fixed:?}");
        assert!(!grow("missing", "1Gi", "2Gi").is_empty());
    }

    fn causes(group: &str, kind: &str, obj: Value, old: Option<Value>) -> Vec<String> {
        let mut c = Vec::new();
        validate(group, kind, &obj, old.as_ref(), &mut c);
        c.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn claims_volumes_and_classes_are_checked_in_kubernetes_words() {
        let pvc = json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        assert!(causes("", "PersistentVolumeClaim", pvc.clone(), None).is_empty());
        let bad = json!({"spec": {"accessModes": ["ReadWriteSometimes"], "volumeMode": "Tape"}});
        let got = causes("", "PersistentVolumeClaim", bad, None);
        assert!(
            got.iter().any(|c| c.starts_with("spec.accessModes: Unsupported value")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|c| c.starts_with("spec.volumeMode: Unsupported value")),
            "{got:?}"
        );
        assert!(
            got.contains(&"spec.resources[storage]: Required value".to_string()),
            "{got:?}"
        );
        // The binder may name the volume once; nothing else but the request changes.
        let mut bound = pvc.clone();
        bound["spec"]["volumeName"] = json!("pv-1");
        bound["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert!(causes("", "PersistentVolumeClaim", bound.clone(), Some(pvc.clone())).is_empty());
        let mut moved = bound.clone();
        moved["spec"]["volumeName"] = json!("pv-2");
        assert!(causes("", "PersistentVolumeClaim", moved, Some(bound))[0].starts_with("spec: Forbidden"));

        // A claim without a class may get one later (the default, retroactively); not another.
        let mut classed = pvc.clone();
        classed["spec"]["storageClassName"] = json!("fast");
        assert!(causes("", "PersistentVolumeClaim", classed.clone(), Some(pvc.clone())).is_empty());
        let mut other = classed.clone();
        other["spec"]["storageClassName"] = json!("slow");
        assert!(!causes("", "PersistentVolumeClaim", other, Some(classed)).is_empty());

        let pv = json!({"spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
            "csi": {"driver": "disk.csi.nodeless.io", "volumeHandle": "d-1"}, "claimRef": {"name": "c"}}});
        assert!(causes("", "PersistentVolume", pv, None).is_empty());
        let host = json!({"spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
            "hostPath": {"path": "/etc"}}});
        let got = causes("", "PersistentVolume", host, None);
        assert!(
            got[0].starts_with("spec.hostPath: Forbidden: only CSI volumes"),
            "{got:?}"
        );

        let sc = json!({"provisioner": "disk.csi.nodeless.io", "parameters": {"type": "cloud_essd"}});
        assert!(causes("storage.k8s.io", "StorageClass", sc.clone(), None).is_empty());
        let mut changed = sc.clone();
        changed["parameters"]["type"] = json!("cloud_ssd");
        let got = causes("storage.k8s.io", "StorageClass", changed, Some(sc));
        assert_eq!(got, vec!["parameters: Forbidden: updates to parameters are forbidden."]);
    }
}
