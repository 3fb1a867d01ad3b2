//! The resource metrics API, `metrics.k8s.io/v1beta1` PodMetrics and NodeMetrics, what
//! metrics-server gives a cluster, served by control from what [`crate::usage`] keeps: every
//! [`SCRAPE_EVERY`] control reads each node's `/metrics/resource`.

use std::sync::Arc;
use std::time::Duration;

use ::http::Response;
use serde_json::{Value, json};

use super::ApiState;
use super::error::{ApiError, not_found};
use super::http::{Body, Want, respond};
use super::query::Query;
use super::registry::Served;
use super::select::LabelSelector;
use crate::usage::Usage;

/// How often nodes are scraped (metrics-server's default resolution is 15 s).
pub const SCRAPE_EVERY: Duration = Duration::from_secs(10);

fn cpu_quantity(cores: f64) -> String {
    format!("{}n", (cores * 1e9).round() as u64)
}

fn memory_quantity(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

fn stamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn window(d: Duration) -> String {
    format!("{}s", d.as_secs_f64().round() as u64)
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn pod_metrics(usage: &Usage, pod: &Value) -> Option<Value> {
    let (ns, name) = (str_at(pod, "/metadata/namespace"), str_at(pod, "/metadata/name"));
    let containers = usage.pod(ns, name);
    let first = containers.first()?;
    let (w, at) = (first.window, first.at_ms);
    Some(json!({
        "kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": stamp(chrono::Utc::now().timestamp_millis()),
            "labels": pod.pointer("/metadata/labels").cloned().unwrap_or(json!({}))},
        "timestamp": stamp(at), "window": window(w),
        "containers": containers.iter().map(|c| json!({"name": c.name, "usage": {"cpu": cpu_quantity(c.cores), "memory": memory_quantity(c.memory)}})).collect::<Vec<_>>(),
    }))
}

fn node_metrics(usage: &Usage, node: &Value) -> Option<Value> {
    let name = str_at(node, "/metadata/name");
    let (cpu, mem, w, at) = usage.node(name)?;
    Some(json!({
        "kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": name, "creationTimestamp": stamp(chrono::Utc::now().timestamp_millis()),
            "labels": node.pointer("/metadata/labels").cloned().unwrap_or(json!({}))},
        "timestamp": stamp(at), "window": window(w),
        "usage": {"cpu": cpu_quantity(cpu), "memory": memory_quantity(mem)},
    }))
}

/// GET of PodMetrics or NodeMetrics, one or a list (label selectors apply to the pods' and
/// nodes' own labels).
pub fn answer(
    state: &ApiState,
    served: &Served,
    ns: Option<&str>,
    name: Option<&str>,
    q: &Query,
    want: Want,
) -> Result<Response<Body>, ApiError> {
    type Make = fn(&Usage, &Value) -> Option<Value>;
    let (plural, make): (&str, Make) = match served.def.kind.as_str() {
        "PodMetrics" => ("pods", pod_metrics),
        _ => ("nodes", node_metrics),
    };
    let source = state.registry.lookup("", "v1", plural).ok_or(ApiError::NoRoute)?;
    if let Some(name) = name {
        let obj = state
            .store
            .get(&source.key(ns, name))
            .ok_or_else(|| not_found(served, name))?;
        let m = make(&state.usage, &obj.obj).ok_or_else(|| not_found(served, name))?;
        return Ok(respond(want, 200, &m, &[]));
    }
    let selector = match q.get("labelSelector") {
        Some(s) => LabelSelector::parse(s)?,
        None => LabelSelector::parse("")?,
    };
    let (items, _, _) = state
        .store
        .list(&source.ns_prefix(ns), None, 0, &|o| selector.matches(o));
    let items: Vec<Value> = items.iter().filter_map(|s| make(&state.usage, &s.obj)).collect();
    let list = json!({
        "kind": format!("{}List", served.def.kind), "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {}, "items": items,
    });
    Ok(respond(want, 200, &list, &[]))
}

/// Scrape every node now and then, for as long as control runs.
pub async fn scrape(state: Arc<ApiState>) {
    let mut tick = tokio::time::interval(SCRAPE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let nodes = state.registry.lookup("", "v1", "nodes");
        let Some(nodes) = nodes else { continue };
        let (items, _, _) = state.store.list(&nodes.prefix(), None, 0, &|_| true);
        for node in items {
            let name = str_at(&node.obj, "/metadata/name").to_string();
            let got =
                tokio::time::timeout(SCRAPE_EVERY, super::pods::node_get(&state, &name, "/metrics/resource")).await;
            match got {
                Ok(Ok(text)) => state.usage.record(&name, &text, chrono::Utc::now().timestamp_millis()),
                Ok(Err(e)) => tracing::debug!(node = %name, error = %e, "scraping resource metrics"),
                Err(_) => tracing::debug!(node = %name, "scraping resource metrics timed out"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_metrics_servers() {
        assert_eq!(cpu_quantity(0.5), "500000000n");
        assert_eq!(memory_quantity(8192), "8Ki");
        assert_eq!(window(Duration::from_millis(10_400)), "10s");
    }
}
