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
    /// The node binary: its `vm-exec` runs a process in a VM's container for probes and exec.
    pub node_binary: PathBuf,
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
