//! The eBPF service load balancer (`eni-cni services`): ClusterIP ports reach ready endpoints
//! for every process of the cgroup it is attached to, over TCP and UDP (replies and
//! getpeername show the ClusterIP), with ClientIP affinity, refusing ports with no endpoint,
//! and following changes; then the same through `nodeless up --pod-cidr`, where pods reach
//! Services by ClusterIP and the balancer follows EndpointSlices. Each test makes its own
//! cgroup and pins, and removes them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nodeless_tests::{eventually, free_port, workspace_binary};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A cgroup v2 directory of the test's own; its processes are killed and it is removed on drop.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn new() -> Cgroup {
        let dir = nodeless_tests::cgroup2_root().unwrap().join(unique("nltest-lb"));
        std::fs::create_dir(&dir).unwrap();
        Cgroup { dir }
    }

    /// Run a command inside the cgroup (the shell joins it, then execs the command).
    fn run(&self, args: &[&str]) -> Output {
        let procs = self.dir.join("cgroup.procs");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("echo $$ > {} && exec \"$@\"", procs.display()))
            .arg("sh")
            .args(args);
        cmd.output().unwrap()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            for pid in std::fs::read_to_string(self.dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A balancer's pin directory, removed on drop (the test may end before the balancer does;
/// unpinning its links detaches the programs).
struct PinsGone(PathBuf);

impl Drop for PinsGone {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo_server(name: &str, port: u16) -> Running {
    let bin = workspace_binary("echo-server").unwrap();
    let child = Command::new(bin)
        .env("PORT", port.to_string())
        .env("POD_NAME", name)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "echo-server {name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Running(child)
}

fn show(name: &str) -> String {
    let out = Command::new(workspace_binary("eni-cni").unwrap())
        .args(["show", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn counter(name: &str, which: &str) -> u64 {
    show(name)
        .lines()
        .find_map(|l| l.trim().strip_prefix(which).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Which echo pod answered a GET through the cgroup.
fn get_from(cg: &Cgroup, url: &str) -> Result<String, String> {
    let echo = workspace_binary("echo-server").unwrap();
    let out = cg.run(&[echo.to_str().unwrap(), "get", url]);
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(body
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("pod: "))
        .unwrap_or_default()
        .to_string())
}

#[test]
fn the_balancer_serves_a_table_to_a_cgroup() {
    let bin = workspace_binary("eni-cni").unwrap();
    let name = unique("nllb");
    let _pins = PinsGone(Path::new("/sys/fs/bpf/nodeless/lb").join(&name));
    let cg = Cgroup::new();
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table.json");
    let (pa, pb) = (free_port(), free_port());
    let _a = echo_server("a", pa);
    let _b = echo_server("b", pb);
    let k = 1 + NEXT.fetch_add(1, Ordering::Relaxed) % 250;
    let vip = format!("10.250.{k}.10");
    let sticky = format!("10.250.{k}.11");
    let empty = format!("10.250.{k}.12");
    let write_table = |endpoints: &[u16]| {
        let eps: Vec<String> = endpoints.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let rows = serde_json::json!([
            {"address": vip, "port": 80, "endpoints": eps},
            {"address": vip, "port": 53, "protocol": "UDP", "endpoints": [format!("127.0.0.1:{pa}")]},
            {"address": sticky, "port": 80, "endpoints": [format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}")], "affinity": 60},
            {"address": empty, "port": 80, "endpoints": []},
        ]);
        std::fs::write(&table, rows.to_string()).unwrap();
    };

    // A bad table is refused, naming the row and field, and nothing is attached.
    std::fs::write(&table, r#"[{"address": "10.250.0.1", "port": 80, "protocol": "SCTP"}]"#).unwrap();
    let out = Command::new(&bin)
        .args(["services", "--name", &name, "--cgroup"])
        .arg(&cg.dir)
        .arg("--table")
        .arg(&table)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[0].protocol"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new("/sys/fs/bpf/nodeless/lb").join(&name).exists());

    write_table(&[pa, pb]);
    let lb = Running(
        Command::new(&bin)
            .args(["services", "--name", &name, "--cgroup"])
            .arg(&cg.dir)
            .arg("--table")
            .arg(&table)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("the balancer to load its table", 10, || {
        show(&name).contains("services: 4 ports ")
    });

    // TCP: both endpoints serve the ClusterIP.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..30 {
        seen.insert(get_from(&cg, &format!("http://{vip}:80/{i}")).unwrap());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["a", "b"],
        "both endpoints are chosen"
    );
    assert!(counter(&name, "translated") >= 2, "{}", show(&name));

    // UDP with sendto/recvfrom: the answer shows the ClusterIP, not the endpoint.
    let echo = workspace_binary("echo-server").unwrap();
    let out = cg.run(&[echo.to_str().unwrap(), "udp", &format!("{vip}:53"), "ping"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text, format!("from: {vip}:53\npod: a\nping\n"));
    assert!(counter(&name, "reversed") >= 1, "{}", show(&name));

    // ClientIP affinity: one client keeps its endpoint.
    let first = get_from(&cg, &format!("http://{sticky}:80/")).unwrap();
    for _ in 0..10 {
        assert_eq!(
            get_from(&cg, &format!("http://{sticky}:80/")).unwrap(),
            first,
            "affinity keeps the endpoint"
        );
    }
    assert!(counter(&name, "affinity") >= 10, "{}", show(&name));

    // A service port with no endpoint is refused at once, not routed anywhere, as kube-proxy's
    // reject rule does.
    let started = Instant::now();
    let e = get_from(&cg, &format!("http://{empty}:80/")).unwrap_err();
    assert!(e.contains("Connection refused"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(4), "refused, not timed out");
    assert!(counter(&name, "no-endpoint") >= 1);

    // So is a port that no service of a ClusterIP has, over TCP and UDP, instead of leaving by
    // the default route for whatever answers at that address.
    let started = Instant::now();
    let e = get_from(&cg, &format!("http://{vip}:81/")).unwrap_err();
    assert!(e.contains("Connection refused"), "{e}");
    let out = cg.run(&[echo.to_str().unwrap(), "udp", &format!("{vip}:54"), "ping"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("Connection refused"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(4), "refused, not timed out");
    assert!(counter(&name, "no-port") >= 2, "{}", show(&name));

    // An endpoint leaves: after SIGHUP only the other one serves.
    write_table(&[pa]);
    let _ = Command::new("kill").args(["-HUP", &lb.0.id().to_string()]).status();
    eventually("the endpoint to leave the map", 10, || {
        show(&name)
            .lines()
            .any(|l| l.trim() == format!("{vip}:80/TCP -> 127.0.0.1:{pa}"))
    });
    for i in 0..10 {
        assert_eq!(get_from(&cg, &format!("http://{vip}:80/{i}")).unwrap(), "a");
    }

    // Stopped: the programs are detached and the pins gone.
    let _ = Command::new("kill").args(["-TERM", &lb.0.id().to_string()]).status();
    eventually("the balancer to remove its pins", 10, || {
        !Path::new("/sys/fs/bpf/nodeless/lb").join(&name).exists()
    });
    drop(lb);
}

/// `nodeless up --pod-cidr`: pods reach Services by ClusterIP over TCP and UDP, with ClientIP
/// affinity; the balancer follows EndpointSlices (a deleted pod leaves, a new one joins) and
/// serves a selectorless Service whose EndpointSlice the user wrote (cluster DNS behind a
/// ClusterIP, as kube-dns is); with the pods gone and the node stopped, nothing is left.
#[test]
fn pods_reach_services_by_cluster_ip() {
    use nodeless_tests::Nodeless;
    const V: &str = "1.33";
    let nodeless_tests::PodNet { cidr, dns, .. } = nodeless_tests::pod_net();
    let n = Nodeless::start_with_node(&["--pod-cidr", &cidr, "--cluster-dns", &dns]).unwrap();
    let node = n.node.clone().unwrap();
    let echo_pod = |name: &str| nodeless_tests::echo_pod(name, "lb-echo");
    let yaml = format!(
        r#"{}---
{}---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: lb-echo}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: udp, port: 5353, targetPort: 8080, protocol: UDP}}
---
apiVersion: v1
kind: Service
metadata: {{name: sticky}}
spec:
  selector: {{app: lb-echo}}
  sessionAffinity: ClientIP
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: resolver}}
spec:
  ports: [{{name: dns, port: 53, protocol: UDP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: resolver-1, labels: {{kubernetes.io/service-name: resolver}}}}
addressType: IPv4
ports: [{{name: dns, port: 53, protocol: UDP}}]
endpoints: [{{addresses: ["{dns}"]}}]
---
{}"#,
        echo_pod("echo-0"),
        echo_pod("echo-1"),
        nodeless_tests::client_pod()
    );
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&yaml));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    n.kubectl_ok(
        V,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/echo-0",
            "pod/echo-1",
            "pod/client",
            "--timeout=60s",
        ],
    );
    let ip_of = |what: &str| n.kubectl_ok(V, &["get", what, "-o", "jsonpath={.spec.clusterIP}{.status.podIP}"]);
    let (web, sticky, resolver) = (ip_of("service/web"), ip_of("service/sticky"), ip_of("service/resolver"));
    let (ip0, ip1) = (ip_of("pod/echo-0"), ip_of("pod/echo-1"));
    eventually("both pods behind the web ClusterIP", 10, || {
        let s = show(&node);
        s.lines().any(|l| {
            l.contains(&format!("{web}:80/TCP"))
                && l.contains(&format!("{ip0}:8080"))
                && l.contains(&format!("{ip1}:8080"))
        })
    });

    // TCP: a pod reaches the ClusterIP, and both endpoints serve it.
    let answers = |svc: &str, times: u32| -> Vec<String> {
        let script = format!("for i in $(seq {times}); do wget -qO- http://{svc}:80/$i | head -n 1; done");
        let out = n.kubectl_ok(V, &["exec", "client", "--", "sh", "-c", &script]);
        out.lines().map(|l| l.trim_start_matches("pod: ").to_string()).collect()
    };
    let got = answers(&web, 20);
    assert_eq!(got.len(), 20, "every request answered: {got:?}");
    assert!(
        got.contains(&"echo-0".to_string()) && got.contains(&"echo-1".to_string()),
        "both endpoints serve: {got:?}"
    );

    // UDP (sendto/recvfrom): the answer comes from the ClusterIP.
    let out = n.kubectl_ok(
        V,
        &[
            "exec",
            "echo-0",
            "--",
            "/echo-server",
            "udp",
            &format!("{web}:5353"),
            "ping",
        ],
    );
    assert!(out.starts_with(&format!("from: {web}:5353\npod: echo-")), "{out}");
    // A port the Service does not have is refused in the pod, not sent out by the default route.
    let out = n.kubectl(
        V,
        &["exec", "client", "--", "wget", "-qO-", &format!("http://{web}:81/")],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("refused"),
        "{text}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The node's metrics count what the balancer did: the 20 connects and the UDP send
    // translated, the port the Service lacks refused.
    let metrics = n.kubectl_ok(V, &["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/metrics")]);
    let calls = |result: &str| -> u64 {
        let series = format!(r#"nodeless_eni_service_socket_calls_total{{result="{result}"}} "#);
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{series} missing from\n{metrics}"))
    };
    assert!(calls("translated") >= 21, "{metrics}");
    assert!(calls("no-port") >= 1, "{metrics}");
    // Cluster DNS behind a ClusterIP with a hand-written EndpointSlice.
    let out = n.kubectl(
        V,
        &[
            "exec",
            "client",
            "--",
            "nslookup",
            "web.default.svc.cluster.local",
            &resolver,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&web),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // ClientIP affinity: the client keeps one endpoint.
    let got = answers(&sticky, 10);
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(got.iter().all(|g| *g == got[0]), "one endpoint for the client: {got:?}");

    // A deleted pod leaves the service; only the other one answers.
    let started = Instant::now();
    n.kubectl_ok(V, &["delete", "pod", "echo-1", "--wait=false", "--grace-period=5"]);
    eventually("echo-1 to leave the balancer", 10, || {
        !show(&node).contains(&format!("{ip1}:8080"))
    });
    eprintln!(
        "echo-1 left the balancer {:?} after kubectl delete returned",
        started.elapsed()
    );
    let got = answers(&web, 10);
    assert!(got.iter().all(|g| g == "echo-0"), "{got:?}");
    // A new pod joins once ready.
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&echo_pod("echo-2")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    n.kubectl_ok(V, &["wait", "--for=condition=Ready", "pod/echo-2", "--timeout=60s"]);
    let ip2 = ip_of("pod/echo-2");
    eventually("echo-2 to join the balancer", 10, || {
        show(&node).contains(&format!("{ip2}:8080"))
    });
    let got = answers(&web, 30);
    assert!(got.contains(&"echo-2".to_string()), "{got:?}");

    // Pods gone and node stopped: the balancer's pins and cgroup go too.
    n.kubectl_ok(V, &["delete", "pods", "--all", "--grace-period=1"]);
    nodeless_tests::eventually("the pods' networks to be torn down", 30, || {
        !show(&node).contains(&format!("{ip0} "))
    });
    drop(n);
    assert!(
        !Path::new("/sys/fs/bpf/nodeless/lb").join(&node).exists(),
        "the balancer's pins went with the node"
    );
    for h in ["unified", "memory", "pids"] {
        let dir = Path::new("/sys/fs/cgroup").join(h).join("nodeless").join(&node);
        assert!(!dir.exists(), "the node's cgroup went with it: {}", dir.display());
    }
}
