//! Pods' shared namespaces (network, IPC, UTS), the pause container's job for every pod at once.
//! On request the supervisor makes a pod's namespaces (with the pod's hostname and loopback up)
//! by unsharing into them and back, and keeps an open file of each; the runtime, the CNI
//! plugins and the node reach them as `/proc/<supervisor>/fd/<n>`. Three descriptors per pod
//! instead of a process per pod, and no bind mounts, so the host's mount table (which every new
//! container copies) stays short.
//!
//! A pod with a user namespace (`new <key> <hostname> <host uid base>`) gets a fourth: the user
//! namespace, which owns the other three, so root in the pod keeps its capabilities over its
//! own network (ports below 1024, ping, `ip addr add` with CAP_NET_ADMIN). The kernel lets only
//! a single-threaded process unshare or join a user namespace, and the supervisor has a thread
//! per connection, so a child (`nodeless-shim pod-namespaces`, see [`child`]) unshares all four
//! at once and the supervisor writes its uid and gid maps, opens its namespaces and lets it go:
//! a fork and an exec more per pod than without, about 2 ms.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns, unshare};

const KINDS: [(&str, CloneFlags); 3] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
];

pub struct Namespaces {
    home: Vec<File>,
    held: HashMap<String, Vec<File>>,
}

impl Namespaces {
    /// The calling thread's own namespaces, to return to after making a pod's.
    pub fn new() -> std::io::Result<Self> {
        let home = KINDS
            .iter()
            .map(|(k, _)| File::open(format!("/proc/thread-self/ns/{k}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            home,
            held: HashMap::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn fds(files: &[File]) -> String {
        let fds: Vec<String> = files.iter().map(|f| f.as_raw_fd().to_string()).collect();
        format!("ok {} {}", std::process::id(), fds.join(" "))
    }

    fn new_namespaces(&mut self, key: &str, hostname: &str, user_base: Option<u32>) -> Result<String, String> {
        if let Some(files) = self.held.get(key) {
            return Ok(Self::fds(files));
        }
        let flags = KINDS.iter().fold(CloneFlags::empty(), |a, k| a | k.1);
        if let Some(base) = user_base {
            let files = in_user_namespace(hostname, base)?;
            let reply = Self::fds(&files);
            self.held.insert(key.to_string(), files);
            return Ok(reply);
        }
        unshare(flags).map_err(|e| format!("unshare: {e}"))?;
        let made = (|| -> Result<Vec<File>, String> {
            nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname {hostname:?}: {e}"))?;
            loopback_up().map_err(|e| format!("setting lo up: {e}"))?;
            KINDS
                .iter()
                .map(|(k, _)| {
                    File::open(format!("/proc/thread-self/ns/{k}"))
                        .map_err(|e| format!("opening the new {k} namespace: {e}"))
                })
                .collect()
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

    /// Hand the namespaces held as `from` (a warm sandbox, made before its pod) to `to`, with the
    /// pod's hostname: the descriptors stay the same, only their key and the UTS name change.
    fn claim(&mut self, from: &str, to: &str, hostname: &str) -> Result<String, String> {
        if self.held.contains_key(to) {
            return Err(format!("{to} already holds namespaces"));
        }
        let files = self
            .held
            .get(from)
            .ok_or_else(|| format!("no namespaces held as {from}"))?;
        let uts = &files[2];
        setns(uts, CloneFlags::CLONE_NEWUTS).map_err(|e| format!("entering {from}'s UTS namespace: {e}"))?;
        let named = nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname {hostname:?}: {e}"));
        if let Err(e) = setns(&self.home[2], CloneFlags::CLONE_NEWUTS) {
            eprintln!("nodeless-shim keep: cannot return to the host's uts namespace: {e}");
            std::process::exit(1);
        }
        named?;
        let files = self.held.remove(from).unwrap_or_default();
        let reply = Self::fds(&files);
        self.held.insert(to.to_string(), files);
        Ok(reply)
    }

    /// `new <key> <hostname> [<host uid base>]`, `claim <from> <to> <hostname>`, `get <key>` or
    /// `del <key>`; `ok <pid> <net> <ipc> <uts> [<user>]`, `none`, `ok` or `err <why>`.
    pub fn answer(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["new", key, hostname] => self
                .new_namespaces(key, hostname, None)
                .unwrap_or_else(|e| format!("err {e}")),
            ["new", key, hostname, base] => match base.parse::<u32>() {
                Ok(b) if b > 0 && b.checked_add(USER_RANGE - 1).is_some() => self
                    .new_namespaces(key, hostname, Some(b))
                    .unwrap_or_else(|e| format!("err {e}")),
                _ => format!("err {base:?} is not a host uid base"),
            },
            ["claim", from, to, hostname] => self.claim(from, to, hostname).unwrap_or_else(|e| format!("err {e}")),
            ["get", key] => self.held.get(*key).map_or_else(|| "none".to_string(), |f| Self::fds(f)),
            ["del", key] => {
                self.held.remove(*key);
                "ok".to_string()
            }
            _ => format!("err unknown request {line:?}"),
        }
    }
}

/// How many ids a pod's user namespace maps (0…65535 in the pod, as containerd and Kubernetes
/// give each pod).
const USER_RANGE: u32 = 65536;

/// A user namespace mapping 0…65535 to `base`…, owning new network, IPC and UTS namespaces:
/// made by a child ([`child`]), whose maps this process writes (it is root in the parent user
/// namespace) and whose namespaces it opens before letting it exit. The files come back as net,
/// ipc, uts, user: the order of the reply.
fn in_user_namespace(hostname: &str, base: u32) -> Result<Vec<File>, String> {
    // The running image itself, not the path it was started from: the supervisor outlives
    // upgrades, and once its file is replaced (a rebuild, a package update) that path names
    // another binary, or nothing ("… (deleted)").
    let mut kid = Command::new("/proc/self/exe")
        .arg("pod-namespaces")
        .arg(hostname)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the child that makes the pod's user namespace: {e}"))?;
    let result = (|| -> Result<Vec<File>, String> {
        let pid = kid.id();
        let mut out = BufReader::new(kid.stdout.take().ok_or("no pipe from the child")?);
        let mut line = String::new();
        out.read_line(&mut line)
            .map_err(|e| format!("reading from the child: {e}"))?;
        if line.trim() != "unshared" {
            return Err(format!("the child could not make the namespaces: {}", line.trim()));
        }
        let map = format!("0 {base} {USER_RANGE}\n");
        for file in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{file}"), &map)
                .map_err(|e| format!("writing the pod's {file}: {e}"))?;
        }
        writeln!(kid.stdin.as_mut().ok_or("no pipe to the child")?, "mapped")
            .map_err(|e| format!("writing to the child: {e}"))?;
        line.clear();
        out.read_line(&mut line)
            .map_err(|e| format!("reading from the child: {e}"))?;
        if line.trim() != "ready" {
            return Err(format!(
                "the child could not set the pod's namespaces up: {}",
                line.trim()
            ));
        }
        ["net", "ipc", "uts", "user"]
            .iter()
            .map(|k| {
                File::open(format!("/proc/{pid}/ns/{k}")).map_err(|e| format!("opening the new {k} namespace: {e}"))
            })
            .collect()
    })();
    // Closing its stdin lets it exit; the files keep the namespaces.
    drop(kid.stdin.take());
    // The supervisor's reaper (`containers`) may reap it first: either is fine.
    let _ = kid.wait();
    result
}

/// `nodeless-shim pod-namespaces <hostname>`, run by the supervisor: unshare a user namespace
/// and, owned by it, network, IPC and UTS namespaces; say `unshared`, wait for `mapped` (the
/// supervisor has written the uid and gid maps), set the hostname and loopback up, say `ready`
/// and wait for stdin to close. Single-threaded, as unsharing a user namespace requires.
pub fn child(hostname: &str) -> Result<(), String> {
    let flags = KINDS.iter().fold(CloneFlags::CLONE_NEWUSER, |a, k| a | k.1);
    let mut stdout = std::io::stdout();
    if let Err(e) = unshare(flags) {
        let _ = writeln!(stdout, "unshare: {e}");
        return Err(format!("unshare: {e}"));
    }
    writeln!(stdout, "unshared")
        .and_then(|()| stdout.flush())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() != "mapped" {
        return Err("the supervisor did not map the user namespace".into());
    }
    let set_up = nix::unistd::sethostname(hostname)
        .map_err(|e| format!("sethostname {hostname:?}: {e}"))
        .and_then(|()| loopback_up().map_err(|e| format!("setting lo up: {e}")));
    match &set_up {
        Ok(()) => writeln!(stdout, "ready"),
        Err(e) => writeln!(stdout, "{e}"),
    }
    .and_then(|()| stdout.flush())
    .map_err(|e| e.to_string())?;
    set_up?;
    // Until the supervisor has opened the namespaces.
    let _ = std::io::stdin().lock().read_line(&mut line);
    Ok(())
}

/// `ip link set lo up` as one rtnetlink request: RTM_NEWLINK for ifindex 1 (a new network
/// namespace's loopback) with IFF_UP, acknowledged.
fn loopback_up() -> Result<(), String> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
    };
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST_ACK: u16 = 1 | 4;
    const NLMSG_ERROR: u16 = 2;
    const IFF_UP: u32 = 1;
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(|e| e.to_string())?;
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
