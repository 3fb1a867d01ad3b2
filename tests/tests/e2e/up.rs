//! `nodeless up` alone, as a new user runs it in an empty directory (ports picked by the kernel,
//! a node name of the test's own, no LoadBalancer pool on the shared interface; everything else
//! the defaults): the sample images are imported, pods get eni-cni's default network and the
//! ingress runs in the same process tree, so `kubectl apply -f examples/hello/` answers through
//! the ingress. Then `nodeless down --purge` leaves no process, mount, bpf pin, nft table,
//! cgroup or directory of ours.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nodeless_tests::{eventually, kubectl_path, nodeless_binary, searchable, workspace_root};

const V: &str = "1.33";

/// A `nodeless up` of the test's own, stopped and purged on drop whatever happened.
struct Up {
    child: Child,
    work: tempfile::TempDir,
    node: String,
}

impl Up {
    fn data_dir(&self) -> PathBuf {
        self.work.path().join(".nodeless")
    }

    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(kubectl_path(V))
            .arg("--kubeconfig")
            .arg(self.work.path().join("nodeless.kubeconfig"))
            .args(args)
            .output()
            .unwrap()
    }

    fn down(&self, purge: bool) -> std::process::Output {
        let mut c = Command::new(nodeless_binary().unwrap());
        c.current_dir(self.work.path()).arg("down");
        if purge {
            c.arg("--purge");
        }
        c.output().unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.data_dir().exists() {
            let _ = self.down(true);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        nodeless_tests::clean_node_leftovers(&self.node, &self.data_dir());
    }
}

/// One HTTP/1.1 GET through `addr` for `host`: the status line and body.
fn get(addr: std::net::SocketAddr, host: &str, path: &str) -> Option<(String, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// Mount points under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

#[test]
fn up_alone_runs_the_example_through_its_ingress_and_down_purge_leaves_nothing() {
    let work = tempfile::Builder::new().prefix("nodeless-up-").tempdir().unwrap();
    searchable(work.path()).unwrap();
    let node = format!("e2e-up-{}", std::process::id());
    let child = Command::new(nodeless_binary().unwrap())
        .current_dir(work.path())
        .args(["up", "--listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"])
        .args([
            "--ingress-http",
            "127.0.0.1:0",
            "--ingress-https",
            "127.0.0.1:0",
            "--ingress-metrics",
            "127.0.0.1:0",
            "--dns-metrics",
            "127.0.0.1:0",
        ])
        .args(["--no-lb-pool", "--node-name", &node])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = Up { child, work, node };

    // Its stdout says what it did; the ingress prints the addresses it took.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = up.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let http = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no ingress address from nodeless up; it said:\n{}", said.join("\n")));
        said.push(line.clone());
        if let Some(rest) = line.strip_prefix("ingress-l7: http on ") {
            break rest.split(',').next().unwrap().parse::<std::net::SocketAddr>().unwrap();
        }
    };
    let out = said.join("\n");
    assert!(out.contains("imported the sample image nodeless.local/echo:1"), "{out}");
    assert!(up.data_dir().join("up.json").is_file());

    let apply = up.kubectl(&[
        "apply",
        "-f",
        &workspace_root().join("examples/hello").to_string_lossy(),
    ]);
    assert!(apply.status.success(), "{}", String::from_utf8_lossy(&apply.stderr));
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        last = get(http, "hello.example.com", "/hi");
        if last.as_ref().is_some_and(|(status, body)| {
            status.contains(" 200 ") && body.contains("pod: hello-") && body.contains("path: /hi")
        }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let pods = up.kubectl(&["get", "pods", "-n", "hello", "-o", "wide"]);
    assert!(
        last.as_ref().is_some_and(|(status, body)| status.contains(" 200 ")
            && body.contains("pod: hello-")
            && body.contains("path: /hi")),
        "the example did not answer through the ingress at {http}: {last:?}\n{}",
        String::from_utf8_lossy(&pods.stdout)
    );
    // The pods run on the default pod network, 10.66.0.0/16.
    let ips = up.kubectl(&["get", "pods", "-n", "hello", "-o", "jsonpath={.items[*].status.podIP}"]);
    let ips = String::from_utf8_lossy(&ips.stdout).to_string();
    assert!(
        !ips.is_empty() && ips.split_whitespace().all(|ip| ip.starts_with("10.66.")),
        "{ips}"
    );

    // Down without --purge stops it and keeps the pods for the next up.
    let down = up.down(false);
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    // `down` returns once the process has ended; the kernel tells its parent a moment later.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut status = up.child.try_wait().unwrap();
    while status.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        status = up.child.try_wait().unwrap();
    }
    assert!(status.is_some(), "nodeless up still runs after nodeless down");
    assert!(
        !nodeless_tests::runtime_containers(&up.node).is_empty(),
        "the pods should stay for adoption"
    );

    // Down --purge removes every trace.
    let purge = up.down(true);
    assert!(
        purge.status.success(),
        "{}{}",
        String::from_utf8_lossy(&purge.stdout),
        String::from_utf8_lossy(&purge.stderr)
    );
    assert!(!up.data_dir().exists(), "the data directory is still there");
    assert!(!up.work.path().join("nodeless.kubeconfig").exists());
    assert!(
        nodeless_tests::keeper_pids(&up.node).is_empty(),
        "the node's supervisor still runs"
    );
    assert!(
        mounts_under(up.work.path()).is_empty(),
        "{:?}",
        mounts_under(up.work.path())
    );
    assert!(mounts_under(&Path::new("/run/nodeless").join(&up.node)).is_empty());
    assert!(!Path::new("/run/nodeless").join(&up.node).exists());
    assert!(!Path::new("/sys/fs/bpf/nodeless").join(&up.node).exists());
    assert!(!Path::new("/sys/fs/bpf/nodeless/lb").join(&up.node).exists());
    for ctl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = ctl.path().join("nodeless").join(&up.node);
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
    let table = nodeless_eni_cni::snat::Snat::table_for(&["10.66.0.0/16".parse().unwrap()]);
    let nft = Command::new("nft")
        .args(["list", "table", "ip", &table])
        .output()
        .unwrap();
    assert!(!nft.status.success(), "the nft table {table} is still there");
    // Nothing of the node's is left running (pods' processes were children of its supervisor).
    eventually("no process under the node's cgroups or run directory", 10, || {
        let run = format!("/run/nodeless/{}/", up.node);
        std::fs::read_dir("/proc").unwrap().flatten().all(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| !String::from_utf8_lossy(&c).contains(&run))
                .unwrap_or(true)
        })
    });
}
