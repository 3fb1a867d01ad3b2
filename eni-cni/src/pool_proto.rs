//! The pool's protocol: what the plugin and the pool say to each other (one JSON [`Request`]
//! and one JSON [`Reply`] per line on the pool's Unix socket), and the [`Client`] that says it,
//! over the socket or, when the pool serves in this process, to the pool itself. Both sides
//! import this; it knows nothing of either.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Weak};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub network: String,
    pub container: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    /// The vSwitch CIDR the address belongs to.
    pub subnet: Ipv4Net,
    /// The eBPF fast path's entry for the pod, kept so a restarted pool can finish attaching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastpath: Option<FastPathEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastPathEntry {
    pub host_ifname: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    #[serde(default)]
    pub socket_acceleration: bool,
    /// The network's walls as the pod's ADD read them (the strict default for entries
    /// recorded before there were any).
    #[serde(default)]
    pub walls: crate::bpf::Walls,
    /// The pod's sandbox ([`crate::bpf::sandbox_of`]; 0, unknown, for entries recorded before
    /// there were any: the pod's source then passes on its own host end only).
    #[serde(default)]
    pub sandbox: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Alloc {
        network: String,
        container: String,
        ifname: String,
    },
    Release {
        network: String,
        container: String,
        ifname: String,
    },
    Get {
        network: String,
        container: String,
        ifname: String,
    },
    /// Release every allocation of `network` but these (container, ifname) pairs.
    Gc {
        network: String,
        keep: Vec<(String, String)>,
    },
    Status,
    /// Attach the eBPF fast path to a pod's host end and publish the pod (done after the reply).
    Publish {
        network: String,
        container: String,
        ifname: String,
        host_ifname: String,
        ip: Ipv4Addr,
        ifindex: u32,
        mac: [u8; 6],
        /// Whether the network's datapath, when this pod loads it, also accelerates sockets.
        #[serde(default)]
        socket_acceleration: bool,
        /// What the network's pods may reach (the strict default when not sent).
        #[serde(default)]
        walls: crate::bpf::Walls,
        /// The pod's sandbox, the same for all its interfaces (0, unknown, when not sent).
        #[serde(default)]
        sandbox: u32,
    },
    /// Undo a publish (replied when done, after every earlier publish); without `ip`, the
    /// address published for `host_ifname`.
    Withdraw {
        network: String,
        host_ifname: String,
        ip: Option<Ipv4Addr>,
    },
    /// Replied when every earlier publish and withdrawal is done.
    Sync {
        network: String,
    },
    /// Replied once every allocation made so far is on disk. (A connection that handed out an
    /// address waits for the disk before it reads its next request, so any later request on it
    /// says the same; ADD asks this when it has nothing else to ask.)
    Persisted,
    /// Run a plugin invocation (its CNI_* variables and its standard input) in this process
    /// and answer with what the plugin would have printed ([`crate::plugin::forward`]).
    Exec {
        env: HashMap<String, String>,
        stdin: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<Allocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub in_use: usize,
    #[serde(default)]
    pub warm: usize,
    /// Addresses the provider could still assign (capped).
    #[serde(default)]
    pub free: usize,
    /// Alloc: the container/interface already had this address (an ADD repeated).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
    /// Exec: the plugin's exit code and standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<(i32, String)>,
}

/// An fsync under way ([`crate::pool::Pool::persist`]).
pub(crate) type Persisting = tokio::task::JoinHandle<Result<(), String>>;

/// Wait for an fsync under way.
pub(crate) async fn persisted(p: Persisting) -> Result<(), String> {
    p.await.map_err(|e| format!("pool state: {e}"))?
}

/// A pool as the [`Client`]s of its own process reach it: the verbs a pool runs for the plugin
/// (`Request::Exec`) ask it for addresses without a socket in between.
pub(crate) trait Local: Send + Sync {
    fn call(self: Arc<Self>, req: Request) -> Pin<Box<dyn Future<Output = Reply> + Send>>;
    /// [`crate::pool::Pool::after_allocation`].
    fn after_allocation(self: Arc<Self>) -> Persisting;
}

/// The pools this process serves, by socket path.
static LOCAL: std::sync::Mutex<Vec<(PathBuf, Weak<dyn Local>)>> = std::sync::Mutex::new(Vec::new());

/// A pool's entry in [`LOCAL`], for as long as it serves.
pub(crate) struct Registered(PathBuf);

impl Registered {
    pub(crate) fn new(socket: &Path, pool: Arc<dyn Local>) -> Registered {
        let mut all = LOCAL.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(path, _)| path != socket);
        all.push((socket.to_path_buf(), Arc::downgrade(&pool)));
        Registered(socket.to_path_buf())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        LOCAL
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(path, _)| *path != self.0);
    }
}

pub(crate) fn local(socket: &Path) -> Option<Arc<dyn Local>> {
    LOCAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(path, _)| path == socket)
        .and_then(|(_, pool)| pool.upgrade())
}

/// One request to the pool at `socket`.
pub async fn call(socket: &Path, req: &Request) -> std::io::Result<Reply> {
    Client::connect(socket).await?.call(req).await
}

/// A connection to the pool, for several requests in turn: its socket, or the pool itself when
/// it serves in this process.
pub struct Client(pub(crate) Link);

pub(crate) enum Link {
    Socket {
        read: BufReader<tokio::net::unix::OwnedReadHalf>,
        write: tokio::net::unix::OwnedWriteHalf,
    },
    /// Replies wait in `replies`; after an allocation, `persisting` waits for the disk, and the
    /// next request waits for it (what a socket connection does, `Pool::connection`).
    Local {
        pool: Arc<dyn Local>,
        replies: VecDeque<Reply>,
        persisting: Option<Persisting>,
    },
}

impl Client {
    pub async fn connect(socket: &Path) -> std::io::Result<Client> {
        if let Some(pool) = local(socket) {
            return Ok(Client(Link::Local {
                pool,
                replies: VecDeque::new(),
                persisting: None,
            }));
        }
        let (read, write) = UnixStream::connect(socket).await?.into_split();
        Ok(Client(Link::Socket {
            read: BufReader::new(read),
            write,
        }))
    }

    pub async fn call(&mut self, req: &Request) -> std::io::Result<Reply> {
        self.send(req).await?;
        self.receive().await
    }

    /// Send a request; [`Client::receive`] reads its reply.
    pub async fn send(&mut self, req: &Request) -> std::io::Result<()> {
        match &mut self.0 {
            Link::Socket { write, .. } => {
                let mut line = serde_json::to_vec(req)?;
                line.push(b'\n');
                write.write_all(&line).await
            }
            Link::Local {
                pool,
                replies,
                persisting,
            } => {
                if let Some(p) = persisting.take() {
                    persisted(p).await.map_err(std::io::Error::other)?;
                }
                let alloc = matches!(req, Request::Alloc { .. });
                let reply = pool.clone().call(req.clone()).await;
                if alloc {
                    *persisting = Some(pool.clone().after_allocation());
                }
                replies.push_back(reply);
                Ok(())
            }
        }
    }

    /// The reply to the oldest request sent and not yet answered.
    pub async fn receive(&mut self) -> std::io::Result<Reply> {
        let read = match &mut self.0 {
            Link::Socket { read, .. } => read,
            Link::Local { replies, .. } => {
                return replies.pop_front().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "no request waits for a reply")
                });
            }
        };
        let mut reply = String::new();
        if read.read_line(&mut reply).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the pool closed the connection",
            ));
        }
        serde_json::from_str(&reply).map_err(std::io::Error::other)
    }
}
