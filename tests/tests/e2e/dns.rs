//! Cluster DNS, black-box with `dig`: every record of the Kubernetes DNS specification (schema
//! 1.0.1, kubernetes/dns docs/specification.md), negative answers, UDP and TCP, EDNS0 and
//! truncation; and the forwarding cache in front of an unbound the test starts.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nodeless_tests::{Nodeless, eventually};

const V: &str = "1.33";

/// One `dig` exchange, parsed.
#[derive(Debug)]
struct Dig {
    status: String,
    flags: Vec<String>,
    answer: Vec<String>,
    authority: Vec<String>,
    additional: Vec<String>,
    raw: String,
}

impl Dig {
    /// The answer section's data fields (after name, TTL, class and type), sorted.
    fn data(&self) -> Vec<String> {
        let mut v: Vec<String> = self.answer.iter().map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" ")).collect();
        v.sort();
        v
    }
    /// The first answer's TTL.
    fn ttl(&self) -> Option<u32> {
        self.answer.first()?.split_whitespace().nth(1)?.parse().ok()
    }
    fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
    fn soa_in_authority(&self) -> bool {
        self.authority.iter().any(|l| l.split_whitespace().nth(3) == Some("SOA"))
    }
}

fn dig(server: SocketAddr, args: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=3", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (apt-get install bind9-dnsutils)");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut d = Dig { status: String::new(), flags: Vec::new(), answer: Vec::new(), authority: Vec::new(), additional: Vec::new(), raw: raw.clone() };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest.split(';').next().unwrap_or("").split_whitespace().map(str::to_string).collect();
        }
        match line {
            ";; ANSWER SECTION:" => section = "answer",
            ";; AUTHORITY SECTION:" => section = "authority",
            ";; ADDITIONAL SECTION:" => section = "additional",
            "" => section = "",
            l if l.starts_with(';') => {}
            l => match section {
                "answer" => d.answer.push(l.to_string()),
                "authority" => d.authority.push(l.to_string()),
                "additional" => d.additional.push(l.to_string()),
                _ => {}
            },
        }
    }
    d
}

fn apply(n: &Nodeless, yaml: &str) {
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(yaml));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ports: [{name: http, port: 80, protocol: TCP}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: prod}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: prod}
spec:
  clusterIP: None
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  type: ExternalName
  externalName: ext.example.test
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-manual, namespace: prod, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5433, protocol: TCP}]
endpoints:
- {addresses: [10.77.0.1], hostname: db-0, conditions: {ready: true}}
- {addresses: [10.77.0.2], conditions: {ready: true}}
- {addresses: [10.77.0.3], conditions: {ready: false}}
"#;

#[test]
fn cluster_names_follow_the_dns_spec() {
    let n = Nodeless::start().unwrap();
    let dns = n.dns_addr().unwrap();
    apply(&n, OBJECTS);
    let cluster_ip = n.kubectl_ok(V, &["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    eventually("the cluster zone to hold the Services and the slice", 20, || dig(dns, &["db.prod.svc.cluster.local", "A"]).data().len() == 2);

    // dns-version.
    let d = dig(dns, &["dns-version.cluster.local", "TXT"]);
    assert_eq!(d.data(), vec!["\"1.0.1\""], "{}", d.raw);
    assert!(d.has_flag("aa"), "{}", d.raw);

    // ClusterIP Service: A, case-insensitive (the asker's case comes back), SRV per named port
    // with the target's address as additional data, PTR.
    let d = dig(dns, &["web.default.svc.cluster.local", "A"]);
    assert_eq!((d.status.as_str(), d.data()), ("NOERROR", vec![cluster_ip.clone()]), "{}", d.raw);
    assert_eq!(d.ttl(), Some(5), "TTL 5 s by default: {}", d.raw);
    let d = dig(dns, &["WeB.DeFault.SVC.cluster.LOCAL", "A"]);
    assert_eq!(d.data(), vec![cluster_ip.clone()], "{}", d.raw);
    assert!(d.answer[0].starts_with("WeB.DeFault.SVC.cluster.LOCAL."), "{}", d.raw);
    let d = dig(dns, &["_http._tcp.web.default.svc.cluster.local", "SRV"]);
    assert_eq!(d.data(), vec!["0 100 80 web.default.svc.cluster.local."], "{}", d.raw);
    assert!(d.additional.iter().any(|l| l.contains(&cluster_ip)), "{}", d.raw);
    let d = dig(dns, &["_dns._udp.web.default.svc.cluster.local", "SRV"]);
    assert_eq!(d.data(), vec!["0 100 53 web.default.svc.cluster.local."], "{}", d.raw);
    let d = dig(dns, &["-x", &cluster_ip]);
    assert_eq!(d.data(), vec!["web.default.svc.cluster.local."], "{}", d.raw);

    // Headless Service: the ready endpoints only, per-hostname names (hostname, or the
    // address with dashes), SRV per endpoint with the endpoint's port, PTR for the hostname.
    let d = dig(dns, &["db.prod.svc.cluster.local", "A"]);
    assert_eq!(d.data(), vec!["10.77.0.1", "10.77.0.2"], "{}", d.raw);
    assert_eq!(dig(dns, &["db-0.db.prod.svc.cluster.local", "A"]).data(), vec!["10.77.0.1"]);
    assert_eq!(dig(dns, &["10-77-0-2.db.prod.svc.cluster.local", "A"]).data(), vec!["10.77.0.2"]);
    assert_eq!(dig(dns, &["10-77-0-3.db.prod.svc.cluster.local", "A"]).status, "NXDOMAIN");
    let d = dig(dns, &["_pg._tcp.db.prod.svc.cluster.local", "SRV"]);
    assert_eq!(d.data(), vec!["0 50 5433 10-77-0-2.db.prod.svc.cluster.local.", "0 50 5433 db-0.db.prod.svc.cluster.local."], "{}", d.raw);
    assert_eq!(dig(dns, &["-x", "10.77.0.1"]).data(), vec!["db-0.db.prod.svc.cluster.local."]);
    // No ready endpoint: the name does not exist.
    let d = dig(dns, &["empty.prod.svc.cluster.local", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);

    // ExternalName: a CNAME.
    let d = dig(dns, &["ext.default.svc.cluster.local", "CNAME"]);
    assert_eq!(d.data(), vec!["ext.example.test."], "{}", d.raw);

    // Pods.
    assert_eq!(dig(dns, &["10-1-2-3.default.pod.cluster.local", "A"]).data(), vec!["10.1.2.3"]);
    assert_eq!(dig(dns, &["not-an-ip.default.pod.cluster.local", "A"]).status, "NXDOMAIN");

    // NXDOMAIN and NODATA told apart, both with the zone's SOA, authoritative.
    let d = dig(dns, &["web.default.svc.cluster.local", "AAAA"]);
    assert_eq!((d.status.as_str(), d.answer.len()), ("NOERROR", 0), "{}", d.raw);
    assert!(d.soa_in_authority() && d.has_flag("aa"), "{}", d.raw);
    let d = dig(dns, &["missing.default.svc.cluster.local", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    assert!(d.soa_in_authority() && d.has_flag("aa"), "{}", d.raw);
    // An empty non-terminal exists.
    assert_eq!(dig(dns, &["prod.svc.cluster.local", "A"]).status, "NOERROR");
    // A search-path expansion is answered by the authority, never forwarded.
    let d = dig(dns, &["www.example.com.default.svc.cluster.local", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    assert!(d.has_flag("aa"), "{}", d.raw);

    // TCP.
    assert_eq!(dig(dns, &["+tcp", "db.prod.svc.cluster.local", "A"]).data(), vec!["10.77.0.1", "10.77.0.2"]);

    // Truncation and EDNS0: 60 ready endpoints do not fit in 512 bytes.
    let endpoints: Vec<String> = (1..=60).map(|i| format!("- {{addresses: [10.78.0.{i}], conditions: {{ready: true}}}}")).collect();
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: default}}\nspec: {{clusterIP: None}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: big-1, namespace: default, labels: {{kubernetes.io/service-name: big}}}}\naddressType: IPv4\nendpoints:\n{}\n",
            endpoints.join("\n")
        ),
    );
    eventually("60 endpoints", 20, || dig(dns, &["+tcp", "big.default.svc.cluster.local", "A"]).data().len() == 60);
    let d = dig(dns, &["+noedns", "+ignore", "big.default.svc.cluster.local", "A"]);
    assert!(d.has_flag("tc") && d.answer.len() < 60, "{}", d.raw);
    let d = dig(dns, &["+bufsize=4096", "+ignore", "big.default.svc.cluster.local", "A"]);
    assert!(!d.has_flag("tc") && d.answer.len() == 60, "{}", d.raw);
    assert!(d.raw.contains("udp: 4096"), "EDNS in the reply: {}", d.raw);

    // A change applies within a second or two.
    n.kubectl_ok(V, &["-n", "prod", "patch", "endpointslice", "db-manual", "--type=json", "-p", r#"[{"op": "replace", "path": "/endpoints/2/conditions/ready", "value": true}]"#]);
    eventually("the third endpoint to become ready", 5, || dig(dns, &["db.prod.svc.cluster.local", "A"]).data().len() == 3);
    n.kubectl_ok(V, &["delete", "svc", "web"]);
    eventually("the deleted Service to be gone", 5, || dig(dns, &["web.default.svc.cluster.local", "A"]).status == "NXDOMAIN");
}

/// A free loopback port for UDP and TCP (bound, read back, released).
fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// unbound answering `example.test` from local data, logging every query it gets.
struct Unbound {
    child: Child,
    dir: tempfile::TempDir,
}

impl Unbound {
    fn start(port: u16) -> Unbound {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("unbound.conf");
        let log = dir.path().join("queries.log");
        std::fs::write(
            &conf,
            format!(
                "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"{log}\"\n  log-queries: yes\n  verbosity: 0\n  do-ip6: no\n  access-control: 127.0.0.0/8 allow\n  local-zone: \"example.test.\" static\n  local-data: \"example.test. 3600 IN SOA ns.example.test. admin.example.test. 1 3600 600 86400 60\"\n  local-data: \"www.example.test. 300 IN A 192.0.2.10\"\n  local-data: \"short.example.test. 2 IN A 192.0.2.11\"\n  local-data: \"burst.example.test. 300 IN A 192.0.2.12\"\n",
                d = dir.path().display(),
                log = log.display()
            ),
        )
        .unwrap();
        let child = Command::new("unbound").arg("-d").arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("unbound (apt-get install unbound)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let u = Unbound { child, dir };
        eventually("unbound to answer", 10, || dig(addr, &["www.example.test", "A"]).data() == vec!["192.0.2.10"]);
        u
    }

    /// How many queries for `name` reached unbound.
    fn queries(&self, name: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("queries.log")).unwrap_or_default().lines().filter(|l| l.contains(&format!(" {name}. "))).count()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn forwarding_caches_coalesces_and_serves_stale() {
    let port = free_port();
    let mut unbound = Unbound::start(port);
    let upstream = format!("127.0.0.1:{port}");
    let n = Nodeless::start_with(&["--dns-upstream", &upstream]).unwrap();
    let dns = n.dns_addr().unwrap();
    let before = unbound.queries("www.example.test");

    // Cache hits: three answers, one upstream query; TTLs count down, not up.
    for _ in 0..3 {
        let d = dig(dns, &["www.example.test", "A"]);
        assert_eq!(d.data(), vec!["192.0.2.10"], "{}", d.raw);
        assert!(!d.has_flag("aa") && d.has_flag("ra"), "{}", d.raw);
    }
    assert_eq!(unbound.queries("www.example.test") - before, 1, "one upstream query for three asks");

    // Identical queries in flight are one upstream query.
    let askers: Vec<_> = (0..20).map(|_| std::thread::spawn(move || dig(dns, &["burst.example.test", "A"]).data())).collect();
    for a in askers {
        assert_eq!(a.join().unwrap(), vec!["192.0.2.12"]);
    }
    assert_eq!(unbound.queries("burst.example.test"), 1, "20 concurrent asks, one upstream query");

    // Negative answers are cached too (for the SOA's minimum, 60 s here).
    assert_eq!(dig(dns, &["nothing.example.test", "A"]).status, "NXDOMAIN");
    assert_eq!(dig(dns, &["short.example.test", "A"]).data(), vec!["192.0.2.11"]);

    // Upstream down: cached answers stay, the negative one too, and an expired one is served
    // stale (TTL 30, RFC 8767) instead of failing.
    unbound.stop();
    assert_eq!(dig(dns, &["www.example.test", "A"]).data(), vec!["192.0.2.10"]);
    assert_eq!(dig(dns, &["nothing.example.test", "A"]).status, "NXDOMAIN");
    std::thread::sleep(Duration::from_millis(2500));
    let d = dig(dns, &["+time=6", "short.example.test", "A"]);
    assert_eq!(d.data(), vec!["192.0.2.11"], "{}", d.raw);
    assert_eq!(d.ttl(), Some(30), "a stale answer goes out with TTL 30: {}", d.raw);
    // A name never seen fails cleanly.
    assert_eq!(dig(dns, &["+time=6", "never.example.test", "A"]).status, "SERVFAIL");
}
