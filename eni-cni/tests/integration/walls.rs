//! The pod network's walls (bpf/walls.h), against the real kernel: pods made the way ADD makes
//! them (veth pair, /32, host route) with the datapath attached the way the pool attaches it,
//! and the node's addresses on an interface of the test's own (a veth whose other end sits in
//! a namespace of the test's: this kernel has no node_link driver), so that nothing a test sends
//! can leave the machine even when a wall is missing.
//!
//! What is pinned: a spoofed source is dropped (an unknown address, and another pod's) and
//! counted; the node's addresses are closed to pods but for the cluster DNS on port 53 (and TCP
//! port 80 there, the ingress's cluster-local listener), while
//! the node's own exchanges with a pod (TCP it began, connected UDP, ping) still work;
//! 169.254.169.254 is closed; pod to pod is untouched; each wall falls with its setting; a pod
//! with two interfaces may send either of its addresses out of either (one sandbox, one pod),
//! and still no other pod's.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use nodeless_eni_cni::bpf::{Pins, Walls};

use crate::support::{Scene, WAIT, counter, plumb, pod, received, root, run};

const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

#[test]
fn pods_cannot_lie_about_their_address_or_reach_the_node() {
    if !root() {
        return;
    }
    let k = (std::process::id() % 250) as u8;
    let mut scene = Scene::new("w");
    let pins = Pins::for_network(&scene.network);
    let subnet = |last: u8| Ipv4Addr::new(10, 246, k, last);
    // The node's addresses: the cluster DNS (the CIDR's first address, as a node makes it
    // local), one more, and the metadata address, all on an interface of the test's.
    let (dns, node) = (subnet(1), Ipv4Addr::new(198, 18, k, 1));
    let far = scene.namespace("far");
    run(&[
        "ip",
        "link",
        "add",
        &scene.node_link,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &far,
    ]);
    for a in [dns, node, METADATA] {
        run(&["ip", "addr", "add", &format!("{a}/32"), "dev", &scene.node_link]);
    }
    run(&["ip", "link", "set", &scene.node_link, "up"]);
    let walls = Walls {
        cluster_dns: Some(dns),
        ..Walls::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let a = pod(&rt, &mut scene, &pins, "a", subnet(2), walls);
    let b = pod(&rt, &mut scene, &pins, "b", subnet(3), walls);
    let c = pod(&rt, &mut scene, &pins, "c", subnet(4), walls);
    assert!(
        pins.show().unwrap().contains(&format!(
            "walls: node closed but the cluster DNS {dns} port 53 (and the ingress there, TCP 80); link-local closed"
        )),
        "{}",
        pins.show().unwrap()
    );

    // Anti-spoofing. b listens; a sends from an address nobody has, then from c's (both put
    // on a's eth0, as a pod with NET_ADMIN can), then from its own. Only the last arrives.
    let b_ip = b.ip;
    let listener = b.run(move || UdpSocket::bind((b_ip, 0)).unwrap());
    let to = listener.local_addr().unwrap();
    let unknown = subnet(200);
    for claimed in [unknown, c.ip] {
        run(&[
            "ip",
            "-n",
            &a.ns,
            "addr",
            "add",
            &format!("{claimed}/32"),
            "dev",
            "eth0",
        ]);
    }
    let spoofed_before = counter(&pins, "drop-spoofed");
    let a_ip = a.ip;
    a.run(move || {
        for (from, text) in [(unknown, "from nobody"), (c.ip, "from c"), (a_ip, "from a")] {
            let s = UdpSocket::bind((from, 0)).unwrap();
            s.send_to(text.as_bytes(), to).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert_eq!(
        received(&listener),
        vec!["from a".to_string()],
        "only the datagram with a's own source arrives"
    );
    assert!(
        counter(&pins, "drop-spoofed") >= spoofed_before + 2,
        "both lies counted: {}",
        pins.show().unwrap()
    );
    // Pod to pod by its own address still takes the fast path, TCP included.
    let redirected = counter(&pins, "redirected");
    let server = b.run(move || TcpListener::bind((b_ip, 0)).unwrap());
    assert!(a.connects(server.local_addr().unwrap()), "pod a -> pod b");
    assert!(counter(&pins, "redirected") > redirected, "{}", pins.show().unwrap());

    // The node is closed: a listener on every address, reached from neither of the node's
    // addresses, nor the cluster DNS address on another port.
    let host_server = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = host_server.local_addr().unwrap().port();
    let dropped = counter(&pins, "drop-node");
    for addr in [node, dns] {
        assert!(
            !a.connects(SocketAddr::from((addr, port))),
            "pod -> node {addr}:{port} must fail"
        );
    }
    assert!(counter(&pins, "drop-node") >= dropped + 2, "{}", pins.show().unwrap());
    host_server.set_nonblocking(true).unwrap();
    assert!(host_server.accept().is_err(), "nothing reached the node's listener");
    // ... and the metadata address, counted apart.
    let link_local = counter(&pins, "drop-link-local");
    assert!(
        !a.connects(SocketAddr::from((METADATA, port))),
        "pod -> {METADATA} must fail"
    );
    assert!(
        counter(&pins, "drop-link-local") > link_local,
        "{}",
        pins.show().unwrap()
    );

    // But the cluster DNS, port 53, UDP and TCP.
    let dns_udp = UdpSocket::bind((dns, 53)).unwrap();
    let dns_tcp = TcpListener::bind((dns, 53)).unwrap();
    let dns_before = counter(&pins, "node-dns");
    a.run(move || {
        UdpSocket::bind((a_ip, 0))
            .unwrap()
            .send_to(b"query", (dns, 53))
            .unwrap()
    });
    let mut buf = [0u8; 64];
    dns_udp.set_read_timeout(Some(WAIT)).unwrap();
    let (n, asker) = dns_udp
        .recv_from(&mut buf)
        .expect("the query reached the cluster DNS address");
    assert_eq!((&buf[..n], asker.ip()), (&b"query"[..], std::net::IpAddr::V4(a.ip)));
    let exchange = std::thread::spawn(move || {
        let (mut s, _) = dns_tcp.accept().unwrap();
        s.write_all(b"answer").unwrap();
    });
    let got = a.run(move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((dns, 53)), WAIT * 3).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(WAIT * 3)).unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).map_err(|e| e.to_string())?;
        Ok::<_, String>(v)
    });
    assert_eq!(got.as_deref(), Ok(&b"answer"[..]), "pod -> cluster DNS over TCP");
    exchange.join().unwrap();
    assert!(counter(&pins, "node-dns") >= dns_before + 2, "{}", pins.show().unwrap());

    // And TCP port 80 there (the ingress's cluster-local listener); not 81.
    let ingress = TcpListener::bind((dns, 80)).unwrap();
    let closed = TcpListener::bind((dns, 81)).unwrap();
    let ingress_before = counter(&pins, "node-ingress");
    assert!(
        a.connects(SocketAddr::from((dns, 80))),
        "pod -> the ingress on {dns}:80"
    );
    assert!(!a.connects(SocketAddr::from((dns, 81))), "pod -> {dns}:81 must fail");
    assert!(
        counter(&pins, "node-ingress") > ingress_before,
        "{}",
        pins.show().unwrap()
    );
    closed.set_nonblocking(true).unwrap();
    assert!(closed.accept().is_err(), "nothing reached port 81");
    drop(ingress);

    // The node's own exchanges with a pod: TCP it opens, UDP on a connected socket, ping.
    let replies = counter(&pins, "node-reply");
    let pod_server = a.run(move || TcpListener::bind((a_ip, 0)).unwrap());
    let pod_addr = pod_server.local_addr().unwrap();
    let serve = std::thread::spawn(move || {
        let (mut s, _) = pod_server.accept().unwrap();
        s.write_all(b"from the pod").unwrap();
    });
    let mut s = TcpStream::connect_timeout(&pod_addr, WAIT * 3).expect("node -> pod over TCP");
    s.set_read_timeout(Some(WAIT * 3)).unwrap();
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    assert_eq!(v, b"from the pod");
    serve.join().unwrap();
    let pod_udp = a.run(move || UdpSocket::bind((a_ip, 0)).unwrap());
    let pod_udp_addr = pod_udp.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        // Two datagrams to answer: from a connected socket, then from an unconnected one.
        let mut buf = [0u8; 64];
        pod_udp.set_read_timeout(Some(WAIT * 3)).unwrap();
        for _ in 0..2 {
            if let Ok((n, from)) = pod_udp.recv_from(&mut buf) {
                pod_udp.send_to(&buf[..n], from).unwrap();
            }
        }
    });
    let connected = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    connected.connect(pod_udp_addr).unwrap();
    connected.set_read_timeout(Some(WAIT * 3)).unwrap();
    connected.send(b"connected").unwrap();
    let n = connected
        .recv(&mut buf)
        .expect("the pod answers a connected UDP socket of the node's");
    assert_eq!(&buf[..n], b"connected");
    // An unconnected socket of the node's is a server to the pod: its answer stays out.
    let unconnected = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    unconnected.send_to(b"unconnected", pod_udp_addr).unwrap();
    assert_eq!(
        received(&unconnected),
        Vec::<String>::new(),
        "no answer to an unconnected node socket"
    );
    echo.join().unwrap();
    let ping = Command::new("busybox")
        .args(["ping", "-c", "1", "-W", "2", &a.ip.to_string()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ping.success(), "node -> pod ping");
    assert!(counter(&pins, "node-reply") >= replies + 3, "{}", pins.show().unwrap());

    // The settings: node access opens the node (the metadata address stays closed), then
    // link-local opens that too. Any attach writes the network's walls.
    let open_node = Walls {
        allow_node_access: true,
        ..walls
    };
    pins.attach(&a.host_ifname, a.ip, a.endpoint, false, open_node).unwrap();
    assert_eq!(pins.walls().unwrap(), open_node);
    host_server.set_nonblocking(false).unwrap();
    assert!(
        a.connects(SocketAddr::from((node, port))),
        "with allowNodeAccess, pod -> node"
    );
    assert!(
        !a.connects(SocketAddr::from((METADATA, port))),
        "allowNodeAccess leaves link-local closed"
    );
    let open_all = Walls {
        allow_link_local: true,
        ..open_node
    };
    pins.attach(&a.host_ifname, a.ip, a.endpoint, false, open_all).unwrap();
    assert!(
        a.connects(SocketAddr::from((METADATA, port))),
        "with allowLinkLocal, pod -> {METADATA}"
    );
    // Spoofing has no setting.
    let before = counter(&pins, "drop-spoofed");
    a.run(move || UdpSocket::bind((unknown, 0)).unwrap().send_to(b"lie", to).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    assert!(counter(&pins, "drop-spoofed") > before, "{}", pins.show().unwrap());
    drop(host_server);
}

/// A sandbox with two interfaces on the network is one pod: its routes send one interface's
/// address out of the other (the latest default route wins, as in a pod on two networks or
/// with two attachments), and that passes, both ways of an exchange; another sandbox's address
/// does not, nor an address published without a sandbox (an older pin's entry).
#[test]
fn a_pod_with_two_interfaces_may_use_either_address_on_either() {
    if !root() {
        return;
    }
    let k = (std::process::id() % 250) as u8;
    let mut scene = Scene::new("s");
    let pins = Pins::for_network(&scene.network);
    let subnet = |last: u8| Ipv4Addr::new(10, 247, k, last);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let walls = Walls::default();
    let b = pod(&rt, &mut scene, &pins, "b", subnet(3), walls);
    let c = pod(&rt, &mut scene, &pins, "c", subnet(4), walls);
    let ns = scene.namespace("d");
    let d0 = plumb(&rt, &scene.network, &ns, "d", "eth0", subnet(10));
    pins.attach(&d0.host_ifname, d0.ip, d0.endpoint, false, walls).unwrap();
    let d1 = plumb(&rt, &scene.network, &ns, "d", "eth1", subnet(11));
    pins.attach(&d1.host_ifname, d1.ip, d1.endpoint, false, walls).unwrap();
    let sandbox = d0.endpoint.sandbox;
    assert!(
        sandbox != 0 && d1.endpoint.sandbox == sandbox,
        "one namespace, one sandbox: {:?} {:?}",
        d0.endpoint,
        d1.endpoint
    );
    assert!(
        b.endpoint.sandbox != sandbox && c.endpoint.sandbox != sandbox,
        "other namespaces, other sandboxes"
    );
    assert!(
        pins.show().unwrap().contains(&format!("sandbox {sandbox}")),
        "{}",
        pins.show().unwrap()
    );
    let routes = Command::new("ip").args(["-n", &ns, "route"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains("default via 169.254.1.1 dev eth1"),
        "the latest default route: {}",
        String::from_utf8_lossy(&routes.stdout)
    );

    // d sends to b from each of its addresses (both leave through eth1) and from c's, which
    // it puts on its eth0 as a pod with NET_ADMIN can.
    let b_ip = b.ip;
    let listener = b.run(move || UdpSocket::bind((b_ip, 0)).unwrap());
    let to = listener.local_addr().unwrap();
    run(&["ip", "-n", &ns, "addr", "add", &format!("{}/32", c.ip), "dev", "eth0"]);
    let spoofed = counter(&pins, "drop-spoofed");
    let (ip0, ip1, c_ip) = (d0.ip, d1.ip, c.ip);
    let send = move |from: Vec<(Ipv4Addr, &'static str)>| {
        for (ip, text) in from {
            UdpSocket::bind((ip, 0)).unwrap().send_to(text.as_bytes(), to).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    d1.run(move || {
        send(vec![
            (ip0, "from eth0's address"),
            (ip1, "from eth1's address"),
            (c_ip, "from c"),
        ])
    });
    assert_eq!(
        received(&listener),
        vec!["from eth0's address".to_string(), "from eth1's address".to_string()],
        "the pod's own addresses arrive, another pod's does not"
    );
    assert!(counter(&pins, "drop-spoofed") > spoofed, "{}", pins.show().unwrap());
    // The end-to-end test's case: b pings eth0's address; the reply leaves through eth1.
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &b.ns,
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &d0.ip.to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ping.success(), "b -> d's eth0, answered through eth1");

    // An entry without a sandbox (what an older pin carries over) passes on its own host end
    // only.
    let unknown = nodeless_eni_cni::bpf::PodEndpoint {
        sandbox: 0,
        ..d0.endpoint
    };
    pins.attach(&d0.host_ifname, d0.ip, unknown, false, walls).unwrap();
    let spoofed = counter(&pins, "drop-spoofed");
    d1.run(move || {
        UdpSocket::bind((ip0, 0))
            .unwrap()
            .send_to(b"unknown sandbox", to)
            .unwrap()
    });
    assert_eq!(
        received(&listener),
        Vec::<String>::new(),
        "eth0's address without a sandbox, through eth1"
    );
    assert!(counter(&pins, "drop-spoofed") > spoofed, "{}", pins.show().unwrap());

    // Withdrawn, every pod takes its host end's entry along, and the last one the pins.
    for p in [&b, &c, &d0, &d1] {
        pins.detach(&p.host_ifname, Some(p.ip)).unwrap();
    }
    assert!(
        !pins.dir.exists(),
        "pins left: {:?}",
        std::fs::read_dir(&pins.dir).map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect::<Vec<_>>())
    );
}
