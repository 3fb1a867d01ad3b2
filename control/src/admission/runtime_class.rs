//! The RuntimeClass admission step, as Kubernetes' (`RuntimeClass` plugin): a new pod naming a
//! RuntimeClass gets the class's fixed overhead as `spec.overhead` (a pod that sets another one
//! is refused), and the class's scheduling: its node selector merged into the pod's (a
//! conflicting value is refused) and its tolerations added. A class that does not exist is
//! refused, since no node could run the pod.

use serde_json::{Map, Value, json};

/// Apply the class `rc` (None: not found) named `class` to `pod`; `Err` is why it is refused.
pub fn apply(pod: &mut Value, class: &str, rc: Option<&Value>) -> Result<(), String> {
    let rc = rc.ok_or_else(|| format!("pod rejected: spec.runtimeClassName: RuntimeClass \"{class}\" not found"))?;
    if let Some(fixed) = rc
        .pointer("/overhead/podFixed")
        .filter(|o| o.as_object().is_some_and(|m| !m.is_empty()))
    {
        match pod.pointer("/spec/overhead") {
            Some(set) if !set.is_null() && set != fixed => {
                return Err(
                    "spec.overhead: Forbidden: pod's Overhead doesn't match RuntimeClass's defined Overhead"
                        .to_string(),
                );
            }
            _ => pod["spec"]["overhead"] = fixed.clone(),
        }
    }
    if let Some(selector) = rc.pointer("/scheduling/nodeSelector").and_then(Value::as_object) {
        let spec = &mut pod["spec"];
        if !spec["nodeSelector"].is_object() {
            spec["nodeSelector"] = Value::Object(Map::new());
        }
        let own = spec["nodeSelector"]
            .as_object_mut()
            .ok_or("spec.nodeSelector is not an object")?;
        for (k, v) in selector {
            match own.get(k) {
                Some(mine) if mine != v => {
                    return Err(format!(
                        "spec.nodeSelector: Forbidden: conflict with RuntimeClass \"{class}\": {k}={} against {k}={}",
                        mine.as_str().unwrap_or_default(),
                        v.as_str().unwrap_or_default()
                    ));
                }
                _ => {
                    own.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if let Some(tolerations) = rc.pointer("/scheduling/tolerations").and_then(Value::as_array) {
        let spec = &mut pod["spec"];
        if !spec["tolerations"].is_array() {
            spec["tolerations"] = json!([]);
        }
        if let Some(own) = spec["tolerations"].as_array_mut() {
            for t in tolerations {
                if !own.contains(t) {
                    own.push(t.clone());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"spec": {"runtimeClassName": "microvm", "containers": [{"name": "c"}], "nodeSelector": {"zone": "a"}}})
    }

    #[test]
    fn overhead_and_scheduling_come_from_the_class() {
        let rc = json!({"handler": "microvm", "overhead": {"podFixed": {"memory": "160Mi", "cpu": "250m"}},
            "scheduling": {"nodeSelector": {"microvm": "yes"}, "tolerations": [{"key": "vm", "operator": "Exists"}]}});
        let mut p = pod();
        apply(&mut p, "microvm", Some(&rc)).unwrap();
        assert_eq!(p["spec"]["overhead"], json!({"memory": "160Mi", "cpu": "250m"}));
        assert_eq!(p["spec"]["nodeSelector"], json!({"zone": "a", "microvm": "yes"}));
        assert_eq!(p["spec"]["tolerations"], json!([{"key": "vm", "operator": "Exists"}]));
        // Applying again (an equal overhead) changes nothing.
        let before = p.clone();
        apply(&mut p, "microvm", Some(&rc)).unwrap();
        assert_eq!(p, before);
    }

    #[test]
    fn a_missing_class_another_overhead_or_a_conflicting_selector_is_refused() {
        let err = apply(&mut pod(), "kata", None).unwrap_err();
        assert_eq!(
            err,
            "pod rejected: spec.runtimeClassName: RuntimeClass \"kata\" not found"
        );
        let rc = json!({"handler": "microvm", "overhead": {"podFixed": {"memory": "160Mi"}}});
        let mut p = pod();
        p["spec"]["overhead"] = json!({"memory": "1Gi"});
        assert!(
            apply(&mut p, "microvm", Some(&rc))
                .unwrap_err()
                .starts_with("spec.overhead: Forbidden")
        );
        let rc = json!({"handler": "microvm", "scheduling": {"nodeSelector": {"zone": "b"}}});
        let err = apply(&mut pod(), "microvm", Some(&rc)).unwrap_err();
        assert!(err.starts_with("spec.nodeSelector: Forbidden: conflict"), "{err}");
    }
}
