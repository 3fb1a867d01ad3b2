//! ingress-l7 end to end: a node with eni-cni runs echo pods behind Services; `ingress-l7`
//! follows the cluster and curl goes through it. Every Ingress v1 matching rule the API
//! defines, TLS with two hosts on two certificates chosen by SNI, HTTP/2 by ALPN, the 503 of a
//! backend that does not exist, the forwarded headers, the published address, and route and
//! endpoint changes taking effect.

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nodeless_tests::{IngressL7, Nodeless, eventually, workspace_binary};

const V: &str = "1.33";

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap()
}

/// The pod that answered `http://<host><path>` through the ingress, or the status and body
/// when it was the ingress that answered.
fn via(ing: &IngressL7, host: &str, path: &str) -> String {
    let out = curl(&[
        "-H",
        &format!("Host: {host}"),
        "-w",
        "\n%{http_code}",
        &format!("http://{}{path}", ing.http),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    match body.lines().next().and_then(|l| l.strip_prefix("pod: ")) {
        Some(pod) if code == "200" => pod.to_string(),
        _ => format!("{code} {}", body.trim()),
    }
}

/// A self-signed certificate for `hosts`: (certificate PEM, key PEM).
fn cert(hosts: &[&str]) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
    (c.cert.pem(), c.key_pair.serialize_pem())
}

fn tls_secret(name: &str, (crt, key): &(String, String)) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent(crt),
        indent(key)
    )
}

fn service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: ing-{name}}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n"
    )
}

#[test]
fn ingress_routes_tls_and_http2_through_real_pods() {
    let net = nodeless_tests::pod_net();
    let k = net.k;
    let mut n = Nodeless::start_with_node(&["--pod-cidr", &net.cidr, "--cluster-dns", &net.dns]).unwrap();
    let one = cert(&["one.example"]);
    let wild = cert(&["*.wild.example"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("one.pem"), &one.0).unwrap();
    std::fs::write(dir.path().join("wild.pem"), &wild.0).unwrap();
    let path = |p: &str, kind: &str, svc: &str| {
        format!("{{path: {p}, pathType: {kind}, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}")
    };
    let yaml = [
        nodeless_tests::echo_pod("echo-a", "ing-a"),
        nodeless_tests::echo_pod("echo-b", "ing-b"),
        nodeless_tests::echo_pod("echo-c", "ing-c"),
        service("a"),
        service("b"),
        service("c"),
        tls_secret("tls-one", &one),
        tls_secret("tls-wild", &wild),
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: nodeless\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: nodeless.io/ingress-l7}\n".to_string(),
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: routes}}\nspec:\n  tls:\n  - {{hosts: [one.example], secretName: tls-one}}\n  - {{hosts: [\"*.wild.example\"], secretName: tls-wild}}\n  rules:\n  - http:\n      paths: [{}, {}, {}, {}]\n  - host: \"*.foo.com\"\n    http: {{paths: [{}]}}\n  - host: one.example\n    http: {{paths: [{}]}}\n  - host: x.wild.example\n    http: {{paths: [{}]}}\n",
            path("/foo", "Exact", "a"),
            path("/aaa", "Prefix", "b"),
            path("/", "Prefix", "c"),
            path("/missing", "Prefix", "nope"),
            path("/", "Prefix", "a"),
            path("/", "Prefix", "b"),
            path("/", "Prefix", "a"),
        ),
        // A websocket echo behind its own host.
        "apiVersion: v1\nkind: Service\nmetadata: {name: ws}\nspec:\n  selector: {app: ing-a}\n  ports: [{name: ws, port: 80, targetPort: 8081}]\n".to_string(),
        format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: ws}}\nspec:\n  rules:\n  - host: ws.example\n    http: {{paths: [{}]}}\n", path("/", "Prefix", "ws")),
        // gRPC (the pods' health service) over HTTP/2 without TLS to the endpoints.
        "apiVersion: v1\nkind: Service\nmetadata: {name: grpc}\nspec:\n  selector: {app: ing-a}\n  ports: [{name: grpc, port: 80, targetPort: 8082, appProtocol: kubernetes.io/h2c}]\n".to_string(),
        format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: grpc}}\nspec:\n  rules:\n  - host: grpc.example\n    http: {{paths: [{}]}}\n", path("/", "Prefix", "grpc")),
        // Settings by annotation.
        format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: secure\n  annotations: {{nodeless.io/ssl-redirect: \"true\"}}\nspec:\n  rules:\n  - host: secure.example\n    http: {{paths: [{}]}}\n", path("/", "Prefix", "a")),
        format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: small\n  annotations: {{nodeless.io/proxy-body-size: 1k, nodeless.io/load-balance: least-request}}\nspec:\n  rules:\n  - host: small.example\n    http: {{paths: [{}]}}\n", path("/", "Prefix", "c")),
        // Another controller's class: this ingress must leave it alone.
        format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: not-ours}}\nspec:\n  ingressClassName: nginx\n  rules:\n  - host: other.example\n    http: {{paths: [{}]}}\n", path("/", "Prefix", "a")),
    ]
    .join("---\n");
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&yaml));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    n.kubectl_ok(
        V,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/echo-a",
            "pod/echo-b",
            "pod/echo-c",
            "--timeout=60s",
        ],
    );

    let (lb_pool, lb_link) = (
        format!("198.19.{k}.0/29"),
        format!("nllb{}", std::process::id() % 100_000),
    );
    let mut ing = IngressL7::start(&n, Some((&lb_pool, &lb_link)));
    eventually("the routes to be served", 20, || {
        via(&ing, "h", "/foo") == "echo-a" && via(&ing, "h", "/aaa") == "echo-b"
    });

    // Paths.
    assert_eq!(via(&ing, "h", "/foo"), "echo-a");
    assert_eq!(via(&ing, "h", "/foo/"), "echo-c", "Exact /foo does not match /foo/");
    assert_eq!(via(&ing, "h", "/aaa"), "echo-b");
    assert_eq!(via(&ing, "h", "/aaa/"), "echo-b");
    assert_eq!(via(&ing, "h", "/aaa/ccc"), "echo-b");
    assert_eq!(
        via(&ing, "h", "/aaaccc"),
        "echo-c",
        "Prefix /aaa does not match /aaaccc"
    );
    // Hosts.
    assert_eq!(via(&ing, "bar.foo.com", "/"), "echo-a");
    assert_eq!(
        via(&ing, "baz.bar.foo.com", "/"),
        "echo-c",
        "*.foo.com covers one label"
    );
    assert_eq!(via(&ing, "foo.com", "/"), "echo-c", "*.foo.com does not cover foo.com");
    assert_eq!(
        via(&ing, "other.example", "/"),
        "echo-c",
        "another class's Ingress is not served"
    );
    // A backend that does not exist: 503 at once, saying why.
    let started = Instant::now();
    let missing = via(&ing, "h", "/missing");
    assert_eq!(missing, "503 service default/nope does not exist");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // Annotations: HTTP to HTTPS, a body-size limit (declared and chunked), least-request.
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: secure.example",
        &format!("http://{}/x?y=1", ing.http),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "308 https://secure.example/x?y=1");
    let small = |body: &str, chunked: bool| {
        let mut args = vec![
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: small.example",
            "--data-binary",
            body,
        ];
        if chunked {
            args.extend_from_slice(&["-H", "Transfer-Encoding: chunked"]);
        }
        let url = format!("http://{}/upload", ing.http);
        args.push(&url);
        String::from_utf8_lossy(&curl(&args).stdout).to_string()
    };
    assert_eq!(small(&"x".repeat(512), false), "200");
    assert_eq!(
        small(&"x".repeat(4096), false),
        "413",
        "a declared length over proxy-body-size"
    );
    assert_ne!(
        small(&"x".repeat(4096), true),
        "200",
        "a chunked body over proxy-body-size"
    );
    assert_eq!(
        via(&ing, "small.example", "/"),
        "echo-c",
        "least-request routes as well"
    );

    // A websocket passes through (the upgrade, then messages both ways).
    let tcp = std::net::TcpStream::connect(ing.http).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ws, resp) =
        tungstenite::client("ws://ws.example/chat", tcp).expect("the websocket handshake through the ingress");
    assert_eq!(resp.status(), 101);
    for text in ["hello", "again"] {
        ws.send(tungstenite::Message::text(text)).unwrap();
        assert_eq!(
            ws.read().unwrap().into_text().unwrap().as_str(),
            format!("echo-a: {text}")
        );
    }
    let _ = ws.close(None);

    // Oversized headers: 431.
    let big = format!("X-Big: {}", "y".repeat(100 * 1024));
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: h",
        "-H",
        &big,
        &format!("http://{}/foo", ing.http),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "431");
    // More fields than the front reads, with conflicting lengths among them (libFuzzer's find):
    // one 431 and the connection closed, so the second request hidden in the body never runs.
    {
        use std::io::{Read, Write};
        let mut head = String::from("POST /foo HTTP/1.1\r\nContent-Length: 0\r\n");
        for _ in 0..140 {
            head.push_str("Host: h\r\n");
        }
        head.push_str("Content-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n");
        let mut c = std::net::TcpStream::connect(ing.http).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(head.as_bytes()).unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 431"), "{got}");
        assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "one answer, then close: {got}");
    }
    // A malformed Ingress is refused by control, with the fields named.
    let bad = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bad}\nspec:\n  rules:\n  - host: \"a*b.example\"\n    http: {paths: [{path: /x, pathType: Bogus, backend: {service: {name: a, port: {number: 80}}}}]}\n";
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(bad));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("spec.rules[0].http.paths[0].pathType")
            && err.contains("spec.rules[0].host"),
        "{err}"
    );

    // What the upstream is told.
    let out = curl(&["-H", "Host: h.example", &format!("http://{}/foo", ing.http)]);
    let body = String::from_utf8_lossy(&out.stdout);
    for h in [
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: h.example",
        "x-request-id: ",
    ] {
        assert!(body.to_ascii_lowercase().contains(h), "{h} missing in\n{body}");
    }

    // TLS: two hosts, two certificates, chosen by SNI; HTTP/2 by ALPN.
    let https = |host: &str, ca: &str, extra: &[&str]| {
        let resolve = format!("{host}:{}:127.0.0.1", ing.https.port());
        let url = format!("https://{host}:{}/", ing.https.port());
        let ca = dir.path().join(ca);
        let mut args = vec![
            "--resolve",
            &resolve,
            "--cacert",
            ca.to_str().unwrap(),
            "-w",
            "\n%{http_version}",
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    };
    let out = https("one.example", "one.pem", &["--http1.1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("pod: echo-b") && text.ends_with("\n1.1"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.to_ascii_lowercase().contains("x-forwarded-proto: https"), "{text}");
    let out = https("x.wild.example", "wild.pem", &["--http2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("pod: echo-a") && text.ends_with("\n2"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = https("one.example", "wild.pem", &[]);
    assert!(
        !out.status.success(),
        "one.example must not be served the wildcard certificate"
    );
    let out = https("nocert.example", "one.pem", &[]);
    assert!(
        !out.status.success(),
        "a host without a certificate gets the default one, which is not trusted"
    );

    // HTTP/3: advertised by Alt-Svc over TLS, served over QUIC on the HTTPS port's number with
    // the same certificates by SNI and the same routes (a quinn client).
    let out = https("one.example", "one.pem", &["-D", "-", "-o", "/dev/null"]);
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.contains(&format!("alt-svc: h3=\":{}\"", ing.https.port())),
        "{head}"
    );
    let ca = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = nodeless_tests::http3::Client::connect(ing.https, "one.example", &ca("one.pem"))
            .await
            .unwrap();
        let a = c.request("GET", "/h3?x=1", b"").await.unwrap();
        assert!(
            a.status == 200 && a.body.starts_with("pod: echo-b\npath: /h3?x=1\n"),
            "{} {}",
            a.status,
            a.body
        );
        let body = a.body.to_ascii_lowercase();
        assert!(
            body.contains("x-forwarded-proto: https")
                && body.contains("host: one.example")
                && a.headers.contains_key("x-request-id"),
            "{body}"
        );
        let a = c.request("POST", "/upload", b"hello").await.unwrap();
        assert!(
            a.status == 200 && a.body.to_ascii_lowercase().contains("content-length: 5"),
            "{} {}",
            a.status,
            a.body
        );
        let mut c = nodeless_tests::http3::Client::connect(ing.https, "x.wild.example", &ca("wild.pem"))
            .await
            .unwrap();
        let a = c.request("GET", "/", b"").await.unwrap();
        assert!(
            a.status == 200 && a.body.starts_with("pod: echo-a"),
            "{} {}",
            a.status,
            a.body
        );
        assert!(
            nodeless_tests::http3::Client::connect(ing.https, "one.example", &ca("wild.pem"))
                .await
                .is_err(),
            "one.example must not be served the wildcard certificate over QUIC either"
        );
    });

    // gRPC passes through: a unary call, a server stream, and an error status, which travels in
    // HTTP/2 trailers (tonic's client, h2c to the ingress, h2c to the pod by appProtocol).
    rt.block_on(async {
        use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", ing.http))
            .unwrap()
            .origin("http://grpc.example".parse().unwrap())
            .connect()
            .await
            .unwrap();
        let mut c = HealthClient::new(channel);
        let r = c.check(HealthCheckRequest { service: "echo".into() }).await.unwrap();
        assert_eq!(r.into_inner().status, ServingStatus::Serving as i32);
        let e = c
            .check(HealthCheckRequest { service: "nope".into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        let mut watch = c
            .watch(HealthCheckRequest { service: "echo".into() })
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("the stream's first message")
            .unwrap()
            .unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32);
    });

    // Metrics: requests by Ingress, Service and status, latency, and the 503s of the missing one.
    let out = curl(&[&format!("http://{}/metrics", ing.metrics)]);
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        r#"nodeless_ingress_requests_total{ingress="default/routes",service="default/a:80",code="200"}"#,
        r#"nodeless_ingress_requests_total{ingress="default/routes",service="-",code="503"}"#,
        r#"nodeless_ingress_request_duration_seconds_count{ingress="default/routes",service="default/b:80"}"#,
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }

    // The address is published.
    eventually("status.loadBalancer to show the address", 10, || {
        n.kubectl_ok(
            V,
            &[
                "get",
                "ingress",
                "routes",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ],
        ) == "127.0.0.1"
    });

    // A route change applies within a second or so.
    n.kubectl_ok(
        V,
        &[
            "patch",
            "ingress",
            "routes",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rules/0/http/paths/0/backend/service/name","value":"b"}]"#,
        ],
    );
    let changed = Instant::now();
    eventually("/foo to move to service b", 10, || via(&ing, "h", "/foo") == "echo-b");
    let took = changed.elapsed();
    eprintln!("route change served after {took:?}");
    // An endpoint going: its service answers 503 rather than hanging.
    n.kubectl_ok(V, &["delete", "pod", "echo-b", "--wait=false"]);
    eventually("service b's last endpoint to leave", 30, || {
        via(&ing, "h", "/aaa") == "503 service default/b:80 has no ready endpoints"
    });
    n.kubectl_ok(V, &["delete", "ingress", "routes"]);
    eventually("the deleted Ingress's routes to go", 10, || {
        via(&ing, "h", "/foo").starts_with("404 no ingress rule matches")
    });

    // A LoadBalancer Service: an address from the pool on the dummy interface, in its status,
    // with TCP and UDP forwarded to the endpoints.
    let lb = "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\nspec:\n  type: LoadBalancer\n  selector: {app: ing-a}\n  ports:\n  - {name: web, port: 80, targetPort: 8080}\n  - {name: dns, port: 53, targetPort: 8080, protocol: UDP}\n";
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(lb));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut lb_ip = String::new();
    eventually("the LoadBalancer Service's address", 10, || {
        lb_ip = n.kubectl_ok(
            V,
            &[
                "get",
                "service",
                "lb",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ],
        );
        !lb_ip.is_empty()
    });
    assert!(
        lb_ip.starts_with(&format!("198.19.{k}.")),
        "{lb_ip} is not from the pool {lb_pool}"
    );
    let ports = n.kubectl_ok(
        V,
        &[
            "get",
            "service",
            "lb",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ports[*].protocol}",
        ],
    );
    assert_eq!(ports, "TCP UDP");
    let on_link = || {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-o", "-4", "addr", "show", "dev", &lb_link])
                .output()
                .unwrap()
                .stdout,
        )
        .to_string()
    };
    assert!(on_link().contains(&format!("{lb_ip}/32")), "{}", on_link());
    eventually("TCP through the load balancer", 10, || {
        let out = curl(&[&format!("http://{lb_ip}/lb")]);
        String::from_utf8_lossy(&out.stdout).starts_with("pod: echo-a\npath: /lb\n")
    });
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let target: SocketAddr = format!("{lb_ip}:53").parse().unwrap();
    let mut answer = None;
    for _ in 0..5 {
        udp.send_to(b"ping", target).unwrap();
        let mut buf = [0u8; 2048];
        if let Ok((len, from)) = udp.recv_from(&mut buf) {
            answer = Some((from, String::from_utf8_lossy(&buf[..len]).to_string()));
            break;
        }
    }
    let (from, text) = answer.expect("no UDP answer through the load balancer");
    assert_eq!(from, target, "the answer comes back from the Service's address");
    assert_eq!(text, "pod: echo-a\nping\n");
    // The Service goes: so do its address and its listener.
    n.kubectl_ok(V, &["delete", "service", "lb"]);
    eventually("the address to leave the interface", 10, || {
        !on_link().contains(&format!("{lb_ip}/"))
    });
    // SIGTERM: the ingress exits cleanly and takes its interface with it.
    let status = ing.stop().expect("ingress-l7 did not exit on SIGTERM");
    assert!(status.success(), "{status:?}");
    let gone = Command::new("ip").args(["link", "show", &lb_link]).output().unwrap();
    assert!(!gone.status.success(), "{lb_link} left behind");

    // Pods gone, then the node: its network (pins, egress rule, cgroups) goes with it. (While
    // the node runs, its warm sandboxes keep theirs; it gives them back when it stops.)
    drop(ing);
    n.kubectl_ok(V, &["delete", "pods", "--all", "--grace-period=1"]);
    eventually("the pods gone", 30, || {
        n.kubectl_ok(V, &["get", "pods", "-o", "name"]).trim().is_empty()
    });
    n.stop(false).unwrap();
    let node = n.node.clone().unwrap();
    eventually("the pods' fast-path pins to go", 30, || {
        !std::path::Path::new("/sys/fs/bpf/nodeless").join(&node).exists()
    });
    drop(n);
    let dir = std::path::Path::new("/sys/fs/cgroup/unified/nodeless").join(&node);
    assert!(!dir.exists(), "{} left", dir.display());
}

/// The connection limits of the ingress binary: a client that opens a TLS connection and
/// sends nothing is closed at `--tls-handshake-timeout`; one that trickles a request head a
/// byte at a time at `--client-header-timeout`; and past `--max-connections` a new connection
/// is closed at once, without waiting for any timeout. Needs only control (no node).
#[test]
fn ingress_cuts_off_slow_clients_and_caps_connections() {
    use std::io::{Read, Write};
    let n = Nodeless::start().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(workspace_binary("ingress-l7").unwrap())
        .arg("--kubeconfig")
        .arg(n.kubeconfig())
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--no-http3",
            "--threads",
            "1",
        ])
        .args([
            "--tls-handshake-timeout",
            "1",
            "--client-header-timeout",
            "1",
            "--client-idle-timeout",
            "30",
            "--max-connections",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let addrs = nodeless_tests::ingress_addresses(&mut child);
    let _child = Kill(child);
    let [http, https, _] =
        addrs.unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(log.path()).unwrap_or_default()));
    // How long until the ingress closes `c` (EOF or reset).
    let closed_after = |c: &mut std::net::TcpStream, within: Duration| -> Option<Duration> {
        c.set_read_timeout(Some(within)).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None;
                }
                Err(_) => return Some(started.elapsed()),
            }
            if started.elapsed() > within {
                return None;
            }
        }
    };

    // A TCP connection to the HTTPS port that never starts its handshake.
    let mut c = std::net::TcpStream::connect(https).unwrap();
    let took = closed_after(&mut c, Duration::from_secs(5)).expect("no handshake: closed");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "{took:?}"
    );
    drop(c);

    // Slowloris on the plain port: half a head, then a byte every 200 ms.
    let mut c = std::net::TcpStream::connect(http).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let cut = loop {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "the slowloris head was kept for 6 s"
        );
        if c.write_all(b"X").is_err() {
            break started.elapsed();
        }
        match c.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break started.elapsed(),
        }
    };
    assert!(cut < Duration::from_secs(3), "cut off after {cut:?}");
    drop(c);
    std::thread::sleep(Duration::from_millis(300));

    // Two connections within the cap stay open (idle, 30 s allowed); a third is closed at once.
    let (a, _b) = (
        std::net::TcpStream::connect(http).unwrap(),
        std::net::TcpStream::connect(http).unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut third = std::net::TcpStream::connect(http).unwrap();
    let took = closed_after(&mut third, Duration::from_secs(5)).expect("over the cap: closed");
    assert!(took < Duration::from_millis(900), "closed at once: {took:?}");
    let mut a2 = a.try_clone().unwrap();
    assert_eq!(
        closed_after(&mut a2, Duration::from_millis(500)),
        None,
        "the first is still open"
    );
    drop((a, a2));
    std::thread::sleep(Duration::from_millis(300));
    // A freed place lets the next one in: it gets an answer (404: no Ingress).
    let mut d = std::net::TcpStream::connect(http).unwrap();
    d.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = d.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}
