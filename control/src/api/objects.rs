//! What the server does to an object before storing it: typed decoding of built-in kinds (which
//! finds unknown fields and wrong types), metadata on create, and the apiserver's defaults.

use k8s_openapi::api::{
    apps, autoscaling, batch, certificates, coordination, core, discovery, networking, policy, rbac, storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::error::ApiError;

/// Decode `input` as the typed Kubernetes object, returning its canonical JSON and the paths of
/// fields the type does not have (which are dropped, as the apiserver drops them).
fn roundtrip<T: DeserializeOwned + Serialize>(input: &Value) -> Result<(Value, Vec<String>), String> {
    let typed: T = serde_path_to_error::deserialize(input).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    let out = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    unknown_fields(input, &out, &mut String::new(), &mut unknown);
    Ok((out, unknown))
}

fn unknown_fields(input: &Value, out: &Value, path: &mut String, found: &mut Vec<String>) {
    match (input, out) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                match o.get(k) {
                    None => found.push(path.clone()),
                    Some(ov) => unknown_fields(v, ov, path, found),
                }
                path.truncate(len);
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{n}]"));
                unknown_fields(iv, ov, path, found);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Whether Nodeless has a typed definition for this built-in kind.
pub fn is_typed(group: &str, kind: &str) -> bool {
    decode(group, kind, &json!({})).is_some()
}

fn decode(group: &str, kind: &str, input: &Value) -> Option<Result<(Value, Vec<String>), String>> {
    Some(match (group, kind) {
        ("", "Namespace") => roundtrip::<core::v1::Namespace>(input),
        ("", "Pod") => roundtrip::<core::v1::Pod>(input),
        ("", "Service") => roundtrip::<core::v1::Service>(input),
        ("", "Endpoints") => roundtrip::<core::v1::Endpoints>(input),
        ("", "ConfigMap") => roundtrip::<core::v1::ConfigMap>(input),
        ("", "Secret") => roundtrip::<core::v1::Secret>(input),
        ("", "Node") => roundtrip::<core::v1::Node>(input),
        ("", "Event") => roundtrip::<core::v1::Event>(input),
        ("", "ServiceAccount") => roundtrip::<core::v1::ServiceAccount>(input),
        ("", "Binding") => roundtrip::<core::v1::Binding>(input),
        ("", "ReplicationController") => roundtrip::<core::v1::ReplicationController>(input),
        ("", "LimitRange") => roundtrip::<core::v1::LimitRange>(input),
        ("", "ResourceQuota") => roundtrip::<core::v1::ResourceQuota>(input),
        ("", "PersistentVolume") => roundtrip::<core::v1::PersistentVolume>(input),
        ("", "PersistentVolumeClaim") => roundtrip::<core::v1::PersistentVolumeClaim>(input),
        ("storage.k8s.io", "StorageClass") => roundtrip::<storage::v1::StorageClass>(input),
        ("storage.k8s.io", "CSIDriver") => roundtrip::<storage::v1::CSIDriver>(input),
        ("storage.k8s.io", "CSINode") => roundtrip::<storage::v1::CSINode>(input),
        ("storage.k8s.io", "VolumeAttachment") => roundtrip::<storage::v1::VolumeAttachment>(input),
        ("policy", "PodDisruptionBudget") => roundtrip::<policy::v1::PodDisruptionBudget>(input),
        ("autoscaling", "HorizontalPodAutoscaler") => roundtrip::<autoscaling::v2::HorizontalPodAutoscaler>(input),
        ("rbac.authorization.k8s.io", "Role") => roundtrip::<rbac::v1::Role>(input),
        ("rbac.authorization.k8s.io", "ClusterRole") => roundtrip::<rbac::v1::ClusterRole>(input),
        ("rbac.authorization.k8s.io", "RoleBinding") => roundtrip::<rbac::v1::RoleBinding>(input),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => roundtrip::<rbac::v1::ClusterRoleBinding>(input),
        ("apps", "Deployment") => roundtrip::<apps::v1::Deployment>(input),
        ("apps", "ReplicaSet") => roundtrip::<apps::v1::ReplicaSet>(input),
        ("apps", "DaemonSet") => roundtrip::<apps::v1::DaemonSet>(input),
        ("apps", "StatefulSet") => roundtrip::<apps::v1::StatefulSet>(input),
        ("apps", "ControllerRevision") => roundtrip::<apps::v1::ControllerRevision>(input),
        ("batch", "Job") => roundtrip::<batch::v1::Job>(input),
        ("batch", "CronJob") => roundtrip::<batch::v1::CronJob>(input),
        ("networking.k8s.io", "Ingress") => roundtrip::<networking::v1::Ingress>(input),
        ("networking.k8s.io", "IngressClass") => roundtrip::<networking::v1::IngressClass>(input),
        ("discovery.k8s.io", "EndpointSlice") => roundtrip::<discovery::v1::EndpointSlice>(input),
        ("coordination.k8s.io", "Lease") => roundtrip::<coordination::v1::Lease>(input),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            roundtrip::<certificates::v1::CertificateSigningRequest>(input)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => roundtrip::<apiext::CustomResourceDefinition>(input),
        _ => return None,
    })
}

/// How unknown fields are treated (the `fieldValidation` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        match s {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// Decode a built-in object strictly enough to catch wrong types and (per `validation`) unknown
/// fields. Returns the canonical object and the warnings to send back.
pub fn canonicalize(
    group: &str,
    kind: &str,
    version: &str,
    input: Value,
    validation: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let Some(result) = decode(group, kind, &input) else {
        return Ok((input, Vec::new()));
    };
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {why}"
        ))
    };
    let (out, unknown) = result.map_err(cannot)?;
    if unknown.is_empty() || validation == FieldValidation::Ignore {
        return Ok((out, Vec::new()));
    }
    let listed: Vec<String> = unknown.iter().map(|p| format!("unknown field \"{p}\"")).collect();
    if validation == FieldValidation::Strict {
        return Err(cannot(format!("strict decoding error: {}", listed.join(", "))));
    }
    Ok((out, listed))
}

/// RFC 3339 timestamp with seconds, as Kubernetes writes `metav1.Time`.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Five random characters, as the apiserver appends to `generateName`.
pub fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..5)
        .map(|_| NAME_CHARS[rng.gen_range(0..NAME_CHARS.len())] as char)
        .collect()
}

pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Metadata the server owns on create: uid, timestamps, generation; client values are replaced.
pub fn prepare_create_meta(obj: &mut Value, namespace: Option<&str>) {
    let meta = meta_mut(obj);
    if meta.get("name").and_then(Value::as_str).unwrap_or_default().is_empty() {
        if let Some(prefix) = meta
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        {
            let name = format!("{prefix}{}", random_suffix());
            meta.insert("name".into(), json!(name));
        }
    }
    match namespace {
        Some(ns) => {
            meta.insert("namespace".into(), json!(ns));
        }
        None => {
            meta.remove("namespace");
        }
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    for server_owned in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(server_owned);
    }
}

/// Copy what the client may not change on update from the stored object.
pub fn keep_immutable_meta(new: &mut Value, old: &Value) {
    let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let meta = meta_mut(new);
    for key in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "generation",
    ] {
        match old_meta.get(key) {
            Some(v) => {
                meta.insert(key.into(), v.clone());
            }
            None => {
                meta.remove(key);
            }
        }
    }
}

/// Bump `metadata.generation` when anything but metadata and status changed.
pub fn bump_generation(new: &mut Value, old: &Value) {
    let changed =
        new.as_object().into_iter().flatten().any(|(k, v)| {
            !matches!(k.as_str(), "metadata" | "status" | "kind" | "apiVersion") && old.get(k) != Some(v)
        }) || old
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "kind" | "apiVersion") && new.get(k).is_none());
    let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
    meta_mut(new).insert(
        "generation".into(),
        json!(if changed { generation + 1 } else { generation }),
    );
}

fn set_default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.into(), value);
    }
}

fn default_container(c: &mut Value) {
    let Some(c) = c.as_object_mut() else { return };
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let latest = {
        let last = image.rsplit('/').next().unwrap_or(image);
        !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"))
    };
    set_default(
        c,
        "imagePullPolicy",
        json!(if latest { "Always" } else { "IfNotPresent" }),
    );
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    for port in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(p) = port.as_object_mut() {
            set_default(p, "protocol", json!("TCP"));
        }
    }
}

/// The pod-spec defaults the apiserver fills in.
pub fn default_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else { return };
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "schedulerName", json!("default-scheduler"));
    set_default(s, "securityContext", json!({}));
    set_default(s, "enableServiceLinks", json!(true));
    let sa = s
        .get("serviceAccountName")
        .cloned()
        .filter(|v| v.as_str().is_some_and(|x| !x.is_empty()));
    let sa = sa.unwrap_or_else(|| json!("default"));
    s.insert("serviceAccountName".into(), sa.clone());
    set_default(s, "serviceAccount", sa);
    for list in ["containers", "initContainers"] {
        for c in s.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            default_container(c);
        }
    }
}

/// Every pod tolerates the virtual nodes' provider taint, as ASK injects it: on a serverless
/// cluster the virtual nodes are where pods run.
fn tolerate_virtual_nodes(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else { return };
    let key = nodeless_types::keys::VIRTUAL_NODE_TAINT;
    let list = s.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(l) = list.as_array_mut() {
        if !l.iter().any(|t| t.get("key").and_then(Value::as_str) == Some(key)) {
            l.push(json!({"key": key, "operator": "Exists", "effect": "NoSchedule"}));
        }
    }
}

/// A Job's defaults (also those of a CronJob's job template), as Kubernetes sets them.
fn default_job_spec(spec: &mut Value) {
    let Some(m) = spec.as_object_mut() else { return };
    let has_completions = m.get("completions").is_some_and(|v| !v.is_null());
    let has_parallelism = m.get("parallelism").is_some_and(|v| !v.is_null());
    if !has_completions && !has_parallelism {
        m.insert("completions".into(), json!(1));
    }
    set_default(m, "parallelism", json!(1));
    set_default(m, "backoffLimit", json!(6));
    set_default(m, "completionMode", json!("NonIndexed"));
    set_default(m, "suspend", json!(false));
    set_default(m, "manualSelector", json!(false));
    set_default(m, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if let Some(ps) = m.get_mut("template").and_then(|t| t.get_mut("spec")) {
        default_pod_spec(ps);
    }
}

/// Defaults for the built-in kinds, applied on every create and update.
pub fn apply_defaults(group: &str, kind: &str, obj: &mut Value) {
    match (group, kind) {
        ("autoscaling", "HorizontalPodAutoscaler") => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "minReplicas", json!(1));
                if spec.get("metrics").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                    spec.insert(
                        "metrics".into(),
                        json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                    );
                }
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            const RBAC: &str = "rbac.authorization.k8s.io";
            if let Some(r) = obj.get_mut("roleRef").and_then(Value::as_object_mut) {
                if r.get("apiGroup").and_then(Value::as_str).is_none_or(str::is_empty) {
                    r.insert("apiGroup".into(), json!(RBAC));
                }
            }
            for sub in obj
                .get_mut("subjects")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let people = matches!(sub.get("kind").and_then(Value::as_str), Some("User" | "Group"));
                if let Some(m) = sub.as_object_mut().filter(|_| people) {
                    if m.get("apiGroup").and_then(Value::as_str).is_none_or(str::is_empty) {
                        m.insert("apiGroup".into(), json!(RBAC));
                    }
                }
            }
        }
        ("", "Pod") => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
                tolerate_virtual_nodes(spec);
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                set_default(spec, "strategy", json!({"type": "RollingUpdate"}));
                if let Some(st) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                    set_default(st, "type", json!("RollingUpdate"));
                    if st.get("type") == Some(&json!("RollingUpdate")) {
                        set_default(st, "rollingUpdate", json!({}));
                        if let Some(ru) = st.get_mut("rollingUpdate").and_then(Value::as_object_mut) {
                            set_default(ru, "maxSurge", json!("25%"));
                            set_default(ru, "maxUnavailable", json!("25%"));
                        }
                    }
                }
                if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                    default_pod_spec(ps);
                }
            }
        }
        ("batch", "Job") => {
            let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
            let name = obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
            if let Some(spec) = obj.get_mut("spec") {
                default_job_spec(spec);
                // The Job's own selector, on its uid, unless it brings one (manualSelector).
                if spec.get("manualSelector") != Some(&json!(true)) && uid.is_string() {
                    let mut labels = spec.pointer("/template/metadata/labels").cloned().unwrap_or(json!({}));
                    for (k, v) in [
                        ("batch.kubernetes.io/controller-uid", &uid),
                        ("batch.kubernetes.io/job-name", &name),
                        ("controller-uid", &uid),
                        ("job-name", &name),
                    ] {
                        labels[k] = v.clone();
                    }
                    if spec.get("selector").is_none() {
                        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
                    }
                    if spec.get("template").is_some() {
                        spec["template"]["metadata"]["labels"] = labels;
                    }
                }
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "concurrencyPolicy", json!("Allow"));
                set_default(spec, "suspend", json!(false));
                set_default(spec, "successfulJobsHistoryLimit", json!(3));
                set_default(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(js) = spec.get_mut("jobTemplate").and_then(|t| t.get_mut("spec")) {
                    default_job_spec(js);
                }
            }
        }
        ("", "ReplicationController") => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "replicas", json!(1));
                // No selector: the template's labels, as Kubernetes defaults it.
                let labels = spec
                    .get("template")
                    .and_then(|t| t.pointer("/metadata/labels"))
                    .cloned();
                if let Some(labels) = labels {
                    set_default(spec, "selector", labels);
                }
                if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                    default_pod_spec(ps);
                }
            }
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        ("", "PersistentVolume") => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "volumeMode", json!("Filesystem"));
                set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            if let Some(m) = obj.as_object_mut() {
                set_default(m, "reclaimPolicy", json!("Delete"));
                set_default(m, "volumeBindingMode", json!("Immediate"));
            }
        }
        ("storage.k8s.io", "CSIDriver") => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "attachRequired", json!(true));
                set_default(spec, "podInfoOnMount", json!(false));
                set_default(spec, "requiresRepublish", json!(false));
                set_default(spec, "storageCapacity", json!(false));
                set_default(spec, "seLinuxMount", json!(false));
                set_default(spec, "fsGroupPolicy", json!("ReadWriteOnceWithFSType"));
                set_default(spec, "volumeLifecycleModes", json!(["Persistent"]));
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                set_default(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
                if let Some(st) = spec.get_mut("updateStrategy").and_then(Value::as_object_mut) {
                    set_default(st, "type", json!("RollingUpdate"));
                    if st.get("type") == Some(&json!("RollingUpdate")) {
                        set_default(st, "rollingUpdate", json!({}));
                        if let Some(ru) = st.get_mut("rollingUpdate").and_then(Value::as_object_mut) {
                            set_default(ru, "partition", json!(0));
                        }
                    }
                }
                set_default(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                    default_pod_spec(ps);
                }
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "replicas", json!(1));
                if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                    default_pod_spec(ps);
                }
            }
        }
        ("", "Service") => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "type", json!("ClusterIP"));
                set_default(spec, "sessionAffinity", json!("None"));
                let external = spec.get("type") == Some(&json!("ExternalName"));
                if !external {
                    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                    set_default(spec, "ipFamilies", json!(["IPv4"]));
                    set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
                }
                if spec.get("type") == Some(&json!("LoadBalancer")) {
                    set_default(spec, "externalTrafficPolicy", json!("Cluster"));
                    set_default(spec, "allocateLoadBalancerNodePorts", json!(false));
                }
                for port in spec
                    .get_mut("ports")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = port.as_object_mut() {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(n) = p.get("port").cloned() {
                            set_default(p, "targetPort", n);
                        }
                    }
                }
            }
        }
        ("", "Secret") => {
            let Some(o) = obj.as_object_mut() else { return };
            set_default(o, "type", json!("Opaque"));
            if let Some(Value::Object(string_data)) = o.remove("stringData") {
                use base64::Engine;
                if o.get("data").is_none_or(Value::is_null) {
                    o.insert("data".into(), json!({}));
                }
                if let Some(data) = o.get_mut("data").and_then(Value::as_object_mut) {
                    for (k, v) in string_data {
                        let raw = v.as_str().unwrap_or_default().as_bytes().to_vec();
                        data.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(raw)));
                    }
                }
            }
        }
        ("", "Namespace") => {
            let name = name_of(obj).to_string();
            let labels = meta_mut(obj).entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            if let Some(o) = obj.as_object_mut() {
                let spec = o.entry("spec").or_insert_with(|| json!({}));
                if let Some(s) = spec.as_object_mut() {
                    set_default(s, "finalizers", json!(["kubernetes"]));
                }
                let status = o.entry("status").or_insert_with(|| json!({}));
                if let Some(s) = status.as_object_mut() {
                    set_default(s, "phase", json!("Active"));
                }
            }
        }
        _ => {}
    }
}

/// The status a new object starts with when its kind has a status subresource.
pub fn initial_status(group: &str, kind: &str) -> Option<Value> {
    match (group, kind) {
        ("", "Pod") => Some(json!({"phase": "Pending", "qosClass": "BestEffort"})),
        ("", "Namespace") => Some(json!({"phase": "Active"})),
        ("", "Node") => None,
        ("", "Service") => Some(json!({"loadBalancer": {}})),
        // A volume is Pending until the binder has looked at it; a claim until it is bound.
        ("", "PersistentVolume" | "PersistentVolumeClaim") => Some(json!({"phase": "Pending"})),
        ("storage.k8s.io", "VolumeAttachment") => Some(json!({"attached": false})),
        ("networking.k8s.io", "Ingress") => Some(json!({"loadBalancer": {}})),
        ("autoscaling", "HorizontalPodAutoscaler") => Some(json!({"currentReplicas": 0, "desiredReplicas": 0})),
        // `replicas` is not optional in these statuses: typed clients (the Python client's
        // models) refuse a status without it.
        ("", "ReplicationController") | ("apps", "ReplicaSet" | "StatefulSet") => Some(json!({"replicas": 0})),
        _ => Some(json!({})),
    }
}

/// The QoS class of a pod spec (BestEffort, Burstable, Guaranteed).
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(res));
            let r = req.and_then(|r| r.get(res)).or(l);
            if l.is_none() || r != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_found_with_paths() {
        let input = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "bogus": 1,
                "template": {"metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "i", "imagee": "x"}]}}}
        });
        let err = canonicalize("apps", "Deployment", "v1", input.clone(), FieldValidation::Strict).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown field \"spec.bogus\""), "{msg}");
        assert!(
            msg.contains("unknown field \"spec.template.spec.containers[0].imagee\""),
            "{msg}"
        );
        let (out, warnings) = canonicalize("apps", "Deployment", "v1", input, FieldValidation::Warn).unwrap();
        assert_eq!(warnings.len(), 2);
        assert!(out.pointer("/spec/bogus").is_none());
    }

    #[test]
    fn wrong_types_are_bad_requests_naming_the_field() {
        let input = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
            "spec": {"replicas": "three", "selector": {}, "template": {}}});
        let err = canonicalize("apps", "Deployment", "v1", input, FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code(), 400);
        assert!(err.to_string().contains("spec.replicas"), "{err}");
    }

    #[test]
    fn defaults_and_qos() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
        apply_defaults("apps", "Deployment", &mut d);
        assert_eq!(d.pointer("/spec/replicas"), Some(&json!(1)));
        assert_eq!(d.pointer("/spec/strategy/rollingUpdate/maxSurge"), Some(&json!("25%")));
        assert_eq!(
            d.pointer("/spec/template/spec/containers/0/imagePullPolicy"),
            Some(&json!("Always"))
        );
        let spec = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(qos_class(&spec), "Guaranteed");
        let spec = json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]});
        assert_eq!(qos_class(&spec), "Burstable");
    }

    #[test]
    fn generation_moves_with_spec_only() {
        let old = json!({"metadata": {"generation": 3}, "spec": {"a": 1}, "status": {"x": 1}});
        let mut same = json!({"metadata": {"labels": {"l": "v"}}, "spec": {"a": 1}, "status": {"x": 2}});
        bump_generation(&mut same, &old);
        assert_eq!(same.pointer("/metadata/generation"), Some(&json!(3)));
        let mut changed = json!({"metadata": {}, "spec": {"a": 2}});
        bump_generation(&mut changed, &old);
        assert_eq!(changed.pointer("/metadata/generation"), Some(&json!(4)));
    }
}
