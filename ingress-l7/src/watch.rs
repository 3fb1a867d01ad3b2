//! Keeps the routing table and the certificates in step with the control API through `kube`
//! reflectors (`nodeless_watch::Follow`): after a change (and a short settle, so a burst is one
//! rebuild) the table is built whole and swapped in; requests under way keep the table they
//! started with. The address the ingress answers on is published in the `status.loadBalancer` of
//! every Ingress it serves. Knative's KIngresses are followed beside them ([`kingress`]): they
//! add the table's Knative part, their revisions' endpoints go to the activator, and each served
//! KIngress is marked ready.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Api;
use kube::api::{Patch, PatchParams};
use nodeless_watch::Follow;
use serde_json::json;

use crate::activator::Activator;
use crate::lb;
use crate::routes::knative;
use crate::routes::{self, Table};
use crate::tls::Certs;

pub mod kingress;

/// What serving Knative needs from the watch: the activator whose revisions the table feeds, and
/// the addresses KIngresses' status names (`domainInternal`, the internal listener's `ip`).
pub struct Knative {
    pub activator: Arc<Activator>,
    pub at: kingress::Addresses,
}

/// Where LoadBalancer Services' plans go: the pool, and the channel to the forwarder.
pub struct LoadBalancers {
    pub pool: ipnet::Ipv4Net,
    pub plans: tokio::sync::watch::Sender<Arc<Vec<lb::Assignment>>>,
}

pub async fn run(
    client: kube::Client,
    table: Arc<ArcSwap<Table>>,
    certs: Arc<Certs>,
    address: Option<String>,
    lbs: Option<LoadBalancers>,
    kn: Knative,
) {
    let mut reported: Vec<String> = Vec::new();
    // A 20 ms settle (nodeless_watch::SETTLE), and no rebuild before every first list is in.
    let mut follow = Follow::new(client.clone(), "watch (the table keeps what it holds)");
    let ingresses = follow.all::<Ingress>();
    let classes = follow.all::<IngressClass>();
    let services = follow.all::<Service>();
    let slices = follow.all::<EndpointSlice>();
    let secrets = follow.all::<Secret>();
    let mut kingresses = kingress::KIngresses::new(client.clone());
    // KIngress changes are only looked at once the other kinds are listed, so the first
    // rebuild waits for those (and `follow.changed()`, cancelled by a KIngress change, can only
    // lose events that the rebuild right after reads anyway).
    let mut listed = false;
    loop {
        tokio::select! {
            more = follow.changed() => {
                if !more {
                    break;
                }
                listed = true;
            }
            () = kingresses.changed(), if listed => {}
        }
        let all_ingresses = ingresses.state();
        let all_services = services.state();
        let all_slices = slices.state();
        let all_kingresses = kingresses.state();
        let prior = table.load();
        let mut built = routes::build(&all_ingresses, &classes.state(), &all_services, &all_slices, &prior);
        built.knative = knative::build(&all_kingresses, &all_services, &all_slices, &kn.activator, &prior);
        drop(prior);
        let by_name: HashMap<String, Arc<Secret>> = secrets
            .state()
            .into_iter()
            .map(|s| {
                (
                    format!(
                        "{}/{}",
                        s.metadata.namespace.clone().unwrap_or_default(),
                        s.metadata.name.clone().unwrap_or_default()
                    ),
                    s,
                )
            })
            .collect();
        for problem in built.problems.iter().chain(&built.knative.problems) {
            tracing::warn!(%problem, "annotation ignored");
        }
        for problem in certs.update(&built.tls, &by_name) {
            tracing::warn!(%problem, "TLS certificate left out");
        }
        tracing::debug!(
            ingresses = built.ingresses.len(),
            tls_hosts = certs.hosts(),
            "routing table rebuilt"
        );
        let served = built.ingresses.clone();
        let revisions = built.knative.revisions.clone();
        let served_kingresses = built.knative.served.clone();
        table.store(Arc::new(built));
        // Requests waiting for a revision look at its endpoints again.
        kn.activator.apply(&revisions);
        if let Some(addr) = &address {
            publish(&client, &all_ingresses, &served, addr).await;
        }
        kingress::publish(&client, &all_kingresses, &served_kingresses, &kn.at).await;
        if let Some(lbs) = &lbs {
            let plan = lb::plan(lbs.pool, &all_services, &all_slices);
            // Each problem is logged when it appears, not on every rebuild.
            for problem in plan.problems.iter().filter(|p| !reported.contains(p)) {
                tracing::warn!(%problem, "load balancer");
            }
            reported = plan.problems.clone();
            let _ = lbs.plans.send(Arc::new(plan.assignments.clone()));
            publish_lb(&client, &all_services, &plan.assignments, lbs.pool).await;
        }
    }
}

/// Write each LoadBalancer Service's address and ports into its status, and clear the pool's
/// address from a Service that is no longer ours.
async fn publish_lb(
    client: &kube::Client,
    services: &[Arc<Service>],
    assignments: &[lb::Assignment],
    pool: ipnet::Ipv4Net,
) {
    for s in services {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let name = s.metadata.name.clone().unwrap_or_default();
        let id = format!("{ns}/{name}");
        let want = if lb::ours(s) {
            lb::status_value(assignments.iter().find(|a| a.service == id))
        } else if !lb::status_ips(s, pool).is_empty() {
            lb::status_value(None)
        } else {
            continue;
        };
        if lb::status_matches(s, &want) {
            continue;
        }
        let api: Api<Service> = Api::namespaced(client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": want}})),
            )
            .await
        {
            Ok(_) => tracing::info!(service = %id, status = %want, "load balancer status"),
            Err(e) => tracing::warn!(service = %id, error = %e, "publishing the load balancer status"),
        }
    }
}

/// Write the ingress's address into the status of each served Ingress that lacks it.
async fn publish(client: &kube::Client, all: &[Arc<Ingress>], served: &[String], address: &str) {
    let lb = if address.parse::<std::net::IpAddr>().is_ok() {
        json!({"ip": address})
    } else {
        json!({"hostname": address})
    };
    for ing in all {
        let ns = ing.metadata.namespace.clone().unwrap_or_default();
        let name = ing.metadata.name.clone().unwrap_or_default();
        let id = format!("{ns}/{name}");
        if !served.contains(&id) {
            continue;
        }
        let current = ing
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|v| {
                v.iter()
                    .any(|i| i.ip.as_deref() == Some(address) || i.hostname.as_deref() == Some(address))
            })
            .unwrap_or(false);
        if current {
            continue;
        }
        let api: Api<Ingress> = Api::namespaced(client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [lb]}}})),
            )
            .await
        {
            Ok(_) => tracing::info!(ingress = %id, %address, "address published"),
            Err(e) => tracing::warn!(ingress = %id, error = %e, "publishing the address"),
        }
    }
}

/// Create the IngressClass `name` for this controller, marked the cluster's default, unless it
/// exists; tried until control answers.
pub async fn ensure_class(client: kube::Client, name: String) {
    let api: Api<IngressClass> = Api::all(client);
    let class: IngressClass = match serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {routes::DEFAULT_CLASS: "true"}},
        "spec": {"controller": routes::CONTROLLER},
    })) {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "the IngressClass"),
    };
    loop {
        match api.create(&Default::default(), &class).await {
            Ok(_) => return tracing::info!(class = %name, "IngressClass created"),
            Err(kube::Error::Api(e)) if e.code == 409 => return,
            Err(e) => {
                tracing::debug!(error = %e, "creating the IngressClass (will retry)");
                tokio::time::sleep(nodeless_watch::RETRY).await;
            }
        }
    }
}
