//! Discovery documents, `/version`, and the OpenAPI v3 documents kubectl reads.

use serde_json::{Value, json};

use super::registry::{Registry, Served};

/// The Kubernetes version whose API this server follows.
pub const KUBE_VERSION: (&str, &str) = ("1", "33");

pub fn version() -> Value {
    json!({
        "major": KUBE_VERSION.0,
        "minor": KUBE_VERSION.1,
        "gitVersion": format!("v{}.{}.0-nodeless", KUBE_VERSION.0, KUBE_VERSION.1),
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

fn verbs(s: &Served) -> Vec<&'static str> {
    s.def.storage.verbs().to_vec()
}

fn resource_entries(s: &Served) -> Vec<Value> {
    let mut out = vec![json!({
        "name": s.def.plural,
        "singularName": s.def.singular,
        "namespaced": s.def.namespaced(),
        "kind": s.def.kind,
        "verbs": verbs(s),
        "shortNames": s.def.short_names,
        "categories": s.def.categories,
        "storageVersionHash": "",
    })];
    for sub in &s.def.subresources {
        let (kind, group, version, verbs): (&str, Option<&str>, Option<&str>, Vec<&str>) = match sub.as_str() {
            "status" | "ephemeralcontainers" => (&s.def.kind, None, None, vec!["get", "patch", "update"]),
            "scale" => ("Scale", Some("autoscaling"), Some("v1"), vec!["get", "patch", "update"]),
            "log" => ("Pod", None, None, vec!["get"]),
            "exec" | "attach" => ("PodExecOptions", None, None, vec!["create", "get"]),
            "portforward" => ("PodPortForwardOptions", None, None, vec!["create", "get"]),
            "binding" => ("Binding", None, None, vec!["create"]),
            "eviction" => ("Eviction", Some("policy"), Some("v1"), vec!["create"]),
            "token" => (
                "TokenRequest",
                Some("authentication.k8s.io"),
                Some("v1"),
                vec!["create"],
            ),
            "finalize" => ("Namespace", None, None, vec!["update"]),
            _ => continue,
        };
        let mut e = json!({
            "name": format!("{}/{sub}", s.def.plural),
            "singularName": "",
            "namespaced": s.def.namespaced(),
            "kind": kind,
            "verbs": verbs,
        });
        if let (Some(g), Some(v)) = (group, version) {
            e["group"] = json!(g);
            e["version"] = json!(v);
        }
        out.push(e);
    }
    out
}

/// The media type of aggregated discovery (`apidiscovery.k8s.io/v2`, or v2beta1 for kubectl
/// 1.27–1.29) when the client's Accept asks for it: one round trip for every group's resources.
pub fn aggregated_media(accept: Option<&str>) -> Option<&'static str> {
    for part in accept?.split(',') {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        let has = |p: &str| params.contains(&p);
        if !matches!(params.first(), Some(&"application/json")) || !has("g=apidiscovery.k8s.io") {
            continue;
        }
        if !has("as=APIGroupDiscoveryList") {
            continue;
        }
        if has("v=v2") {
            return Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
        }
        if has("v=v2beta1") {
            return Some("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList");
        }
    }
    None
}

/// `/api` (core) or `/apis` (every other group) as one `APIGroupDiscoveryList`.
pub fn aggregated(reg: &Registry, core: bool, media: &str) -> Value {
    let api_version = if media.contains("v=v2beta1") {
        "apidiscovery.k8s.io/v2beta1"
    } else {
        "apidiscovery.k8s.io/v2"
    };
    let items: Vec<Value> = reg
        .groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = reg.resources(&g, v).iter().map(|s| aggregated_resource(s)).collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items})
}

fn aggregated_resource(s: &Served) -> Value {
    let kind = |kind: &str, group: &str, version: &str| json!({"group": group, "version": version, "kind": kind});
    let own = kind(&s.def.kind, &s.def.group, &s.def.version);
    let subresources: Vec<Value> = resource_entries(s)
        .into_iter()
        .skip(1)
        .map(|e| {
            let name = e["name"].as_str().unwrap_or_default();
            let sub = name.split_once('/').map(|(_, sub)| sub).unwrap_or(name);
            let response = kind(
                e["kind"].as_str().unwrap_or_default(),
                e.get("group").and_then(Value::as_str).unwrap_or(&s.def.group),
                e.get("version").and_then(Value::as_str).unwrap_or(&s.def.version),
            );
            json!({"subresource": sub, "responseKind": response, "verbs": e["verbs"]})
        })
        .collect();
    let mut out = json!({
        "resource": s.def.plural,
        "responseKind": own,
        "scope": if s.def.namespaced() { "Namespaced" } else { "Cluster" },
        "singularResource": s.def.singular,
        "verbs": verbs(s),
    });
    if !s.def.short_names.is_empty() {
        out["shortNames"] = json!(s.def.short_names);
    }
    if !s.def.categories.is_empty() {
        out["categories"] = json!(s.def.categories);
    }
    if !subresources.is_empty() {
        out["subresources"] = json!(subresources);
    }
    out
}

pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources = reg.resources(group, version);
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let entries: Vec<Value> = resources.iter().flat_map(|s| resource_entries(s)).collect();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": entries,
    }))
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

pub fn group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, versions)| {
            let mut doc = group_doc(&g, &versions);
            if let Some(m) = doc.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            doc
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(reg: &Registry, name: &str) -> Option<Value> {
    reg.groups()
        .into_iter()
        .find(|(g, _)| g == name)
        .map(|(g, versions)| group_doc(&g, &versions))
}

/// `/openapi/v3`: one entry per group/version.
pub fn openapi_index(reg: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, versions) in reg.groups() {
        for v in versions {
            let path = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            let hash = openapi_hash(reg, &g, &v);
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            );
        }
    }
    json!({"paths": paths})
}

fn openapi_hash(reg: &Registry, group: &str, version: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for s in reg.resources(group, version) {
        h.update(s.def.plural.as_bytes());
        h.update(s.def.kind.as_bytes());
        h.update(s.def.subresources.join(",").as_bytes());
        if let Some(schema) = &s.schema {
            h.update(schema.to_string().as_bytes());
        }
    }
    hex::encode(&h.finalize()[..16]).to_uppercase()
}

/// The OpenAPI v3 document of one group/version. It declares every path and operation with the
/// `x-kubernetes-group-version-kind` extension and the `fieldValidation`/`dryRun`/`fieldManager`
/// parameters, so kubectl sees that the server validates fields itself (and sends
/// `fieldValidation=Strict` instead of validating client-side). Custom resources carry their
/// CRD schema.
pub fn openapi_group_version(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources = reg.resources(group, version);
    if resources.is_empty() {
        return None;
    }
    let base = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let write_params = vec![query("dryRun"), query("fieldManager"), query("fieldValidation")];
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for s in &resources {
        let gvk = json!({"group": s.def.group, "version": s.def.version, "kind": s.def.kind});
        let schema_name = format!(
            "{}.{}.{}",
            if s.def.group.is_empty() {
                "io.k8s.api.core"
            } else {
                &s.def.group
            },
            s.def.version,
            s.def.kind
        );
        let ok = json!({"200": {"description": "OK"}});
        let mut patch_params = write_params.clone();
        patch_params.push(query("force"));
        let op = |action: &str, params: Vec<Value>| {
            json!({
                "operationId": format!("{action}{}", s.def.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": ok,
            })
        };
        let collection = if s.def.namespaced() {
            format!("{base}/namespaces/{{namespace}}/{}", s.def.plural)
        } else {
            format!("{base}/{}", s.def.plural)
        };
        paths.insert(
            collection.clone(),
            json!({"get": op("list", vec![]), "post": op("post", write_params.clone())}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": op("get", vec![]),
                "put": op("put", write_params.clone()),
                "patch": op("patch", patch_params.clone()),
                "delete": op("delete", vec![query("dryRun")]),
            }),
        );
        // Built-in kinds get no schema here on purpose: a schema without the patch strategies
        // would make kubectl compute replace-the-list patches; without one it uses its
        // compiled-in types. Custom resources carry their CRD schema.
        if let Some(mut schema) = s.schema.clone() {
            if let Some(m) = schema.as_object_mut() {
                m.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
            }
            schemas.insert(schema_name, schema);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", KUBE_VERSION.0, KUBE_VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
