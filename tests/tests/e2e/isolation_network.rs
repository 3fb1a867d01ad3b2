//! Tenant isolation, the pod network (issue 23, point 5), replayed as a hostile pod would try
//! it on `nodeless up --pod-cidr`: a pod with NET_ADMIN gives its `eth0` an address that is not
//! its own and sends from it, and tries a TCP server listening on the node's addresses. The
//! spoofed packets must not arrive (the target pod's ICMP counters stay put) and must be
//! counted by `eni-cni show`; the node's server must see no connection; the same pod must still
//! reach another pod, and Services by name through the cluster DNS on the node.
//!
//! Every packet stays on this machine: the targets are pods of the test's node and addresses
//! the host holds (link-local addresses, whose wall would otherwise let a packet out by the
//! default route, are covered by eni-cni's integration tests on an interface of their own).

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

use nodeless_tests::images::BUSYBOX;
use nodeless_tests::{Nodeless, eventually, workspace_binary};

const V: &str = "1.33";

/// A counter from `eni-cni show`'s output (0 when it is not there).
fn counter_in(show: &str, name: &str) -> u64 {
    show.lines()
        .find_map(|l| l.trim().strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// The echo requests a pod has received (`InEchos` of /proc/net/snmp in its namespace).
fn echo_requests_in(n: &Nodeless, pod: &str) -> u64 {
    let snmp = n.kubectl_ok(V, &["exec", pod, "--", "cat", "/proc/net/snmp"]);
    let icmp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Icmp:")).collect();
    let (names, values) = (icmp[0].split_whitespace(), icmp[1].split_whitespace());
    names
        .zip(values)
        .find(|(k, _)| *k == "InEchos")
        .and_then(|(_, v)| v.parse().ok())
        .expect("InEchos in /proc/net/snmp")
}

/// The host's first global IPv4 address besides the pod network's own.
fn node_address(exclude: &str) -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse::<Ipv4Addr>().ok())
        .find(|a| !a.to_string().starts_with(exclude))
}

#[test]
fn a_pod_cannot_spoof_its_source_or_reach_the_node_but_reaches_dns_and_pods() {
    let nodeless_tests::PodNet { prefix, cidr, dns, .. } = nodeless_tests::pod_net();
    let n = Nodeless::start_with_node(&["--pod-cidr", &cidr, "--cluster-dns", &dns]).unwrap();
    let node = n.node.clone().unwrap();
    let liar = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: liar}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sleep, "3600"]
    securityContext: {{capabilities: {{add: [NET_ADMIN]}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: target}}
spec:
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sleep, "3600"]}}
---
"#
    );
    // echo-0 behind the headless Service `echo`; its readiness probe is the node reaching the
    // pod, so Ready also shows the node's own traffic to pods still flows.
    let yaml = format!("{liar}{}", nodeless_tests::echo_service_and_client("echo-walls"));
    let out = n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(&yaml));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    n.kubectl_ok(
        V,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/liar",
            "pod/target",
            "pod/echo-0",
            "--timeout=90s",
        ],
    );
    let ip = |pod: &str| n.kubectl_ok(V, &["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]);
    let (target_ip, echo_ip, liar_ip) = (ip("target"), ip("echo-0"), ip("liar"));
    let bin = workspace_binary("eni-cni").unwrap();
    let show =
        || String::from_utf8_lossy(&Command::new(&bin).args(["show", &node]).output().unwrap().stdout).into_owned();
    eventually("the pods in the datapath", 10, || {
        let s = show();
        [&target_ip, &echo_ip, &liar_ip]
            .iter()
            .all(|ip| s.contains(&format!("{ip} ")))
    });
    assert!(
        show().contains(&format!(
            "walls: node closed but the cluster DNS {dns} port 53 (and the ingress there, TCP 80); link-local closed"
        )),
        "{}",
        show()
    );

    // The lie: an address from the pod CIDR that no pod has, on the liar's eth0.
    let claimed = format!("{prefix}250");
    let out = n.kubectl(
        V,
        &[
            "exec",
            "liar",
            "--",
            "ip",
            "addr",
            "add",
            &format!("{claimed}/32"),
            "dev",
            "eth0",
        ],
    );
    assert!(
        out.status.success(),
        "NET_ADMIN lets the pod add an address: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (echoes, spoofed) = (echo_requests_in(&n, "target"), counter_in(&show(), "drop-spoofed"));
    let out = n.kubectl(
        V,
        &[
            "exec", "liar", "--", "ping", "-c", "3", "-W", "1", "-I", &claimed, &target_ip,
        ],
    );
    assert!(
        !out.status.success(),
        "no answer to a spoofed ping: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        echo_requests_in(&n, "target"),
        echoes,
        "no spoofed echo request reached the target"
    );
    assert!(
        counter_in(&show(), "drop-spoofed") >= spoofed + 3,
        "each spoofed packet dropped and counted: {}",
        show()
    );
    // From its own address the same ping arrives.
    n.kubectl_ok(V, &["exec", "liar", "--", "ping", "-c", "1", "-W", "2", &target_ip]);
    assert!(
        echo_requests_in(&n, "target") > echoes,
        "the honest ping reached the target"
    );

    // The node: a TCP server on every address of the host, tried at the cluster DNS address
    // (local on the node) and at the host's own address.
    let server = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    server.set_nonblocking(true).unwrap();
    let port = server.local_addr().unwrap().port().to_string();
    let mut tried = vec![dns.clone()];
    tried.extend(node_address(&prefix).map(|a| a.to_string()));
    let dropped = counter_in(&show(), "drop-node");
    for addr in &tried {
        let out = n.kubectl(
            V,
            &[
                "exec",
                "liar",
                "--",
                "sh",
                "-c",
                &format!("nc -w 2 {addr} {port} </dev/null"),
            ],
        );
        assert!(!out.status.success(), "the pod connected to the node at {addr}:{port}");
    }
    assert!(
        server.accept().is_err(),
        "the node's server saw no connection from the pod"
    );
    assert!(
        counter_in(&show(), "drop-node") >= dropped + tried.len() as u64,
        "{}",
        show()
    );

    // What must keep working: another pod, and a Service by name through the cluster DNS.
    let body = n.kubectl_ok(
        V,
        &[
            "exec",
            "liar",
            "--",
            "wget",
            "-qO-",
            &format!("http://{echo_ip}:8080/by-address"),
        ],
    );
    assert!(body.starts_with("pod: echo-0\npath: /by-address\n"), "{body}");
    let dns_before = counter_in(&show(), "node-dns");
    let body = n.kubectl_ok(
        V,
        &[
            "exec",
            "liar",
            "--",
            "wget",
            "-qO-",
            "http://echo.default.svc.cluster.local:8080/by-name",
        ],
    );
    assert!(body.starts_with("pod: echo-0\npath: /by-name\n"), "{body}");
    assert!(
        counter_in(&show(), "node-dns") > dns_before,
        "the lookup went to the cluster DNS through the wall's door: {}",
        show()
    );

    // The same counters, and the pool's use, in the node's Prometheus metrics (through
    // control's node proxy), as a dashboard reads them.
    let metrics = n.kubectl_ok(V, &["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/metrics")]);
    let value = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{series} missing from\n{metrics}"))
    };
    assert!(
        value(r#"nodeless_eni_datapath_drops_total{reason="spoofed"} "#) >= spoofed + 3,
        "{metrics}"
    );
    assert!(
        value(r#"nodeless_eni_datapath_drops_total{reason="node"} "#) >= dropped + tried.len() as u64,
        "{metrics}"
    );
    assert!(value(r#"nodeless_eni_datapath_packets_total{result="node-dns"} "#) > dns_before);
    assert!(value(r#"nodeless_eni_datapath_packets_total{result="redirected"} "#) > 0);
    // liar, target, echo-0 and the echo client, and the node's two warm sandboxes (made ahead
    // of pods, with their addresses): four to six addresses in use as pods take warm ones.
    let in_use = value(r#"nodeless_eni_pool_addresses{state="in_use"} "#);
    assert!((4..=6).contains(&in_use), "{metrics}");
    assert!(value(r#"nodeless_eni_pool_addresses{state="warm"} "#) > 0, "{metrics}");
    // A /24 less its network, broadcast and gateway addresses.
    assert_eq!(value("nodeless_eni_pool_capacity "), 253);
    // The Service is headless (its name resolves to the pod): the balancer's counters are
    // there, at whatever they stand.
    value(r#"nodeless_eni_service_socket_calls_total{result="translated"} "#);
}
