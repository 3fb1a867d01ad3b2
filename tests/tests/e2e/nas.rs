//! NAS volumes end to end, with kubectl as users type it, on `nodeless up` and its NAS CSI
//! driver, against an export the test serves (`nfs-server`, NFSv3 over a directory). This
//! machine's kernel has no NFS client, so the driver mounts with its user-space NFSv3 client
//! (FUSE), and says so in the pod's events:
//!
//! - two static PVs in nasplugin's words (`server`, `path`, `mountOptions` with the ports) on
//!   one export directory: two pods on the two claims see each other's writes;
//! - a `volumeAs: subpath` class: each claim its own directory on the export; two pods sharing
//!   one claim see each other's writes, a pod on another claim does not see them; deleting the
//!   claim removes its directory, or with `archiveOnDelete` renames it `archived-…`;
//! - a volume asking for NFSv4 fails its pod with the reason (no kernel client here), it is not
//!   mounted as v3;
//! - afterwards: no FUSE mount or mount process is left.

use nodeless_tests::nfs::NfsServer;
use nodeless_tests::{Nodeless, eventually};

use crate::oss::fuse_mounts_under;
use crate::volumes::{apply, events, get, pod, wait_running};

const V: &str = "1.33";

fn exec(n: &Nodeless, ns: &str, pod: &str, script: &str) -> String {
    String::from_utf8_lossy(&n.kubectl(V, &["exec", "-n", ns, pod, "--", "sh", "-c", script]).stdout).to_string()
}

fn static_pv(name: &str, server: &NfsServer, path: &str, vers: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: {name}}}
spec:
  capacity: {{storage: 5Gi}}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  mountOptions: ["nolock,tcp,noresvport", "vers={vers}", "port={p},mountport={p}"]
  csi:
    driver: nas.csi.nodeless.io
    volumeHandle: {name}
    volumeAttributes: {{server: "127.0.0.1", path: "{path}"}}
"#,
        p = server.port
    )
}

fn claim(ns: &str, name: &str, pv: Option<&str>, class: &str) -> String {
    let volume = pv.map(|p| format!("  volumeName: {p}\n")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  accessModes: [ReadWriteMany]\n  storageClassName: \"{class}\"\n{volume}  resources: {{requests: {{storage: 1Gi}}}}\n"
    )
}

#[test]
fn nas_exports_are_shared_between_pods_and_claims() {
    let nfs = NfsServer::start().unwrap();
    std::fs::create_dir_all(nfs.root.path().join("shared")).unwrap();
    std::fs::create_dir_all(nfs.root.path().join("claims")).unwrap();
    let net = nodeless_tests::pod_net();
    let n = Nodeless::start_with_node(&["--pod-cidr", &net.cidr, "--cluster-dns", &net.dns]).unwrap();
    let ns = "nas";
    n.kubectl_ok(V, &["create", "namespace", ns]);
    eventually("the NAS CSIDriver", 30, || {
        n.kubectl_ok(V, &["get", "csidriver"]).contains("nas.csi.nodeless.io")
    });

    // Two static PVs on one export directory: two claims, two pods, one set of files.
    apply(&n, &static_pv(&format!("{ns}-one"), &nfs, "/export/shared", "3"));
    apply(&n, &static_pv(&format!("{ns}-two"), &nfs, "/export/shared", "3"));
    apply(&n, &claim(ns, "one", Some(&format!("{ns}-one")), ""));
    apply(&n, &claim(ns, "two", Some(&format!("{ns}-two")), ""));
    eventually("both claims Bound", 30, || {
        get(&n, ns, "pvc/one", "{.status.phase}") == "Bound" && get(&n, ns, "pvc/two", "{.status.phase}") == "Bound"
    });
    apply(&n, &pod(ns, "p1", "one", "echo from-p1 > /data/p1.txt && sleep 3600"));
    apply(&n, &pod(ns, "p2", "two", "echo from-p2 > /data/p2.txt && sleep 3600"));
    wait_running(&n, ns, "p1");
    wait_running(&n, ns, "p2");
    eventually("each pod sees the other's file", 60, || {
        exec(&n, ns, "p1", "cat /data/p2.txt") == "from-p2\n" && exec(&n, ns, "p2", "cat /data/p1.txt") == "from-p1\n"
    });
    assert_eq!(
        std::fs::read_to_string(nfs.root.path().join("shared/p1.txt")).unwrap(),
        "from-p1\n"
    );
    // The pod's root owns what it made (ids through the pod's user namespace).
    assert_eq!(exec(&n, ns, "p1", "stat -c %u:%g /data/p1.txt").trim(), "0:0");
    // The user-space client served them, and the pod's events say so.
    let ev = events(&n, ns);
    assert!(
        ev.lines()
            .any(|l| l.contains("SuccessfulMountVolume") && l.contains("nfs3-fuse:127.0.0.1:/export/shared")),
        "{ev}"
    );
    // A bigger file goes through whole.
    let out = exec(
        &n,
        ns,
        "p1",
        "dd if=/dev/zero of=/data/big bs=1M count=24 2>/dev/null && md5sum < /data/big",
    );
    let host = std::process::Command::new("md5sum")
        .arg(nfs.root.path().join("shared/big"))
        .output()
        .unwrap();
    assert_eq!(
        out.split_whitespace().next(),
        String::from_utf8_lossy(&host.stdout).split_whitespace().next()
    );

    // A class: a directory per claim on the shared export.
    let classes = |name: &str, archive: bool| {
        format!(
            r#"apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: {name}}}
provisioner: nas.csi.nodeless.io
reclaimPolicy: Delete
volumeBindingMode: Immediate
mountOptions: ["{opts}"]
parameters: {{volumeAs: subpath, server: "127.0.0.1:/export/claims", archiveOnDelete: "{archive}"}}
"#,
            opts = nfs.mount_options()
        )
    };
    apply(&n, &classes(&format!("{ns}-subpath"), false));
    apply(&n, &classes(&format!("{ns}-archived"), true));
    apply(&n, &claim(ns, "mine", None, &format!("{ns}-subpath")));
    apply(&n, &claim(ns, "theirs", None, &format!("{ns}-subpath")));
    apply(&n, &claim(ns, "kept", None, &format!("{ns}-archived")));
    eventually("the class's claims Bound", 60, || {
        ["mine", "theirs", "kept"]
            .iter()
            .all(|c| get(&n, ns, &format!("pvc/{c}"), "{.status.phase}") == "Bound")
    });
    let mine = get(&n, ns, "pvc/mine", "{.spec.volumeName}");
    let kept = get(&n, ns, "pvc/kept", "{.spec.volumeName}");
    assert!(
        nfs.root.path().join("claims").join(&mine).is_dir(),
        "no directory for {mine}"
    );
    apply(
        &n,
        &pod(ns, "m1", "mine", "echo shared-claim > /data/m.txt && sleep 3600"),
    );
    apply(&n, &pod(ns, "m2", "mine", "sleep 3600"));
    apply(&n, &pod(ns, "t1", "theirs", "sleep 3600"));
    apply(&n, &pod(ns, "k1", "kept", "echo keep-me > /data/k.txt && sleep 3600"));
    for p in ["m1", "m2", "t1", "k1"] {
        wait_running(&n, ns, p);
    }
    eventually("the second pod on the claim sees the first one's file", 60, || {
        exec(&n, ns, "m2", "cat /data/m.txt") == "shared-claim\n"
    });
    assert_eq!(
        exec(&n, ns, "t1", "ls /data"),
        "",
        "another claim's directory is its own"
    );
    eventually("the archived class's file is written", 30, || {
        nfs.root.path().join("claims").join(&kept).join("k.txt").exists()
    });

    // NFSv4 asked of a node without a kernel client: the pod fails with the reason.
    apply(&n, &static_pv(&format!("{ns}-v4"), &nfs, "/export/shared", "4.1"));
    apply(&n, &claim(ns, "v4", Some(&format!("{ns}-v4")), ""));
    apply(&n, &pod(ns, "v4", "v4", "sleep 3600"));
    eventually("the NFSv4 pod says why it cannot start", 90, || {
        events(&n, ns).contains("speaks NFSv3 only")
    });
    assert_ne!(get(&n, ns, "pod/v4", "{.status.phase}"), "Running");

    // Deleting: the claims' directories go (or are archived), no mount is left.
    n.kubectl_ok(V, &["delete", "pod", "--all", "-n", ns, "--wait=true"]);
    n.kubectl_ok(V, &["delete", "pvc", "--all", "-n", ns, "--wait=true"]);
    eventually("the class's volumes are deleted", 60, || {
        let pvs = n.kubectl_ok(V, &["get", "pv"]);
        !pvs.contains(&mine) && !pvs.contains(&kept)
    });
    assert!(
        !nfs.root.path().join("claims").join(&mine).exists(),
        "{mine}'s directory is left"
    );
    let archived: Vec<String> = std::fs::read_dir(nfs.root.path().join("claims"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&format!("archived-{kept}-")))
        .collect();
    assert_eq!(archived.len(), 1, "the archived directory");
    assert!(nfs.root.path().join("claims").join(&archived[0]).join("k.txt").exists());
    for pv in ["one", "two", "v4"] {
        n.kubectl_ok(V, &["delete", "pv", &format!("{ns}-{pv}"), "--wait=true"]);
    }
    eventually("no FUSE mount is left", 60, || {
        fuse_mounts_under(&n.data_dir()).is_empty()
    });
    assert!(
        nfs.root.path().join("shared/p1.txt").exists(),
        "a static volume's files are kept"
    );
}
