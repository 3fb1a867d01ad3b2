//! Tenant isolation at the node's own doors (issue 23, "credentials mean what they say"), tried
//! as a hostile local user or network peer would: the kubelet API (exec, logs, port-forward as
//! root in any pod) lets in only control's client certificate, on loopback too; the node's
//! files that hold a pod's secrets (its bundle's config.json, its secret volume) and the
//! control plane's (store, CA key) are out of another user's reach; and the node's Unix sockets
//! (the supervisor's, which runs containers as root, and the IP pool's) hang up on any uid but
//! their own, even one that gets past the file modes. Needs root.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nodeless_tests::images::BUSYBOX;
use nodeless_tests::{KUBECTL_VERSIONS, Nodeless, workspace_binary};

const V: &str = "1.33";

/// A uid with nothing: a stranger on the machine.
const STRANGER: &str = "65534";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A pod with a Secret in its env and in a volume, that logs a line and sleeps.
fn secret_pod() -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: token}}
stringData: {{password: s3cret-value}}
---
apiVersion: v1
kind: Pod
metadata: {{name: holder}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, "echo hello from the pod; sleep 3600"]
    env: [{{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: token, key: password}}}}}}]
    volumeMounts: [{{name: secret, mountPath: /secret}}]
  volumes: [{{name: secret, secret: {{secretName: token}}}}]
"#
    )
}

/// Run `program args` as the stranger: without capabilities, or (`dac_override`) with the one
/// capability that walks past file modes, to reach what only a check of the peer can stop.
fn as_stranger(dac_override: bool, program: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", STRANGER, "--regid", STRANGER, "--clear-groups"]);
    if dac_override {
        c.args(["--inh-caps", "+dac_override", "--ambient-caps", "+dac_override"]);
    }
    c.arg(program).args(args).output().expect("setpriv (util-linux) runs")
}

/// Files named `name` under `dir`, symlinks not followed, mounted image trees skipped.
fn find(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(t) = e.file_type() else { continue };
        let p = e.path();
        if t.is_dir() && !matches!(e.file_name().to_str(), Some("rootfs" | "upper" | "work")) {
            find(&p, name, out);
        } else if t.is_file() && e.file_name() == name {
            out.push(p);
        }
    }
}

/// GET `url` over TLS trusting only `ca`, presenting `identity` (certificate and key, PEM) if
/// any: the status and body, or why there was none.
async fn get(ca: &[u8], identity: Option<String>, url: &str) -> Result<(u16, String), String> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca).map_err(|e| e.to_string())?)
        .timeout(Duration::from_secs(10));
    if let Some(pem) = identity {
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| e.to_string())?);
    }
    let client = b.build().map_err(|e| e.to_string())?;
    let resp = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.map_err(|e| format!("{e:?}"))?))
}

/// Refused: no answer at all (the handshake failed) or 401/403.
fn refused(what: &str, r: &Result<(u16, String), String>) {
    match r {
        Err(_) => {}
        Ok((s, _)) if *s == 401 || *s == 403 => {}
        Ok((s, body)) => panic!("{what}: the kubelet API answered {s}: {body}"),
    }
}

/// A CA of nobody's cluster and a client certificate from it that carries control's name.
fn foreign_identity() -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "nodeless-ca");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, nodeless_control::tls::KUBELET_CLIENT_NAME);
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    format!("{}{}", cert.pem(), key.serialize_pem())
}

fn cluster_identity(n: &Nodeless, name: &str) -> String {
    let issued = nodeless_control::tls::issue_client(&n.data_dir().join("pki"), name).unwrap();
    format!("{}{}", issued.cert_pem, issued.key_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_api_takes_only_controls_certificate_and_pod_secrets_stay_private() {
    assert!(is_root(), "node isolation tests need root");
    let n = Nodeless::start_with_node(&[]).unwrap();
    let node = n.node.clone().unwrap();
    let applied = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&secret_pod()));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    n.kubectl_ok(V, &["wait", "--for=condition=Ready", "pod/holder", "--timeout=60s"]);

    // The Node says TLS, and where.
    let scheme = n.kubectl_ok(
        V,
        &[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.metadata.annotations.nodeless\\.io/kubelet-scheme}",
        ],
    );
    assert_eq!(scheme, "https");
    let port = n.kubectl_ok(
        V,
        &[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
        ],
    );
    let addr = format!("127.0.0.1:{port}");
    let logs = format!("https://{addr}/containerLogs/default/holder/c");
    let ca = n.ca_pem();

    // Plain HTTP on the loopback port gets no HTTP answer, let alone the pod's log.
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET /containerLogs/default/holder/c HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&answer)
    );

    // TLS without a client certificate, with one of another CA (carrying control's name), and
    // with one of the cluster CA that is not control's: all refused.
    refused("no client certificate", &get(&ca, None, &logs).await);
    refused(
        "another CA's certificate",
        &get(&ca, Some(foreign_identity()), &logs).await,
    );
    refused(
        "a cluster certificate with another name",
        &get(&ca, Some(cluster_identity(&n, "system:node:intruder")), &logs).await,
    );
    // Control's name from the cluster CA is let in, and the node's certificate checks out
    // against the cluster CA for the address control dials.
    let ok = get(
        &ca,
        Some(cluster_identity(&n, nodeless_control::tls::KUBELET_CLIENT_NAME)),
        &logs,
    )
    .await;
    assert!(
        matches!(&ok, Ok((200, body)) if body.contains("hello from the pod")),
        "{ok:?}"
    );

    // Through control, logs and exec still work, over websockets (kubectl 1.33) and SPDY (1.27).
    assert_eq!(n.kubectl_ok(V, &["logs", "holder"]).trim(), "hello from the pod");
    for v in KUBECTL_VERSIONS {
        let out = n.kubectl_with(
            v,
            &n.kubeconfig(),
            &["exec", "-i", "holder", "--", "sh", "-c", "cat; echo \"$PASSWORD\""],
            Some("stdin travels\n"),
        );
        assert!(
            out.status.success(),
            "kubectl {v} exec: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            nodeless_tests::tail(&n.log(), 2000)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "stdin travels\ns3cret-value\n",
            "kubectl {v} exec"
        );
    }

    // The data directory and the run directory are root's alone, and so is what is in them: the
    // directories on the way to pods' own are searchable (0711) by the pods' user namespaces,
    // not listable, and each pod's own directories are its range's alone.
    let data = n.data_dir();
    let run = n.node_run_dir().unwrap();
    for d in [
        data.clone(),
        data.join("node"),
        data.join("node/pods"),
        run.clone(),
        PathBuf::from("/run/nodeless"),
        run.join("bundles"),
    ] {
        assert_eq!(mode(&d), 0o711, "{}", d.display());
    }
    for d in [data.join("pki"), data.join("store")] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    for f in [
        data.join("store/objects.redb"),
        data.join("pki/ca.key"),
        data.join("pki/kubelet-client.key"),
        data.join("tokens.json"),
    ] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    // The bundle's config.json holds the Secret's value, and is 0600; so are exec's process files.
    let mut configs = Vec::new();
    find(&run.join("bundles"), "config.json", &mut configs);
    let config = configs
        .iter()
        .find(|c| std::fs::read_to_string(c).is_ok_and(|t| t.contains("PASSWORD=s3cret-value")))
        .unwrap_or_else(|| panic!("no config.json with the Secret's env in {configs:?}"));
    assert_eq!(mode(config), 0o600, "{}", config.display());
    for e in std::fs::read_dir(config.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("exec-"))
    {
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
    }
    // A stranger reads neither the bundle's config.json nor the secret volume's file, nor lists
    // the data directory.
    let mut secrets = Vec::new();
    find(&data.join("node/pods"), "password", &mut secrets);
    assert!(
        !secrets.is_empty(),
        "the secret volume's file is under the pod's directory"
    );
    let cat = Path::new("/bin/cat");
    for f in secrets.iter().chain([config]) {
        let out = as_stranger(false, cat, &[&f.to_string_lossy()]);
        assert!(
            !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("s3cret-value"),
            "uid {STRANGER} read {}",
            f.display()
        );
    }
    assert!(
        !as_stranger(false, Path::new("/bin/ls"), &[&data.to_string_lossy()])
            .status
            .success(),
        "uid {STRANGER} listed the data directory"
    );
}

#[test]
fn node_sockets_hang_up_on_other_uids() {
    assert!(is_root(), "node isolation tests need root");
    let net = nodeless_tests::pod_net();
    let n = Nodeless::start_with_node(&["--pod-cidr", &net.cidr, "--cluster-dns", &net.dns]).unwrap();
    // A pod, so that the supervisor runs.
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: sleeper}}\nspec:\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, \"3600\"]}}\n"
    );
    assert!(
        n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&pod))
            .status
            .success()
    );
    n.kubectl_ok(V, &["wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s"]);
    let run = n.node_run_dir().unwrap();
    let peer = workspace_binary("unix-peer").unwrap();
    // Each socket with a request it answers: the supervisor's namespaces lookup, the pool's status.
    let sockets = [
        (run.join("keeper.sock"), "get no-such-pod"),
        (run.join("eni.sock"), r#"{"op":"status"}"#),
    ];
    for (socket, request) in &sockets {
        let s = socket.to_string_lossy();
        assert_eq!(mode(socket), 0o600, "{s}");
        // Root, the node's own uid, is answered.
        let ours = Command::new(&peer).args([&*s, request]).output().unwrap();
        assert!(
            ours.status.success() && !ours.stdout.is_empty(),
            "{s} did not answer root: {}",
            String::from_utf8_lossy(&ours.stderr)
        );
        // A stranger does not get to the socket (0600 in a 0700 directory)...
        let out = as_stranger(false, &peer, &[&s, request]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{s}: uid {STRANGER} connected: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // ...and one past the file modes (CAP_DAC_OVERRIDE) is hung up on unanswered.
        let out = as_stranger(true, &peer, &[&s, request]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{s}: uid {STRANGER} with CAP_DAC_OVERRIDE was answered: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Even root cannot have the supervisor run a program of its choosing: a run request naming
    // one is refused before anything runs.
    let keeper = run.join("keeper.sock");
    let evil = r#"run {"runtime":"/bin/touch","root":"/tmp","id":"evil","bundle":"/tmp/evil","log":"/tmp/evil.log","exit":"/tmp/evil.exit"}"#;
    let out = Command::new(&peer)
        .args([&*keeper.to_string_lossy(), evil])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.starts_with("failed bad run request") && answer.contains("unknown field"),
        "{answer}"
    );
    assert!(!Path::new("/tmp/evil.exit").exists());
    // The supervisor still serves the node after the refusals.
    n.kubectl_ok(V, &["delete", "pod", "sleeper", "--grace-period=1"]);
}

/// A `nodeless node` process of this test's, stopped and cleaned up even when the test fails.
struct AloneNode {
    child: std::process::Child,
    name: String,
    data: PathBuf,
}

impl Drop for AloneNode {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        nodeless_tests::clean_node_leftovers(&self.name, &self.data);
    }
}

/// A node joining a cluster from elsewhere (its own data directory, no cluster CA key at hand)
/// serves the certificate and trusts the client CA it is given by flags, and control's exec and
/// logs reach it through them.
#[test]
fn a_node_joining_from_elsewhere_takes_its_certificate_from_flags() {
    assert!(is_root(), "node isolation tests need root");
    let n = Nodeless::start().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("nodeless-e2e-alone-")
        .tempdir()
        .unwrap();
    nodeless_tests::searchable(dir.path()).unwrap();
    let data = dir.path().join("data");
    let bin = nodeless_tests::nodeless_binary().unwrap();
    nodeless_tests::import_test_images(&data).unwrap();
    let name = format!("alone-{}", std::process::id());
    // What an operator would hand the node: a serving certificate from the cluster CA, and the CA.
    let issued =
        nodeless_control::tls::issue_kubelet_serving(&n.data_dir().join("pki"), &name, &["127.0.0.1".to_string()])
            .unwrap();
    std::fs::write(dir.path().join("kubelet.crt"), &issued.cert_pem).unwrap();
    std::fs::write(dir.path().join("kubelet.key"), &issued.key_pem).unwrap();
    std::fs::write(dir.path().join("client-ca.crt"), n.ca_pem()).unwrap();
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let child = Command::new(&bin)
        .args(["node", "--node-name", &name, "--restart-backoff", "1s", "--kubeconfig"])
        .arg(n.kubeconfig())
        .arg("--data-dir")
        .arg(&data)
        .arg("--kubelet-cert")
        .arg(dir.path().join("kubelet.crt"))
        .arg("--kubelet-key")
        .arg(dir.path().join("kubelet.key"))
        .arg("--kubelet-client-ca")
        .arg(dir.path().join("client-ca.crt"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _node = AloneNode {
        child,
        name: name.clone(),
        data: data.clone(),
    };
    let node_log = || std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
    nodeless_tests::eventually("the node registers", 30, || {
        n.kubectl(V, &["get", "node", &name]).status.success()
    });
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: alone}}\nspec:\n  nodeName: {name}\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sh, -c, 'echo hello from afar; sleep 3600']}}\n"
    );
    assert!(
        n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&pod))
            .status
            .success()
    );
    let ready = n.kubectl(V, &["wait", "--for=condition=Ready", "pod/alone", "--timeout=60s"]);
    assert!(
        ready.status.success(),
        "{}\nnode log: {}",
        String::from_utf8_lossy(&ready.stderr),
        nodeless_tests::tail(&node_log(), 2000)
    );
    assert_eq!(n.kubectl_ok(V, &["logs", "alone"]).trim(), "hello from afar");
    assert_eq!(
        n.kubectl_ok(V, &["exec", "alone", "--", "echo", "exec from afar"])
            .trim(),
        "exec from afar"
    );
    // Searchable, not listable: the pods' user namespaces pass through it (see `private`).
    assert_eq!(mode(&data), 0o711);
    n.kubectl_ok(V, &["delete", "pod", "alone", "--grace-period=1"]);
}
