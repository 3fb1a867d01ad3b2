//! Several hosts on one machine, for multi-host tests: each host is a network namespace with a
//! veth to a bridge in the test's own namespace (a simulated VPC segment). The machine's own
//! namespace holds the bridge's first address (where control listens); host `i` gets the
//! address `.i+2`. Commands run in a host through `nsenter --net` (only the network namespace
//! changes: cgroups, mounts and bpffs stay the machine's, as a node needs them). Everything is
//! named uniquely and removed on drop, processes first.

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub struct Vpc {
    pub bridge: String,
    /// The VPC's first three octets: `10.<a>.<b>`.
    pub prefix: String,
    pub hosts: Vec<Host>,
}

pub struct Host {
    /// The network namespace (`/run/netns/<netns>`).
    pub netns: String,
    pub addr: String,
    /// Processes started in this host, killed when it is lost or dropped.
    children: Vec<Child>,
}

impl Vpc {
    /// A bridge at `10.<a>.<b>.1/24` and `n` hosts on it.
    pub fn new(tag: &str, n: usize) -> Result<Vpc> {
        let k = std::process::id() % 200 + 20;
        let prefix = format!("10.{}.{k}", 200 + (std::process::id() / 200) % 50);
        let bridge = format!("nlv{tag}{k}");
        let mut vpc = Vpc {
            bridge: bridge.clone(),
            prefix: prefix.clone(),
            hosts: Vec::new(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..n {
            let netns = format!("nlh{tag}{k}-{i}");
            let (outside, inside) = (format!("nlv{tag}{k}h{i}"), format!("nlv{tag}{k}g{i}"));
            ip(&["netns", "add", &netns])?;
            let addr = format!("{prefix}.{}", i + 2);
            vpc.hosts.push(Host {
                netns: netns.clone(),
                addr: addr.clone(),
                children: Vec::new(),
            });
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
            ip(&["link", "set", &outside, "master", &bridge, "up"])?;
            ip(&["link", "set", &inside, "netns", &netns])?;
            let inns = |args: &[&str]| {
                let mut all = vec!["-n", netns.as_str()];
                all.extend_from_slice(args);
                ip(&all)
            };
            inns(&["link", "set", &inside, "name", "eth0"])?;
            inns(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            inns(&["link", "set", "eth0", "up"])?;
            inns(&["link", "set", "lo", "up"])?;
            inns(&["route", "add", "default", "via", &format!("{prefix}.1")])?;
        }
        Ok(vpc)
    }

    /// The machine's own address on the VPC (where control listens).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }
}

impl Host {
    /// A command that runs in this host's network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns)).arg("--").arg(program);
        c
    }

    /// Start a process in this host that lives until the host is lost or dropped.
    pub fn spawn(&mut self, mut cmd: Command, log: &std::path::Path) -> Result<()> {
        let log = std::fs::File::create(log)?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a host process")?;
        self.children.push(child);
        Ok(())
    }

    /// The host is lost: every process in it killed at once, and its namespace deleted.
    pub fn lose(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        self.children.clear();
        // Whatever else runs in the namespace (the node's supervisor, its pods' shims).
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.netns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

impl Drop for Vpc {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            h.lose();
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
