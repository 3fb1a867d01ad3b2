//! The eBPF service load balancer: `bpf/service.c` attached to a cgroup (v2) at connect4,
//! sendmsg4, recvmsg4 and getpeername4, so every socket of a process in that cgroup reaches a
//! ClusterIP port through one of its ready endpoints, chosen when the socket call is made (the
//! socket-level balancing of Cilium's kube-proxy replacement). No packet is rewritten and no
//! iptables rule exists.
//!
//! The programs' links and maps are pinned under /sys/fs/bpf/nodeless/lb/<name>/, so pods keep
//! reaching services while the process that fills the maps restarts; a restarted one reads
//! the table back from the maps and carries on from there.

pub mod table;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::EbpfLoader;
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};

pub use table::{Backend, Entry, Frontend, Proto, Table};

/// The object built from bpf/service.c.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/service.o"));

pub const SERVICES_MAP: &str = "nl_services";
pub const SERVICE_IPS_MAP: &str = "nl_service_ips";
pub const AFFINITY_MAP: &str = "nl_affinity";
pub const REVNAT_MAP: &str = "nl_revnat";
pub const STATS_MAP: &str = "nl_lb_stats";
/// The programs, by the hook each is attached at.
pub const PROGRAMS: [&str; 4] = ["lb_connect4", "lb_sendmsg4", "lb_recvmsg4", "lb_getpeername4"];

/// `enum nl_lb_stat`, in order.
pub const STATS: [&str; 5] = ["translated", "affinity", "no-endpoint", "reversed", "no-port"];

/// Every map, as pinned.
const MAPS: [&str; 5] = [SERVICES_MAP, SERVICE_IPS_MAP, AFFINITY_MAP, REVNAT_MAP, STATS_MAP];

pub const SVC_KEY_SIZE: usize = 12;
pub const SVC_VALUE_SIZE: usize = 12;
pub const AFFINITY_KEY_SIZE: usize = 16;
pub const AFFINITY_VALUE_SIZE: usize = 16;
pub const REVNAT_KEY_SIZE: usize = 16;
pub const REVNAT_VALUE_SIZE: usize = 8;

type SvcKey = [u8; SVC_KEY_SIZE];
type SvcValue = [u8; SVC_VALUE_SIZE];
type AffinityKey = [u8; AFFINITY_KEY_SIZE];
/// A ClusterIP in `nl_service_ips`, in network order, and how many service ports it has.
type AddrKey = [u8; 4];

/// The ClusterIPs of a table, each with its number of service ports.
fn addresses(table: &Table) -> BTreeMap<Ipv4Addr, u32> {
    let mut out = BTreeMap::new();
    for f in table.keys() {
        *out.entry(f.addr).or_insert(0) += 1;
    }
    out
}

/// `struct svc_key` for a frontend's slot.
pub fn svc_key(f: &Frontend, slot: u32) -> SvcKey {
    let mut k = [0u8; SVC_KEY_SIZE];
    k[..4].copy_from_slice(&f.addr.octets());
    k[4..6].copy_from_slice(&f.port.to_be_bytes());
    k[6] = f.proto.number();
    k[8..12].copy_from_slice(&slot.to_ne_bytes());
    k
}

fn decode_svc_key(k: &SvcKey) -> Option<(Frontend, u32)> {
    let proto = Proto::from_number(k[6])?;
    let f = Frontend {
        addr: Ipv4Addr::new(k[0], k[1], k[2], k[3]),
        port: u16::from_be_bytes([k[4], k[5]]),
        proto,
    };
    Some((f, u32::from_ne_bytes([k[8], k[9], k[10], k[11]])))
}

/// `struct svc_value` of slot 0: the count and the affinity timeout.
pub fn header_value(count: u16, affinity: u32) -> SvcValue {
    let mut v = [0u8; SVC_VALUE_SIZE];
    v[6..8].copy_from_slice(&count.to_ne_bytes());
    v[8..12].copy_from_slice(&affinity.to_ne_bytes());
    v
}

/// `struct svc_value` of an endpoint's slot.
pub fn backend_value(b: &Backend) -> SvcValue {
    let mut v = [0u8; SVC_VALUE_SIZE];
    v[..4].copy_from_slice(&b.addr.octets());
    v[4..6].copy_from_slice(&b.port.to_be_bytes());
    v
}

fn decode_header(v: &SvcValue) -> (u16, u32) {
    (
        u16::from_ne_bytes([v[6], v[7]]),
        u32::from_ne_bytes([v[8], v[9], v[10], v[11]]),
    )
}

fn decode_backend(v: &SvcValue) -> Backend {
    Backend {
        addr: Ipv4Addr::new(v[0], v[1], v[2], v[3]),
        port: u16::from_be_bytes([v[4], v[5]]),
    }
}

/// The frontend and endpoint an affinity row is for.
fn decode_affinity(k: &AffinityKey, v: &[u8; AFFINITY_VALUE_SIZE]) -> Option<(Frontend, Backend)> {
    let proto = Proto::from_number(k[14])?;
    let f = Frontend {
        addr: Ipv4Addr::new(k[8], k[9], k[10], k[11]),
        port: u16::from_be_bytes([k[12], k[13]]),
        proto,
    };
    let b = Backend {
        addr: Ipv4Addr::new(v[8], v[9], v[10], v[11]),
        port: u16::from_be_bytes([v[12], v[13]]),
    };
    Some((f, b))
}

#[derive(Debug, thiserror::Error)]
#[error("service load balancer: {what}: {detail}")]
pub struct LbError {
    what: String,
    detail: String,
}

fn err(what: &str, e: impl std::fmt::Display) -> LbError {
    LbError {
        what: what.to_string(),
        detail: e.to_string(),
    }
}

const ENOENT: i32 = 2;

fn not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(ENOENT),
        _ => false,
    }
}

/// Where one balancer's maps and links are pinned.
#[derive(Debug, Clone)]
pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    pub fn named(name: &str) -> Pins {
        Pins {
            dir: Path::new(crate::bpf::BPFFS).join("nodeless").join("lb").join(name),
        }
    }
    fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn link(&self, program: &str) -> PathBuf {
        self.dir.join("links").join(program)
    }
    pub fn exists(&self) -> bool {
        self.dir.exists()
    }

    fn open_map(&self, name: &str) -> Result<Map, LbError> {
        let data = MapData::from_pin(self.map(name)).map_err(|e| err(&format!("opening {name}"), e))?;
        Map::from_map_data(data).map_err(|e| err(name, e))
    }

    fn complete(&self) -> bool {
        PROGRAMS.iter().all(|p| self.link(p).exists()) && MAPS.iter().all(|m| self.map(m).exists())
    }

    /// Detach the programs and remove every pin; whatever is already gone is skipped.
    pub fn remove(&self) -> Result<(), LbError> {
        let mut first_error = None;
        for p in PROGRAMS {
            let link = self.link(p);
            if !link.exists() {
                continue;
            }
            let r = match PinnedLink::from_pin(&link) {
                Ok(l) => l
                    .unpin()
                    .map(drop)
                    .map_err(|e| err(&format!("unpinning the {p} link"), e)),
                Err(_) => std::fs::remove_file(&link).map_err(|e| err("removing a link pin", e)),
            };
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        for m in MAPS {
            let _ = std::fs::remove_file(self.map(m));
        }
        let _ = std::fs::remove_dir(self.dir.join("links"));
        let _ = std::fs::remove_dir(&self.dir);
        first_error.map_or(Ok(()), Err)
    }

    /// The balancer's state: services, their endpoints, and the counters.
    pub fn show(&self) -> Result<String, LbError> {
        let mut out = format!(
            "service load balancer {}\n",
            self.dir.file_name().and_then(|n| n.to_str()).unwrap_or("")
        );
        if !self.complete() {
            out.push_str("  not loaded\n");
            return Ok(out);
        }
        let services: HashMap<MapData, SvcKey, SvcValue> =
            HashMap::try_from(self.open_map(SERVICES_MAP)?).map_err(|e| err("the services map's layout", e))?;
        let table = read_table(&services);
        out.push_str(&format!(
            "  services: {} ports on {} addresses (other ports of those addresses: refused)\n",
            table.len(),
            addresses(&table).len()
        ));
        for (f, e) in &table {
            let eps: Vec<String> = e.backends.iter().map(|b| format!("{}:{}", b.addr, b.port)).collect();
            let affinity = if e.affinity > 0 {
                format!(" (ClientIP affinity {}s)", e.affinity)
            } else {
                String::new()
            };
            let eps = if eps.is_empty() {
                "no ready endpoint: refused".to_string()
            } else {
                eps.join(" ")
            };
            out.push_str(&format!("    {}:{}/{}{affinity} -> {eps}\n", f.addr, f.port, f.proto));
        }
        out.push_str("  socket calls:\n");
        for (name, n) in self.counters()?.unwrap_or_default() {
            out.push_str(&format!("    {name:<16} {n}\n"));
        }
        Ok(out)
    }

    /// The socket-call counters (`STATS`), summed over CPUs; none while the balancer is not
    /// loaded.
    pub fn counters(&self) -> Result<Option<Vec<(&'static str, u64)>>, LbError> {
        if !self.complete() {
            return Ok(None);
        }
        let stats: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(self.open_map(STATS_MAP)?).map_err(|e| err("the counters' layout", e))?;
        Ok(Some(crate::bpf::per_cpu_sums(&stats, &STATS)))
    }
}

/// The table as the services map holds it. Rows of a service that is half written (a slot
/// missing) are read as far as they go.
fn read_table(services: &HashMap<MapData, SvcKey, SvcValue>) -> Table {
    let mut rows: BTreeMap<Frontend, BTreeMap<u32, SvcValue>> = BTreeMap::new();
    for (k, v) in services.iter().filter_map(Result::ok) {
        if let Some((f, slot)) = decode_svc_key(&k) {
            rows.entry(f).or_default().insert(slot, v);
        }
    }
    let mut table = Table::new();
    for (f, slots) in rows {
        let Some(header) = slots.get(&0) else {
            continue;
        };
        let (count, affinity) = decode_header(header);
        let backends = (1..=u32::from(count))
            .map_while(|i| slots.get(&i).map(decode_backend))
            .collect();
        table.insert(f, Entry { backends, affinity });
    }
    table
}

/// A loaded balancer: what its maps hold, and the handle to change them.
pub struct Balancer {
    pins: Pins,
    services: HashMap<MapData, SvcKey, SvcValue>,
    service_ips: HashMap<MapData, AddrKey, u32>,
    affinity: HashMap<MapData, AffinityKey, [u8; AFFINITY_VALUE_SIZE]>,
    current: Table,
    /// What `service_ips` holds.
    current_ips: BTreeMap<Ipv4Addr, u32>,
}

impl Balancer {
    /// Attach the balancer named `name` to the cgroup (v2) directory `cgroup`, or take over the
    /// one already pinned under that name (keeping what its maps hold).
    pub fn start(name: &str, cgroup: &Path) -> Result<Balancer, LbError> {
        let pins = Pins::named(name);
        if !pins.complete() {
            pins.remove()?;
            load(&pins, cgroup)?;
        }
        let services: HashMap<MapData, SvcKey, SvcValue> =
            HashMap::try_from(pins.open_map(SERVICES_MAP)?).map_err(|e| err("the services map's layout", e))?;
        let service_ips: HashMap<MapData, AddrKey, u32> = HashMap::try_from(pins.open_map(SERVICE_IPS_MAP)?)
            .map_err(|e| err("the service addresses map's layout", e))?;
        let affinity =
            HashMap::try_from(pins.open_map(AFFINITY_MAP)?).map_err(|e| err("the affinity map's layout", e))?;
        let current = read_table(&services);
        let current_ips = service_ips
            .iter()
            .filter_map(Result::ok)
            .map(|(k, n)| (Ipv4Addr::from(k), n))
            .collect();
        Ok(Balancer {
            pins,
            services,
            service_ips,
            affinity,
            current,
            current_ips,
        })
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    pub fn table(&self) -> &Table {
        &self.current
    }

    /// Make the maps hold `table`, touching only the service ports that changed. A changed
    /// service is written endpoints first and count last, so a socket call in between picks
    /// an endpoint that is either old or new, never an empty slot; affinity to an endpoint
    /// that left is forgotten. A ClusterIP is entered as a service address after its ports,
    /// and leaves after them.
    pub fn sync(&mut self, table: &Table) -> Result<usize, LbError> {
        let mut changed = 0;
        let mut gone: BTreeSet<(Frontend, Backend)> = BTreeSet::new();
        for (f, entry) in table {
            let old = self.current.get(f);
            if old == Some(entry) {
                continue;
            }
            let old_backends: Vec<Backend> = old.map(|o| o.backends.clone()).unwrap_or_default();
            check_count(entry.backends.len()).map_err(|e| err(&format!("{}:{}", f.addr, f.port), e))?;
            for (i, b) in entry.backends.iter().enumerate() {
                if old_backends.get(i) != Some(b) {
                    self.services
                        .insert(svc_key(f, i as u32 + 1), backend_value(b), 0)
                        .map_err(|e| err("writing an endpoint", e))?;
                }
            }
            self.services
                .insert(
                    svc_key(f, 0),
                    header_value(entry.backends.len() as u16, entry.affinity),
                    0,
                )
                .map_err(|e| err("writing a service", e))?;
            for i in entry.backends.len()..old_backends.len() {
                self.remove_row(f, i as u32 + 1)?;
            }
            gone.extend(
                old_backends
                    .iter()
                    .filter(|b| !entry.backends.contains(b))
                    .map(|b| (*f, *b)),
            );
            self.current.insert(*f, entry.clone());
            changed += 1;
        }
        for f in absent(&self.current, table) {
            let old = self.current.remove(&f).unwrap_or_default();
            self.remove_row(&f, 0)?;
            for i in 0..old.backends.len() {
                self.remove_row(&f, i as u32 + 1)?;
            }
            gone.extend(old.backends.iter().map(|b| (f, *b)));
            changed += 1;
        }
        if !gone.is_empty() {
            self.forget_affinity(&gone)?;
        }
        self.sync_addresses(&addresses(table))?;
        Ok(changed)
    }

    fn sync_addresses(&mut self, wanted: &BTreeMap<Ipv4Addr, u32>) -> Result<(), LbError> {
        for (addr, &n) in wanted {
            if self.current_ips.get(addr) != Some(&n) {
                self.service_ips
                    .insert(addr.octets(), n, 0)
                    .map_err(|e| err("entering a service address", e))?;
                self.current_ips.insert(*addr, n);
            }
        }
        for addr in absent(&self.current_ips, wanted) {
            match self.service_ips.remove(&addr.octets()) {
                Err(e) if !not_found(&e) => return Err(err("removing a service address", e)),
                _ => {}
            }
            self.current_ips.remove(&addr);
        }
        Ok(())
    }

    fn remove_row(&mut self, f: &Frontend, slot: u32) -> Result<(), LbError> {
        match self.services.remove(&svc_key(f, slot)) {
            Err(e) if !not_found(&e) => Err(err("removing a row", e)),
            _ => Ok(()),
        }
    }

    fn forget_affinity(&mut self, gone: &BTreeSet<(Frontend, Backend)>) -> Result<(), LbError> {
        let stale: Vec<AffinityKey> = self
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| decode_affinity(k, v).is_some_and(|fb| gone.contains(&fb)))
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            match self.affinity.remove(&k) {
                Err(e) if !not_found(&e) => return Err(err("forgetting an affinity", e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Detach and unpin everything.
    pub fn remove(self) -> Result<(), LbError> {
        let pins = self.pins.clone();
        drop(self);
        pins.remove()
    }
}

/// The keys `held` has and `wanted` lacks.
fn absent<K: Ord + Copy, V, W>(held: &BTreeMap<K, V>, wanted: &BTreeMap<K, W>) -> Vec<K> {
    held.keys().filter(|k| !wanted.contains_key(k)).copied().collect()
}

/// A service port holds at most u16::MAX endpoints (the count is 16 bits).
fn check_count(n: usize) -> Result<(), String> {
    if n > usize::from(u16::MAX) {
        return Err(format!(
            "{n} endpoints, more than the {} a service port can hold",
            u16::MAX
        ));
    }
    Ok(())
}

/// Load the object, pin its maps, attach each program to the cgroup and pin the links.
fn load(pins: &Pins, cgroup: &Path) -> Result<(), LbError> {
    crate::bpf::ensure_bpffs().map_err(|e| err("the BPF filesystem", e))?;
    std::fs::create_dir_all(pins.dir.join("links")).map_err(|e| err("creating the pin directory", e))?;
    let result = (|| {
        let cg =
            std::fs::File::open(cgroup).map_err(|e| err(&format!("opening the cgroup {}", cgroup.display()), e))?;
        let mut loader = EbpfLoader::new();
        for m in MAPS {
            loader.map_pin_path(m, pins.map(m));
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| err("loading the object", e))?;
        for name in PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| err("the object has no program", name))?
                .try_into()
                .map_err(|e| err("the program's type", e))?;
            prog.load().map_err(|e| err(&format!("loading {name} (verifier)"), e))?;
            let id = prog
                .attach(&cg, CgroupAttachMode::Single)
                .map_err(|e| err(&format!("attaching {name} to {}", cgroup.display()), e))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(|e| err("taking the link", e))?
                .try_into()
                .map_err(|e| err("the link's kind", e))?;
            link.pin(pins.link(name)).map_err(|e| err("pinning the link", e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = pins.remove();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_encode_as_the_c_structs() {
        let f = Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: Proto::Udp,
        };
        let k = svc_key(&f, 3);
        assert_eq!(&k[..4], &[10, 96, 0, 10]);
        assert_eq!(&k[4..6], &[0, 80], "the port in network order");
        assert_eq!(k[6], 17);
        assert_eq!(decode_svc_key(&k), Some((f, 3)));
        let b = Backend {
            addr: Ipv4Addr::new(10, 66, 0, 2),
            port: 8080,
        };
        assert_eq!(decode_backend(&backend_value(&b)), b);
        assert_eq!(decode_header(&header_value(7, 10_800)), (7, 10_800));
    }

    /// The object's maps have the layouts the Rust side uses, its counters a name each, and
    /// the verifier accepts every program. Needs root (it loads the object; nothing pinned).
    #[test]
    fn layouts_match_the_object() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root to load eBPF objects");
            return;
        }
        let mut ebpf = aya::Ebpf::load(OBJECT).expect("the object loads");
        let _: HashMap<&MapData, SvcKey, SvcValue> =
            HashMap::try_from(ebpf.map(SERVICES_MAP).expect("services")).expect("services layout");
        let _: HashMap<&MapData, AddrKey, u32> =
            HashMap::try_from(ebpf.map(SERVICE_IPS_MAP).expect("service addresses")).expect("service addresses layout");
        let _: HashMap<&MapData, AffinityKey, [u8; AFFINITY_VALUE_SIZE]> =
            HashMap::try_from(ebpf.map(AFFINITY_MAP).expect("affinity")).expect("affinity layout");
        let _: HashMap<&MapData, [u8; REVNAT_KEY_SIZE], [u8; REVNAT_VALUE_SIZE]> =
            HashMap::try_from(ebpf.map(REVNAT_MAP).expect("revnat")).expect("revnat layout");
        let stats: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(ebpf.map(STATS_MAP).expect("counters")).expect("counters layout");
        assert_eq!(stats.len() as usize, STATS.len());
        for name in PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .expect("the program")
                .try_into()
                .expect("a sock_addr program");
            prog.load()
                .unwrap_or_else(|e| panic!("the verifier accepts {name}: {e}"));
        }
        let header = include_str!("../../../bpf/service.h");
        for (i, name) in STATS.iter().enumerate() {
            let c = format!("NL_LB_{}={i},", name.replace('-', "_").to_uppercase());
            assert!(
                header.replace([' ', '\t'], "").contains(&c),
                "bpf/service.h should have {c}"
            );
        }
    }
}
