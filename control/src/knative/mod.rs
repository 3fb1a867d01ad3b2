//! Knative Serving's API in control: the CRDs (`serving.knative.dev/v1` Service, Configuration,
//! Revision, Route; the internal KIngress and PodAutoscaler), installed at start as Knative's
//! own install does, the `knative-serving` ConfigMaps, and the defaults and checks Knative's
//! webhook applies ([`admit`], [`podspec`]; refused in Knative's words, [`field_error`]). The
//! controllers are in `controllers/knative`.

pub mod admit;
pub mod config;
pub mod duration;
pub mod field_error;
pub mod podspec;
pub mod stats;

use serde_json::{Value, json};

use crate::api::local::LocalClient;
use nodeless_types::knative::{AUTOSCALING_GROUP, NETWORKING_GROUP, SERVING_GROUP};

/// The namespace Knative keeps its settings in.
pub const SYSTEM_NAMESPACE: &str = "knative-serving";

fn ready_columns() -> Vec<Value> {
    vec![
        json!({"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type=='Ready')].status"}),
        json!({"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type=='Ready')].reason"}),
    ]
}

/// An object whose spec and status are checked by [`admit`] and the controllers rather than by a
/// full structural schema (Knative's pod template is a whole PodSpec).
fn open_schema() -> Value {
    json!({"openAPIV3Schema": {"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    }}})
}

struct Crd {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    columns: Vec<Value>,
}

fn crds() -> Vec<Crd> {
    let col = |name: &str, path: &str| json!({"name": name, "type": "string", "jsonPath": path});
    let serving = &["all", "knative", "serving"];
    let latest = || {
        vec![
            col("LatestCreated", ".status.latestCreatedRevisionName"),
            col("LatestReady", ".status.latestReadyRevisionName"),
        ]
    };
    vec![
        Crd {
            group: SERVING_GROUP,
            version: "v1",
            kind: "Service",
            plural: "services",
            short: &["kservice", "ksvc"],
            categories: serving,
            columns: [vec![col("URL", ".status.url")], latest(), ready_columns()].concat(),
        },
        Crd {
            group: SERVING_GROUP,
            version: "v1",
            kind: "Configuration",
            plural: "configurations",
            short: &["config", "cfg"],
            categories: serving,
            columns: [latest(), ready_columns()].concat(),
        },
        Crd {
            group: SERVING_GROUP,
            version: "v1",
            kind: "Revision",
            plural: "revisions",
            short: &["rev"],
            categories: serving,
            columns: [
                vec![
                    col(
                        "Config Name",
                        ".metadata.labels['serving\\.knative\\.dev/configuration']",
                    ),
                    col(
                        "Generation",
                        ".metadata.labels['serving\\.knative\\.dev/configurationGeneration']",
                    ),
                ],
                ready_columns(),
                vec![
                    json!({"name": "Actual Replicas", "type": "integer", "jsonPath": ".status.actualReplicas"}),
                    json!({"name": "Desired Replicas", "type": "integer", "jsonPath": ".status.desiredReplicas"}),
                ],
            ]
            .concat(),
        },
        Crd {
            group: SERVING_GROUP,
            version: "v1",
            kind: "Route",
            plural: "routes",
            short: &["rt"],
            categories: serving,
            columns: [vec![col("URL", ".status.url")], ready_columns()].concat(),
        },
        Crd {
            group: NETWORKING_GROUP,
            version: "v1alpha1",
            kind: "Ingress",
            plural: "ingresses",
            short: &["kingress", "king"],
            categories: &["knative-internal", "networking"],
            columns: ready_columns(),
        },
        Crd {
            group: AUTOSCALING_GROUP,
            version: "v1alpha1",
            kind: "PodAutoscaler",
            plural: "podautoscalers",
            short: &["kpa", "pa"],
            categories: &["knative-internal", "autoscaling"],
            columns: [
                vec![
                    json!({"name": "DesiredScale", "type": "integer", "jsonPath": ".status.desiredScale"}),
                    json!({"name": "ActualScale", "type": "integer", "jsonPath": ".status.actualScale"}),
                ],
                ready_columns(),
            ]
            .concat(),
        },
    ]
}

fn crd_object(c: &Crd) -> Value {
    let mut columns = c.columns.clone();
    columns.push(json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}));
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{}.{}", c.plural, c.group),
            "labels": {"app.kubernetes.io/name": "knative-serving", "app.kubernetes.io/part-of": "nodeless"}},
        "spec": {
            "group": c.group, "scope": "Namespaced",
            "names": {"kind": c.kind, "plural": c.plural, "singular": c.kind.to_ascii_lowercase(),
                "listKind": format!("{}List", c.kind), "shortNames": c.short, "categories": c.categories},
            "versions": [{"name": c.version, "served": true, "storage": true, "schema": open_schema(),
                "subresources": {"status": {}}, "additionalPrinterColumns": columns}],
        },
    })
}

/// Install (or bring up to date) Knative's CRDs, namespace and ConfigMaps.
pub async fn install(client: &LocalClient) -> Result<(), String> {
    for c in crds() {
        client.ensure_crd(crd_object(&c)).await?;
    }
    crate::api::refresh_crds(&client.state);
    let namespaces = client.served("", "namespaces");
    if client.get(&namespaces, None, SYSTEM_NAMESPACE).is_none() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}});
        client.create(&namespaces, None, ns).await.map_err(|e| e.to_string())?;
    }
    let configmaps = client.served("", "configmaps");
    for (name, data) in config::DEFAULTS {
        if client.get(&configmaps, Some(SYSTEM_NAMESPACE), name).is_none() {
            let data: serde_json::Map<String, Value> = data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE,
                    "labels": {"app.kubernetes.io/name": "knative-serving"}},
                "data": data});
            client
                .create(&configmaps, Some(SYSTEM_NAMESPACE), cm)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
