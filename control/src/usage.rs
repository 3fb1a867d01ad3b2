//! What the nodes measure of their pods: each node's `/metrics/resource` (kubelet's names:
//! cumulative CPU seconds and working-set bytes per container and node) taken in, the last two
//! readings kept; CPU usage is the rate between them, memory the latest working set. Served as
//! `metrics.k8s.io` by `api::resource_metrics` (`kubectl top`), read by autoscalers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One reading of a cgroup: cumulative CPU seconds and working-set bytes, at a time (ms).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    memory: u64,
    at_ms: i64,
}

/// What is known of one container, pod or node: its last two readings.
#[derive(Clone, Copy, Debug, Default)]
struct Series {
    prev: Option<Sample>,
    last: Option<Sample>,
}

impl Series {
    fn push(&mut self, s: Sample) {
        if self.last.is_some_and(|l| l.at_ms >= s.at_ms) {
            return;
        }
        self.prev = self.last;
        self.last = Some(s);
    }

    /// CPU in cores over the window, memory bytes, the window, and when: once two readings exist.
    fn usage(&self) -> Option<(f64, u64, Duration, i64)> {
        let (p, l) = (self.prev?, self.last?);
        let window = (l.at_ms - p.at_ms) as f64 / 1000.0;
        if window <= 0.0 {
            return None;
        }
        let cores = ((l.cpu_seconds - p.cpu_seconds) / window).max(0.0);
        Some((cores, l.memory, Duration::from_secs_f64(window), l.at_ms))
    }
}

/// Whose series: a container (namespace, pod, container), or a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Who {
    Container(String, String, String),
    Node(String),
}

/// One container's usage over the last window.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerUsage {
    pub name: String,
    pub cores: f64,
    pub memory: u64,
    pub window: Duration,
    pub at_ms: i64,
}

#[derive(Default, Clone)]
pub struct Usage {
    series: Arc<Mutex<HashMap<Who, Series>>>,
    /// The node each pod was last reported by (namespace, pod) → node.
    nodes_of: Arc<Mutex<HashMap<(String, String), String>>>,
}

/// One line of Prometheus text: name, labels, value, timestamp (ms).
struct Line<'a> {
    name: &'a str,
    labels: HashMap<&'a str, &'a str>,
    value: f64,
    at_ms: Option<i64>,
}

fn parse_line(line: &str) -> Option<Line<'_>> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i..]),
        None => line.split_once(' ')?,
    };
    let mut labels = HashMap::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let end = body.find('}')?;
        for pair in body[..end].split("\",") {
            let (k, v) = pair.split_once("=\"")?;
            labels.insert(k.trim_start_matches(','), v.trim_end_matches('"'));
        }
        &body[end + 1..]
    } else {
        rest
    };
    let mut f = rest.split_whitespace();
    let value = f.next()?.parse().ok()?;
    let at_ms = f.next().and_then(|t| t.parse().ok());
    Some(Line {
        name,
        labels,
        value,
        at_ms,
    })
}

impl Usage {
    /// Take in one node's `/metrics/resource` text.
    pub fn record(&self, node: &str, text: &str, now_ms: i64) {
        let mut partial: HashMap<Who, (Option<f64>, Option<u64>, i64)> = HashMap::new();
        for line in text.lines() {
            let Some(Line {
                name,
                labels,
                value,
                at_ms,
            }) = parse_line(line)
            else {
                continue;
            };
            let at = at_ms.unwrap_or(now_ms);
            let who = match name {
                "container_cpu_usage_seconds_total" | "container_memory_working_set_bytes" => Who::Container(
                    labels.get("namespace").copied().unwrap_or_default().to_string(),
                    labels.get("pod").copied().unwrap_or_default().to_string(),
                    labels.get("container").copied().unwrap_or_default().to_string(),
                ),
                "node_cpu_usage_seconds_total" | "node_memory_working_set_bytes" => Who::Node(node.to_string()),
                _ => continue,
            };
            let e = partial.entry(who).or_insert((None, None, at));
            if name.ends_with("cpu_usage_seconds_total") {
                e.0 = Some(value);
            } else {
                e.1 = Some(value as u64);
            }
            e.2 = at;
        }
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        // A container no longer reported by its node is gone.
        series.retain(|who, _| match who {
            Who::Container(..) => partial.contains_key(who) || !self.on_node(who, node),
            Who::Node(_) => true,
        });
        for (who, (cpu, mem, at)) in partial {
            let (Some(cpu), Some(memory)) = (cpu, mem) else {
                continue;
            };
            series.entry(who.clone()).or_default().push(Sample {
                cpu_seconds: cpu,
                memory,
                at_ms: at,
            });
            if let Who::Container(ns, pod, _) = &who {
                self.nodes_of
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((ns.clone(), pod.clone()), node.to_string());
            }
        }
    }

    fn on_node(&self, who: &Who, node: &str) -> bool {
        let Who::Container(ns, pod, _) = who else {
            return false;
        };
        self.nodes_of
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.clone(), pod.clone()))
            .is_some_and(|n| n == node)
    }

    /// Each container of a pod with its usage, once two readings exist.
    pub fn pod(&self, ns: &str, pod: &str) -> Vec<ContainerUsage> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = series
            .iter()
            .filter_map(|(who, s)| match who {
                Who::Container(n, p, c) if n == ns && p == pod => {
                    s.usage().map(|(cores, memory, window, at_ms)| ContainerUsage {
                        name: c.clone(),
                        cores,
                        memory,
                        window,
                        at_ms,
                    })
                }
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A node's CPU (cores) and memory, the window and when, once two readings exist.
    pub fn node(&self, node: &str) -> Option<(f64, u64, Duration, i64)> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.get(&Who::Node(node.to_string())).and_then(Series::usage)
    }

    /// The CPU (cores) and memory (bytes) a pod uses, summed over its containers, if measured:
    /// what the HorizontalPodAutoscaler reads.
    pub fn pod_total(&self, ns: &str, pod: &str) -> Option<(f64, u64)> {
        let c = self.pod(ns, pod);
        if c.is_empty() {
            return None;
        }
        Some(c.iter().fold((0.0, 0), |(cpu, mem), x| (cpu + x.cores, mem + x.memory)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "# HELP container_cpu_usage_seconds_total x\n# TYPE container_cpu_usage_seconds_total counter\n\
container_cpu_usage_seconds_total{container=\"c\",namespace=\"ns\",pod=\"p\"} 10 1000\n\
container_memory_working_set_bytes{container=\"c\",namespace=\"ns\",pod=\"p\"} 2048 1000\n\
node_cpu_usage_seconds_total 100 1000\nnode_memory_working_set_bytes 4096 1000\n";
    const B: &str = "container_cpu_usage_seconds_total{container=\"c\",namespace=\"ns\",pod=\"p\"} 15 11000\n\
container_memory_working_set_bytes{container=\"c\",namespace=\"ns\",pod=\"p\"} 8192 11000\n\
node_cpu_usage_seconds_total 120 11000\nnode_memory_working_set_bytes 4096 11000\n";

    #[test]
    fn usage_is_the_rate_between_two_readings() {
        let u = Usage::default();
        u.record("n1", A, 0);
        assert_eq!(u.pod_total("ns", "p"), None, "one reading is no rate");
        u.record("n1", B, 0);
        let (cpu, mem) = u.pod_total("ns", "p").unwrap();
        assert!((cpu - 0.5).abs() < 1e-9, "{cpu}");
        assert_eq!(mem, 8192);
        let (node_cpu, _, w, _) = u.node("n1").unwrap();
        assert!((node_cpu - 2.0).abs() < 1e-9);
        assert_eq!(w, Duration::from_secs(10));
        // A pod its node stops reporting is forgotten.
        u.record(
            "n1",
            "node_cpu_usage_seconds_total 130 21000\nnode_memory_working_set_bytes 1 21000\n",
            0,
        );
        assert_eq!(u.pod_total("ns", "p"), None);
    }
}
