//! Pods' shared namespaces (network, IPC, UTS), the pause container's job for every pod at once.
//! On request the supervisor makes a pod's namespaces (with the pod's hostname and loopback up)
//! by unsharing into them and back, and keeps an open file of each; the runtime, the CNI
//! plugins and the node reach them as `/proc/<supervisor>/fd/<n>`. Three descriptors per pod
//! instead of a process per pod, and no bind mounts, so the host's mount table (which every new
//! container copies) stays short.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;

use nix::sched::{CloneFlags, setns, unshare};

const KINDS: [(&str, CloneFlags); 3] =
    [("net", CloneFlags::CLONE_NEWNET), ("ipc", CloneFlags::CLONE_NEWIPC), ("uts", CloneFlags::CLONE_NEWUTS)];

pub struct Namespaces {
    home: Vec<File>,
    held: HashMap<String, Vec<File>>,
}

impl Namespaces {
    /// The calling thread's own namespaces, to return to after making a pod's.
    pub fn new() -> std::io::Result<Self> {
        let home = KINDS.iter().map(|(k, _)| File::open(format!("/proc/thread-self/ns/{k}"))).collect::<Result<_, _>>()?;
        Ok(Self { home, held: HashMap::new() })
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn fds(files: &[File]) -> String {
        let fds: Vec<String> = files.iter().map(|f| f.as_raw_fd().to_string()).collect();
        format!("ok {} {}", std::process::id(), fds.join(" "))
    }

    fn new_namespaces(&mut self, key: &str, hostname: &str) -> Result<String, String> {
        if let Some(files) = self.held.get(key) {
            return Ok(Self::fds(files));
        }
        let flags = KINDS.iter().fold(CloneFlags::empty(), |a, k| a | k.1);
        unshare(flags).map_err(|e| format!("unshare: {e}"))?;
        let made = (|| -> Result<Vec<File>, String> {
            nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname {hostname:?}: {e}"))?;
            loopback_up().map_err(|e| format!("setting lo up: {e}"))?;
            KINDS.iter().map(|(k, _)| File::open(format!("/proc/thread-self/ns/{k}")).map_err(|e| format!("opening the new {k} namespace: {e}"))).collect()
        })();
        // Back home, or this process would keep the pod's namespaces alive after `del`.
        for (file, (kind, flag)) in self.home.iter().zip(KINDS) {
            if let Err(e) = setns(file, flag) {
                eprintln!("nodeless-shim keep: cannot return to the host's {kind} namespace: {e}");
                std::process::exit(1);
            }
        }
        let files = made?;
        let reply = Self::fds(&files);
        self.held.insert(key.to_string(), files);
        Ok(reply)
    }

    /// `new <key> <hostname>`, `get <key>` or `del <key>`; `ok <pid> <net> <ipc> <uts>`, `none`,
    /// `ok` or `err <why>`.
    pub fn answer(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["new", key, hostname] => self.new_namespaces(key, hostname).unwrap_or_else(|e| format!("err {e}")),
            ["get", key] => self.held.get(*key).map_or_else(|| "none".to_string(), |f| Self::fds(f)),
            ["del", key] => {
                self.held.remove(*key);
                "ok".to_string()
            }
            _ => format!("err unknown request {line:?}"),
        }
    }
}

/// `ip link set lo up` as one rtnetlink request: RTM_NEWLINK for ifindex 1 (a new network
/// namespace's loopback) with IFF_UP, acknowledged.
fn loopback_up() -> Result<(), String> {
    use nix::sys::socket::{AddressFamily, NetlinkAddr, MsgFlags, SockFlag, SockProtocol, SockType, recv, sendto, socket};
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST_ACK: u16 = 1 | 4;
    const NLMSG_ERROR: u16 = 2;
    const IFF_UP: u32 = 1;
    let sock = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute).map_err(|e| e.to_string())?;
    let mut msg = Vec::with_capacity(32);
    msg.extend(32u32.to_ne_bytes()); // nlmsg_len
    msg.extend(RTM_NEWLINK.to_ne_bytes());
    msg.extend(NLM_F_REQUEST_ACK.to_ne_bytes());
    msg.extend(1u32.to_ne_bytes()); // seq
    msg.extend(0u32.to_ne_bytes()); // pid: the kernel fills it in
    msg.extend([0u8, 0]); // ifi_family AF_UNSPEC, padding
    msg.extend(0u16.to_ne_bytes()); // ifi_type
    msg.extend(1i32.to_ne_bytes()); // ifi_index: lo
    msg.extend(IFF_UP.to_ne_bytes()); // ifi_flags
    msg.extend(IFF_UP.to_ne_bytes()); // ifi_change
    sendto(sock.as_raw_fd(), &msg, &NetlinkAddr::new(0, 0), MsgFlags::empty()).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 256];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| e.to_string())?;
    if n < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != NLMSG_ERROR {
        return Err("unexpected rtnetlink reply".into());
    }
    match i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]) {
        0 => Ok(()),
        e => Err(nix::errno::Errno::from_raw(-e).to_string()),
    }
}
