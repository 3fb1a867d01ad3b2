//! The FUSE mounts' counters as Prometheus metrics, for the node's `/metrics` (a collector read
//! at scrape time from the mounts' records, so mounts made before a restart are counted too).
//!
//! `nodeless_fuse_volume_{operations,errors,read_bytes,written_bytes,requests,request_errors,
//! downloaded_bytes,uploaded_bytes}_total` and `nodeless_fuse_volume_up`, by `driver`,
//! `volume` (the volume handle) and `target` (where it is mounted for its pod).

use std::path::PathBuf;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{MountState, Stats, mounts};

/// Reads the records under the drivers' state directories: (driver name, directory).
#[derive(Debug)]
pub struct FuseCollector {
    pub drivers: Vec<(String, PathBuf)>,
}

type Field = fn(&Stats) -> u64;

const COUNTERS: [(&str, &str, Field); 8] = [
    (
        "nodeless_fuse_volume_operations",
        "File system calls on the mount",
        |s| s.operations,
    ),
    (
        "nodeless_fuse_volume_errors",
        "File system calls on the mount that failed",
        |s| s.errors,
    ),
    ("nodeless_fuse_volume_read_bytes", "Bytes read from the mount", |s| {
        s.bytes_read
    }),
    (
        "nodeless_fuse_volume_written_bytes",
        "Bytes written to the mount",
        |s| s.bytes_written,
    ),
    ("nodeless_fuse_volume_requests", "Requests to the server", |s| {
        s.requests
    }),
    (
        "nodeless_fuse_volume_request_errors",
        "Requests to the server that failed",
        |s| s.request_errors,
    ),
    (
        "nodeless_fuse_volume_downloaded_bytes",
        "Bytes downloaded from the server",
        |s| s.bytes_downloaded,
    ),
    (
        "nodeless_fuse_volume_uploaded_bytes",
        "Bytes uploaded to the server",
        |s| s.bytes_uploaded,
    ),
];

impl Collector for FuseCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let all: Vec<(String, MountState)> = self
            .drivers
            .iter()
            .flat_map(|(d, dir)| mounts(dir).into_iter().map(move |m| (d.clone(), m)))
            .collect();
        let labels = |(d, m): &(String, MountState)| {
            [
                ("driver", d.clone()),
                ("volume", m.volume.clone()),
                ("target", m.target.display().to_string()),
            ]
        };
        for (name, help, field) in COUNTERS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for m in &all {
                ConstCounter::new(field(&m.1.stats)).encode(metric.encode_family(&labels(m))?)?;
            }
        }
        let mut up = encoder.encode_descriptor(
            "nodeless_fuse_volume_up",
            "Whether the process serving the mount runs (1) or is gone (0)",
            None,
            MetricType::Gauge,
        )?;
        for m in &all {
            ConstGauge::new(m.1.alive as i64).encode(up.encode_family(&labels(m))?)?;
        }
        Ok(())
    }
}
