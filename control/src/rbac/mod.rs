//! RBAC (`rbac.authorization.k8s.io/v1`): who may do what, decided from the stored Roles,
//! ClusterRoles and their bindings on every request, as the apiserver's RBAC authorizer does.
//!
//! The store keeps every object in memory, so a decision reads the bindings that are committed at
//! that moment: a binding removed is obeyed by the next request, with no cache to go stale. Members
//! of `system:masters` are allowed everything before any binding is read, as on Kubernetes, so the
//! cluster's administrator can never lock itself out by deleting a binding.

pub mod defaults;
pub mod node;

use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};
use serde_json::Value;

use crate::auth::{SUPERUSERS, User};
use crate::store::Store;

const RBAC: &str = "rbac.authorization.k8s.io";

/// What a request asks to do, as an authorizer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        resource: String,
        subresource: Option<String>,
        namespace: Option<String>,
        name: Option<String>,
    },
    /// A path that names no resource (`/api`, `/version`, `/metrics`…), with the method's verb.
    NonResource { verb: String, path: String },
}

impl Attributes {
    pub fn resource(
        verb: &str,
        group: &str,
        resource: &str,
        subresource: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Self {
        Attributes::Resource {
            verb: verb.to_string(),
            group: group.to_string(),
            resource: resource.to_string(),
            subresource: subresource.filter(|s| !s.is_empty()).map(str::to_string),
            namespace: namespace.filter(|s| !s.is_empty()).map(str::to_string),
            name: name.filter(|s| !s.is_empty()).map(str::to_string),
        }
    }

    pub fn verb(&self) -> &str {
        match self {
            Attributes::Resource { verb, .. } | Attributes::NonResource { verb, .. } => verb,
        }
    }

    /// The apiserver's refusal text: `pods is forbidden: User "u" cannot create resource "pods" in
    /// API group "" in the namespace "ns"`.
    pub fn forbidden(&self, user: &str) -> String {
        match self {
            Attributes::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
            } => {
                let qualified = if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                };
                let subject = match name {
                    Some(n) => format!("{qualified} \"{n}\" is forbidden"),
                    None => format!("{qualified} is forbidden"),
                };
                let full = match subresource {
                    Some(s) => format!("{resource}/{s}"),
                    None => resource.clone(),
                };
                let scope = match namespace {
                    Some(ns) => format!(" in the namespace \"{ns}\""),
                    None => " at the cluster scope".to_string(),
                };
                format!("{subject}: User \"{user}\" cannot {verb} resource \"{full}\" in API group \"{group}\"{scope}")
            }
            Attributes::NonResource { verb, path } => {
                format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\"")
            }
        }
    }
}

/// The RBAC verb of a request: `get`, `list` or `watch` for reads, `create`, `update`, `patch`,
/// `delete` or `deletecollection` for writes.
pub fn verb(method: &http::Method, named: bool, watch: bool) -> &'static str {
    use http::Method;
    match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

/// An authorizer's answer: allowed or not, and which binding allowed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    v.pointer(path).and_then(Value::as_str).unwrap_or("")
}

fn key(resource: &str, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("/{RBAC}/{resource}/{ns}/{name}"),
        None => format!("/{RBAC}/{resource}/{name}"),
    }
}

fn rules_of(obj: &Value) -> Vec<PolicyRule> {
    obj.get("rules")
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default()
}

/// Whether a binding's subject names this user (a ServiceAccount in a RoleBinding without a
/// namespace is the binding's own namespace's).
fn subject_matches(s: &Subject, user: &User, binding_ns: Option<&str>) -> bool {
    match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.groups.contains(&s.name),
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .or(binding_ns)
                .unwrap_or("");
            user.name == format!("system:serviceaccount:{ns}:{}", s.name)
        }
        _ => false,
    }
}

/// The rules a binding grants, with a description of where they come from; none when the binding
/// does not name the user or its role does not exist.
fn granted(store: &Store, binding: &Value, user: &User, binding_ns: Option<&str>) -> Option<(Vec<PolicyRule>, String)> {
    let subjects: Vec<Subject> = binding
        .get("subjects")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    let subject = subjects.iter().find(|s| subject_matches(s, user, binding_ns))?;
    let role_kind = str_at(binding, "/roleRef/kind");
    let role_name = str_at(binding, "/roleRef/name");
    let role = match role_kind {
        "ClusterRole" => store.get(&key("clusterroles", None, role_name))?,
        "Role" => store.get(&key("roles", binding_ns, role_name))?,
        _ => return None,
    };
    let binding_kind = if binding_ns.is_some() {
        "RoleBinding"
    } else {
        "ClusterRoleBinding"
    };
    let binding_name = match binding_ns {
        Some(ns) => format!("{}/{ns}", str_at(binding, "/metadata/name")),
        None => str_at(binding, "/metadata/name").to_string(),
    };
    let why = format!(
        "RBAC: allowed by {binding_kind} \"{binding_name}\" of {role_kind} \"{role_name}\" to {} \"{}\"",
        subject.kind, subject.name
    );
    Some((rules_of(&role.obj), why))
}

/// Every rule that applies to `user` in `namespace` (cluster-wide ones included), each with where
/// it comes from. With no namespace, only the cluster-wide ones.
pub fn rules_for(store: &Store, user: &User, namespace: Option<&str>) -> Vec<(Vec<PolicyRule>, String)> {
    let mut out = Vec::new();
    let (crbs, _, _) = store.list(&format!("/{RBAC}/clusterrolebindings/"), None, 0, &|_| true);
    for b in &crbs {
        out.extend(granted(store, &b.obj, user, None));
    }
    if let Some(ns) = namespace {
        let (rbs, _, _) = store.list(&format!("/{RBAC}/rolebindings/{ns}/"), None, 0, &|_| true);
        for b in &rbs {
            out.extend(granted(store, &b.obj, user, Some(ns)));
        }
    }
    out
}

/// The decision for one request.
pub fn authorize(store: &Store, user: &User, attrs: &Attributes) -> Decision {
    if user.is_superuser() {
        return Decision {
            allowed: true,
            reason: format!("member of {SUPERUSERS}"),
        };
    }
    if let Some(allowed) = user.node_name().and_then(|node| node::authorize(store, node, attrs)) {
        return allowed;
    }
    let ns = match attrs {
        Attributes::Resource { namespace, .. } => namespace.as_deref(),
        Attributes::NonResource { .. } => None,
    };
    for (rules, why) in rules_for(store, user, ns) {
        if rules.iter().any(|r| rule_allows(r, attrs)) {
            return Decision {
                allowed: true,
                reason: why,
            };
        }
    }
    Decision {
        allowed: false,
        reason: String::new(),
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Whether a rule's resources cover `resource[/subresource]`: `*`, the exact name, or `*/sub`.
fn resource_matches(rule: &[String], resource: &str, sub: Option<&str>) -> bool {
    let combined = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_string(),
    };
    rule.iter()
        .any(|r| r == "*" || *r == combined || sub.is_some_and(|s| r.strip_prefix("*/").is_some_and(|rs| rs == s)))
}

/// Whether a rule's non-resource URLs cover `path`: `*`, the exact path, or a prefix ending in `*`.
fn path_matches(rule: &[String], path: &str) -> bool {
    rule.iter()
        .any(|u| u == "*" || u == path || u.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix)))
}

pub fn rule_allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    if !has(&rule.verbs, attrs.verb()) {
        return false;
    }
    match attrs {
        Attributes::Resource {
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            let groups = rule.api_groups.as_deref().unwrap_or_default();
            let resources = rule.resources.as_deref().unwrap_or_default();
            let names = rule.resource_names.as_deref().unwrap_or_default();
            has(groups, group)
                && resource_matches(resources, resource, subresource.as_deref())
                && (names.is_empty() || name.as_ref().is_some_and(|n| names.contains(n)))
        }
        Attributes::NonResource { path, .. } => {
            path_matches(rule.non_resource_urls.as_deref().unwrap_or_default(), path)
        }
    }
}

/// The parts a rule grants one by one; `*` stays `*`, which only a `*` covers.
fn atoms(rule: &PolicyRule) -> Vec<Attributes> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in rule.non_resource_urls.iter().flatten() {
            out.push(Attributes::NonResource {
                verb: verb.clone(),
                path: url.clone(),
            });
        }
        for group in rule.api_groups.iter().flatten() {
            for res in rule.resources.iter().flatten() {
                let (resource, sub) = match res.split_once('/') {
                    Some((r, s)) => (r, Some(s)),
                    None => (res.as_str(), None),
                };
                let names: Vec<Option<&str>> = match rule.resource_names.as_deref() {
                    Some(n) if !n.is_empty() => n.iter().map(|x| Some(x.as_str())).collect(),
                    _ => vec![None],
                };
                for name in names {
                    out.push(Attributes::resource(verb, group, resource, sub, None, name));
                }
            }
        }
    }
    out
}

/// Whether `owner`'s rules grant at least everything `wanted` grants: what keeps a user from
/// creating a role, or binding one, that gives more than the user has (RBAC's escalation check).
/// Returns the first part not covered.
pub fn uncovered(owner: &[PolicyRule], wanted: &[PolicyRule]) -> Option<String> {
    for rule in wanted {
        for atom in atoms(rule) {
            // A `*` wanted is only covered by a `*` owned: `rule_allows` takes the wanted verb,
            // group or resource as a name, and only an owned `*` matches the name `*`.
            if !owner.iter().any(|o| rule_allows(o, &atom)) {
                return Some(describe(&atom));
            }
        }
    }
    None
}

fn describe(a: &Attributes) -> String {
    match a {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            let res = match subresource {
                Some(s) => format!("{resource}/{s}"),
                None => resource.clone(),
            };
            let names = name
                .as_ref()
                .map(|n| format!(", ResourceNames:[\"{n}\"]"))
                .unwrap_or_default();
            format!("{{APIGroups:[\"{group}\"], Resources:[\"{res}\"]{names}, Verbs:[\"{verb}\"]}}")
        }
        Attributes::NonResource { verb, path } => format!("{{NonResourceURLs:[\"{path}\"], Verbs:[\"{verb}\"]}}"),
    }
}

/// The rules of the role a binding refers to (`roleRef`), for the escalation check.
pub fn role_rules(store: &Store, role_ref: &Value, binding_ns: Option<&str>) -> Option<Vec<PolicyRule>> {
    let name = str_at(role_ref, "/name");
    let role = match str_at(role_ref, "/kind") {
        "ClusterRole" => store.get(&key("clusterroles", None, name))?,
        "Role" => store.get(&key("roles", binding_ns, name))?,
        _ => return None,
    };
    Some(rules_of(&role.obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> PolicyRule {
        serde_json::from_value(v).unwrap()
    }

    fn res(verb: &str, group: &str, resource: &str, sub: Option<&str>, name: Option<&str>) -> Attributes {
        Attributes::resource(verb, group, resource, sub, Some("ns"), name)
    }

    #[test]
    fn rules_match_as_kubernetes_matches_them() {
        let r = rule(json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}));
        assert!(rule_allows(&r, &res("get", "", "pods", None, Some("p"))));
        assert!(rule_allows(&r, &res("get", "", "pods", Some("log"), Some("p"))));
        assert!(!rule_allows(&r, &res("get", "", "pods", Some("exec"), Some("p"))));
        assert!(!rule_allows(&r, &res("create", "", "pods", None, None)));
        assert!(!rule_allows(&r, &res("get", "apps", "pods", None, None)));
        let sub = rule(json!({"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["*"]}));
        assert!(rule_allows(
            &sub,
            &res("update", "apps", "deployments", Some("scale"), None)
        ));
        assert!(!rule_allows(&sub, &res("update", "apps", "deployments", None, None)));
        let named =
            rule(json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["get"]}));
        assert!(rule_allows(&named, &res("get", "", "configmaps", None, Some("a"))));
        assert!(!rule_allows(&named, &res("get", "", "configmaps", None, Some("b"))));
        // A list names no object, so a rule limited to names does not allow it.
        assert!(!rule_allows(&named, &res("get", "", "configmaps", None, None)));
        let urls = rule(json!({"nonResourceURLs": ["/apis/*", "/version"], "verbs": ["get"]}));
        let path = |p: &str| Attributes::NonResource {
            verb: "get".into(),
            path: p.into(),
        };
        assert!(rule_allows(&urls, &path("/apis/apps/v1")));
        assert!(rule_allows(&urls, &path("/version")));
        assert!(!rule_allows(&urls, &path("/metrics")));
        // A resource rule never allows a path, nor a path rule a resource.
        assert!(!rule_allows(&r, &path("/version")));
        assert!(!rule_allows(&urls, &res("get", "", "pods", None, None)));
    }

    #[test]
    fn escalation_is_what_the_owner_lacks() {
        let view = vec![rule(
            json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}),
        )];
        let same = vec![rule(
            json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}),
        )];
        assert_eq!(uncovered(&view, &same), None);
        let more = vec![rule(
            json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]}),
        )];
        assert_eq!(
            uncovered(&view, &more).unwrap(),
            "{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}"
        );
        // A wildcard wanted is only covered by a wildcard owned.
        let star = vec![rule(json!({"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}))];
        assert!(uncovered(&view, &star).is_some());
        let admin = vec![rule(json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}))];
        assert_eq!(uncovered(&admin, &star), None);
        assert_eq!(uncovered(&admin, &more), None);
        // Names narrow what is wanted.
        let named = vec![rule(
            json!({"apiGroups": [""], "resources": ["pods"], "resourceNames": ["a"], "verbs": ["get"]}),
        )];
        assert_eq!(uncovered(&view, &named), None);
        assert!(uncovered(&named, &view).is_some());
    }

    #[test]
    fn refusals_read_as_the_apiserver_writes_them() {
        assert_eq!(
            Attributes::resource("create", "", "pods", None, Some("default"), None)
                .forbidden("system:serviceaccount:default:r"),
            "pods is forbidden: User \"system:serviceaccount:default:r\" cannot create resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(
            Attributes::resource("get", "apps", "deployments", Some("scale"), None, Some("w")).forbidden("u"),
            "deployments.apps \"w\" is forbidden: User \"u\" cannot get resource \"deployments/scale\" in API group \"apps\" at the cluster scope"
        );
    }
}
