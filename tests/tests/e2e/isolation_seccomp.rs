//! Tenant isolation, the container boundary: the seccomp allow-list, the masked and read-only
//! kernel files and the capability rule, tried from inside real pods as a hostile tenant would
//! (issue 23, point 3), under crun and runc. The same run shows the profile costs ordinary
//! programs nothing: busybox forks, reads /proc and lists processes, and the echo image (a
//! multi-threaded tokio server, whose glibc tries `clone3` first) starts and serves.
//! Needs root, as every node test does.

use std::process::{Command, Output};

use nodeless_tests::images::{BUSYBOX, ECHO};
use nodeless_tests::{Nodeless, eventually};

const V: &str = "1.33";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pods() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: tenant}}
spec:
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sleep, "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  containers:
  - name: echo
    image: {ECHO}
    ports: [{{containerPort: 8080, name: http}}]
    readinessProbe: {{httpGet: {{path: /ready, port: http}}, periodSeconds: 1}}
"#
    )
}

/// Every name the node's profile gives the runtime is one the machine's libseccomp knows: crun
/// and runc skip an unknown name silently, and a call the allow-list meant to allow would then
/// be refused in every pod.
#[test]
fn every_profile_name_is_known_to_libseccomp() {
    let profile = nodeless_sandbox_node::seccomp::profile();
    let archs: Vec<String> = profile["architectures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .trim_start_matches("SCMP_ARCH_")
                .to_ascii_lowercase()
        })
        .collect();
    let names: Vec<&str> = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["names"].as_array().unwrap())
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(names.len() > 300, "{} names", names.len());
    let mut unknown = Vec::new();
    for name in names {
        // -1 on every architecture: a name libseccomp has never heard of. (A negative number
        // other than -1 is a call it knows that this architecture lacks, which it skips.)
        let known = archs.iter().any(|arch| {
            let out = Command::new("scmp_sys_resolver")
                .args(["-a", arch, name])
                .output()
                .expect("scmp_sys_resolver runs (Debian package seccomp)");
            text(&out.stdout).trim() != "-1"
        });
        if !known {
            unknown.push(name);
        }
    }
    assert!(unknown.is_empty(), "libseccomp does not know {unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_boundary_holds() {
    container_boundary_holds_under("auto").await;
}

/// The same pods under runc, the runtime `auto` does not pick where crun can run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_boundary_holds_under_runc() {
    container_boundary_holds_under("runc").await;
}

async fn container_boundary_holds_under(runtime: &str) {
    assert!(is_root(), "sandbox-node tests need root");
    let n = Nodeless::start_with_node_network(&["--runtime", runtime]).unwrap();
    let out = |args: &[&str]| text(&n.kubectl(V, args).stdout);
    let applied = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&pods()));
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    n.kubectl_ok(
        V,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/tenant",
            "pod/web",
            "--timeout=60s",
        ],
    );
    let exec = |cmd: &str| -> Output { n.kubectl(V, &["exec", "tenant", "--", "sh", "-c", cmd]) };
    let sh = |cmd: &str| n.kubectl_ok(V, &["exec", "tenant", "--", "sh", "-c", cmd]);

    // The filter is on, for the container's first process and for what exec starts.
    assert_eq!(
        sh("grep '^Seccomp:' /proc/1/status /proc/self/status | cut -d: -f3 | tr -d '\\t'"),
        "2\n2\n"
    );

    // No namespaces: a user namespace (which needs no capability, so only seccomp stops it),
    // a network, mount or PID namespace, nor joining one (setns).
    for cmd in [
        "unshare -U true",
        "unshare -n true",
        "unshare -m true",
        "unshare -p -f true",
        "unshare -U -r id",
        "nsenter -t 1 -n true",
    ] {
        let o = exec(cmd);
        assert!(!o.status.success(), "`{cmd}` succeeded in a pod: {}", text(&o.stdout));
        assert!(
            text(&o.stderr).contains("Operation not permitted"),
            "`{cmd}`: {}",
            text(&o.stderr)
        );
    }
    // Nor mounts (busybox words EPERM as "permission denied (are you root?)").
    let o = exec("mkdir -p /tmp/m && mount -t tmpfs none /tmp/m");
    assert!(
        !o.status.success() && text(&o.stderr).contains("mount: permission denied"),
        "{o:?}"
    );

    // Ordinary things work: a shell, files, /proc, processes, a fork and a wait.
    assert_eq!(sh("echo ok"), "ok\n");
    assert!(sh("ls /bin").lines().any(|l| l == "busybox"));
    assert!(sh("cat /proc/self/status").contains("\nPid:"));
    assert!(sh("ps").contains("sleep 3600"), "ps lists the container's process");
    assert_eq!(sh("sleep 0.1 & wait $!; echo waited $?"), "waited 0\n");
    assert_eq!(sh("echo piped | cat | tr a-z A-Z"), "PIPED\n");
    assert_eq!(
        sh("cd /tmp && echo x > f && mv f g && cat g && rm g && echo gone"),
        "x\ngone\n"
    );

    // Kernel files that describe the host read empty: /proc/interrupts has content on the host.
    assert!(
        !std::fs::read_to_string("/proc/interrupts").unwrap().is_empty(),
        "the host has interrupts to hide"
    );
    for file in [
        "/proc/interrupts",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/kcore",
        "/proc/sched_debug",
        "/proc/latency_stats",
    ] {
        let size = sh(&format!("if [ -e {file} ]; then wc -c < {file}; else echo 0; fi"));
        assert_eq!(size.trim(), "0", "{file} is readable in the pod");
    }
    for dir in [
        "/sys/firmware",
        "/proc/acpi",
        "/proc/scsi",
        "/sys/devices/virtual/powercap",
    ] {
        assert_eq!(
            sh(&format!("ls -A {dir} 2>/dev/null | wc -l")).trim(),
            "0",
            "{dir} lists entries in the pod"
        );
    }
    // …and the host's settings cannot be written.
    for (file, value) in [("/proc/sysrq-trigger", "h"), ("/proc/sys/kernel/domainname", "tenant")] {
        let o = exec(&format!("echo {value} > {file}"));
        assert!(!o.status.success(), "{file} is writable in the pod");
    }

    // The echo server, threads and all, started under the profile and serves on its own IP.
    let ip = out(&["get", "pod", "web", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip.starts_with("10.252."), "{ip}");
    let body = reqwest::get(format!("http://{ip}:8080/hello"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.starts_with("pod: web\npath: /hello\n"), "{body}");

    // A capability outside the platform's set is refused at admission, in any spelling, with
    // the node's own words: CAP_SYS_PTRACE used to pass admission and fail on the node.
    for cap in ["sys_admin", "Cap_Sys_Admin", "sys_ptrace"] {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: caps}}\nspec:\n  containers:\n  - {{name: c, image: {BUSYBOX}, securityContext: {{capabilities: {{add: [{cap}]}}}}}}\n"
        );
        let o = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&pod));
        let err = text(&o.stderr);
        assert!(!o.status.success(), "a pod adding {cap} was admitted");
        let canonical = format!("CAP_{}", cap.to_ascii_uppercase().trim_start_matches("CAP_"));
        assert!(
            err.contains(&format!(
                "capability {canonical} is outside the set this platform grants"
            )),
            "{cap}: {err}"
        );
    }

    // A container started after others gets crun's compiled program from an earlier one (the
    // node's runtime keeps it: `run.oci.seccomp_bpf_data`) and is walled in all the same.
    let later = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: later}}\nspec:\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, \"3600\"]}}\n"
    );
    let applied = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&later));
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    n.kubectl_ok(V, &["wait", "--for=condition=Ready", "pod/later", "--timeout=60s"]);
    let in_later = |cmd: &str| n.kubectl(V, &["exec", "later", "--", "sh", "-c", cmd]);
    let status = in_later("grep '^Seccomp:' /proc/1/status | cut -d: -f2 | tr -d '\\t '");
    assert_eq!(text(&status.stdout).trim(), "2", "{}", text(&status.stderr));
    for cmd in ["unshare -U true", "unshare -n true"] {
        let o = in_later(cmd);
        assert!(
            !o.status.success() && text(&o.stderr).contains("Operation not permitted"),
            "`{cmd}` in the later pod: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
    }
    let uid = out(&["get", "pod", "later", "-o", "jsonpath={.metadata.uid}"]);
    let config = std::path::Path::new("/run/nodeless")
        .join(n.node.as_ref().unwrap())
        .join("bundles")
        .join(&uid)
        .join("containers/c/0/config.json");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let runtime = out(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[0].status.nodeInfo.containerRuntimeVersion}",
    ]);
    let given = config["annotations"].get("run.oci.seccomp_bpf_data").is_some();
    assert_eq!(
        given,
        runtime.starts_with("crun://"),
        "{runtime}: the compiled program given: {given}"
    );

    n.kubectl_ok(V, &["delete", "pods", "--all", "--grace-period=1"]);
    eventually("no pods", 60, || out(&["get", "pods", "-o", "name"]).trim().is_empty());
}
