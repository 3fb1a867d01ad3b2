//! Service → EndpointSlice (and the legacy Endpoints object) from the pods its selector picks.

use serde_json::{Value, json};

use super::{is_deleting, owner_ref, pod_ready, split_key, str_at};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::api::select::LabelSelector;
use crate::store::Event;
use nodeless_types::keys;

pub fn interested(client: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with("/core/services/") {
        return vec![ev.key.clone()];
    }
    if ev.key.starts_with("/core/pods/") {
        let ns = str_at(&ev.obj, "/metadata/namespace");
        let svc = client.served("", "services");
        let labels = [Some(&*ev.obj), ev.prev.as_deref()];
        return client
            .list(&svc, Some(ns), &|s| {
                let sel = s.pointer("/spec/selector");
                sel.is_some_and(|sel| {
                    let sel = LabelSelector::from_object(&json!({"matchLabels": sel}));
                    labels.iter().flatten().any(|p| sel.matches(p))
                })
            })
            .iter()
            .map(|s| svc.key(Some(ns), str_at(&s.obj, "/metadata/name")))
            .collect();
    }
    Vec::new()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    super::all_keys(client, "", "services")
}

/// A Service port's target on one pod: a number, or a named container port.
fn resolve_target(port: &Value, pod: &Value) -> Option<i64> {
    match port.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)?
            .iter()
            .flat_map(|c| c.get("ports").and_then(Value::as_array).into_iter().flatten())
            .find(|p| p.get("name") == Some(&json!(name)))
            .and_then(|p| p.get("containerPort").and_then(Value::as_i64)),
        _ => port.get("port").and_then(Value::as_i64),
    }
}

pub fn slice_name(svc: &str) -> String {
    format!("{svc}-nodeless")
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    let svc_res = client.served("", "services");
    let pods_res = client.served("", "pods");
    let slices = client.served("discovery.k8s.io", "endpointslices");
    let eps = client.served("", "endpoints");
    let (ns, name) = split_key(&key);
    let Some(svc) = client.get(&svc_res, ns, name) else {
        // The slice goes with its owner (garbage collection); Endpoints has no owner reference.
        return client.delete(&eps, ns, name, None).await;
    };
    let Some(selector) = svc
        .obj
        .pointer("/spec/selector")
        .filter(|s| s.as_object().is_some_and(|m| !m.is_empty()))
    else {
        return Ok(()); // No selector: the user manages the endpoints.
    };
    if is_deleting(&svc.obj) {
        return Ok(());
    }
    let sel = LabelSelector::from_object(&json!({"matchLabels": selector}));
    let mut pods: Vec<_> = client
        .list(&pods_res, ns, &|p| {
            sel.matches(p) && !str_at(p, "/status/podIP").is_empty()
        })
        .into_iter()
        .collect();
    pods.sort_by(|a, b| str_at(&a.obj, "/metadata/name").cmp(str_at(&b.obj, "/metadata/name")));
    let svc_ports = svc
        .obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let first_pod = pods.first().map(|p| (*p.obj).clone()).unwrap_or(json!({}));
    let ports: Vec<Value> = svc_ports
        .iter()
        .filter_map(|p| {
            let port = resolve_target(p, &first_pod)?;
            let mut out = json!({"port": port, "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP"))});
            out["name"] = p.get("name").cloned().unwrap_or(json!(""));
            if let Some(ap) = p.get("appProtocol") {
                out["appProtocol"] = ap.clone();
            }
            Some(out)
        })
        .collect();
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            let pod = &*p.obj;
            let ready = pod_ready(pod) && !is_deleting(pod);
            let mut ep = json!({
                "addresses": [str_at(pod, "/status/podIP")],
                "conditions": {"ready": ready, "serving": pod_ready(pod), "terminating": is_deleting(pod)},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": str_at(pod, "/metadata/name"), "uid": str_at(pod, "/metadata/uid")},
            });
            let node = str_at(pod, "/spec/nodeName");
            if !node.is_empty() {
                ep["nodeName"] = json!(node);
            }
            let hostname = str_at(pod, "/spec/hostname");
            if !hostname.is_empty() {
                ep["hostname"] = json!(hostname);
            }
            ep
        })
        .collect();
    let slice_name = slice_name(name);
    let want = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name, "namespace": ns,
            "labels": {keys::SERVICE_NAME: name, keys::MANAGED_BY: keys::ENDPOINTSLICE_CONTROLLER},
            "ownerReferences": [owner_ref("v1", "Service", &svc.obj)],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    });
    match client.get(&slices, ns, &slice_name) {
        None => {
            client.create(&slices, ns, want).await?;
        }
        Some(cur) => {
            if cur.obj.get("endpoints") != want.get("endpoints") || cur.obj.get("ports") != want.get("ports") {
                let mut new = (*cur.obj).clone();
                new["endpoints"] = want["endpoints"].clone();
                new["ports"] = want["ports"].clone();
                client.update(&slices, &cur, new).await?;
            }
        }
    }
    // The legacy Endpoints object, still read by many clients.
    let address = |p: &Value| {
        json!({"ip": str_at(p, "/status/podIP"), "nodeName": p.pointer("/spec/nodeName"),
            "targetRef": {"kind": "Pod", "namespace": ns, "name": str_at(p, "/metadata/name"), "uid": str_at(p, "/metadata/uid")}})
    };
    let serving = |p: &Value| pod_ready(p) && !is_deleting(p);
    let ready: Vec<Value> = pods
        .iter()
        .filter(|p| serving(&p.obj))
        .map(|p| address(&p.obj))
        .collect();
    let not_ready: Vec<Value> = pods
        .iter()
        .filter(|p| !serving(&p.obj))
        .map(|p| address(&p.obj))
        .collect();
    let subsets = if pods.is_empty() {
        json!([])
    } else {
        let mut subset = json!({"ports": ports});
        if !ready.is_empty() {
            subset["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            subset["notReadyAddresses"] = json!(not_ready);
        }
        json!([subset])
    };
    match client.get(&eps, ns, name) {
        None => {
            let obj = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns,
                "labels": svc.obj.pointer("/metadata/labels").cloned().unwrap_or(json!({}))}, "subsets": subsets});
            client.create(&eps, ns, obj).await?;
        }
        Some(cur) => {
            if cur.obj.get("subsets").unwrap_or(&json!([])) != &subsets {
                let mut new = (*cur.obj).clone();
                new["subsets"] = subsets;
                client.update(&eps, &cur, new).await?;
            }
        }
    }
    Ok(())
}
