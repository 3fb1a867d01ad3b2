//! CNI conformance for `eni-cni`, written from the CNI specification 1.1.0 (SPEC.md): the
//! plugin is driven exactly as libcni drives it — a clean environment with the CNI_*
//! variables, the network configuration on stdin, the result or error JSON read from stdout —
//! through every verb and every error path, with the pool service started by the test, in
//! network namespaces the test makes and removes.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use nodeless_tests::workspace_binary;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or run) uses, within 15 bytes.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace under /run/netns, deleted on drop (taking its interfaces with it).
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = unique("nlc");
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip (iproute2)")
            .success();
        assert!(ok, "ip netns add {name}");
        Netns { name }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap()
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip"];
        full.extend_from_slice(args);
        String::from_utf8_lossy(&self.exec(&full).stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

/// The pool service and a way to run the plugin against it.
struct Plugin {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pool: Option<Child>,
    cidr: String,
    network: String,
    pool_args: Vec<String>,
}

impl Plugin {
    fn start(cidr: &str, min_warm: usize) -> Plugin {
        Self::start_with(cidr, min_warm, &[])
    }

    fn start_with(cidr: &str, min_warm: usize, pool_args: &[&str]) -> Plugin {
        let dir = tempfile::Builder::new().prefix("nodeless-cni-").tempdir().unwrap();
        let mut p = Plugin {
            bin: workspace_binary("eni-cni").unwrap(),
            dir,
            pool: None,
            cidr: cidr.to_string(),
            network: unique("net"),
            pool_args: pool_args.iter().map(|a| a.to_string()).collect(),
        };
        p.start_pool(min_warm);
        p
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("pool.sock")
    }

    fn start_pool(&mut self, min_warm: usize) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new(&self.bin)
            .args(["pool", "--socket"])
            .arg(self.socket())
            .arg("--state")
            .arg(self.dir.path().join("pool.redb"))
            .args(["--cidr", &self.cidr, "--min-warm", &min_warm.to_string()])
            .args(&self.pool_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.pool = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "the pool never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the pool as a service manager would (SIGTERM), so it removes its SNAT rule.
    fn stop_pool(&mut self) {
        if let Some(mut c) = self.pool.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The pool's nftables table, if installed.
    fn snat_table(&self) -> Option<String> {
        let name = format!("nodeless_eni_{}", self.cidr.replace(['.', '/'], "_"));
        let out = Command::new("nft").args(["list", "table", "ip", &name]).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `eni-cni show`: the network's eBPF datapath state.
    fn show(&self) -> String {
        let out = Command::new(&self.bin).args(["show", &self.network]).output().unwrap();
        assert!(
            out.status.success(),
            "eni-cni show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A packet counter from `show`.
    fn counter(&self, name: &str) -> u64 {
        counter_in(&self.show(), name)
    }

    /// The network's pins under /sys/fs/bpf.
    fn pins(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf/nodeless").join(&self.network)
    }

    fn conf(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": self.network, "type": "eni-cni", "pool": self.socket()})
    }

    /// Run the plugin as libcni does; the exit code and the JSON it printed (Null for none).
    fn run(&self, env: &[(&str, &str)], stdin: &str) -> (i32, Value) {
        let mut child = Command::new(&self.bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
        };
        (out.status.code().unwrap_or(-1), v)
    }

    fn verb(&self, command: &str, id: &str, netns: Option<&str>, ifname: &str, conf: &Value) -> (i32, Value) {
        let mut env = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        if let Some(n) = netns {
            env.push(("CNI_NETNS", n));
        }
        self.run(&env, &conf.to_string())
    }

    fn add(&self, id: &str, ns: &Netns, ifname: &str, conf: &Value) -> Value {
        let (rc, v) = self.verb("ADD", id, Some(&ns.path()), ifname, conf);
        assert_eq!(rc, 0, "ADD failed: {v}");
        v
    }

    fn del(&self, id: &str, netns: Option<&str>, ifname: &str, conf: &Value) {
        let (rc, v) = self.verb("DEL", id, netns, ifname, conf);
        assert_eq!((rc, &v), (0, &Value::Null), "DEL prints nothing and succeeds");
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.stop_pool();
        // A test that failed half-way may leave pods' fast-path pins or, with the pool killed,
        // its egress table; both are this test's own (unique network name and CIDR).
        let _ = std::fs::remove_dir_all(PathBuf::from("/sys/fs/bpf/nodeless").join(&self.network));
        if self.snat_table().is_some() {
            let name = format!("nodeless_eni_{}", self.cidr.replace(['.', '/'], "_"));
            let _ = Command::new("nft").args(["delete", "table", "ip", &name]).status();
        }
    }
}

/// An error result: exit code 1 and the spec's fields, with this code.
/// A counter from `eni-cni show`'s output (0 when it is not there).
fn counter_in(show: &str, name: &str) -> u64 {
    show.lines()
        .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

fn assert_error(out: &(i32, Value), code: u64, mentions: &str) {
    let (rc, v) = out;
    assert_ne!(*rc, 0, "an error exits non-zero: {v}");
    assert_eq!(v["code"], code, "error code: {v}");
    assert!(v["cniVersion"].is_string() && v["msg"].is_string(), "error fields: {v}");
    let all = format!("{} {}", v["msg"], v["details"]);
    assert!(all.contains(mentions), "the error should name {mentions:?}: {v}");
}

fn pod_ip(result: &Value) -> Ipv4Addr {
    let a = result["ips"]
        .as_array()
        .and_then(|ips| ips.last())
        .and_then(|ip| ip["address"].as_str())
        .expect("an address in the result");
    a.split('/').next().unwrap().parse().unwrap()
}

fn host_links(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or("").to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn host_routes_in(cidr_prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["-4", "route", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(cidr_prefix))
        .map(str::to_string)
        .collect()
}

fn ping(from: &Netns, to: Ipv4Addr) -> bool {
    from.exec(&["busybox", "ping", "-c", "1", "-W", "2", &to.to_string()])
        .status
        .success()
}

#[test]
fn version_and_environment_errors() {
    let p = Plugin::start("10.241.1.0/24", 2);
    // VERSION answers in the asker's version and lists every supported one.
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        let (rc, out) = p.run(&[("CNI_COMMAND", "VERSION")], &json!({"cniVersion": v}).to_string());
        assert_eq!(rc, 0);
        assert_eq!(out["cniVersion"], v);
        assert_eq!(out["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
    }
    let conf = p.conf("1.1.0").to_string();
    // Code 4 names the variables.
    assert_error(&p.run(&[], &conf), 4, "CNI_COMMAND");
    assert_error(&p.run(&[("CNI_COMMAND", "BOUNCE")], &conf), 4, "BOUNCE");
    let out = p.run(&[("CNI_COMMAND", "ADD"), ("CNI_PATH", "/x")], &conf);
    assert_error(&out, 4, "CNI_CONTAINERID");
    assert_error(&out, 4, "CNI_NETNS");
    assert_error(&out, 4, "CNI_IFNAME");
    assert_error(
        &p.run(
            &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")],
            &conf,
        ),
        4,
        "CNI_PATH",
    );
    assert_error(&p.run(&[("CNI_COMMAND", "GC")], &conf), 4, "CNI_PATH");
    let ns = Netns::new();
    let bad_id = p.verb("ADD", "no/slashes", Some(&ns.path()), "eth0", &p.conf("1.1.0"));
    assert_error(&bad_id, 4, "CNI_CONTAINERID");
    assert_error(
        &p.verb("ADD", "c1", Some(&ns.path()), "a-name-longer-than-15", &p.conf("1.1.0")),
        4,
        "CNI_IFNAME",
    );
    assert_error(
        &p.verb("ADD", "c1", Some(&ns.path()), "..", &p.conf("1.1.0")),
        4,
        "CNI_IFNAME",
    );
    // Nothing was created by any of them.
    assert!(
        ns.ip(&["-o", "link"]).lines().count() == 1,
        "only lo: {}",
        ns.ip(&["-o", "link"])
    );
}

#[test]
fn configuration_errors() {
    let p = Plugin::start("10.241.2.0/24", 1);
    let ns = Netns::new();
    let netns = ns.path();
    let run = |conf: &str| {
        p.run(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/x"),
            ],
            conf,
        )
    };
    assert_error(&run("not json"), 6, "JSON");
    let mut c = p.conf("0.3.1");
    assert_error(&run(&c.to_string()), 1, "0.3.1");
    c = p.conf("1.1.0");
    c["mode"] = json!("bridge");
    assert_error(&run(&c.to_string()), 7, "mode");
    c["mode"] = json!("ipvlan");
    assert_error(&run(&c.to_string()), 7, "parent");
    c = p.conf("1.1.0");
    c["mtu"] = json!(20);
    assert_error(&run(&c.to_string()), 7, "mtu");
    c = p.conf("1.1.0");
    c["name"] = json!("bad name");
    assert_error(&run(&c.to_string()), 7, "name");
    c = p.conf("1.0.0");
    c["prevResult"] = json!({"ips": [{"address": "not-an-address"}]});
    assert_error(&run(&c.to_string()), 7, "prevResult");
    // A namespace that does not exist: the container is unknown.
    assert_error(
        &p.verb(
            "ADD",
            "c1",
            Some("/run/netns/nlc-does-not-exist"),
            "eth0",
            &p.conf("1.1.0"),
        ),
        3,
        "nlc-does-not-exist",
    );
    // Nothing was allocated by any of them.
    let (rc, _) = p.verb("STATUS", "", None, "", &p.conf("1.1.0"));
    assert_eq!(rc, 0);
    assert!(ns.ip(&["-o", "link"]).lines().count() == 1);
}

#[test]
fn add_check_del_in_every_version_and_the_datapath_works() {
    let mut p = Plugin::start("10.241.3.0/24", 2);
    let (a, b) = (Netns::new(), Netns::new());
    let mut results = Vec::new();
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let ns = if i == 0 { &a } else { &b };
        let ifname = format!("eth{i}");
        let conf = p.conf(version);
        let r = p.add(&format!("c{i}"), ns, &ifname, &conf);
        assert_eq!(r["cniVersion"], *version);
        // interfaces: the host end, then the container's, in its sandbox.
        let ifs = r["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 2, "{r}");
        assert_eq!(
            (ifs[1]["name"].as_str(), ifs[1]["sandbox"].as_str()),
            (Some(ifname.as_str()), Some(ns.path().as_str())),
            "{r}"
        );
        assert!(ifs[1]["mac"].as_str().is_some_and(|m| m.len() == 17), "{r}");
        assert_eq!(r["ips"][0]["interface"], 1, "{r}");
        assert_eq!(r["ips"][0]["gateway"], "169.254.1.1", "{r}");
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0", "{r}");
        if *version == "0.4.0" {
            assert_eq!(r["ips"][0]["version"], "4", "0.4.0 results name the IP version: {r}");
        } else {
            assert!(r["ips"][0].get("version").is_none(), "{r}");
        }
        let ip = pod_ip(&r);
        assert!(
            ns.ip(&["-4", "addr", "show", &ifname]).contains(&format!("{ip}/32")),
            "{}",
            ns.ip(&["addr"])
        );
        assert!(
            ns.ip(&["route"]).contains("default via 169.254.1.1"),
            "{}",
            ns.ip(&["route"])
        );
        // ADD again with the interface there: an error, nothing changed.
        assert_error(
            &p.verb("ADD", &format!("c{i}"), Some(&ns.path()), &ifname, &conf),
            100,
            &ifname,
        );
        // CHECK with the result passes.
        let mut check = conf.clone();
        check["prevResult"] = r.clone();
        let out = p.verb("CHECK", &format!("c{i}"), Some(&ns.path()), &ifname, &check);
        assert_eq!(out, (0, Value::Null), "CHECK of a healthy attachment");
        results.push((r, ns, ifname, conf));
    }
    // Every address distinct, all in the CIDR, not the gateway's.
    let ips: Vec<Ipv4Addr> = results.iter().map(|r| pod_ip(&r.0)).collect();
    assert!(
        ips.iter()
            .all(|ip| ip.octets()[..3] == [10, 241, 3] && ip.octets()[3] > 1),
        "{ips:?}"
    );
    assert!(ips[0] != ips[1] && ips[1] != ips[2] && ips[0] != ips[2]);

    // The datapath: pod to pod (through the eBPF fast path), pod to host, host to pod.
    // The pool attaches the fast path just after ADD returns.
    nodeless_tests::eventually("every pod published in the fast path's map", 10, || {
        let show = p.show();
        ips.iter().all(|ip| show.contains(&format!("{ip} ")))
    });
    let before = p.counter("redirected");
    assert!(ping(&a, ips[1]), "pod a -> pod b");
    assert!(
        p.counter("redirected") >= before + 2,
        "request and reply redirected pod to pod: {}",
        p.show()
    );
    assert!(ping(&b, ips[0]), "pod b -> pod a");
    assert!(
        Command::new("busybox")
            .args(["ping", "-c", "1", "-W", "2", &ips[2].to_string()])
            .status()
            .unwrap()
            .success(),
        "host -> pod"
    );

    // CHECK notices what went missing.
    let (r, ns, ifname, conf) = &results[2];
    let ip = pod_ip(r);
    ns.exec(&["ip", "addr", "del", &format!("{ip}/32"), "dev", ifname]);
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    assert_error(
        &p.verb("CHECK", "c2", Some(&ns.path()), ifname, &check),
        101,
        &ip.to_string(),
    );
    assert_error(&p.verb("CHECK", "c2", Some(&ns.path()), ifname, conf), 7, "prevResult");

    // DEL: idempotent, and fine when the namespace is already gone.
    p.del("c2", Some(&ns.path()), ifname, conf);
    p.del("c2", Some(&ns.path()), ifname, conf);
    drop(results);
    let conf = p.conf("1.1.0");
    p.del("c0", Some("/run/netns/nlc-gone-already"), "eth0", &conf);
    p.del("c1", None, "eth1", &conf);
    p.del("never-added", None, "eth0", &conf);
    // With the pool down, DEL cannot release: try again later (11), and it works once it is back.
    let r = p.add("c9", &b, "eth9", &conf);
    p.stop_pool();
    assert_error(&p.verb("DEL", "c9", Some(&b.path()), "eth9", &conf), 11, "pool");
    assert_error(&p.verb("ADD", "c8", Some(&b.path()), "eth8", &conf), 11, "pool");
    p.start_pool(2);
    p.del("c9", Some(&b.path()), "eth9", &conf);
    assert!(
        !host_routes_in("10.241.3.")
            .iter()
            .any(|l| l.starts_with(&format!("{} ", pod_ip(&r)))),
        "DEL took the host route"
    );
    // Nothing of ours is left on the host: no route, no program, map or link pin.
    drop((a, b));
    assert_eq!(host_routes_in("10.241.3."), Vec::<String>::new());
    assert!(
        !p.pins().exists(),
        "pins left: {:?}",
        std::fs::read_dir(p.pins()).map(|d| d.count())
    );
}

/// Run `f` on a thread of its own inside the network namespace at `path`; the sockets it makes
/// belong to that namespace.
fn in_netns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let ns = std::fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("entering the pod's namespace");
        f()
    })
}

/// The bytes of a bulk transfer: position-dependent, so a lost, repeated or reordered piece
/// shows.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(seed as u32 % 32) as u8 ^ seed)
        .collect()
}

/// Read until the peer's EOF the way an event-driven program does, taking EAGAIN as "not yet"
/// and reading again: after its own shutdown(SHUT_WR), a blocked read on an accelerated socket
/// can end in EAGAIN when the peer acknowledges the FIN (the kernel's tcp_bpf; see eni-cni's
/// README). The socket's read timeout bounds each read, `within` the whole.
fn read_to_eof(s: &mut std::net::TcpStream, within: Duration) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let deadline = Instant::now() + within;
    let (mut got, mut buf) = (Vec::new(), vec![0u8; 1 << 16]);
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
}

/// With `socketAcceleration`, TCP between two pods goes from socket to socket (sockops and
/// sk_msg) and arrives whole and in order: many small exchanges, bulk both ways, a
/// half-close. By default the same traffic takes TCP all the way and no socket is entered.
#[test]
fn tcp_between_pods_goes_socket_to_socket() {
    use std::io::{Read, Write};
    const BULK: usize = 8 << 20;
    const ROUNDS: u32 = 2_000;
    for (accelerate, cidr) in [(true, "10.241.13.0/24"), (false, "10.241.14.0/24")] {
        let p = Plugin::start(cidr, 2);
        let (a, b) = (Netns::new(), Netns::new());
        let mut conf = p.conf("1.1.0");
        if accelerate {
            conf["socketAcceleration"] = json!(true);
        }
        let b_ip = pod_ip(&p.add("cb", &b, "eth0", &conf));
        let a_ip = pod_ip(&p.add("ca", &a, "eth0", &conf));
        nodeless_tests::eventually("both pods published in the fast path", 10, || {
            let show = p.show();
            show.contains(&format!("{a_ip} ")) && show.contains(&format!("{b_ip} "))
        });
        let show = p.show();
        assert!(
            show.contains(&format!(
                "socket acceleration: {}",
                if accelerate { "on" } else { "off" }
            )),
            "{show}"
        );
        let (paired, shortcut) = (p.counter("sock-paired"), p.counter("msg-shortcut"));

        // The server, in pod b: a counter service, then a bulk exchange ended by half-closes.
        let listener = in_netns(&b.path(), || std::net::TcpListener::bind("0.0.0.0:0").unwrap())
            .join()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut n = [0u8; 4];
            for _ in 0..ROUNDS {
                s.read_exact(&mut n).unwrap();
                s.write_all(&(u32::from_be_bytes(n) + 1).to_be_bytes()).unwrap();
            }
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut got = Vec::new();
            let r = s.read_to_end(&mut got);
            assert!(
                r.is_ok() && got == pattern(1, BULK),
                "the server got {} bytes ({r:?}), not the {BULK} sent in order",
                got.len()
            );
            s.write_all(&pattern(2, BULK)).unwrap();
        });
        let client = in_netns(&a.path(), move || {
            let to = std::net::SocketAddr::from((b_ip, port));
            let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.set_nodelay(true).unwrap();
            let mut n = [0u8; 4];
            for i in 0..ROUNDS {
                s.write_all(&(i * 7).to_be_bytes()).unwrap();
                s.read_exact(&mut n).unwrap();
                assert_eq!(u32::from_be_bytes(n), i * 7 + 1, "round {i}");
            }
            let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(&pattern(1, BULK)).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let got = read_to_eof(&mut s, Duration::from_secs(20));
            assert!(
                got.as_ref().is_ok_and(|g| *g == pattern(2, BULK)),
                "the client got {:?} bytes back, not the {BULK} sent in order",
                got.map(|g| g.len())
            );
        });
        client
            .join()
            .unwrap_or_else(|_| panic!("the client's side, acceleration {accelerate}: {}", p.show()));
        server
            .join()
            .unwrap_or_else(|_| panic!("the server's side, acceleration {accelerate}: {}", p.show()));

        let show = p.show();
        if accelerate {
            assert!(
                p.counter("sock-paired") >= paired + 4,
                "both ends of both connections entered: {show}"
            );
            assert!(
                p.counter("msg-shortcut") > shortcut,
                "messages went socket to socket: {show}"
            );
        } else {
            assert_eq!(
                (p.counter("sock-paired"), p.counter("msg-shortcut")),
                (paired, shortcut),
                "nothing accelerated: {show}"
            );
        }
        p.del("ca", Some(&a.path()), "eth0", &conf);
        p.del("cb", Some(&b.path()), "eth0", &conf);
        assert!(
            !p.pins().exists(),
            "the pins, the sockops link among them, went with the last pod"
        );
    }
}

#[test]
fn chained_after_another_plugin_the_result_keeps_the_previous_one() {
    let p = Plugin::start("10.241.4.0/24", 1);
    let ns = Netns::new();
    let mut conf = p.conf("1.0.0");
    conf["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net1", "sandbox": ns.path()}],
        "ips": [{"address": "192.0.2.9/24", "interface": 0}],
        "dns": {"nameservers": ["192.0.2.53"]}
    });
    let r = p.add("chain", &ns, "eth0", &conf);
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(
        ifs.iter().map(|i| i["name"].as_str().unwrap_or("")).collect::<Vec<_>>()[0],
        "net1",
        "{r}"
    );
    assert_eq!(ifs.len(), 3, "{r}");
    assert_eq!(r["ips"][0]["address"], "192.0.2.9/24", "{r}");
    assert_eq!(r["ips"][1]["interface"], 2, "our address points at our interface: {r}");
    assert_eq!(r["dns"]["nameservers"][0], "192.0.2.53", "{r}");
    p.del("chain", Some(&ns.path()), "eth0", &p.conf("1.0.0"));
}

#[test]
fn gc_and_status() {
    let mut p = Plugin::start("10.241.5.0/24", 1);
    let ns = Netns::new();
    let conf = p.conf("1.1.0");
    let kept = p.add("keep", &ns, "eth0", &conf);
    let gone = [p.add("gone1", &ns, "eth1", &conf), p.add("gone2", &ns, "eth2", &conf)];
    let host_ends: Vec<String> = [&kept, &gone[0], &gone[1]]
        .iter()
        .map(|r| r["interfaces"][0]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(host_ends.iter().all(|h| host_links(h).len() == 1), "{host_ends:?}");
    // GC and STATUS came with 1.1.0.
    assert_error(&p.verb("GC", "", None, "", &p.conf("1.0.0")), 1, "1.1.0");
    assert_error(&p.verb("STATUS", "", None, "", &p.conf("0.4.0")), 1, "1.1.0");
    assert_eq!(p.verb("STATUS", "", None, "", &conf), (0, Value::Null));
    // GC keeps the valid attachments and removes every other one of this network.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    assert_eq!(
        p.run(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")], &gc.to_string()),
        (0, Value::Null)
    );
    assert_eq!(host_links(&host_ends[0]).len(), 1, "the valid attachment stays");
    assert!(
        host_links(&host_ends[1]).is_empty() && host_links(&host_ends[2]).is_empty(),
        "the others go"
    );
    assert!(
        ns.ip(&["-4", "addr", "show", "eth0"])
            .contains(&format!("{}/32", pod_ip(&kept))),
        "the kept pod keeps its address"
    );
    // Their addresses went back: a new ADD may get one of them, never the kept one.
    let again = p.add("new", &ns, "eth3", &conf);
    assert_ne!(pod_ip(&again), pod_ip(&kept));
    // STATUS: not available (50) without the pool.
    p.stop_pool();
    assert_error(&p.verb("STATUS", "", None, "", &conf), 50, "pool");
    p.start_pool(1);
    gc["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(
        p.run(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")], &gc.to_string()),
        (0, Value::Null)
    );
    assert!(
        host_ends.iter().all(|h| host_links(h).is_empty()),
        "after DEL and GC no interface is left"
    );
    assert_eq!(host_routes_in("10.241.5."), Vec::<String>::new(), "nor any route");
    assert!(!p.pins().exists(), "nor any bpf program, map or link pin");
}

#[test]
fn concurrent_adds_never_share_an_address_and_survive_a_pool_restart() {
    let mut p = Plugin::start("10.241.6.0/23", 8);
    let ns: Vec<Netns> = (0..200).map(|_| Netns::new()).collect();
    let conf = p.conf("1.1.0");
    let results: Vec<(String, String, usize, Ipv4Addr)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let (p, ns, conf) = (&p, &ns, &conf);
                s.spawn(move || {
                    let id = format!("par{i}");
                    let ifname = "eth0".to_string();
                    let (rc, r) = p.verb("ADD", &id, Some(&ns[i].path()), &ifname, conf);
                    assert_eq!(rc, 0, "ADD {i}: {r}");
                    (id, ifname, i, pod_ip(&r))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<Ipv4Addr> = results.iter().map(|r| r.3).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 200, "200 concurrent ADDs, 200 distinct addresses");
    // The pool restarts: it still knows every allocation (CHECK agrees), and new ADDs get new addresses.
    p.stop_pool();
    p.start_pool(8);
    let (id, ifname, k, ip) = &results[17];
    let mut check = conf.clone();
    check["prevResult"] = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "h"}, {"name": ifname, "sandbox": ns[*k].path()}], "ips": [{"address": format!("{ip}/32"), "interface": 1}]});
    assert_eq!(
        p.verb("CHECK", id, Some(&ns[*k].path()), ifname, &check),
        (0, Value::Null)
    );
    let fresh = pod_ip(&p.add("after-restart", &ns[0], "fresh0", &conf));
    assert!(
        ping(&ns[0], results[199].3),
        "a pod reaches another after the pool restarted"
    );
    assert!(!ips.contains(&fresh), "{fresh} was already handed out");
    for (id, ifname, k, _) in &results {
        p.del(id, Some(&ns[*k].path()), ifname, &conf);
    }
    p.del("after-restart", Some(&ns[0].path()), "fresh0", &conf);
    assert_eq!(host_routes_in("10.241.6.").len() + host_routes_in("10.241.7.").len(), 0);
    assert!(!p.pins().exists());
}

/// ipvlan and macvlan modes: pods hang off a parent interface standing for an ENI (one end of
/// a veth pair: this kernel has no dummy driver). This machine's kernel is built without ipvlan
/// (macvlan is in), so ipvlan must fail with a clear error here and work where the driver is.
#[test]
fn pods_hang_off_a_parent_interface() {
    let p = Plugin::start("10.241.8.0/24", 1);
    let parent = unique("nld");
    let ok = Command::new("ip")
        .args([
            "link",
            "add",
            &parent,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{parent}p"),
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "ip link add {parent} type veth");
    struct Link(String);
    impl Drop for Link {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    let _parent = Link(parent.clone());
    // Both ends up, or the parent has no carrier and neither have its children.
    for end in [parent.clone(), format!("{parent}p")] {
        assert!(
            Command::new("ip")
                .args(["link", "set", &end, "up"])
                .status()
                .unwrap()
                .success()
        );
    }
    let ipvlan_driver = std::fs::read_to_string("/proc/config.gz").is_err()
        && Command::new("modprobe")
            .arg("ipvlan")
            .status()
            .is_ok_and(|s| s.success());
    for mode in ["macvlan", "ipvlan"] {
        let mut conf = p.conf("1.1.0");
        conf["mode"] = json!(mode);
        conf["parent"] = json!(parent);
        let (a, b) = (Netns::new(), Netns::new());
        let out = p.verb("ADD", &format!("{mode}a"), Some(&a.path()), "eth0", &conf);
        if mode == "ipvlan" && out.0 != 0 && !ipvlan_driver {
            assert_error(&out, 2, "CONFIG_IPVLAN");
            assert_eq!(a.ip(&["-o", "link"]).lines().count(), 1, "nothing left behind");
            continue;
        }
        assert_eq!(out.0, 0, "{mode} ADD: {}", out.1);
        let ra = out.1;
        let rb = p.add(&format!("{mode}b"), &b, "eth0", &conf);
        assert_eq!(
            ra["interfaces"].as_array().unwrap().len(),
            1,
            "no host end in {mode} mode: {ra}"
        );
        assert!(
            a.ip(&["-d", "link", "show", "eth0"]).contains(mode),
            "{}",
            a.ip(&["-d", "link"])
        );
        assert!(
            a.ip(&["-4", "addr", "show", "eth0"]).contains("/24"),
            "the subnet's prefix"
        );
        assert!(ping(&a, pod_ip(&rb)), "{mode}: pod to pod over the same parent");
        let mut check = conf.clone();
        check["prevResult"] = rb.clone();
        assert_eq!(
            p.verb("CHECK", &format!("{mode}b"), Some(&b.path()), "eth0", &check),
            (0, Value::Null)
        );
        p.del(&format!("{mode}a"), Some(&a.path()), "eth0", &conf);
        p.del(&format!("{mode}b"), Some(&b.path()), "eth0", &conf);
        assert!(!a.ip(&["link"]).contains("eth0"), "DEL removed the {mode} child");
        let mut bad = conf.clone();
        bad["parent"] = json!("nld-missing");
        assert_error(&p.verb("ADD", "c", Some(&a.path()), "eth0", &bad), 7, "nld-missing");
    }
}

/// Host mode reports the node's address and creates nothing.
#[test]
fn host_mode_uses_the_nodes_network() {
    let p = Plugin::start("10.241.9.0/24", 0);
    let ns = Netns::new();
    let mut conf = p.conf("1.1.0");
    conf["mode"] = json!("host");
    conf["hostIP"] = json!("192.0.2.77");
    let r = p.add("h1", &ns, "eth0", &conf);
    assert_eq!(r["ips"][0]["address"], "192.0.2.77/32", "{r}");
    assert_eq!(r["interfaces"], json!([]), "{r}");
    assert!(ns.ip(&["-o", "link"]).lines().count() == 1);
    p.del("h1", Some(&ns.path()), "eth0", &conf);
}

/// Egress: a namespace playing a host beyond the node (no route back to the pods' CIDR) is
/// reached through the pool's masquerade rule, and not without it.
#[test]
fn pods_reach_the_outside_through_snat() {
    let outside = Netns::new();
    let host_end = unique("nlo");
    let ok = Command::new("ip")
        .args([
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "ext0",
            "netns",
            &outside.name,
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "the outside link");
    struct Link(String);
    impl Drop for Link {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    let _link = Link(host_end.clone());
    for args in [
        vec!["addr", "add", "198.18.10.1/24", "dev", &host_end],
        vec!["link", "set", &host_end, "up"],
    ] {
        assert!(Command::new("ip").args(&args).status().unwrap().success());
    }
    for args in [
        vec!["addr", "add", "198.18.10.2/24", "dev", "ext0"],
        vec!["link", "set", "ext0", "up"],
    ] {
        assert!(outside.exec(&[&["ip"][..], &args[..]].concat()).status.success());
    }
    let outside_ip = Ipv4Addr::new(198, 18, 10, 2);
    let pod = Netns::new();

    // Without SNAT the outside host cannot answer a pod address.
    let mut p = Plugin::start_with("10.241.10.0/24", 1, &["--no-snat"]);
    assert!(p.snat_table().is_none());
    let conf = p.conf("1.1.0");
    p.add("e1", &pod, "eth0", &conf);
    assert!(
        !ping(&pod, outside_ip),
        "no reply without SNAT: the outside has no route to pods"
    );
    p.del("e1", Some(&pod.path()), "eth0", &conf);
    p.stop_pool();

    // With it (the default), the pod reaches the outside as the node.
    let p = Plugin::start("10.241.10.0/24", 1);
    let table = p.snat_table().expect("the pool installs its masquerade rule");
    assert!(
        table.contains("10.241.10.0/24") && table.contains("masquerade"),
        "{table}"
    );
    let conf = p.conf("1.1.0");
    p.add("e2", &pod, "eth0", &conf);
    assert!(ping(&pod, outside_ip), "pod -> outside through SNAT");
    p.del("e2", Some(&pod.path()), "eth0", &conf);
    let table_name = format!("nodeless_eni_{}", p.cidr.replace(['.', '/'], "_"));
    drop(p);
    let gone = Command::new("nft")
        .args(["list", "table", "ip", &table_name])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the pool removed its rule when it stopped");
}

/// A real libcni client that is not ours: Debian's podman with its CNI network backend runs two
/// containers on an eni-cni network, and one reaches the other (ICMP and HTTP), through the
/// fast path.
#[test]
fn podman_runs_containers_on_an_eni_cni_network() {
    let p = Plugin::start("10.241.11.0/24", 2);
    let cni_dir = p.dir.path().join("cni");
    std::fs::create_dir_all(&cni_dir).unwrap();
    let conflist =
        json!({"cniVersion": "1.0.0", "name": p.network, "plugins": [{"type": "eni-cni", "pool": p.socket()}]});
    std::fs::write(cni_dir.join(format!("{}.conflist", p.network)), conflist.to_string()).unwrap();
    let plugin_dir = p.bin.parent().unwrap().to_path_buf();
    let store = nodeless_tests::PodmanStore::new().with_conf(&format!(
        "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\n[engine]\ncgroup_manager = \"cgroupfs\"\n",
        plugin_dir.display(),
        cni_dir.display()
    ));
    let layouts = nodeless_tests::test_image_layouts().unwrap();
    let archive = store.dir().join("busybox.tar");
    assert!(
        Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&layouts[0])
            .arg(".")
            .status()
            .unwrap()
            .success()
    );
    store.podman(&["load", "-i", &archive.to_string_lossy()]);
    let image = nodeless_tests::images::BUSYBOX;
    let run = [
        "run",
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        "--network",
        &p.network,
    ];
    let mut server: Vec<&str> = run.to_vec();
    server.extend([
        "-d",
        "--name",
        "server",
        "--hostname",
        "served-by-eni",
        image,
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/etc",
    ]);
    store.podman(&server);
    let ip = store
        .podman(&[
            "inspect",
            "server",
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", p.network),
        ])
        .trim()
        .to_string();
    assert!(
        ip.starts_with("10.241.11."),
        "the server's address from eni-cni: {ip:?}"
    );
    let mut client: Vec<&str> = run.to_vec();
    client.extend(["-d", "--name", "client", image, "sleep", "3600"]);
    store.podman(&client);
    let client_ip = store
        .podman(&[
            "inspect",
            "client",
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", p.network),
        ])
        .trim()
        .to_string();
    // Both published in the fast path (the pool attaches just after ADD returns).
    nodeless_tests::eventually("both containers in the fast path", 10, || {
        let show = p.show();
        show.contains(&format!("{ip} ")) && show.contains(&format!("{client_ip} "))
    });
    let before = p.counter("redirected");
    let script = format!("ping -c 1 -W 2 {ip} >/dev/null && wget -qO- http://{ip}:8080/hostname");
    let out = store.podman(&["exec", "client", "sh", "-c", &script]);
    assert_eq!(
        out.trim(),
        "served-by-eni",
        "the client container reached the server container"
    );
    assert!(
        p.counter("redirected") >= before + 4,
        "through the fast path: {}",
        p.show()
    );
    store.podman(&["rm", "-f", "-t", "0", "server", "client"]);
    // podman's DEL gave everything back.
    assert_eq!(host_routes_in("10.241.11."), Vec::<String>::new());
    assert!(!p.pins().exists(), "the fast path's pins went with the last container");
}

/// `nodeless up --pod-cidr`: the node's pods get eni-cni addresses and reach each other (through
/// the fast path) by address and by Service name through cluster DNS; the host reaches them; and
/// once they are deleted and the node stops, nothing of the network is left on the host. The
/// node runs with `--socket-acceleration`, so TCP from pod to pod goes socket to socket (the
/// other node tests cover the default).
#[test]
fn nodeless_pods_run_on_eni_cni() {
    use nodeless_tests::Nodeless;
    const V: &str = "1.33";
    let nodeless_tests::PodNet { prefix, cidr, dns, .. } = nodeless_tests::pod_net();
    let mut n =
        Nodeless::start_with_node(&["--pod-cidr", &cidr, "--cluster-dns", &dns, "--socket-acceleration"]).unwrap();
    let node = n.node.clone().unwrap();
    let yaml = nodeless_tests::echo_service_and_client("echo-eni");
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&yaml));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    n.kubectl_ok(
        V,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/echo-0",
            "pod/client",
            "--timeout=60s",
        ],
    );
    let echo_ip = n.kubectl_ok(V, &["get", "pod", "echo-0", "-o", "jsonpath={.status.podIP}"]);
    let client_ip = n.kubectl_ok(V, &["get", "pod", "client", "-o", "jsonpath={.status.podIP}"]);
    for ip in [&echo_ip, &client_ip] {
        assert!(
            ip.starts_with(&prefix) && *ip != dns,
            "a pod address from the pod CIDR: {ip}"
        );
    }
    // Pod to pod by address, through the fast path once both are published.
    let bin = workspace_binary("eni-cni").unwrap();
    let show =
        || String::from_utf8_lossy(&Command::new(&bin).args(["show", &node]).output().unwrap().stdout).into_owned();
    nodeless_tests::eventually("both pods in the fast path", 10, || {
        let s = show();
        s.contains(&format!("{echo_ip} ")) && s.contains(&format!("{client_ip} "))
    });
    let out = n.kubectl(
        V,
        &[
            "exec",
            "client",
            "--",
            "wget",
            "-qO-",
            &format!("http://{echo_ip}:8080/by-address"),
        ],
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.starts_with("pod: echo-0\npath: /by-address\n"),
        "{body}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counter = |name: &str| counter_in(&show(), name);
    // The handshake's packets through the fast path, the bytes socket to socket.
    assert!(counter("redirected") > 0, "{}", show());
    assert!(show().contains("socket acceleration: on"), "{}", show());
    assert!(counter("sock-paired") >= 2 && counter("msg-shortcut") > 0, "{}", show());
    // By Service name through cluster DNS at the CIDR's first address (made local on the host).
    let resolv = n.kubectl_ok(V, &["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains(&format!("nameserver {dns}")), "{resolv}");
    let out = n.kubectl(
        V,
        &[
            "exec",
            "echo-0",
            "--",
            "/echo-server",
            "get",
            "http://echo.default:8080/by-name",
        ],
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.starts_with("pod: echo-0\npath: /by-name\n"),
        "{body}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Host to pod.
    let mut s = std::net::TcpStream::connect((echo_ip.as_str(), 8080)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /from-host HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("pod: echo-0\npath: /from-host\n"), "{reply}");
    // Pods gone, node stopped: no route, pin, SNAT rule or DNS address left. (While the node
    // runs, its warm sandboxes keep their addresses; it gives them back when it stops.)
    n.kubectl_ok(V, &["delete", "pods", "--all", "--grace-period=1"]);
    nodeless_tests::eventually("the pods gone", 30, || {
        n.kubectl_ok(V, &["get", "pods", "-o", "name"]).trim().is_empty()
    });
    n.stop(false).unwrap();
    nodeless_tests::eventually("the pods' networks to be torn down", 30, || {
        host_routes_in(&prefix).is_empty()
    });
    nodeless_tests::eventually("the fast path's pins to go", 10, || {
        !std::path::Path::new("/sys/fs/bpf/nodeless").join(&node).exists()
    });
    drop(n);
    let table = format!("nodeless_eni_{}", cidr.replace(['.', '/'], "_"));
    assert!(
        !Command::new("nft")
            .args(["list", "table", "ip", &table])
            .output()
            .unwrap()
            .status
            .success(),
        "the SNAT rule went with the node"
    );
    let lo = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-4", "addr", "show", "dev", "lo"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !lo.contains(&format!("{dns}/32")),
        "the DNS address went with the node: {lo}"
    );
}
