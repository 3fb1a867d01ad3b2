//! MicroVM pods end to end on `nodeless up`: a RuntimeClass with handler `microvm`, a
//! Deployment that names it, run as a QEMU microvm (TCG on this machine) with the guest agent
//! as PID 1:
//!
//! - the pod gets Ready through an HTTP readiness probe the node dials inside the VM;
//! - its configMap, service account token, emptyDir and disk claim reach the container;
//! - `uname -r` in the container (its log and `kubectl exec`) is the guest kernel's, not the
//!   host's; the pod's events say how the VM started;
//! - `kubectl exec` (and `exec -it`, on a terminal of the container's own) gives the guest's
//!   answers and exit codes; port-forward reaches the pod;
//! - another pod reaches it through its Service's ClusterIP and DNS name, and the ingress routes
//!   to it (the VM carries the pod's address);
//! - a crash restarts the container inside the same VM; the node killed with -9 and started
//!   again adopts the VM (same QEMU process, no restart);
//! - a pod naming a RuntimeClass that does not exist is refused with the reason;
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
    let http = format!("127.0.0.1:{}", nodeless_tests::free_port());
    let agent = nodeless_tests::guest_agent_binary().unwrap().display().to_string();
    let mut n = Nodeless::start_with_node(&[
        "--pod-cidr",
        &net.cidr,
        "--cluster-dns",
        &net.dns,
        "--ingress-http",
        &http,
        "--ingress-https",
        "127.0.0.1:0",
        "--ingress-metrics",
        "127.0.0.1:0",
        "--no-lb-pool",
        "--vm-agent",
        &agent,
    ])
    .unwrap();
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
apiVersion: v1
kind: ConfigMap
metadata: {{name: vmcfg, namespace: {ns}}}
data: {{k: one}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: {ns}}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
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
          # Under TCG on a machine busy with the rest of the suite, a request into the VM can
          # take longer than the default second.
          timeoutSeconds: 10
        volumeMounts: [{{name: cfg, mountPath: /etc/cfg}}, {{name: scratch, mountPath: /scratch}}, {{name: data, mountPath: /data}}]
      volumes:
      - {{name: cfg, configMap: {{name: vmcfg}}}}
      - {{name: scratch, emptyDir: {{}}}}
      - {{name: data, persistentVolumeClaim: {{claimName: data}}}}
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
    let ready = || {
        get(
            &n,
            ns,
            "pods",
            "{.items[0].status.conditions[?(@.type==\"Ready\")].status}",
        ) == "True"
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(480);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "the microVM pod is not Ready: {}\n{}\n{}",
            n.kubectl_ok(V, &["get", "pods", "-n", ns, "-o", "wide"]),
            events(&n, ns),
            n.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let pod = get(&n, ns, "pods", "{.items[0].metadata.name}");
    let uid = get(&n, ns, "pods", "{.items[0].metadata.uid}");
    let logs = n.kubectl_ok(V, &["logs", "-n", ns, &pod]);
    assert_eq!(logs.lines().next(), Some(guest.as_str()), "{logs}");
    let exec = n.kubectl_ok(V, &["exec", "-n", ns, &pod, "--", "uname", "-r"]);
    assert_eq!(exec.trim(), guest);
    let exec = n.kubectl(V, &["exec", "-n", ns, &pod, "--", "sh", "-c", "exit 3"]);
    assert_eq!(exec.status.code(), Some(3), "{}", String::from_utf8_lossy(&exec.stderr));
    // The pod's volumes reach the container in the VM: a configMap, its service account's
    // token, an emptyDir and a disk claim, all shared from the host.
    let files = n.kubectl_ok(
        V,
        &["exec", "-n", ns, &pod, "--", "sh", "-c",
          "cat /etc/cfg/k /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; echo x > /scratch/f && cat /scratch/f; echo d > /data/f && cat /data/f"],
    );
    assert_eq!(files, format!("one{ns}\nx\nd\n"));
    // exec -it: a terminal of the container's own, typed into.
    let line = format!(
        "{} --kubeconfig {} exec -it -n {ns} {pod} -- sh",
        nodeless_tests::kubectl_path(V).display(),
        n.kubeconfig().display()
    );
    // script gives kubectl a terminal; what is typed into it comes from script's stdin.
    let mut typing = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(typing.stdin.as_mut().unwrap(), b"tty\nexit 4\n").unwrap();
    let out = typing.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/0") && text.contains("exit code 4"), "{text}");
    let ev = events(&n, ns);
    assert!(ev.contains("StartedVM") && ev.contains("microVM started (TCG"), "{ev}");
    let id = get(&n, ns, "pods", "{.items[0].status.containerStatuses[0].containerID}");
    assert!(id.starts_with("microvm://"), "{id}");

    // Another pod (an ordinary sandbox) reaches it by its Service's ClusterIP and DNS name.
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: {ns}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, '3600']}}\n"
        ),
    );
    eventually("the client pod Running", 120, || {
        get(&n, ns, "pod/client", "{.status.phase}") == "Running"
    });
    for target in [
        get(&n, ns, "svc/web", "{.spec.clusterIP}"),
        format!("web.{ns}.svc.cluster.local"),
    ] {
        eventually(&format!("the VM's page through {target}"), 60, || {
            let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {target} 80");
            let out = n.kubectl(V, &["exec", "-n", ns, "client", "--", "sh", "-c", &script]);
            String::from_utf8_lossy(&out.stdout).contains("hello-from-the-vm")
        });
    }

    // The ingress routes to it.
    apply(
        &n,
        &format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  rules:\n  - host: vm.example\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n"
        ),
    );
    eventually("the VM's page through the ingress", 60, || {
        let Ok(mut c) = std::net::TcpStream::connect(&http) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let _ = std::io::Write::write_all(
            &mut c,
            b"GET / HTTP/1.1\r\nHost: vm.example\r\nConnection: close\r\n\r\n",
        );
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut body);
        body.contains("hello-from-the-vm")
    });

    // port-forward reaches the pod's port inside the VM.
    let mut pf = std::process::Command::new(nodeless_tests::kubectl_path(V))
        .env("KUBECONFIG", n.kubeconfig())
        .args(["port-forward", "-n", ns, &format!("pod/{pod}"), ":8080"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(pf.stdout.take().unwrap()));
    let line = lines
        .find_map(|l| l.ok().filter(|l| l.starts_with("Forwarding from 127.0.0.1:")))
        .expect("port-forward listens");
    std::thread::spawn(move || lines.for_each(drop));
    let port = line
        .trim_start_matches("Forwarding from 127.0.0.1:")
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let mut conn = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    std::io::Write::write_all(&mut conn, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(&mut conn, &mut body);
    let _ = pf.kill();
    let _ = pf.wait();
    assert!(body.contains("hello-from-the-vm"), "{body}");

    // A crash restarts the container inside the same VM.
    let qemu = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("nodeless-{uid}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let vm = qemu();
    assert!(!vm.is_empty() && !vm.contains('\n'), "one QEMU for the pod: {vm:?}");
    n.kubectl_ok(V, &["exec", "-n", ns, &pod, "--", "sh", "-c", "kill $(pidof httpd)"]);
    eventually("the container restarted and Ready", 240, || {
        get(
            &n,
            ns,
            &format!("pod/{pod}"),
            "{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}",
        ) == "1 true"
    });
    assert_eq!(qemu(), vm, "the same VM");

    // The node killed and started again adopts the VM: same QEMU, no restart.
    n.restart(true).unwrap();
    eventually("the adopted pod answers exec", 120, || {
        let out = n.kubectl(V, &["exec", "-n", ns, &pod, "--", "uname", "-r"]);
        String::from_utf8_lossy(&out.stdout).trim() == guest
    });
    assert_eq!(qemu(), vm, "the same VM after the node's restart");
    assert_eq!(
        get(
            &n,
            ns,
            &format!("pod/{pod}"),
            "{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}"
        ),
        "1 true"
    );

    // A class that does not exist: the pod is refused with why.
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: nope, namespace: {ns}}}\nspec:\n  runtimeClassName: kata\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, '3600']}}\n"
    );
    let o = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&yaml));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("spec.runtimeClassName: RuntimeClass \"kata\" not found"),
        "{err}"
    );

    n.kubectl_ok(V, &["delete", "-n", ns, "deployment/web", "--wait=true"]);
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
