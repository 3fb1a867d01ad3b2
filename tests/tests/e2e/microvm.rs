//! MicroVM pods end to end on `nodeless up`: a RuntimeClass with handler `microvm`, a
//! Deployment that names it, run as a QEMU microvm (TCG on this machine) with the guest agent
//! as PID 1:
//!
//! - the pod gets Ready through an HTTP readiness probe the node dials inside the VM;
//! - `uname -r` in the container (its log and `kubectl exec`) is the guest kernel's, not the
//!   host's; the pod's events say how the VM started;
//! - another pod reaches it through its Service's ClusterIP (the VM carries the pod's address);
//! - a RuntimeClass that does not exist fails a pod with the reason;
//! - after deletion no QEMU process or VM directory of the pod is left.

use nodeless_tests::{Nodeless, eventually};

use crate::volumes::{apply, events, get};

const V: &str = "1.33";
use nodeless_tests::images::BUSYBOX;

fn guest_release() -> String {
    let kernel = nodeless_sandbox_node::vm::initramfs::default_kernel().expect("a guest kernel in /boot");
    nodeless_sandbox_node::vm::initramfs::release_of(&kernel).unwrap()
}

#[test]
fn a_microvm_pod_runs_its_own_kernel_and_keeps_the_pods_network() {
    let guest = guest_release();
    let host = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .to_string();
    assert_ne!(guest, host, "the test needs a guest kernel other than the host's");
    let net = nodeless_tests::pod_net();
    let n = Nodeless::start_with_node(&["--pod-cidr", &net.cidr, "--cluster-dns", &net.dns]).unwrap();
    let ns = "vm";
    n.kubectl_ok(V, &["create", "namespace", ns]);
    apply(
        &n,
        &format!(
            r#"apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {{name: microvm}}
handler: microvm
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      runtimeClassName: microvm
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {BUSYBOX}
        command: [sh, -c, 'uname -r; mkdir -p /www && echo hello-from-the-vm > /www/index.html && exec httpd -f -p 8080 -h /www']
        readinessProbe:
          httpGet: {{path: /, port: 8080}}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
        ),
    );
    eventually("the microVM pod Ready", 300, || {
        get(
            &n,
            ns,
            "pods",
            "{.items[0].status.conditions[?(@.type==\"Ready\")].status}",
        ) == "True"
    });
    let pod = get(&n, ns, "pods", "{.items[0].metadata.name}");
    let uid = get(&n, ns, "pods", "{.items[0].metadata.uid}");
    let logs = n.kubectl_ok(V, &["logs", "-n", ns, &pod]);
    assert_eq!(logs.lines().next(), Some(guest.as_str()), "{logs}");
    let exec = n.kubectl_ok(V, &["exec", "-n", ns, &pod, "--", "uname", "-r"]);
    assert_eq!(exec.trim(), guest);
    let exec = n.kubectl(V, &["exec", "-n", ns, &pod, "--", "sh", "-c", "exit 3"]);
    assert_eq!(exec.status.code(), Some(3), "{}", String::from_utf8_lossy(&exec.stderr));
    let ev = events(&n, ns);
    assert!(ev.contains("StartedVM") && ev.contains("microVM started (TCG"), "{ev}");
    let id = get(&n, ns, "pods", "{.items[0].status.containerStatuses[0].containerID}");
    assert!(id.starts_with("microvm://"), "{id}");

    // Another pod (an ordinary sandbox) reaches it by its Service's ClusterIP.
    let ip = get(&n, ns, "svc/web", "{.spec.clusterIP}");
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: {ns}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, '3600']}}\n"
        ),
    );
    eventually("the client pod Running", 120, || {
        get(&n, ns, "pod/client", "{.status.phase}") == "Running"
    });
    eventually("the VM's page through the Service", 60, || {
        let out = n.kubectl(
            V,
            &[
                "exec",
                "-n",
                ns,
                "client",
                "--",
                "wget",
                "-qO-",
                "-T",
                "3",
                &format!("http://{ip}/"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).contains("hello-from-the-vm")
    });

    // A class that does not exist: the pod fails with why.
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: nope, namespace: {ns}}}\nspec:\n  runtimeClassName: kata\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, '3600']}}\n"
        ),
    );
    eventually("the pod with a missing RuntimeClass fails with the reason", 60, || {
        events(&n, ns).contains("RuntimeClass \"kata\" not found")
    });

    n.kubectl_ok(V, &["delete", "-n", ns, "deployment/web", "pod/nope", "--wait=true"]);
    eventually("the microVM pod gone", 120, || {
        get(&n, ns, "pods", "{.items[*].metadata.name}") == "client"
    });
    eventually("no QEMU of the pod left", 30, || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("nodeless-{uid}")])
            .output()
            .unwrap();
        out.stdout.is_empty()
    });
}
