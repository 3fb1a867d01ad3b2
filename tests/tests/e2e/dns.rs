//! Cluster DNS, black-box with `dig`: every record of the Kubernetes DNS specification (schema
//! 1.0.1, kubernetes/dns docs/specification.md), negative answers, UDP and TCP, EDNS0 and
//! truncation; and the forwarding cache in front of an unbound the test starts.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nodeless_tests::{Nodeless, eventually, free_port};

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
        let mut v: Vec<String> = self
            .answer
            .iter()
            .map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" "))
            .collect();
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
        self.authority
            .iter()
            .any(|l| l.split_whitespace().nth(3) == Some("SOA"))
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
    let mut d = Dig {
        status: String::new(),
        flags: Vec::new(),
        answer: Vec::new(),
        authority: Vec::new(),
        additional: Vec::new(),
        raw: raw.clone(),
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
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
    eventually("the cluster zone to hold the Services and the slice", 20, || {
        dig(dns, &["db.prod.svc.cluster.local", "A"]).data().len() == 2
    });

    // dns-version.
    let d = dig(dns, &["dns-version.cluster.local", "TXT"]);
    assert_eq!(d.data(), vec!["\"1.0.1\""], "{}", d.raw);
    assert!(d.has_flag("aa"), "{}", d.raw);

    // ClusterIP Service: A, case-insensitive (the asker's case comes back), SRV per named port
    // with the target's address as additional data, PTR.
    let d = dig(dns, &["web.default.svc.cluster.local", "A"]);
    assert_eq!(
        (d.status.as_str(), d.data()),
        ("NOERROR", vec![cluster_ip.clone()]),
        "{}",
        d.raw
    );
    assert_eq!(d.ttl(), Some(5), "TTL 5 s by default: {}", d.raw);
    let d = dig(dns, &["WeB.DeFault.SVC.cluster.LOCAL", "A"]);
    assert_eq!(d.data(), vec![cluster_ip.clone()], "{}", d.raw);
    assert!(d.answer[0].starts_with("WeB.DeFault.SVC.cluster.LOCAL."), "{}", d.raw);
    // The same question again, byte for byte but for the ID and the case (no cookie), is
    // answered from the bytes kept from the first answer: the asker's spelling still comes back.
    for spelling in [
        "web.default.svc.cluster.local",
        "WEB.default.svc.cluster.local",
        "web.default.svc.cluster.local",
    ] {
        let d = dig(dns, &["+nocookie", spelling, "A"]);
        assert_eq!(d.data(), vec![cluster_ip.clone()], "{}", d.raw);
        assert!(
            d.answer[0].starts_with(&format!("{spelling}.")) && d.has_flag("aa"),
            "{}",
            d.raw
        );
    }
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
    assert_eq!(
        dig(dns, &["db-0.db.prod.svc.cluster.local", "A"]).data(),
        vec!["10.77.0.1"]
    );
    assert_eq!(
        dig(dns, &["10-77-0-2.db.prod.svc.cluster.local", "A"]).data(),
        vec!["10.77.0.2"]
    );
    assert_eq!(
        dig(dns, &["10-77-0-3.db.prod.svc.cluster.local", "A"]).status,
        "NXDOMAIN"
    );
    let d = dig(dns, &["_pg._tcp.db.prod.svc.cluster.local", "SRV"]);
    assert_eq!(
        d.data(),
        vec![
            "0 50 5433 10-77-0-2.db.prod.svc.cluster.local.",
            "0 50 5433 db-0.db.prod.svc.cluster.local."
        ],
        "{}",
        d.raw
    );
    assert_eq!(
        dig(dns, &["-x", "10.77.0.1"]).data(),
        vec!["db-0.db.prod.svc.cluster.local."]
    );
    // No ready endpoint: the name does not exist.
    let d = dig(dns, &["empty.prod.svc.cluster.local", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);

    // ExternalName: a CNAME.
    let d = dig(dns, &["ext.default.svc.cluster.local", "CNAME"]);
    assert_eq!(d.data(), vec!["ext.example.test."], "{}", d.raw);

    // Pods.
    assert_eq!(
        dig(dns, &["10-1-2-3.default.pod.cluster.local", "A"]).data(),
        vec!["10.1.2.3"]
    );
    assert_eq!(
        dig(dns, &["not-an-ip.default.pod.cluster.local", "A"]).status,
        "NXDOMAIN"
    );

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
    assert_eq!(
        dig(dns, &["+tcp", "db.prod.svc.cluster.local", "A"]).data(),
        vec!["10.77.0.1", "10.77.0.2"]
    );

    // Truncation and EDNS0: 60 ready endpoints do not fit in 512 bytes.
    let endpoints: Vec<String> = (1..=60)
        .map(|i| format!("- {{addresses: [10.78.0.{i}], conditions: {{ready: true}}}}"))
        .collect();
    apply(
        &n,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: default}}\nspec: {{clusterIP: None}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: big-1, namespace: default, labels: {{kubernetes.io/service-name: big}}}}\naddressType: IPv4\nendpoints:\n{}\n",
            endpoints.join("\n")
        ),
    );
    eventually("60 endpoints", 20, || {
        dig(dns, &["+tcp", "big.default.svc.cluster.local", "A"]).data().len() == 60
    });
    let d = dig(dns, &["+noedns", "+ignore", "big.default.svc.cluster.local", "A"]);
    assert!(d.has_flag("tc") && d.answer.len() < 60, "{}", d.raw);
    let d = dig(dns, &["+bufsize=4096", "+ignore", "big.default.svc.cluster.local", "A"]);
    assert!(!d.has_flag("tc") && d.answer.len() == 60, "{}", d.raw);
    assert!(d.raw.contains("udp: 4096"), "EDNS in the reply: {}", d.raw);

    // A change applies within a second or two.
    n.kubectl_ok(
        V,
        &[
            "-n",
            "prod",
            "patch",
            "endpointslice",
            "db-manual",
            "--type=json",
            "-p",
            r#"[{"op": "replace", "path": "/endpoints/2/conditions/ready", "value": true}]"#,
        ],
    );
    eventually("the third endpoint to become ready", 5, || {
        dig(dns, &["db.prod.svc.cluster.local", "A"]).data().len() == 3
    });
    n.kubectl_ok(V, &["delete", "svc", "web"]);
    eventually("the deleted Service to be gone", 5, || {
        dig(dns, &["web.default.svc.cluster.local", "A"]).status == "NXDOMAIN"
    });
    // Answers kept for repeated questions went with the change too.
    assert_eq!(
        dig(dns, &["+nocookie", "web.default.svc.cluster.local", "A"]).status,
        "NXDOMAIN"
    );
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
        let child = Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unbound (apt-get install unbound)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let u = Unbound { child, dir };
        eventually("unbound to answer", 10, || {
            dig(addr, &["www.example.test", "A"]).data() == vec!["192.0.2.10"]
        });
        u
    }

    /// How many queries for `name` reached unbound.
    fn queries(&self, name: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("queries.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!(" {name}. ")))
            .count()
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
    assert_eq!(
        unbound.queries("www.example.test") - before,
        1,
        "one upstream query for three asks"
    );
    // The same request bytes again (no cookie) are answered from the bytes kept from the first
    // answer; their TTLs count down all the same.
    let first = dig(dns, &["+nocookie", "www.example.test", "A"]).ttl().unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    for _ in 0..3 {
        let d = dig(dns, &["+nocookie", "www.example.test", "A"]);
        assert_eq!(d.data(), vec!["192.0.2.10"], "{}", d.raw);
        assert!(d.ttl().unwrap() <= first - 2, "TTL {first} two seconds ago: {}", d.raw);
    }

    // Identical queries in flight are one upstream query.
    let askers: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || dig(dns, &["burst.example.test", "A"]).data()))
        .collect();
    for a in askers {
        assert_eq!(a.join().unwrap(), vec!["192.0.2.12"]);
    }
    assert_eq!(
        unbound.queries("burst.example.test"),
        1,
        "20 concurrent asks, one upstream query"
    );

    // Negative answers are cached too (for the SOA's minimum, 60 s here).
    assert_eq!(dig(dns, &["nothing.example.test", "A"]).status, "NXDOMAIN");
    assert_eq!(dig(dns, &["short.example.test", "A"]).data(), vec!["192.0.2.11"]);
    assert_eq!(
        dig(dns, &["+nocookie", "short.example.test", "A"]).data(),
        vec!["192.0.2.11"]
    );

    // Upstream down: cached answers stay, the negative one too, and an expired one is served
    // stale (TTL 30, RFC 8767) instead of failing.
    unbound.stop();
    assert_eq!(dig(dns, &["www.example.test", "A"]).data(), vec!["192.0.2.10"]);
    assert_eq!(dig(dns, &["nothing.example.test", "A"]).status, "NXDOMAIN");
    std::thread::sleep(Duration::from_millis(2500));
    let d = dig(dns, &["+time=6", "short.example.test", "A"]);
    assert_eq!(d.data(), vec!["192.0.2.11"], "{}", d.raw);
    assert_eq!(d.ttl(), Some(30), "a stale answer goes out with TTL 30: {}", d.raw);
    // Kept bytes are not sent past the answer's freshness either.
    let d = dig(dns, &["+time=6", "+nocookie", "short.example.test", "A"]);
    assert_eq!(
        (d.data(), d.ttl()),
        (vec!["192.0.2.11".to_string()], Some(30)),
        "{}",
        d.raw
    );
    // A name never seen fails cleanly.
    assert_eq!(dig(dns, &["+time=6", "never.example.test", "A"]).status, "SERVFAIL");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// From inside a pod: a Service by its short name, `<svc>.<ns>` and its FQDN, through the
/// resolv.conf the node wrote (cluster DNS at the pod's gateway, the search path, ndots:5).
#[test]
fn pods_resolve_service_names() {
    assert!(is_root(), "pod tests need root");
    let n = Nodeless::start_with_node_network(&[]).unwrap();
    apply(&n, &nodeless_tests::echo_service_and_client("echo-dns"));
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
    let ip = n.kubectl_ok(V, &["get", "pod", "echo-0", "-o", "jsonpath={.status.podIP}"]);
    let (_, subnet) = n.net.clone().unwrap();
    let gateway = subnet.replace(".0/24", ".1");
    let resolv = n.kubectl_ok(V, &["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {gateway}"))
            && resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && resolv.contains("ndots:5"),
        "{resolv}"
    );
    eventually("the headless Service to have its ready pod", 30, || {
        dig(n.dns_addr().unwrap(), &["echo.default.svc.cluster.local", "A"]).data() == vec![ip.clone()]
    });
    // (busybox's nslookup applies the search path to dotless names only; `<svc>.<ns>` is asked
    // through the C library below.)
    for name in ["echo", "echo.default.svc.cluster.local"] {
        let out = n.kubectl(V, &["exec", "client", "--", "nslookup", name]);
        let text = String::from_utf8_lossy(&out.stdout);
        // busybox's nslookup asks every search-path expansion at once and prints each NXDOMAIN
        // (and then exits 1); the answer must be among them.
        assert!(
            text.contains(&format!("Name:\techo.default.svc.cluster.local\nAddress: {ip}")),
            "nslookup {name}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The C library's resolver, with the search path and ndots:5: HTTP to the Service by every
    // form of its name.
    for host in [
        "echo",
        "echo.default",
        "echo.default.svc",
        "echo.default.svc.cluster.local",
    ] {
        let out = n.kubectl(
            V,
            &[
                "exec",
                "echo-0",
                "--",
                "/echo-server",
                "get",
                &format!("http://{host}:8080/dns"),
            ],
        );
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.starts_with("pod: echo-0\npath: /dns\n"),
            "{host}: {body}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    n.kubectl_ok(V, &["delete", "pods", "--all", "--grace-period=1"]);
}

/// PrivateZone: one zone name bound to two networks answers each with its own records; a
/// weight of 0 is never served; a sub-zone overrides its parent; a forwarding rule sends a
/// zone to its resolver; a bad object is refused with the field.
#[test]
fn private_zones_answer_by_network() {
    let port = free_port();
    let authority = Unbound::start(port);
    let n = Nodeless::start().unwrap();
    let dns = n.dns_addr().unwrap();
    eventually("the PrivateZone CRD to be served", 30, || {
        n.kubectl(V, &["get", "privatezones"]).status.success()
    });
    apply(
        &n,
        &format!(
            r#"apiVersion: network.nodeless.io/v1
kind: PrivateZone
metadata: {{name: corp-a}}
spec:
  zone: corp.example
  networks: [127.10.0.0/16]
  ttl: 30
  records:
  - {{name: www, type: A, values: [{{value: 192.0.2.1, weight: 70}}, {{value: 192.0.2.2, weight: 30}}, {{value: 192.0.2.3, weight: 0}}]}}
  - {{name: "@", type: MX, values: [{{value: "10 mail"}}]}}
  - {{name: mail, type: A, values: [{{value: 192.0.2.25}}]}}
  - {{name: info, type: TXT, values: [{{value: "network a"}}]}}
  - {{name: _sip._tcp, type: SRV, values: [{{value: "0 5 5060 sip.corp.example."}}]}}
  - {{name: alias, type: CNAME, values: [{{value: www}}]}}
---
apiVersion: network.nodeless.io/v1
kind: PrivateZone
metadata: {{name: corp-b}}
spec:
  zone: corp.example
  networks: [127.20.0.0/16]
  records:
  - {{name: www, type: A, values: [{{value: 198.51.100.1}}]}}
---
apiVersion: network.nodeless.io/v1
kind: PrivateZone
metadata: {{name: corp-a-dev}}
spec:
  zone: dev.corp.example
  networks: [127.10.0.0/16]
  records:
  - {{name: www, type: AAAA, values: [{{value: "fd00::1"}}]}}
---
apiVersion: network.nodeless.io/v1
kind: PrivateZone
metadata: {{name: rule}}
spec:
  zone: example.test
  networks: [127.30.0.0/16]
  forwardTo: ["127.0.0.1:{port}"]
"#
        ),
    );
    let from = |src: &str, args: &[&str]| {
        let mut a = vec!["-b", src];
        a.extend_from_slice(args);
        dig(dns, &a)
    };
    eventually("the zones to be served", 20, || {
        from("127.10.0.1", &["www.corp.example", "A"]).status == "NOERROR"
    });

    // Weighted: one value per answer, in proportion; weight 0 never.
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let d = from("127.10.0.1", &["www.corp.example", "A"]);
        assert_eq!(d.answer.len(), 1, "{}", d.raw);
        *seen.entry(d.data()[0].clone()).or_insert(0) += 1;
    }
    assert!(!seen.contains_key("192.0.2.3"), "weight 0 served: {seen:?}");
    assert!(
        seen.get("192.0.2.1").copied().unwrap_or(0) > seen.get("192.0.2.2").copied().unwrap_or(0),
        "70 against 30: {seen:?}"
    );
    // The other record types.
    assert_eq!(
        from("127.10.0.1", &["corp.example", "MX"]).data(),
        vec!["10 mail.corp.example."]
    );
    assert_eq!(
        from("127.10.0.1", &["info.corp.example", "TXT"]).data(),
        vec!["\"network a\""]
    );
    assert_eq!(
        from("127.10.0.1", &["_sip._tcp.corp.example", "SRV"]).data(),
        vec!["0 5 5060 sip.corp.example."]
    );
    assert_eq!(
        from("127.10.0.1", &["alias.corp.example", "CNAME"]).data(),
        vec!["www.corp.example."]
    );
    let d = from("127.10.0.1", &["nothing.corp.example", "A"]);
    assert!(d.status == "NXDOMAIN" && d.soa_in_authority(), "{}", d.raw);

    // The same name, another network, another answer; no bound network, no zone.
    assert_eq!(
        from("127.20.0.1", &["www.corp.example", "A"]).data(),
        vec!["198.51.100.1"]
    );
    assert_ne!(from("127.40.0.1", &["www.corp.example", "A"]).status, "NOERROR");
    // The sub-zone overrides its parent for its names, in its network only.
    assert_eq!(
        from("127.10.0.1", &["www.dev.corp.example", "AAAA"]).data(),
        vec!["fd00::1"]
    );
    assert_eq!(from("127.20.0.1", &["www.dev.corp.example", "AAAA"]).status, "NXDOMAIN");

    // A forwarding rule: the zone's names go to its resolver.
    assert_eq!(
        from("127.30.0.1", &["www.example.test", "A"]).data(),
        vec!["192.0.2.10"]
    );
    drop(authority);

    // A bad object is refused with the field.
    let bad = "apiVersion: network.nodeless.io/v1\nkind: PrivateZone\nmetadata: {name: bad}\nspec:\n  zone: x.example\n  networks: [10.0.0.0/8]\n  records:\n  - {name: www, type: A, values: [{value: 192.0.2.1, weight: 101}]}\n";
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(bad));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("weight"), "{err}");
}

/// `nodeless dns` on its own against control keeps answering from the last state it saw while
/// control is down, and follows changes again once it is back.
#[test]
fn answers_survive_control_going_away() {
    let mut n = Nodeless::start_with(&["--no-dns"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr_file = dir.path().join("dns.addr");
    let mut dns = Command::new(nodeless_tests::nodeless_binary().unwrap())
        .args([
            "dns",
            "--dns-listen",
            "127.0.0.1:0",
            "--dns-upstream",
            "127.0.0.1:9",
            "--dns-metrics",
            "127.0.0.1:0",
            "--kubeconfig",
        ])
        .arg(n.kubeconfig())
        .arg("--dns-address-file")
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut dns);
    let mut addr = None;
    eventually("nodeless dns to serve", 30, || {
        addr = std::fs::read_to_string(&addr_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<SocketAddr>().ok()));
        addr.is_some()
    });
    let addr = addr.unwrap();
    apply(
        &n,
        "apiVersion: v1\nkind: Service\nmetadata: {name: kept}\nspec: {ports: [{port: 80}]}\n",
    );
    let ip = n.kubectl_ok(V, &["get", "svc", "kept", "-o", "jsonpath={.spec.clusterIP}"]);
    eventually("the Service to be served", 20, || {
        dig(addr, &["kept.default.svc.cluster.local", "A"]).data() == vec![ip.clone()]
    });

    n.stop(true).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..3 {
        assert_eq!(
            dig(addr, &["kept.default.svc.cluster.local", "A"]).data(),
            vec![ip.clone()],
            "answers from the last state"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    n.restart(false).unwrap();
    n.kubectl_ok(V, &["delete", "svc", "kept"]);
    eventually("the deletion to be seen after control came back", 60, || {
        dig(addr, &["kept.default.svc.cluster.local", "A"]).status == "NXDOMAIN"
    });
}

/// `GET /metrics` on `addr`, plain HTTP/1.1 (the body, after the headers).
fn metrics_text(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of the sample `line` (name and labels exactly) in `text`, 0 when absent.
fn sample(text: &str, line: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[test]
fn dns_counts_under_coredns_metric_names() {
    let n = Nodeless::start().unwrap();
    let dns = n.dns_addr().unwrap();
    let metrics = n.dns_metrics_addr().unwrap();
    apply(&n, OBJECTS);
    eventually("the cluster zone to hold the Services", 20, || {
        !dig(dns, &["web.default.svc.cluster.local", "A"]).data().is_empty()
    });
    let before = metrics_text(metrics);
    // Asked again without a cookie, an answer is sent from the kept bytes: each UDP receive
    // loop keeps its own, and the kernel spreads askers (dig's random ports) over the loops, so
    // ask until one loop has seen the question twice (with n loops, n + 1 asks are enough).
    let hits = r#"coredns_cache_hits_total{type="success"}"#;
    for _ in 0..64 {
        dig(dns, &["+nocookie", "web.default.svc.cluster.local", "A"]);
        if sample(&metrics_text(metrics), hits) > sample(&before, hits) {
            break;
        }
    }
    let d = dig(dns, &["nothing.default.svc.cluster.local", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    dig(dns, &["+tcp", "_http._tcp.web.default.svc.cluster.local", "SRV"]);
    let after = metrics_text(metrics);
    let grew = |line: &str, by: f64| {
        let (b, a) = (sample(&before, line), sample(&after, line));
        assert!(a - b >= by, "{line}: {b} -> {a}\n{after}");
    };
    grew(r#"coredns_dns_requests_total{proto="udp",type="A"}"#, 3.0);
    grew(r#"coredns_dns_requests_total{proto="tcp",type="SRV"}"#, 1.0);
    grew(r#"coredns_dns_responses_total{rcode="NXDOMAIN"}"#, 1.0);
    grew(r#"coredns_dns_responses_total{rcode="NOERROR"}"#, 3.0);
    grew(r#"coredns_cache_hits_total{type="success"}"#, 1.0);
    grew(r#"coredns_dns_request_duration_seconds_count{type="A"}"#, 3.0);
    assert!(after.contains("# TYPE coredns_forward_requests counter"), "{after}");
}
