//! Following Knative's KIngresses, and writing their status. The kind is a CRD control serves
//! only when Knative Serving is on, so it is followed apart from the kinds every cluster has
//! ([`nodeless_watch::Follow`] waits for every kind's first list before the first rebuild): a
//! list that fails (404 on a cluster without the CRD) is retried quietly with kube's backoff,
//! and meanwhile the table is built with no KIngress, exactly as before Knative.

use std::net::{IpAddr, SocketAddr};
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

/// The port pods reach the internal listener on. Control's Service for a Route (named as the
/// Route, port 80) has one endpoint, `privateLoadBalancer.ingress[0].ip` port 80: the KIngress
/// status has no field for a port, so the ingress names an internal address only when it listens
/// there on this port, and cluster-local routes are reached on port 80 by design.
pub const INTERNAL_PORT: u16 = 80;

/// What a served KIngress's load balancers name: `domainInternal` (`--address`, else the HTTP
/// listener's IP) in both, and in the private one the internal listener's IP, the endpoint of
/// the Route's in-cluster Service, when there is one that pods can reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub domain: String,
    pub internal: Option<IpAddr>,
}

impl Addresses {
    /// The addresses of an ingress whose internal listener (if any) is bound to `internal`: its
    /// IP is published only on [`INTERNAL_PORT`] and when it names one address (a wildcard says
    /// nothing a Service's endpoint could use).
    pub fn of(domain: String, internal: Option<SocketAddr>) -> Addresses {
        let internal = internal
            .filter(|a| a.port() == INTERNAL_PORT && !a.ip().is_unspecified())
            .map(|a| a.ip());
        Addresses { domain, internal }
    }

    /// The private load balancer's entry.
    fn private(&self) -> serde_json::Value {
        match self.internal {
            Some(ip) => json!({"domainInternal": self.domain, "ip": ip.to_string()}),
            None => json!({"domainInternal": self.domain}),
        }
    }
}

/// Whether a KIngress's status already says what serving it would write.
fn current(k: &DynamicObject, generation: i64, at: &Addresses) -> bool {
    let status = &k.data["status"];
    let ready = status["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    status["observedGeneration"].as_i64() == Some(generation)
        && ready
        && status["publicLoadBalancer"]["ingress"][0]["domainInternal"] == at.domain.as_str()
        && status["privateLoadBalancer"]["ingress"][0] == at.private()
}

/// The status a served KIngress gets. The load balancers' lists are written whole (a merge
/// patch replaces arrays), so an `ip` written before goes when the internal listener does.
pub fn status(generation: i64, at: &Addresses, now: &str) -> serde_json::Value {
    let conditions: Vec<_> = CONDITIONS
        .iter()
        .map(|t| json!({"type": t, "status": "True", "lastTransitionTime": now}))
        .collect();
    json!({"status": {
        "observedGeneration": generation,
        "conditions": conditions,
        "publicLoadBalancer": {"ingress": [{"domainInternal": at.domain}]},
        "privateLoadBalancer": {"ingress": [at.private()]},
    }})
}

/// Mark each served KIngress ready, unless its status says so already for its generation.
pub async fn publish(client: &kube::Client, all: &[Arc<DynamicObject>], served: &[Served], at: &Addresses) {
    let ar = knative::api_resource();
    for s in served {
        let Some(k) = all.iter().find(|k| {
            k.metadata.namespace.as_deref() == Some(s.namespace.as_str())
                && k.metadata.name.as_deref() == Some(s.name.as_str())
        }) else {
            continue;
        };
        if current(k, s.generation, at) {
            continue;
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &s.namespace, &ar);
        let patch = Patch::Merge(status(s.generation, at, &now));
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

    fn at(internal: Option<&str>) -> Addresses {
        Addresses::of("192.0.2.10".into(), internal.map(|a| a.parse().unwrap()))
    }

    #[test]
    fn a_status_written_is_current_and_a_new_generation_is_not() {
        let mut k: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
            "metadata": {"name": "hello", "namespace": "default", "generation": 3}
        }))
        .unwrap();
        let (public, internal) = (at(None), at(Some("10.66.0.1:80")));
        assert!(!current(&k, 3, &public));
        k.data["status"] = status(3, &public, "2026-01-01T00:00:00Z")["status"].clone();
        assert!(current(&k, 3, &public));
        assert!(!current(&k, 4, &public), "a new generation is written");
        let moved = Addresses::of("192.0.2.11".into(), None);
        assert!(!current(&k, 3, &moved), "a new address is written");
        assert!(!current(&k, 3, &internal), "an internal listener's address is written");
        k.data["status"] = status(3, &internal, "2026-01-01T00:00:00Z")["status"].clone();
        assert!(current(&k, 3, &internal));
        assert!(!current(&k, 3, &public), "an internal address gone is written");
    }

    #[test]
    fn the_private_load_balancer_names_the_internal_listener_on_port_80_only() {
        let conditions = json!([
            {"type": "LoadBalancerReady", "status": "True", "lastTransitionTime": "t"},
            {"type": "NetworkConfigured", "status": "True", "lastTransitionTime": "t"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "t"},
        ]);
        assert_eq!(
            status(2, &at(Some("10.66.0.1:80")), "t"),
            json!({"status": {
                "observedGeneration": 2,
                "conditions": conditions,
                "publicLoadBalancer": {"ingress": [{"domainInternal": "192.0.2.10"}]},
                "privateLoadBalancer": {"ingress": [{"domainInternal": "192.0.2.10", "ip": "10.66.0.1"}]},
            }})
        );
        let without = json!({"status": {
            "observedGeneration": 2,
            "conditions": conditions,
            "publicLoadBalancer": {"ingress": [{"domainInternal": "192.0.2.10"}]},
            "privateLoadBalancer": {"ingress": [{"domainInternal": "192.0.2.10"}]},
        }});
        assert_eq!(status(2, &at(None), "t"), without, "no internal listener");
        // Control's Service sends port 80 there; a wildcard is no endpoint.
        assert_eq!(status(2, &at(Some("10.66.0.1:8080")), "t"), without, "another port");
        assert_eq!(status(2, &at(Some("0.0.0.0:80")), "t"), without, "a wildcard");
    }
}
