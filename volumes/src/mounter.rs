//! The mount process, `nodeless csi fuse-mount --config <file>`: reads the configuration a
//! driver wrote (its `kind` says which file system) and serves that mount until it is
//! unmounted. See [`crate::fuse`] for how drivers start and find these processes.

use std::path::Path;

use serde::Deserialize;

use crate::fuse::exit;

/// A mount's configuration, by kind.
#[derive(Deserialize)]
#[serde(tag = "kind")]
enum Config {
    #[serde(rename = "oss")]
    Oss(crate::oss::params::MountConfig),
    #[serde(rename = "nas")]
    Nas(crate::nas::MountConfig),
}

/// Serve the mount `config_file` describes; the process's exit code.
pub fn run(config_file: &Path) -> i32 {
    let c: Config = match std::fs::read(config_file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fuse-mount: {}: {e}", config_file.display());
            return exit::CONFIG;
        }
    };
    match c {
        Config::Oss(c) => crate::oss::run_mount(c),
        Config::Nas(c) => crate::nas::run_mount(c),
    }
}
