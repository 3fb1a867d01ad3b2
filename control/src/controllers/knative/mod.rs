//! Knative Serving's controllers, each on the common loop ([`super::drive`]):
//! - [`service`]: a Service owns a Configuration and a Route of its name;
//! - [`configuration`]: each template change makes an immutable Revision; old ones are
//!   collected as `config-gc` says;
//! - [`revision`]: a Revision owns a Deployment (replicas from its PodAutoscaler), a Service the
//!   ingress sends to, and the PodAutoscaler;
//! - [`route`]: a Route's traffic, resolved to ready revisions, becomes a KIngress that
//!   ingress-l7 serves;
//! - [`autoscaler`] (its own loop): the KPA, from what the ingresses report.

pub mod autoscaler;
pub mod configuration;
pub mod revision;
pub mod route;
pub mod service;

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{split_key, str_at};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::api::registry::Served;
use crate::store::{Event, Stored};
use nodeless_types::knative::{AUTOSCALING_GROUP, NETWORKING_GROUP, SERVING_GROUP};

pub const SERVING_API: &str = "serving.knative.dev/v1";

/// A Knative resource by plural (`services`, `revisions`…, `ingresses` of the networking group,
/// `podautoscalers`), once its CRD is served.
pub fn served(client: &LocalClient, plural: &str) -> Option<Arc<Served>> {
    match plural {
        "ingresses" => client.lookup(NETWORKING_GROUP, "v1alpha1", plural),
        "podautoscalers" => client.lookup(AUTOSCALING_GROUP, "v1alpha1", plural),
        _ => client.lookup(SERVING_GROUP, "v1", plural),
    }
}

/// Every object of a Knative resource, as keys for a resync.
pub fn keys_of(client: &LocalClient, plural: &str) -> Vec<String> {
    served(client, plural)
        .map(|s| super::keys_of(client, &s))
        .unwrap_or_default()
}

/// The store key prefix of a Knative resource (`/serving.knative.dev/services/`).
pub fn prefix(plural: &str) -> String {
    let group = match plural {
        "ingresses" => NETWORKING_GROUP,
        "podautoscalers" => AUTOSCALING_GROUP,
        _ => SERVING_GROUP,
    };
    format!("/{group}/{plural}/")
}

/// For an event on an object owned (as controller) by a `kind` of the serving group: its
/// owner's key.
pub fn owner_keys(ev: &Event, kind: &str, owner_plural: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for obj in std::iter::once(&ev.obj).chain(ev.prev.iter()) {
        if let Some(r) = super::controller_ref(obj) {
            if str_at(r, "/kind") == kind && str_at(r, "/apiVersion").starts_with(SERVING_GROUP) {
                let k = format!(
                    "{}{}/{}",
                    prefix(owner_plural),
                    str_at(obj, "/metadata/namespace"),
                    str_at(r, "/name")
                );
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
    }
    keys
}

/// A condition of an object's status: (status, reason, message).
pub fn condition<'a>(v: &'a Value, ty: &str) -> Option<(&'a str, &'a str, &'a str)> {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
        .map(|c| (str_at(c, "/status"), str_at(c, "/reason"), str_at(c, "/message")))
}

pub fn is_ready(v: &Value) -> bool {
    condition(v, "Ready").is_some_and(|c| c.0 == "True")
}

/// Set a condition in `status.conditions`, keeping its transition time when the status stays.
pub fn set_condition(status: &mut Value, ty: &str, state: &str, reason: &str, message: &str) {
    if !status.is_object() {
        *status = json!({});
    }
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    let list = status["conditions"].as_array_mut().expect("made a list above");
    let now = crate::api::objects::now_rfc3339();
    let mut c = json!({"type": ty, "status": state, "lastTransitionTime": now});
    if !reason.is_empty() {
        c["reason"] = json!(reason);
    }
    if !message.is_empty() {
        c["message"] = json!(message);
    }
    match list
        .iter_mut()
        .find(|x| x.get("type").and_then(Value::as_str) == Some(ty))
    {
        Some(old) => {
            if old.get("status") == c.get("status") {
                c["lastTransitionTime"] = old.get("lastTransitionTime").cloned().unwrap_or(json!(now));
            }
            *old = c;
        }
        None => {
            list.push(c);
            list.sort_by(|a, b| str_at(a, "/type").cmp(str_at(b, "/type")));
        }
    }
}

/// `Ready` from the conditions it depends on: False if any is False (with its reason), Unknown
/// if any is Unknown, else True.
pub fn set_ready_from(status: &mut Value, deps: &[&str]) {
    let snapshot = json!({"status": status.clone()});
    let mut unknown = None;
    for d in deps {
        match condition(&snapshot, d) {
            Some(("True", _, _)) => {}
            Some(("False", reason, message)) => {
                let (reason, message) = (reason.to_string(), message.to_string());
                set_condition(status, "Ready", "False", &reason, &message);
                return;
            }
            Some((_, reason, message)) => {
                unknown.get_or_insert((reason.to_string(), message.to_string()));
            }
            None => {
                unknown.get_or_insert((String::new(), String::new()));
            }
        }
    }
    match unknown {
        Some((reason, message)) => set_condition(status, "Ready", "Unknown", &reason, &message),
        None => set_condition(status, "Ready", "True", "", ""),
    }
}

/// `Active` of a PodAutoscaler or Revision: pods ready, none wanted, or requests waiting for the
/// first.
pub fn set_active(status: &mut Value, ready: i64, desired: i64) {
    if ready > 0 {
        set_condition(status, "Active", "True", "", "");
    } else if desired == 0 {
        set_condition(
            status,
            "Active",
            "False",
            "NoTraffic",
            "The target is not receiving traffic.",
        );
    } else {
        set_condition(
            status,
            "Active",
            "Unknown",
            "Queued",
            "Requests to the target are being buffered as resources are provisioned.",
        );
    }
}

/// Write `status` if it differs from the stored one (with `observedGeneration` set).
pub async fn write_status(
    client: &LocalClient,
    served: &Served,
    cur: &Stored,
    mut status: Value,
) -> Result<(), ApiError> {
    if let Some(g) = cur.obj.pointer("/metadata/generation") {
        status["observedGeneration"] = g.clone();
    }
    if cur.obj.get("status") == Some(&status) {
        return Ok(());
    }
    let mut new = (*cur.obj).clone();
    new["status"] = status;
    client.update_status(served, cur, new).await.map(|_| ())
}

/// What [`apply`] does to the stored object's labels and annotations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Meta {
    /// Add ours and keep the rest: others write there too (the Deployment controller's
    /// revision annotation, the Route's labels on a Revision).
    Merge,
    /// Make them exactly ours, as Knative's Service controller does to its Configuration and
    /// Route: a label or annotation taken off the Service goes from them too.
    Replace,
}

/// Create `want` (named and namespaced in its metadata), or bring the stored one's spec, labels,
/// annotations and owners to it. `fields` are the top-level fields to compare (`spec`, or
/// `data`…); `meta` says whether labels and annotations not in `want` stay. Returns the object
/// as stored.
pub async fn apply(
    client: &LocalClient,
    served: &Served,
    want: Value,
    fields: &[&str],
    meta: Meta,
) -> Result<Value, ApiError> {
    let ns = want
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let name = str_at(&want, "/metadata/name").to_string();
    let Some(cur) = client.get(served, ns.as_deref(), &name) else {
        return client.create(served, ns.as_deref(), want).await;
    };
    let mut new = (*cur.obj).clone();
    let mut changed = false;
    for f in fields {
        let same = match (cur.obj.get(*f), want.get(*f)) {
            (Some(have), Some(w)) => contains(have, w),
            (have, w) => have == w,
        };
        if !same {
            new[*f] = want.get(*f).cloned().unwrap_or(Value::Null);
            changed = true;
        }
    }
    for m in ["labels", "annotations"] {
        let Some(w) = want.pointer(&format!("/metadata/{m}")).and_then(Value::as_object) else {
            continue;
        };
        let have = new["metadata"]
            .get(m)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut merged: Map<String, Value> = match meta {
            Meta::Merge => have.clone(),
            Meta::Replace => Map::new(),
        };
        for (k, v) in w {
            merged.insert(k.clone(), v.clone());
        }
        if merged != have {
            new["metadata"][m] = Value::Object(merged);
            changed = true;
        }
    }
    if let Some(o) = want.pointer("/metadata/ownerReferences") {
        if cur.obj.pointer("/metadata/ownerReferences") != Some(o) {
            new["metadata"]["ownerReferences"] = o.clone();
            changed = true;
        }
    }
    if !changed {
        return Ok((*cur.obj).clone());
    }
    client.update(served, &cur, new).await
}

/// Whether `have` holds everything `want` says (the API may have filled in defaults beside it):
/// objects field by field, lists element by element with the same length, the rest equal.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) => h.len() == w.len() && h.iter().zip(w).all(|(a, b)| contains(a, b)),
        (h, w) => h == w,
    }
}

/// The namespace and name of a key, for a reconcile.
pub fn ns_name(key: &str) -> (String, String) {
    let (ns, name) = split_key(key);
    (ns.unwrap_or_default().to_string(), name.to_string())
}

/// Labels and annotations of a Knative parent that its children carry (not kubectl's own).
pub fn inherited(meta: Option<&Value>, field: &str) -> Map<String, Value> {
    meta.and_then(|m| m.get(field))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != nodeless_types::keys::LAST_APPLIED)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_ignores_filled_in_defaults() {
        let have = json!({"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "IfNotPresent"}], "dnsPolicy": "ClusterFirst"}}});
        assert!(contains(
            &have,
            &json!({"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}})
        ));
        assert!(!contains(&have, &json!({"replicas": 2})));
        assert!(!contains(
            &have,
            &json!({"template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}})
        ));
    }

    #[test]
    fn conditions_keep_their_transition_time_and_ready_follows() {
        let mut st = json!({});
        set_condition(&mut st, "ConfigurationsReady", "True", "", "");
        set_condition(&mut st, "RoutesReady", "Unknown", "IngressNotConfigured", "waiting");
        set_ready_from(&mut st, &["ConfigurationsReady", "RoutesReady"]);
        let v = json!({"status": st.clone()});
        assert_eq!(
            condition(&v, "Ready"),
            Some(("Unknown", "IngressNotConfigured", "waiting"))
        );
        let t0 = str_at(&v, "/status/conditions/0/lastTransitionTime").to_string();
        set_condition(&mut st, "RoutesReady", "False", "RevisionMissing", "gone");
        set_ready_from(&mut st, &["ConfigurationsReady", "RoutesReady"]);
        let v = json!({"status": st.clone()});
        assert_eq!(condition(&v, "Ready").map(|c| c.1), Some("RevisionMissing"));
        assert_eq!(str_at(&v, "/status/conditions/0/lastTransitionTime"), t0);
        set_condition(&mut st, "RoutesReady", "True", "", "");
        set_ready_from(&mut st, &["ConfigurationsReady", "RoutesReady"]);
        assert!(is_ready(&json!({"status": st})));
    }
}
