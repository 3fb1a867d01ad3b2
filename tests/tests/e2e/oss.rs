//! OSS buckets in pods end to end, with kubectl as users type it, on `nodeless up` and its OSS
//! CSI driver, against a bucket the test serves (`s3-server`, s3s-fs):
//!
//! - a static PV in alibaba-cloud-csi-driver's words (`bucket`, `url`, `path`, `otherOpts`,
//!   `nodePublishSecretRef` with `akId`/`akSecret`): a pod reads an object as a file, writes a
//!   file that is then an object (read back through the S3 API), lists a directory of 10,000
//!   objects, and a second pod on the same claim sees the first one's writes;
//! - the mount outlives its driver: `nodeless up` killed with -9 while a pod reads a 32 MiB
//!   object over and over, the reads go on while it is down and after it is back;
//! - the server going away gives the pod EIO, not a hang, and its return makes reads work again;
//!   a pod deleted while the server is away is torn down all the same;
//! - a StorageClass (`volumeAs: subpath`, provisioner and node-publish secrets) gives each claim
//!   its own prefix, and deleting the claim deletes its objects;
//! - the mount's counters reach the node's `/metrics` (`nodeless_fuse_volume_*`);
//! - afterwards: no FUSE mount, mount process or record is left.

use std::path::Path;

use nodeless_tests::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use nodeless_tests::{Nodeless, eventually};

use crate::volumes::{apply, get, pod, wait_running};

const V: &str = "1.33";

fn exec(n: &Nodeless, ns: &str, pod: &str, script: &str) -> std::process::Output {
    n.kubectl(V, &["exec", "-n", ns, pod, "--", "sh", "-c", script])
}

/// FUSE mounts under `dir`.
pub(crate) fn fuse_mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - fuse"))
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&dir))
        .map(str::to_string)
        .collect()
}

/// Processes serving OSS mounts recorded under `dir`.
fn mount_processes(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("fuse-mount") && c.contains(&needle))
        .collect()
}

fn secret(ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: oss-secret, namespace: {ns}}}\nstringData: {{akId: {ACCESS_KEY}, akSecret: {SECRET_KEY}}}\n"
    )
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_bucket_is_files_in_pods_and_outlives_its_driver() {
    let mut s3 = S3Server::start("e2e-bucket").unwrap();
    // Objects made before: one to read, a 32 MiB one to read while the driver dies (put
    // through the S3 API), and a directory of 10,000 (laid down as the server's files).
    let objects = s3.bucket_dir().join("data");
    std::fs::create_dir_all(objects.join("many")).unwrap();
    std::fs::write(objects.join("hello.txt"), "hello from the bucket\n").unwrap();
    for i in 0..10_000 {
        std::fs::write(objects.join("many").join(format!("f{i:05}")), i.to_string()).unwrap();
    }
    let big: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big_file = s3.root.path().join("big.bin");
    std::fs::write(&big_file, &big).unwrap();
    block_on(s3.client().put("data/big.bin", big.into())).unwrap();
    let big_md5 = {
        let out = std::process::Command::new("md5sum").arg(&big_file).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };

    let net = nodeless_tests::pod_net();
    let mut n = Nodeless::start_with_node(&["--pod-cidr", &net.cidr, "--cluster-dns", &net.dns]).unwrap();
    let ns = "oss";
    n.kubectl_ok(V, &["create", "namespace", ns]);
    eventually("the OSS CSIDriver", 30, || {
        n.kubectl_ok(V, &["get", "csidriver"]).contains("oss.csi.nodeless.io")
    });
    apply(&n, &secret(ns));
    let url = &s3.url;
    apply(
        &n,
        &format!(
            r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: oss-static-{ns}}}
spec:
  capacity: {{storage: 20Gi}}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  csi:
    driver: oss.csi.nodeless.io
    volumeHandle: oss-static-{ns}
    nodePublishSecretRef: {{name: oss-secret, namespace: {ns}}}
    volumeAttributes:
      bucket: e2e-bucket
      url: "{url}"
      path: /data
      otherOpts: "-o max_stat_cache_size=0 -o allow_other -o umask=022"
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: bucket, namespace: {ns}}}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: oss-static-{ns}
  resources: {{requests: {{storage: 20Gi}}}}
"#
        ),
    );
    eventually("the claim is Bound", 30, || {
        get(&n, ns, "pvc/bucket", "{.status.phase}") == "Bound"
    });

    // Objects are files; a file written is an object.
    apply(
        &n,
        &pod(
            ns,
            "reader",
            "bucket",
            "cat /data/hello.txt && mkdir -p /data/out && echo written-by-a-pod > /data/out/new.txt && sleep 3600",
        ),
    );
    wait_running(&n, ns, "reader");
    eventually("the pod read the object", 60, || {
        n.kubectl(V, &["logs", "-n", ns, "reader"]).stdout == b"hello from the bucket\n"
    });
    let client = s3.client();
    eventually("the pod's file is an object", 60, || {
        block_on(client.head("data/out/new.txt")).ok().flatten().is_some()
    });
    let body = block_on(client.get_range("data/out/new.txt", 0, 1 << 20)).unwrap();
    assert_eq!(&body[..], b"written-by-a-pod\n");
    // The pod's root owns the files (the mount's uid 0, through the pod's user namespace).
    let owner = exec(&n, ns, "reader", "stat -c %u:%g:%a /data/hello.txt");
    assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), "0:0:644", "{owner:?}");

    // A directory of 10,000 objects is listed, whole.
    let t = std::time::Instant::now();
    let out = exec(&n, ns, "reader", "ls /data/many | wc -l; ls -l /data/many | head -3");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!(
        "ls of 10,000 objects in a pod: {:.2} s (kubectl exec included)",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(text.lines().next(), Some("10000"), "{text}");
    let out = exec(&n, ns, "reader", "cat /data/many/f09999");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "9999");

    // The mount's counters, through control's node proxy.
    let node = n.node.clone().unwrap();
    eventually("the OSS mount's counters in the node's metrics", 30, || {
        let m = n.kubectl_ok(V, &["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/metrics")]);
        let value = |name: &str| {
            m.lines()
                .find(|l| l.starts_with(name) && l.contains(r#"driver="oss.csi.nodeless.io""#))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        value("nodeless_fuse_volume_operations_total{") > 0.0
            && value("nodeless_fuse_volume_written_bytes_total{") >= 17.0
            && value("nodeless_fuse_volume_up{") == 1.0
    });

    // A second pod on the same claim sees the first one's writes, and the first the second's.
    apply(
        &n,
        &pod(
            ns,
            "second",
            "bucket",
            "cat /data/out/new.txt && echo from-second > /data/out/second.txt && sleep 3600",
        ),
    );
    wait_running(&n, ns, "second");
    eventually("the second pod read the first one's file", 60, || {
        n.kubectl(V, &["logs", "-n", ns, "second"]).stdout == b"written-by-a-pod\n"
    });
    eventually("the first pod sees the second one's file", 60, || {
        exec(&n, ns, "reader", "cat /data/out/second.txt").stdout == b"from-second\n"
    });

    // The mount outlives its driver: a pod reads the 32 MiB object over and over while
    // `nodeless up` (and the driver in it) is killed and started again.
    apply(
        &n,
        &pod(
            ns,
            "looper",
            "bucket",
            "while true; do echo $(date +%s) $(md5sum < /data/big.bin); done > /tmp/sums 2>&1",
        ),
    );
    wait_running(&n, ns, "looper");
    let sums = |n: &Nodeless| String::from_utf8_lossy(&exec(n, ns, "looper", "cat /tmp/sums").stdout).to_string();
    eventually("the looper read the big object", 60, || sums(&n).contains(&big_md5));
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    n.stop(true).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        !mount_processes(&n.data_dir()).is_empty(),
        "the mount processes went with the driver"
    );
    n.restart(false).unwrap();
    wait_running(&n, ns, "looper");
    let mut text = String::new();
    eventually("reads went on while the driver was down, and after", 60, || {
        text = sums(&n);
        text.lines().any(|l| {
            l.split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|t| t > killed_at + 1)
        })
    });
    let bad: Vec<&str> = text.lines().filter(|l| !l.contains(&big_md5)).collect();
    assert!(bad.is_empty(), "reads that failed or differed: {bad:?}");
    let during = text
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .filter(|&t| t > killed_at && t < killed_at + 4)
        .count();
    assert!(during > 0, "no read finished while the driver was down:\n{text}");

    // The server goes away: a read of what is not cached fails with EIO, soon; it comes back:
    // reads work again.
    s3.stop();
    let t = std::time::Instant::now();
    let out = exec(&n, ns, "reader", "cat /data/many/f00042 2>&1; echo rc=$?");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("rc=1") && (said.contains("I/O error") || said.contains("Input/output error")),
        "{said}"
    );
    assert!(t.elapsed().as_secs() < 30, "the failed read took {:?}", t.elapsed());
    // A pod deleted while the server is away goes all the same.
    n.kubectl_ok(
        V,
        &["delete", "pod", "second", "-n", ns, "--wait=true", "--timeout=60s"],
    );
    s3.resume().unwrap();
    eventually("reads work again", 60, || {
        exec(&n, ns, "reader", "cat /data/many/f00042").stdout == b"42"
    });

    // Deleting everything leaves nothing behind.
    n.kubectl_ok(V, &["delete", "pod", "--all", "-n", ns, "--wait=true"]);
    n.kubectl_ok(V, &["delete", "pvc", "bucket", "-n", ns, "--wait=true"]);
    n.kubectl_ok(V, &["delete", "pv", &format!("oss-static-{ns}"), "--wait=true"]);
    eventually("no FUSE mount or mount process is left", 60, || {
        fuse_mounts_under(&n.data_dir()).is_empty() && mount_processes(&n.data_dir()).is_empty()
    });
    let records = std::fs::read_dir(n.data_dir().join("csi/oss/mounts")).unwrap().count();
    assert_eq!(records, 0, "mount records left");
    // The objects are the bucket's: a static volume's reclaim is Retain.
    assert!(block_on(client.head("data/hello.txt")).unwrap().is_some());
}

#[test]
fn a_storage_class_gives_each_claim_its_prefix_and_deletes_it() {
    let s3 = S3Server::start("dyn-bucket").unwrap();
    let net = nodeless_tests::pod_net();
    let n = Nodeless::start_with_node(&["--pod-cidr", &net.cidr, "--cluster-dns", &net.dns]).unwrap();
    let ns = "ossdyn";
    n.kubectl_ok(V, &["create", "namespace", ns]);
    apply(&n, &secret(ns));
    let url = &s3.url;
    apply(
        &n,
        &format!(
            r#"apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: oss-subpath-{ns}}}
provisioner: oss.csi.nodeless.io
reclaimPolicy: Delete
volumeBindingMode: Immediate
parameters:
  bucket: dyn-bucket
  url: "{url}"
  path: /claims
  volumeAs: subpath
  csi.storage.k8s.io/provisioner-secret-name: oss-secret
  csi.storage.k8s.io/provisioner-secret-namespace: "${{pvc.namespace}}"
  csi.storage.k8s.io/node-publish-secret-name: oss-secret
  csi.storage.k8s.io/node-publish-secret-namespace: "${{pvc.namespace}}"
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: mine, namespace: {ns}}}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: oss-subpath-{ns}
  resources: {{requests: {{storage: 1Gi}}}}
"#
        ),
    );
    eventually("the claim is Bound", 60, || {
        get(&n, ns, "pvc/mine", "{.status.phase}") == "Bound"
    });
    let pv = get(&n, ns, "pvc/mine", "{.spec.volumeName}");
    let prefix = format!("claims/{pv}/");
    let client = s3.client();
    assert!(
        block_on(client.head(&prefix)).unwrap().is_some(),
        "the claim's prefix marker"
    );
    apply(
        &n,
        &pod(ns, "w", "mine", "echo kept > /data/f && ls /data && sleep 3600"),
    );
    wait_running(&n, ns, "w");
    eventually("the pod's file is under the claim's prefix", 60, || {
        block_on(client.head(&format!("{prefix}f"))).ok().flatten().is_some()
    });
    n.kubectl_ok(V, &["delete", "pod", "w", "-n", ns, "--wait=true"]);
    n.kubectl_ok(V, &["delete", "pvc", "mine", "-n", ns, "--wait=true"]);
    eventually("the volume is deleted", 60, || {
        !n.kubectl_ok(V, &["get", "pv"]).contains(&pv)
    });
    let left = block_on(client.list_all(&prefix)).unwrap();
    assert!(left.is_empty(), "objects left under {prefix}: {left:?}");
    assert!(fuse_mounts_under(&n.data_dir()).is_empty());
}
