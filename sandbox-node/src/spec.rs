//! The OCI runtime spec (`config.json`) for one container of a pod: a pure function of what
//! the pod, the image and the node decided, so it is tested without a runtime.

use std::path::PathBuf;

use nodeless_types::caps;
use serde_json::{Value, json};

use crate::seccomp;

/// Kernel files a container sees as empty (`/dev/null` over a file, an empty read-only tmpfs
/// over a directory): what containerd and Docker hide by default, because they describe the
/// host's hardware and kernel (`/proc/kcore` is its memory, `/proc/keys` its keyrings;
/// `/proc/interrupts` and the RAPL energy counters under powercap are side channels into what
/// other tenants' pods are doing).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Kernel files a container may read but not write: the host's settings.
pub const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// A raw block device given to a container (a claim's `volumeDevices`): the published device
/// node bound at `destination`, and the device cgroup rule that lets the container use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDevice {
    pub source: PathBuf,
    pub destination: String,
    /// A read-only claim: the device is bound read-only and the rule allows reads only.
    pub read_only: bool,
    pub major: u32,
    pub minor: u32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<i64>,
    /// CPU limit in millicores.
    pub cpu_millis: Option<i64>,
    /// CPU request in millicores (becomes shares).
    pub cpu_request_millis: Option<i64>,
    pub pids: Option<i64>,
}

#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    pub no_new_privileges: bool,
    pub capabilities: Vec<String>,
    pub mounts: Vec<BindMount>,
    pub devices: Vec<BlockDevice>,
    /// Paths of the pod's namespaces to join: network, ipc, uts.
    pub netns: PathBuf,
    pub ipcns: PathBuf,
    pub utsns: PathBuf,
    /// The pod's user namespace to join, and the host id its root maps to (65536 ids from it,
    /// repeated as `uidMappings`/`gidMappings`: runc wants them even when joining by path).
    pub userns: Option<(PathBuf, u32)>,
    pub cgroups_path: String,
    pub limits: Limits,
    pub seccomp: bool,
    pub oom_score_adj: i32,
    /// Namespaced sysctls (`linux.sysctl`), the safe ones a pod asked for.
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// The process has a terminal (`tty: true`).
    pub terminal: bool,
    /// A PID namespace to join (the pod's shared one, or an ephemeral container's target's);
    /// None: a namespace of its own.
    pub pidns: Option<PathBuf>,
}

/// The capability set after the container's `add` and `drop` (names with or without `CAP_`,
/// any case; `ALL` in drop clears the defaults): the one rule admission applies too
/// ([`nodeless_types::caps::effective`]). Adds outside the permitted set are refused.
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<String>, String> {
    caps::effective(add, drop).map_err(|e| e.to_string())
}

pub fn config_json(c: &ContainerSpec) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for m in &c.mounts {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if m.read_only { "ro" } else { "rw" });
        mounts.push(json!({"destination": m.destination, "type": "bind", "source": m.source, "options": options}));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    for d in &c.devices {
        let (mode, access) = if d.read_only { ("ro", "r") } else { ("rw", "rwm") };
        mounts.push(json!({"destination": d.destination, "type": "bind", "source": d.source,
            "options": ["bind", "rprivate", mode]}));
        if let Some(rules) = resources["devices"].as_array_mut() {
            rules.push(json!({"allow": true, "type": "b", "major": d.major, "minor": d.minor, "access": access}));
        }
    }
    let l = &c.limits;
    if let Some(m) = l.memory_bytes {
        resources["memory"] = json!({"limit": m});
    }
    let mut cpu = serde_json::Map::new();
    if let Some(millis) = l.cpu_millis {
        cpu.insert("quota".into(), json!(millis * 100));
        cpu.insert("period".into(), json!(100_000u64));
    }
    if let Some(req) = l.cpu_request_millis {
        cpu.insert("shares".into(), json!((req * 1024 / 1000).max(2) as u64));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(p) = l.pids {
        resources["pids"] = json!({"limit": p});
    }
    let mut linux = json!({
        "namespaces": [
            match &c.pidns {
                Some(path) => json!({"type": "pid", "path": path}),
                None => json!({"type": "pid"}),
            },
            {"type": "mount"},
            {"type": "network", "path": c.netns},
            {"type": "ipc", "path": c.ipcns},
            {"type": "uts", "path": c.utsns},
        ],
        "cgroupsPath": c.cgroups_path,
        // The container's mounts are its own: the node unmounts its copy of the rootfs once
        // the container runs, and that must not reach into the container.
        "rootfsPropagation": "private",
        "resources": resources,
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
    });
    if !c.sysctls.is_empty() {
        linux["sysctl"] = json!(c.sysctls);
    }
    if c.seccomp {
        linux["seccomp"] = seccomp::profile();
    }
    if let Some((path, base)) = &c.userns {
        if let Some(ns) = linux["namespaces"].as_array_mut() {
            ns.push(json!({"type": "user", "path": path}));
        }
        let map = json!([{"containerID": 0, "hostID": base, "size": crate::userns::RANGE_SIZE}]);
        linux["uidMappings"] = map.clone();
        linux["gidMappings"] = map;
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": c.terminal,
            "user": {"uid": c.uid, "gid": c.gid, "additionalGids": c.additional_gids},
            "args": c.args,
            "env": c.env,
            "cwd": if c.cwd.is_empty() { "/" } else { &c.cwd },
            "capabilities": {
                "bounding": c.capabilities, "effective": c.capabilities, "permitted": c.capabilities,
                "inheritable": [], "ambient": [],
            },
            "noNewPrivileges": c.no_new_privileges,
            "oomScoreAdj": c.oom_score_adj,
        },
        "root": {"path": c.rootfs, "readonly": c.readonly_rootfs},
        "hostname": c.hostname,
        "mounts": mounts,
        "linux": linux,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let caps = capabilities(&s(&["net_admin"]), &s(&["NET_RAW"])).unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
        assert_eq!(capabilities(&s(&["CHOWN"]), &s(&["all"])).unwrap(), s(&["CAP_CHOWN"]));
        for admin in ["sys_admin", "Cap_Sys_Admin", "CAP_SYS_ADMIN", "SYS_ADMIN"] {
            let err = capabilities(&s(&[admin]), &[]).unwrap_err();
            assert!(err.contains("CAP_SYS_ADMIN"), "{err}");
        }
    }

    #[test]
    fn host_kernel_files_are_masked_or_read_only() {
        let v = config_json(&ContainerSpec {
            args: vec!["/bin/sh".into()],
            ..Default::default()
        });
        let masked = v["linux"]["maskedPaths"].as_array().unwrap();
        // containerd's defaults, and Docker's /proc/interrupts.
        for p in [
            "/proc/kcore",
            "/proc/interrupts",
            "/sys/devices/virtual/powercap",
            "/proc/keys",
            "/proc/timer_list",
            "/sys/firmware",
            "/proc/scsi",
        ] {
            assert!(masked.iter().any(|m| m == p), "{p} is not masked");
        }
        assert_eq!(
            v["linux"]["readonlyPaths"],
            json!(["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"])
        );
        assert!(v["linux"].get("seccomp").is_none(), "no profile unless asked for");
    }

    #[test]
    fn a_pod_user_namespace_is_joined_with_its_mappings() {
        let plain = config_json(&ContainerSpec {
            args: vec!["/bin/sh".into()],
            ..Default::default()
        });
        assert!(
            plain["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["type"] != "user")
        );
        assert!(plain["linux"].get("uidMappings").is_none());
        let spec = ContainerSpec {
            args: vec!["/bin/sh".into()],
            userns: Some(("/proc/7/fd/9".into(), 1 << 20)),
            ..Default::default()
        };
        let v = config_json(&spec);
        assert!(
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "user", "path": "/proc/7/fd/9"}))
        );
        let map = json!([{"containerID": 0, "hostID": 1 << 20, "size": 65536}]);
        assert_eq!(v["linux"]["uidMappings"], map);
        assert_eq!(v["linux"]["gidMappings"], map);
    }

    #[test]
    fn a_block_device_is_bound_with_a_rule_for_it_alone() {
        let dev = |read_only| BlockDevice {
            source: "/pods/p/csi/raw/dev".into(),
            destination: "/dev/xvda".into(),
            read_only,
            major: 7,
            minor: 3,
        };
        for (ro, mode, access) in [(false, "rw", "rwm"), (true, "ro", "r")] {
            let v = config_json(&ContainerSpec {
                args: vec!["/bin/sh".into()],
                devices: vec![dev(ro)],
                ..Default::default()
            });
            let m = v["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["destination"] == "/dev/xvda")
                .unwrap();
            assert!(m["options"].as_array().unwrap().contains(&json!(mode)), "{m}");
            let rules = v["linux"]["resources"]["devices"].as_array().unwrap();
            assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}));
            assert!(rules.contains(&json!({"allow": true, "type": "b", "major": 7, "minor": 3, "access": access})));
        }
    }

    #[test]
    fn limits_become_cgroup_resources() {
        let spec = ContainerSpec {
            args: vec!["/bin/sh".into()],
            limits: Limits {
                memory_bytes: Some(64 << 20),
                cpu_millis: Some(500),
                cpu_request_millis: Some(250),
                pids: Some(100),
            },
            seccomp: true,
            ..Default::default()
        };
        let v = config_json(&spec);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 256);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 100);
        assert_eq!(v["process"]["cwd"], "/");
        assert_eq!(v["linux"]["seccomp"], crate::seccomp::profile());
    }
}
