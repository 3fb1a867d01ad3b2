//! The node's Prometheus metrics, served at `/metrics` on its kubelet API (and through control as
//! `/api/v1/nodes/<node>/proxy/metrics`). Names are kubelet's where kubelet has the metric:
//! `kubelet_pod_start_duration_seconds` (from the node first seeing a pod to all its containers
//! started), `kubelet_running_pods`, `kubelet_image_pull_duration_seconds`. The node's own:
//! `nodeless_image_pulls_total` by result, `nodeless_sandboxes` by phase (`warm`: made ahead,
//! see `warm`), `nodeless_warm_sandbox_claims_total` by result (`taken`, `none`, `failed`).
//! Claims mounted on the node: kubelet's `kubelet_volume_stats_{capacity,available,used}_bytes`
//! and `kubelet_volume_stats_inodes{,_free,_used}` by namespace and claim, from the drivers'
//! NodeGetVolumeStats (see `VolumeStats`).
//! What runs beside the node adds its own through [`NodeMetrics::with_collectors`] (the eni-cni
//! pod network: `nodeless_eni_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// One claim's volume, as kubelet labels its stats.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct VolumeLabels {
    pub namespace: String,
    pub persistentvolumeclaim: String,
}

/// What the drivers last said of each mounted claim (bytes and inodes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeUsage {
    pub capacity_bytes: i64,
    pub available_bytes: i64,
    pub used_bytes: i64,
    pub inodes: i64,
    pub inodes_free: i64,
    pub inodes_used: i64,
}

/// kubelet's volume stats families; a claim no longer mounted leaves them.
#[derive(Default)]
pub struct VolumeStats {
    families: [Family<VolumeLabels, Gauge>; 6],
    shown: std::sync::Mutex<std::collections::BTreeSet<VolumeLabels>>,
}

const VOLUME_STATS: [(&str, &str); 6] = [
    ("kubelet_volume_stats_capacity_bytes", "Capacity in bytes of the volume"),
    (
        "kubelet_volume_stats_available_bytes",
        "Number of available bytes in the volume",
    ),
    ("kubelet_volume_stats_used_bytes", "Number of used bytes in the volume"),
    ("kubelet_volume_stats_inodes", "Maximum number of inodes in the volume"),
    (
        "kubelet_volume_stats_inodes_free",
        "Number of free inodes in the volume",
    ),
    (
        "kubelet_volume_stats_inodes_used",
        "Number of used inodes in the volume",
    ),
];

impl VolumeStats {
    /// Replace what is shown with `now`.
    pub fn show(&self, now: &[(VolumeLabels, VolumeUsage)]) {
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        let keep: std::collections::BTreeSet<VolumeLabels> = now.iter().map(|(l, _)| l.clone()).collect();
        for gone in shown.difference(&keep) {
            for f in &self.families {
                f.remove(gone);
            }
        }
        for (l, u) in now {
            let values = [
                u.capacity_bytes,
                u.available_bytes,
                u.used_bytes,
                u.inodes,
                u.inodes_free,
                u.inodes_used,
            ];
            for (f, v) in self.families.iter().zip(values) {
                f.get_or_create(l).set(v);
            }
        }
        *shown = keep;
    }
}

pub struct NodeMetrics {
    registry: Registry,
    pub volume_stats: VolumeStats,
    pub pod_start: Histogram,
    pub running_pods: Gauge,
    pub image_pull_duration: Histogram,
    pub image_pulls: Family<ResultLabels, Counter>,
    pub sandboxes: Family<PhaseLabels, Gauge>,
    pub warm_claims: Family<ResultLabels, Counter>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        // 5 ms to about 80 s.
        let pod_start = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        let running_pods = Gauge::default();
        // 50 ms to about 27 minutes.
        let image_pull_duration = Histogram::new(exponential_buckets(0.05, 2.0, 16));
        let image_pulls = Family::<ResultLabels, Counter>::default();
        let sandboxes = Family::<PhaseLabels, Gauge>::default();
        let warm_claims = Family::<ResultLabels, Counter>::default();
        registry.register(
            "kubelet_pod_start_duration_seconds",
            "From the node first seeing a pod to all of its containers started",
            pod_start.clone(),
        );
        registry.register(
            "kubelet_running_pods",
            "Pods with a sandbox on the node",
            running_pods.clone(),
        );
        registry.register(
            "kubelet_image_pull_duration_seconds",
            "Time of one image pull (mirrors tried included)",
            image_pull_duration.clone(),
        );
        registry.register(
            "nodeless_image_pulls",
            "Image pulls, by result (pulled or failed)",
            image_pulls.clone(),
        );
        registry.register(
            "nodeless_sandboxes",
            "Sandboxes by phase: warm (made ahead of any pod)",
            sandboxes.clone(),
        );
        registry.register(
            "nodeless_warm_sandbox_claims",
            "New pods' tries to take a warm sandbox, by result (taken, none, failed)",
            warm_claims.clone(),
        );
        let volume_stats = VolumeStats::default();
        for ((name, help), f) in VOLUME_STATS.iter().zip(&volume_stats.families) {
            registry.register(*name, *help, f.clone());
        }
        NodeMetrics {
            registry,
            volume_stats,
            pod_start,
            running_pods,
            image_pull_duration,
            image_pulls,
            sandboxes,
            warm_claims,
        }
    }
}

impl NodeMetrics {
    /// The node's metrics and, at each scrape, what these collectors report.
    pub fn with_collectors(collectors: Vec<Box<dyn prometheus_client::collector::Collector>>) -> Self {
        let mut m = NodeMetrics::default();
        for c in collectors {
            m.registry.register_collector(c);
        }
        m
    }

    /// The OpenMetrics text, with the warm pool's size as it is now.
    pub fn encode(&self, warm: usize) -> String {
        self.sandboxes
            .get_or_create(&PhaseLabels { phase: "warm".into() })
            .set(warm as i64);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn count(family: &Family<ResultLabels, Counter>, result: &str) {
        family.get_or_create(&ResultLabels { result: result.into() }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_kubelets_names_and_the_pool() {
        let m = NodeMetrics::default();
        m.pod_start.observe(0.03);
        m.running_pods.inc();
        NodeMetrics::count(&m.warm_claims, "taken");
        let claim = VolumeLabels {
            namespace: "n".into(),
            persistentvolumeclaim: "data".into(),
        };
        let usage = VolumeUsage {
            capacity_bytes: 1000,
            used_bytes: 10,
            ..Default::default()
        };
        m.volume_stats.show(&[(claim.clone(), usage)]);
        let text = m.encode(2);
        assert!(
            text.lines()
                .any(|l| l == r#"kubelet_volume_stats_capacity_bytes{namespace="n",persistentvolumeclaim="data"} 1000"#),
            "{text}"
        );
        m.volume_stats.show(&[]);
        assert!(!m.encode(2).contains("persistentvolumeclaim=\"data\""));
        let text = m.encode(2);
        for line in [
            "kubelet_pod_start_duration_seconds_count 1",
            "kubelet_running_pods 1",
            r#"nodeless_sandboxes{phase="warm"} 2"#,
            r#"nodeless_warm_sandbox_claims_total{result="taken"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
