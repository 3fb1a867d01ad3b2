//! Interfaces, addresses, routes and neighbours, through rtnetlink, in the host's and the
//! pod's network namespaces.
//!
//! veth mode (Calico's and Cilium's shape): the pod's `eth0` holds its address as a /32 and
//! reaches everything through `169.254.1.1`, a gateway that exists only as a permanent
//! neighbour entry pointing at the host end's fixed MAC (ee:ee:ee:ee:ee:ee); the host end has
//! no address, and a /32 route on the host sends the pod's address to it. No bridge, no ARP for
//! the gateway, no iptables. The eBPF programs on the host ends then redirect between pods
//! directly.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, IpVlanMode, LinkAttribute, LinkMessage, MacVlanMode};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
use rtnetlink::{Handle, LinkIpVlan, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use crate::spec::{CniError, code};

/// The pods' gateway in veth mode: link-local, the same in every pod.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The MAC of every host end, so the pod's neighbour entry needs no lookup.
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// BIG TCP for IPv4 (Linux 6.3+): both ends of a pod's veth build and accept TCP segments up
/// to 192 KiB instead of 64 KiB, a third as many packets through the stack for the same bulk
/// transfer (Cilium's `enable-ipv4-big-tcp` sets the same size). A kernel without it ignores
/// the attributes.
pub const BIG_TCP: u32 = 196_608;

pub fn mac_string(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The host end's name for an attachment: `nl` and 12 hex digits of a hash (15 bytes at most).
pub fn host_ifname(network: &str, container: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{network}/{container}/{ifname}"));
    format!("nl{}", &hex::encode(digest)[..12])
}

fn netlink_err(what: &str, e: rtnetlink::Error) -> CniError {
    CniError::new(code::NETLINK, what.to_string(), e.to_string())
}

/// The errno of a kernel refusal.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// The kernel gives every namespace's loopback device index 1.
const LOOPBACK_IFINDEX: u32 = 1;

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;
const EOPNOTSUPP: i32 = 95;

/// A netlink handle in the current (host) namespace.
pub fn host() -> Result<Handle, CniError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| CniError::new(code::IO, "opening a netlink socket", e.to_string()))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// On a thread of its own: join the namespace, open a netlink socket there (it stays there
/// when the thread ends) and hand its connection to the runtime.
fn connect_inside(rt: &tokio::runtime::Handle, netns: &File) -> Result<Handle, CniError> {
    let _enter = rt.enter();
    let made = nix::sched::setns(netns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| e.to_string())
        .and_then(|()| rtnetlink::new_connection().map_err(|e| e.to_string()));
    let (conn, handle, _) =
        made.map_err(|e| CniError::new(code::IO, "opening a netlink socket in the container's namespace", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

fn thread_lost() -> CniError {
    CniError::new(
        code::IO,
        "opening a netlink socket in the container's namespace",
        "the netlink thread ended without an answer",
    )
}

/// A netlink handle whose socket lives in the namespace at `netns`.
pub fn inside(netns: &File) -> Result<Handle, CniError> {
    let rt = tokio::runtime::Handle::current();
    std::thread::scope(|s| {
        s.spawn(|| connect_inside(&rt, netns))
            .join()
            .unwrap_or_else(|_| Err(thread_lost()))
    })
}

/// [`inside`] without blocking: the thread that joins the namespace runs while the caller's
/// other work goes on.
pub async fn inside_async(netns: &File) -> Result<Handle, CniError> {
    let ns = netns.try_clone().map_err(|e| {
        CniError::new(
            code::IO,
            "opening a netlink socket in the container's namespace",
            e.to_string(),
        )
    })?;
    let rt = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(connect_inside(&rt, &ns));
    });
    rx.await.unwrap_or_else(|_| Err(thread_lost()))
}

/// Open a network namespace path; code 3 when it does not exist.
pub fn open_netns(path: &Path) -> Result<File, CniError> {
    File::open(path).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("network namespace {} cannot be opened", path.display()),
            e.to_string(),
        )
    })
}

pub async fn link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(l) => Ok(l),
        Err(e) if matches!(errno(&e), Some(ENODEV) | Some(ENOENT)) => Ok(None),
        Err(e) => Err(netlink_err("reading a link", e)),
    }
}

pub fn link_mac(l: &LinkMessage) -> Vec<u8> {
    l.attributes
        .iter()
        .find_map(|a| {
            if let LinkAttribute::Address(m) = a {
                Some(m.clone())
            } else {
                None
            }
        })
        .unwrap_or_default()
}

pub async fn delete_link(h: &Handle, name: &str) -> Result<bool, CniError> {
    let Some(l) = link(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(l.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if matches!(errno(&e), Some(ENODEV) | Some(ENOENT)) => Ok(false),
        Err(e) => Err(netlink_err("deleting a link", e)),
    }
}

async fn set_up(h: &Handle, index: u32) -> Result<(), CniError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| netlink_err("setting a link up", e))
}

async fn add_route(h: &Handle, msg: rtnetlink::packet_route::route::RouteMessage, what: &str) -> Result<(), CniError> {
    match h.route().add(msg).replace().execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(netlink_err(what, e)),
    }
}

/// IPv4 addresses on a link, with prefix length.
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<Ipv4Net>, CniError> {
    let mut out = Vec::new();
    let mut s = h.address().get().set_link_index_filter(index).execute();
    while let Some(m) = s.try_next().await.map_err(|e| netlink_err("reading addresses", e))? {
        for a in &m.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                out.extend(Ipv4Net::new(*ip, m.header.prefix_len).ok());
            }
        }
    }
    Ok(out)
}

/// IPv4 routes of the main table: (destination, gateway, output interface).
pub async fn routes(h: &Handle) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>, Option<u32>)>, CniError> {
    let mut out = Vec::new();
    let mut s = h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    while let Some(m) = s.try_next().await.map_err(|e| netlink_err("reading routes", e))? {
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let (mut gw, mut oif) = (None, None);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        out.extend(
            Ipv4Net::new(dst, m.header.destination_prefix_length)
                .ok()
                .map(|n| (n, gw, oif)),
        );
    }
    Ok(out)
}

/// What a pod ends up with.
pub struct Attached {
    pub host_ifname: Option<String>,
    pub host_ifindex: u32,
    pub pod_mac: Vec<u8>,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// A pod's veth pair, made before its address is known.
#[derive(Debug, Clone)]
pub struct VethPair {
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub pod_ifindex: u32,
    pub pod_mac: Vec<u8>,
}

/// veth mode, first half: the pair (the pod end created straight in the pod's namespace), both
/// ends up, and in the pod the gateway's neighbour entry and routes. Nothing here needs the
/// pod's address, so it runs while the pool picks one; [`veth_address`] finishes. The host
/// side and the pod side go over their own netlink sockets at once.
///
/// The pod's netlink handle is still being opened when this starts (`pod`), and the pair is made
/// meanwhile. A pod interface of that name already there makes the kernel refuse the pair:
/// that is code 100, and nothing was created.
pub async fn veth_create(
    host: &Handle,
    pod: impl std::future::Future<Output = Result<Handle, CniError>>,
    netns: &File,
    host_name: &str,
    ifname: &str,
    mtu: Option<u32>,
) -> Result<(VethPair, Handle), CniError> {
    use std::os::fd::AsRawFd;
    // Both ends are created down and set up below: the pod end because a veth without its peer
    // refuses to open (the kernel configures it before the pair is joined), the host end so
    // that IPv6 is off before it opens (`host_side`).
    let pair = || {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(ifname.to_string())
            .setns_by_fd(netns.as_raw_fd());
        let mut end = LinkVeth::new(host_name, ifname).address(HOST_MAC.to_vec());
        for a in [
            LinkAttribute::GsoIpv4MaxSize(BIG_TCP),
            LinkAttribute::GroIpv4MaxSize(BIG_TCP),
        ] {
            peer = peer.append_extra_attribute(a.clone());
            end = end.append_extra_attribute(a);
        }
        if let Some(m) = mtu {
            peer = peer.mtu(m);
            end = end.mtu(m);
        }
        end.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build()))).build()
    };
    let first = async { host.link().add(pair()).execute().await };
    let (first, pod) = tokio::join!(first, pod);
    let pod = pod?;
    match first {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(EEXIST) => {
            // Either the pod has the interface (not ours to touch: code 100) or a host end is
            // left by an ADD that failed half-way (removed, and the pair made again).
            if link(&pod, ifname).await?.is_some() {
                return Err(CniError::new(
                    code::INTERFACE_EXISTS,
                    format!("interface {ifname} already exists in the container"),
                    "",
                ));
            }
            delete_link(host, host_name).await?;
            host.link()
                .add(pair())
                .execute()
                .await
                .map_err(|e| netlink_err("creating the veth pair", e))?;
        }
        Err(e) => return Err(netlink_err("creating the veth pair", e)),
    }
    let pod = &pod;
    let host_side = async {
        let host_link = link(host, host_name)
            .await?
            .ok_or_else(|| CniError::new(code::NETLINK, "the host end vanished", host_name.to_string()))?;
        ipv6_off(host_name);
        set_up(host, host_link.header.index).await?;
        Ok::<u32, CniError>(host_link.header.index)
    };
    let pod_side = async {
        let pod_link = link(pod, ifname).await?.ok_or_else(|| {
            CniError::new(
                code::NETLINK,
                "the pod end did not arrive in the pod's namespace",
                ifname.to_string(),
            )
        })?;
        let index = pod_link.header.index;
        // Both up before any route: the kernel refuses routes through a link that is down, and
        // checks an onlink gateway against the local table, which lo's address creates.
        // Setting an up link up changes nothing, so lo needs no look first.
        tokio::try_join!(set_up(pod, index), set_up(pod, LOOPBACK_IFINDEX))?;
        let neighbour = async {
            pod.neighbours()
                .add(index, IpAddr::V4(GATEWAY))
                .link_layer_address(&HOST_MAC)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| netlink_err("adding the gateway's neighbour entry", e))
        };
        let gateway = add_route(
            pod,
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(GATEWAY, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build(),
            "routing the gateway",
        );
        // onlink: the gateway is reachable through this interface whatever else the pod has
        // (so this route does not wait for the one above).
        let default = add_route(
            pod,
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .gateway(GATEWAY)
                .output_interface(index)
                .onlink()
                .build(),
            "adding the default route",
        );
        tokio::try_join!(neighbour, gateway, default)?;
        Ok::<(u32, Vec<u8>), CniError>((index, link_mac(&pod_link)))
    };
    let (host_ifindex, (pod_ifindex, pod_mac)) = tokio::try_join!(host_side, pod_side)?;
    Ok((
        VethPair {
            host_ifname: host_name.to_string(),
            host_ifindex,
            pod_ifindex,
            pod_mac,
        },
        pod.clone(),
    ))
}

/// Turn IPv6 off on a host end before it opens. The datapath is IPv4, and with IPv6 on, each
/// host end adds a link-local address and three routes to the host's IPv6 tables, which the
/// kernel walks in full at every link change (`rt6_sync_down_dev`): with 380 pods on the host,
/// that and IPv6's set-up were a sixth of the CPU the pool spent on an ADD (perf). A kernel
/// without IPv6 has no such file, and nothing to do.
fn ipv6_off(ifname: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"), "1");
}

/// veth mode, second half: the pod's /32 on its end and the host's route to it.
pub async fn veth_address(host: &Handle, pod: &Handle, pair: &VethPair, ip: Ipv4Addr) -> Result<Attached, CniError> {
    let host_route = add_route(
        host,
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(pair.host_ifindex)
            .scope(RouteScope::Link)
            .build(),
        "routing the pod's address to its host end",
    );
    let pod_address = async {
        match pod.address().add(pair.pod_ifindex, IpAddr::V4(ip), 32).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(netlink_err("adding the pod's address", e)),
        }
    };
    tokio::try_join!(host_route, pod_address)?;
    Ok(Attached {
        host_ifname: Some(pair.host_ifname.clone()),
        host_ifindex: pair.host_ifindex,
        pod_mac: pair.pod_mac.clone(),
        address: Ipv4Net::new(ip, 32).unwrap_or_default(),
        gateway: GATEWAY,
    })
}

/// ipvlan (L2) or macvlan (bridge) mode: a child of `parent` moved into the pod as `ifname`,
/// with the address in its subnet and the subnet's first address as the gateway.
pub async fn child_add(
    host: &Handle,
    pod: &Handle,
    netns: &File,
    macvlan: bool,
    parent: &str,
    ifname: &str,
    ip: Ipv4Addr,
    subnet: Ipv4Net,
    mtu: Option<u32>,
) -> Result<Attached, CniError> {
    use std::os::fd::AsRawFd;
    let parent_link = link(host, parent).await?.ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration field parent",
            format!("no interface {parent} on the host"),
        )
    })?;
    let temp = format!(
        "nv{}",
        &hex::encode(Sha256::digest(format!("{}/{ifname}", netns.as_raw_fd())))[..10]
    );
    let parent_index = parent_link.header.index;
    let child = if macvlan {
        let b = LinkMacVlan::new(&temp, parent_index, MacVlanMode::Bridge)
            .setns_by_fd(netns.as_raw_fd())
            .name(ifname.to_string());
        if let Some(m) = mtu { b.mtu(m) } else { b }.build()
    } else {
        let b = LinkIpVlan::new(&temp, parent_index, IpVlanMode::L2)
            .setns_by_fd(netns.as_raw_fd())
            .name(ifname.to_string());
        if let Some(m) = mtu { b.mtu(m) } else { b }.build()
    };
    let kind = if macvlan { "macvlan" } else { "ipvlan" };
    match host.link().add(child).execute().await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(EOPNOTSUPP) => {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("unsupported field mode: {kind}"),
                format!("this kernel has no {kind} driver (CONFIG_{})", kind.to_uppercase()),
            ));
        }
        Err(e) => return Err(netlink_err(&format!("creating the {kind} interface"), e)),
    }
    let pod_link = link(pod, ifname).await?.ok_or_else(|| {
        CniError::new(
            code::NETLINK,
            "the ipvlan interface did not arrive in the pod's namespace",
            ifname.to_string(),
        )
    })?;
    let index = pod_link.header.index;
    pod.address()
        .add(index, IpAddr::V4(ip), subnet.prefix_len())
        .execute()
        .await
        .map_err(|e| netlink_err("adding the pod's address", e))?;
    set_up(pod, index).await?;
    let gateway = subnet.hosts().next().unwrap_or(subnet.addr());
    add_route(
        pod,
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(gateway)
            .output_interface(index)
            .build(),
        "adding the default route",
    )
    .await?;
    Ok(Attached {
        host_ifname: None,
        host_ifindex: 0,
        pod_mac: link_mac(&pod_link),
        address: Ipv4Net::new(ip, subnet.prefix_len()).unwrap_or_default(),
        gateway,
    })
}

/// The host's first global IPv4 address.
pub async fn host_address(h: &Handle) -> Result<Option<Ipv4Addr>, CniError> {
    let mut s = h.address().get().execute();
    while let Some(m) = s.try_next().await.map_err(|e| netlink_err("reading addresses", e))? {
        if m.header.scope != rtnetlink::packet_route::address::AddressScope::Universe {
            continue;
        }
        for a in &m.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                return Ok(Some(*ip));
            }
        }
    }
    Ok(None)
}

/// Make sure the host forwards IPv4 between its interfaces (pods reach each other through it).
pub fn enable_forwarding() -> Result<(), CniError> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path).map(|s| s.trim() == "1").unwrap_or(false) {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|e| CniError::new(code::IO, "enabling IPv4 forwarding", e.to_string()))
}

/// Make `ip` a local address of the host (a /32 on `lo`), for services such as cluster DNS that
/// pods reach through their host route; nothing if it already is.
pub async fn add_loopback_address(h: &Handle, ip: Ipv4Addr) -> Result<(), CniError> {
    let lo = link(h, "lo")
        .await?
        .ok_or_else(|| CniError::new(code::NETLINK, "the host has no lo", ""))?;
    match h.address().add(lo.header.index, IpAddr::V4(ip), 32).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(netlink_err("adding an address to lo", e)),
    }
}

/// Undo [`add_loopback_address`].
pub async fn del_loopback_address(h: &Handle, ip: Ipv4Addr) -> Result<(), CniError> {
    let Some(lo) = link(h, "lo").await? else { return Ok(()) };
    let mut s = h.address().get().set_link_index_filter(lo.header.index).execute();
    while let Some(m) = s.try_next().await.map_err(|e| netlink_err("reading addresses", e))? {
        let ours = m.header.prefix_len == 32
            && m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(a)) if *a == ip));
        if ours {
            h.address()
                .del(m)
                .execute()
                .await
                .map_err(|e| netlink_err("removing an address from lo", e))?;
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes the test's namespace (and with it the pod end; the host end goes with its peer)
    /// even when an assertion fails.
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }

    /// Both ends of a pod's veth carry BIG TCP's segment sizes. Needs root (it makes a
    /// namespace and a veth pair, named after this process, and removes them).
    #[tokio::test]
    async fn both_veth_ends_take_big_tcp() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = Netns(format!("nlgso{}", std::process::id()));
        assert!(
            std::process::Command::new("ip")
                .args(["netns", "add", &ns.0])
                .status()
                .unwrap()
                .success()
        );
        let file = open_netns(&Path::new("/run/netns").join(&ns.0)).unwrap();
        let host = host().unwrap();
        let host_name = format!("nlgso{}", std::process::id());
        let (_, pod) = veth_create(&host, inside_async(&file), &file, &host_name, "eth0", None)
            .await
            .unwrap();
        let sizes = |l: LinkMessage| {
            let gso = l.attributes.iter().find_map(|a| {
                if let LinkAttribute::GsoIpv4MaxSize(n) = a {
                    Some(*n)
                } else {
                    None
                }
            });
            let gro = l.attributes.iter().find_map(|a| {
                if let LinkAttribute::GroIpv4MaxSize(n) = a {
                    Some(*n)
                } else {
                    None
                }
            });
            (gso, gro)
        };
        let host_end = link(&host, &host_name).await.unwrap().expect("the host end");
        let pod_end = link(&pod, "eth0").await.unwrap().expect("the pod end");
        assert_eq!(sizes(host_end), (Some(BIG_TCP), Some(BIG_TCP)), "host end");
        assert_eq!(sizes(pod_end), (Some(BIG_TCP), Some(BIG_TCP)), "pod end");
        let _ = delete_link(&host, &host_name).await;
    }
}
