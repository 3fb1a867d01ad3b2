//! A user namespace per pod: `id` in a pod says root while the host sees the pod's own
//! unprivileged uid range; two pods get disjoint ranges; root in the pod still writes its
//! rootfs, its emptyDir and its termination log, and sees the node's files (a configMap) as
//! nobody's; `hostUsers: true` is refused at admission, and a node without user namespaces
//! fails a `hostUsers: false` pod with a reason instead of running it without one.

use std::path::Path;

use nodeless_tests::images::BUSYBOX;
use nodeless_tests::{Nodeless, eventually};

const V: &str = "1.33";
/// The first range the node hands out (`nodeless_sandbox_node::userns::FIRST_BASE`).
const FIRST_BASE: u32 = 1 << 20;
const RANGE: u32 = 65536;

fn apply(n: &Nodeless, yaml: &str) {
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(yaml));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn out(n: &Nodeless, args: &[&str]) -> String {
    String::from_utf8_lossy(&n.kubectl(V, args).stdout).into_owned()
}

fn pod(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{extra_spec}  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'sleep 3600']\n    volumeMounts:\n    - {{name: scratch, mountPath: /scratch}}\n    - {{name: conf, mountPath: /conf}}\n  volumes:\n  - {{name: scratch, emptyDir: {{}}}}\n  - {{name: conf, configMap: {{name: conf}}}}\n"
    )
}

/// The uids (real, effective, saved, fs) of the pod's container's first process, as the host sees them.
fn host_uids(n: &Nodeless, pod: &str) -> Vec<u32> {
    let uid = out(n, &["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"]);
    let node = n.node.clone().unwrap();
    let procs = Path::new("/sys/fs/cgroup/pids/nodeless")
        .join(&node)
        .join(&uid)
        .join("c")
        .join("cgroup.procs");
    let procs = if procs.exists() {
        procs
    } else {
        Path::new("/sys/fs/cgroup/nodeless")
            .join(&node)
            .join(&uid)
            .join("c")
            .join("cgroup.procs")
    };
    let pids = std::fs::read_to_string(&procs).unwrap_or_else(|e| panic!("{}: {e}", procs.display()));
    let pid = pids
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no process in {}", procs.display()));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().skip(1).map(|u| u.parse().unwrap()).collect()
}

/// Wait for the pod to be ready; if it is not, say why (its description and the node's log).
fn ready(n: &Nodeless, pod: &str) {
    for _ in 0..120 {
        if out(
            n,
            &["get", "pod", pod, "-o", "jsonpath={.status.containerStatuses[0].ready}"],
        ) == "true"
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!(
        "pod {pod} is not ready:\n{}\n{}",
        out(n, &["describe", "pod", pod]),
        nodeless_tests::tail(&n.log(), 3000)
    );
}

/// The directory `name` under `dir` on a path through a directory named `under`.
fn find_dir(dir: &Path, under: &str, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let (p, file) = (e.path(), e.file_name());
        if !e.file_type().is_ok_and(|t| t.is_dir()) || file == "rootfs" {
            continue;
        }
        if file == name && p.to_string_lossy().contains(under) {
            return Some(p);
        }
        if let Some(found) = find_dir(&p, under, name) {
            return Some(found);
        }
    }
    None
}

fn exec(n: &Nodeless, pod: &str, script: &str) -> std::process::Output {
    n.kubectl(V, &["exec", pod, "--", "sh", "-c", script])
}

#[test]
fn root_in_a_pod_is_an_unprivileged_range_on_the_host() {
    let n = Nodeless::start_with_node(&[]).unwrap();
    apply(
        &n,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: conf}\ndata: {greeting: hello}\n",
    );
    apply(&n, &pod("a", ""));
    apply(&n, &pod("b", "  hostUsers: false\n"));
    for p in ["a", "b"] {
        ready(&n, p);
    }

    // Root inside, the pod's range base outside.
    let id = n.kubectl_ok(V, &["exec", "a", "--", "id", "-u"]);
    assert_eq!(id.trim(), "0");
    let (a, b) = (host_uids(&n, "a"), host_uids(&n, "b"));
    for (p, uids) in [("a", &a), ("b", &b)] {
        assert_eq!(uids.len(), 4, "{p}: {uids:?}");
        assert!(uids.iter().all(|u| *u == uids[0]), "{p}: {uids:?}");
        assert!(
            uids[0] >= FIRST_BASE && (uids[0] - FIRST_BASE).is_multiple_of(RANGE),
            "pod {p} runs as host uid {}",
            uids[0]
        );
    }
    assert!(a[0].abs_diff(b[0]) >= RANGE, "ranges overlap: {} and {}", a[0], b[0]);
    let map = n.kubectl_ok(V, &["exec", "a", "--", "cat", "/proc/self/uid_map"]);
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", &a[0].to_string(), "65536"]
    );

    // Root in the pod writes its rootfs, its emptyDir and its termination log.
    let w = exec(
        &n,
        "a",
        "touch /etc/x && echo rootfs > /etc/x && mkdir -p /root/d && touch /scratch/y && chown 1000:1000 /scratch/y && echo ended > /dev/termination-log && echo ok",
    );
    assert!(
        w.status.success() && String::from_utf8_lossy(&w.stdout).contains("ok"),
        "{}",
        String::from_utf8_lossy(&w.stderr)
    );
    let owners = n.kubectl_ok(
        V,
        &[
            "exec",
            "a",
            "--",
            "stat",
            "-c",
            "%u",
            "/etc/x",
            "/scratch/y",
            "/etc/passwd",
        ],
    );
    assert_eq!(
        owners.split_whitespace().collect::<Vec<_>>(),
        ["0", "1000", "0"],
        "the image's files are root's in the pod"
    );
    // The image's layers are seen through idmapped mounts: the pod's writable layer holds what
    // it wrote and nothing else (a shift of owners would have copied up every entry's metadata).
    let uid = out(&n, &["get", "pod", "a", "-o", "jsonpath={.metadata.uid}"]);
    let upper = find_dir(&n.data_dir(), &uid, "upper")
        .unwrap_or_else(|| panic!("no writable layer for pod {uid} under {}", n.data_dir().display()));
    assert!(upper.join("etc/x").is_file(), "{}", upper.display());
    let copied: Vec<_> = std::fs::read_dir(&upper)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !copied.iter().any(|n| n == "bin"),
        "the rootfs was shifted, not idmapped: {copied:?} in {}",
        upper.display()
    );
    let on_disk = std::fs::metadata(upper.join("etc/x")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&on_disk),
        a[0],
        "a file root wrote in the pod belongs to the pod's range on the host"
    );

    // The node's files (a configMap) are readable and read-only, and owned by nobody in the pod:
    // root in the pod is not root over them.
    assert_eq!(n.kubectl_ok(V, &["exec", "a", "--", "cat", "/conf/greeting"]), "hello");
    let conf = n.kubectl_ok(V, &["exec", "a", "--", "stat", "-L", "-c", "%u", "/conf/greeting"]);
    assert_eq!(conf.trim(), "65534");
    assert!(
        !exec(&n, "a", "echo x > /conf/greeting").status.success(),
        "a configMap file was writable"
    );

    // Root in the pod keeps the capabilities it has over its own network (a port below 1024).
    let bind = exec(
        &n,
        "a",
        "nc -l -p 80 </dev/null >/dev/null 2>&1 & p=$!; sleep 0.3; netstat -ltn | grep -q ':80 ' && echo bound; kill $p",
    );
    assert!(
        String::from_utf8_lossy(&bind.stdout).contains("bound"),
        "{}{}",
        String::from_utf8_lossy(&bind.stdout),
        String::from_utf8_lossy(&bind.stderr)
    );

    // A termination message written by root in a user namespace reaches the status.
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: t}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'echo goodbye > /dev/termination-log']\n"
        ),
    );
    eventually("t ends with its message", 60, || {
        out(
            &n,
            &[
                "get",
                "pod",
                "t",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.terminated.message}",
            ],
        )
        .contains("goodbye")
    });
}

#[test]
fn host_users_true_is_refused_at_admission() {
    let n = Nodeless::start().unwrap();
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: h}}\nspec:\n  hostUsers: true\n  containers:\n  - {{name: c, image: {BUSYBOX}}}\n"
    );
    let o = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&yaml));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("spec.hostUsers") && err.contains("Forbidden"), "{err}");
    assert!(out(&n, &["get", "pods", "-o", "name"]).trim().is_empty());
}

#[test]
fn a_node_without_user_namespaces_fails_a_pod_that_asks_for_one() {
    let n = Nodeless::start_with_node(&["--no-user-namespaces"]).unwrap();
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: u}}\nspec:\n  hostUsers: false\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, '3600']}}\n"
        ),
    );
    eventually("the node says why", 60, || {
        let events = out(
            &n,
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=u",
                "-o",
                "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
            ],
        );
        events.contains("FailedCreatePodSandBox")
            && events.contains("spec.hostUsers: false")
            && events.contains("--no-user-namespaces")
    });
    assert_ne!(
        out(&n, &["get", "pod", "u", "-o", "jsonpath={.status.phase}"]),
        "Running"
    );
    // Without hostUsers, the same node runs pods as before (as the host's root).
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: plain}}\nspec:\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, '3600']}}\n"
        ),
    );
    eventually("plain is ready", 60, || {
        out(
            &n,
            &[
                "get",
                "pod",
                "plain",
                "-o",
                "jsonpath={.status.containerStatuses[0].ready}",
            ],
        ) == "true"
    });
    let node = n.node.clone().unwrap();
    let uid = out(&n, &["get", "pod", "plain", "-o", "jsonpath={.metadata.uid}"]);
    let procs = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/pids/nodeless")
            .join(&node)
            .join(&uid)
            .join("c")
            .join("cgroup.procs"),
    )
    .unwrap_or_default();
    if let Some(pid) = procs.lines().next() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        );
    }
}
