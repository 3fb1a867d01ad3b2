//! DefaultTolerationSeconds, as Kubernetes' admission plugin of that name: a new pod tolerates a
//! not-ready or unreachable node for 300 s unless it says otherwise, so a lost host's pods move
//! after five minutes (see `controllers/node_lifecycle.rs`).

use serde_json::{Value, json};

/// The taint of a Node whose Lease lapsed.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a Node that says it is not ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// How long a pod stays on a lost node by default.
const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// What Kubernetes' DefaultTolerationSeconds admission does: a new pod that does not say how
/// long it stays on a not-ready or unreachable node tolerates each for 300 s.
pub fn add_defaults(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else { return };
    for key in [NOT_READY, UNREACHABLE] {
        let covered = list.iter().any(|t| {
            let field = |name: &str| t.get(name).and_then(Value::as_str).unwrap_or_default();
            (field("effect").is_empty() || field("effect") == "NoExecute")
                && (field("key") == key || (field("key").is_empty() && field("operator") == "Exists"))
        });
        if !covered {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}));
        }
    }
}
