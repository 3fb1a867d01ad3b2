//! Egress: pods reach hosts beyond the node with the node's address (masquerade), as a VPC's
//! SNAT gateway would give them. One nftables table per pool, holding one rule: traffic from the
//! pool's CIDRs to anywhere outside them (and outside the cluster's pod network, when it spans
//! hosts) is masqueraded on its way out. Traffic between pods and to the node itself is left
//! alone.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

pub struct Snat {
    table: String,
}

fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft (apt-get install nftables): {e}"))?;
    child
        .stdin
        .take()
        .ok_or("nft's stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Snat {
    /// The table's name for these CIDRs.
    pub fn table_for(cidrs: &[Ipv4Net]) -> String {
        let first = cidrs.first().map(|c| c.to_string()).unwrap_or_default();
        format!("nodeless_eni_{}", first.replace(['.', '/'], "_"))
    }

    /// Install (or replace, in one transaction) the masquerade rule for these CIDRs. Traffic to
    /// `cluster` (the pod network of every host, when it spans several) keeps its pod address.
    pub fn install(cidrs: &[Ipv4Net], cluster: &[Ipv4Net]) -> Result<Snat, String> {
        let table = Self::table_for(cidrs);
        let set = cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let inside = cidrs
            .iter()
            .chain(cluster)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        nft(&format!(
            "table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {{ {set} }} ip daddr != {{ {inside} }} masquerade\n  }}\n}}\n"
        ))?;
        Ok(Snat { table })
    }

    /// Remove the rule (when the pool stops).
    pub fn remove(&self) -> Result<(), String> {
        nft(&format!("table ip {t}\ndelete table ip {t}\n", t = self.table))
    }
}
