//! Disk volumes against the same disk on the host, in one run (needs root and Debian's fio):
//!
//! 1. fio in a pod (requesting one CPU, the weight a host process has: a BestEffort pod's is
//!    the least) on a claim of the default class (a loop device over a sparse file, ext4,
//!    seen through the pod's idmapped bind) beside fio on the host on the same kind of disk
//!    (a sparse file, `losetup`, `mkfs.ext4`, mounted directly): sequential read and write
//!    (1 MiB blocks) and 4 KiB random read and write, `direct=1`, the same job file for both;
//! 2. create-to-Running of a pod with a new claim (WaitForFirstConsumer: provisioned, attached,
//!    formatted, staged and published for it) beside a plain pod.
//!
//! `volume-bench [--size-mib 512] [--seconds 8] [--pods 5]`; it prints a table with the ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nodeless_tests::Nodeless;
use nodeless_tests::images::BUSYBOX;
use serde_json::Value;

const V: &str = "1.33";
const FIO_IMAGE: &str = "nodeless.local/fio:1";

struct Args {
    size_mib: u64,
    seconds: u64,
    pods: usize,
}

fn args() -> Args {
    let mut a = Args {
        size_mib: 512,
        seconds: 8,
        pods: 5,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for w in argv.windows(2) {
        match w[0].as_str() {
            "--size-mib" => a.size_mib = w[1].parse().unwrap_or(a.size_mib),
            "--seconds" => a.seconds = w[1].parse().unwrap_or(a.seconds),
            "--pods" => a.pods = w[1].parse().unwrap_or(a.pods),
            _ => {}
        }
    }
    a
}

/// The four fio jobs, one after another, on `dir`: name → (MiB/s, IOPS).
fn jobs(size_mib: u64, seconds: u64) -> Vec<(&'static str, String)> {
    let common = format!(
        "--filename=DIR/bench.dat --size={size_mib}M --direct=1 --ioengine=psync --runtime={seconds} --time_based --output-format=json --group_reporting"
    );
    vec![
        ("seq write 1M", format!("--name=sw --rw=write --bs=1M {common}")),
        ("seq read 1M", format!("--name=sr --rw=read --bs=1M {common}")),
        ("rand write 4K", format!("--name=rw --rw=randwrite --bs=4k {common}")),
        ("rand read 4K", format!("--name=rr --rw=randread --bs=4k {common}")),
    ]
}

/// fio's JSON: (MiB/s, IOPS) of the job's read or write side, whichever did the work.
fn figures(json: &str) -> Result<(f64, f64)> {
    let start = json.find('{').context("fio printed no JSON")?;
    let v: Value = serde_json::from_str(&json[start..]).context("fio's JSON")?;
    let job = &v["jobs"][0];
    for side in ["write", "read"] {
        let bw = job[side]["bw_bytes"].as_f64().unwrap_or(0.0);
        if bw > 0.0 {
            return Ok((bw / (1 << 20) as f64, job[side]["iops"].as_f64().unwrap_or(0.0)));
        }
    }
    bail!("fio did no I/O: {}", &json[start..json.len().min(start + 400)])
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// A disk on the host, as the driver makes one: removed (unmounted, detached) however the
/// bench ends.
struct HostDisk {
    image: PathBuf,
    mount: PathBuf,
    dev: String,
}

impl HostDisk {
    fn make(dir: &Path, bytes: u64) -> Result<HostDisk> {
        let image = dir.join("host-disk.img");
        let f = std::fs::File::create(&image)?;
        f.set_len(bytes)?;
        let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(&image))?
            .trim()
            .to_string();
        let mount = dir.join("host-mount");
        std::fs::create_dir_all(&mount)?;
        let disk = HostDisk { image, mount, dev };
        run(Command::new("mkfs.ext4").args(["-F", "-q", &disk.dev]))?;
        run(Command::new("mount").arg(&disk.dev).arg(&disk.mount))?;
        Ok(disk)
    }
}

impl Drop for HostDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

fn apply(n: &Nodeless, yaml: &str) -> Result<()> {
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(yaml));
    if !out.status.success() {
        bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn phase(n: &Nodeless, pod: &str) -> String {
    String::from_utf8_lossy(
        &n.kubectl(V, &["get", "pod", pod, "-o", "jsonpath={.status.phase}"])
            .stdout,
    )
    .to_string()
}

/// Create what `yaml` says and time it until `pod` is Running.
fn time_to_running(n: &Nodeless, yaml: &str, pod: &str) -> Result<f64> {
    let t0 = Instant::now();
    apply(n, yaml)?;
    while phase(n, pod) != "Running" {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("pod {pod} not Running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let a = args();
    let fio = ["/usr/bin/fio", "/bin/fio"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("fio is not installed (apt-get install fio)")?;
    let net = nodeless_tests::pod_net();
    let n = Nodeless::start_with_node(&["--pod-cidr", &net.cidr, "--cluster-dns", &net.dns])?;
    let layout = nodeless_tests::images::binary_layout(&n.dir.path().join("fio-image"), FIO_IMAGE, &fio, "fio")?;
    n.nodeless(&["image", "import", &layout.to_string_lossy()])?;
    let disk_mib = a.size_mib * 2 + 256;

    // Create-to-Running: a pod with a new claim beside a plain one.
    let mut plain = Vec::new();
    let mut claimed = Vec::new();
    for i in 0..a.pods {
        let p = format!("plain-{i}");
        plain.push(time_to_running(
            &n,
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {p}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers: [{{name: c, image: {BUSYBOX}, command: [sleep, '3600']}}]\n"
            ),
            &p,
        )?);
        let c = format!("claimed-{i}");
        claimed.push(time_to_running(
            &n,
            &format!(
                "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {c}}}\nspec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 64Mi}}}}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {c}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers: [{{name: c, image: {BUSYBOX}, command: [sleep, '3600'], volumeMounts: [{{name: d, mountPath: /d}}]}}]\n  volumes: [{{name: d, persistentVolumeClaim: {{claimName: {c}}}}}]\n"
            ),
            &c,
        )?);
        n.kubectl_ok(V, &["delete", "pod", &p, &c, "--wait=true"]);
        n.kubectl_ok(V, &["delete", "pvc", &c, "--wait=false"]);
    }

    // fio in a pod on a claim: one pod per job, fio its command, its JSON its log.
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: fio}}\nspec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: {disk_mib}Mi}}}}}}\n"
        ),
    )?;
    let host_dir = tempfile::Builder::new().prefix("volume-bench-").tempdir()?;
    let host = HostDisk::make(host_dir.path(), disk_mib << 20)?;
    let mut rows = Vec::new();
    for (i, (name, job)) in jobs(a.size_mib, a.seconds).into_iter().enumerate() {
        let pod = format!("fio-{i}");
        let args: Vec<String> = job
            .replace("DIR", "/data")
            .split_whitespace()
            .map(|s| format!("'{s}'"))
            .collect();
        apply(
            &n,
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: f, image: {FIO_IMAGE}, command: [/fio, {}], resources: {{requests: {{cpu: '1'}}}}, volumeMounts: [{{name: d, mountPath: /data}}]}}\n  volumes: [{{name: d, persistentVolumeClaim: {{claimName: fio}}}}]\n",
                args.join(", ")
            ),
        )?;
        let t0 = Instant::now();
        // Not a kubectl run while fio measures: each costs more CPU than a 4 KiB read loop can
        // spare on 2 cores.
        std::thread::sleep(Duration::from_secs(a.seconds));
        loop {
            match phase(&n, &pod).as_str() {
                "Succeeded" => break,
                "Failed" => bail!("fio in the pod failed: {}", n.kubectl_ok(V, &["logs", &pod])),
                _ if t0.elapsed() > Duration::from_secs(a.seconds + 180) => bail!("fio in the pod did not finish"),
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
        let (pod_bw, pod_iops) = figures(&n.kubectl_ok(V, &["logs", &pod]))?;
        n.kubectl_ok(V, &["delete", "pod", &pod, "--wait=true"]);
        let host_job = job.replace("DIR", &host.mount.to_string_lossy());
        let host_out = run(Command::new(&fio).args(host_job.split_whitespace()))?;
        let (host_bw, host_iops) = figures(&host_out)?;
        rows.push((name, pod_bw, pod_iops, host_bw, host_iops));
    }
    drop(host);

    println!(
        "volume benchmark: fio on a disk claim in a pod vs the same kind of disk (loop device, ext4) on the host; {} MiB file, {} s per job, direct I/O (2 cores)",
        a.size_mib, a.seconds
    );
    println!(
        "{:<16} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "", "pod MiB/s", "pod IOPS", "host MiB/s", "host IOPS", "ratio"
    );
    for (name, pb, pi, hb, hi) in &rows {
        println!(
            "{name:<16} {pb:>12.1} {pi:>12.0} {hb:>12.1} {hi:>12.0} {:>7.2}x",
            pi / hi
        );
    }
    let (p, c) = (median(plain), median(claimed));
    println!(
        "create-to-Running (median of {}): plain pod {p:.0} ms, pod with a new claim (WaitForFirstConsumer) {c:.0} ms, +{:.0} ms",
        a.pods,
        c - p
    );
    Ok(())
}
