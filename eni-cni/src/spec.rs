//! The CNI protocol's data (spec 1.1.0, with 0.4.0 and 1.0.0 configs accepted): the network
//! configuration a runtime passes on stdin, the results and the errors with the spec's codes.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The versions a config may name.
pub const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// Error codes. 1-99 are the spec's; 100 and up are this plugin's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// The interface asked for already exists in the container.
    pub const INTERFACE_EXISTS: u32 = 100;
    /// CHECK found the container's networking not as ADD left it.
    pub const CHECK_FAILED: u32 = 101;
    /// The kernel refused a change.
    pub const NETLINK: u32 = 102;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// How pods are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// eth0 in the pod with a /32, the host end routed to it; no bridge.
    #[default]
    Veth,
    /// The sandbox shares the node's network; nothing is created.
    Host,
    /// eth0 is an ipvlan (L2) child of `parent`, the interface standing for an ENI.
    Ipvlan,
    /// The same with a macvlan (bridge) child, for kernels built without ipvlan.
    Macvlan,
}

impl Mode {
    /// Whether pods hang off a parent interface.
    pub fn has_parent(self) -> bool {
        matches!(self, Mode::Ipvlan | Mode::Macvlan)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration, as a runtime passes it on stdin. A field this plugin does not
/// know is refused (CNI lets a plugin do so), naming the field: a misspelt `fastPath` or
/// `allowNodeAccess` would otherwise be ignored and the network run without what it asked for.
/// The fields a runtime adds on its own (`runtimeConfig`, `capabilities`, `args`, …) are known.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub mode: Mode,
    /// The pool service's socket.
    #[serde(default = "default_pool")]
    pub pool: PathBuf,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// ipvlan: the parent interface.
    #[serde(default)]
    pub parent: Option<String>,
    /// host: the node's address to report.
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Option<Dns>,
    /// veth: the eBPF fast path between pods (on by default).
    #[serde(default = "yes")]
    pub fast_path: bool,
    /// veth, with the fast path: TCP between two pods of the network goes from socket to
    /// socket (sockops and sk_msg), skipping TCP/IP and the veths. Off by default: see the
    /// README for what changes for programs.
    #[serde(default)]
    pub socket_acceleration: bool,
    /// veth, with the fast path: the node address pods may reach on port 53 (UDP and TCP)
    /// while the node is walled off (`allowNodeAccess` false).
    #[serde(default, rename = "clusterDNS")]
    pub cluster_dns: Option<Ipv4Addr>,
    /// veth, with the fast path: pods may reach the node's own addresses (off by default:
    /// only the cluster DNS, and the node's own exchanges with the pod).
    #[serde(default)]
    pub allow_node_access: bool,
    /// veth, with the fast path: pods may reach link-local addresses, 169.254.0.0/16, where
    /// clouds serve instance metadata (off by default).
    #[serde(default)]
    pub allow_link_local: bool,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// What runtimes and conflists add that this plugin has no use for: runtime values for the
    /// capabilities it does not declare, CNI_ARGS-style args, an IPAM section (addresses come
    /// from the pool), and the list-level switches some runtimes copy down.
    #[serde(default)]
    pub runtime_config: Option<Value>,
    #[serde(default)]
    pub capabilities: Option<Value>,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(default, rename = "disableCheck")]
    pub disable_check: Option<Value>,
    #[serde(default, rename = "disableGC")]
    pub disable_gc: Option<Value>,
}

fn yes() -> bool {
    true
}

pub fn default_pool() -> PathBuf {
    PathBuf::from("/run/nodeless/eni/pool.sock")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A network name: letters, digits, `_`, `.` and `-`, starting with a letter or digit.
fn valid_name(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl NetConf {
    /// Decode and check a config: 6 for what is not JSON, 7 naming the field for a bad value,
    /// 1 for a version this plugin does not speak.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::new(code::DECODE, "the network configuration is not JSON", e.to_string()))?;
        if !value.is_object() {
            return Err(CniError::new(
                code::DECODE,
                "the network configuration is not a JSON object",
                "",
            ));
        }
        let conf: NetConf = serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = e.path().to_string();
            CniError::new(
                code::INVALID_CONFIG,
                format!("invalid network configuration field {path}"),
                e.inner().to_string(),
            )
        })?;
        if !SUPPORTED.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("cniVersion {} is not supported", conf.cni_version),
                format!("supported: {}", SUPPORTED.join(", ")),
            ));
        }
        if !valid_name(&conf.name) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration field name",
                format!(
                    "{:?}: letters, digits, _ . - only, starting with a letter or digit",
                    conf.name
                ),
            ));
        }
        if conf.mode.has_parent() && conf.parent.as_deref().is_none_or(str::is_empty) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration field parent",
                "modes ipvlan and macvlan need the parent interface",
            ));
        }
        if let Some(mtu) = conf.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "invalid network configuration field mtu",
                    format!("{mtu} is not between 68 and 65535"),
                ));
            }
        }
        Ok(conf)
    }

    /// Whether the config's version has a verb (GC and STATUS came with 1.1.0).
    pub fn at_least(&self, version: &str) -> bool {
        let parse = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
        parse(&self.cni_version) >= parse(version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: ipnet::IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: ipnet::IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<std::net::IpAddr>,
}

/// An ADD result (1.x layout; `to_json` writes 0.4.0's where asked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Read a prevResult (any supported version).
    pub fn from_value(v: &Value) -> Result<CniResult, CniError> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("invalid network configuration field prevResult.{}", e.path()),
                e.inner().to_string(),
            )
        })
    }

    pub fn to_json(&self, version: &str) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["cniVersion"] = json!(version);
        if version == "0.4.0" {
            // 0.4.0 names each address's IP version.
            if let Some(ips) = v["ips"].as_array_mut() {
                for (ip, cfg) in ips.iter_mut().zip(&self.ips) {
                    ip["version"] = json!(if cfg.address.addr().is_ipv4() { "4" } else { "6" });
                }
            }
        }
        v
    }
}

/// Fuzz targets for the config and result parsers.
#[doc(hidden)]
pub mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked_with_the_spec_codes() {
        let ok = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"pods","type":"eni-cni"}"#).unwrap();
        assert_eq!((ok.mode, ok.pool.clone()), (Mode::Veth, default_pool()));
        assert!(ok.at_least("1.1.0") && ok.at_least("1.0.0"));
        let old = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"pods","type":"eni-cni"}"#).unwrap();
        assert!(!old.at_least("1.1.0"));
        assert_eq!(NetConf::parse(b"{nope").unwrap_err().code, code::DECODE);
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, code::DECODE);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"0.3.1","name":"pods","type":"eni-cni"}"#)
                .unwrap_err()
                .code,
            code::INCOMPATIBLE_VERSION
        );
        let bad =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"pods","type":"eni-cni","mode":"bridge"}"#).unwrap_err();
        assert_eq!(bad.code, code::INVALID_CONFIG);
        assert!(bad.msg.contains("mode"), "{bad}");
        let bad = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"pods","type":"eni-cni","mtu":"big"}"#).unwrap_err();
        assert!(bad.code == code::INVALID_CONFIG && bad.msg.contains("mtu"), "{bad}");
        let bad =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"pods","type":"eni-cni","socketAcceleration":"yes"}"#)
                .unwrap_err();
        assert!(
            bad.code == code::INVALID_CONFIG && bad.msg.contains("socketAcceleration"),
            "{bad}"
        );
        let plain = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"pods","type":"eni-cni"}"#).unwrap();
        assert!(
            plain.fast_path && !plain.socket_acceleration,
            "the fast path is on by default, socket acceleration off"
        );
        let bad =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"pods","type":"eni-cni","clusterDNS":"dns"}"#).unwrap_err();
        assert!(
            bad.code == code::INVALID_CONFIG && bad.msg.contains("clusterDNS"),
            "{bad}"
        );
        let bad = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"pods","type":"eni-cni","allowNodeAccess":"yes"}"#)
            .unwrap_err();
        assert!(
            bad.code == code::INVALID_CONFIG && bad.msg.contains("allowNodeAccess"),
            "{bad}"
        );
        let bad = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"-x","type":"eni-cni"}"#).unwrap_err();
        assert!(bad.code == code::INVALID_CONFIG && bad.msg.contains("name"), "{bad}");
        let bad = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"x","type":"eni-cni","mode":"ipvlan"}"#).unwrap_err();
        assert!(bad.code == code::INVALID_CONFIG && bad.msg.contains("parent"), "{bad}");
        // A misspelt field is refused, naming it; what runtimes add is not.
        let bad =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"x","type":"eni-cni","fastpath":false}"#).unwrap_err();
        assert!(
            bad.code == code::INVALID_CONFIG && bad.details.contains("fastpath"),
            "{bad}"
        );
        let runtime = br#"{"cniVersion":"1.1.0","name":"x","type":"eni-cni","runtimeConfig":{"portMappings":[]},
            "capabilities":{"portMappings":true},"args":{"cni":{}},"ipam":{},"prevResult":{"ips":[]}}"#;
        assert!(NetConf::parse(runtime).is_ok());
        let bad = NetConf::parse(br#"{"cniVersion":"1.0.0","type":"eni-cni"}"#).unwrap_err();
        assert!(
            bad.code == code::INVALID_CONFIG && bad.details.contains("name"),
            "{bad}"
        );
    }

    #[test]
    fn results_follow_the_version_asked() {
        let r = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                sandbox: "/run/netns/x".into(),
            }],
            ips: vec![IpConfig {
                address: "10.0.0.2/32".parse().unwrap(),
                gateway: Some("169.254.1.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: None,
            }],
            dns: Dns::default(),
        };
        let v = r.to_json("1.1.0");
        assert_eq!(v["ips"][0]["address"], "10.0.0.2/32");
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(r.to_json("0.4.0")["ips"][0]["version"], "4");
        assert_eq!(CniResult::from_value(&v).unwrap(), r);
    }
}
