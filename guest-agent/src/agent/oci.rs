//! The part of an OCI bundle's `config.json` the agent honours: what the node writes for every
//! container (`sandbox-node/src/spec.rs`). Namespaces, cgroups and seccomp are the host's
//! business: in a microVM the VM is the wall, and the pod's limits are the VM's size.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Config {
    pub process: Process,
    pub root: Root,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub linux: Linux,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    pub user: User,
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub no_new_privileges: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Root {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Deserialize)]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    #[serde(default)]
    pub sysctl: std::collections::BTreeMap<String, String>,
}

impl Config {
    pub fn load(bundle: &Path) -> Result<Config, String> {
        let path = bundle.join("config.json");
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl Mount {
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// The options that are mount(2) data rather than flags (`mode=755`, `size=65536k`...).
    pub fn data(&self) -> String {
        const FLAGS: &[&str] = &[
            "ro",
            "rw",
            "nosuid",
            "noexec",
            "nodev",
            "strictatime",
            "relatime",
            "rbind",
            "bind",
            "rprivate",
            "private",
        ];
        self.options
            .iter()
            .filter(|o| !FLAGS.contains(&o.as_str()))
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    }
}
