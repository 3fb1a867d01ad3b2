//! Tenant isolation, replayed as a hostile tenant would try it: an image whose layer reaches out
//! through a symlink, a subPath through a symlink, a configMap swapped for a symlink before the
//! node restarts, the read-only token running commands and reading Secrets, a fork bomb. Each
//! test asserts the attack fails and checks the node's files and the pod's status.

use std::io::Write;
use std::path::Path;

use nodeless_tests::images::BUSYBOX;
use nodeless_tests::{Nodeless, eventually};
use sha2::{Digest, Sha256};

const V: &str = "1.33";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

fn apply(n: &Nodeless, yaml: &str) {
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(yaml));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn out(n: &Nodeless, args: &[&str]) -> String {
    String::from_utf8_lossy(&n.kubectl(V, args).stdout).into_owned()
}

/// Delete every pod and wait until they are gone (their sandboxes torn down).
fn delete_pods(n: &Nodeless, secs: u64) {
    n.kubectl_ok(V, &["delete", "pods", "--all", "--grace-period=1"]);
    eventually("pods gone", secs, || {
        out(n, &["get", "pods", "-o", "name"]).trim().is_empty()
    });
}

/// Apply one pod running `sleep 3600` in busybox and wait for it to be Ready.
fn sleeper(n: &Nodeless, name: &str, spec_extra: &str) {
    apply(
        n,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{spec_extra}  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sh, -c, 'sleep 3600']}}\n"
        ),
    );
    n.kubectl_ok(
        V,
        &["wait", "--for=condition=Ready", &format!("pod/{name}"), "--timeout=60s"],
    );
}

/// An OCI layout of one layer: a symlink `a` to `host`, then an entry under `a` (a whiteout,
/// or an opaque-directory marker).
fn hostile_layout(dir: &Path, host: &Path, second: &str) -> std::path::PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    b.append_link(&mut h, "a", host).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    b.append_data(&mut h, second, std::io::empty()).unwrap();
    let tar_bytes = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes).unwrap();
    let gz = gz.finish().unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes)))]}
    });
    std::fs::create_dir_all(dir).unwrap();
    nodeless_sandbox_node::image::layout::write(
        dir,
        "evil.example/whiteout:1",
        &serde_json::to_vec(&config).unwrap(),
        &[("application/vnd.oci.image.layer.v1.tar+gzip", &gz)],
    )
    .unwrap();
    dir.to_path_buf()
}

#[test]
fn an_image_reaching_out_through_a_symlink_is_refused() {
    assert!(
        is_root(),
        "the image store makes whiteouts (character devices): needs root"
    );
    let n = Nodeless::start().unwrap();
    n.import_test_images().unwrap();
    let before = n.nodeless(&["image", "ls"]).unwrap();
    let t = tempfile::tempdir().unwrap();
    let host = t.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("victim"), "the node's file").unwrap();
    for (i, second) in ["a/.wh.victim", "a/.wh..wh..opq"].iter().enumerate() {
        let layout = hostile_layout(&t.path().join(format!("layout{i}")), &host, second);
        let err = n
            .nodeless(&["image", "import", &layout.to_string_lossy()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("corrupt") && err.contains(second), "{second}: {err}");
        assert_eq!(
            std::fs::read_to_string(host.join("victim")).unwrap(),
            "the node's file",
            "{second}"
        );
        assert!(xattr_absent(&host), "{second}: the host directory was marked opaque");
    }
    assert_eq!(
        std::fs::read_dir(&host).unwrap().count(),
        1,
        "nothing was added beside the victim"
    );
    assert_eq!(n.nodeless(&["image", "ls"]).unwrap(), before, "the store is unchanged");
    let tmp = n.data_dir().join("node/images/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "no scratch left behind"
    );
}

fn xattr_absent(p: &Path) -> bool {
    xattr::get(p, "trusted.overlay.opaque").unwrap().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_path_through_a_symlink_is_an_error_not_the_host_directory() {
    assert!(is_root(), "sandbox-node tests need root");
    let n = Nodeless::start_with_node(&[]).unwrap();
    let t = tempfile::tempdir().unwrap();
    let host = t.path().join("node-secrets");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("marker"), "host-only").unwrap();
    let host_s = host.display();
    apply(
        &n,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: escape}}
spec:
  restartPolicy: Never
  initContainers:
  - {{name: plant, image: {BUSYBOX}, command: [sh, -c, "ln -s {host_s} /vol/x && mkdir -p /vol/real && echo inside > /vol/real/f && ln -s real /vol/rel"],
      volumeMounts: [{{name: v, mountPath: /vol}}]}}
  containers:
  - {{name: read, image: {BUSYBOX}, command: [sh, -c, "cat /mnt/marker; sleep 3600"], volumeMounts: [{{name: v, mountPath: /mnt, subPath: x}}]}}
  volumes: [{{name: v, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: inside}}
spec:
  initContainers:
  - {{name: plant, image: {BUSYBOX}, command: [sh, -c, "mkdir -p /vol/real && echo inside > /vol/real/f && ln -s real /vol/rel"],
      volumeMounts: [{{name: v, mountPath: /vol}}]}}
  containers:
  - name: read
    image: {BUSYBOX}
    command: [sh, -c, "sleep 3600"]
    env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
    volumeMounts:
    - {{name: v, mountPath: /rel, subPath: rel}}
    - {{name: v, mountPath: /made, subPathExpr: "by/$(POD_NAME)"}}
  volumes: [{{name: v, emptyDir: {{}}}}]
"#
        ),
    );
    // The escaping subPath: the container never starts, and the reason says why.
    eventually("escape waits with a config error naming the subPath", 60, || {
        let d = out(
            &n,
            &[
                "get",
                "pod",
                "escape",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].state.waiting.message}",
            ],
        );
        d.starts_with("CreateContainerConfigError") && d.contains("subPath \"x\"") && d.contains("leaves the volume")
    });
    let running = out(
        &n,
        &[
            "get",
            "pod",
            "escape",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.running}",
        ],
    );
    assert!(running.is_empty(), "the container must not run: {running}");
    let logs = n.kubectl(V, &["logs", "escape", "-c", "read"]);
    assert!(!String::from_utf8_lossy(&logs.stdout).contains("host-only"));
    assert_eq!(
        std::fs::read_dir(&host).unwrap().count(),
        1,
        "nothing was made in the host directory"
    );
    // A link that stays inside the volume works as on kubelet, and subPathExpr expands.
    n.kubectl_ok(V, &["wait", "--for=condition=Ready", "pod/inside", "--timeout=60s"]);
    assert_eq!(
        n.kubectl_ok(V, &["exec", "inside", "--", "cat", "/rel/f"]).trim(),
        "inside"
    );
    n.kubectl_ok(V, &["exec", "inside", "--", "sh", "-c", "echo made > /made/g"]);
    let uid = out(&n, &["get", "pod", "inside", "-o", "jsonpath={.metadata.uid}"]);
    let made = n.data_dir().join("node/pods").join(&uid).join("volumes/v/by/inside/g");
    assert_eq!(
        std::fs::read_to_string(&made).unwrap_or_default().trim(),
        "made",
        "{}",
        made.display()
    );
    delete_pods(&n, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_map_swapped_for_a_symlink_is_not_written_through() {
    assert!(is_root(), "sandbox-node tests need root");
    let mut n = Nodeless::start_with_node(&[]).unwrap();
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    std::fs::write(&victim, "node data").unwrap();
    apply(
        &n,
        &format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg}}
data: {{conf: "from-the-configmap"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: holder}}
spec:
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sh, -c, "sleep 3600"], volumeMounts: [{{name: cfg, mountPath: /cfg}}]}}
  volumes: [{{name: cfg, configMap: {{name: cfg}}}}]
"#
        ),
    );
    n.kubectl_ok(V, &["wait", "--for=condition=Ready", "pod/holder", "--timeout=60s"]);
    assert_eq!(
        n.kubectl_ok(V, &["exec", "holder", "--", "cat", "/cfg/conf"]),
        "from-the-configmap"
    );
    // The pod cannot change its configMap volume.
    let victim_s = victim.display().to_string();
    let swap = n.kubectl(
        V,
        &[
            "exec",
            "holder",
            "--",
            "sh",
            "-c",
            &format!("rm -f /cfg/conf; ln -s {victim_s} /cfg/conf"),
        ],
    );
    assert!(!swap.status.success(), "the swap must fail");
    assert!(
        String::from_utf8_lossy(&swap.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&swap.stderr)
    );
    // What a pod could plant in a volume an older node left writable: every name a link out.
    let uid = out(&n, &["get", "pod", "holder", "-o", "jsonpath={.metadata.uid}"]);
    let vol = n.data_dir().join("node/pods").join(&uid).join("volumes/cfg");
    for name in ["conf", "..data"] {
        std::fs::remove_file(vol.join(name)).unwrap();
        std::os::unix::fs::symlink(&victim, vol.join(name)).unwrap();
    }
    // The node restarts, adopts the pod and writes its configMap again.
    n.restart(false).unwrap();
    eventually("the node adopted the pod and rewrote the volume", 60, || {
        std::fs::read_link(vol.join("conf")).is_ok_and(|l| l == Path::new("..data/conf"))
    });
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "node data",
        "the node wrote through the planted link"
    );
    assert_eq!(
        n.kubectl_ok(V, &["exec", "holder", "--", "cat", "/cfg/conf"]),
        "from-the-configmap"
    );
    delete_pods(&n, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_cannot_run_commands_or_read_secrets() {
    assert!(is_root(), "sandbox-node tests need root");
    let n = Nodeless::start_with_node(&[]).unwrap();
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nstringData: {{password: hunter2}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: target}}\nspec:\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sh, -c, 'sleep 3600']}}\n"
        ),
    );
    n.kubectl_ok(V, &["wait", "--for=condition=Ready", "pod/target", "--timeout=60s"]);
    let viewer = n.viewer_kubeconfig();
    for version in nodeless_tests::KUBECTL_VERSIONS {
        let as_viewer = |args: &[&str]| n.kubectl_with(version, &viewer, args, None);
        // Reads work.
        assert!(as_viewer(&["get", "pods"]).status.success());
        for args in [
            &["exec", "target", "--", "id"][..],
            &["attach", "target"],
            &["port-forward", "pod/target", "0:80"],
            &["get", "secret", "s", "-o", "yaml"],
            &["get", "secrets"],
        ] {
            let o = as_viewer(args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                !o.status.success() && err.contains("forbidden"),
                "kubectl {version} {args:?}: {err}"
            );
            assert!(
                !String::from_utf8_lossy(&o.stdout).contains("aHVudGVyMg"),
                "{args:?} showed the secret"
            );
        }
    }
    // The raw requests, every method, are 403 too.
    let http = n.http();
    let token = n.viewer_token();
    for (method, path) in [
        (
            "GET",
            "/api/v1/namespaces/default/pods/target/exec?command=id&stdout=true",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods/target/exec?command=id&stdout=true",
        ),
        ("GET", "/api/v1/namespaces/default/pods/target/attach?stdout=true"),
        ("GET", "/api/v1/namespaces/default/pods/target/portforward?ports=80"),
        ("GET", "/api/v1/namespaces/default/pods/target/proxy/"),
        ("GET", "/api/v1/secrets"),
        ("GET", "/api/v1/watch/namespaces/default/secrets"),
    ] {
        let req = http
            .request(method.parse().unwrap(), n.url(path))
            .bearer_auth(&token)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket");
        let code = req.send().await.unwrap().status().as_u16();
        assert_eq!(code, 403, "{method} {path}");
    }
    // The admin still can.
    assert_eq!(n.kubectl_ok(V, &["exec", "target", "--", "id", "-u"]).trim(), "0");
    delete_pods(&n, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_ends_at_the_pods_limit() {
    assert!(is_root(), "sandbox-node tests need root");
    let n = Nodeless::start_with_node(&[]).unwrap();
    // Bounded: it stops by itself at 6000 forks, well past the limit.
    apply(
        &n,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: bomb}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, "n=0; while [ $n -lt 6000 ]; do sleep 120 & n=$((n+1)); done; echo forked $n; sleep 120"]
"#
        ),
    );
    eventually("the bomb started", 60, || {
        !out(
            &n,
            &[
                "get",
                "pod",
                "bomb",
                "-o",
                "jsonpath={.status.containerStatuses[0].containerID}",
            ],
        )
        .is_empty()
    });
    let uid = out(&n, &["get", "pod", "bomb", "-o", "jsonpath={.metadata.uid}"]);
    let node = n.node.clone().unwrap();
    let cg = Path::new("/sys/fs/cgroup/pids/nodeless").join(&node).join(&uid);
    let unified = Path::new("/sys/fs/cgroup/nodeless").join(&node).join(&uid);
    let cg = if cg.exists() { cg } else { unified };
    let max: u64 = std::fs::read_to_string(cg.join("pids.max"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(max, 4096);
    // Forks fail at the wall: the shell says so, and the pod's cgroup peaked at the cap.
    eventually("the bomb hits the pod's limit", 120, || {
        out(&n, &["logs", "bomb"]).contains("can't fork")
    });
    let peak: u64 = std::fs::read_to_string(cg.join("pids.peak"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(peak, max, "the pod's processes peaked at {peak}");
    // The node is healthy: another pod starts and runs.
    sleeper(&n, "after", "");
    assert_eq!(n.kubectl_ok(V, &["exec", "after", "--", "echo", "ok"]).trim(), "ok");
    delete_pods(&n, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_printing_without_end_keeps_to_its_log_files() {
    assert!(is_root(), "sandbox-node tests need root");
    let n = Nodeless::start_with_node(&[]).unwrap();
    // 64 MiB of output, more than the five 10 MiB files kept, in 16 KiB partial records.
    apply(
        &n,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: chatty}}
spec:
  restartPolicy: Never
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sh, -c, "head -c 67108864 /dev/zero | tr '\\0' x; echo; echo the-end; sleep 3600"]}}
"#
        ),
    );
    let uid = out(&n, &["get", "pod", "chatty", "-o", "jsonpath={.metadata.uid}"]);
    let dir = n.data_dir().join("node/pods").join(&uid).join("containers/c/0");
    eventually("the last line is logged", 120, || {
        out(&n, &["logs", "chatty", "--tail=1"]).trim() == "the-end"
    });
    let mut total = 0;
    for name in ["log", "log.1", "log.2", "log.3", "log.4"] {
        let len = std::fs::metadata(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .len();
        assert!(len <= 10 << 20, "{name} holds {len} bytes");
        total += len;
    }
    assert!(!dir.join("log.5").exists(), "a sixth file was kept");
    assert!(total < 50 << 20, "{total} bytes kept");
    // `kubectl logs` reads the current file only, bounded.
    let logs = n.kubectl_ok(V, &["logs", "chatty"]);
    assert!(
        logs.len() <= 20 << 20 && logs.trim_end().ends_with("the-end"),
        "{} bytes",
        logs.len()
    );
    delete_pods(&n, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_over_its_local_storage_limits_is_evicted() {
    assert!(is_root(), "sandbox-node tests need root");
    let n = Nodeless::start_with_node(&[]).unwrap();
    apply(
        &n,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: fills-volume}}
spec:
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sh, -c, "head -c 4194304 /dev/urandom > /scratch/f; sleep 3600"], volumeMounts: [{{name: scratch, mountPath: /scratch}}]}}
  volumes: [{{name: scratch, emptyDir: {{sizeLimit: 1Mi}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: fills-layer}}
spec:
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sh, -c, "head -c 8388608 /dev/urandom > /tmp/f; sleep 3600"], resources: {{limits: {{ephemeral-storage: 2Mi}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: within}}
spec:
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sh, -c, "head -c 65536 /dev/urandom > /tmp/f; sleep 3600"], resources: {{limits: {{ephemeral-storage: 2Mi}}}}}}
"#
        ),
    );
    let status = |pod: &str| {
        out(
            &n,
            &[
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.phase} {.status.reason} {.status.message}",
            ],
        )
    };
    eventually("the emptyDir over its sizeLimit is evicted", 90, || {
        let s = status("fills-volume");
        s.starts_with("Failed Evicted") && s.contains("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\"")
    });
    eventually("the writable layer over its limit is evicted", 90, || {
        let s = status("fills-layer");
        s.starts_with("Failed Evicted") && s.contains("Container c exceeded its local ephemeral storage limit \"2Mi\"")
    });
    // Its containers stay stopped, and the pod within its limit runs on.
    let running = out(
        &n,
        &[
            "get",
            "pod",
            "fills-layer",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.running}",
        ],
    );
    assert!(running.is_empty(), "{running}");
    assert_eq!(status("within").trim(), "Running");
    let events = out(
        &n,
        &["get", "events", "--field-selector", "reason=Evicted", "-o", "name"],
    );
    assert!(events.lines().count() >= 2, "{events}");
    delete_pods(&n, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_node_cannot_honour_is_refused_not_ignored() {
    assert!(is_root(), "sandbox-node tests need root");
    let n = Nodeless::start_with_node(&[]).unwrap();
    for (spec, field) in [
        ("  runtimeClassName: microvm\n", "spec.runtimeClassName"),
        (
            "  securityContext: {seccompProfile: {type: Unconfined}}\n",
            "spec.securityContext.seccompProfile.type",
        ),
        (
            "  securityContext: {sysctls: [{name: kernel.msgmax, value: '1'}]}\n",
            "spec.securityContext.sysctls[0].name",
        ),
    ] {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: asks}}\nspec:\n{spec}  containers:\n  - {{name: c, image: {BUSYBOX}}}\n"
        );
        let o = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&yaml));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(field), "{field}: {err}");
    }
    // A safe sysctl is honoured inside the pod's own namespaces.
    sleeper(
        &n,
        "tuned",
        "  securityContext: {sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: '0'}]}\n",
    );
    assert_eq!(
        n.kubectl_ok(
            V,
            &[
                "exec",
                "tuned",
                "--",
                "cat",
                "/proc/sys/net/ipv4/ip_unprivileged_port_start"
            ]
        )
        .trim(),
        "0"
    );
    delete_pods(&n, 60);
}
