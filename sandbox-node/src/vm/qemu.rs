//! Starting, finding and stopping a pod's QEMU. Its files are in `<pod run dir>/vm/`:
//! `qemu.pid`, `agent.sock` (the virtio-serial port), `exec.sock` (the node's exec proxy),
//! `console.log` (the guest's serial console), `qemu.log`. QEMU runs in a process group of its
//! own, so it outlives a node that stops or crashes; a restarted node finds it by its pid file
//! and its command line, and connects to the agent again.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::VmSettings;

/// What one pod's VM gets.
pub struct Launch<'a> {
    pub uid: &'a str,
    pub dir: &'a Path,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Host directories shared with the guest at the same path: (tag, path).
    pub shares: Vec<(String, PathBuf)>,
    /// The MAC of the pod's CNI interface: the guest's NIC has it.
    pub mac: String,
    pub netns: &'a Path,
}

pub fn pid_file(dir: &Path) -> PathBuf {
    dir.join("qemu.pid")
}

pub fn agent_socket(dir: &Path) -> PathBuf {
    dir.join("agent.sock")
}

pub fn console_log(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

/// The kernel command line: the serial console (quiet: under TCG every byte printed is slow),
/// no PCI to probe, the agent as init, a kernel panic ends QEMU.
pub const KERNEL_ARGS: &str = "console=ttyS0 quiet pci=off panic=-1 rdinit=/init";

/// QEMU's arguments for a VM (the bench boots the same machine bare from them).
pub fn machine_args(s: &VmSettings, vcpus: u32, memory_mib: u64) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-M".into(),
        "microvm,rtc=on".into(),
        "-accel".into(),
        s.accel.name().into(),
        "-cpu".into(),
        if s.accel.kvm { "host" } else { "max" }.into(),
        "-smp".into(),
        vcpus.to_string(),
        "-m".into(),
        format!("{memory_mib}M"),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        s.image.kernel.display().to_string(),
        "-initrd".into(),
        s.image.initramfs.display().to_string(),
        "-append".into(),
        KERNEL_ARGS.into(),
    ];
    a.extend(["-device".into(), "virtio-serial-device".into()]);
    a
}

pub fn args(s: &VmSettings, l: &Launch<'_>) -> Vec<String> {
    let mut a = machine_args(s, l.vcpus, l.memory_mib);
    let dir = l.dir;
    a.extend([
        "-name".into(),
        format!("nodeless-{}", l.uid),
        "-serial".into(),
        format!("file:{}", console_log(dir).display()),
        "-chardev".into(),
        format!(
            "socket,id=agent,path={},server=on,wait=off",
            agent_socket(dir).display()
        ),
        "-device".into(),
        format!("virtserialport,chardev=agent,name={}", nodeless_guest_agent::PORT_NAME),
        "-netdev".into(),
        "tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=off".into(),
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={}", l.mac),
        "-pidfile".into(),
        pid_file(dir).display().to_string(),
        // QEMU's own seccomp filter: no new privileges, no forking or exec, no obsolete calls.
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
    ]);
    for (tag, path) in &l.shares {
        a.extend([
            "-fsdev".into(),
            format!(
                "local,id={tag},path={},security_model=passthrough,multidevs=remap",
                path.display()
            ),
            "-device".into(),
            format!("virtio-9p-device,fsdev={tag},mount_tag={tag}"),
        ]);
    }
    a
}

/// Start QEMU in the pod's network namespace (where it makes its tap), in a process group of
/// its own (a signal to the node's group does not reach it; it outlives the node), and return
/// its pid once its agent socket is there. QEMU's seccomp filter forbids forking, so it does
/// not daemonize: a thread of the node reaps it if it ends while the node runs.
pub fn start(s: &VmSettings, l: &Launch<'_>) -> Result<u32, String> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(l.dir).map_err(|e| format!("{}: {e}", l.dir.display()))?;
    for f in [agent_socket(l.dir), pid_file(l.dir)] {
        let _ = std::fs::remove_file(f);
    }
    let log_path = l.dir.join("qemu.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let args = args(s, l);
    let qemu = s.qemu.clone();
    let mut child = crate::sandbox::in_netns(l.netns, move || {
        Command::new(&qemu)
            .args(&args)
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("{}: {e}", s.qemu.display()))?;
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("QEMU exited ({status}): {}", said.trim()));
        }
        if agent_socket(l.dir).exists() && running_pid(l.dir) == Some(pid) {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("QEMU did not make its agent socket within 30s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// The pid of the pod's QEMU, if one runs.
pub fn running_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(dir)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let wanted = pid_file(dir).display().to_string();
    let ours = cmdline.split(|b| *b == 0).any(|arg| arg == wanted.as_bytes());
    ours.then_some(pid)
}

/// Stop the pod's QEMU if it runs (SIGTERM, then SIGKILL after `grace`), and wait for it to go.
pub async fn stop(dir: &Path, grace: std::time::Duration) -> Result<(), String> {
    let Some(pid) = running_pid(dir) else { return Ok(()) };
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while running_pid(dir).is_some() {
        if tokio::time::Instant::now() > deadline {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        if tokio::time::Instant::now() > deadline + std::time::Duration::from_secs(10) {
            return Err(format!("QEMU {pid} did not exit"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The pod's CNI interface as the guest must carry it: MAC, addresses, routes and permanent
/// neighbours, read from the namespace with `ip -j`.
pub fn read_interface(netns: &Path) -> Result<nodeless_guest_agent::proto::Interface, String> {
    use nodeless_guest_agent::proto::{Interface, Neighbour, Route};
    let run = |args: &'static [&'static str]| -> Result<serde_json::Value, String> {
        let out = crate::sandbox::in_netns(netns, move || Command::new("ip").args(args).output())
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("ip {}: {e}", args.join(" ")))
    };
    let link = run(&["-j", "addr", "show", "dev", "eth0"])?;
    let link = link.get(0).ok_or("the pod has no eth0")?;
    let mac = link["address"].as_str().unwrap_or_default().to_string();
    let mtu = link["mtu"].as_u64().unwrap_or(0) as u32;
    let addresses = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or_default(), a["prefixlen"]))
        .collect();
    let routes = run(&["-j", "-4", "route", "show", "dev", "eth0"])?
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| Route {
            destination: match r["dst"].as_str().unwrap_or("default") {
                "default" => "0.0.0.0/0".into(),
                d => d.to_string(),
            },
            gateway: r["gateway"].as_str().unwrap_or_default().to_string(),
            onlink: r["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "onlink")),
        })
        .collect();
    let neighbours = run(&["-j", "-4", "neigh", "show", "dev", "eth0", "nud", "permanent"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some(Neighbour {
                ip: n["dst"].as_str()?.to_string(),
                mac: n["lladdr"].as_str()?.to_string(),
            })
        })
        .collect();
    Ok(Interface {
        mac,
        addresses,
        routes,
        mtu,
        neighbours,
    })
}

/// Tie the VM's tap to the pod's interface: everything arriving on one leaves by the other
/// (a u32 match-all filter: this kernel has no `matchall` classifier).
pub fn wire_tap(netns: &Path, mtu: u32) -> Result<(), String> {
    // QEMU makes the tap after its sockets.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let has_tap = crate::sandbox::in_netns(netns, || {
            Command::new("ip")
                .args(["link", "show", "tap0"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if has_tap.map_err(|e| e.to_string())? {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err("QEMU made no tap0 in the pod's network namespace".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mtu = mtu.to_string();
    let steps: Vec<Vec<String>> = vec![
        vec![
            "ip".into(),
            "link".into(),
            "set".into(),
            "tap0".into(),
            "mtu".into(),
            mtu,
            "up".into(),
        ],
        "tc qdisc replace dev eth0 ingress"
            .split(' ')
            .map(String::from)
            .collect(),
        "tc filter replace dev eth0 parent ffff: pref 1 protocol all u32 match u32 0 0 action mirred egress redirect dev tap0"
            .split(' ')
            .map(String::from)
            .collect(),
        "tc qdisc replace dev tap0 ingress"
            .split(' ')
            .map(String::from)
            .collect(),
        "tc filter replace dev tap0 parent ffff: pref 1 protocol all u32 match u32 0 0 action mirred egress redirect dev eth0"
            .split(' ')
            .map(String::from)
            .collect(),
    ];
    for step in steps {
        let s = step.clone();
        let out = crate::sandbox::in_netns(netns, move || Command::new(&s[0]).args(&s[1..]).output())
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {e}", step[0]))?;
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                step.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}
