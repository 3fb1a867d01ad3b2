//! The cluster zone by the Kubernetes DNS specification, schema 1.0.1
//! (kubernetes/dns docs/specification.md), built from Services and EndpointSlices:
//!
//! - `dns-version.<zone>` TXT `1.0.1`;
//! - a ClusterIP Service: A/AAAA `<svc>.<ns>.svc.<zone>` with its cluster IPs, SRV
//!   `_<port>._<proto>.<svc>.<ns>.svc.<zone>` per named port, PTR for each cluster IP;
//! - a headless Service: an A/AAAA per ready endpoint (the name does not exist while none is
//!   ready), `<hostname>.<svc>.<ns>.svc.<zone>` per endpoint (its hostname, else its address
//!   with dashes), SRV per endpoint and named port, PTR for endpoints with a hostname;
//! - an ExternalName Service: CNAME to its external name.
//!
//! Pod names (`a-b-c-d.<ns>.pod.<zone>`) are answered from the name itself ([`pod_address`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use hickory_server::proto::rr::{LowerName, Name, RData, Record, rdata};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nodeless_watch::{Conditions, SlicesByService};

use crate::table::Zone;

pub const SCHEMA_VERSION: &str = "1.0.1";

/// The cluster zone and the reverse records of the cluster's addresses.
#[derive(Debug)]
pub struct ClusterZone {
    pub zone: Zone,
    pub ptr: HashMap<LowerName, Vec<Record>>,
}

fn name(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n)
}

fn address_record(owner: &Name, ttl: u32, ip: IpAddr) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::from(ip))
}

/// `10.0.0.1` → `10-0-0-1`; `fd00::1` → `fd00--1` (the spec's form for endpoints without a hostname).
pub fn dashed(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address in a pod name's first label (`10-0-0-1` or `fd00--1`), if it is one.
pub fn pod_address(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        if let Ok(ip) = label.replace('-', ".").parse::<std::net::Ipv4Addr>() {
            return Some(IpAddr::V4(ip));
        }
    }
    label
        .replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// One endpoint as DNS sees it.
struct Endpoint {
    ip: IpAddr,
    hostname: Option<String>,
}

/// Build the zone `origin` from the objects. `serial` goes into the SOA.
pub fn build(
    origin: &Name,
    ttl: u32,
    serial: u32,
    services: &[std::sync::Arc<Service>],
    slices: &[std::sync::Arc<EndpointSlice>],
) -> ClusterZone {
    let mut zone = Zone::new(origin, ttl, serial);
    let mut ptr: HashMap<LowerName, Vec<Record>> = HashMap::new();
    let mut add_ptr = |ip: IpAddr, target: &Name| {
        let owner = LowerName::from(Name::from(ip));
        let rec = Record::from_rdata(Name::from(ip), ttl, RData::PTR(rdata::PTR(target.clone())));
        let set = ptr.entry(owner).or_default();
        if !set.iter().any(|r| r.data == rec.data) {
            set.push(rec);
        }
    };
    if let Some(owner) = name("dns-version").and_then(|n| n.append_domain(origin).ok()) {
        zone.add(Record::from_rdata(
            owner,
            ttl,
            RData::TXT(rdata::TXT::new(vec![SCHEMA_VERSION.to_string()])),
        ));
    }

    let slices = SlicesByService::new(slices);

    for svc in services {
        let (Some(ns), Some(svc_name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        let Some(owner) = name(&format!("{svc_name}.{ns}.svc")).and_then(|n| n.append_domain(origin).ok()) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec.external_name.as_deref().and_then(name) {
                zone.add(Record::from_rdata(owner, ttl, RData::CNAME(rdata::CNAME(target))));
            }
            continue;
        }
        let ports: Vec<(String, String, u16)> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone().filter(|n| !n.is_empty())?,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()).to_lowercase(),
                    u16::try_from(p.port).ok()?,
                ))
            })
            .collect();
        let srv_owner =
            |port: &str, proto: &str| name(&format!("_{port}._{proto}")).and_then(|n| n.append_domain(&owner).ok());
        let headless = spec.cluster_ip.as_deref() == Some("None");
        if !headless {
            let ips: Vec<IpAddr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|s| s.parse().ok())
                .collect();
            if ips.is_empty() {
                continue;
            }
            for ip in &ips {
                zone.add(address_record(&owner, ttl, *ip));
                add_ptr(*ip, &owner);
            }
            for (port, proto, number) in &ports {
                if let Some(o) = srv_owner(port, proto) {
                    zone.add(Record::from_rdata(
                        o,
                        ttl,
                        RData::SRV(rdata::SRV::new(0, 100, *number, owner.clone())),
                    ));
                }
            }
            continue;
        }
        let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
        // Every address of every slice of the service, whatever its family or port.
        let svc_slices = slices.get(ns, svc_name);
        let eps: Vec<Endpoint> = svc_slices
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|ep| publish_not_ready || Conditions::of(ep).ready)
            .flat_map(|ep| {
                ep.addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| Endpoint {
                        ip,
                        hostname: ep.hostname.clone(),
                    })
            })
            .collect();
        if eps.is_empty() {
            continue;
        }
        let weight = (100 / eps.len()).max(1) as u16;
        for ep in eps {
            zone.add(address_record(&owner, ttl, ep.ip));
            let label = ep.hostname.clone().unwrap_or_else(|| dashed(&ep.ip));
            let Some(host) = name(&label).and_then(|n| n.append_domain(&owner).ok()) else {
                continue;
            };
            zone.add(address_record(&host, ttl, ep.ip));
            if ep.hostname.is_some() {
                add_ptr(ep.ip, &host);
            }
            for (port, proto, _) in &ports {
                // The endpoint's port of that name (a headless Service has no port mapping).
                if let (Some(o), Some(number)) = (
                    srv_owner(port, proto),
                    endpoint_port(svc_slices, port).or_else(|| ports.iter().find(|p| &p.0 == port).map(|p| p.2)),
                ) {
                    zone.add(Record::from_rdata(
                        o,
                        ttl,
                        RData::SRV(rdata::SRV::new(0, weight, number, host.clone())),
                    ));
                }
            }
        }
    }
    ClusterZone { zone, ptr }
}

/// The port number a Service's EndpointSlices give a named port.
fn endpoint_port(slices: &[&EndpointSlice], port: &str) -> Option<u16> {
    slices
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(port))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
}

/// The cluster zone's name from a domain such as `cluster.local`.
pub fn origin(domain: &str) -> anyhow::Result<Name> {
    let mut n =
        Name::from_str(domain.trim_end_matches('.')).map_err(|e| anyhow::anyhow!("cluster domain {domain:?}: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Answer;
    use hickory_server::proto::rr::RecordType;
    use nodeless_types::keys;
    use serde_json::json;
    use std::sync::Arc;

    fn svc(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn fixture() -> ClusterZone {
        let services = vec![
            svc(
                json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [{"name": "http", "port": 80}, {"port": 81}]}}),
            ),
            svc(
                json!({"metadata": {"name": "db", "namespace": "prod"}, "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            ),
            svc(json!({"metadata": {"name": "empty", "namespace": "prod"}, "spec": {"clusterIP": "None"}})),
            svc(
                json!({"metadata": {"name": "ext", "namespace": "default"}, "spec": {"type": "ExternalName", "externalName": "example.com"}}),
            ),
        ];
        let slices: Vec<Arc<EndpointSlice>> = vec![Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "db-1", "namespace": "prod", "labels": {keys::SERVICE_NAME: "db"}},
                "addressType": "IPv4", "ports": [{"name": "pg", "port": 5433}],
                "endpoints": [
                    {"addresses": ["10.1.0.1"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.1.0.2"], "conditions": {}},
                    {"addresses": ["10.1.0.3"], "conditions": {"ready": false}}]}),
            )
            .unwrap(),
        )];
        build(&origin("cluster.local").unwrap(), 5, 1, &services, &slices)
    }

    fn ask(z: &ClusterZone, q: &str, t: RecordType) -> Vec<String> {
        match z.zone.lookup(&LowerName::from(Name::from_str(q).unwrap()), t) {
            Answer::Records(r) => {
                let mut v: Vec<String> = r.iter().map(|r| r.data.to_string()).collect();
                v.sort();
                v
            }
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn services_follow_the_spec() {
        let z = fixture();
        assert_eq!(ask(&z, "dns-version.cluster.local.", RecordType::TXT), vec!["1.0.1"]);
        assert_eq!(
            ask(&z, "web.default.svc.cluster.local.", RecordType::A),
            vec!["10.96.0.20"]
        );
        assert_eq!(
            ask(&z, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            vec!["0 100 80 web.default.svc.cluster.local."]
        );
        // The unnamed port has no SRV record.
        assert_eq!(
            ask(&z, "web.default.svc.cluster.local.", RecordType::SRV),
            vec!["NoData"]
        );
        // Headless: ready endpoints only; a hostname or the dashed address.
        assert_eq!(
            ask(&z, "db.prod.svc.cluster.local.", RecordType::A),
            vec!["10.1.0.1", "10.1.0.2"]
        );
        assert_eq!(
            ask(&z, "db-0.db.prod.svc.cluster.local.", RecordType::A),
            vec!["10.1.0.1"]
        );
        assert_eq!(
            ask(&z, "10-1-0-2.db.prod.svc.cluster.local.", RecordType::A),
            vec!["10.1.0.2"]
        );
        assert_eq!(
            ask(&z, "10-1-0-3.db.prod.svc.cluster.local.", RecordType::A),
            vec!["NxDomain"]
        );
        assert_eq!(
            ask(&z, "_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV),
            vec![
                "0 50 5433 10-1-0-2.db.prod.svc.cluster.local.",
                "0 50 5433 db-0.db.prod.svc.cluster.local."
            ]
        );
        assert_eq!(
            ask(&z, "empty.prod.svc.cluster.local.", RecordType::A),
            vec!["NxDomain"]
        );
        assert_eq!(
            ask(&z, "ext.default.svc.cluster.local.", RecordType::A),
            vec!["example.com."]
        );
        let ptr = |ip: &str| {
            z.ptr
                .get(&LowerName::from(Name::from(ip.parse::<IpAddr>().unwrap())))
                .map(|r| r[0].data.to_string())
        };
        assert_eq!(ptr("10.96.0.20").as_deref(), Some("web.default.svc.cluster.local."));
        assert_eq!(ptr("10.1.0.1").as_deref(), Some("db-0.db.prod.svc.cluster.local."));
        assert_eq!(ptr("10.1.0.2"), None);
    }

    #[test]
    fn pod_names_carry_their_address() {
        assert_eq!(pod_address("10-0-0-1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(pod_address("fd00--1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(pod_address("web"), None);
        assert_eq!(pod_address("10-0-0"), None);
    }
}
