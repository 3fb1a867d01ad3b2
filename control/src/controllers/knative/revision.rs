//! Revision → the pods that serve it: a Deployment `<revision>-deployment` whose replicas come
//! from the revision's PodAutoscaler, a Service `<revision>` (port 80 to the user's port) that
//! ingress-l7 sends to, and the PodAutoscaler itself. The status says whether its containers
//! came up, and why not.

use serde_json::{Map, Value, json};

use super::configuration::{ROUTES, ROUTING_STATE, ROUTING_STATE_MODIFIED};
use super::{
    Meta, SERVING_API, condition, keys_of, ns_name, owner_keys, prefix, served, set_active, set_condition,
    set_ready_from, write_status,
};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::controllers::{is_deleting, owner_ref, pod_ready, str_at};
use crate::store::Event;
use nodeless_types::knative::{
    CONFIGURATION, CONTAINER_CONCURRENCY, IDLE_TIMEOUT_SECONDS, RESPONSE_START_TIMEOUT_SECONDS, REVISION, REVISION_UID,
    SERVICE, TIMEOUT_SECONDS,
};

/// The port a container listens on when it names none (Knative's default).
pub const DEFAULT_PORT: i64 = 8080;
/// The revision fields that are Knative's, not the pod's.
const REVISION_ONLY: [&str; 4] = [
    "containerConcurrency",
    "timeoutSeconds",
    "responseStartTimeoutSeconds",
    "idleTimeoutSeconds",
];
/// What the route controller writes on a revision as routes come and go: never copied into its
/// pods.
const ROUTING_KEYS: [&str; 3] = [ROUTING_STATE, ROUTES, ROUTING_STATE_MODIFIED];
/// Waiting reasons of a container whose image cannot be had.
const IMAGE_ERRORS: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with(&prefix("revisions")) {
        return vec![ev.key.clone()];
    }
    if ev.key.starts_with(&prefix("podautoscalers")) || ev.key.starts_with("/apps/deployments/") {
        return owner_keys(ev, "Revision", "revisions");
    }
    if ev.key.starts_with("/core/pods/") {
        let label = format!("/metadata/labels/{}", REVISION.replace('/', "~1"));
        return std::iter::once(&ev.obj)
            .chain(ev.prev.iter())
            .filter_map(|p| p.pointer(&label).and_then(Value::as_str).map(|r| (p, r)))
            .map(|(p, r)| format!("{}{}/{r}", prefix("revisions"), str_at(p, "/metadata/namespace")))
            .take(1)
            .collect();
    }
    Vec::new()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    keys_of(client, "revisions")
}

/// The container that serves (the one naming a port, or the only one), its port and protocol.
/// A port named without a number (`containerPort` 0, as Go's client sends `{name: h2c}`) is
/// the default port.
pub fn serving_port(spec: &Value) -> (usize, i64, bool) {
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let i = containers
        .iter()
        .position(|c| c.pointer("/ports/0").is_some())
        .unwrap_or(0);
    let port = containers.get(i).and_then(|c| c.pointer("/ports/0"));
    let number = port
        .and_then(|p| p.get("containerPort"))
        .and_then(Value::as_i64)
        .filter(|n| *n != 0)
        .unwrap_or(DEFAULT_PORT);
    let h2c = port.and_then(|p| p.get("name")).and_then(Value::as_str) == Some("h2c");
    (i, number, h2c)
}

fn label(v: &Value, key: &str) -> Option<Value> {
    v.pointer(&format!("/metadata/labels/{}", key.replace('/', "~1")))
        .cloned()
}

/// The pod template of a revision.
fn pod_template(rev: &Value, labels: &Map<String, Value>) -> Value {
    let name = str_at(rev, "/metadata/name");
    let mut spec = rev.get("spec").cloned().unwrap_or(json!({}));
    if let Some(m) = spec.as_object_mut() {
        for f in REVISION_ONLY {
            m.remove(f);
        }
    }
    let (i, port, h2c) = serving_port(rev.get("spec").unwrap_or(&Value::Null));
    if let Some(c) = spec.pointer_mut(&format!("/containers/{i}")) {
        let mut env = c.get("env").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut add = |k: &str, v: String| {
            if !env.iter().any(|e| e.get("name").and_then(Value::as_str) == Some(k)) {
                env.push(json!({"name": k, "value": v}));
            }
        };
        add("PORT", port.to_string());
        add("K_REVISION", name.to_string());
        add(
            "K_CONFIGURATION",
            label(rev, CONFIGURATION)
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
        );
        add(
            "K_SERVICE",
            label(rev, SERVICE)
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
        );
        c["env"] = Value::Array(env);
        c["ports"] = json!([{"name": if h2c { "h2c" } else { "user-port" }, "containerPort": port, "protocol": "TCP"}]);
        // Ready when the port answers, unless the user says how; a probe without a port (or
        // port 0, Knative's spelling) probes the serving port.
        let probe = c.get("readinessProbe").cloned().unwrap_or(json!({"tcpSocket": {}}));
        let mut probe = probe;
        for handler in ["tcpSocket", "httpGet", "grpc"] {
            if let Some(h) = probe.get_mut(handler) {
                if h.get("port").is_none_or(|p| p == &json!(0)) {
                    h["port"] = json!(port);
                }
            }
        }
        if probe.get("successThreshold").is_none() {
            probe["successThreshold"] = json!(1);
        }
        c["readinessProbe"] = probe;
    }
    // The revision's labels and annotations, less what routing changes on it: a pod template
    // that followed them would roll the pods whenever a route starts or stops sending traffic.
    let stable = |field: &str| -> Map<String, Value> {
        rev.pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !ROUTING_KEYS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut meta_labels = stable("labels");
    meta_labels.extend(labels.clone());
    json!({
        "metadata": {"labels": meta_labels, "annotations": stable("annotations")},
        "spec": spec,
    })
}

/// The `autoscaling/v2` HPA of a revision of the HPA class, named after it and owned by its
/// PodAutoscaler, as Knative's HPA reconciler makes it from the revision's annotations:
/// `metric` cpu (the default: `target` is the utilisation percentage, 80 when unset), memory
/// (`target` in MiB, else 80 % utilisation), or a request metric (`concurrency`, `rps`: a per-pod
/// average value, the KPA's target when unset); `min-scale` (at least 1) and `max-scale` (none:
/// unbounded); `window` as the scale-down stabilisation window.
async fn apply_hpa(
    client: &LocalClient,
    ns: &str,
    name: &str,
    pa: &Value,
    labels: &Map<String, Value>,
) -> Result<(), ApiError> {
    let hpas = client
        .lookup("autoscaling", "v2", "horizontalpodautoscalers")
        .ok_or(ApiError::NoRoute)?;
    let ann = |k: &str| {
        pa.pointer(&format!("/metadata/annotations/autoscaling.knative.dev~1{k}"))
            .and_then(Value::as_str)
    };
    let target = ann("target").and_then(|v| v.parse::<f64>().ok());
    let metric = match ann("metric").unwrap_or("cpu") {
        "cpu" => json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": target.unwrap_or(80.0).ceil() as i64}}}),
        "memory" => match target {
            Some(t) => json!({"type": "Resource", "resource": {"name": "memory",
                "target": {"type": "AverageValue", "averageValue": format!("{}Mi", t.ceil() as i64)}}}),
            None => json!({"type": "Resource", "resource": {"name": "memory",
                "target": {"type": "Utilization", "averageUtilization": 80}}}),
        },
        other => {
            let cfg = crate::knative::config::read(&client.state.store, "config-autoscaler");
            let milli = (super::autoscaler::Settings::of(pa, &cfg).target * 1000.0).round() as i64;
            let value = if milli % 1000 == 0 {
                (milli / 1000).to_string()
            } else {
                format!("{milli}m")
            };
            json!({"type": "Pods", "pods": {"metric": {"name": other},
                "target": {"type": "AverageValue", "averageValue": value}}})
        }
    };
    let int = |k: &str| ann(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let max = if int("max-scale") > 0 {
        int("max-scale")
    } else {
        i64::from(i32::MAX)
    };
    let mut spec = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("{name}-deployment")},
        "minReplicas": int("min-scale").max(1),
        "maxReplicas": max,
        "metrics": [metric],
    });
    if let Some(w) = ann("window").and_then(crate::knative::duration::parse) {
        spec["behavior"] = json!({"scaleDown": {"stabilizationWindowSeconds": w.as_secs()}});
    }
    let hpa = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": ns, "labels": labels,
            "ownerReferences": [owner_ref("autoscaling.internal.knative.dev/v1alpha1", "PodAutoscaler", pa)]},
        "spec": spec,
    });
    super::apply(client, &hpas, hpa, &["spec"], Meta::Merge)
        .await
        .map(|_| ())
}

/// The scale the revision starts at before the autoscaler has said anything.
fn initial_scale(client: &LocalClient, rev: &Value) -> i64 {
    let cfg = crate::knative::config::read(&client.state.store, "config-autoscaler");
    let ann = |k: &str| {
        rev.pointer(&format!("/metadata/annotations/autoscaling.knative.dev~1{k}"))
            .and_then(Value::as_str)
            .and_then(|v| v.parse::<i64>().ok())
    };
    let allow_zero = cfg.get("allow-zero-initial-scale").map(String::as_str) == Some("true");
    let initial = ann("initial-scale")
        .or_else(|| cfg.get("initial-scale").and_then(|v| v.parse().ok()))
        .unwrap_or(1);
    let initial = if initial == 0 && !allow_zero { 1 } else { initial };
    initial.max(ann("min-scale").unwrap_or(0))
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    let (Some(revisions), Some(pas)) = (served(&client, "revisions"), served(&client, "podautoscalers")) else {
        return Ok(());
    };
    let (ns, name) = ns_name(&key);
    let Some(cur) = client.get(&revisions, Some(&ns), &name) else {
        return Ok(());
    };
    let rev = &cur.obj;
    if is_deleting(rev) {
        return Ok(());
    }
    let spec = rev.get("spec").cloned().unwrap_or(json!({}));
    let owner = json!([owner_ref(SERVING_API, "Revision", rev)]);
    let mut labels = Map::new();
    labels.insert(REVISION.into(), json!(name));
    labels.insert(REVISION_UID.into(), json!(str_at(rev, "/metadata/uid")));
    for k in [CONFIGURATION, SERVICE] {
        if let Some(v) = label(rev, k) {
            labels.insert(k.into(), v);
        }
    }
    let annotations: Map<String, Value> = rev
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|a| {
            a.iter()
                .filter(|(k, _)| k.starts_with("autoscaling.knative.dev/") || k.starts_with("knative.aliyun.com/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let (_, port, h2c) = serving_port(&spec);
    let cc = spec.get("containerConcurrency").and_then(Value::as_i64).unwrap_or(0);

    // The PodAutoscaler: the autoscaler writes its desired scale into its status.
    let pa = json!({
        "apiVersion": "autoscaling.internal.knative.dev/v1alpha1", "kind": "PodAutoscaler",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations, "ownerReferences": owner},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("{name}-deployment")},
            "containerConcurrency": cc, "protocolType": if h2c { "h2c" } else { "http1" }},
    });
    let pa = super::apply(&client, &pas, pa, &["spec"], Meta::Merge).await?;
    let deployments = client.served("apps", "deployments");
    let dep_name = format!("{name}-deployment");
    let desired = if super::autoscaler::is_kpa(&pa) {
        pa.pointer("/status/desiredScale")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| initial_scale(&client, rev))
    } else {
        // The HPA class: the HPA sets the Deployment's replicas; never below one (an HPA does
        // not scale to zero).
        apply_hpa(&client, &ns, &name, &pa, &labels).await?;
        client
            .get(&deployments, Some(&ns), &dep_name)
            .and_then(|d| d.obj.pointer("/spec/replicas").and_then(Value::as_i64))
            .unwrap_or_else(|| initial_scale(&client, rev))
            .max(1)
    };

    // The Service the ingress sends the revision's traffic to.
    let mut svc_ann = Map::new();
    svc_ann.insert(CONTAINER_CONCURRENCY.into(), json!(cc.to_string()));
    for (field, key) in [
        ("timeoutSeconds", TIMEOUT_SECONDS),
        ("responseStartTimeoutSeconds", RESPONSE_START_TIMEOUT_SECONDS),
        ("idleTimeoutSeconds", IDLE_TIMEOUT_SECONDS),
    ] {
        if let Some(v) = spec.get(field).and_then(Value::as_i64) {
            svc_ann.insert(key.into(), json!(v.to_string()));
        }
    }
    let mut port_spec =
        json!({"name": if h2c { "h2c" } else { "http" }, "port": 80, "protocol": "TCP", "targetPort": port});
    if h2c {
        port_spec["appProtocol"] = json!("kubernetes.io/h2c");
    }
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": svc_ann, "ownerReferences": owner},
        "spec": {"selector": {REVISION: name}, "ports": [port_spec]},
    });
    let services = client.served("", "services");
    let have = client.get(&services, Some(&ns), &name);
    match have {
        // The API fills in the ClusterIP and the like: compare and replace only the ports and
        // selector.
        Some(s)
            if s.obj.pointer("/spec/ports") == service.pointer("/spec/ports")
                && s.obj.pointer("/spec/selector") == service.pointer("/spec/selector")
                && s.obj.pointer("/metadata/annotations") == service.pointer("/metadata/annotations") => {}
        Some(s) => {
            let mut new = (*s.obj).clone();
            new["spec"]["ports"] = service["spec"]["ports"].clone();
            new["spec"]["selector"] = service["spec"]["selector"].clone();
            new["metadata"]["annotations"] = service["metadata"]["annotations"].clone();
            client.update(&services, &s, new).await?;
        }
        None => {
            client.create(&services, Some(&ns), service).await?;
        }
    }

    // The Deployment.
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": dep_name, "namespace": ns, "labels": labels, "ownerReferences": owner},
        "spec": {"replicas": desired, "selector": {"matchLabels": {REVISION: name}},
            "progressDeadlineSeconds": 600,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": pod_template(rev, &labels)},
    });
    let deployment = match super::apply(&client, &deployments, deployment, &["spec"], Meta::Merge).await {
        Ok(d) => d,
        // Refused by the API (a quota on Deployments, a policy): the revision cannot be served,
        // and says why rather than staying Unknown.
        Err(e) if (400..500).contains(&e.code()) && e.code() != 409 => {
            let mut status = rev.get("status").cloned().unwrap_or(json!({}));
            let message = format!("creating Deployment {dep_name}: {e}");
            set_condition(&mut status, "ResourcesAvailable", "False", "FailedCreate", &message);
            set_ready_from(&mut status, &["ResourcesAvailable", "ContainerHealthy"]);
            write_status(&client, &revisions, &cur, status).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    // Pods the API refuses (a quota, a LimitRange, a missing ServiceAccount): the Deployment's
    // ReplicaFailure, as Knative propagates it.
    let replica_failure = deployment
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| str_at(c, "/type") == "ReplicaFailure" && str_at(c, "/status") == "True")
        })
        .map(|c| (str_at(c, "/reason").to_string(), str_at(c, "/message").to_string()));

    // Status.
    let pods = client.served("", "pods");
    let revision_pods: Vec<Value> = client
        .list(&pods, Some(&ns), &|p| {
            label(p, REVISION).as_ref().and_then(Value::as_str) == Some(name.as_str())
        })
        .into_iter()
        .map(|s| (*s.obj).clone())
        .collect();
    let ready = revision_pods.iter().filter(|p| pod_ready(p) && !is_deleting(p)).count() as i64;
    let mut status = rev.get("status").cloned().unwrap_or(json!({}));
    status["serviceName"] = json!(name);
    status["actualReplicas"] = json!(ready);
    status["desiredReplicas"] = json!(desired);
    let image = spec
        .pointer("/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let was = |ty: &str| condition(rev, ty).is_some_and(|c| c.0 == "True");
    let failure = revision_pods
        .iter()
        .find_map(|p| pod_failure(p, image))
        .or(replica_failure.map(|(reason, message)| (Kind::Refused(reason), "", message)));
    match (&failure, ready > 0 || was("ResourcesAvailable")) {
        (Some((Kind::Refused(reason), _, message)), false) => {
            set_condition(&mut status, "ResourcesAvailable", "False", reason, message);
        }
        (Some((Kind::Image, reason, message)), false) => {
            set_condition(&mut status, "ContainerHealthy", "False", reason, message);
            set_condition(&mut status, "ResourcesAvailable", "False", reason, message);
        }
        (Some((Kind::Container, reason, message)), _) => {
            set_condition(&mut status, "ContainerHealthy", "False", reason, message);
            if !was("ResourcesAvailable") {
                set_condition(&mut status, "ResourcesAvailable", "Unknown", "Deploying", "");
            }
        }
        (Some((Kind::Unschedulable, reason, message)), false) => {
            set_condition(&mut status, "ResourcesAvailable", "False", reason, message);
        }
        (_, true) => {
            set_condition(&mut status, "ResourcesAvailable", "True", "", "");
            set_condition(&mut status, "ContainerHealthy", "True", "", "");
        }
        (_, false) => {
            if desired == 0
                && deployment
                    .pointer("/status/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    == 0
            {
                // Started at zero (initial-scale 0): nothing to wait for.
                set_condition(&mut status, "ResourcesAvailable", "True", "", "");
                set_condition(&mut status, "ContainerHealthy", "True", "", "");
            } else {
                set_condition(&mut status, "ResourcesAvailable", "Unknown", "Deploying", "");
                set_condition(&mut status, "ContainerHealthy", "Unknown", "Deploying", "");
            }
        }
    }
    set_active(&mut status, ready, desired);
    set_ready_from(&mut status, &["ResourcesAvailable", "ContainerHealthy"]);
    write_status(&client, &revisions, &cur, status).await
}

enum Kind {
    Image,
    Container,
    Unschedulable,
    /// The API refused the revision's pods: the Deployment's ReplicaFailure reason.
    Refused(String),
}

/// Why a pod of the revision cannot serve, if it says.
fn pod_failure(p: &Value, image: &str) -> Option<(Kind, &'static str, String)> {
    for c in p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let waiting = str_at(c, "/state/waiting/reason");
        let message = str_at(c, "/state/waiting/message");
        if IMAGE_ERRORS.contains(&waiting) {
            let image = if image.is_empty() { str_at(c, "/image") } else { image };
            return Some((
                Kind::Image,
                "ContainerMissing",
                format!("Unable to fetch image \"{image}\": {waiting}: {message}"),
            ));
        }
        if waiting == "CrashLoopBackOff"
            || c.pointer("/lastState/terminated").is_some() && !c.get("ready").is_some_and(|r| r == &json!(true))
        {
            let t = c
                .pointer("/lastState/terminated")
                .or_else(|| c.pointer("/state/terminated"));
            let code = t.and_then(|t| t.get("exitCode")).and_then(Value::as_i64).unwrap_or(0);
            if code != 0 {
                let msg = t.map(|t| str_at(t, "/message")).unwrap_or_default();
                let msg = if msg.is_empty() {
                    format!("Container failed with: exit code {code}")
                } else {
                    format!("Container failed with: {msg}")
                };
                return Some((Kind::Container, "ExitCode", msg));
            }
        }
    }
    let unschedulable = p
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| str_at(c, "/type") == "PodScheduled" && str_at(c, "/reason") == "Unschedulable");
    unschedulable.map(|c| (Kind::Unschedulable, "Unschedulable", str_at(c, "/message").to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_gets_port_env_and_probe() {
        let rev = json!({"metadata": {"name": "hello-00001", "labels": {CONFIGURATION: "hello", SERVICE: "hello"}},
            "spec": {"containerConcurrency": 1, "timeoutSeconds": 300,
                "containers": [{"name": "user-container", "image": "x", "env": [{"name": "TARGET", "value": "World"}]}]}});
        let t = pod_template(&rev, &Map::new());
        let c = &t["spec"]["containers"][0];
        let mut routed = rev.clone();
        routed["metadata"]["labels"][ROUTING_STATE] = json!("active");
        routed["metadata"]["annotations"] = json!({ROUTES: "hello", ROUTING_STATE_MODIFIED: "now"});
        assert_eq!(
            pod_template(&routed, &Map::new())["metadata"],
            t["metadata"],
            "routing must not roll the pods"
        );
        assert_eq!(t["spec"].get("containerConcurrency"), None);
        let env: Vec<(&str, &str)> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (str_at(e, "/name"), str_at(e, "/value")))
            .collect();
        assert!(env.contains(&("PORT", "8080")) && env.contains(&("K_REVISION", "hello-00001")));
        assert!(
            env.contains(&("K_SERVICE", "hello"))
                && env.contains(&("K_CONFIGURATION", "hello"))
                && env.contains(&("TARGET", "World"))
        );
        assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], 8080);
        let h2 = json!({"spec": {"containers": [{"image": "x", "ports": [{"name": "h2c", "containerPort": 9000}],
            "readinessProbe": {"httpGet": {"path": "/healthz"}}}]}});
        assert_eq!(serving_port(&h2["spec"]), (0, 9000, true));
        let t = pod_template(&h2, &Map::new());
        assert_eq!(t["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"], 9000);
        // A port named without a number (TestProtocols' `{name: h2c}`) is the default port.
        let named = json!({"containers": [{"image": "x", "ports": [{"name": "h2c", "containerPort": 0}]}]});
        assert_eq!(serving_port(&named), (0, 8080, true));
    }

    #[test]
    fn failures_name_the_image() {
        let p = json!({"status": {"containerStatuses": [{"image": "nope:1", "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}});
        let (_, reason, message) = pod_failure(&p, "nope:1").unwrap();
        assert_eq!(reason, "ContainerMissing");
        assert!(message.contains("nope:1"), "{message}");
        let ok = json!({"status": {"containerStatuses": [{"ready": true, "state": {"running": {}}}]}});
        assert!(pod_failure(&ok, "x").is_none());
    }
}
