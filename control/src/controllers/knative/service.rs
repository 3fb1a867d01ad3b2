//! Knative Service → a Configuration and a Route of its name; its status is theirs.

use serde_json::{Value, json};

use super::{
    SERVING_API, apply, condition, inherited, keys_of, ns_name, owner_keys, prefix, served, set_condition,
    set_ready_from, write_status,
};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::controllers::{is_deleting, owner_ref};
use crate::store::Event;
use nodeless_types::knative::{SERVICE, VISIBILITY};

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
    let annotations = inherited(meta, "annotations");
    let owner = json!([owner_ref(SERVING_API, "Service", ksvc)]);
    let config = json!({
        "apiVersion": SERVING_API, "kind": "Configuration",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations, "ownerReferences": owner},
        "spec": {"template": ksvc.pointer("/spec/template").cloned().unwrap_or(json!({}))},
    });
    let mut route_labels = labels.clone();
    if let Some(v) = labels.get(VISIBILITY) {
        route_labels.insert(VISIBILITY.into(), v.clone());
    }
    let route = json!({
        "apiVersion": SERVING_API, "kind": "Route",
        "metadata": {"name": name, "namespace": ns, "labels": route_labels, "annotations": annotations, "ownerReferences": owner},
        "spec": {"traffic": route_traffic(&name, ksvc.pointer("/spec/traffic"))},
    });
    let mut status = ksvc.get("status").cloned().unwrap_or(json!({}));
    let config = match apply(&client, &configs, config, &["spec"]).await {
        Ok(c) => c,
        Err(ApiError::Invalid { message, .. }) => {
            set_condition(
                &mut status,
                "ConfigurationsReady",
                "False",
                "CreateConfigurationFailed",
                &message,
            );
            set_ready_from(&mut status, &["ConfigurationsReady", "RoutesReady"]);
            return write_status(&client, &svcs, &cur, status).await;
        }
        Err(e) => return Err(e),
    };
    let route = apply(&client, &routes, route, &["spec"]).await?;
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
}
