//! Two hosts (network namespaces on a bridge: a simulated VPC), each running `nodeless node`
//! with its slice of the pod network, against one control plane. Pods on host A reach pods on
//! host B by IP, ClusterIP and DNS name; an ingress on host A serves them; host B's kubelet API
//! refuses a client without control's certificate; and when host B is lost its pods are
//! replaced on host A while a client polling through the ingress sees a bounded error window.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nodeless_tests::hosts::Vpc;
use nodeless_tests::{eventually, images, kubectl_path, nodeless_binary, tail};

const V: &str = "1.33";
const CLUSTER_CIDR: &str = "10.248.0.0/16";

fn kubectl(kc: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(kubectl_path(V))
        .env("KUBECONFIG", kc)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn kubectl_ok(kc: &Path, args: &[&str]) -> String {
    let out = kubectl(kc, args, None);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The name of the first pod of the `web` Deployment (all of them run on host B).
fn first_web_pod(kc: &Path) -> String {
    kubectl_ok(
        kc,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    )
}

fn apply(kc: &Path, yaml: &str) {
    let out = kubectl(kc, &["apply", "-f", "-"], Some(yaml));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Host A joined with a bootstrap token: its credentials are its own certificate, and they
/// write only what is host A's. A wrong CA hash is refused before anything is sent.
fn node_credentials_stay_with_their_node(bin: &Path, admin: &Path, w: &World, join_args: &[String]) {
    let (a, b) = (&w.nodes[0].name, &w.nodes[1].name);
    let csrs = kubectl_ok(
        admin,
        &[
            "get",
            "csr",
            "-o",
            "jsonpath={range .items[*]}{.spec.signerName} {.spec.username} {.status.conditions[0].type}{\"\\n\"}{end}",
        ],
    );
    assert!(
        csrs.lines().any(
            |l| l.starts_with("kubernetes.io/kube-apiserver-client-kubelet system:bootstrap:")
                && l.ends_with("Approved")
        ),
        "host A's client certificate was asked for with the bootstrap token and approved: {csrs}"
    );
    assert!(
        csrs.lines()
            .any(|l| l == format!("kubernetes.io/kubelet-serving system:node:{a} Approved")),
        "host A asked for its serving certificate as itself: {csrs}"
    );
    let mine = w.nodes[0].data.join("node/kubelet.kubeconfig");
    assert!(mine.exists(), "the node keeps its credentials in its data directory");
    let kc_text = std::fs::read_to_string(&mine).unwrap();
    assert!(
        kc_text.contains("client-certificate-data") && !kc_text.contains("token"),
        "{kc_text}"
    );
    let refused = |args: &[&str], what: &str| {
        let out = kubectl(&mine, args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && (err.contains("Forbidden") || err.contains("forbidden")),
            "host A's credentials {what}: {}{err}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    kubectl_ok(&mine, &["label", "node", a, "nodeless.test/labelled-by-itself=yes"]);
    refused(
        &["label", "node", b, "nodeless.test/labelled-by-a=yes"],
        "labelled another Node",
    );
    refused(&["delete", "node", b, "--wait=false"], "deleted another Node");
    refused(
        &["label", "node", a, "node-restriction.kubernetes.io/trusted=yes"],
        "set an administrator's restricted label on its own Node",
    );
    refused(
        &["annotate", "lease", "-n", "kube-node-lease", b, "nodeless.test/x=y"],
        "changed another host's Lease",
    );
    let web_on_b = first_web_pod(admin);
    refused(
        &["delete", "pod", &web_on_b, "--wait=false"],
        "deleted a pod of another host",
    );
    refused(&["run", "intruder", "--image", images::BUSYBOX], "created a pod");
    refused(&["get", "secrets", "-A"], "listed Secrets");
    refused(
        &[
            "create",
            "clusterrolebinding",
            "me",
            "--clusterrole",
            "cluster-admin",
            "--user",
            &format!("system:node:{a}"),
        ],
        "granted itself cluster-admin",
    );
    let who = kubectl_ok(&mine, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(who, format!("system:node:{a}"));

    // The right token with another CA's hash: the handshake is refused, no certificate asked.
    let mut wrong = join_args.to_vec();
    wrong[5] = format!("sha256:{}", "0".repeat(64));
    let scratch = tempfile::tempdir().unwrap();
    let out = w.vpc.hosts[0]
        .command(bin)
        .args(["node", "--node-name", "impostor-check", "--data-dir"])
        .arg(scratch.path())
        .args(&wrong)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("presented no CA"), "{err}");
}

struct HostNode {
    name: String,
    data: PathBuf,
    log: PathBuf,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_talk_across_hosts_and_a_lost_hosts_pods_move() {
    assert!(nix::unistd::Uid::effective().is_root(), "multi-host tests need root");
    let work = tempfile::Builder::new().prefix("nodeless-hosts-").tempdir().unwrap();
    nodeless_tests::searchable(work.path()).unwrap();
    let vpc = Vpc::new("t", 2).unwrap();
    let bin = nodeless_binary().unwrap();

    // Control on the machine's own VPC address.
    let kc = work.path().join("kc");
    let control_data = work.path().join("control");
    let control_log = std::fs::File::create(work.path().join("control.log")).unwrap();
    let _control = Proc(
        Command::new(&bin)
            .args([
                "control",
                "--listen",
                &format!("{}:0", vpc.gateway()),
                "--cluster-cidr",
                CLUSTER_CIDR,
            ])
            .arg("--data-dir")
            .arg(&control_data)
            .arg("--kubeconfig")
            .arg(&kc)
            .stdout(Stdio::null())
            .stderr(control_log)
            .spawn()
            .unwrap(),
    );
    eventually("control's kubeconfig", 30, || {
        std::fs::read_to_string(&kc).is_ok_and(|t| t.contains("server:"))
    });

    // Each host: its data directory with the test images, a kubelet serving certificate for its
    // address from the cluster CA, and `nodeless node` with its pod CIDR.
    let mut nodes = Vec::new();
    for (i, host) in vpc.hosts.iter().enumerate() {
        let name = format!("{}-{i}", host.netns);
        let data = work.path().join(format!("host{i}"));
        std::fs::create_dir_all(&data).unwrap();
        nodeless_tests::import_test_images(&data).unwrap();
        let issued = nodeless_control::tls::issue_kubelet_serving(
            &control_data.join("pki"),
            &name,
            std::slice::from_ref(&host.addr),
        )
        .unwrap();
        std::fs::write(data.join("kubelet.crt"), &issued.cert_pem).unwrap();
        std::fs::write(data.join("kubelet.key"), &issued.key_pem).unwrap();
        std::fs::copy(control_data.join("pki/ca.crt"), data.join("client-ca.crt")).unwrap();
        nodes.push(HostNode {
            log: work.path().join(format!("host{i}.log")),
            name,
            data,
        });
    }
    // Host A joins as a new host does: with a bootstrap token and the CA's hash, getting its own
    // client and serving certificates. Host B is set up by hand (the admin kubeconfig and a
    // serving certificate issued from the CA), as a host of an existing cluster can be.
    let joining = Command::new(&bin)
        .args(["token", "create", "--ttl", "1h", "--kubeconfig"])
        .arg(&kc)
        .output()
        .unwrap();
    assert!(joining.status.success(), "{}", String::from_utf8_lossy(&joining.stderr));
    let join_line = String::from_utf8_lossy(&joining.stdout).trim().to_string();
    let join_flag = |flag: &str| -> String {
        let words: Vec<&str> = join_line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == flag)
            .unwrap_or_else(|| panic!("{flag} in {join_line}"));
        words[at + 1].to_string()
    };
    let join_args = [
        "--server".to_string(),
        join_flag("--server"),
        "--token".to_string(),
        join_flag("--token"),
        "--ca-cert-hash".to_string(),
        join_flag("--ca-cert-hash"),
    ];
    assert!(join_args[5].starts_with("sha256:"), "{join_line}");
    let start_node = |vpc: &mut Vpc, i: usize, nodes: &[HostNode]| {
        let host = &mut vpc.hosts[i];
        let n = &nodes[i];
        let mut cmd = host.command(&bin);
        cmd.args([
            "node",
            "--node-name",
            &n.name,
            "--restart-backoff",
            "1s",
            "--node-lease-duration",
            "8s",
        ])
        .arg("--data-dir")
        .arg(&n.data)
        .args(["--kubelet-listen", &format!("{}:0", host.addr)])
        .args(["--cluster-cidr", CLUSTER_CIDR, "--dns-listen", "127.0.0.1:0"]);
        if i == 0 {
            cmd.args(&join_args);
        } else {
            cmd.arg("--kubeconfig")
                .arg(&kc)
                .arg("--kubelet-cert")
                .arg(n.data.join("kubelet.crt"))
                .arg("--kubelet-key")
                .arg(n.data.join("kubelet.key"))
                .arg("--kubelet-client-ca")
                .arg(n.data.join("client-ca.crt"));
        }
        // Host B brings its own block; host A takes the one control allocates (10.248.0.0/24,
        // the first that B's does not overlap), and cluster DNS at its first address.
        if i == 1 {
            cmd.args(["--pod-cidr", "10.248.2.0/24", "--cluster-dns", "10.248.2.1"]);
        }
        host.spawn(cmd, &n.log).unwrap();
    };
    let node_log = |n: &HostNode| tail(&std::fs::read_to_string(&n.log).unwrap_or_default(), 3000).to_string();
    let mut w = World { vpc, nodes };
    // Host B first, so the Deployment's pods all land there.
    start_node(&mut w.vpc, 1, &w.nodes);
    eventually("host B's node to be Ready", 60, || {
        kubectl(&kc, &["get", "node", &w.nodes[1].name], None).status.success()
    });
    let echo = images::ECHO;
    apply(
        &kc,
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      tolerations: [{{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}]
      containers:
      - name: echo
        image: {echo}
        ports: [{{containerPort: 8080, name: http}}]
        env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        readinessProbe: {{httpGet: {{path: /ready, port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
        ),
    );
    let waited = kubectl(
        &kc,
        &["wait", "--for=condition=Available", "deployment/web", "--timeout=120s"],
        None,
    );
    assert!(
        waited.status.success(),
        "web is not available: {}\n{}\nnode B: {}",
        String::from_utf8_lossy(&waited.stderr),
        kubectl_ok(&kc, &["get", "pods", "-o", "wide"]),
        node_log(&w.nodes[1])
    );

    // Host A, with a client pod on it.
    start_node(&mut w.vpc, 0, &w.nodes);
    eventually("host A's node to register", 60, || {
        kubectl(&kc, &["get", "node", &w.nodes[0].name], None).status.success()
    });
    let busybox = images::BUSYBOX;
    apply(
        &kc,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: {}}}\n  containers:\n  - {{name: c, image: {busybox}, command: [sleep, \"3600\"]}}\n",
            w.nodes[0].name
        ),
    );
    let waited = kubectl(
        &kc,
        &["wait", "--for=condition=Ready", "pod/client", "--timeout=120s"],
        None,
    );
    assert!(
        waited.status.success(),
        "client is not Ready: {}\nnode A: {}",
        String::from_utf8_lossy(&waited.stderr),
        node_log(&w.nodes[0])
    );
    node_credentials_stay_with_their_node(&bin, &kc, &w, &join_args);
    let a_cidr = kubectl_ok(
        &kc,
        &["get", "node", &w.nodes[0].name, "-o", "jsonpath={.spec.podCIDR}"],
    );
    assert_eq!(a_cidr, "10.248.0.0/24", "control allocated host A's block");
    let client_ip = kubectl_ok(&kc, &["get", "pod", "client", "-o", "jsonpath={.status.podIP}"]);
    assert!(
        client_ip.starts_with("10.248.0."),
        "the client has an address of host A's block: {client_ip}"
    );
    let pod_ips = kubectl_ok(
        &kc,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ],
    );
    let pod_ip = pod_ips.split_whitespace().next().unwrap().to_string();
    assert!(pod_ip.starts_with("10.248.2."), "web runs on host B's slice: {pod_ips}");
    let cluster_ip = kubectl_ok(&kc, &["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    for (what, url) in [
        ("pod IP", format!("http://{pod_ip}:8080/")),
        ("ClusterIP", format!("http://{cluster_ip}/")),
        ("DNS name", "http://web.default.svc.cluster.local/".to_string()),
    ] {
        let out = kubectl(&kc, &["exec", "client", "--", "wget", "-qO-", &url], None);
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && body.contains("web-"),
            "a pod on host A reaches host B's pods by {what} ({url}): {body} {}\nnode A: {}",
            String::from_utf8_lossy(&out.stderr),
            node_log(&w.nodes[0])
        );
    }

    // Host B's kubelet API, from host A's network without control's client certificate: the
    // TLS handshake is refused.
    let port = kubectl_ok(
        &kc,
        &[
            "get",
            "node",
            &w.nodes[1].name,
            "-o",
            "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
        ],
    );
    let web_pod = first_web_pod(&kc);
    let out = w.vpc.hosts[0]
        .command("curl")
        .args(["-sS", "-k", "--max-time", "5"])
        .arg(format!(
            "https://{}:{port}/containerLogs/default/{web_pod}/echo",
            w.vpc.hosts[1].addr
        ))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "host B's kubelet API answered a client without a certificate: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The ingress on host A, routing web.example to the Service.
    let ingress_log = work.path().join("ingress.log");
    let mut cmd = w.vpc.hosts[0].command(&bin);
    let http = format!("{}:18080", w.vpc.hosts[0].addr);
    cmd.args(["ingress", "--kubeconfig"])
        .arg(&kc)
        .args(["--http", &http, "--https", &format!("{}:18443", w.vpc.hosts[0].addr)])
        .args(["--metrics", "127.0.0.1:0", "--ensure-class", "nodeless", "--no-http3"]);
    w.vpc.hosts[0].spawn(cmd, &ingress_log).unwrap();
    apply(
        &kc,
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\nspec:\n  rules:\n  - host: web.example\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}\n",
    );
    let poll = |vpc: &Vpc| {
        vpc.hosts[0]
            .command("curl")
            .args([
                "-s",
                "--max-time",
                "2",
                "-H",
                "Host: web.example",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("http://{http}/"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout) == "200")
            .unwrap_or(false)
    };
    eventually("the ingress on host A to serve host B's pods", 30, || poll(&w.vpc));

    // Lose host B while a client polls through the ingress.
    let lost_at = Instant::now();
    w.vpc.hosts[1].lose();
    let mut results: Vec<(Duration, bool)> = Vec::new();
    let deadline = lost_at + Duration::from_secs(90);
    let mut moved_at = None;
    while Instant::now() < deadline {
        results.push((lost_at.elapsed(), poll(&w.vpc)));
        if moved_at.is_none() {
            let wide = kubectl_ok(
                &kc,
                &[
                    "get",
                    "pods",
                    "-l",
                    "app=web",
                    "-o",
                    "jsonpath={range .items[*]}{.spec.nodeName} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
                ],
            );
            let on_a_ready = wide
                .lines()
                .filter(|l| l.starts_with(&format!("{} True", w.nodes[0].name)) && l.split_whitespace().count() == 2)
                .count();
            if on_a_ready >= 2 {
                moved_at = Some(lost_at.elapsed());
            }
        }
        if let Some(m) = moved_at {
            if lost_at.elapsed() > m + Duration::from_secs(5) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let moved_at = moved_at.unwrap_or_else(|| {
        panic!(
            "host B's pods were not replaced on host A within 90 s:\n{}\n{}",
            kubectl_ok(&kc, &["get", "pods", "-o", "wide"]),
            kubectl_ok(&kc, &["get", "nodes", "-o", "wide"])
        )
    });
    let failures: Vec<Duration> = results.iter().filter(|(_, ok)| !ok).map(|(t, _)| *t).collect();
    let window = match (failures.first(), failures.last()) {
        (Some(a), Some(b)) => *b - *a,
        _ => Duration::ZERO,
    };
    println!(
        "host B lost: its pods Ready on host A after {moved_at:?}; {} of {} polls through the ingress failed, from {:?} to {:?} (a window of {window:?})",
        failures.len(),
        results.len(),
        failures.first(),
        failures.last()
    );
    assert!(window < Duration::from_secs(30), "errors for {window:?}");
    assert!(
        results.iter().rev().take(10).all(|(_, ok)| *ok),
        "the ingress serves again after the move"
    );
    let taints = kubectl_ok(
        &kc,
        &["get", "node", &w.nodes[1].name, "-o", "jsonpath={.spec.taints[*].key}"],
    );
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "host B is tainted: {taints}"
    );
    let ready = kubectl_ok(
        &kc,
        &[
            "get",
            "node",
            &w.nodes[1].name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
    );
    assert_eq!(ready, "Unknown");
}

/// A process killed when the test ends, passed or failed.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The hosts and their nodes: on the way out, every host is lost first (its processes killed),
/// then what its node left on the machine is removed.
struct World {
    vpc: Vpc,
    nodes: Vec<HostNode>,
}

impl Drop for World {
    fn drop(&mut self) {
        for h in &mut self.vpc.hosts {
            h.lose();
        }
        for n in &self.nodes {
            nodeless_tests::clean_node_leftovers(&n.name, &n.data);
        }
    }
}
