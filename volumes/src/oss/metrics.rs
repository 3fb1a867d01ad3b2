//! The OSS mounts' counters as Prometheus metrics, for the node's `/metrics` (a collector read
//! at scrape time from the mounts' records, so mounts made before a restart are counted too).
//!
//! `nodeless_oss_volume_{operations,errors,read_bytes,written_bytes,requests,request_errors,
//! downloaded_bytes,uploaded_bytes}_total` and `nodeless_oss_volume_up`, by `volume` (the
//! volume handle) and `target` (where it is mounted for its pod).

use std::path::PathBuf;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::mount::{MountState, Stats, mounts};

/// Reads the records under an OSS driver's state directory.
#[derive(Debug)]
pub struct OssCollector {
    pub state_dir: PathBuf,
}

type Field = fn(&Stats) -> u64;

const COUNTERS: [(&str, &str, Field); 8] = [
    (
        "nodeless_oss_volume_operations",
        "File system calls on the mount",
        |s| s.operations,
    ),
    (
        "nodeless_oss_volume_errors",
        "File system calls on the mount that failed",
        |s| s.errors,
    ),
    ("nodeless_oss_volume_read_bytes", "Bytes read from the mount", |s| {
        s.bytes_read
    }),
    ("nodeless_oss_volume_written_bytes", "Bytes written to the mount", |s| {
        s.bytes_written
    }),
    ("nodeless_oss_volume_requests", "Requests to the object storage", |s| {
        s.requests
    }),
    (
        "nodeless_oss_volume_request_errors",
        "Requests to the object storage that failed",
        |s| s.request_errors,
    ),
    (
        "nodeless_oss_volume_downloaded_bytes",
        "Bytes downloaded from the object storage",
        |s| s.bytes_downloaded,
    ),
    (
        "nodeless_oss_volume_uploaded_bytes",
        "Bytes uploaded to the object storage",
        |s| s.bytes_uploaded,
    ),
];

impl Collector for OssCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let all: Vec<MountState> = mounts(&self.state_dir);
        let labels = |m: &MountState| [("volume", m.volume.clone()), ("target", m.target.display().to_string())];
        for (name, help, field) in COUNTERS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for m in &all {
                ConstCounter::new(field(&m.stats)).encode(metric.encode_family(&labels(m))?)?;
            }
        }
        let mut up = encoder.encode_descriptor(
            "nodeless_oss_volume_up",
            "Whether the process serving the mount runs (1) or is gone (0)",
            None,
            MetricType::Gauge,
        )?;
        for m in &all {
            ConstGauge::new(m.alive as i64).encode(up.encode_family(&labels(m))?)?;
        }
        Ok(())
    }
}
