//! A local etcd cluster of Debian's `etcd` for tests and benchmarks: every member on loopback
//! with ports picked free, data in a temporary directory, every member killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

struct Member {
    name: String,
    client: String,
    child: Option<Child>,
}

impl EtcdCluster {
    /// Start `n` members and wait until they have a leader.
    pub fn start(n: usize) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("nodeless-etcd-").tempdir()?;
        let token = dir
            .path()
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (crate::free_port(), crate::free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let log = std::fs::File::create(dir.path().join(format!("{name}.log")))?;
            let client_url = format!("http://127.0.0.1:{client}");
            let child = Command::new("etcd")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args([
                    "--listen-client-urls",
                    &client_url,
                    "--advertise-client-urls",
                    &client_url,
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", &token])
                // No metrics or pprof listeners beyond the client URL; no stray files.
                .args(["--enable-v2=false", "--logger=zap", "--log-outputs=stderr"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting etcd (Debian package etcd-server)")?;
            members.push(Member {
                name,
                client: client_url,
                child: Some(child),
            });
        }
        let cluster = Self { dir, members };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if cluster.leader().is_ok() {
                return Ok(cluster);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("etcd had no leader within 30 s: {}", cluster.logs())
    }

    /// The client URLs of every member started, comma-separated (for `--etcd`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the member that is leader now (asked of the members still running).
    pub fn leader(&self) -> Result<usize> {
        let running: Vec<&Member> = self.members.iter().filter(|m| m.child.is_some()).collect();
        let endpoints: Vec<&str> = running.iter().map(|m| m.client.as_str()).collect();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--command-timeout=2s", "--endpoints", &endpoints.join(",")])
            .args(["endpoint", "status", "-w", "json"])
            .output()
            .context("etcdctl (Debian package etcd-client)")?;
        let statuses: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("etcdctl endpoint status: {}", String::from_utf8_lossy(&out.stderr)))?;
        for s in statuses.as_array().into_iter().flatten() {
            let id = s
                .pointer("/Status/header/member_id")
                .and_then(serde_json::Value::as_u64);
            let leader = s.pointer("/Status/leader").and_then(serde_json::Value::as_u64);
            if id.is_some() && id == leader {
                let endpoint = s["Endpoint"].as_str().unwrap_or_default();
                if let Some(i) = self.members.iter().position(|m| m.client == endpoint) {
                    return Ok(i);
                }
            }
        }
        bail!("no leader among {endpoints:?}")
    }

    /// The process ids of the members still running.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name))).unwrap_or_default();
                format!("--- {} ---\n{}", m.name, crate::tail(&log, 1500))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
