//! The `knative-serving` ConfigMaps, with Knative's names, keys and defaults, read where they
//! are needed (the store is in memory, so a read per reconcile costs nothing and an edit takes
//! effect at once).

use std::collections::BTreeMap;

use serde_json::Value;

use super::SYSTEM_NAMESPACE;
use crate::store::Store;

/// What `install` writes when a ConfigMap is missing: Knative's defaults, spelled out so that
/// `kubectl get cm -n knative-serving config-autoscaler -o yaml` shows them.
pub const DEFAULTS: &[(&str, &[(&str, &str)])] = &[
    ("config-domain", &[]),
    (
        "config-autoscaler",
        &[
            ("container-concurrency-target-default", "100"),
            ("container-concurrency-target-percentage", "70"),
            ("requests-per-second-target-default", "200"),
            ("target-burst-capacity", "211"),
            ("stable-window", "60s"),
            ("panic-window-percentage", "10.0"),
            ("panic-threshold-percentage", "200.0"),
            ("max-scale-up-rate", "1000.0"),
            ("max-scale-down-rate", "2.0"),
            ("enable-scale-to-zero", "true"),
            ("scale-to-zero-grace-period", "30s"),
            ("scale-to-zero-pod-retention-period", "0s"),
            ("initial-scale", "1"),
            ("allow-zero-initial-scale", "false"),
            ("min-scale", "0"),
            ("max-scale", "0"),
            ("scale-down-delay", "0s"),
        ],
    ),
    (
        "config-defaults",
        &[
            ("revision-timeout-seconds", "300"),
            ("max-revision-timeout-seconds", "600"),
            ("revision-idle-timeout-seconds", "0"),
            ("container-concurrency", "0"),
            ("container-concurrency-max-limit", "1000"),
            ("container-name-template", "user-container"),
            ("enable-service-links", "false"),
        ],
    ),
    (
        "config-gc",
        &[
            ("retain-since-create-time", "48h"),
            ("retain-since-last-active-time", "15h"),
            ("min-non-active-revisions", "20"),
            ("max-non-active-revisions", "1000"),
        ],
    ),
];

/// What `config-defaults` says of revisions, as the webhook applies and checks it.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionDefaults {
    /// `revision-timeout-seconds`: a revision's `timeoutSeconds` when it gives none.
    pub timeout: i64,
    /// `max-revision-timeout-seconds`: the most `timeoutSeconds` (and the other timeouts) may ask.
    pub max_timeout: i64,
    /// `container-concurrency`: `containerConcurrency` when it gives none.
    pub concurrency: i64,
    /// `container-concurrency-max-limit`: the most `containerConcurrency` may ask.
    pub max_concurrency: i64,
}

impl Default for RevisionDefaults {
    fn default() -> Self {
        RevisionDefaults::of(&BTreeMap::new())
    }
}

impl RevisionDefaults {
    /// From `config-defaults`' data; a key missing or not a number keeps Knative's default.
    pub fn of(cfg: &BTreeMap<String, String>) -> Self {
        let num = |k: &str, d: i64| cfg.get(k).and_then(|v| v.trim().parse::<i64>().ok()).unwrap_or(d);
        RevisionDefaults {
            timeout: num("revision-timeout-seconds", 300),
            max_timeout: num("max-revision-timeout-seconds", 600),
            concurrency: num("container-concurrency", 0),
            max_concurrency: num("container-concurrency-max-limit", 1000),
        }
    }

    pub fn read(store: &Store) -> Self {
        Self::of(&read(store, "config-defaults"))
    }
}

/// One ConfigMap's data, with the built-in defaults under what the cluster says.
pub fn read(store: &Store, name: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = DEFAULTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, kv)| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
        .unwrap_or_default();
    if let Some(cm) = store.get(&format!("/core/configmaps/{SYSTEM_NAMESPACE}/{name}")) {
        if let Some(data) = cm.obj.get("data").and_then(Value::as_object) {
            for (k, v) in data {
                if k.starts_with('_') {
                    continue;
                }
                if let Some(v) = v.as_str() {
                    out.insert(k.clone(), v.to_string());
                }
            }
        }
    }
    out
}

/// The cluster's domain for a Route with these labels: the `config-domain` key whose selector
/// matches them (the most specific), else the key with an empty value, else `example.com`.
pub fn domain(store: &Store, labels: Option<&serde_json::Map<String, Value>>) -> String {
    let Some(cm) = store.get(&format!("/core/configmaps/{SYSTEM_NAMESPACE}/config-domain")) else {
        return "example.com".into();
    };
    let Some(data) = cm.obj.get("data").and_then(Value::as_object) else {
        return "example.com".into();
    };
    let mut best: Option<(usize, &str)> = None;
    let mut default = None;
    for (domain, v) in data {
        if domain.starts_with('_') {
            continue;
        }
        let v = v.as_str().unwrap_or_default().trim();
        if v.is_empty() {
            default.get_or_insert(domain.as_str());
            continue;
        }
        // `selector:\n  app: nonprofit`: every listed label must match.
        let Some(sel) = v.strip_prefix("selector:") else {
            continue;
        };
        let pairs: Vec<(&str, &str)> = sel
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .filter(|(k, _)| !k.is_empty())
            .collect();
        let all = pairs
            .iter()
            .all(|(k, want)| labels.and_then(|l| l.get(*k)).and_then(Value::as_str) == Some(*want));
        if all && !pairs.is_empty() && best.is_none_or(|(n, _)| pairs.len() > n) {
            best = Some((pairs.len(), domain.as_str()));
        }
    }
    best.map(|(_, d)| d).or(default).unwrap_or("example.com").to_string()
}
