//! `autoscaling/v1` HorizontalPodAutoscaler, a view of the stored `autoscaling/v2` objects
//! (kubectl up to 1.30 makes its `kubectl autoscale` HPAs in v1). As on Kubernetes, v1 holds one
//! target, the CPU utilisation; whatever else a v2 object says (other metrics, behavior,
//! conditions, current metrics) rides in the `autoscaling.alpha.kubernetes.io/*` annotations,
//! so a v1 client's read-modify-write loses nothing. Bodies are converted on the way in, every
//! answer (objects, lists, tables, watch events) on the way out; a v1 request is answered in
//! JSON (the clients that ask for protobuf accept JSON too).

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::http::Body;

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

pub const V1: &str = "autoscaling/v1";
const V2: &str = "autoscaling/v2";

fn is_cpu_utilisation(m: &Value) -> bool {
    m["type"] == "Resource" && m["resource"]["name"] == "cpu" && m["resource"]["target"]["type"] == "Utilization"
}

fn annotations(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let meta = obj.get_mut("metadata")?.as_object_mut()?;
    meta.entry("annotations").or_insert_with(|| json!({})).as_object_mut()
}

fn drop_empty_annotations(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        && meta
            .get("annotations")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
    {
        meta.remove("annotations");
    }
}

/// A stored (v2) object as v1 shows it.
pub fn to_v1(mut obj: Value) -> Value {
    if obj["kind"] != "HorizontalPodAutoscaler" {
        return obj;
    }
    obj["apiVersion"] = json!(V1);
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let status = obj.get("status").cloned();
    let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
    let cpu = metrics.iter().find(|m| is_cpu_utilisation(m)).cloned();
    let others: Vec<Value> = metrics.into_iter().filter(|m| !is_cpu_utilisation(m)).collect();
    let mut v1_spec = json!({"scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": spec["maxReplicas"]});
    if let Some(min) = spec.get("minReplicas") {
        v1_spec["minReplicas"] = min.clone();
    }
    if let Some(cpu) = &cpu {
        v1_spec["targetCPUUtilizationPercentage"] = cpu["resource"]["target"]["averageUtilization"].clone();
    }
    let mut carried = Vec::new();
    if !others.is_empty() {
        carried.push((METRICS, Value::Array(others)));
    }
    if let Some(b) = spec.get("behavior").filter(|b| !b.is_null()) {
        carried.push((BEHAVIOR, b.clone()));
    }
    let mut v1_status = json!({});
    if let Some(s) = &status {
        for f in [
            "observedGeneration",
            "lastScaleTime",
            "currentReplicas",
            "desiredReplicas",
        ] {
            if let Some(v) = s.get(f) {
                v1_status[f] = v.clone();
            }
        }
        let current = s["currentMetrics"].as_array().cloned().unwrap_or_default();
        if let Some(u) = current
            .iter()
            .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
            .and_then(|m| m["resource"]["current"].get("averageUtilization"))
        {
            v1_status["currentCPUUtilizationPercentage"] = u.clone();
        }
        if !current.is_empty() {
            carried.push((CURRENT_METRICS, Value::Array(current)));
        }
        if let Some(c) = s
            .get("conditions")
            .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()))
        {
            carried.push((CONDITIONS, c.clone()));
        }
    }
    obj["spec"] = v1_spec;
    if status.is_some() {
        obj["status"] = v1_status;
    }
    if !carried.is_empty()
        && let Some(a) = annotations(&mut obj)
    {
        for (k, v) in carried {
            a.insert(k.into(), json!(v.to_string()));
        }
    }
    obj
}

/// A v1 body as the v2 object it is stored as: the CPU target becomes a metric, the carried
/// annotations become fields again.
pub fn to_v2(mut obj: Value) -> Result<Value, ApiError> {
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some(V1) => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({other}) does not match the expected API version ({V1})"
            )));
        }
    }
    obj["apiVersion"] = json!(V2);
    if obj.get("kind").is_none() {
        obj["kind"] = json!("HorizontalPodAutoscaler");
    }
    let mut carried = |key: &str| -> Result<Option<Value>, ApiError> {
        let Some(text) = annotations(&mut obj).and_then(|a| a.remove(key)) else {
            return Ok(None);
        };
        let text = text.as_str().unwrap_or_default().to_string();
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("metadata.annotations[{key}]: not JSON: {e}")))
    };
    let others = carried(METRICS)?;
    let behavior = carried(BEHAVIOR)?;
    let conditions = carried(CONDITIONS)?;
    let current = carried(CURRENT_METRICS)?;
    drop_empty_annotations(&mut obj);
    if let Some(spec) = obj.get("spec").cloned() {
        let mut metrics: Vec<Value> = Vec::new();
        if let Some(t) = spec.get("targetCPUUtilizationPercentage").filter(|t| !t.is_null()) {
            metrics.push(json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": t}}}));
        }
        metrics.extend(others.and_then(|v| v.as_array().cloned()).unwrap_or_default());
        let mut v2 = json!({"scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": spec["maxReplicas"]});
        if let Some(min) = spec.get("minReplicas") {
            v2["minReplicas"] = min.clone();
        }
        if !metrics.is_empty() {
            v2["metrics"] = Value::Array(metrics);
        }
        if let Some(b) = behavior {
            v2["behavior"] = b;
        }
        obj["spec"] = v2;
    }
    if let Some(status) = obj.get("status").cloned() {
        let mut v2 = json!({});
        for f in [
            "observedGeneration",
            "lastScaleTime",
            "currentReplicas",
            "desiredReplicas",
        ] {
            if let Some(v) = status.get(f) {
                v2[f] = v.clone();
            }
        }
        match current {
            Some(c) => v2["currentMetrics"] = c,
            None => {
                if let Some(u) = status.get("currentCPUUtilizationPercentage") {
                    v2["currentMetrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": u}}}]);
                }
            }
        }
        if let Some(c) = conditions {
            v2["conditions"] = c;
        }
        obj["status"] = v2;
    }
    Ok(obj)
}

/// Any answer's JSON as v1 shows it: an object, a list's items, a table's row objects or a
/// watch event's object (a `Status` passes as it is).
fn answer_to_v1(mut v: Value) -> Value {
    match v["kind"].as_str().unwrap_or_default() {
        "HorizontalPodAutoscaler" => to_v1(v),
        "HorizontalPodAutoscalerList" => {
            v["apiVersion"] = json!(V1);
            if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
                for i in items.iter_mut() {
                    *i = to_v1(std::mem::take(i));
                }
            }
            v
        }
        "Table" => {
            if let Some(rows) = v.get_mut("rows").and_then(Value::as_array_mut) {
                for r in rows.iter_mut() {
                    if let Some(o) = r.get_mut("object") {
                        *o = to_v1(std::mem::take(o));
                    }
                }
            }
            v
        }
        _ if v.get("type").is_some() && v.get("object").is_some() => {
            let o = v["object"].take();
            v["object"] = to_v1(o);
            v
        }
        _ => v,
    }
}

fn is_json(resp: &http::Response<Body>) -> bool {
    resp.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"))
}

/// Turn an answer about the stored objects into the v1 answer: a whole body converted at once,
/// or a watch stream converted event by event (each one JSON line).
pub async fn answer(resp: http::Response<Body>, streaming: bool) -> http::Response<Body> {
    if !is_json(&resp) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    if streaming {
        let mut pending: Vec<u8> = Vec::new();
        let events = body.into_data_stream().map(move |chunk| {
            let Ok(chunk) = chunk;
            pending.extend_from_slice(&chunk);
            let mut out = Vec::new();
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                match serde_json::from_slice::<Value>(&line) {
                    Ok(v) => {
                        out.extend(serde_json::to_vec(&answer_to_v1(v)).unwrap_or_default());
                        out.push(b'\n');
                    }
                    Err(_) => out.extend(line),
                }
            }
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(out)))
        });
        return http::Response::from_parts(parts, BodyExt::boxed_unsync(StreamBody::new(events)));
    }
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => match e {},
    };
    let converted = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => Bytes::from(serde_json::to_vec(&answer_to_v1(v)).unwrap_or_default()),
        Err(_) => bytes,
    };
    http::Response::from_parts(parts, super::http::full(converted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}},
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 75}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}],
            },
        })
    }

    #[test]
    fn v1_shows_the_cpu_target_and_carries_the_rest_in_annotations() {
        let v1 = to_v1(v2());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert_eq!(v1["spec"]["maxReplicas"], 5);
        assert!(v1["spec"].get("metrics").is_none());
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 75);
        assert_eq!(v1["status"]["desiredReplicas"], 3);
        let a = &v1["metadata"]["annotations"];
        assert!(a[METRICS].as_str().unwrap().contains("memory"));
        assert!(a[BEHAVIOR].as_str().unwrap().contains("stabilizationWindowSeconds"));
        assert!(a[CONDITIONS].as_str().unwrap().contains("AbleToScale"));
    }

    #[test]
    fn a_v1_read_modify_write_loses_nothing() {
        let back = to_v2(to_v1(v2())).unwrap();
        assert_eq!(back, v2());
    }

    #[test]
    fn a_v1_body_becomes_a_v2_object_and_another_version_is_refused() {
        let v1 = json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x", "apiVersion": "apps/v1"}, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50},
        });
        let v2 = to_v2(v1).unwrap();
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 50);
        assert!(v2["metadata"].get("annotations").is_none());
        assert!(to_v2(json!({"apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler"})).is_err());
    }

    #[test]
    fn lists_tables_and_watch_events_are_shown_as_v1() {
        let list = answer_to_v1(
            json!({"kind": "HorizontalPodAutoscalerList", "apiVersion": "autoscaling/v2", "items": [v2()]}),
        );
        assert_eq!(list["apiVersion"], "autoscaling/v1");
        assert_eq!(list["items"][0]["spec"]["targetCPUUtilizationPercentage"], 60);
        let ev = answer_to_v1(json!({"type": "ADDED", "object": v2()}));
        assert_eq!(ev["object"]["apiVersion"], "autoscaling/v1");
        let status = json!({"kind": "Status", "status": "Failure", "code": 404});
        assert_eq!(answer_to_v1(status.clone()), status);
    }
}
