//! An authoritative zone as a plain lookup table: every owner name with its record sets, the
//! names that exist only because something lies below them (empty non-terminals), and the SOA
//! that negative answers carry. Built whole from the objects and swapped in, never edited.

use rustc_hash::FxHashMap as HashMap;

use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, rdata};

/// What the zone says about a name and type.
#[derive(Debug, PartialEq)]
pub enum Answer<'a> {
    /// The records of that type (or the name's CNAME).
    Records(&'a [Record]),
    /// The name exists, but has no records of that type.
    NoData,
    /// No such name.
    NxDomain,
}

#[derive(Debug, Default)]
struct Node {
    sets: std::collections::HashMap<RecordType, Vec<Record>, rustc_hash::FxBuildHasher>,
}

#[derive(Debug)]
pub struct Zone {
    origin: LowerName,
    soa: Record,
    names: HashMap<LowerName, Node>,
}

impl Zone {
    /// An empty zone whose SOA minimum (the negative-caching TTL) is `ttl`.
    pub fn new(origin: &Name, ttl: u32, serial: u32) -> Zone {
        let mname = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(origin))
            .unwrap_or_else(|_| origin.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(origin))
            .unwrap_or_else(|_| origin.clone());
        let soa = Record::from_rdata(
            origin.clone(),
            ttl,
            RData::SOA(rdata::SOA::new(mname, rname, serial, 7200, 1800, 86400, ttl)),
        );
        let mut zone = Zone {
            origin: LowerName::new(origin),
            soa: soa.clone(),
            names: HashMap::default(),
        };
        zone.add(soa);
        zone
    }

    pub fn origin(&self) -> &LowerName {
        &self.origin
    }

    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Whether `name` lies in this zone.
    pub fn contains(&self, name: &LowerName) -> bool {
        self.origin.zone_of(name)
    }

    /// Add a record; every name between it and the origin comes to exist.
    pub fn add(&mut self, record: Record) {
        let owner = LowerName::new(&record.name);
        if !self.origin.zone_of(&owner) {
            return;
        }
        let mut parent = owner.base_name();
        while self.origin.zone_of(&parent) && parent != self.origin {
            self.names.entry(parent.clone()).or_default();
            parent = parent.base_name();
        }
        let set = self
            .names
            .entry(owner)
            .or_default()
            .sets
            .entry(record.record_type())
            .or_default();
        if !set.iter().any(|r| r.data == record.data) {
            set.push(record);
        }
    }

    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Answer<'_> {
        let Some(node) = self.names.get(name) else {
            return Answer::NxDomain;
        };
        if let Some(set) = node.sets.get(&qtype).filter(|s| !s.is_empty()) {
            return Answer::Records(set);
        }
        if qtype != RecordType::CNAME {
            if let Some(set) = node.sets.get(&RecordType::CNAME).filter(|s| !s.is_empty()) {
                return Answer::Records(set);
            }
        }
        if qtype == RecordType::ANY {
            if let Some(set) = node.sets.values().find(|s| !s.is_empty()) {
                return Answer::Records(set);
            }
        }
        Answer::NoData
    }

    /// Records at `name` of `qtype`, for the additional section.
    pub fn records(&self, name: &LowerName, qtype: RecordType) -> &[Record] {
        self.names
            .get(name)
            .and_then(|n| n.sets.get(&qtype))
            .map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn n(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    #[test]
    fn names_types_and_empty_non_terminals() {
        let mut z = Zone::new(&n("cluster.local."), 5, 1);
        z.add(Record::from_rdata(
            n("web.default.svc.cluster.local."),
            5,
            RData::A(rdata::A::new(10, 96, 0, 1)),
        ));
        let q = |s: &str, t| match z.lookup(&LowerName::from(n(s)), t) {
            Answer::Records(r) => format!("{} records", r.len()),
            other => format!("{other:?}"),
        };
        assert_eq!(q("web.default.svc.cluster.local.", RecordType::A), "1 records");
        assert_eq!(q("WEB.Default.svc.cluster.local.", RecordType::A), "1 records");
        assert_eq!(q("web.default.svc.cluster.local.", RecordType::AAAA), "NoData");
        assert_eq!(q("default.svc.cluster.local.", RecordType::A), "NoData");
        assert_eq!(q("svc.cluster.local.", RecordType::A), "NoData");
        assert_eq!(q("cluster.local.", RecordType::SOA), "1 records");
        assert_eq!(q("other.default.svc.cluster.local.", RecordType::A), "NxDomain");
        assert_eq!(q("x.web.default.svc.cluster.local.", RecordType::A), "NxDomain");
        // Records outside the zone are not taken.
        z.add(Record::from_rdata(
            n("example.com."),
            5,
            RData::A(rdata::A::new(1, 2, 3, 4)),
        ));
        assert!(!z.contains(&LowerName::from(n("example.com."))));
    }
}
