//! What the privileged tests share: a scene that removes everything it made (namespaces, the
//! node's interface, the network's pins) even when a test fails, pods plumbed the way ADD
//! plumbs them (veth pair, /32, host route, default route through the host end) and attached
//! the way the pool attaches them, and readers of `show`'s counters and of datagrams.

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use nodeless_eni_cni::bpf::{self, Pins, PodEndpoint, Walls};
use nodeless_eni_cni::datapath;

pub const WAIT: Duration = Duration::from_millis(800);

pub fn root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("skipped: needs root");
    false
}

pub fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("iproute2");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything a test made on the host, removed on drop (pass or fail): the namespaces (their
/// veth pairs and host routes go with them), the node's interface (with its addresses) and the
/// network's pins (the filters went with the interfaces).
pub struct Scene {
    pub network: String,
    pub namespaces: Vec<String>,
    pub node_link: String,
}

impl Scene {
    /// A scene for one test: names unique to this process and `tag`.
    pub fn new(tag: &str) -> Scene {
        let id = std::process::id() % 100_000;
        Scene {
            network: format!("nl{tag}{id}"),
            namespaces: Vec::new(),
            node_link: format!("nl{tag}d{id}"),
        }
    }

    /// A network namespace of the scene's, by a short name.
    pub fn namespace(&mut self, name: &str) -> String {
        let ns = format!("{}{name}", self.network);
        run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ns
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.node_link])
            .stderr(Stdio::null())
            .status();
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        let _ = std::fs::remove_dir_all(Pins::for_network(&self.network).dir);
    }
}

pub struct Pod {
    pub ns: String,
    pub host_ifname: String,
    pub ip: Ipv4Addr,
    pub endpoint: PodEndpoint,
}

impl Pod {
    /// Run `f` on a thread inside the pod's namespace (sockets made there stay there).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
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
    pub fn connects(&self, to: SocketAddr) -> bool {
        self.run(move || TcpStream::connect_timeout(&to, WAIT).is_ok())
    }
}

/// An interface `ifname` with address `ip` in the namespace `ns`, plumbed as ADD does (the
/// attachment named `name`; its default route replaces any earlier one), not yet in the
/// datapath.
pub fn plumb(rt: &tokio::runtime::Runtime, network: &str, ns: &str, name: &str, ifname: &str, ip: Ipv4Addr) -> Pod {
    let host_ifname = datapath::host_ifname(network, name, ifname);
    let file = datapath::open_netns(std::path::Path::new(&format!("/run/netns/{ns}"))).unwrap();
    let (pair, address) = rt.block_on(async {
        let host = datapath::host().unwrap();
        datapath::enable_forwarding().unwrap();
        let (pair, pod) =
            datapath::veth_create(&host, datapath::inside_async(&file), &file, &host_ifname, ifname, None)
                .await
                .unwrap();
        let address = datapath::veth_address(&host, &pod, &pair, ip).await.unwrap();
        (pair, address)
    });
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&address.pod_mac);
    let endpoint = PodEndpoint {
        ifindex: pair.host_ifindex,
        mac,
        sandbox: bpf::sandbox_of(&file),
    };
    Pod {
        ns: ns.to_string(),
        host_ifname,
        ip,
        endpoint,
    }
}

/// Make a pod: namespace, veth pair, address, host route; then the datapath, as ADD and the
/// pool do.
pub fn pod(
    rt: &tokio::runtime::Runtime,
    scene: &mut Scene,
    pins: &Pins,
    name: &str,
    ip: Ipv4Addr,
    walls: Walls,
) -> Pod {
    let ns = scene.namespace(name);
    let pod = plumb(rt, &scene.network, &ns, name, "eth0", ip);
    pins.attach(&pod.host_ifname, ip, pod.endpoint, false, walls)
        .expect("attaching the datapath");
    pod
}

/// A counter from `show`.
pub fn counter(pins: &Pins, name: &str) -> u64 {
    let show = pins.show().unwrap();
    show.lines()
        .find_map(|l| l.trim().strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Datagrams that reach `socket` within WAIT of each other.
pub fn received(socket: &UdpSocket) -> Vec<String> {
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}
