//! An NFS export for tests and benchmarks of the NAS driver: the `nfs-server` binary of this
//! crate (NFSv3 over a temporary directory, NFS, MOUNT and portmapper on one loopback port),
//! stopped when dropped. What the export holds is the files under [`NfsServer::root`].

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

pub struct NfsServer {
    child: Option<Child>,
    pub root: tempfile::TempDir,
    /// The path clients mount.
    pub export: String,
    pub port: u16,
}

impl NfsServer {
    pub fn start() -> Result<NfsServer> {
        let root = tempfile::Builder::new().prefix("nodeless-nfs-").tempdir()?;
        let mut child = Command::new(crate::workspace_binary("nfs-server")?)
            .args(["--listen", "127.0.0.1:0", "--export", "/export", "--root"])
            .arg(root.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting nfs-server (cargo build --bins)")?;
        let stdout = child.stdout.take().context("nfs-server's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .with_context(|| format!("nfs-server said {line:?}"))?;
        Ok(NfsServer {
            child: Some(child),
            root,
            export: "/export".into(),
            port,
        })
    }

    /// The mount options that reach it (`port=`, `mountport=`), as a PV or class gives them.
    pub fn mount_options(&self) -> String {
        format!("vers=3,port={p},mountport={p},nolock,tcp", p = self.port)
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
