//! `nodeless down`: stop the `nodeless up` of a data directory and, with `--purge`, remove
//! everything it made (what `kind delete cluster` or k3s's killall script give their users).
//! `up` leaves a record in the data directory (`up.json`: its PID, node name, pod networks,
//! kubeconfig and load-balancer interface) for `down` to find; a record whose process is gone
//! still says what a purge must remove.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long `down` waits for `up` to stop on SIGTERM before it kills it.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// What a running `nodeless up` tells a later `nodeless down`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpRecord {
    pub pid: u32,
    pub node: Option<String>,
    pub pod_cidrs: Vec<ipnet::Ipv4Net>,
    pub kubeconfig: PathBuf,
    pub lb_interface: Option<String>,
}

fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("up.json")
}

impl UpRecord {
    pub fn write(&self, data_dir: &Path) -> anyhow::Result<()> {
        let v = serde_json::json!({
            "pid": self.pid,
            "node": self.node,
            "podCIDRs": self.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "kubeconfig": self.kubeconfig,
            "lbInterface": self.lb_interface,
        });
        let path = record_path(data_dir);
        std::fs::write(&path, v.to_string()).with_context(|| format!("writing {}", path.display()))
    }

    pub fn read(data_dir: &Path) -> anyhow::Result<Option<UpRecord>> {
        let path = record_path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let bad = |what: &str| anyhow::anyhow!("{}: {what}", path.display());
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        let pid = v["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| bad("no pid"))?;
        let pod_cidrs = v["podCIDRs"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        Ok(Some(UpRecord {
            pid,
            node: v["node"].as_str().map(str::to_string),
            pod_cidrs,
            kubeconfig: v["kubeconfig"].as_str().map(PathBuf::from).unwrap_or_default(),
            lb_interface: v["lbInterface"].as_str().map(str::to_string),
        }))
    }

    /// Whether the recorded process is a `nodeless up` still running (PIDs get reused).
    pub fn running(&self) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", self.pid)) else {
            return false;
        };
        let mut args = cmdline.split(|b| *b == 0);
        let exe = args.next().unwrap_or_default();
        exe.ends_with(b"nodeless") && args.next() == Some(&b"up"[..])
    }
}

/// Refuse to start a second `up` on a data directory whose first is still running.
pub fn claim(data_dir: &Path) -> anyhow::Result<()> {
    if let Some(r) = UpRecord::read(data_dir)?
        && r.running()
        && r.pid != std::process::id()
    {
        anyhow::bail!(
            "nodeless up is already running on {} (pid {}); `nodeless down --data-dir {}` stops it",
            data_dir.display(),
            r.pid,
            data_dir.display()
        );
    }
    Ok(())
}

pub fn down(data_dir: &Path, purge: bool) -> anyhow::Result<()> {
    if !data_dir.exists() {
        println!("nodeless: nothing to do: {} does not exist", data_dir.display());
        return Ok(());
    }
    let record = UpRecord::read(data_dir)?;
    match &record {
        Some(r) if r.running() => {
            stop(r.pid)?;
            println!("nodeless: stopped nodeless up (pid {})", r.pid);
        }
        Some(_) => println!("nodeless: nodeless up is not running on {}", data_dir.display()),
        None if !purge => anyhow::bail!(
            "{} has no record of a nodeless up ({} is missing)",
            data_dir.display(),
            record_path(data_dir).display()
        ),
        // Without the record the node's name is unknown, and so are its pods: removing the data
        // directory would leave them running with nothing to adopt them.
        None if crate::node_cmd::node_dir(data_dir).exists() => anyhow::bail!(
            "{} holds a node's state but no record of the nodeless up that ran it ({} is missing): nothing was removed",
            data_dir.display(),
            record_path(data_dir).display()
        ),
        None => {}
    }
    if !purge {
        if record.as_ref().is_some_and(|r| r.node.is_some()) {
            println!(
                "nodeless: pods were left running for the next `nodeless up` to adopt; `nodeless down --purge` removes them"
            );
        }
        return Ok(());
    }
    let mut problems = Vec::new();
    if let Some(r) = &record {
        if let Some(node) = &r.node {
            problems.extend(nodeless_sandbox_node::purge::purge(
                node,
                &crate::node_cmd::node_dir(data_dir),
            ));
        }
        let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        // OSS mounts of pods the node left (their processes exit once detached).
        problems.extend(nodeless_volumes::purge::unmount_fuse_under(&abs));
        // The disk driver's loop devices (the node's purge took their mounts).
        problems.extend(nodeless_volumes::purge::detach_loops_under(&abs));
        if !r.pod_cidrs.is_empty() {
            // eni-cni's egress rule outlives the node while pods run (a restart adopts them).
            let table = nodeless_eni_cni::snat::Snat::table_for(&r.pod_cidrs);
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "ip", &table])
                .stderr(std::process::Stdio::null())
                .status();
        }
        if let Some(lb) = &r.lb_interface {
            // The ingress removes it when it stops; a killed one leaves it.
            let _ = std::process::Command::new("ip")
                .args(["link", "del", lb])
                .stderr(std::process::Stdio::null())
                .status();
        }
        if r.kubeconfig.is_file() {
            let _ = std::fs::remove_file(&r.kubeconfig);
        }
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{} kept: {}; nothing was deleted from it",
            data_dir.display(),
            problems.join("; ")
        );
    }
    std::fs::remove_dir_all(data_dir).with_context(|| format!("removing {}", data_dir.display()))?;
    println!("nodeless: removed every pod and {}", data_dir.display());
    Ok(())
}

/// SIGTERM, then SIGKILL if it has not ended within [`STOP_GRACE`].
fn stop(pid: u32) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    let p = nix::unistd::Pid::from_raw(pid as i32);
    kill(p, Signal::SIGTERM).with_context(|| format!("signalling pid {pid}"))?;
    let deadline = Instant::now() + STOP_GRACE;
    while !ended(pid) {
        if Instant::now() > deadline {
            eprintln!("nodeless: pid {pid} did not stop within {STOP_GRACE:?}; killing it");
            let _ = kill(p, Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Whether the process has ended: gone, or a zombie with no thread left. When a threaded process
/// exits, its main thread shows as a zombie while the others are still being torn down, and its
/// parent cannot reap it until they are gone.
fn ended(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    let tasks: Vec<_> = tasks.flatten().collect();
    tasks.len() <= 1 && (tasks.is_empty() || is_zombie(pid))
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_none_or(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let t = tempfile::tempdir().unwrap();
        let r = UpRecord {
            pid: 42,
            node: Some("n1".into()),
            pod_cidrs: vec!["10.66.0.0/16".parse().unwrap()],
            kubeconfig: "/tmp/k".into(),
            lb_interface: None,
        };
        r.write(t.path()).unwrap();
        assert_eq!(UpRecord::read(t.path()).unwrap(), Some(r));
        std::fs::write(record_path(t.path()), "{").unwrap();
        assert!(UpRecord::read(t.path()).is_err());
    }

    #[test]
    fn a_zombie_has_ended_and_a_sleeper_has_not() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert!(!ended(child.id()));
        child.kill().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ended(child.id()) {
            assert!(Instant::now() < deadline, "a killed child never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Not reaped yet: it is a zombie, and its parent can now reap it.
        assert!(child.try_wait().unwrap().is_some());
    }

    #[test]
    fn only_a_running_up_counts() {
        let me = UpRecord {
            pid: std::process::id(),
            node: None,
            pod_cidrs: vec![],
            kubeconfig: PathBuf::new(),
            lb_interface: None,
        };
        assert!(!me.running(), "a test binary is not `nodeless up`");
    }

    #[test]
    fn a_purge_without_a_record_keeps_a_node_it_cannot_name() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(crate::node_cmd::node_dir(t.path()).join("pods")).unwrap();
        let err = down(t.path(), true).unwrap_err().to_string();
        assert!(err.contains("nothing was removed"), "{err}");
        assert!(crate::node_cmd::node_dir(t.path()).exists());
        // A control plane's directory (no node) goes.
        let c = tempfile::tempdir().unwrap();
        std::fs::write(c.path().join("store.redb"), "x").unwrap();
        down(c.path(), true).unwrap();
        assert!(!c.path().exists());
    }

    #[test]
    fn down_of_a_directory_without_a_record_says_so_and_keeps_it() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("keep"), "x").unwrap();
        let err = down(t.path(), false).unwrap_err().to_string();
        assert!(err.contains("no record"), "{err}");
        assert!(t.path().join("keep").exists());
    }
}
