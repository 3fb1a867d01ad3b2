//! `vm-bench`: microVM pods (RuntimeClass handler `microvm`) on `nodeless up`, beside a bare
//! `qemu-system-x86_64` boot of the same kernel and initramfs with the same machine options,
//! in one run. For each pod: create-to-Ready, split as the node's `StartedVM` event reports it
//! (QEMU start, guest kernel boot, agent start, to the agent's first answer, guest set-up) and
//! the rest (API, scheduling, network, image, container start through the agent); the pod's
//! QEMU RSS and PSS. For the bare boot: spawn to the agent's first console line (its first
//! user-space line). Prints the ratio; the goal is that the platform adds at most 10%. Needs
//! root, QEMU and a guest kernel (Debian's qemu-system-x86 and linux-image-amd64).
//!
//! `cargo run --release -p nodeless-tests --bin vm-bench -- --pods 5 --bare 5`

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use nodeless_sandbox_node::vm::{self, initramfs, qemu};
use nodeless_tests::Nodeless;
use nodeless_tests::images::BUSYBOX;
use nodeless_tests::ready::{wait_ready, watch_ready};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// MicroVM pods created one after another.
    #[arg(long, default_value_t = 5)]
    pods: usize,
    /// Bare QEMU boots.
    #[arg(long, default_value_t = 5)]
    bare: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The figure after `label` in the node's StartedVM message (`QEMU 31 ms`, `... 5774 ms in all`).
fn figure(message: &str, label: &str) -> f64 {
    let Some(at) = message.find(label) else { return f64::NAN };
    message[at + label.len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn before_ms_in_all(message: &str) -> f64 {
    message
        .split(" ms in all")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Spawn to the agent's first console line, for a bare boot of the node's kernel and initramfs.
fn bare_boot(settings: &vm::VmSettings) -> Result<(f64, (u64, u64))> {
    let t0 = Instant::now();
    let mut child = Command::new(&settings.qemu)
        .args(qemu::machine_args(settings, 1, 256))
        .args(["-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting QEMU")?;
    let mut out = child.stdout.take().context("QEMU's console")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let found = loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break None,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&seen).contains("nodeless-guest-agent: user space at") {
                    break Some(t0.elapsed());
                }
            }
        }
        if t0.elapsed() > Duration::from_secs(120) {
            break None;
        }
    };
    let mem = nodeless_tests::process_memory_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    match found {
        Some(d) => Ok((d.as_secs_f64() * 1e3, mem)),
        None => bail!(
            "the bare boot printed no user-space line: {}",
            String::from_utf8_lossy(&seen)
        ),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let net = nodeless_tests::pod_net();
    let agent = nodeless_tests::guest_agent_binary()?.display().to_string();
    let n = Nodeless::start_with_node(&["--pod-cidr", &net.cidr, "--cluster-dns", &net.dns, "--vm-agent", &agent])?;
    n.import_test_images()?;
    let client = n.client().await?;
    let classes: Api<k8s_openapi::api::node::v1::RuntimeClass> = Api::all(client.clone());
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                "metadata": {"name": "microvm"}, "handler": "microvm"}))?,
        )
        .await?;
    let api: Api<Pod> = Api::namespaced(client, "default");
    let (times, _watch) = watch_ready(api.clone(), watcher::Config::default());
    println!("pod\tcreate-to-Ready ms\tVM ms\tQEMU\tkernel\tagent\tto answer\tset-up\trest ms\tQEMU RSS MiB\tPSS MiB");
    let (mut ready, mut vm_ms, mut rest, mut rss, mut pss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut parts: Vec<[f64; 5]> = Vec::new();
    for i in 0..args.pods {
        let name = format!("vm-{i}");
        let pod: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"runtimeClassName": "microvm", "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "c", "image": BUSYBOX, "command": ["sleep", "3600"]}]}}))?;
        let t0 = Instant::now();
        let created = api.create(&PostParams::default(), &pod).await?;
        let t1 = wait_ready(&times, std::slice::from_ref(&name), Duration::from_secs(300)).await?;
        let ms = t1.duration_since(t0).as_secs_f64() * 1e3;
        let events = n.kubectl_ok(
            "1.33",
            &[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={name},reason=StartedVM"),
                "-o",
                "jsonpath={.items[0].message}",
            ],
        );
        let uid = created.metadata.uid.unwrap_or_default();
        let pid = Command::new("pgrep")
            .args(["-f", &format!("nodeless-{uid}")])
            .output()?;
        let pid: u32 = String::from_utf8_lossy(&pid.stdout).trim().parse().unwrap_or(0);
        let (r, p) = nodeless_tests::process_memory_kib(pid);
        let total = before_ms_in_all(&events);
        let split = [
            figure(&events, "QEMU "),
            figure(&events, "guest kernel "),
            figure(&events, "agent "),
            figure(&events, "first answer "),
            figure(&events, "set-up "),
        ];
        println!(
            "{name}\t{ms:.0}\t{total:.0}\t{:.0}\t{:.0}\t{:.0}\t{:.0}\t{:.0}\t{:.0}\t{:.1}\t{:.1}",
            split[0],
            split[1],
            split[2],
            split[3],
            split[4],
            ms - total,
            r as f64 / 1024.0,
            p as f64 / 1024.0
        );
        ready.push(ms);
        vm_ms.push(total);
        rest.push(ms - total);
        rss.push(r as f64 / 1024.0);
        pss.push(p as f64 / 1024.0);
        parts.push(split);
        api.delete(&name, &DeleteParams::default()).await?;
    }
    // The bare boot: the kernel and initramfs the node made, QEMU's machine options as the node
    // gives them, the console on stdout.
    let vm_dir = n.data_dir().join("node/vm");
    let initramfs = std::fs::read_dir(&vm_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "cpio"))
        .context("the node's initramfs")?;
    let kernel = initramfs::default_kernel().context("a guest kernel")?;
    let qemu_bin = Command::new("sh")
        .args(["-c", "command -v qemu-system-x86_64"])
        .output()?;
    let qemu_bin = String::from_utf8_lossy(&qemu_bin.stdout).trim().to_string();
    let settings = vm::VmSettings {
        accel: vm::probe_kvm(std::path::Path::new(&qemu_bin)),
        qemu: qemu_bin.into(),
        image: initramfs::GuestImage {
            kernel_release: initramfs::release_of(&kernel).unwrap_or_default(),
            kernel,
            initramfs,
        },
    };
    let mut bare = Vec::new();
    let mut bare_mem = (0, 0);
    for _ in 0..args.bare {
        let (ms, mem) = bare_boot(&settings)?;
        println!(
            "bare boot to the first user-space line\t{ms:.0} ms\t(RSS {:.1} MiB)",
            mem.0 as f64 / 1024.0
        );
        bare.push(ms);
        bare_mem = mem;
    }
    let col = |k: usize| median(parts.iter().map(|p| p[k]).collect());
    let (ready_m, bare_m) = (median(ready.clone()), median(bare.clone()));
    println!();
    println!("accelerator: {} {}", settings.accel.name(), settings.accel.why);
    println!("medians over {} pods and {} bare boots:", ready.len(), bare.len());
    println!("  create-to-Ready          {ready_m:.0} ms");
    println!(
        "    VM (node's StartedVM)  {:.0} ms = QEMU {:.0} + guest kernel {:.0} + agent {:.0} (of {:.0} to its first answer) + guest set-up {:.0}",
        median(vm_ms),
        col(0),
        col(1),
        col(2),
        col(3),
        col(4)
    );
    println!(
        "    the rest               {:.0} ms (API, scheduling, network, image, container start)",
        median(rest)
    );
    println!("  bare QEMU boot           {bare_m:.0} ms to the first user-space line");
    println!(
        "  ratio                    {:.2} (the platform adds {:+.0}%; goal: at most +10%)",
        ready_m / bare_m,
        (ready_m / bare_m - 1.0) * 100.0
    );
    println!(
        "  memory per microVM pod   QEMU RSS {:.1} MiB, PSS {:.1} MiB (bare QEMU at its first line: RSS {:.1} MiB)",
        median(rss),
        median(pss),
        bare_mem.0 as f64 / 1024.0
    );
    Ok(())
}
