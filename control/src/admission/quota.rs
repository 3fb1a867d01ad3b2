//! ResourceQuota at admission, as Kubernetes' quota plugin: a new object is refused (403) when
//! it would take its namespace past a quota's `hard` limit: pods, compute requests and limits
//! (`requests.cpu`, `cpu`, `limits.memory`…), and object counts (`services`, `configmaps`,
//! `secrets`, `count/deployments.apps`…). Usage is counted from the objects stored when the
//! request is admitted (terminal pods do not count), so it is never stale. A quota on a compute
//! resource refuses a pod that does not state it. Scopes `BestEffort`, `NotBestEffort`,
//! `Terminating` and `NotTerminating` narrow which pods a quota counts.

use std::collections::BTreeMap;

use nodeless_types::quantity::parse_quantity;
use serde_json::Value;

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn milli(q: &str) -> Option<i128> {
    parse_quantity(q).ok().map(|q| q.0)
}

/// The quota names an object of `(group, plural)` counts toward.
fn count_names(group: &str, plural: &str) -> Vec<String> {
    let mut names = vec![if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }];
    if group.is_empty()
        && matches!(
            plural,
            "pods"
                | "services"
                | "configmaps"
                | "secrets"
                | "replicationcontrollers"
                | "resourcequotas"
                | "persistentvolumeclaims"
        )
    {
        names.push(plural.to_string());
    }
    names
}

fn pod_terminal(p: &Value) -> bool {
    matches!(s(p, "/status/phase"), "Succeeded" | "Failed")
}

/// A pod's total of `requests` or `limits` of one resource (milli-units), if every container
/// states it; init containers count by their largest, as the scheduler counts them.
fn pod_amount(pod: &Value, kind: &str, resource: &str) -> Option<i128> {
    let get = |c: &Value| {
        c.pointer(&format!("/resources/{kind}/{resource}"))
            .and_then(Value::as_str)
            .and_then(milli)
    };
    let mut sum = 0;
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        sum += get(c)?;
    }
    let init = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(get)
        .max()
        .unwrap_or(0);
    Some(sum.max(init))
}

/// What a pod uses of each quota resource it can: pods, requests.* (and the bare names), limits.*.
fn pod_usage(pod: &Value, hard: &BTreeMap<String, i128>) -> Result<BTreeMap<String, i128>, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for name in hard.keys() {
        let (kind, resource) = match name.split_once('.') {
            Some(("requests", r)) => ("requests", r),
            Some(("limits", r)) => ("limits", r),
            None if matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage") => ("requests", name.as_str()),
            _ => continue,
        };
        match pod_amount(pod, kind, resource) {
            Some(a) => {
                out.insert(name.clone(), a);
            }
            None => missing.push(name.clone()),
        }
    }
    if missing.is_empty() { Ok(out) } else { Err(missing) }
}

fn in_scope(quota: &Value, pod: &Value) -> bool {
    let scopes = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    scopes.iter().all(|sc| {
        let best_effort = pod.get("spec").map(crate::api::objects::qos_class) == Some("BestEffort");
        let terminating = pod.pointer("/spec/activeDeadlineSeconds").is_some_and(|d| !d.is_null());
        match sc.as_str().unwrap_or("") {
            "BestEffort" => best_effort,
            "NotBestEffort" => !best_effort,
            "Terminating" => terminating,
            "NotTerminating" => !terminating,
            _ => false,
        }
    })
}

/// The scopes admission understands; a quota with another (or a `scopeSelector`) is refused by
/// validation rather than enforced partly.
pub const SCOPES: &[&str] = &["BestEffort", "NotBestEffort", "NotTerminating", "Terminating"];

/// The `hard` limits of a quota, in milli-units (counts too: 1 object = 1000).
pub fn hard(quota: &Value) -> BTreeMap<String, i128> {
    quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), milli(v.as_str()?)?)))
        .collect()
}

/// What the namespace uses of a quota's resources now: `objects` are the stored objects of the
/// namespace by `(group, plural)`.
pub fn used(quota: &Value, objects: &BTreeMap<(String, String), Vec<Value>>) -> BTreeMap<String, i128> {
    let hard = hard(quota);
    let mut used: BTreeMap<String, i128> = hard.keys().map(|k| (k.clone(), 0)).collect();
    for ((group, plural), items) in objects {
        let is_pod = group.is_empty() && plural == "pods";
        for obj in items {
            if is_pod && (pod_terminal(obj) || !in_scope(quota, obj)) {
                continue;
            }
            for n in count_names(group, plural) {
                if let Some(u) = used.get_mut(&n) {
                    *u += 1000;
                }
            }
            if is_pod {
                if let Ok(amounts) = pod_usage(obj, &hard) {
                    for (k, a) in amounts {
                        *used.entry(k).or_default() += a;
                    }
                }
            }
        }
    }
    used
}

/// How a quantity in milli-units reads in a message (`500m`, `2`, `64Mi` stays as bytes).
pub fn show(name: &str, m: i128) -> String {
    let memory_like = name.contains("memory") || name.contains("storage");
    if memory_like || m % 1000 == 0 {
        format!("{}", m / 1000)
    } else {
        format!("{m}m")
    }
}

/// Whether a new object of `(group, plural)` fits every quota of its namespace; the refusal as
/// the apiserver words it.
pub fn admit(
    group: &str,
    plural: &str,
    obj: &Value,
    quotas: &[Value],
    objects: &BTreeMap<(String, String), Vec<Value>>,
) -> Result<(), String> {
    let is_pod = group.is_empty() && plural == "pods";
    for quota in quotas {
        if is_pod && !in_scope(quota, obj) {
            continue;
        }
        let hard = hard(quota);
        let mut asked: BTreeMap<String, i128> = BTreeMap::new();
        for n in count_names(group, plural) {
            if hard.contains_key(&n) {
                asked.insert(n, 1000);
            }
        }
        if is_pod {
            match pod_usage(obj, &hard) {
                Ok(a) => asked.extend(a),
                Err(missing) => {
                    return Err(format!(
                        "failed quota: {}: must specify {}",
                        s(quota, "/metadata/name"),
                        missing.join(",")
                    ));
                }
            }
        }
        if asked.is_empty() {
            continue;
        }
        let used = used(quota, objects);
        let over: Vec<&String> = asked
            .iter()
            .filter(|(k, a)| used.get(*k).copied().unwrap_or(0) + **a > hard[*k])
            .map(|(k, _)| k)
            .collect();
        if !over.is_empty() {
            let list = |m: &dyn Fn(&String) -> i128| {
                over.iter()
                    .map(|k| format!("{k}={}", show(k, m(k))))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            return Err(format!(
                "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                s(quota, "/metadata/name"),
                list(&|k| asked[k]),
                list(&|k| used.get(k).copied().unwrap_or(0)),
                list(&|k| hard[k]),
            ));
        }
    }
    Ok(())
}

/// The `(group, plural)` of the objects the namespace's quotas count.
pub fn counted(quotas: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for q in quotas {
        for k in hard(q).keys() {
            let gp = if let Some(rest) = k.strip_prefix("count/") {
                match rest.split_once('.') {
                    Some((plural, group)) => (group.to_string(), plural.to_string()),
                    None => (String::new(), rest.to_string()),
                }
            } else if matches!(
                k.as_str(),
                "services"
                    | "configmaps"
                    | "secrets"
                    | "replicationcontrollers"
                    | "resourcequotas"
                    | "persistentvolumeclaims"
            ) {
                (String::new(), k.clone())
            } else {
                (String::new(), "pods".to_string())
            };
            if !out.contains(&gp) {
                out.push(gp);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, cpu: Option<&str>) -> Value {
        let resources = match cpu {
            Some(c) => json!({"requests": {"cpu": c, "memory": "64Mi"}}),
            None => json!({}),
        };
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "resources": resources}]}, "status": {"phase": "Running"}})
    }

    fn objects(pods: Vec<Value>) -> BTreeMap<(String, String), Vec<Value>> {
        BTreeMap::from([((String::new(), "pods".to_string()), pods)])
    }

    #[test]
    fn pods_and_requests_within_the_quota_and_the_refusals_past_it() {
        let quota =
            json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "2", "requests.cpu": "1", "configmaps": "1"}}});
        let quotas = [quota.clone()];
        let one = objects(vec![pod("a", Some("500m"))]);
        assert_eq!(admit("", "pods", &pod("b", Some("500m")), &quotas, &one), Ok(()));
        assert_eq!(
            admit("", "pods", &pod("b", Some("600m")), &quotas, &one).unwrap_err(),
            "exceeded quota: q, requested: requests.cpu=600m, used: requests.cpu=500m, limited: requests.cpu=1"
        );
        assert_eq!(
            admit("", "pods", &pod("b", None), &quotas, &one).unwrap_err(),
            "failed quota: q: must specify requests.cpu"
        );
        let two = objects(vec![pod("a", Some("100m")), pod("b", Some("100m"))]);
        assert!(
            admit("", "pods", &pod("c", Some("100m")), &quotas, &two)
                .unwrap_err()
                .contains("pods=1")
        );
        // A finished pod no longer counts.
        let mut done = pod("b", Some("100m"));
        done["status"]["phase"] = json!("Succeeded");
        let finished = objects(vec![pod("a", Some("100m")), done]);
        assert_eq!(admit("", "pods", &pod("c", Some("100m")), &quotas, &finished), Ok(()));
        // Counts of other kinds.
        let cms = BTreeMap::from([((String::new(), "configmaps".to_string()), vec![json!({})])]);
        assert!(
            admit("", "configmaps", &json!({}), &quotas, &cms)
                .unwrap_err()
                .contains("configmaps=1")
        );
        assert_eq!(admit("", "secrets", &json!({}), &quotas, &cms), Ok(()));
        let used = used(&quota, &two);
        assert_eq!((used["pods"], used["requests.cpu"]), (2000, 200));
    }

    #[test]
    fn scopes_choose_the_pods_a_quota_counts() {
        let quota = json!({"metadata": {"name": "be"}, "spec": {"hard": {"pods": "1"}, "scopes": ["BestEffort"]}});
        let quotas = [quota];
        let one_best_effort = objects(vec![pod("a", None)]);
        assert!(admit("", "pods", &pod("b", None), &quotas, &one_best_effort).is_err());
        assert_eq!(
            admit("", "pods", &pod("b", Some("100m")), &quotas, &one_best_effort),
            Ok(())
        );
    }
}
