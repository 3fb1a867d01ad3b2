//! Node IPAM: each Node without pod CIDRs gets the lowest free block of the cluster's pod network
//! (`--cluster-cidr`, a /24 per node unless the network is smaller), written to
//! `spec.podCIDR`/`spec.podCIDRs`, as kube-controller-manager's range allocator does. Nodes that
//! bring their own (`nodeless node --pod-cidr`) keep theirs, and no block overlapping one is
//! handed out. A Node's block is free again when the Node is deleted.

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use super::{split_key, str_at};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::store::Event;

/// The size of each node's block.
pub const NODE_PREFIX: u8 = 24;

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with("/core/nodes/") {
        vec![ev.key.clone()]
    } else {
        Vec::new()
    }
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    super::all_keys(client, "", "nodes")
}

fn cidrs_of(node: &Value) -> Vec<Ipv4Net> {
    let mut out: Vec<Ipv4Net> = node
        .pointer("/spec/podCIDRs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|c| c.parse().ok())
        .collect();
    if out.is_empty() {
        out.extend(str_at(node, "/spec/podCIDR").parse::<Ipv4Net>().ok());
    }
    out
}

/// The first block of `cluster` that overlaps none of `used`.
pub fn first_free(cluster: Ipv4Net, used: &[Ipv4Net]) -> Option<Ipv4Net> {
    let prefix = NODE_PREFIX.max(cluster.prefix_len());
    let blocks = cluster.subnets(prefix).ok()?;
    blocks.into_iter().find(|b| {
        !used
            .iter()
            .any(|u| u.contains(&b.network()) || b.contains(&u.network()))
    })
}

pub async fn reconcile(client: LocalClient, cluster: Ipv4Net, key: String) -> Result<(), ApiError> {
    let nodes = client.served("", "nodes");
    let (_, name) = split_key(&key);
    let Some(node) = client.get(&nodes, None, name) else {
        return Ok(());
    };
    if !cidrs_of(&node.obj).is_empty() {
        return Ok(());
    }
    let used: Vec<Ipv4Net> = client
        .list(&nodes, None, &|_| true)
        .iter()
        .flat_map(|n| cidrs_of(&n.obj))
        .collect();
    let Some(block) = first_free(cluster, &used) else {
        super::event(
            &client,
            &node.obj,
            "Warning",
            "CIDRNotAvailable",
            &format!("Node {name} status is now: CIDRNotAvailable ({cluster} has no free /{NODE_PREFIX})"),
            "cidrAllocator",
        )
        .await;
        return Ok(());
    };
    let mut obj = (*node.obj).clone();
    obj["spec"]["podCIDR"] = json!(block.to_string());
    obj["spec"]["podCIDRs"] = json!([block.to_string()]);
    client.update(&nodes, &node, obj).await?;
    tracing::info!(node = %name, cidr = %block, "allocated the node's pod CIDR");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_skip_what_nodes_hold() {
        let cluster: Ipv4Net = "10.66.0.0/16".parse().unwrap();
        assert_eq!(first_free(cluster, &[]), Some("10.66.0.0/24".parse().unwrap()));
        let used = ["10.66.0.0/24".parse().unwrap(), "10.66.1.0/25".parse().unwrap()];
        assert_eq!(first_free(cluster, &used), Some("10.66.2.0/24".parse().unwrap()));
        let tiny: Ipv4Net = "10.66.0.0/24".parse().unwrap();
        assert_eq!(first_free(tiny, &["10.66.0.0/24".parse().unwrap()]), None);
    }
}
