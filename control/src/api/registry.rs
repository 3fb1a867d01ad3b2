//! Which resources are served: the built-in catalogue plus every established CRD.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use nodeless_types::{ResourceDef, Scope, catalogue};
use serde_json::Value;

/// A served resource plus, for custom resources, the CRD version's schema and columns.
#[derive(Clone, Debug)]
pub struct Served {
    pub def: ResourceDef,
    /// `openAPIV3Schema` of this version, for custom resources.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns` of this version, for custom resources.
    pub columns: Option<Value>,
    /// Custom resources are stored as sent (after schema checks); built-ins are typed.
    pub custom: bool,
    /// For a CRD's scale subresource: JSON paths of spec/status replicas and the label selector.
    pub scale_paths: Option<(String, String, Option<String>)>,
    /// Served as a conversion of another version's stored objects: `autoscaling/v1`
    /// HorizontalPodAutoscaler, a view of v2 (see `hpa_v1`).
    pub view_of: Option<Arc<Served>>,
}

impl Served {
    /// Store key prefix for this resource (all namespaces).
    pub fn prefix(&self) -> String {
        let g = if self.def.group.is_empty() {
            "core"
        } else {
            &self.def.group
        };
        format!("/{g}/{}/", self.def.plural)
    }

    /// Store key for one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.def.namespaced() => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }

    /// Store key prefix for one namespace (or all when None / cluster-scoped).
    pub fn ns_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.def.namespaced() => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }
}

#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// (group, version, plural) → served resource.
    by_path: BTreeMap<(String, String, String), Arc<Served>>,
    /// Discovery order of groups.
    groups: Vec<String>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let reg = Self::default();
        {
            let mut inner = reg.inner.write().unwrap();
            let mut insert = |def: ResourceDef, view_of: Option<Arc<Served>>| {
                if !inner.groups.contains(&def.group) {
                    inner.groups.push(def.group.clone());
                }
                let key = (def.group.clone(), def.version.clone(), def.plural.clone());
                let served = Arc::new(Served {
                    def,
                    schema: None,
                    columns: None,
                    custom: false,
                    scale_paths: None,
                    view_of,
                });
                inner.by_path.insert(key, served.clone());
                served
            };
            let mut hpa_v2 = None;
            for def in catalogue::builtin() {
                let is_hpa_v2 = def.group == "autoscaling" && def.plural == "horizontalpodautoscalers";
                let served = insert(def, None);
                if is_hpa_v2 {
                    hpa_v2 = Some(served);
                }
            }
            // autoscaling/v1 HorizontalPodAutoscaler: v2's objects, converted at the boundary.
            if let Some(stored) = hpa_v2 {
                let mut def = stored.def.clone();
                def.version = "v1".into();
                insert(def, Some(stored));
            }
        }
        reg
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Served>> {
        let inner = self.inner.read().unwrap();
        inner
            .by_path
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// Look a resource up by group and plural (first stored version wins; views are not
    /// stored).
    pub fn by_plural(&self, group: &str, plural: &str) -> Option<Arc<Served>> {
        let inner = self.inner.read().unwrap();
        inner
            .by_path
            .values()
            .find(|s| s.view_of.is_none() && s.def.group == group && s.def.plural == plural)
            .cloned()
    }

    /// Look a resource up by kind (first stored version wins).
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Arc<Served>> {
        let inner = self.inner.read().unwrap();
        inner
            .by_path
            .values()
            .find(|s| s.view_of.is_none() && s.def.group == group && s.def.kind == kind)
            .cloned()
    }

    /// Every stored resource, each once (views of another version's objects left out).
    pub fn all(&self) -> Vec<Arc<Served>> {
        self.inner
            .read()
            .unwrap()
            .by_path
            .values()
            .filter(|s| s.view_of.is_none())
            .cloned()
            .collect()
    }

    /// Groups in discovery order, each with its versions.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let inner = self.inner.read().unwrap();
        inner
            .groups
            .iter()
            .map(|g| {
                let mut versions: Vec<String> = inner
                    .by_path
                    .keys()
                    .filter(|(gg, _, _)| gg == g)
                    .map(|(_, v, _)| v.clone())
                    .collect();
                versions.dedup();
                versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
                (g.clone(), versions)
            })
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    pub fn resources(&self, group: &str, version: &str) -> Vec<Arc<Served>> {
        let inner = self.inner.read().unwrap();
        inner
            .by_path
            .iter()
            .filter(|((g, v, _), _)| g == group && v == version)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Replace every custom resource with those defined by `crds` (established CRD objects).
    pub fn set_crds(&self, crds: &[Arc<Value>]) {
        let mut inner = self.inner.write().unwrap();
        inner.by_path.retain(|_, s| !s.custom);
        inner
            .groups
            .retain(|g| catalogue::builtin().iter().any(|d| &d.group == g));
        for crd in crds {
            for served in served_from_crd(crd) {
                if !inner.groups.contains(&served.def.group) {
                    inner.groups.push(served.def.group.clone());
                }
                let key = (
                    served.def.group.clone(),
                    served.def.version.clone(),
                    served.def.plural.clone(),
                );
                // A CRD never shadows a built-in resource.
                inner.by_path.entry(key).or_insert_with(|| Arc::new(served));
            }
        }
    }
}

/// Sort key for versions the way Kubernetes orders them: GA > beta > alpha, then by number.
fn version_priority(v: &str) -> (u8, u32, u32) {
    let rest = v.strip_prefix('v').unwrap_or(v);
    let num: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = num.parse().unwrap_or(0);
    let tail = &rest[num.len()..];
    let (class, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(b) = tail.strip_prefix("beta") {
        (2, b.parse().unwrap_or(0))
    } else if let Some(a) = tail.strip_prefix("alpha") {
        (1, a.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (class, major, minor)
}

fn s(v: &Value, ptr: &str) -> String {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn strings(v: &Value, ptr: &str) -> Vec<String> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// The served resources a CRD defines (one per served version).
pub fn served_from_crd(crd: &Value) -> Vec<Served> {
    let group = s(crd, "/spec/group");
    let kind = s(crd, "/spec/names/kind");
    let plural = s(crd, "/spec/names/plural");
    let mut singular = s(crd, "/spec/names/singular");
    if singular.is_empty() {
        singular = kind.to_ascii_lowercase();
    }
    let mut list_kind = s(crd, "/spec/names/listKind");
    if list_kind.is_empty() {
        list_kind = format!("{kind}List");
    }
    let scope = if s(crd, "/spec/scope") == "Cluster" {
        Scope::Cluster
    } else {
        Scope::Namespaced
    };
    let mut out = Vec::new();
    for v in crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let mut subresources = Vec::new();
        if v.pointer("/subresources/status").is_some() {
            subresources.push("status".to_string());
        }
        let scale_paths = v.pointer("/subresources/scale").map(|sc| {
            (
                s(sc, "/specReplicasPath"),
                s(sc, "/statusReplicasPath"),
                sc.get("labelSelectorPath").and_then(Value::as_str).map(String::from),
            )
        });
        if scale_paths.is_some() {
            subresources.push("scale".to_string());
        }
        out.push(Served {
            def: ResourceDef {
                group: group.clone(),
                version: s(v, "/name"),
                kind: kind.clone(),
                list_kind: list_kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                scope,
                short_names: strings(crd, "/spec/names/shortNames"),
                categories: strings(crd, "/spec/names/categories"),
                subresources,
                storage: nodeless_types::catalogue::Storage::Stored,
            },
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            columns: v.get("additionalPrinterColumns").cloned(),
            custom: true,
            scale_paths,
            view_of: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crds_join_and_leave() {
        let reg = Registry::with_builtins();
        assert!(reg.lookup("apps", "v1", "deployments").is_some());
        let crd = Arc::new(json!({
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wd"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "subresources": {"status": {}}}]}
        }));
        reg.set_crds(&[crd]);
        let w = reg.lookup("example.com", "v1", "widgets").unwrap();
        assert!(w.custom && w.def.has_subresource("status"));
        assert_eq!(w.key(Some("ns"), "a"), "/example.com/widgets/ns/a");
        assert!(reg.groups().iter().any(|(g, _)| g == "example.com"));
        reg.set_crds(&[]);
        assert!(reg.lookup("example.com", "v1", "widgets").is_none());
        assert!(!reg.groups().iter().any(|(g, _)| g == "example.com"));
    }

    #[test]
    fn version_order() {
        let mut v = vec!["v1beta1", "v2", "v1", "v1alpha1"];
        v.sort_by_key(|x| std::cmp::Reverse(version_priority(x)));
        assert_eq!(v, ["v2", "v1", "v1beta1", "v1alpha1"]);
    }
}
