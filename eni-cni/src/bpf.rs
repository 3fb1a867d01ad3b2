//! The eBPF datapath from userspace: `bpf/datapath.c`, built by build.rs and embedded here,
//! loaded with aya and pinned under /sys/fs/bpf/nodeless/<network>/ so it outlives the
//! short-lived plugin:
//!
//! - `from_pod`, the program, attached to the ingress of every pod's host end as a tc filter
//!   (clsact, direct action) and pinned again as `links/<host end>`, the record of that attach;
//! - `nl_pods`, pod address -> host end, pod MAC and sandbox, filled by ADD, emptied by DEL
//!   and GC;
//! - `nl_host_ends`, host end -> the sandbox behind it (the pod's network namespace, by inode
//!   number): a pod with several interfaces on the network may send any of its own addresses
//!   out of any of them, as its routes decide, and no other pod's;
//! - `nl_stats`, per-CPU counters of what happened to packets (the drop reasons among them)
//!   and to accelerated sockets;
//! - `nl_config`, the network's [`Walls`]: a pod's packets carry its own source address, and
//!   reach neither the node's addresses (but the cluster DNS) nor link-local ones, unless the
//!   network's configuration lets them (`bpf/walls.h`); rewritten by every attach;
//! - with socket acceleration (`socketAcceleration`, off by default): `pod_sockets`, a sockops
//!   program attached to the root of the cgroup v2 hierarchy, which enters every TCP socket
//!   between two pods of the network in `nl_sockets` at the handshake, and `pod_messages`, an
//!   sk_msg program on that map, which puts what such a socket sends straight into its peer's
//!   receive queue. The cgroup link is pinned as `sockets`; it holds the programs and maps.
//!
//! The map layouts mirror `bpf/datapath.h`; `layouts_match_the_object` checks them against the
//! object itself. When a network's last pod goes, its pins go too. Pins an older eni-cni left
//! with other layouts (a running node upgraded in place) are replaced at the next attach, the
//! pods they hold carried over and the program swapped on every host end ([`Pins::upgrade`]);
//! until then DEL, CHECK and `show` read them as they are.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, SockHash};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle};
use aya::programs::{CgroupAttachMode, SchedClassifier, SkMsg, SockOps, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use nix::fcntl::{Flock, FlockArg};

use crate::spec::{CniError, code};

/// The object built from bpf/datapath.c.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));

pub const PROGRAM: &str = "from_pod";
pub const PODS_MAP: &str = "nl_pods";
pub const STATS_MAP: &str = "nl_stats";
pub const CONFIG_MAP: &str = "nl_config";
pub const HOST_ENDS_MAP: &str = "nl_host_ends";
pub const SOCKOPS_PROGRAM: &str = "pod_sockets";
pub const MSG_PROGRAM: &str = "pod_messages";
pub const SOCKETS_MAP: &str = "nl_sockets";

/// `struct pod_endpoint`: ifindex (u32), mac (6 bytes), 2 bytes of padding, sandbox (u32).
pub const POD_ENDPOINT_SIZE: usize = 16;
/// `struct pod_endpoint` as eni-cni pinned it before sandboxes: the same without the sandbox.
const POD_ENDPOINT_V1_SIZE: usize = 12;
/// `struct host_end`: the sandbox (u32).
pub const HOST_END_SIZE: usize = 4;
/// `struct sock_key`: four u32s.
pub const SOCK_KEY_SIZE: usize = 16;
/// `struct net_config`: the cluster DNS address (u32, network order) and flags (u32).
pub const NET_CONFIG_SIZE: usize = 8;

/// `enum nl_stat`, in order: the one table of what happens to packets, drop reasons among them.
pub const STATS: [&str; 15] = [
    "redirected",
    "passed",
    "not-ipv4",
    "ttl-expired",
    "drop-malformed",
    "drop-redirect",
    "sock-paired",
    "msg-shortcut",
    "msg-stack",
    "drop-spoofed",
    "drop-node",
    "drop-link-local",
    "node-dns",
    "node-reply",
    "node-ingress",
];

/// `enum nl_config_flag`.
const ALLOW_NODE_ACCESS: u32 = 1;
const ALLOW_LINK_LOCAL: u32 = 2;

/// What a network's pods may reach besides each other and the world beyond the node
/// (`bpf/walls.h`). The default is the strict one: the cluster DNS is the only door into the
/// node, and link-local addresses (the cloud's metadata service) are closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Walls {
    /// The node address pods may reach on port 53 (UDP and TCP) with the node walled off.
    #[serde(default)]
    pub cluster_dns: Option<Ipv4Addr>,
    /// Pods may reach every address the node holds.
    #[serde(default)]
    pub allow_node_access: bool,
    /// Pods may reach 169.254.0.0/16.
    #[serde(default)]
    pub allow_link_local: bool,
}

impl Walls {
    /// The walls a network's configuration asks for.
    pub fn of(conf: &crate::spec::NetConf) -> Walls {
        Walls {
            cluster_dns: conf.cluster_dns,
            allow_node_access: conf.allow_node_access,
            allow_link_local: conf.allow_link_local,
        }
    }

    /// `struct net_config`, as the map holds it.
    pub fn encode(&self) -> [u8; NET_CONFIG_SIZE] {
        let mut flags = 0;
        if self.allow_node_access {
            flags |= ALLOW_NODE_ACCESS;
        }
        if self.allow_link_local {
            flags |= ALLOW_LINK_LOCAL;
        }
        let mut b = [0u8; NET_CONFIG_SIZE];
        b[..4].copy_from_slice(&self.cluster_dns.map_or(0, key).to_ne_bytes());
        b[4..].copy_from_slice(&flags.to_ne_bytes());
        b
    }

    pub fn decode(b: &[u8; NET_CONFIG_SIZE]) -> Walls {
        let dns = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        let flags = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
        Walls {
            cluster_dns: (dns != 0).then(|| Ipv4Addr::from(dns.to_ne_bytes())),
            allow_node_access: flags & ALLOW_NODE_ACCESS != 0,
            allow_link_local: flags & ALLOW_LINK_LOCAL != 0,
        }
    }

    /// One line for `show`.
    pub fn describe(&self) -> String {
        let node = match (self.allow_node_access, self.cluster_dns) {
            (true, _) => "open".to_string(),
            (false, Some(dns)) => format!("closed but the cluster DNS {dns} port 53 (and the ingress there, TCP 80)"),
            (false, None) => "closed".to_string(),
        };
        format!(
            "node {node}; link-local {}",
            if self.allow_link_local { "open" } else { "closed" }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodEndpoint {
    /// The pod's host end.
    pub ifindex: u32,
    /// The pod's end of the pair.
    pub mac: [u8; 6],
    /// The pod's sandbox ([`sandbox_of`]), the same for all its interfaces; 0 when unknown,
    /// which matches no other interface.
    pub sandbox: u32,
}

impl PodEndpoint {
    pub fn encode(&self) -> [u8; POD_ENDPOINT_SIZE] {
        let mut b = [0u8; POD_ENDPOINT_SIZE];
        b[..4].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[4..10].copy_from_slice(&self.mac);
        b[12..].copy_from_slice(&self.sandbox.to_ne_bytes());
        b
    }

    pub fn decode(b: &[u8; POD_ENDPOINT_SIZE]) -> PodEndpoint {
        // The first twelve bytes are the older layout's.
        let mut v1 = [0u8; POD_ENDPOINT_V1_SIZE];
        v1.copy_from_slice(&b[..POD_ENDPOINT_V1_SIZE]);
        PodEndpoint {
            sandbox: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
            ..PodEndpoint::decode_v1(&v1)
        }
    }

    /// An entry of an older pin, which had no sandbox.
    fn decode_v1(b: &[u8; POD_ENDPOINT_V1_SIZE]) -> PodEndpoint {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[4..10]);
        PodEndpoint {
            ifindex: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            mac,
            sandbox: 0,
        }
    }
}

/// The sandbox a network namespace stands for: its inode number on nsfs (the kernel's `inum`,
/// 32 bits), what `ls -i /proc/<pid>/ns/net` prints. Every interface ADD puts into one
/// namespace gets the same, whatever its network name, container ID or interface name; 0 (no
/// namespace has it) when the file cannot be read.
pub fn sandbox_of(netns: &File) -> u32 {
    use std::os::unix::fs::MetadataExt;
    netns
        .metadata()
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
        .unwrap_or(0)
}

/// The pods map as pinned: this build's layout, or an older eni-cni's (read and emptied by
/// DEL, CHECK and `show` until the next attach replaces it).
enum PodsMap {
    Current(HashMap<MapData, u32, [u8; POD_ENDPOINT_SIZE]>),
    V1(HashMap<MapData, u32, [u8; POD_ENDPOINT_V1_SIZE]>),
}

impl PodsMap {
    fn get(&self, ip: Ipv4Addr) -> Result<PodEndpoint, aya::maps::MapError> {
        match self {
            PodsMap::Current(m) => m.get(&key(ip), 0).map(|v| PodEndpoint::decode(&v)),
            PodsMap::V1(m) => m.get(&key(ip), 0).map(|v| PodEndpoint::decode_v1(&v)),
        }
    }

    fn remove(&mut self, ip: Ipv4Addr) -> Result<(), aya::maps::MapError> {
        match self {
            PodsMap::Current(m) => m.remove(&key(ip)),
            PodsMap::V1(m) => m.remove(&key(ip)),
        }
    }

    fn entries(&self) -> Vec<(Ipv4Addr, PodEndpoint)> {
        let addr = |k: u32| Ipv4Addr::from(k.to_ne_bytes());
        match self {
            PodsMap::Current(m) => m
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| (addr(k), PodEndpoint::decode(&v)))
                .collect(),
            PodsMap::V1(m) => m
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| (addr(k), PodEndpoint::decode_v1(&v)))
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            PodsMap::Current(m) => m.keys().next().is_none(),
            PodsMap::V1(m) => m.keys().next().is_none(),
        }
    }
}

/// The map key for an address: its bytes as the kernel holds them (network order).
pub fn key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn err(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO, format!("eBPF datapath: {what}"), e.to_string())
}

pub const BPFFS: &str = "/sys/fs/bpf";

const ENOENT: i32 = 2;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EINVAL: i32 = 22;

/// The fast path's filter priority on a host end (the interface is ours alone).
const FILTER_PRIORITY: u16 = 1;

/// Remove the fast path's filter from a host end; nothing to do when the interface or the
/// filter is already gone.
fn detach_filter(host_ifname: &str) -> Result<(), CniError> {
    match tc::qdisc_detach_program(host_ifname, TcAttachType::Ingress, PROGRAM) {
        Ok(()) => Ok(()),
        Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(ENODEV) => {
            Ok(())
        }
        Err(TcError::NetlinkError(e)) if matches!(e.raw_os_error(), Some(ENOENT) | Some(ENODEV) | Some(EINVAL)) => {
            Ok(())
        }
        Err(e) => Err(err(&format!("detaching from {host_ifname}"), e)),
    }
}

/// Mount the BPF filesystem where the kernel expects it, if it is not there yet.
pub fn ensure_bpffs() -> Result<(), CniError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|e| err("reading /proc/mounts", e))?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).map_err(|e| err("creating /sys/fs/bpf", e))?;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| err("mounting the BPF filesystem", e))
}

/// A per-CPU counters map as `(name, sum over CPUs)`, a name per slot, in order (the datapath's
/// and the service balancer's counters alike).
pub fn per_cpu_sums(map: &PerCpuArray<MapData, u64>, names: &[&'static str]) -> Vec<(&'static str, u64)> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| (*name, map.get(&(i as u32), 0).map(|v| v.iter().sum()).unwrap_or(0)))
        .collect()
}

/// Where one network's programs, maps and links are pinned.
#[derive(Debug, Clone)]
pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    pub fn for_network(network: &str) -> Pins {
        Pins {
            dir: Path::new(BPFFS).join("nodeless").join(network),
        }
    }
    fn program(&self) -> PathBuf {
        self.dir.join(PROGRAM)
    }
    fn pods(&self) -> PathBuf {
        self.dir.join(PODS_MAP)
    }
    fn stats(&self) -> PathBuf {
        self.dir.join(STATS_MAP)
    }
    fn config(&self) -> PathBuf {
        self.dir.join(CONFIG_MAP)
    }
    fn host_ends(&self) -> PathBuf {
        self.dir.join(HOST_ENDS_MAP)
    }
    fn links(&self) -> PathBuf {
        self.dir.join("links")
    }
    fn link(&self, host_ifname: &str) -> PathBuf {
        self.links().join(host_ifname)
    }
    /// The pinned cgroup link of socket acceleration.
    fn sockets_link(&self) -> PathBuf {
        self.dir.join("sockets")
    }

    /// Changes to the pins, one process at a time (one lock for every network, so no lock file
    /// is left per network).
    fn lock(&self) -> Result<Flock<File>, CniError> {
        // /run/lock is where lock files live; this one is made once and reused.
        let path = Path::new("/run/lock/nodeless-eni-bpf.lock");
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/run")))
            .map_err(|e| err("creating /run/lock", e))?;
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| err("opening the lock", e))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| err("locking", e))
    }

    /// The program, loaded and pinned (with its maps) by the first pod of the network, which
    /// also decides whether the network's sockets are accelerated.
    fn program_loaded(&self, accelerate: bool) -> Result<SchedClassifier, CniError> {
        if self.program().exists() {
            if !self.pinned_layouts_current()? {
                return self.upgrade(accelerate);
            }
            return SchedClassifier::from_pin(self.program()).map_err(|e| err("opening the pinned program", e));
        }
        self.load(accelerate)
    }

    /// Load the object, pin the program and its maps (new ones where none is pinned), and with
    /// `accelerate` set socket acceleration up.
    fn load(&self, accelerate: bool) -> Result<SchedClassifier, CniError> {
        ensure_bpffs()?;
        std::fs::create_dir_all(self.links()).map_err(|e| err("creating the pin directory", e))?;
        let mut ebpf = EbpfLoader::new()
            .map_pin_path(PODS_MAP, self.pods())
            .map_pin_path(STATS_MAP, self.stats())
            .map_pin_path(CONFIG_MAP, self.config())
            .map_pin_path(HOST_ENDS_MAP, self.host_ends())
            .load(OBJECT)
            .map_err(|e| err("loading the object", e))?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| err("the object has no program", PROGRAM))?
            .try_into()
            .map_err(|e| err("the program's type", e))?;
        prog.load().map_err(|e| err("loading the program (verifier)", e))?;
        prog.pin(self.program()).map_err(|e| err("pinning the program", e))?;
        if accelerate {
            // Pods reach each other without it, through the fast path: a failure is logged.
            if let Err(e) = self.accelerate_sockets(&mut ebpf) {
                tracing::warn!(network = %self.dir.display(), error = %e, "socket acceleration is off");
            }
        }
        drop(ebpf);
        SchedClassifier::from_pin(self.program()).map_err(|e| err("opening the pinned program", e))
    }

    /// Whether every map pinned for the network has this build's layout: the pods' entries
    /// their size, a counter per name, and the settings and host-end maps there at all (an
    /// older eni-cni pinned fewer).
    fn pinned_layouts_current(&self) -> Result<bool, CniError> {
        if !self.config().exists() || !self.host_ends().exists() || !self.pods().exists() || !self.stats().exists() {
            return Ok(false);
        }
        let info = |path: PathBuf, what: &str| {
            MapData::from_pin(path)
                .and_then(|m| m.info())
                .map_err(|e| err(&format!("reading the pinned {what}"), e))
        };
        let pods = info(self.pods(), "pods map")?;
        let stats = info(self.stats(), "counters")?;
        Ok(pods.value_size() as usize == POD_ENDPOINT_SIZE && stats.max_entries() as usize == STATS.len())
    }

    /// Replace a datapath an older eni-cni pinned with other layouts (entries without the
    /// sandbox, fewer counters, no settings or host-end map), on a node that keeps running:
    /// this build's object is loaded with new maps, the old map's pods are published in the new
    /// one (an entry without a sandbox passes only on its own host end, as before), and the
    /// program is swapped on every recorded host end in place — the tc filter replaced at the
    /// same priority and handle, so no packet goes unfiltered or finds a half-filled map. The
    /// old program and maps go when their last filter does; the counters start from zero.
    /// Socket acceleration that the older version set up stays as it is (its sockets keep
    /// their way; unpinning it would drop messages queued in a peer's socket) and sees the
    /// pods as they were, until the network's last pod goes.
    fn upgrade(&self, accelerate: bool) -> Result<SchedClassifier, CniError> {
        let pods = if self.pods().exists() {
            self.pinned_pods()?.entries()
        } else {
            Vec::new()
        };
        tracing::info!(network = %self.dir.display(), pods = pods.len(), "replacing a datapath pinned with older map layouts");
        for p in [
            self.program(),
            self.pods(),
            self.stats(),
            self.config(),
            self.host_ends(),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(&format!("removing the old pin {}", p.display()), e)),
            }
        }
        let mut prog = self.load(accelerate && !self.accelerated())?;
        let mut map = self.pods_map()?;
        let mut host_ends = self.host_ends_map()?;
        for (ip, ep) in &pods {
            map.insert(key(*ip), ep.encode(), 0)
                .map_err(|e| err("carrying a pod over", e))?;
            if ep.sandbox != 0 {
                host_ends
                    .insert(ep.ifindex, ep.sandbox.to_ne_bytes(), 0)
                    .map_err(|e| err("carrying a host end over", e))?;
            }
        }
        let markers = std::fs::read_dir(self.links()).map_err(|e| err("reading the recorded attaches", e))?;
        for marker in markers.filter_map(Result::ok) {
            let Some(name) = marker.file_name().to_str().map(str::to_string) else {
                continue;
            };
            // An interface that is gone took its filter along; its record goes too.
            let Ok(link) =
                SchedClassifierLink::attached(&name, TcAttachType::Ingress, FILTER_PRIORITY, TcHandle::new(0, 1), None)
            else {
                let _ = std::fs::remove_file(marker.path());
                continue;
            };
            let id = prog
                .attach_to_link(link)
                .map_err(|e| err(&format!("replacing the program on {name}"), e))?;
            std::mem::forget(prog.take_link(id).map_err(|e| err("taking the link", e))?);
            std::fs::remove_file(marker.path()).map_err(|e| err("replacing the attach record", e))?;
            prog.pin(marker.path()).map_err(|e| err("recording the attach", e))?;
        }
        Ok(prog)
    }

    /// Attach the sk_msg program to the sockets map and the sockops program to the root of the
    /// cgroup v2 hierarchy (as a BPF link, beside any other program there), and pin the link.
    fn accelerate_sockets(&self, ebpf: &mut Ebpf) -> Result<(), CniError> {
        let cgroup = crate::cgroup::cgroup2_root()
            .ok_or_else(|| err("socket acceleration", "no cgroup v2 hierarchy is mounted"))?;
        let map = ebpf
            .take_map(SOCKETS_MAP)
            .ok_or_else(|| err("the object has no map", SOCKETS_MAP))?;
        let sockets: SockHash<MapData, [u8; SOCK_KEY_SIZE]> =
            SockHash::try_from(map).map_err(|e| err("the sockets map's layout", e))?;
        let msg: &mut SkMsg = ebpf
            .program_mut(MSG_PROGRAM)
            .ok_or_else(|| err("the object has no program", MSG_PROGRAM))?
            .try_into()
            .map_err(|e| err("the program's type", e))?;
        msg.load()
            .map_err(|e| err("loading the sk_msg program (verifier)", e))?;
        let id = msg
            .attach(sockets.fd())
            .map_err(|e| err("attaching the sk_msg program", e))?;
        // The attachment lasts as long as the map, which the sockops program holds.
        std::mem::forget(msg.take_link(id).map_err(|e| err("taking the link", e))?);
        let ops: &mut SockOps = ebpf
            .program_mut(SOCKOPS_PROGRAM)
            .ok_or_else(|| err("the object has no program", SOCKOPS_PROGRAM))?
            .try_into()
            .map_err(|e| err("the program's type", e))?;
        ops.load()
            .map_err(|e| err("loading the sockops program (verifier)", e))?;
        let cg = File::open(&cgroup).map_err(|e| err(&format!("opening {}", cgroup.display()), e))?;
        // A BPF link: the kernel takes cgroup links with no flags, and always beside others.
        let id = ops
            .attach(&cg, CgroupAttachMode::Single)
            .map_err(|e| err(&format!("attaching the sockops program to {}", cgroup.display()), e))?;
        let link: FdLink = ops
            .take_link(id)
            .map_err(|e| err("taking the link", e))?
            .try_into()
            .map_err(|e| err("the link's kind", e))?;
        link.pin(self.sockets_link())
            .map_err(|e| err("pinning the sockops link", e))?;
        Ok(())
    }

    /// Whether this network's sockets are accelerated.
    pub fn accelerated(&self) -> bool {
        self.sockets_link().exists()
    }

    fn pods_map(&self) -> Result<HashMap<MapData, u32, [u8; POD_ENDPOINT_SIZE]>, CniError> {
        let data = MapData::from_pin(self.pods()).map_err(|e| err("opening the pods map", e))?;
        let map = Map::from_map_data(data).map_err(|e| err("the pods map", e))?;
        HashMap::try_from(map).map_err(|e| err("the pods map's layout", e))
    }

    /// The pinned pods map in whichever layout it has.
    fn pinned_pods(&self) -> Result<PodsMap, CniError> {
        let data = MapData::from_pin(self.pods()).map_err(|e| err("opening the pods map", e))?;
        let size = data.info().map_err(|e| err("reading the pods map", e))?.value_size() as usize;
        let map = Map::from_map_data(data).map_err(|e| err("the pods map", e))?;
        match size {
            POD_ENDPOINT_SIZE => HashMap::try_from(map).map(PodsMap::Current),
            POD_ENDPOINT_V1_SIZE => HashMap::try_from(map).map(PodsMap::V1),
            n => {
                return Err(err(
                    "the pods map's layout",
                    format!("{n}-byte entries, a layout this eni-cni does not know"),
                ));
            }
        }
        .map_err(|e| err("the pods map's layout", e))
    }

    fn host_ends_map(&self) -> Result<HashMap<MapData, u32, [u8; HOST_END_SIZE]>, CniError> {
        let data = MapData::from_pin(self.host_ends()).map_err(|e| err("opening the host-ends map", e))?;
        let map = Map::from_map_data(data).map_err(|e| err("the host-ends map", e))?;
        HashMap::try_from(map).map_err(|e| err("the host-ends map's layout", e))
    }

    fn config_map(&self) -> Result<Array<MapData, [u8; NET_CONFIG_SIZE]>, CniError> {
        let data = MapData::from_pin(self.config()).map_err(|e| err("opening the settings map", e))?;
        let map = Map::from_map_data(data).map_err(|e| err("the settings map", e))?;
        Array::try_from(map).map_err(|e| err("the settings map's layout", e))
    }

    /// The network's walls as the datapath holds them (the strict default when nothing is
    /// loaded).
    pub fn walls(&self) -> Result<Walls, CniError> {
        if !self.config().exists() {
            return Ok(Walls::default());
        }
        Ok(Walls::decode(
            &self
                .config_map()?
                .get(&0, 0)
                .map_err(|e| err("reading the settings", e))?,
        ))
    }

    /// Attach the fast path to a pod's host end and publish the pod, with the network's
    /// `walls` (every attach writes them: the latest configuration wins).
    ///
    /// The pod (and its host end's sandbox) is published before the filter goes on: from then
    /// on its packets are checked against its entry, and a packet from it in between would be
    /// dropped as spoofed.
    ///
    /// The program goes on as a classic tc filter, not a TCX link: attaching a TCX link waits
    /// for a full RCU grace period with the RTNL lock held (~9 ms here), which stalls every
    /// ADD under way; adding clsact and a cls_bpf filter takes ~0.3 ms each. The filter lives
    /// as long as the interface; the program pinned under `links/` records it.
    pub fn attach(
        &self,
        host_ifname: &str,
        pod_ip: Ipv4Addr,
        endpoint: PodEndpoint,
        accelerate: bool,
        walls: Walls,
    ) -> Result<(), CniError> {
        let _lock = self.lock()?;
        let mut prog = self.program_loaded(accelerate)?;
        self.config_map()?
            .set(0, walls.encode(), 0)
            .map_err(|e| err("writing the network's walls", e))?;
        self.pods_map()?
            .insert(key(pod_ip), endpoint.encode(), 0)
            .map_err(|e| err("publishing the pod", e))?;
        self.host_ends_map()?
            .insert(endpoint.ifindex, endpoint.sandbox.to_ne_bytes(), 0)
            .map_err(|e| err("publishing the host end", e))?;
        let marker = self.link(host_ifname);
        if marker.exists() {
            // An earlier attach (a pool restarted half-way): replace it.
            detach_filter(host_ifname)?;
            let _ = std::fs::remove_file(&marker);
        }
        match tc::qdisc_add_clsact(host_ifname) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(EEXIST) => {}
            Err(e) => return Err(err(&format!("adding clsact to {host_ifname}"), e)),
        }
        let options = TcAttachOptions::Netlink(NlOptions {
            priority: FILTER_PRIORITY,
            handle: TcHandle::new(0, 1),
            classid: None,
        });
        let id = prog
            .attach_with_options(host_ifname, TcAttachType::Ingress, options)
            .map_err(|e| err(&format!("attaching to {host_ifname}"), e))?;
        // The filter stays when this process ends: the link handle is let go without detaching.
        let link = prog.take_link(id).map_err(|e| err("taking the link", e))?;
        std::mem::forget(link);
        prog.pin(&marker).map_err(|e| err("recording the attach", e))
    }

    /// Undo `attach` for whatever of it exists; when the network has no pods left, remove its
    /// program and maps too.
    pub fn detach(&self, host_ifname: &str, pod_ip: Option<Ipv4Addr>) -> Result<(), CniError> {
        if !self.dir.exists() {
            return Ok(());
        }
        let _lock = self.lock()?;
        let link = self.link(host_ifname);
        if link.exists() {
            detach_filter(host_ifname)?;
            // The record is a pinned program (a pinned TCX link from an earlier version).
            match PinnedLink::from_pin(&link) {
                Ok(l) => drop(l.unpin().map_err(|e| err("unpinning the link", e))?),
                Err(_) => std::fs::remove_file(&link).map_err(|e| err("removing the link pin", e))?,
            }
        }
        let gone = |r: Result<(), aya::maps::MapError>, what: &str| match r {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(ENOENT) => Ok(()),
            Err(e) => Err(err(what, e)),
        };
        let mut empty = true;
        // The host end, by the pod's entry or (the pod's address unknown) by its name while
        // the interface is there.
        let mut host_ifindex = std::fs::read_to_string(format!("/sys/class/net/{host_ifname}/ifindex"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if self.pods().exists() {
            let mut pods = self.pinned_pods()?;
            if let Some(ip) = pod_ip {
                if let Ok(ep) = pods.get(ip) {
                    host_ifindex = Some(ep.ifindex);
                }
                gone(pods.remove(ip), "withdrawing the pod")?;
            }
            empty = pods.is_empty();
        }
        if let (Some(index), true) = (host_ifindex, self.host_ends().exists()) {
            gone(self.host_ends_map()?.remove(&index), "withdrawing the host end")?;
        }
        let links_left = std::fs::read_dir(self.links()).map(|d| d.count()).unwrap_or(0);
        if empty && links_left == 0 {
            // Unpinning the cgroup link detaches the sockops program; the maps go with it.
            match PinnedLink::from_pin(self.sockets_link()) {
                Ok(link) => drop(link.unpin().map_err(|e| err("unpinning the sockops link", e))?),
                Err(_) => {
                    let _ = std::fs::remove_file(self.sockets_link());
                }
            }
            for p in [
                self.program(),
                self.pods(),
                self.stats(),
                self.config(),
                self.host_ends(),
            ] {
                let _ = std::fs::remove_file(p);
            }
            let _ = std::fs::remove_dir(self.links());
            // The directory above stays: another network may be creating its own in it.
            let _ = std::fs::remove_dir(&self.dir);
        }
        Ok(())
    }

    pub fn has_link(&self, host_ifname: &str) -> bool {
        self.link(host_ifname).exists()
    }

    /// Whether the pod is published and its host end's link pinned.
    pub fn check(&self, host_ifname: &str, pod_ip: Ipv4Addr, ifindex: u32) -> Result<(), String> {
        if !self.link(host_ifname).exists() {
            return Err(format!("no fast-path link pinned for {host_ifname}"));
        }
        let pods = self.pinned_pods().map_err(|e| e.to_string())?;
        match pods.get(pod_ip) {
            Ok(ep) if ep.ifindex == ifindex => Ok(()),
            Ok(ep) => Err(format!(
                "{pod_ip} is published on ifindex {}, not {ifindex}",
                ep.ifindex
            )),
            Err(e) => Err(format!("{pod_ip} is not published in {PODS_MAP}: {e}")),
        }
    }

    /// The datapath's state: pods and counters.
    pub fn show(&self) -> Result<String, CniError> {
        let mut out = format!(
            "network {}\n",
            self.dir.file_name().and_then(|n| n.to_str()).unwrap_or("")
        );
        if !self.pods().exists() {
            out.push_str("  no datapath loaded (no pods)\n");
            return Ok(out);
        }
        out.push_str(&format!(
            "  socket acceleration: {}\n",
            if self.accelerated() { "on" } else { "off" }
        ));
        out.push_str(&format!("  walls: {}\n", self.walls()?.describe()));
        out.push_str("  pods:\n");
        let mut rows = self.pinned_pods()?.entries();
        rows.sort_by_key(|r| r.0);
        for (ip, ep) in rows {
            let sandbox = if ep.sandbox == 0 {
                "unknown".to_string()
            } else {
                ep.sandbox.to_string()
            };
            out.push_str(&format!(
                "    {ip:<15} ifindex {:<6} mac {} sandbox {sandbox}\n",
                ep.ifindex,
                crate::datapath::mac_string(&ep.mac)
            ));
        }
        out.push_str("  packets:\n");
        for (name, n) in self.counters()?.unwrap_or_default() {
            out.push_str(&format!("    {name:<16} {n}\n"));
        }
        Ok(out)
    }

    /// The packet counters (`STATS`), summed over CPUs; none while no datapath is loaded.
    pub fn counters(&self) -> Result<Option<Vec<(&'static str, u64)>>, CniError> {
        if !self.stats().exists() {
            return Ok(None);
        }
        let data = MapData::from_pin(self.stats()).map_err(|e| err("opening the counters", e))?;
        let stats: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(Map::from_map_data(data).map_err(|e| err("the counters", e))?)
                .map_err(|e| err("the counters' layout", e))?;
        Ok(Some(per_cpu_sums(&stats, &STATS)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walls_come_from_the_network_config() {
        let plain = crate::spec::NetConf::parse(br#"{"cniVersion":"1.0.0","name":"pods","type":"eni-cni"}"#).unwrap();
        assert_eq!(Walls::of(&plain), Walls::default(), "walled off by default");
        let open = crate::spec::NetConf::parse(br#"{"cniVersion":"1.0.0","name":"pods","type":"eni-cni","clusterDNS":"10.66.0.1","allowNodeAccess":true,"allowLinkLocal":true}"#).unwrap();
        assert_eq!(
            Walls::of(&open),
            Walls {
                cluster_dns: Some(Ipv4Addr::new(10, 66, 0, 1)),
                allow_node_access: true,
                allow_link_local: true
            }
        );
    }

    #[test]
    fn endpoints_encode_as_the_c_struct() {
        let ep = PodEndpoint {
            ifindex: 0x01020304,
            mac: [1, 2, 3, 4, 5, 6],
            sandbox: 0xf000_0abc,
        };
        let b = ep.encode();
        assert_eq!(&b[..4], &0x01020304u32.to_ne_bytes());
        assert_eq!(&b[4..10], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&b[10..12], &[0, 0], "padding");
        assert_eq!(&b[12..], &0xf000_0abcu32.to_ne_bytes());
        assert_eq!(PodEndpoint::decode(&b), ep);
        // An older pin's entry: the same first twelve bytes, no sandbox.
        let mut old = [0u8; POD_ENDPOINT_V1_SIZE];
        old.copy_from_slice(&b[..POD_ENDPOINT_V1_SIZE]);
        assert_eq!(PodEndpoint::decode_v1(&old), PodEndpoint { sandbox: 0, ..ep });
        assert_eq!(key(Ipv4Addr::new(10, 0, 0, 1)).to_ne_bytes(), [10, 0, 0, 1]);
    }

    #[test]
    fn walls_encode_as_the_c_struct() {
        let strict = Walls::default();
        assert_eq!(
            strict.encode(),
            [0; NET_CONFIG_SIZE],
            "the strict default is the map's zero row"
        );
        let w = Walls {
            cluster_dns: Some(Ipv4Addr::new(10, 66, 0, 1)),
            allow_node_access: false,
            allow_link_local: true,
        };
        let b = w.encode();
        assert_eq!(&b[..4], &[10, 66, 0, 1], "the address in network order");
        assert_eq!(u32::from_ne_bytes([b[4], b[5], b[6], b[7]]), ALLOW_LINK_LOCAL);
        assert_eq!(Walls::decode(&b), w);
        let open = Walls {
            cluster_dns: None,
            allow_node_access: true,
            allow_link_local: false,
        };
        assert_eq!(Walls::decode(&open.encode()), open);
        assert_eq!(
            w.describe(),
            "node closed but the cluster DNS 10.66.0.1 port 53 (and the ingress there, TCP 80); link-local open"
        );
        assert_eq!(open.describe(), "node open; link-local closed");
    }

    /// The object's maps have the layouts the Rust side reads and writes, and the counters
    /// table has a row per name. Needs root (it loads the object; nothing is pinned).
    #[test]
    fn layouts_match_the_object() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root to load eBPF objects");
            return;
        }
        let mut ebpf = aya::Ebpf::load(OBJECT).expect("the object loads");
        let pods = ebpf.map(PODS_MAP).expect("the pods map");
        let _: HashMap<&MapData, u32, [u8; POD_ENDPOINT_SIZE]> = HashMap::try_from(pods).expect("pods map layout");
        let _: HashMap<&MapData, u32, [u8; HOST_END_SIZE]> =
            HashMap::try_from(ebpf.map(HOST_ENDS_MAP).expect("the host-ends map")).expect("host-ends map layout");
        let stats = ebpf.map(STATS_MAP).expect("the counters map");
        let stats: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(stats).expect("counters layout");
        assert_eq!(stats.len() as usize, STATS.len(), "a counter per name in enum nl_stat");
        let config: Array<&MapData, [u8; NET_CONFIG_SIZE]> =
            Array::try_from(ebpf.map(CONFIG_MAP).expect("the settings map")).expect("settings layout");
        assert_eq!(config.len(), 1, "one row of settings");
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM)
            .expect("the program")
            .try_into()
            .expect("a tc program");
        prog.load().expect("the verifier accepts the program");
        let _: SockHash<&MapData, [u8; SOCK_KEY_SIZE]> =
            SockHash::try_from(ebpf.map(SOCKETS_MAP).expect("the sockets map")).expect("sockets map layout");
        let ops: &mut SockOps = ebpf
            .program_mut(SOCKOPS_PROGRAM)
            .expect("the sockops program")
            .try_into()
            .expect("a sockops program");
        ops.load().expect("the verifier accepts the sockops program");
        let msg: &mut SkMsg = ebpf
            .program_mut(MSG_PROGRAM)
            .expect("the sk_msg program")
            .try_into()
            .expect("an sk_msg program");
        msg.load().expect("the verifier accepts the sk_msg program");
        // The C header's enum agrees with the names.
        let header = include_str!("../../bpf/datapath.h");
        for (i, name) in STATS.iter().enumerate() {
            let c = format!("NL_{} = {i},", name.replace('-', "_").to_uppercase());
            assert!(
                header.replace(' ', "").contains(&c.replace(' ', "")),
                "bpf/datapath.h should have {c}"
            );
        }
        assert!(
            header
                .replace(' ', "")
                .contains(&format!("NL_STAT_MAX={},", STATS.len()))
        );
        for (flag, value) in [
            ("NL_ALLOW_NODE_ACCESS", ALLOW_NODE_ACCESS),
            ("NL_ALLOW_LINK_LOCAL", ALLOW_LINK_LOCAL),
        ] {
            assert!(
                header.replace(' ', "").contains(&format!("{flag}={value},")),
                "bpf/datapath.h should have {flag} = {value}"
            );
        }
    }
}
