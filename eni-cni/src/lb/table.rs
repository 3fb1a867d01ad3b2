//! The load balancer's table, built from Services and EndpointSlices the way kube-proxy reads
//! them: every port of every Service with a ClusterIP maps to the ready endpoints of the slices
//! labelled with the Service's name, at the port of the same name in those slices.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nodeless_watch::{SlicesByService, port_endpoints};

/// Kubernetes' default for `sessionAffinityConfig.clientIP.timeoutSeconds`: three hours.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IPPROTO_ number the programs key on.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }

    fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// One service port: what a client connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

/// One endpoint of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Sorted, without duplicates, so that equal sets compare equal.
    pub backends: Vec<Backend>,
    /// ClientIP affinity timeout in seconds; 0 for none.
    pub affinity: u32,
}

pub type Table = BTreeMap<Frontend, Entry>;

/// The table for these objects. Services without an IPv4 ClusterIP (headless, ExternalName)
/// and ports of other protocols (SCTP) are left out; a service port with no ready endpoint is
/// kept with none, so that connecting to it is refused rather than routed elsewhere.
pub fn build(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Table {
    let slices = SlicesByService::new(slices);
    let mut table = Table::new();
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let addrs: BTreeSet<Ipv4Addr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|s| s.parse().ok())
            .collect();
        if addrs.is_empty() {
            continue;
        }
        let affinity = if spec.session_affinity.as_deref() == Some("ClientIP") {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        } else {
            0
        };
        // The programs balance IPv4 only.
        let ipv4: Vec<&EndpointSlice> = slices
            .get(ns, name)
            .iter()
            .copied()
            .filter(|s| s.address_type == "IPv4")
            .collect();
        for port in spec.ports.iter().flatten() {
            let (Ok(number), Some(proto)) = (u16::try_from(port.port), Proto::parse(port.protocol.as_deref())) else {
                continue;
            };
            // The ready endpoints, or the serving-and-terminating ones when none is ready (as
            // kube-proxy does).
            let found = port_endpoints(&ipv4, port);
            let ready = as_backends(&found.ready);
            let backends = if ready.is_empty() {
                as_backends(&found.terminating)
            } else {
                ready
            };
            for addr in &addrs {
                table.insert(
                    Frontend {
                        addr: *addr,
                        port: number,
                        proto,
                    },
                    Entry {
                        backends: backends.clone(),
                        affinity,
                    },
                );
            }
        }
    }
    table
}

/// The IPv4 ones of a port's endpoints, as backends (sorted, each once, as they came).
fn as_backends(endpoints: &[SocketAddr]) -> Vec<Backend> {
    endpoints
        .iter()
        .filter_map(|e| match e {
            SocketAddr::V4(a) => Some(Backend {
                addr: *a.ip(),
                port: a.port(),
            }),
            SocketAddr::V6(_) => None,
        })
        .collect()
}

/// One row of a table file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRow {
    address: Ipv4Addr,
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    endpoints: Vec<std::net::SocketAddrV4>,
    #[serde(default)]
    affinity: u32,
}

/// A table from a JSON file: `[{"address", "port", "protocol" ("TCP" or "UDP"), "endpoints":
/// ["ip:port", …], "affinity": seconds}]`. Errors name the row and field.
pub fn read_file(path: &std::path::Path) -> anyhow::Result<Table> {
    let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    parse_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn parse_file(text: &[u8]) -> Result<Table, String> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    let rows: Vec<FileRow> =
        serde_path_to_error::deserialize(de).map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let mut table = Table::new();
    for (i, r) in rows.into_iter().enumerate() {
        let proto = Proto::parse(r.protocol.as_deref()).ok_or_else(|| {
            format!(
                "[{i}].protocol: {:?} is neither TCP nor UDP",
                r.protocol.unwrap_or_default()
            )
        })?;
        let f = Frontend {
            addr: r.address,
            port: r.port,
            proto,
        };
        let backends: BTreeSet<Backend> = r
            .endpoints
            .iter()
            .map(|e| Backend {
                addr: *e.ip(),
                port: e.port(),
            })
            .collect();
        if table
            .insert(
                f,
                Entry {
                    backends: backends.into_iter().collect(),
                    affinity: r.affinity,
                },
            )
            .is_some()
        {
            return Err(format!("[{i}]: {}:{}/{proto} is listed twice", f.addr, f.port));
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeless_types::keys;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap())
    }
    fn slice(v: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(v).unwrap())
    }
    fn fe(a: &str, port: u16, proto: Proto) -> Frontend {
        Frontend {
            addr: a.parse().unwrap(),
            port,
            proto,
        }
    }
    fn be(a: &str, port: u16) -> Backend {
        Backend {
            addr: a.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn ports_map_by_name_to_ready_endpoints() {
        let services = vec![svc(json!({
            "metadata": {"name": "web", "namespace": "a"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ]}
        }))];
        let slices = vec![
            slice(json!({
                "metadata": {"name": "web-1", "namespace": "a", "labels": {keys::SERVICE_NAME: "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
                "endpoints": [
                    {"addresses": ["10.66.0.3"], "conditions": {"ready": true}},
                    {"addresses": ["10.66.0.2"]},
                    {"addresses": ["10.66.0.9"], "conditions": {"ready": false}}
                ]
            })),
            // Another slice of the same service adds endpoints; one in another namespace does not.
            slice(json!({
                "metadata": {"name": "web-2", "namespace": "a", "labels": {keys::SERVICE_NAME: "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.66.0.4"]}, {"addresses": ["10.66.0.3"]}]
            })),
            slice(json!({
                "metadata": {"name": "web-x", "namespace": "b", "labels": {keys::SERVICE_NAME: "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.66.0.7"]}]
            })),
        ];
        let t = build(&services, &slices);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[&fe("10.96.0.10", 80, Proto::Tcp)].backends,
            vec![be("10.66.0.2", 8080), be("10.66.0.3", 8080), be("10.66.0.4", 8080)]
        );
        assert_eq!(
            t[&fe("10.96.0.10", 53, Proto::Udp)].backends,
            vec![be("10.66.0.2", 5353), be("10.66.0.3", 5353)]
        );
        assert_eq!(t[&fe("10.96.0.10", 80, Proto::Tcp)].affinity, 0);
    }

    #[test]
    fn headless_external_and_sctp_are_left_out_and_empty_services_kept() {
        let services = vec![
            svc(
                json!({"metadata": {"name": "h", "namespace": "a"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
            ),
            svc(
                json!({"metadata": {"name": "x", "namespace": "a"}, "spec": {"type": "ExternalName", "externalName": "example.com"}}),
            ),
            svc(
                json!({"metadata": {"name": "s", "namespace": "a"}, "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 9, "protocol": "SCTP"}, {"port": 81}]}}),
            ),
        ];
        let t = build(&services, &[]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[&fe("10.96.0.5", 81, Proto::Tcp)], Entry::default());
    }

    #[test]
    fn table_files_parse_and_bad_ones_name_the_field() {
        let t = parse_file(br#"[{"address": "10.96.0.1", "port": 53, "protocol": "UDP", "endpoints": ["10.66.0.2:5353"], "affinity": 5}]"#).unwrap();
        assert_eq!(
            t[&fe("10.96.0.1", 53, Proto::Udp)],
            Entry {
                backends: vec![be("10.66.0.2", 5353)],
                affinity: 5
            }
        );
        let e = parse_file(br#"[{"address": "10.96.0.1", "port": 70000}]"#).unwrap_err();
        assert!(e.starts_with("[0].port"), "{e}");
        let e = parse_file(br#"[{"address": "10.96.0.1", "port": 7, "protocol": "SCTP"}]"#).unwrap_err();
        assert!(e.contains("[0].protocol"), "{e}");
        let e =
            parse_file(br#"[{"address": "10.96.0.1", "port": 7}, {"address": "10.96.0.1", "port": 7}]"#).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn client_ip_affinity_and_terminating_fallback() {
        let services = vec![
            svc(
                json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"clusterIP": "10.96.0.6", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}}),
            ),
            svc(
                json!({"metadata": {"name": "b", "namespace": "n"}, "spec": {"clusterIP": "10.96.0.7", "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}, "ports": [{"port": 80}]}}),
            ),
        ];
        let slices = vec![slice(json!({
            "metadata": {"name": "a-1", "namespace": "n", "labels": {keys::SERVICE_NAME: "a"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [
                {"addresses": ["10.66.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.66.0.3"], "conditions": {"ready": false, "serving": false, "terminating": true}}
            ]
        }))];
        let t = build(&services, &slices);
        assert_eq!(
            t[&fe("10.96.0.6", 80, Proto::Tcp)],
            Entry {
                backends: vec![be("10.66.0.2", 8080)],
                affinity: DEFAULT_AFFINITY_SECONDS
            }
        );
        assert_eq!(t[&fe("10.96.0.7", 80, Proto::Tcp)].affinity, 60);
    }
}
