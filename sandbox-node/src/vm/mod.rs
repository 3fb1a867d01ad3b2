//! MicroVM pods (`runtimeClassName` naming a RuntimeClass with handler `microvm`): each pod is
//! a QEMU `microvm` machine (virtio-mmio, no PCI, direct kernel boot) in the pod's network
//! namespace, with the guest agent (`guest-agent/`) as PID 1. The node's pod lifecycle is the
//! same as for sandboxes: the image's overlay and the pod's files are made on the host and
//! reach the guest over virtio-9p (the pod's run and data directories, mounted at the same
//! paths inside), the containers run in the guest from the same bundles, and their logs and
//! exit records land in the same files. The VM carries the pod's address: its NIC is a tap in
//! the pod's namespace, tied to the CNI interface by tc redirects both ways (as Kata does), so
//! Services, DNS and the datapath reach it unchanged.

pub mod client;
pub mod initramfs;
pub mod qemu;
pub mod runtime;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use runtime::MicroVm;

/// The RuntimeClass handler that runs pods in microVMs.
pub const HANDLER: &str = "microvm";

/// How the node runs microVMs, settled at its start.
#[derive(Clone, Debug)]
pub struct VmSettings {
    pub qemu: PathBuf,
    pub image: initramfs::GuestImage,
    /// `kvm` or `tcg`, and why when it is not KVM.
    pub accel: Accel,
}

#[derive(Clone, Debug)]
pub struct Accel {
    pub kvm: bool,
    pub why: String,
}

impl Accel {
    pub fn name(&self) -> &'static str {
        if self.kvm { "kvm" } else { "tcg" }
    }
}

/// What the node is told about microVMs (`--vm-qemu`, `--vm-kernel`, `--vm-agent`); what is
/// not given is looked for on the machine.
#[derive(Clone, Debug, Default)]
pub struct MicroVmConfig {
    pub qemu: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub agent: Option<PathBuf>,
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The static agent beside this binary (`nodeless-guest-agent`), or where `cargo rustc` builds
/// it for the workspace (`target/guest/<profile>/`, see scripts/up).
fn default_agent() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let profile = dir.file_name()?.to_os_string();
    let guest = dir.parent()?.join("guest");
    let candidates = [
        dir.join("nodeless-guest-agent"),
        guest.join(profile).join("nodeless-guest-agent"),
        guest.join("release").join("nodeless-guest-agent"),
    ];
    let is_static = |p: &PathBuf| {
        std::fs::read(p)
            .ok()
            .is_some_and(|b| initramfs::needs_interpreter(&b) == Ok(false))
    };
    candidates
        .iter()
        .find(|p| is_static(p))
        .or(candidates.iter().find(|p| p.exists()))
        .cloned()
}

/// Settle how this node runs microVMs, or say why it cannot.
pub fn settle(cfg: &MicroVmConfig, state_dir: &std::path::Path) -> Result<VmSettings, String> {
    let qemu = cfg
        .qemu
        .clone()
        .or_else(|| in_path("qemu-system-x86_64"))
        .ok_or("no qemu-system-x86_64 (Debian's qemu-system-x86), and --vm-qemu not given")?;
    let kernel =
        cfg.kernel.clone().or_else(initramfs::default_kernel).ok_or(
            "no guest kernel in /boot with its modules (Debian's linux-image-amd64), and --vm-kernel not given",
        )?;
    let agent = cfg
        .agent
        .clone()
        .or_else(default_agent)
        .ok_or("no nodeless-guest-agent beside the node's binary, and --vm-agent not given")?;
    let image = initramfs::build(&kernel, &agent, state_dir)?;
    let accel = probe_kvm(&qemu);
    Ok(VmSettings { qemu, image, accel })
}

/// The running VMs by pod UID.
#[derive(Default)]
pub struct Vms {
    by_pod: Mutex<HashMap<String, Arc<MicroVm>>>,
}

impl Vms {
    pub fn get(&self, uid: &str) -> Option<Arc<MicroVm>> {
        self.by_pod.lock().unwrap_or_else(|e| e.into_inner()).get(uid).cloned()
    }

    pub fn insert(&self, uid: &str, vm: Arc<MicroVm>) {
        self.by_pod
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_string(), vm);
    }

    pub fn remove(&self, uid: &str) -> Option<Arc<MicroVm>> {
        self.by_pod.lock().unwrap_or_else(|e| e.into_inner()).remove(uid)
    }
}

/// Whether KVM runs guests here: a QEMU started with it must still be running after a moment
/// (where /dev/kvm opens but cannot run a vCPU, QEMU aborts at once).
pub fn probe_kvm(qemu: &std::path::Path) -> Accel {
    if !std::path::Path::new("/dev/kvm").exists() {
        return Accel {
            kvm: false,
            why: "there is no /dev/kvm".into(),
        };
    }
    let child = std::process::Command::new(qemu)
        .args([
            "-M",
            "microvm",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return Accel {
                kvm: false,
                why: format!("{}: {e}", qemu.display()),
            };
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Accel {
                kvm: false,
                why: format!(
                    "/dev/kvm cannot run a guest here ({})",
                    err.lines().next().unwrap_or("QEMU exited").trim()
                ),
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Accel {
        kvm: true,
        why: String::new(),
    }
}

/// The vCPUs and memory of a pod's VM: its containers' limits (init containers run one at a
/// time, so the larger of them and the sum of the others), plus the pod's overhead from its
/// RuntimeClass (or, without one, 128 MiB for the guest's kernel and agent). Without limits:
/// 1 vCPU, 256 MiB.
pub fn size(pod: &k8s_openapi::api::core::v1::Pod) -> (u32, u64) {
    use nodeless_types::quantity::parse_quantity;
    let Some(spec) = pod.spec.as_ref() else { return (1, 256) };
    let limit = |c: &k8s_openapi::api::core::v1::Container, key: &str| -> Option<f64> {
        let q = c.resources.as_ref()?.limits.as_ref()?.get(key)?;
        parse_quantity(&q.0).ok().map(|q| q.milli() as f64 / 1000.0)
    };
    let sum = |key: &str| -> Option<f64> {
        let all: Vec<f64> = spec.containers.iter().filter_map(|c| limit(c, key)).collect();
        let inits = spec
            .init_containers
            .iter()
            .flatten()
            .filter_map(|c| limit(c, key))
            .fold(0.0, f64::max);
        (!all.is_empty() || inits > 0.0).then(|| all.iter().sum::<f64>().max(inits))
    };
    let overhead = |key: &str| -> f64 {
        spec.overhead
            .as_ref()
            .and_then(|o| o.get(key))
            .and_then(|q| parse_quantity(&q.0).ok())
            .map(|q| q.milli() as f64 / 1000.0)
            .unwrap_or(0.0)
    };
    let host = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let vcpus = sum("cpu")
        .map(|c| ((c + overhead("cpu")).ceil() as u32).clamp(1, host))
        .unwrap_or(1);
    // What the guest's kernel and agent take, unless the RuntimeClass's overhead says.
    const GUEST_MIB: f64 = 128.0;
    let fixed = overhead("memory");
    let guest = if fixed > 0.0 {
        fixed / (1 << 20) as f64
    } else {
        GUEST_MIB
    };
    let memory = sum("memory")
        .map(|m| (m / (1 << 20) as f64 + guest).ceil() as u64)
        .unwrap_or(256);
    (vcpus, memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn a_vm_is_as_large_as_its_pods_limits_and_overhead() {
        let none = pod(serde_json::json!({"containers": [{"name": "c"}]}));
        assert_eq!(size(&none), (1, 256));
        let limited = pod(serde_json::json!({"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}],
            "initContainers": [{"name": "i", "resources": {"limits": {"memory": "512Mi"}}}]}));
        assert_eq!(size(&limited), (1, 512 + 128));
        let with_overhead = pod(serde_json::json!({"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "128Mi"}}}],
            "overhead": {"cpu": "100m", "memory": "64Mi"}}));
        let host = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        assert_eq!(size(&with_overhead), (2.min(host), 128 + 64));
    }
}
