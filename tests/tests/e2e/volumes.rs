//! Persistent volumes end to end, with kubectl as users type it, on `nodeless up` and its disk
//! CSI driver (loop devices standing for cloud disks):
//!
//! - a claim on the default class (`nodeless-disk`, WaitForFirstConsumer) is provisioned for its
//!   first pod, attached (a VolumeAttachment), formatted and mounted; the pod writes, is
//!   deleted, and a new pod reads the same bytes, owned by the pod's own root;
//! - growing the claim's request grows the filesystem under the running pod (`df`);
//! - a claim for a class that does not exist stays Pending and says why; a pod naming a claim
//!   that does not exist stays Pending and says why;
//! - a StatefulSet with `volumeClaimTemplates`: one claim per ordinal, `web-1` deleted comes
//!   back with its own data;
//! - `nodeless up` killed with -9 and started again: the running pod keeps its volume, and its
//!   deletion afterwards still unmounts, unstages and detaches it;
//! - deleting the claims (reclaimPolicy Delete) leaves no volume, attachment, loop device,
//!   mount or disk file;
//! - the pod-spec volumes around claims: a generic `ephemeral` volume (a claim per pod, gone
//!   with it) with `fsGroup` ownership, a full disk giving ENOSPC in the pod and nothing else,
//!   `kubelet_volume_stats_*` for it, a memory-backed emptyDir as large as its `sizeLimit`, a
//!   ConfigMap change reaching the running pod, and a raw block claim (`volumeMode: Block`)
//!   given to the pod as a device (`volumeDevices`); a ReadWriteOncePod claim held by one pod
//!   keeps a second one Pending with the reason.

use std::path::Path;

use nodeless_tests::images::BUSYBOX;
use nodeless_tests::{Nodeless, eventually};

const V: &str = "1.33";

pub(crate) fn get(n: &Nodeless, ns: &str, what: &str, path: &str) -> String {
    let out = n.kubectl(V, &["get", what, "-n", ns, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub(crate) fn apply(n: &Nodeless, yaml: &str) {
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(yaml));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

pub(crate) fn pod(ns: &str, name: &str, claim: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, '{script}']
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}
"#
    )
}

pub(crate) fn wait_running(n: &Nodeless, ns: &str, pod: &str) {
    eventually(&format!("pod {pod} Running"), 120, || {
        get(n, ns, &format!("pod/{pod}"), "{.status.phase}") == "Running"
    });
}

pub(crate) fn events(n: &Nodeless, ns: &str) -> String {
    n.kubectl_ok(
        V,
        &["get", "events", "-n", ns, "-o", "custom-columns=R:.reason,M:.message"],
    )
}

/// Loop devices backed by files under `dir`.
pub(crate) fn loops_under(dir: &Path) -> Vec<String> {
    let out = std::process::Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .expect("losetup");
    let dir = dir.to_string_lossy().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_string)
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&dir) && (p.contains("/csi") || p.contains("/volumes/")))
        .map(str::to_string)
        .collect()
}

#[test]
fn claims_are_provisioned_attached_kept_grown_and_reclaimed() {
    let net = nodeless_tests::pod_net();
    let mut n = Nodeless::start_with_node(&["--pod-cidr", &net.cidr, "--cluster-dns", &net.dns]).unwrap();
    let ns = "vol";
    n.kubectl_ok(V, &["create", "namespace", ns]);
    let mut classes = String::new();
    eventually("the default class", 30, || {
        classes = n.kubectl_ok(V, &["get", "storageclass"]);
        classes.contains("nodeless-disk (default)")
    });
    assert!(
        classes.contains("disk.csi.nodeless.io") && classes.contains("WaitForFirstConsumer"),
        "{classes}"
    );

    // A claim on the default class waits for its first pod.
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, namespace: {ns}}}\nspec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 64Mi}}}}}}\n"
        ),
    );
    assert_eq!(get(&n, ns, "pvc/data", "{.spec.storageClassName}"), "nodeless-disk");
    eventually("the claim waits for its consumer", 30, || {
        events(&n, ns).contains("WaitForFirstConsumer")
    });
    assert_eq!(get(&n, ns, "pvc/data", "{.status.phase}"), "Pending");

    let token = format!("bytes-{}", std::process::id());
    apply(
        &n,
        &pod(
            ns,
            "writer",
            "data",
            &format!("echo {token} > /data/f && sync && sleep 3600"),
        ),
    );
    wait_running(&n, ns, "writer");
    assert_eq!(get(&n, ns, "pvc/data", "{.status.phase}"), "Bound");
    let pv = get(&n, ns, "pvc/data", "{.spec.volumeName}");
    assert!(pv.starts_with("pvc-"), "{pv}");
    let pvs = n.kubectl_ok(V, &["get", "pv", &pv]);
    assert!(
        pvs.contains("64Mi") && pvs.contains("RWO") && pvs.contains("Delete") && pvs.contains("Bound"),
        "{pvs}"
    );
    let vas = n.kubectl_ok(V, &["get", "volumeattachments"]);
    assert!(vas.contains(&pv) && vas.contains("true"), "{vas}");
    eventually("the writer wrote", 30, || {
        n.kubectl(V, &["exec", "-n", ns, "writer", "--", "cat", "/data/f"])
            .stdout
            == format!("{token}\n").as_bytes()
    });
    // The pod's root owns what it wrote (ids on the disk are the pod's own).
    let owner = n.kubectl_ok(V, &["exec", "-n", ns, "writer", "--", "stat", "-c", "%u:%g", "/data/f"]);
    assert_eq!(owner.trim(), "0:0");

    // The pod goes; another one reads the same bytes.
    n.kubectl_ok(V, &["delete", "pod", "writer", "-n", ns, "--wait=true"]);
    apply(&n, &pod(ns, "reader", "data", "cat /data/f && sleep 3600"));
    wait_running(&n, ns, "reader");
    eventually("the reader read the writer's bytes", 30, || {
        n.kubectl(V, &["logs", "-n", ns, "reader"]).stdout == format!("{token}\n").as_bytes()
    });

    // Growing the claim grows the filesystem under the running pod.
    let df_kib = || -> u64 {
        let out = n.kubectl(V, &["exec", "-n", ns, "reader", "--", "df", "-k", "/data"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let before = df_kib();
    assert!(before > 30_000 && before < 70_000, "{before} KiB");
    let request = |size: &str| {
        let patch = format!(r#"{{"spec":{{"resources":{{"requests":{{"storage":"{size}"}}}}}}}}"#);
        n.kubectl(V, &["patch", "pvc", "data", "-n", ns, "-p", &patch])
    };
    assert!(request("128Mi").status.success());
    // The disk grows at once; its ext4 grows under a running pod where the kernel lets the
    // node resize online (CAP_SYS_RESOURCE, which this test machine's root lacks), else when the
    // volume is next staged, before it is mounted: a pod restarted on it sees the new size.
    eventually("the volume is 128Mi", 30, || {
        n.kubectl_ok(V, &["get", "pv", &pv]).contains("128Mi")
    });
    if df_kib() < 100_000 {
        eventually("the claim waits for the node to grow it", 30, || {
            get(&n, ns, "pvc/data", "{.status.conditions[*].type}").contains("FileSystemResizePending")
        });
        n.kubectl_ok(V, &["delete", "pod", "reader", "-n", ns, "--wait=true"]);
        apply(&n, &pod(ns, "reader", "data", "cat /data/f && sleep 3600"));
        wait_running(&n, ns, "reader");
    }
    eventually("df in the pod shows the grown disk", 60, || df_kib() > 100_000);
    eventually("the claim's capacity is 128Mi", 30, || {
        get(&n, ns, "pvc/data", "{.status.capacity.storage}") == "128Mi"
    });
    // Shrinking is refused, in Kubernetes' words.
    let out = request("32Mi");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("field can not be less than previous value"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Killed and started again: the pod keeps its volume (the mounts are the kernel's, the driver
    // finds what it staged), and everything below still tears down.
    n.restart(true).unwrap();
    eventually("the pod reads its volume after the restart", 60, || {
        n.kubectl(V, &["exec", "-n", ns, "reader", "--", "cat", "/data/f"])
            .stdout
            == format!("{token}\n").as_bytes()
    });
    assert_eq!(
        get(&n, ns, "pod/reader", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );

    // Bad input: a class that does not exist, a claim that does not exist.
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: lost, namespace: {ns}}}\nspec: {{storageClassName: nope, accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Mi}}}}}}\n"
        ),
    );
    eventually("the claim says its class is missing", 30, || {
        events(&n, ns).contains(r#"storageclass.storage.k8s.io "nope" not found"#)
    });
    assert_eq!(get(&n, ns, "pvc/lost", "{.status.phase}"), "Pending");
    apply(&n, &pod(ns, "orphan", "missing", "sleep 3600"));
    eventually("the pod says its claim is missing", 30, || {
        get(&n, ns, "pod/orphan", "{.status.conditions[0].message}")
            .contains(r#"persistentvolumeclaim "missing" not found"#)
    });

    // Deleted with reclaimPolicy Delete: nothing is left.
    n.kubectl_ok(V, &["delete", "pod", "reader", "orphan", "-n", ns, "--wait=true"]);
    n.kubectl_ok(V, &["delete", "pvc", "data", "lost", "-n", ns, "--wait=true"]);
    eventually("the volume and its attachment are gone", 60, || {
        n.kubectl(V, &["get", "pv", &pv]).status.code() == Some(1)
            && !n.kubectl_ok(V, &["get", "volumeattachments"]).contains(&pv)
    });
    let data = n.data_dir();
    assert!(loops_under(&data).is_empty(), "{:?}", loops_under(&data));
    assert!(mounts_under(&data).is_empty(), "{:?}", mounts_under(&data));
    let disks: Vec<_> = std::fs::read_dir(data.join("csi/disk/disks"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(disks.is_empty(), "{disks:?}");
}

#[test]
fn a_stateful_set_keeps_each_ordinal_on_its_own_disk() {
    let net = nodeless_tests::pod_net();
    let n = Nodeless::start_with_node(&["--pod-cidr", &net.cidr, "--cluster-dns", &net.dns]).unwrap();
    let ns = "stsvol";
    n.kubectl_ok(V, &["create", "namespace", ns]);
    // The example users are pointed to, as it is.
    let example = nodeless_tests::workspace_root().join("examples/storage/disk-statefulset.yaml");
    let out = n.kubectl(V, &["apply", "-n", ns, "-f", &example.to_string_lossy()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    n.kubectl_ok(V, &["rollout", "status", "statefulset/web", "-n", ns, "--timeout=180s"]);
    for i in 0..3 {
        assert_eq!(get(&n, ns, &format!("pvc/data-web-{i}"), "{.status.phase}"), "Bound");
    }
    let read = |pod: &str| n.kubectl_ok(V, &["exec", "-n", ns, pod, "--", "cat", "/data/me"]);
    eventually("web-1 wrote its name", 30, || read("web-1").trim() == "web-1");
    let pv1 = get(&n, ns, "pvc/data-web-1", "{.spec.volumeName}");
    n.kubectl_ok(V, &["delete", "pod", "web-1", "-n", ns, "--wait=true"]);
    eventually("web-1 back", 120, || {
        get(&n, ns, "pod/web-1", "{.status.phase}") == "Running"
    });
    assert_eq!(read("web-1").trim(), "web-1");
    assert_eq!(get(&n, ns, "pvc/data-web-1", "{.spec.volumeName}"), pv1);

    // whenDeleted: Delete — the claims go with the set, and their disks with them.
    n.kubectl_ok(V, &["delete", "sts", "web", "-n", ns, "--wait=true"]);
    eventually("claims and volumes gone", 120, || {
        String::from_utf8_lossy(&n.kubectl(V, &["get", "pvc", "-n", ns, "-o", "name"]).stdout)
            .trim()
            .is_empty()
            && !n.kubectl_ok(V, &["get", "pv"]).contains(&pv1)
    });
    assert!(loops_under(&n.data_dir()).is_empty());
}

#[test]
fn pod_volumes_around_claims() {
    let net = nodeless_tests::pod_net();
    let n = Nodeless::start_with_node(&["--pod-cidr", &net.cidr, "--cluster-dns", &net.dns]).unwrap();
    let node = n.node.clone().unwrap();
    let ns = "podvol";
    n.kubectl_ok(V, &["create", "namespace", ns]);
    apply(
        &n,
        &format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg, namespace: {ns}}}
data: {{k: one}}
---
apiVersion: v1
kind: Pod
metadata: {{name: p, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {{fsGroup: 2000}}
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sleep, "3600"]
    volumeMounts:
    - {{name: cfg, mountPath: /cfg}}
    - {{name: mem, mountPath: /mem}}
    - {{name: scratch, mountPath: /scratch}}
  volumes:
  - {{name: cfg, configMap: {{name: cfg}}}}
  - {{name: mem, emptyDir: {{medium: Memory, sizeLimit: 8Mi}}}}
  - name: scratch
    ephemeral:
      volumeClaimTemplate:
        spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 16Mi}}}}}}
"#
        ),
    );
    wait_running(&n, ns, "p");
    let exec = |cmd: &str| n.kubectl(V, &["exec", "-n", ns, "p", "--", "sh", "-c", cmd]);
    let out = |cmd: &str| String::from_utf8_lossy(&exec(cmd).stdout).trim().to_string();

    // The ephemeral claim: made for the pod, owned by it, bound; fsGroup owns the volume.
    assert_eq!(get(&n, ns, "pvc/p-scratch", "{.status.phase}"), "Bound");
    assert_eq!(get(&n, ns, "pvc/p-scratch", "{.metadata.ownerReferences[0].name}"), "p");
    assert_eq!(out("stat -c %g /scratch"), "2000");
    assert_eq!(out("touch /scratch/g && stat -c %g /scratch/g"), "2000");
    let pv = get(&n, ns, "pvc/p-scratch", "{.spec.volumeName}");

    // A full disk: ENOSPC in the pod, and the pod (and the node) go on.
    let full = exec("dd if=/dev/zero of=/scratch/big bs=1M count=64");
    assert!(!full.status.success());
    assert!(
        String::from_utf8_lossy(&full.stderr).contains("No space left on device"),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    assert_eq!(
        out("rm /scratch/big && echo ok > /scratch/small && cat /scratch/small"),
        "ok"
    );

    // kubelet's volume stats for the claim, through control's node proxy.
    eventually("kubelet_volume_stats for the claim", 30, || {
        let m = n.kubectl_ok(V, &["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/metrics")]);
        m.lines().any(|l| {
            l.starts_with(&format!(
                r#"kubelet_volume_stats_capacity_bytes{{namespace="{ns}",persistentvolumeclaim="p-scratch"}}"#
            )) && l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 8e6 && v < 17e6)
        })
    });

    // The memory-backed emptyDir: a tmpfs of its sizeLimit.
    assert_eq!(out("df -k /mem | tail -1 | awk '{print $2}'"), "8192");
    let over = exec("dd if=/dev/zero of=/mem/f bs=1M count=9");
    assert!(!over.status.success(), "9 MiB fit in an 8 MiB memory emptyDir");

    // A ConfigMap change reaches the running pod (kubelet's promise: within a minute).
    assert_eq!(out("cat /cfg/k"), "one");
    n.kubectl_ok(
        V,
        &["patch", "configmap", "cfg", "-n", ns, "-p", r#"{"data":{"k":"two"}}"#],
    );
    eventually("the new value in the pod", 60, || out("cat /cfg/k") == "two");

    // A raw block claim: the pod gets the device itself at its devicePath.
    apply(
        &n,
        &format!(
            r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: raw, namespace: {ns}}}
spec: {{accessModes: [ReadWriteOnce], volumeMode: Block, resources: {{requests: {{storage: 16Mi}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: b, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sleep, "3600"], volumeDevices: [{{name: raw, devicePath: /dev/xvda}}]}}
  volumes: [{{name: raw, persistentVolumeClaim: {{claimName: raw}}}}]
"#
        ),
    );
    wait_running(&n, ns, "b");
    let block = |cmd: &str| {
        let o = n.kubectl(V, &["exec", "-n", ns, "b", "--", "sh", "-c", cmd]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert!(
        block("ls -l /dev/xvda").starts_with('b'),
        "{}",
        block("ls -l /dev/xvda")
    );
    assert_eq!(block("blockdev --getsize64 /dev/xvda"), "16777216");
    block("echo raw-bytes | dd of=/dev/xvda bs=512 count=1 conv=sync 2>/dev/null");
    assert_eq!(
        block("dd if=/dev/xvda bs=512 count=1 2>/dev/null | head -c 9"),
        "raw-bytes"
    );
    n.kubectl_ok(V, &["delete", "pod", "b", "-n", ns, "--wait=true"]);
    n.kubectl_ok(V, &["delete", "pvc", "raw", "-n", ns, "--wait=true"]);

    // ReadWriteOncePod: a second pod on the claim waits, saying why.
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: solo, namespace: {ns}}}\nspec: {{accessModes: [ReadWriteOncePod], resources: {{requests: {{storage: 16Mi}}}}}}\n"
        ),
    );
    apply(&n, &pod(ns, "solo-a", "solo", "sleep 3600"));
    wait_running(&n, ns, "solo-a");
    apply(&n, &pod(ns, "solo-b", "solo", "sleep 3600"));
    eventually("the second pod waits for the ReadWriteOncePod claim", 30, || {
        get(&n, ns, "pod/solo-b", "{.status.conditions[0].message}").contains("ReadWriteOncePod")
    });
    assert_eq!(get(&n, ns, "pod/solo-b", "{.status.phase}"), "Pending");
    n.kubectl_ok(V, &["delete", "pod", "solo-a", "solo-b", "-n", ns, "--wait=true"]);
    n.kubectl_ok(V, &["delete", "pvc", "solo", "-n", ns, "--wait=true"]);

    // The pod goes, and its ephemeral claim and disk with it.
    n.kubectl_ok(V, &["delete", "pod", "p", "-n", ns, "--wait=true"]);
    eventually("the ephemeral claim and its volume gone", 90, || {
        n.kubectl(V, &["get", "pvc", "p-scratch", "-n", ns]).status.code() == Some(1)
            && n.kubectl(V, &["get", "pv", &pv]).status.code() == Some(1)
    });
    assert!(loops_under(&n.data_dir()).is_empty());
    assert!(mounts_under(&n.data_dir()).is_empty());
}
