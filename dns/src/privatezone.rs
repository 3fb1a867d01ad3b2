//! PrivateZone views: each zone answers only clients in the networks it is bound to. For a
//! question, the zones bound to the asker's network whose name ends the question's name are
//! candidates and the longest (most specific) wins, so a sub-zone overrides its parent and two
//! networks can hold one zone name with different records.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, rdata};
use nodeless_types::privatezone::{PrivateZone, RecordKind, ZoneRecord};
use rand::Rng;

use crate::forward::{ForwardConfig, Forwarder};
use crate::table::{Answer, Zone};

/// A network as a CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR"))?;
        let addr: IpAddr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(Network { addr, prefix })
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u32) {
            match ip {
                IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ip = match ip {
            IpAddr::V6(v) => v.to_ipv4_mapped().map_or(IpAddr::V6(v), IpAddr::V4),
            v4 => v4,
        };
        let ((a, width), (b, width_b)) = (bits(self.addr), bits(ip));
        if width != width_b {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        shift >= width || (a >> shift) == (b >> shift)
    }
}

/// One PrivateZone, ready to answer.
pub struct View {
    pub name: String,
    networks: Vec<Network>,
    pub zone: Zone,
    /// Weighted record sets: (record, weight) per owner and type.
    weighted: HashMap<(LowerName, RecordType), Vec<(Record, u8)>>,
    pub forward: Option<Forwarder>,
}

pub enum ViewAnswer {
    /// Authoritative records (already weighted) or a negative answer with the zone's SOA.
    Records(Vec<Record>),
    NoData(Record),
    NxDomain(Record),
    /// The zone forwards: ask these upstreams.
    Forward(Forwarder),
}

impl View {
    pub fn answer(&self, name: &LowerName, qtype: RecordType) -> ViewAnswer {
        if let Some(f) = &self.forward {
            return ViewAnswer::Forward(f.clone());
        }
        match self.zone.lookup(name, qtype) {
            Answer::NxDomain => ViewAnswer::NxDomain(self.zone.soa().clone()),
            Answer::NoData => ViewAnswer::NoData(self.zone.soa().clone()),
            Answer::Records(records) => {
                let kind = records.first().map_or(qtype, Record::record_type);
                match self.weighted.get(&(name.clone(), kind)) {
                    Some(choices) => pick(choices).into_iter().collect(),
                    None => records.to_vec(),
                }
                .into()
            }
        }
    }
}

impl From<Vec<Record>> for ViewAnswer {
    fn from(v: Vec<Record>) -> Self {
        ViewAnswer::Records(v)
    }
}

/// One record, in proportion to the weights; weight 0 never.
fn pick(choices: &[(Record, u8)]) -> Option<Record> {
    let total: u32 = choices.iter().map(|c| u32::from(c.1)).sum();
    if total == 0 {
        return None;
    }
    let mut roll = rand::thread_rng().gen_range(0..total);
    for (r, w) in choices {
        if roll < u32::from(*w) {
            return Some(r.clone());
        }
        roll -= u32::from(*w);
    }
    None
}

/// All PrivateZones, as the server consults them.
#[derive(Default)]
pub struct Views {
    views: Vec<Arc<View>>,
}

impl Views {
    /// The most specific zone bound to the client's network that holds `name`.
    pub fn find(&self, client: IpAddr, name: &LowerName) -> Option<&Arc<View>> {
        self.views
            .iter()
            .filter(|v| v.zone.contains(name) && v.networks.iter().any(|n| n.contains(client)))
            .max_by_key(|v| v.zone.origin().num_labels())
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// Whether any zone is bound to a network holding the client.
    pub fn binds(&self, client: IpAddr) -> bool {
        self.views.iter().any(|v| v.networks.iter().any(|n| n.contains(client)))
    }

    /// Build from the objects; a bad object or record is left out and reported.
    pub fn build(objects: &[Arc<PrivateZone>], forward_defaults: &ForwardConfig) -> (Views, Vec<String>) {
        let mut views = Vec::new();
        let mut problems = Vec::new();
        for pz in objects {
            let name = pz.metadata.name.clone().unwrap_or_default();
            match build_view(pz, forward_defaults) {
                Ok((view, mut bad)) => {
                    problems.append(&mut bad);
                    views.push(Arc::new(view));
                }
                Err(e) => problems.push(format!("privatezone {name}: {e}")),
            }
        }
        (Views { views }, problems)
    }
}

fn parse_name(s: &str, origin: &Name) -> Result<Name, String> {
    if s == "@" || s.is_empty() {
        return Ok(origin.clone());
    }
    let n = Name::from_ascii(s).map_err(|e| format!("{s:?}: {e}"))?;
    if s.ends_with('.') {
        Ok(n)
    } else {
        n.append_domain(origin).map_err(|e| format!("{s:?}: {e}"))
    }
}

fn rdata(kind: RecordKind, value: &str, origin: &Name) -> Result<RData, String> {
    let bad = |what: &str| format!("{value:?} is not {what}");
    let words: Vec<&str> = value.split_whitespace().collect();
    Ok(match kind {
        RecordKind::A => RData::A(rdata::A(value.parse().map_err(|_| bad("an IPv4 address"))?)),
        RecordKind::AAAA => RData::AAAA(rdata::AAAA(value.parse().map_err(|_| bad("an IPv6 address"))?)),
        RecordKind::CNAME => RData::CNAME(rdata::CNAME(parse_name(value, origin)?)),
        RecordKind::PTR => RData::PTR(rdata::PTR(parse_name(value, origin)?)),
        RecordKind::TXT => RData::TXT(rdata::TXT::new(
            value
                .as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect(),
        )),
        RecordKind::MX => match words.as_slice() {
            [pref, host] => RData::MX(rdata::MX::new(
                pref.parse().map_err(|_| bad("`<preference> <host>`"))?,
                parse_name(host, origin)?,
            )),
            _ => return Err(bad("`<preference> <host>`")),
        },
        RecordKind::SRV => match words.as_slice() {
            [prio, weight, port, target] => RData::SRV(rdata::SRV::new(
                prio.parse().map_err(|_| bad("`<priority> <weight> <port> <target>`"))?,
                weight
                    .parse()
                    .map_err(|_| bad("`<priority> <weight> <port> <target>`"))?,
                port.parse().map_err(|_| bad("`<priority> <weight> <port> <target>`"))?,
                parse_name(target, origin)?,
            )),
            _ => return Err(bad("`<priority> <weight> <port> <target>`")),
        },
    })
}

fn add_record(
    zone: &mut Zone,
    weighted: &mut HashMap<(LowerName, RecordType), Vec<(Record, u8)>>,
    r: &ZoneRecord,
    origin: &Name,
    ttl: u32,
) -> Result<(), String> {
    let owner = parse_name(&r.name, origin)?;
    let weights_apply = matches!(r.type_, RecordKind::A | RecordKind::AAAA | RecordKind::CNAME)
        && r.values.iter().any(|v| v.weight.is_some());
    for v in &r.values {
        let record = Record::from_rdata(owner.clone(), ttl, rdata(r.type_, &v.value, origin)?);
        if weights_apply {
            let w = v.weight.unwrap_or(1).min(100);
            weighted
                .entry((LowerName::from(&owner), record.record_type()))
                .or_default()
                .push((record.clone(), w));
        }
        zone.add(record);
    }
    Ok(())
}

fn build_view(pz: &PrivateZone, forward_defaults: &ForwardConfig) -> Result<(View, Vec<String>), String> {
    let spec = &pz.spec;
    let name = pz.metadata.name.clone().unwrap_or_default();
    let mut origin =
        Name::from_ascii(spec.zone.trim_end_matches('.')).map_err(|e| format!("zone {:?}: {e}", spec.zone))?;
    origin.set_fqdn(true);
    let networks = spec
        .networks
        .iter()
        .map(|n| n.parse::<Network>())
        .collect::<Result<Vec<_>, _>>()?;
    let ttl = spec.ttl.unwrap_or(60);
    let mut zone = Zone::new(&origin, ttl, 1);
    let mut weighted = HashMap::new();
    let mut problems = Vec::new();
    for (i, r) in spec.records.iter().enumerate() {
        if let Err(e) = add_record(&mut zone, &mut weighted, r, &origin, ttl) {
            problems.push(format!("privatezone {name}: spec.records[{i}]: {e}"));
        }
    }
    let forward = if spec.forward_to.is_empty() {
        None
    } else {
        let upstreams = spec
            .forward_to
            .iter()
            .map(|u| {
                u.parse::<SocketAddr>()
                    .or_else(|_| u.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| format!("forwardTo {u:?} is not an address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Some(Forwarder::new(ForwardConfig {
            upstreams,
            ..forward_defaults.clone()
        }))
    };
    Ok((
        View {
            name,
            networks,
            zone,
            weighted,
            forward,
        },
        problems,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pz(v: serde_json::Value) -> Arc<PrivateZone> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn ln(s: &str) -> LowerName {
        LowerName::from(Name::from_str(s).unwrap())
    }

    #[test]
    fn networks_contain_addresses() {
        let n: Network = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(
            "0.0.0.0/0"
                .parse::<Network>()
                .unwrap()
                .contains("192.0.2.1".parse().unwrap())
        );
        assert!("10.0.0.0/33".parse::<Network>().is_err());
    }

    #[tokio::test]
    async fn views_by_network_sub_zones_and_weights() {
        let objects = vec![
            pz(
                json!({"apiVersion": "network.nodeless.io/v1", "kind": "PrivateZone", "metadata": {"name": "a"},
                "spec": {"zone": "corp.example", "networks": ["10.1.0.0/16"], "records": [
                    {"name": "www", "type": "A", "values": [{"value": "192.0.2.1", "weight": 100}, {"value": "192.0.2.2", "weight": 0}]},
                    {"name": "@", "type": "MX", "values": [{"value": "10 mail"}]},
                    {"name": "bad", "type": "A", "values": [{"value": "not-an-ip"}]}]}}),
            ),
            pz(
                json!({"apiVersion": "network.nodeless.io/v1", "kind": "PrivateZone", "metadata": {"name": "b"},
                "spec": {"zone": "corp.example", "networks": ["10.2.0.0/16"], "records": [
                    {"name": "www", "type": "A", "values": [{"value": "198.51.100.1"}]}]}}),
            ),
            pz(
                json!({"apiVersion": "network.nodeless.io/v1", "kind": "PrivateZone", "metadata": {"name": "sub"},
                "spec": {"zone": "dev.corp.example", "networks": ["10.1.0.0/16"], "records": [
                    {"name": "www", "type": "A", "values": [{"value": "192.0.2.99"}]}]}}),
            ),
        ];
        let (views, problems) = Views::build(&objects, &ForwardConfig::new(vec![]));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("spec.records[2]"), "{problems:?}");
        let ask = |client: &str, q: &str| -> Vec<String> {
            match views
                .find(client.parse().unwrap(), &ln(q))
                .map(|v| v.answer(&ln(q), RecordType::A))
            {
                Some(ViewAnswer::Records(r)) => r.iter().map(|r| r.data.to_string()).collect(),
                Some(ViewAnswer::NxDomain(_)) => vec!["NXDOMAIN".into()],
                Some(ViewAnswer::NoData(_)) => vec!["NODATA".into()],
                Some(ViewAnswer::Forward(_)) => vec!["FORWARD".into()],
                None => vec![],
            }
        };
        for _ in 0..200 {
            assert_eq!(
                ask("10.1.0.5", "www.corp.example."),
                vec!["192.0.2.1"],
                "weight 0 is never served"
            );
        }
        assert_eq!(ask("10.2.0.5", "www.corp.example."), vec!["198.51.100.1"]);
        assert_eq!(
            ask("10.3.0.5", "www.corp.example."),
            Vec::<String>::new(),
            "not bound to that network"
        );
        assert_eq!(
            ask("10.1.0.5", "www.dev.corp.example."),
            vec!["192.0.2.99"],
            "the sub-zone overrides"
        );
        assert_eq!(
            ask("10.2.0.5", "www.dev.corp.example."),
            vec!["NXDOMAIN"],
            "the other network has no sub-zone"
        );
        assert_eq!(ask("10.1.0.5", "corp.example."), vec!["NODATA"]);
    }
}
