//! The pod's network inside the VM: the NIC QEMU gave the guest carries the MAC of the pod's
//! interface on the host, and gets that interface's addresses, permanent neighbours and routes,
//! so the pod keeps the identity its CNI plugin gave it.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use nodeless_guest_agent::proto::Interface;

fn mac_of(l: &LinkMessage) -> Option<Vec<u8>> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.clone()),
        _ => None,
    })
}

pub fn parse_mac(s: &str) -> Result<Vec<u8>, String> {
    let bytes: Result<Vec<u8>, _> = s.split(':').map(|h| u8::from_str_radix(h, 16)).collect();
    match bytes {
        Ok(b) if b.len() == 6 => Ok(b),
        _ => Err(format!("bad MAC address {s:?}")),
    }
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("bad address {s:?}"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or(format!("bad prefix in {s:?}"))?;
    Ok((ip, len))
}

fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -(nix::errno::Errno::EEXIST as i32))
}

pub async fn configure(interfaces: &[Interface]) -> Result<(), String> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    tokio::spawn(conn);
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| format!("listing links: {e}"))?;
    for l in &links {
        if l.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(n) if n == "lo"))
        {
            up(&handle, l.header.index, 0).await?;
        }
    }
    for i in interfaces {
        let mac = parse_mac(&i.mac)?;
        let link = links
            .iter()
            .find(|l| mac_of(l).as_deref() == Some(&mac[..]))
            .ok_or_else(|| format!("no NIC with MAC {} in the VM", i.mac))?;
        configure_one(&handle, link.header.index, i).await?;
    }
    Ok(())
}

async fn up(handle: &Handle, index: u32, mtu: u32) -> Result<(), String> {
    let mut b = LinkUnspec::new_with_index(index).up();
    if mtu > 0 {
        b = b.mtu(mtu);
    }
    handle
        .link()
        .set(b.build())
        .execute()
        .await
        .map_err(|e| format!("bringing link {index} up: {e}"))
}

async fn configure_one(handle: &Handle, index: u32, i: &Interface) -> Result<(), String> {
    up(handle, index, i.mtu).await?;
    for a in &i.addresses {
        let (ip, len) = parse_cidr(a)?;
        match handle.address().add(index, IpAddr::V4(ip), len).execute().await {
            Ok(()) => {}
            Err(e) if exists(&e) => {}
            Err(e) => return Err(format!("adding {a}: {e}")),
        }
    }
    for n in &i.neighbours {
        let ip: Ipv4Addr = n.ip.parse().map_err(|_| format!("bad neighbour {:?}", n.ip))?;
        handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&parse_mac(&n.mac)?)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| format!("neighbour {}: {e}", n.ip))?;
    }
    // Routes on the link first: gateways may need them.
    let mut routes: Vec<_> = i.routes.iter().collect();
    routes.sort_by_key(|r| !r.gateway.is_empty());
    for r in routes {
        let (dst, len) = parse_cidr(&r.destination)?;
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, len)
            .output_interface(index);
        if r.gateway.is_empty() {
            b = b.scope(RouteScope::Link);
        } else {
            let gw: Ipv4Addr = r.gateway.parse().map_err(|_| format!("bad gateway {:?}", r.gateway))?;
            b = b.gateway(gw);
            if r.onlink {
                b = b.onlink();
            }
        }
        match handle.route().add(b.build()).replace().execute().await {
            Ok(()) => {}
            Err(e) if exists(&e) => {}
            Err(e) => return Err(format!("route {} via {:?}: {e}", r.destination, r.gateway)),
        }
    }
    Ok(())
}
