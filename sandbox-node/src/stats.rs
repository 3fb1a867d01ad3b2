//! Resource usage from the cgroups, served at the kubelet API's `/metrics/resource` with kubelet's
//! metric names (`container_cpu_usage_seconds_total`, `container_memory_working_set_bytes`, the
//! `pod_` and `node_` ones), which control's metrics API scrapes as metrics-server scrapes
//! kubelets. CPU is a cumulative counter (the scraper takes the rate); memory is the working set:
//! usage less inactive file pages, what the kernel cannot take back without swapping.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::cgroups::Layout;

/// One cgroup's usage: CPU seconds so far, working-set bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// A `key value` line of a stat file.
fn stat_field(p: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(p).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Where a cgroup `rel` (below the roots) keeps its CPU and memory accounting.
fn dirs(layout: &Layout, rel: &Path) -> (PathBuf, PathBuf) {
    match layout {
        Layout::Unified => {
            let d = Path::new("/sys/fs/cgroup").join(rel);
            (d.clone(), d)
        }
        _ => (
            Path::new("/sys/fs/cgroup/cpuacct").join(rel),
            Path::new("/sys/fs/cgroup/memory").join(rel),
        ),
    }
}

/// The usage of the cgroup `rel`, if it exists.
pub fn usage(layout: &Layout, rel: &Path) -> Option<Usage> {
    let (cpu, mem) = dirs(layout, rel);
    match layout {
        Layout::Unified => {
            let usec = stat_field(&cpu.join("cpu.stat"), "usage_usec")?;
            let current = read_u64(&mem.join("memory.current")).unwrap_or(0);
            let inactive = stat_field(&mem.join("memory.stat"), "inactive_file").unwrap_or(0);
            Some(Usage {
                cpu_seconds: usec as f64 / 1e6,
                memory_bytes: current.saturating_sub(inactive),
            })
        }
        _ => {
            let ns = read_u64(&cpu.join("cpuacct.usage"))?;
            let used = read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or(0);
            let inactive = stat_field(&mem.join("memory.stat"), "total_inactive_file").unwrap_or(0);
            Some(Usage {
                cpu_seconds: ns as f64 / 1e9,
                memory_bytes: used.saturating_sub(inactive),
            })
        }
    }
}

/// The child cgroups of `rel` (a pod's containers), by name.
fn children(layout: &Layout, rel: &Path) -> Vec<String> {
    let (cpu, _) = dirs(layout, rel);
    let mut out: Vec<String> = std::fs::read_dir(cpu)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    out.sort();
    out
}

/// The machine's: CPU seconds busy (all but idle and iowait, from `/proc/stat`), and memory in
/// use (MemTotal less MemAvailable).
pub fn node_usage() -> Usage {
    let ticks = 100.0; // USER_HZ on Linux
    let cpu_seconds = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("cpu "))?.to_string();
            let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
            // guest time is already counted in user time.
            let total: f64 = v.iter().take(8).sum();
            Some((total - idle) / ticks)
        })
        .unwrap_or(0.0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Usage {
        cpu_seconds,
        memory_bytes: kib("MemTotal:").saturating_sub(kib("MemAvailable:")) * 1024,
    }
}

/// A pod the node runs: namespace, name, uid.
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `/metrics/resource` for these pods under the cgroup `parent`, stamped `now_ms`.
pub fn resource_metrics(layout: &Layout, parent: &str, pods: &[PodRef], node: Usage, now_ms: i64) -> String {
    let mut cpu = String::new();
    let mut mem = String::new();
    let mut pod_cpu = String::new();
    let mut pod_mem = String::new();
    for p in pods {
        let rel = Path::new(parent.trim_start_matches('/')).join(&p.uid);
        let (ns, name) = (label(&p.namespace), label(&p.name));
        let mut total = Usage::default();
        let mut any = false;
        for c in children(layout, &rel) {
            let Some(u) = usage(layout, &rel.join(&c)) else {
                continue;
            };
            any = true;
            total.cpu_seconds += u.cpu_seconds;
            total.memory_bytes += u.memory_bytes;
            let c = label(&c);
            let _ = writeln!(
                cpu,
                "container_cpu_usage_seconds_total{{container=\"{c}\",namespace=\"{ns}\",pod=\"{name}\"}} {} {now_ms}",
                u.cpu_seconds
            );
            let _ = writeln!(
                mem,
                "container_memory_working_set_bytes{{container=\"{c}\",namespace=\"{ns}\",pod=\"{name}\"}} {} {now_ms}",
                u.memory_bytes
            );
        }
        if any {
            let _ = writeln!(
                pod_cpu,
                "pod_cpu_usage_seconds_total{{namespace=\"{ns}\",pod=\"{name}\"}} {} {now_ms}",
                total.cpu_seconds
            );
            let _ = writeln!(
                pod_mem,
                "pod_memory_working_set_bytes{{namespace=\"{ns}\",pod=\"{name}\"}} {} {now_ms}",
                total.memory_bytes
            );
        }
    }
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str, body: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        out.push_str(body);
    };
    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        &cpu,
    );
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        &mem,
    );
    family(
        &mut out,
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        &format!("node_cpu_usage_seconds_total {} {now_ms}\n", node.cpu_seconds),
    );
    family(
        &mut out,
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        &format!("node_memory_working_set_bytes {} {now_ms}\n", node.memory_bytes),
    );
    family(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        &pod_cpu,
    );
    family(
        &mut out,
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        &pod_mem,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_has_used_some_cpu_and_memory() {
        let u = node_usage();
        assert!(u.cpu_seconds > 0.0, "{u:?}");
        assert!(u.memory_bytes > 0, "{u:?}");
    }

    #[test]
    fn metrics_read_as_kubelets() {
        // No cgroups under a made-up parent: only the node's lines, and every family declared.
        let text = resource_metrics(
            &Layout::Legacy,
            "/nodeless/none-such",
            &[PodRef {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u".into(),
            }],
            Usage {
                cpu_seconds: 2.5,
                memory_bytes: 42,
            },
            7,
        );
        assert!(text.contains("node_cpu_usage_seconds_total 2.5 7\n"), "{text}");
        assert!(text.contains("node_memory_working_set_bytes 42 7\n"), "{text}");
        assert!(
            text.contains("# TYPE container_cpu_usage_seconds_total counter"),
            "{text}"
        );
        assert!(!text.contains("pod=\"p\""), "{text}");
    }
}
