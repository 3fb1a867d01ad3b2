//! LimitRange at pod admission, as Kubernetes' LimitRanger plugin: containers without requests
//! or limits get the namespace's `defaultRequest` and `default`, then every container (type
//! `Container`) and the pod as a whole (type `Pod`) must fall within `min` and `max`. ASK sizes
//! each pod from its requests, so a namespace's defaults decide what an unsized pod gets.

use nodeless_types::quantity::parse_quantity;
use serde_json::{Map, Value, json};

/// A container's limit with no request makes the request (the apiserver's pod defaulting).
pub fn requests_from_limits(pod: &mut Value) {
    for list in ["initContainers", "containers"] {
        let Some(cs) = pod.pointer_mut(&format!("/spec/{list}")).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in cs.iter_mut() {
            let limits = c.pointer("/resources/limits").and_then(Value::as_object).cloned();
            // A limit that is not a quantity is refused by validation, naming the limit alone.
            for (res, q) in limits.into_iter().flatten().filter(|(_, q)| milli(q).is_some()) {
                resources(c, "requests").entry(res).or_insert(q);
            }
        }
    }
}

/// Apply the defaults of `ranges` (LimitRange objects) to a new pod. Returns what was set, for
/// the `kubernetes.io/limit-ranger` annotation, or the reason the pod is refused.
pub fn apply(pod: &mut Value, ranges: &[&Value]) -> Result<Option<String>, String> {
    let items: Vec<&Value> = ranges
        .iter()
        .flat_map(|r| {
            r.pointer("/spec/limits")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    if items.is_empty() {
        return Ok(None);
    }
    let mut set: Vec<String> = Vec::new();
    for list in ["initContainers", "containers"] {
        let Some(cs) = pod.pointer_mut(&format!("/spec/{list}")).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in cs.iter_mut() {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let which = if list == "containers" {
                "container"
            } else {
                "init container"
            };
            for item in items.iter().filter(|i| i.get("type") == Some(&json!("Container"))) {
                let mut requests_set = Vec::new();
                let mut limits_set = Vec::new();
                // A LimitRange's defaultRequest falls back to its default (limit).
                let mut default_request = item
                    .get("default")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                default_request.extend(
                    item.get("defaultRequest")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default(),
                );
                for (res, q) in &default_request {
                    let slot = resources(c, "requests");
                    if !slot.contains_key(res) {
                        slot.insert(res.clone(), q.clone());
                        requests_set.push(res.clone());
                    }
                }
                for (res, q) in item.get("default").and_then(Value::as_object).into_iter().flatten() {
                    let slot = resources(c, "limits");
                    if !slot.contains_key(res) {
                        slot.insert(res.clone(), q.clone());
                        limits_set.push(res.clone());
                    }
                }
                if !requests_set.is_empty() {
                    set.push(format!("{} request for {which} {name}", requests_set.join(", ")));
                }
                if !limits_set.is_empty() {
                    set.push(format!("{} limit for {which} {name}", limits_set.join(", ")));
                }
            }
        }
    }
    check(pod, &items)?;
    Ok((!set.is_empty()).then(|| format!("LimitRanger plugin set: {}", set.join("; "))))
}

fn resources<'a>(c: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !c.get("resources").is_some_and(Value::is_object) {
        c["resources"] = json!({});
    }
    if !c["resources"].get(key).is_some_and(Value::is_object) {
        c["resources"][key] = json!({});
    }
    c["resources"][key].as_object_mut().expect("made an object above")
}

fn milli(v: &Value) -> Option<i128> {
    v.as_str()
        .map(str::to_string)
        .or_else(|| v.as_number().map(|n| n.to_string()))
        .and_then(|s| parse_quantity(&s).ok())
        .map(|q| q.milli())
}

/// `min` and `max` per container and per pod, worded as the LimitRanger plugin words them.
fn check(pod: &Value, items: &[&Value]) -> Result<(), String> {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| {
            pod.pointer(&format!("/spec/{l}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    for item in items {
        let ty = item.get("type").and_then(Value::as_str).unwrap_or_default();
        let per = match ty {
            "Container" => "Container",
            "Pod" => "Pod",
            _ => continue,
        };
        // For a pod: the sum over its (non-init) containers.
        let amounts = |kind: &str, res: &str| -> Vec<Option<i128>> {
            if ty == "Pod" {
                let cs = pod.pointer("/spec/containers").and_then(Value::as_array);
                let all: Vec<Option<i128>> = cs
                    .into_iter()
                    .flatten()
                    .map(|c| c.pointer(&format!("/resources/{kind}/{res}")).and_then(milli))
                    .collect();
                vec![all.iter().copied().collect::<Option<Vec<_>>>().map(|v| v.iter().sum())]
            } else {
                containers
                    .iter()
                    .map(|c| c.pointer(&format!("/resources/{kind}/{res}")).and_then(milli))
                    .collect()
            }
        };
        for (bound, res, q) in ["min", "max"].iter().flat_map(|b| {
            item.get(*b)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(move |(r, q)| (*b, r, q))
        }) {
            let Some(limit) = milli(q) else { continue };
            let shown = q.as_str().map(str::to_string).unwrap_or_else(|| q.to_string());
            let checks: &[&str] = if bound == "min" {
                &["requests", "limits"]
            } else {
                &["limits"]
            };
            for kind in checks {
                for amount in amounts(kind, res) {
                    let what = if *kind == "requests" { "request" } else { "limit" };
                    match amount {
                        None if bound == "max" => {
                            return Err(format!(
                                "maximum {res} usage per {per} is {shown}.  No limit is specified"
                            ));
                        }
                        Some(a) if bound == "min" && a < limit => {
                            return Err(format!(
                                "minimum {res} usage per {per} is {shown}, but {what} is {}",
                                show(a)
                            ));
                        }
                        Some(a) if bound == "max" && a > limit => {
                            return Err(format!(
                                "maximum {res} usage per {per} is {shown}, but {what} is {}",
                                show(a)
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(())
}

/// A milli-unit amount as a quantity (`250m`, `2`, `67108864`).
fn show(m: i128) -> String {
    if m % 1000 == 0 {
        (m / 1000).to_string()
    } else {
        format!("{m}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Value {
        json!({"spec": {"limits": [{"type": "Container",
            "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
            "min": {"cpu": "50m"}, "max": {"cpu": "2", "memory": "1Gi"}}]}})
    }

    #[test]
    fn unsized_containers_get_the_namespace_defaults() {
        let mut pod =
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "resources": {"limits": {"cpu": "1"}}}]}});
        let r = range();
        requests_from_limits(&mut pod);
        let note = apply(&mut pod, &[&r]).unwrap().unwrap();
        assert_eq!(
            pod["spec"]["containers"][0]["resources"],
            json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
        );
        // b's own limit stays and makes its request; memory comes from the defaults.
        assert_eq!(
            pod["spec"]["containers"][1]["resources"],
            json!({"limits": {"cpu": "1", "memory": "256Mi"}, "requests": {"cpu": "1", "memory": "128Mi"}})
        );
        assert!(
            note.starts_with("LimitRanger plugin set: cpu, memory request for container a"),
            "{note}"
        );
    }

    #[test]
    fn pods_out_of_bounds_are_refused_with_the_reason() {
        let r = range();
        let mut big = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "3"}}}]}});
        assert_eq!(
            apply(&mut big, &[&r]).unwrap_err(),
            "maximum cpu usage per Container is 2, but limit is 3"
        );
        let mut small = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "10m"}}}]}});
        assert_eq!(
            apply(&mut small, &[&r]).unwrap_err(),
            "minimum cpu usage per Container is 50m, but request is 10m"
        );
        let pod_max = json!({"spec": {"limits": [{"type": "Pod", "max": {"memory": "300Mi"}}]}});
        let mut two = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"memory": "200Mi"}}},
            {"name": "b", "resources": {"limits": {"memory": "200Mi"}}}]}});
        assert!(
            apply(&mut two, &[&pod_max])
                .unwrap_err()
                .starts_with("maximum memory usage per Pod is 300Mi")
        );
        let mut none = json!({"spec": {"containers": [{"name": "a"}]}});
        assert!(apply(&mut none, &[]).unwrap().is_none());
        assert_eq!(none, json!({"spec": {"containers": [{"name": "a"}]}}));
    }
}
