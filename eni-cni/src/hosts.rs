//! Pods on other hosts: a route to each other Node's pod CIDRs through that host's address, as
//! Terway and Calico do in VPC route mode (hosts on one L2 segment, or a VPC route table that
//! carries the same routes). The routes follow the cluster's Nodes (`spec.podCIDRs`, the
//! `InternalIP` address) through the shared watch kernel; a Node that goes takes its routes with
//! it. Routes this module adds carry their own protocol number ([`PROTO`]), so they are told
//! from anyone else's and removed when the node stops.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use nodeless_watch::Follow;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

/// The routing protocol number of the routes to other hosts' pods (`ip route … proto 0x4e`).
pub const PROTO: u8 = 0x4e;

/// Each other Node's pod CIDRs and the address to send them to.
pub fn wanted(nodes: &[std::sync::Arc<Node>], own: &str) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for node in nodes {
        if node.metadata.name.as_deref() == Some(own) {
            continue;
        }
        let Some(spec) = &node.spec else { continue };
        let cidrs: Vec<&String> = match (&spec.pod_cidrs, &spec.pod_cidr) {
            (Some(list), _) if !list.is_empty() => list.iter().collect(),
            (_, Some(one)) => vec![one],
            _ => continue,
        };
        let via = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
        let Some(via) = via.filter(|v| !v.is_loopback() && !v.is_unspecified()) else {
            continue;
        };
        for c in cidrs {
            if let Ok(net) = c.parse::<Ipv4Net>() {
                out.insert(net.trunc(), via);
            }
        }
    }
    out
}

/// The routes this module holds now.
async fn held(h: &Handle) -> Result<BTreeMap<Ipv4Net, (Ipv4Addr, RouteMessage)>, rtnetlink::Error> {
    let mut out = BTreeMap::new();
    let mut s = h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    while let Some(m) = s.try_next().await? {
        if m.header.protocol != RouteProtocol::Other(PROTO) {
            continue;
        }
        let mut dst = None;
        let mut gw = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(rtnetlink::packet_route::route::RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(rtnetlink::packet_route::route::RouteAddress::Inet(g)) => gw = Some(*g),
                _ => {}
            }
        }
        if let (Some(d), Some(g)) = (dst, gw) {
            if let Ok(net) = Ipv4Net::new(d, m.header.destination_prefix_length) {
                out.insert(net, (g, m));
            }
        }
    }
    Ok(out)
}

/// Make the routes to other hosts' pods what `want` says; returns how many changed.
pub async fn sync(h: &Handle, want: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Result<usize, rtnetlink::Error> {
    let have = held(h).await?;
    let mut changed = 0;
    for (net, (via, msg)) in &have {
        if want.get(net) != Some(via) {
            h.route().del(msg.clone()).execute().await?;
            changed += 1;
        }
    }
    for (net, via) in want {
        if have.get(net).map(|(v, _)| v) == Some(via) {
            continue;
        }
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.addr(), net.prefix_len())
            .gateway(*via)
            .protocol(RouteProtocol::Other(PROTO))
            .build();
        h.route().add(msg).replace().execute().await?;
        changed += 1;
    }
    Ok(changed)
}

/// Follow the cluster's Nodes and keep the routes to their pods, until the task is dropped; the
/// caller removes the routes afterwards with [`clear`].
pub async fn run(client: kube::Client, own: String) {
    let h = match crate::datapath::host() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "routes to other hosts' pods: no netlink");
            return;
        }
    };
    let mut follow = Follow::new(client, "watch (routes to other hosts' pods stay as they are)");
    let nodes = follow.all::<Node>();
    while follow.changed().await {
        let want = wanted(&nodes.state(), &own);
        match sync(&h, &want).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(changed = n, hosts = want.len(), "routes to other hosts' pods"),
            Err(e) => tracing::warn!(error = %e, "routing to other hosts' pods"),
        }
    }
}

/// Remove every route to other hosts' pods.
pub async fn clear() {
    if let Ok(h) = crate::datapath::host() {
        if let Err(e) = sync(&h, &BTreeMap::new()).await {
            tracing::warn!(error = %e, "removing the routes to other hosts' pods");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str, ip: &str) -> std::sync::Arc<Node> {
        std::sync::Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn other_hosts_pod_cidrs_go_through_their_addresses() {
        let nodes = vec![
            node("a", "10.66.1.0/24", "192.0.2.1"),
            node("b", "10.66.2.0/24", "192.0.2.2"),
            node("local", "10.66.3.0/24", "127.0.0.1"),
        ];
        let want = wanted(&nodes, "a");
        assert_eq!(want.len(), 1, "not itself, not a loopback address: {want:?}");
        assert_eq!(
            want.get(&"10.66.2.0/24".parse().unwrap()),
            Some(&"192.0.2.2".parse().unwrap())
        );
    }
}
