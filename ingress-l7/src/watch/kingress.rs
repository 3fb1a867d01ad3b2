//! Following Knative's KIngresses, and writing their status. The kind is a CRD control serves
//! only when Knative Serving is on, so it is followed apart from the kinds every cluster has
//! ([`nodeless_watch::Follow`] waits for every kind's first list before the first rebuild): a
//! list that fails (404 on a cluster without the CRD) is retried quietly with kube's backoff,
//! and meanwhile the table is built with no KIngress, exactly as before Knative.

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::routes::knative::{self, Served};

/// The conditions a served KIngress's status says are true.
const CONDITIONS: [&str; 3] = ["LoadBalancerReady", "NetworkConfigured", "Ready"];

pub struct KIngresses {
    store: Store<DynamicObject>,
    events: BoxStream<'static, Result<(), watcher::Error>>,
    ended: bool,
}

impl KIngresses {
    /// Start following (the first list is made when [`KIngresses::changed`] is first polled).
    pub fn new(client: kube::Client) -> KIngresses {
        let ar = knative::api_resource();
        let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        let store = writer.as_reader();
        let events = reflector::reflector(
            writer,
            watcher(Api::<DynamicObject>::all_with(client, &ar), watcher::Config::default()),
        )
        .default_backoff()
        .map_ok(|_| ())
        .boxed();
        KIngresses {
            store,
            events,
            ended: false,
        }
    }

    /// The next change, with whatever else arrives within the settle time; errors (the kind
    /// not served yet, control away) are logged at trace level and waited through.
    pub async fn changed(&mut self) {
        loop {
            if self.ended {
                return std::future::pending().await;
            }
            match self.events.next().await {
                Some(Ok(())) => break,
                Some(Err(e)) => tracing::trace!(error = %e, "watching KIngresses (retried)"),
                None => self.ended = true,
            }
        }
        let deadline = tokio::time::Instant::now() + nodeless_watch::SETTLE;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.events.next()).await {}
    }

    pub fn state(&self) -> Vec<Arc<DynamicObject>> {
        self.store.state()
    }
}

/// Whether a KIngress's status already says what serving it would write.
fn current(k: &DynamicObject, generation: i64, domain: &str) -> bool {
    let status = &k.data["status"];
    let ready = status["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    status["observedGeneration"].as_i64() == Some(generation)
        && ready
        && status["publicLoadBalancer"]["ingress"][0]["domainInternal"] == domain
}

/// The status a served KIngress gets.
pub fn status(generation: i64, domain: &str, now: &str) -> serde_json::Value {
    let conditions: Vec<_> = CONDITIONS
        .iter()
        .map(|t| json!({"type": t, "status": "True", "lastTransitionTime": now}))
        .collect();
    let lb = json!({"ingress": [{"domainInternal": domain}]});
    json!({"status": {
        "observedGeneration": generation,
        "conditions": conditions,
        "publicLoadBalancer": lb,
        "privateLoadBalancer": lb,
    }})
}

/// Mark each served KIngress ready, unless its status says so already for its generation.
pub async fn publish(client: &kube::Client, all: &[Arc<DynamicObject>], served: &[Served], domain: &str) {
    let ar = knative::api_resource();
    for s in served {
        let Some(k) = all.iter().find(|k| {
            k.metadata.namespace.as_deref() == Some(s.namespace.as_str())
                && k.metadata.name.as_deref() == Some(s.name.as_str())
        }) else {
            continue;
        };
        if current(k, s.generation, domain) {
            continue;
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &s.namespace, &ar);
        let patch = Patch::Merge(status(s.generation, domain, &now));
        match api.patch_status(&s.name, &PatchParams::default(), &patch).await {
            Ok(_) => {
                tracing::info!(kingress = %format!("{}/{}", s.namespace, s.name), generation = s.generation, "KIngress ready")
            }
            Err(e) => {
                tracing::warn!(kingress = %format!("{}/{}", s.namespace, s.name), error = %e, "writing the KIngress status")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_written_is_current_and_a_new_generation_is_not() {
        let mut k: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
            "metadata": {"name": "hello", "namespace": "default", "generation": 3}
        }))
        .unwrap();
        assert!(!current(&k, 3, "192.0.2.10"));
        k.data["status"] = status(3, "192.0.2.10", "2026-01-01T00:00:00Z")["status"].clone();
        assert!(current(&k, 3, "192.0.2.10"));
        assert!(!current(&k, 4, "192.0.2.10"), "a new generation is written");
        assert!(!current(&k, 3, "192.0.2.11"), "a new address is written");
    }
}
