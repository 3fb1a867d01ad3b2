//! Knative Service → a Configuration and a Route of its name; its status is theirs.

use serde_json::{Value, json};

use super::{
    Meta, SERVING_API, apply, condition, inherited, keys_of, ns_name, owner_keys, prefix, served, set_condition,
    set_ready_from, write_status,
};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::controllers::{is_deleting, owner_ref, str_at};
use crate::store::Event;
use nodeless_types::knative::SERVICE;

/// The annotation (and its older spelling) that spreads a Route's traffic shifts over time.
const ROLLOUT_DURATION: [&str; 2] = [
    "serving.knative.dev/rollout-duration",
    "serving.knative.dev/rolloutDuration",
];

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with(&prefix("services")) {
        return vec![ev.key.clone()];
    }
    if ev.key.starts_with(&prefix("configurations")) || ev.key.starts_with(&prefix("routes")) {
        return owner_keys(ev, "Service", "services");
    }
    Vec::new()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    keys_of(client, "services")
}

/// The Route's traffic for the Service's: `latestRevision` targets follow its Configuration.
fn route_traffic(name: &str, traffic: Option<&Value>) -> Value {
    let list = traffic.and_then(Value::as_array).cloned().unwrap_or_default();
    Value::Array(
        list.into_iter()
            .map(|mut t| {
                if t.get("revisionName").and_then(Value::as_str).is_none_or(str::is_empty) {
                    t["configurationName"] = json!(name);
                    t["latestRevision"] = json!(true);
                }
                t
            })
            .collect(),
    )
}

/// Whether the Route already sends traffic where its spec says, its Configuration's targets at
/// that Configuration's latest ready revision. A Route that is Ready may not have caught up with
/// a revision that just became ready: until it has, the Service's routes are not ready
/// (Knative's `checkRoutesNotReady`), so a Service Ready after an update serves the update.
fn traffic_migrated(route: &Value, config: &Value) -> bool {
    let list = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_array).cloned().unwrap_or_default();
    let (want, got) = (list(route, "/spec/traffic"), list(route, "/status/traffic"));
    if want.len() != got.len() {
        return false;
    }
    let s = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
    let percent = |v: &Value| v.get("percent").and_then(Value::as_i64).unwrap_or(0);
    let (config_name, latest) = (
        str_at(config, "/metadata/name"),
        str_at(config, "/status/latestReadyRevisionName"),
    );
    want.iter().zip(&got).all(|(w, g)| {
        let revision = if s(w, "configurationName") == config_name {
            latest.to_string()
        } else {
            s(w, "revisionName")
        };
        revision == s(g, "revisionName") && percent(w) == percent(g) && s(w, "tag") == s(g, "tag")
    })
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    let (Some(svcs), Some(configs), Some(routes)) = (
        served(&client, "services"),
        served(&client, "configurations"),
        served(&client, "routes"),
    ) else {
        return Ok(());
    };
    let (ns, name) = ns_name(&key);
    let Some(cur) = client.get(&svcs, Some(&ns), &name) else {
        return Ok(());
    };
    let ksvc = &cur.obj;
    if is_deleting(ksvc) {
        return Ok(());
    }
    let meta = ksvc.get("metadata");
    let mut labels = inherited(meta, "labels");
    labels.insert(SERVICE.into(), json!(name));
    // The children's labels and annotations are the Service's (its visibility label among
    // them), exactly: what is taken off the Service goes from them too. The rollout duration
    // is the Route's alone.
    let annotations = inherited(meta, "annotations");
    let mut config_annotations = annotations.clone();
    config_annotations.retain(|k, _| !ROLLOUT_DURATION.contains(&k.as_str()));
    let owner = json!([owner_ref(SERVING_API, "Service", ksvc)]);
    let config = json!({
        "apiVersion": SERVING_API, "kind": "Configuration",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": config_annotations, "ownerReferences": owner},
        "spec": {"template": ksvc.pointer("/spec/template").cloned().unwrap_or(json!({}))},
    });
    let route = json!({
        "apiVersion": SERVING_API, "kind": "Route",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations, "ownerReferences": owner},
        "spec": {"traffic": route_traffic(&name, ksvc.pointer("/spec/traffic"))},
    });
    let mut status = ksvc.get("status").cloned().unwrap_or(json!({}));
    let config = match apply(&client, &configs, config, &["spec"], Meta::Replace).await {
        Ok(c) => c,
        // Refused by the checks Knative's webhook makes.
        Err(e @ (ApiError::Invalid { .. } | ApiError::BadRequest(_))) => {
            set_condition(
                &mut status,
                "ConfigurationsReady",
                "False",
                "CreateConfigurationFailed",
                &e.to_string(),
            );
            set_ready_from(&mut status, &["ConfigurationsReady", "RoutesReady"]);
            return write_status(&client, &svcs, &cur, status).await;
        }
        Err(e) => return Err(e),
    };
    let route = apply(&client, &routes, route, &["spec"], Meta::Replace).await?;
    // A child's status speaks for the spec it has seen: until then, Unknown.
    let seen = |o: &Value| o.pointer("/status/observedGeneration") == o.pointer("/metadata/generation");
    for (field, child) in [
        ("latestCreatedRevisionName", &config),
        ("latestReadyRevisionName", &config),
    ] {
        if let Some(v) = child.pointer(&format!("/status/{field}")) {
            status[field] = v.clone();
        }
    }
    for field in ["url", "address", "traffic"] {
        match route.pointer(&format!("/status/{field}")) {
            Some(v) => status[field] = v.clone(),
            None => {
                if let Some(m) = status.as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    for (ty, child, what) in [
        ("ConfigurationsReady", &config, "Configuration"),
        ("RoutesReady", &route, "Route"),
    ] {
        match condition(child, "Ready") {
            Some((state, reason, message)) if seen(child) => {
                let (state, reason, message) = (state.to_string(), reason.to_string(), message.to_string());
                set_condition(&mut status, ty, &state, &reason, &message)
            }
            _ => set_condition(
                &mut status,
                ty,
                "Unknown",
                "OutOfDate",
                &format!("The {what} is still working to reflect the latest desired specification."),
            ),
        }
    }
    let routes_ready = condition(&json!({"status": &status}), "RoutesReady").is_some_and(|c| c.0 == "True");
    if routes_ready && !traffic_migrated(&route, &config) {
        set_condition(
            &mut status,
            "RoutesReady",
            "Unknown",
            "TrafficNotMigrated",
            "Traffic is not yet migrated to the latest revision.",
        );
    }
    set_ready_from(&mut status, &["ConfigurationsReady", "RoutesReady"]);
    write_status(&client, &svcs, &cur, status).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_targets_follow_the_configuration() {
        let t = route_traffic(
            "hello",
            Some(
                &json!([{"latestRevision": true, "percent": 50}, {"revisionName": "hello-00001", "percent": 50, "tag": "old"}]),
            ),
        );
        assert_eq!(t[0]["configurationName"], "hello");
        assert_eq!(t[1].get("configurationName"), None);
        assert_eq!(t[1]["tag"], "old");
    }

    #[test]
    fn routes_are_not_ready_until_traffic_reaches_the_latest_ready_revision() {
        let config = json!({"metadata": {"name": "hello"}, "status": {"latestReadyRevisionName": "hello-00002"}});
        let route = |status: Value| {
            json!({"spec": {"traffic": [{"configurationName": "hello", "latestRevision": true, "percent": 90},
                    {"revisionName": "hello-00001", "percent": 10, "tag": "old"}]},
                "status": {"traffic": status}})
        };
        let caught_up = route(
            json!([{"revisionName": "hello-00002", "latestRevision": true, "percent": 90},
            {"revisionName": "hello-00001", "latestRevision": false, "percent": 10, "tag": "old", "url": "http://old-hello"}]),
        );
        assert!(traffic_migrated(&caught_up, &config));
        let behind = route(
            json!([{"revisionName": "hello-00001", "latestRevision": true, "percent": 90},
            {"revisionName": "hello-00001", "latestRevision": false, "percent": 10, "tag": "old"}]),
        );
        assert!(!traffic_migrated(&behind, &config));
        assert!(!traffic_migrated(&route(json!([])), &config));
    }
}
