//! The pod network's walls (bpf/walls.h), against the real kernel: pods made the way ADD makes
//! them (veth pair, /32, host route) with the datapath attached the way the pool attaches it,
//! and the node's addresses on an interface of the test's own (a veth whose other end sits in
//! a namespace of the test's: this kernel has no node_link driver), so that nothing a test sends
//! can leave the machine even when a wall is missing.
//!
//! What is pinned: a spoofed source is dropped (an unknown address, and another pod's) and
//! counted; the node's addresses are closed to pods but for the cluster DNS on port 53, while
//! the node's own exchanges with a pod (TCP it began, connected UDP, ping) still work;
//! 169.254.169.254 is closed; pod to pod is untouched; each wall falls with its setting.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use nodeless_eni_cni::bpf::{Pins, PodEndpoint, Walls};
use nodeless_eni_cni::datapath;

const WAIT: Duration = Duration::from_millis(800);
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

fn root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("skipped: needs root");
    false
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("iproute2");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Everything a test made on the host, removed on drop (pass or fail): the namespaces (their
/// veth pairs and host routes go with them), the node's interface (with its addresses) and the
/// network's pins (the filters went with the interfaces).
struct Scene {
    network: String,
    namespaces: Vec<String>,
    node_link: String,
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.node_link]).stderr(Stdio::null()).status();
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        let _ = std::fs::remove_dir_all(Pins::for_network(&self.network).dir);
    }
}

struct Pod {
    ns: String,
    host_ifname: String,
    ip: Ipv4Addr,
    endpoint: PodEndpoint,
}

impl Pod {
    /// Run `f` on a thread inside the pod's namespace (sockets made there stay there).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("the pod's namespace");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("the pod's thread")
    }

    /// Connect from the pod; whether the connection was made within WAIT.
    fn connects(&self, to: SocketAddr) -> bool {
        self.run(move || TcpStream::connect_timeout(&to, WAIT).is_ok())
    }
}

/// Make a pod: namespace, veth pair, address, host route; then the datapath, as ADD and the
/// pool do.
fn pod(rt: &tokio::runtime::Runtime, scene: &mut Scene, pins: &Pins, name: &str, ip: Ipv4Addr, walls: Walls) -> Pod {
    let ns = format!("{}{name}", scene.network);
    run(&["ip", "netns", "add", &ns]);
    scene.namespaces.push(ns.clone());
    let host_ifname = datapath::host_ifname(&scene.network, name, "eth0");
    let (pair, address) = rt.block_on(async {
        let file = datapath::open_netns(std::path::Path::new(&format!("/run/netns/{ns}"))).unwrap();
        let host = datapath::host().unwrap();
        datapath::enable_forwarding().unwrap();
        let (pair, pod) = datapath::veth_create(&host, datapath::inside_async(&file), &file, &host_ifname, "eth0", None).await.unwrap();
        let address = datapath::veth_address(&host, &pod, &pair, ip).await.unwrap();
        (pair, address)
    });
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&address.pod_mac);
    let endpoint = PodEndpoint { ifindex: pair.host_ifindex, mac };
    pins.attach(&host_ifname, ip, endpoint, false, walls).expect("attaching the datapath");
    Pod { ns, host_ifname, ip, endpoint }
}

/// A counter from `show`.
fn counter(pins: &Pins, name: &str) -> u64 {
    let show = pins.show().unwrap();
    show.lines().find_map(|l| l.trim().strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

/// Datagrams that reach `socket` within WAIT of each other.
fn received(socket: &UdpSocket) -> Vec<String> {
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

#[test]
fn pods_cannot_lie_about_their_address_or_reach_the_node() {
    if !root() {
        return;
    }
    let id = std::process::id();
    let k = (id % 250) as u8;
    let mut scene = Scene { network: format!("nlw{}", id % 100_000), namespaces: Vec::new(), node_link: format!("nlwd{}", id % 100_000) };
    let pins = Pins::for_network(&scene.network);
    let subnet = |last: u8| Ipv4Addr::new(10, 246, k, last);
    // The node's addresses: the cluster DNS (the CIDR's first address, as a node makes it
    // local), one more, and the metadata address, all on an interface of the test's.
    let (dns, node) = (subnet(1), Ipv4Addr::new(198, 18, k, 1));
    let far = format!("{}far", scene.network);
    run(&["ip", "netns", "add", &far]);
    scene.namespaces.push(far.clone());
    run(&["ip", "link", "add", &scene.node_link, "type", "veth", "peer", "name", "eth0", "netns", &far]);
    for a in [dns, node, METADATA] {
        run(&["ip", "addr", "add", &format!("{a}/32"), "dev", &scene.node_link]);
    }
    run(&["ip", "link", "set", &scene.node_link, "up"]);
    let walls = Walls { cluster_dns: Some(dns), ..Walls::default() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let a = pod(&rt, &mut scene, &pins, "a", subnet(2), walls);
    let b = pod(&rt, &mut scene, &pins, "b", subnet(3), walls);
    let c = pod(&rt, &mut scene, &pins, "c", subnet(4), walls);
    assert!(pins.show().unwrap().contains(&format!("walls: node closed but the cluster DNS {dns} port 53; link-local closed")), "{}", pins.show().unwrap());

    // Anti-spoofing. b listens; a sends from an address nobody has, then from c's (both put
    // on a's eth0, as a pod with NET_ADMIN can), then from its own. Only the last arrives.
    let b_ip = b.ip;
    let listener = b.run(move || UdpSocket::bind((b_ip, 0)).unwrap());
    let to = listener.local_addr().unwrap();
    let unknown = subnet(200);
    for claimed in [unknown, c.ip] {
        run(&["ip", "-n", &a.ns, "addr", "add", &format!("{claimed}/32"), "dev", "eth0"]);
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
    assert_eq!(received(&listener), vec!["from a".to_string()], "only the datagram with a's own source arrives");
    assert!(counter(&pins, "drop-spoofed") >= spoofed_before + 2, "both lies counted: {}", pins.show().unwrap());
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
        assert!(!a.connects(SocketAddr::from((addr, port))), "pod -> node {addr}:{port} must fail");
    }
    assert!(counter(&pins, "drop-node") >= dropped + 2, "{}", pins.show().unwrap());
    host_server.set_nonblocking(true).unwrap();
    assert!(host_server.accept().is_err(), "nothing reached the node's listener");
    // ... and the metadata address, counted apart.
    let link_local = counter(&pins, "drop-link-local");
    assert!(!a.connects(SocketAddr::from((METADATA, port))), "pod -> {METADATA} must fail");
    assert!(counter(&pins, "drop-link-local") > link_local, "{}", pins.show().unwrap());

    // But the cluster DNS, port 53, UDP and TCP.
    let dns_udp = UdpSocket::bind((dns, 53)).unwrap();
    let dns_tcp = TcpListener::bind((dns, 53)).unwrap();
    let dns_before = counter(&pins, "node-dns");
    a.run(move || UdpSocket::bind((a_ip, 0)).unwrap().send_to(b"query", (dns, 53)).unwrap());
    let mut buf = [0u8; 64];
    dns_udp.set_read_timeout(Some(WAIT)).unwrap();
    let (n, asker) = dns_udp.recv_from(&mut buf).expect("the query reached the cluster DNS address");
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
    let n = connected.recv(&mut buf).expect("the pod answers a connected UDP socket of the node's");
    assert_eq!(&buf[..n], b"connected");
    // An unconnected socket of the node's is a server to the pod: its answer stays out.
    let unconnected = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    unconnected.send_to(b"unconnected", pod_udp_addr).unwrap();
    assert_eq!(received(&unconnected), Vec::<String>::new(), "no answer to an unconnected node socket");
    echo.join().unwrap();
    let ping = Command::new("busybox").args(["ping", "-c", "1", "-W", "2", &a.ip.to_string()]).stdout(Stdio::null()).status().unwrap();
    assert!(ping.success(), "node -> pod ping");
    assert!(counter(&pins, "node-reply") >= replies + 3, "{}", pins.show().unwrap());

    // The settings: node access opens the node (the metadata address stays closed), then
    // link-local opens that too. Any attach writes the network's walls.
    let open_node = Walls { allow_node_access: true, ..walls };
    pins.attach(&a.host_ifname, a.ip, a.endpoint, false, open_node).unwrap();
    assert_eq!(pins.walls().unwrap(), open_node);
    host_server.set_nonblocking(false).unwrap();
    assert!(a.connects(SocketAddr::from((node, port))), "with allowNodeAccess, pod -> node");
    assert!(!a.connects(SocketAddr::from((METADATA, port))), "allowNodeAccess leaves link-local closed");
    let open_all = Walls { allow_link_local: true, ..open_node };
    pins.attach(&a.host_ifname, a.ip, a.endpoint, false, open_all).unwrap();
    assert!(a.connects(SocketAddr::from((METADATA, port))), "with allowLinkLocal, pod -> {METADATA}");
    // Spoofing has no setting.
    let before = counter(&pins, "drop-spoofed");
    a.run(move || UdpSocket::bind((unknown, 0)).unwrap().send_to(b"lie", to).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    assert!(counter(&pins, "drop-spoofed") > before, "{}", pins.show().unwrap());
    drop(host_server);
}
