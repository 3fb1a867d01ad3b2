//! The pod network's Prometheus metrics, collected at each scrape of the node's `/metrics`
//! (the node registers [`NetworkCollector`] beside its own metrics):
//!
//! - `nodeless_eni_pool_addresses{state}`: addresses allocated to pods (`in_use`) and assigned
//!   to the node but idle, ready for the next pod (`warm`); `nodeless_eni_pool_capacity`: what
//!   the pod CIDRs hold. Cilium's `cilium_ipam_capacity` and `cilium_ip_addresses` say the same.
//! - `nodeless_eni_datapath_drops_total{reason}`: packets the eBPF datapath dropped, by reason
//!   (`spoofed`: a source address not the pod's own; `node`: to the node's addresses, walled
//!   off; `link-local`: to 169.254.0.0/16; `malformed`; `redirect`: the redirect failed) — as
//!   `cilium_drop_count_total{reason}`; `nodeless_eni_datapath_packets_total{result}`: the
//!   rest of what happened to packets (`redirected` to a pod, `passed` to the stack, the doors
//!   into the node that stay open…) and to accelerated sockets, as
//!   `cilium_forward_count_total`.
//! - `nodeless_eni_service_socket_calls_total{result}`: the service load balancer's socket
//!   calls (`translated` to an endpoint, `no-endpoint`: refused, `reversed` replies…).
//!
//! Every counter comes from the per-CPU maps pinned for the network; they start from zero when
//! the network's first pod loads the datapath again, which Prometheus reads as a reset.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::pool::PoolGauges;

#[derive(Debug)]
pub struct NetworkCollector {
    pub pool: Arc<PoolGauges>,
    /// Addresses the pod CIDRs hold.
    pub capacity: usize,
    pub datapath: crate::bpf::Pins,
    pub services: Option<crate::lb::Pins>,
}

/// The datapath's counter names (`bpf::STATS`) split into drop reasons and other results.
fn drop_reason(name: &str) -> Option<&str> {
    name.strip_prefix("drop-")
}

/// One family of gauges or counters, one label, with values as given.
fn family<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &str,
    rows: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, n) in rows {
        let labels = [(label, value)];
        let row = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(n).encode(row)?,
            _ => ConstGauge::new(n as i64).encode(row)?,
        }
    }
    Ok(())
}

impl Collector for NetworkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        family(
            &mut encoder,
            "nodeless_eni_pool_addresses",
            "Pod addresses by state: in_use (allocated to a pod) or warm (assigned to the node, idle)",
            MetricType::Gauge,
            "state",
            [
                ("in_use", self.pool.in_use.load(Ordering::Relaxed) as u64),
                ("warm", self.pool.warm.load(Ordering::Relaxed) as u64),
            ],
        )?;
        let capacity = ConstGauge::new(self.capacity as i64);
        capacity.encode(encoder.encode_descriptor(
            "nodeless_eni_pool_capacity",
            "Addresses the pod CIDRs hold for pods",
            None,
            MetricType::Gauge,
        )?)?;
        // A map that cannot be read is left out of the scrape (and said in the log) rather than
        // reported as zeros, which would read as a counter reset.
        let packets = match self.datapath.counters() {
            Ok(c) => Some(c.unwrap_or_else(|| crate::bpf::STATS.iter().map(|n| (*n, 0)).collect())),
            Err(e) => {
                tracing::warn!(error = %e, "reading the datapath's counters");
                None
            }
        };
        if let Some(packets) = packets {
            family(
                &mut encoder,
                "nodeless_eni_datapath_drops",
                "Packets from pods the eBPF datapath dropped, by reason",
                MetricType::Counter,
                "reason",
                packets.iter().filter_map(|(n, v)| drop_reason(n).map(|r| (r, *v))),
            )?;
            family(
                &mut encoder,
                "nodeless_eni_datapath_packets",
                "What the eBPF datapath did with pods' packets and sockets, drops aside",
                MetricType::Counter,
                "result",
                packets
                    .iter()
                    .filter(|(n, _)| drop_reason(n).is_none())
                    .map(|(n, v)| (*n, *v)),
            )?;
        }
        if let Some(lb) = &self.services {
            match lb.counters() {
                Ok(c) => family(
                    &mut encoder,
                    "nodeless_eni_service_socket_calls",
                    "Pods' socket calls the service load balancer saw, by result",
                    MetricType::Counter,
                    "result",
                    c.unwrap_or_else(|| crate::lb::STATS.iter().map(|n| (*n, 0)).collect()),
                )?,
                Err(e) => tracing::warn!(error = %e, "reading the service load balancer's counters"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_splits_drops_from_other_results() {
        let pool = Arc::new(PoolGauges::default());
        pool.in_use.store(3, Ordering::Relaxed);
        pool.warm.store(8, Ordering::Relaxed);
        let name = format!("metrics-test-{}", std::process::id());
        let c = NetworkCollector {
            pool,
            capacity: 253,
            // Nothing pinned under this name: the counters read as zeros.
            datapath: crate::bpf::Pins::for_network(&name),
            services: None,
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(c));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"nodeless_eni_pool_addresses{state="in_use"} 3"#,
            r#"nodeless_eni_pool_addresses{state="warm"} 8"#,
            "nodeless_eni_pool_capacity 253",
            r#"nodeless_eni_datapath_drops_total{reason="spoofed"} 0"#,
            r#"nodeless_eni_datapath_drops_total{reason="link-local"} 0"#,
            r#"nodeless_eni_datapath_packets_total{result="redirected"} 0"#,
            "# TYPE nodeless_eni_datapath_drops counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains(r#"result="drop-"#),
            "drops are counted once, by reason:\n{text}"
        );
    }

    #[test]
    fn capacity_leaves_out_the_gateway() {
        let p = crate::pool::LocalProvider::new(vec!["10.1.0.0/24".parse().unwrap(), "10.2.0.0/30".parse().unwrap()]);
        // 254 hosts - the gateway, and 2 - the gateway.
        assert_eq!(p.size(), 253 + 1);
    }
}
