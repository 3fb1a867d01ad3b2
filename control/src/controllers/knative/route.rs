//! Route → KIngress: the traffic targets resolved to ready revisions (a Configuration's target
//! is its latest ready revision), written as the KIngress ingress-l7 serves: the Route's host
//! `{name}.{namespace}.{domain}` with the weighted split, a `{tag}-{name}…` host per tag, the
//! `Knative-Serving-Tag` header on the main host, and the cluster-local names. Until every target
//! is ready the previous KIngress stays, so a rollout never sends a request to a revision that
//! cannot take it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::configuration::{ROUTES, ROUTING_STATE, ROUTING_STATE_MODIFIED};
use super::{
    Meta, apply, condition, is_ready, keys_of, ns_name, owner_keys, prefix, served, set_condition, set_ready_from,
    write_status,
};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::controllers::{is_deleting, owner_ref, str_at};
use crate::knative::config;
use crate::store::Event;
use nodeless_types::knative::{
    CLUSTER_LOCAL, INGRESS_CLASS, NAMESPACE_HEADER, NODELESS_INGRESS_CLASS, REVISION_HEADER, ROUTE, ROUTE_NAMESPACE,
    TAG_HEADER, VISIBILITY,
};

pub fn interested(client: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with(&prefix("routes")) {
        return vec![ev.key.clone()];
    }
    if ev.key.starts_with(&prefix("ingresses")) {
        return owner_keys(ev, "Route", "routes");
    }
    // A revision or configuration becoming ready (or going) changes the routes of its namespace.
    if ev.key.starts_with(&prefix("revisions")) || ev.key.starts_with(&prefix("configurations")) {
        let ns = str_at(&ev.obj, "/metadata/namespace");
        let Some(routes) = served(client, "routes") else {
            return Vec::new();
        };
        return client
            .list(&routes, Some(ns), &|_| true)
            .iter()
            .map(|r| format!("{}{ns}/{}", prefix("routes"), str_at(&r.obj, "/metadata/name")))
            .collect();
    }
    if ev.key == "/core/configmaps/knative-serving/config-domain" {
        return keys_of(client, "routes");
    }
    Vec::new()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    keys_of(client, "routes")
}

/// One traffic target, resolved.
#[derive(Clone, Debug, PartialEq)]
struct Target {
    revision: String,
    percent: i64,
    tag: Option<String>,
    latest: Option<bool>,
}

/// Why a target cannot be resolved yet: (condition status, reason, message).
type Unresolved = (&'static str, &'static str, String);

fn resolve(client: &LocalClient, ns: &str, traffic: &[Value]) -> Result<Vec<Target>, Unresolved> {
    let (Some(configs), Some(revisions)) = (served(client, "configurations"), served(client, "revisions")) else {
        return Err(("Unknown", "Uninitialized", "Knative is not served yet".into()));
    };
    let mut out = Vec::new();
    for t in traffic {
        let percent = t.get("percent").and_then(Value::as_i64).unwrap_or(0);
        let tag = t
            .get("tag")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from);
        let latest = t.get("latestRevision").and_then(Value::as_bool);
        let revision = match (
            t.get("revisionName").and_then(Value::as_str).filter(|s| !s.is_empty()),
            t.get("configurationName").and_then(Value::as_str),
        ) {
            (Some(r), _) => {
                let Some(rev) = client.get(&revisions, Some(ns), r) else {
                    return Err((
                        "False",
                        "RevisionMissing",
                        format!("Revision \"{r}\" referenced in traffic not found."),
                    ));
                };
                if !is_ready(&rev.obj) {
                    let failed = condition(&rev.obj, "Ready").is_some_and(|c| c.0 == "False");
                    return Err((
                        if failed { "False" } else { "Unknown" },
                        "RevisionMissing",
                        format!("Revision \"{r}\" referenced in traffic is not ready."),
                    ));
                }
                r.to_string()
            }
            (None, Some(c)) => {
                let Some(cfg) = client.get(&configs, Some(ns), c) else {
                    return Err((
                        "False",
                        "ConfigurationMissing",
                        format!("Configuration \"{c}\" referenced in traffic not found."),
                    ));
                };
                match cfg
                    .obj
                    .pointer("/status/latestReadyRevisionName")
                    .and_then(Value::as_str)
                {
                    Some(r) if client.get(&revisions, Some(ns), r).is_some() => r.to_string(),
                    _ => {
                        let failed = condition(&cfg.obj, "Ready").is_some_and(|c| c.0 == "False");
                        return Err((
                            if failed { "False" } else { "Unknown" },
                            "RevisionMissing",
                            format!("Configuration \"{c}\" does not have any ready Revision."),
                        ));
                    }
                }
            }
            (None, None) => return Err(("False", "RevisionMissing", "a traffic target names nothing".into())),
        };
        out.push(Target {
            revision,
            percent,
            tag,
            latest,
        });
    }
    Ok(out)
}

fn split(ns: &str, revision: &str, percent: i64) -> Value {
    json!({"serviceName": revision, "serviceNamespace": ns, "servicePort": 80, "percent": percent,
        "appendHeaders": {REVISION_HEADER: revision, NAMESPACE_HEADER: ns}})
}

/// The KIngress rules for resolved targets.
fn rules(name: &str, ns: &str, domain: &str, cluster_local: bool, targets: &[Target]) -> Vec<Value> {
    let mut weights: BTreeMap<&str, i64> = BTreeMap::new();
    for t in targets.iter().filter(|t| t.percent > 0) {
        *weights.entry(&t.revision).or_default() += t.percent;
    }
    let mut paths: Vec<Value> = targets
        .iter()
        .filter_map(|t| t.tag.as_ref().map(|tag| (tag, t)))
        .map(|(tag, t)| {
            json!({"headers": {TAG_HEADER: {"exact": tag}}, "appendHeaders": {TAG_HEADER: tag},
                "splits": [split(ns, &t.revision, 100)]})
        })
        .collect();
    paths.push(json!({"splits": weights.iter().map(|(r, p)| split(ns, r, *p)).collect::<Vec<_>>()}));
    let local_hosts = |n: &str| {
        vec![
            format!("{n}.{ns}"),
            format!("{n}.{ns}.svc"),
            format!("{n}.{ns}.svc.cluster.local"),
        ]
    };
    let mut out = Vec::new();
    if !cluster_local {
        out.push(
            json!({"hosts": [format!("{name}.{ns}.{domain}")], "visibility": "ExternalIP", "http": {"paths": paths}}),
        );
    }
    out.push(json!({"hosts": local_hosts(name), "visibility": "ClusterLocal", "http": {"paths": paths}}));
    for t in targets {
        let Some(tag) = &t.tag else { continue };
        let tagged = format!("{tag}-{name}");
        let paths = json!([{"appendHeaders": {TAG_HEADER: tag}, "splits": [split(ns, &t.revision, 100)]}]);
        if !cluster_local {
            out.push(json!({"hosts": [format!("{tagged}.{ns}.{domain}")], "visibility": "ExternalIP", "http": {"paths": paths}}));
        }
        out.push(json!({"hosts": local_hosts(&tagged), "visibility": "ClusterLocal", "http": {"paths": paths}}));
    }
    out
}

pub async fn reconcile(client: LocalClient, key: String) -> Result<(), ApiError> {
    let (Some(routes), Some(kingresses)) = (served(&client, "routes"), served(&client, "ingresses")) else {
        return Ok(());
    };
    let (ns, name) = ns_name(&key);
    let Some(cur) = client.get(&routes, Some(&ns), &name) else {
        return Ok(());
    };
    let route = &cur.obj;
    if is_deleting(route) {
        return Ok(());
    }
    let labels = route.pointer("/metadata/labels").and_then(Value::as_object);
    let cluster_local = labels.and_then(|l| l.get(VISIBILITY)).and_then(Value::as_str) == Some(CLUSTER_LOCAL);
    let domain = if cluster_local {
        "svc.cluster.local".to_string()
    } else {
        config::domain(&client.state.store, labels)
    };
    let host = |n: &str| format!("{n}.{ns}.{domain}");
    let traffic = route
        .pointer("/spec/traffic")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut status = route.get("status").cloned().unwrap_or(json!({}));
    status["url"] = json!(format!("http://{}", host(&name)));
    status["address"] = json!({"url": format!("http://{name}.{ns}.svc.cluster.local")});
    set_condition(&mut status, "CertificateProvisioned", "True", "TLSNotEnabled", "");
    match resolve(&client, &ns, &traffic) {
        Err((state, reason, message)) => {
            set_condition(&mut status, "AllTrafficAssigned", state, reason, &message);
        }
        Ok(targets) => {
            set_condition(&mut status, "AllTrafficAssigned", "True", "", "");
            status["traffic"] = Value::Array(
                targets
                    .iter()
                    .map(|t| {
                        let mut v = json!({"revisionName": t.revision, "percent": t.percent});
                        if let Some(l) = t.latest {
                            v["latestRevision"] = json!(l);
                        }
                        if let Some(tag) = &t.tag {
                            v["tag"] = json!(tag);
                            v["url"] = json!(format!("http://{}", host(&format!("{tag}-{name}"))));
                        }
                        v
                    })
                    .collect(),
            );
            let kingress = json!({
                "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
                "metadata": {"name": name, "namespace": ns,
                    "annotations": {INGRESS_CLASS: NODELESS_INGRESS_CLASS},
                    "labels": {ROUTE: name, ROUTE_NAMESPACE: ns},
                    "ownerReferences": [owner_ref(super::SERVING_API, "Route", route)]},
                "spec": {"httpOption": "Enabled", "rules": rules(&name, &ns, &domain, cluster_local, &targets)},
            });
            apply(&client, &kingresses, kingress, &["spec"], Meta::Merge).await?;
            label_revisions(&client, &ns, &name, &targets).await?;
        }
    }
    if let Some(k) = client.get(&kingresses, Some(&ns), &name) {
        cluster_local_service(&client, route, &k.obj).await?;
    }
    let ingress_ready = client.get(&kingresses, Some(&ns), &name).map(|k| {
        let k = &k.obj;
        let seen = k.pointer("/status/observedGeneration") == k.pointer("/metadata/generation");
        (
            seen && is_ready(k),
            condition(k, "Ready").map(|c| c.2.to_string()).unwrap_or_default(),
        )
    });
    match ingress_ready {
        Some((true, _)) => set_condition(&mut status, "IngressReady", "True", "", ""),
        Some((false, message)) => {
            set_condition(&mut status, "IngressReady", "Unknown", "IngressNotConfigured", &message)
        }
        None => set_condition(
            &mut status,
            "IngressReady",
            "Unknown",
            "IngressNotConfigured",
            "Ingress has not yet been reconciled.",
        ),
    }
    set_ready_from(
        &mut status,
        &["AllTrafficAssigned", "IngressReady", "CertificateProvisioned"],
    );
    write_status(&client, &routes, &cur, status).await
}

/// Mark the revisions the route sends traffic to `routingState: active` (with the route in
/// their `serving.knative.dev/routes` annotation), and those it no longer does, once no route
/// does, `reserve`, stamping when each changed: what Knative's labeler does, and what the
/// collection of old revisions reads.
async fn label_revisions(client: &LocalClient, ns: &str, route: &str, targets: &[Target]) -> Result<(), ApiError> {
    let Some(revisions) = served(client, "revisions") else {
        return Ok(());
    };
    let now = crate::api::objects::now_rfc3339();
    for cur in client.list(&revisions, Some(ns), &|_| true) {
        let rev = &cur.obj;
        let name = str_at(rev, "/metadata/name");
        let routes_ptr = format!("/metadata/annotations/{}", ROUTES.replace('/', "~1"));
        let mut routes: Vec<String> = rev
            .pointer(&routes_ptr)
            .and_then(Value::as_str)
            .map(|s| s.split(',').filter(|x| !x.is_empty()).map(String::from).collect())
            .unwrap_or_default();
        let targeted = targets.iter().any(|t| t.revision == name);
        let listed = routes.iter().any(|r| r == route);
        match (targeted, listed) {
            (true, false) => routes.push(route.to_string()),
            (false, true) => routes.retain(|r| r != route),
            _ => {}
        }
        routes.sort();
        let state = if routes.is_empty() { "reserve" } else { "active" };
        let have_state = rev.pointer(&format!("/metadata/labels/{}", ROUTING_STATE.replace('/', "~1")));
        let have_routes = rev.pointer(&routes_ptr).and_then(Value::as_str).unwrap_or_default();
        // Revisions no route ever named keep no state until one does.
        if have_state.is_none() && routes.is_empty() {
            continue;
        }
        if have_state == Some(&json!(state)) && have_routes == routes.join(",") {
            continue;
        }
        let mut new = (**rev).clone();
        if !new.pointer("/metadata/labels").is_some_and(Value::is_object) {
            new["metadata"]["labels"] = json!({});
        }
        if !new.pointer("/metadata/annotations").is_some_and(Value::is_object) {
            new["metadata"]["annotations"] = json!({});
        }
        new["metadata"]["labels"][ROUTING_STATE] = json!(state);
        new["metadata"]["annotations"][ROUTES] = json!(routes.join(","));
        if have_state != Some(&json!(state)) {
            new["metadata"]["annotations"][ROUTING_STATE_MODIFIED] = json!(now);
        }
        client.update(&revisions, &cur, new).await?;
    }
    Ok(())
}

/// The label value that marks the EndpointSlice of a Route's in-cluster Service as this
/// controller's (the EndpointSlice controller leaves selector-less Services alone).
const SLICE_MANAGER: &str = "route.serving.knative.dev";

/// `{route}.{namespace}.svc.cluster.local` for pods: a Service named as the Route, without a
/// selector, port 80, whose one endpoint is the ingress's internal listener (the KIngress
/// status's `privateLoadBalancer.ingress[0].ip`, port 80). Without that address (an ingress
/// with no internal listener) there is no Service: the name does not resolve rather than
/// resolve to something that does not answer.
async fn cluster_local_service(client: &LocalClient, route: &Value, kingress: &Value) -> Result<(), ApiError> {
    let ns = str_at(route, "/metadata/namespace");
    let name = str_at(route, "/metadata/name");
    let ip = kingress
        .pointer("/status/privateLoadBalancer/ingress/0/ip")
        .and_then(Value::as_str)
        .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok());
    let services = client.served("", "services");
    let slices = client
        .lookup("discovery.k8s.io", "v1", "endpointslices")
        .expect("built in");
    let owner = json!([owner_ref(super::SERVING_API, "Route", route)]);
    let ours = |o: &Value| {
        crate::controllers::controller_ref(o).is_some_and(|r| str_at(r, "/uid") == str_at(route, "/metadata/uid"))
    };
    let existing = client.get(&services, Some(ns), name);
    if existing.as_ref().is_some_and(|s| !ours(&s.obj)) {
        // A Service of that name that is not the Route's: leave it (Knative does the same).
        return Ok(());
    }
    let Some(ip) = ip else {
        if existing.is_some() {
            client.delete(&services, Some(ns), name, None).await?;
        }
        return Ok(());
    };
    let labels = json!({ROUTE: name});
    if existing.is_none() {
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": owner},
            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}]}});
        client.create(&services, Some(ns), svc).await?;
    }
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-ingress"), "namespace": ns, "ownerReferences": owner,
            "labels": {nodeless_types::keys::SERVICE_NAME: name, nodeless_types::keys::MANAGED_BY: SLICE_MANAGER, ROUTE: name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]});
    apply(
        client,
        &slices,
        slice,
        &["endpoints", "ports", "addressType"],
        Meta::Merge,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_split_tag_and_local_hosts() {
        let targets = vec![
            Target {
                revision: "hello-00002".into(),
                percent: 50,
                tag: None,
                latest: Some(true),
            },
            Target {
                revision: "hello-00001".into(),
                percent: 50,
                tag: Some("old".into()),
                latest: Some(false),
            },
            Target {
                revision: "hello-00001".into(),
                percent: 0,
                tag: Some("v1".into()),
                latest: None,
            },
        ];
        let r = rules("hello", "default", "example.com", false, &targets);
        assert_eq!(r[0]["hosts"], json!(["hello.default.example.com"]));
        let paths = r[0]["http"]["paths"].as_array().unwrap();
        assert_eq!(paths.len(), 3, "two tag paths and the split");
        assert_eq!(paths[0]["headers"][TAG_HEADER]["exact"], "old");
        let weights: Vec<(&str, i64)> = paths[2]["splits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (str_at(s, "/serviceName"), s["percent"].as_i64().unwrap()))
            .collect();
        assert_eq!(weights, vec![("hello-00001", 50), ("hello-00002", 50)]);
        assert_eq!(r[1]["visibility"], "ClusterLocal");
        assert!(r.iter().any(|x| x["hosts"] == json!(["v1-hello.default.example.com"])));
        let local = rules("hello", "default", "svc.cluster.local", true, &targets);
        assert!(local.iter().all(|x| x["visibility"] == "ClusterLocal"));
    }
}
