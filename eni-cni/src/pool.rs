//! The IP/ENI pool: a small long-lived service that hands pod addresses to the short-lived
//! plugin over a Unix socket (one JSON request and one JSON reply per line).
//!
//! Addresses come from a [`Provider`]: [`LocalProvider`] assigns them from this host's vSwitch
//! CIDRs; a cloud provider would attach secondary IPs to an ENI, which takes seconds, which is
//! why the pool keeps a warm set: `min_warm` assigned addresses held ready (filled at start and
//! after every allocation), at most `max_warm` idle ones kept, and idle ones beyond `min_warm`
//! handed back after `idle_reclaim`. An allocation is on disk (redb, fsynced) before its
//! connection is answered again, and ADD's last request goes on that connection, so a restarted
//! pool knows every address an ADD returned and never gives one twice.
//!
//! The pool also runs the plugin's verbs for the small `eni-cni` binary (`Request::Exec`, on the
//! threads of [`crate::verbs`]); those verbs reach the pool directly, not through its socket.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

pub use crate::pool_proto::{Allocation, Client, FastPathEntry, Reply, Request, call};
use crate::pool_proto::{Local, Persisting, Registered, persisted};

/// Addresses assigned to the node: address -> unix seconds it went idle (0 while in use).
const ASSIGNED: TableDefinition<'_, u32, u64> = TableDefinition::new("assigned");
/// Allocations: "<network>/<container>/<ifname>" -> JSON `Allocation`.
const ALLOCATIONS: TableDefinition<'_, &str, &str> = TableDefinition::new("allocations");

/// Where the pool gets addresses from.
pub trait Provider: Send + Sync + 'static {
    /// Assign up to `n` addresses not in `taken` to the node.
    fn assign(&self, taken: &BTreeSet<Ipv4Addr>, n: usize) -> Result<Vec<Ipv4Addr>, String>;
    /// Give addresses back.
    fn unassign(&self, ips: &[Ipv4Addr]) -> Result<(), String>;
    /// The subnet (vSwitch CIDR) an assigned address belongs to.
    fn subnet_of(&self, ip: Ipv4Addr) -> Option<Ipv4Net>;
    /// Addresses the provider could still assign.
    fn capacity(&self, taken: &BTreeSet<Ipv4Addr>) -> usize;
}

/// Addresses from this host's CIDRs: every host address but the first (the gateway's).
pub struct LocalProvider {
    cidrs: Vec<Ipv4Net>,
}

impl LocalProvider {
    pub fn new(cidrs: Vec<Ipv4Net>) -> Self {
        LocalProvider { cidrs }
    }

    /// How many addresses the CIDRs hold for pods (every host address but the gateway's).
    pub fn size(&self) -> usize {
        self.cidrs
            .iter()
            .map(|c| {
                let all = 1usize << (32 - u32::from(c.prefix_len()));
                // A /31 or /32 has no network or broadcast address to leave out.
                let hosts = if c.prefix_len() >= 31 { all } else { all - 2 };
                hosts.saturating_sub(1)
            })
            .sum()
    }

    fn usable(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.cidrs.iter().flat_map(|c| c.hosts().skip(1))
    }
}

impl Provider for LocalProvider {
    fn assign(&self, taken: &BTreeSet<Ipv4Addr>, n: usize) -> Result<Vec<Ipv4Addr>, String> {
        Ok(self.usable().filter(|ip| !taken.contains(ip)).take(n).collect())
    }

    fn unassign(&self, _: &[Ipv4Addr]) -> Result<(), String> {
        Ok(())
    }

    fn subnet_of(&self, ip: Ipv4Addr) -> Option<Ipv4Net> {
        self.cidrs.iter().find(|c| c.contains(&ip)).copied()
    }

    fn capacity(&self, taken: &BTreeSet<Ipv4Addr>) -> usize {
        self.usable().filter(|ip| !taken.contains(ip)).take(1024).count()
    }
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub state: PathBuf,
    pub min_warm: usize,
    pub max_warm: usize,
    pub idle_reclaim: Duration,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn key(network: &str, container: &str, ifname: &str) -> String {
    format!("{network}/{container}/{ifname}")
}

/// The pool's use as the node's `/metrics` reads it ([`crate::metrics`]): kept by every commit,
/// so a scrape takes no lock.
#[derive(Debug, Default)]
pub struct PoolGauges {
    /// Addresses allocated to pods' interfaces.
    pub in_use: AtomicUsize,
    /// Addresses assigned to the node and idle, ready for the next pod.
    pub warm: AtomicUsize,
}

struct State {
    db: Database,
    /// Assigned addresses -> when they went idle (0: in use).
    assigned: BTreeMap<Ipv4Addr, u64>,
    allocations: BTreeMap<String, Allocation>,
    /// A commit since the last durable one was not waited onto the disk.
    unsynced: bool,
    gauges: Arc<PoolGauges>,
}

pub struct Pool<P: Provider> {
    cfg: PoolConfig,
    provider: P,
    state: Mutex<State>,
    fastpath: crate::fastpath::FastPath,
    /// Wakes the task that tops the warm set up after allocations.
    refill: tokio::sync::Notify,
    verbs: crate::verbs::Verbs,
    gauges: Arc<PoolGauges>,
}

type DbResult<T> = Result<T, String>;

fn db_err(e: impl std::fmt::Display) -> String {
    format!("pool state: {e}")
}

impl State {
    fn warm(&self) -> usize {
        self.assigned.values().filter(|&&t| t != 0).count()
    }

    fn publish_gauges(&self) {
        self.gauges.in_use.store(self.allocations.len(), Ordering::Relaxed);
        self.gauges.warm.store(self.warm(), Ordering::Relaxed);
    }

    /// Write these address and allocation changes in one transaction, durable when it returns.
    fn commit(
        &mut self,
        assigned: &[(Ipv4Addr, Option<u64>)],
        allocations: &[(&str, Option<&Allocation>)],
    ) -> DbResult<()> {
        self.commit_with(assigned, allocations, redb::Durability::Immediate)
    }

    fn commit_with(
        &mut self,
        assigned: &[(Ipv4Addr, Option<u64>)],
        allocations: &[(&str, Option<&Allocation>)],
        durability: redb::Durability,
    ) -> DbResult<()> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(durability).map_err(db_err)?;
        {
            let mut t = tx.open_table(ASSIGNED).map_err(db_err)?;
            for (ip, v) in assigned {
                match v {
                    Some(v) => t.insert(u32::from(*ip), *v).map_err(db_err)?,
                    None => t.remove(u32::from(*ip)).map_err(db_err)?,
                };
            }
            let mut t = tx.open_table(ALLOCATIONS).map_err(db_err)?;
            for (k, a) in allocations {
                match a {
                    Some(a) => t
                        .insert(*k, serde_json::to_string(a).map_err(db_err)?.as_str())
                        .map_err(db_err)?,
                    None => t.remove(*k).map_err(db_err)?,
                };
            }
        }
        tx.commit().map_err(db_err)?;
        self.unsynced = !matches!(durability, redb::Durability::Immediate);
        for (ip, v) in assigned {
            match v {
                Some(v) => self.assigned.insert(*ip, *v),
                None => self.assigned.remove(ip),
            };
        }
        for (k, a) in allocations {
            match a {
                Some(a) => self.allocations.insert(k.to_string(), (*a).clone()),
                None => self.allocations.remove(*k),
            };
        }
        self.publish_gauges();
        Ok(())
    }
}

impl<P: Provider> Pool<P> {
    /// Open (or create) the pool's state and warm it up.
    pub fn open(cfg: PoolConfig, provider: P) -> anyhow::Result<Arc<Self>> {
        if let Some(dir) = cfg.state.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(&cfg.state)?;
        let mut assigned = BTreeMap::new();
        let mut allocations = BTreeMap::new();
        {
            let tx = db.begin_write()?;
            tx.open_table(ASSIGNED)?;
            tx.open_table(ALLOCATIONS)?;
            tx.commit()?;
            let tx = db.begin_read()?;
            for row in tx.open_table(ASSIGNED)?.iter()? {
                let (ip, since) = row?;
                assigned.insert(Ipv4Addr::from(ip.value()), since.value());
            }
            for row in tx.open_table(ALLOCATIONS)?.iter()? {
                let (k, v) = row?;
                let a: Allocation = serde_json::from_str(v.value())?;
                allocations.insert(k.value().to_string(), a);
            }
        }
        let gauges = Arc::new(PoolGauges {
            in_use: AtomicUsize::new(allocations.len()),
            warm: AtomicUsize::new(assigned.values().filter(|&&t| t != 0).count()),
        });
        let pool = Arc::new(Pool {
            cfg,
            provider,
            state: Mutex::new(State {
                db,
                assigned,
                allocations,
                unsynced: false,
                gauges: gauges.clone(),
            }),
            gauges,
            fastpath: Default::default(),
            refill: tokio::sync::Notify::new(),
            verbs: crate::verbs::Verbs::start(),
        });
        Ok(pool)
    }

    /// The pool's use, as every commit leaves it.
    pub fn gauges(&self) -> Arc<PoolGauges> {
        self.gauges.clone()
    }

    /// Assign addresses until `min_warm` are idle.
    pub async fn fill(&self) -> Result<(), String> {
        let mut st = self.state.lock().await;
        self.fill_locked(&mut st, redb::Durability::Immediate)
    }

    /// Top the warm set up after allocations. The commit is not waited onto the disk: it holds
    /// the state, and an fsync here (~1.3 ms) made the ADD under way wait for its publish. The
    /// next allocation's durable commit carries it; a crash before that forgets idle addresses
    /// only, which the local provider hands out again (a cloud provider would reconcile them
    /// with the ENI's list at start).
    async fn top_up(&self) -> Result<(), String> {
        let mut st = self.state.lock().await;
        self.fill_locked(&mut st, redb::Durability::None)
    }

    fn fill_locked(&self, st: &mut State, durability: redb::Durability) -> Result<(), String> {
        let want = self.cfg.min_warm.saturating_sub(st.warm());
        if want == 0 {
            return Ok(());
        }
        let taken: BTreeSet<Ipv4Addr> = st.assigned.keys().copied().collect();
        let new = self.provider.assign(&taken, want)?;
        let t = now().max(1);
        let changes: Vec<_> = new.iter().map(|ip| (*ip, Some(t))).collect();
        st.commit_with(&changes, &[], durability)
    }

    /// After an address went out: top the warm set up again, off the ADD's path (a failure costs
    /// a later ADD a wait), and start putting the allocation on disk. The ADD asking goes on
    /// with its interfaces meanwhile; its last request (a publish, or Persisted) is answered
    /// only once this is done and the address would survive a restart.
    fn after_allocation(self: &Arc<Self>) -> Persisting {
        self.refill.notify_one();
        self.persist()
    }

    /// Start making every commit so far durable (one fsync covers all the ones not waited for),
    /// on a blocking thread: the fsync takes 1-2 ms here, which a runtime worker would spend
    /// idle while the ADD waiting for it has netlink work to do.
    fn persist(self: &Arc<Self>) -> Persisting {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut st = pool.state.blocking_lock();
            if st.unsynced { st.commit(&[], &[]) } else { Ok(()) }
        })
    }

    /// Hand back idle addresses: beyond `max_warm` at once, beyond `min_warm` once idle for
    /// `idle_reclaim`.
    pub async fn reclaim(&self) -> Result<usize, String> {
        let mut st = self.state.lock().await;
        self.reclaim_locked(&mut st)
    }

    fn reclaim_locked(&self, st: &mut State) -> Result<usize, String> {
        let mut idle: Vec<(u64, Ipv4Addr)> = st
            .assigned
            .iter()
            .filter(|(_, t)| **t != 0)
            .map(|(ip, t)| (*t, *ip))
            .collect();
        // Newest idle first: the ones idle longest are handed out next, so they stay.
        idle.sort_by(|a, b| b.cmp(a));
        let limit = now().saturating_sub(self.cfg.idle_reclaim.as_secs());
        let mut give_back = Vec::new();
        let mut left = idle.len();
        for (since, ip) in idle {
            if left > self.cfg.max_warm || (left > self.cfg.min_warm && since <= limit) {
                give_back.push(ip);
                left -= 1;
            }
        }
        if give_back.is_empty() {
            return Ok(0);
        }
        self.provider.unassign(&give_back)?;
        let changes: Vec<_> = give_back.iter().map(|ip| (*ip, None)).collect();
        st.commit(&changes, &[])?;
        Ok(give_back.len())
    }

    pub async fn handle(self: &Arc<Self>, req: Request) -> Reply {
        let req = match req {
            Request::Exec { env, stdin } => {
                return Reply {
                    plugin: Some(self.verbs.run(env, stdin).await),
                    ..Reply::default()
                };
            }
            req => req,
        };
        // The fast path's requests do not touch the addresses.
        let outcome = match &req {
            Request::Publish {
                network,
                container,
                ifname,
                host_ifname,
                ip,
                ifindex,
                mac,
                socket_acceleration,
                walls,
                sandbox,
            } => {
                // Kept with the allocation first, so a restarted pool finishes the job.
                let mut st = self.state.lock().await;
                let k = key(network, container, ifname);
                let kept = match st.allocations.get(&k).cloned() {
                    Some(mut a) if a.ip == *ip => {
                        a.fastpath = Some(FastPathEntry {
                            host_ifname: host_ifname.clone(),
                            ifindex: *ifindex,
                            mac: *mac,
                            socket_acceleration: *socket_acceleration,
                            walls: *walls,
                            sandbox: *sandbox,
                        });
                        // Not waited onto disk (the next durable commit takes it along): losing
                        // it in a crash only leaves the pod on its routed path.
                        st.commit_with(&[], &[(&k, Some(&a))], redb::Durability::None)
                    }
                    _ => Err(format!("no allocation of {ip} for {k}")),
                };
                drop(st);
                if kept.is_ok() {
                    self.fastpath.publish(
                        network,
                        host_ifname,
                        *ip,
                        crate::bpf::PodEndpoint {
                            ifindex: *ifindex,
                            mac: *mac,
                            sandbox: *sandbox,
                        },
                        *socket_acceleration,
                        *walls,
                    );
                }
                Some(kept)
            }
            Request::Withdraw {
                network,
                host_ifname,
                ip,
            } => {
                // Without an address: the one published for that host end, if any.
                let ip = match ip {
                    Some(ip) => Some(*ip),
                    None => {
                        let st = self.state.lock().await;
                        let mine = st.allocations.values().filter(|a| a.network == *network);
                        // The recorded entry, else the name the plugin derives (the entry is
                        // written without waiting on the disk and may be lost in a crash).
                        mine.clone()
                            .find(|a| a.fastpath.as_ref().is_some_and(|f| f.host_ifname == *host_ifname))
                            .or_else(|| {
                                mine.clone().find(|a| {
                                    crate::datapath::host_ifname(&a.network, &a.container, &a.ifname) == *host_ifname
                                })
                            })
                            .map(|a| a.ip)
                    }
                };
                Some(self.fastpath.withdraw(network, host_ifname, ip).await)
            }
            Request::Sync { network } => {
                self.fastpath.sync(network).await;
                Some(Ok(()))
            }
            Request::Persisted => Some(persisted(self.persist()).await),
            _ => None,
        };
        if let Some(r) = outcome {
            return Reply {
                error: r.err(),
                ..Reply::default()
            };
        }
        let status = matches!(req, Request::Status);
        let mut st = self.state.lock().await;
        let mut reply = match self.handle_locked(&mut st, req) {
            Ok(r) => r,
            Err(e) => Reply {
                error: Some(e),
                ..Reply::default()
            },
        };
        reply.in_use = st.allocations.len();
        reply.warm = st.warm();
        // What the provider could still give costs a walk of the CIDRs: only STATUS and
        // failures need it, not every ADD.
        if status || reply.error.is_some() {
            let taken: BTreeSet<Ipv4Addr> = st.assigned.keys().copied().collect();
            reply.free = self.provider.capacity(&taken);
        }
        reply
    }

    fn handle_locked(&self, st: &mut State, req: Request) -> Result<Reply, String> {
        match req {
            Request::Alloc {
                network,
                container,
                ifname,
            } => {
                let k = key(&network, &container, &ifname);
                if let Some(a) = st.allocations.get(&k) {
                    return Ok(Reply {
                        allocation: Some(a.clone()),
                        existing: true,
                        ..Reply::default()
                    });
                }
                // The address idle longest, else a new one from the provider.
                let warm = st
                    .assigned
                    .iter()
                    .filter(|(_, t)| **t != 0)
                    .min_by_key(|(ip, t)| (**t, **ip))
                    .map(|(ip, _)| *ip);
                let ip = match warm {
                    Some(ip) => ip,
                    None => {
                        let taken: BTreeSet<Ipv4Addr> = st.assigned.keys().copied().collect();
                        self.provider
                            .assign(&taken, 1)?
                            .into_iter()
                            .next()
                            .ok_or("no free addresses left in the pool's CIDRs")?
                    }
                };
                let subnet = self
                    .provider
                    .subnet_of(ip)
                    .ok_or_else(|| format!("{ip} is in none of the pool's CIDRs"))?;
                let a = Allocation {
                    network,
                    container,
                    ifname,
                    ip,
                    subnet,
                    fastpath: None,
                };
                // Not waited onto the disk here: the reply goes at once, and the connection
                // waits for the disk before it reads its next request (`connection`).
                st.commit_with(&[(ip, Some(0))], &[(&k, Some(&a))], redb::Durability::None)?;
                // The warm set is topped up again after the reply has gone (`connection`).
                Ok(Reply {
                    allocation: Some(a),
                    ..Reply::default()
                })
            }
            Request::Release {
                network,
                container,
                ifname,
            } => {
                let k = key(&network, &container, &ifname);
                let Some(a) = st.allocations.get(&k).cloned() else {
                    return Ok(Reply::default());
                };
                st.commit(&[(a.ip, Some(now().max(1)))], &[(&k, None)])?;
                self.reclaim_locked(st)?;
                Ok(Reply {
                    released: vec![a],
                    ..Reply::default()
                })
            }
            Request::Get {
                network,
                container,
                ifname,
            } => Ok(Reply {
                allocation: st.allocations.get(&key(&network, &container, &ifname)).cloned(),
                ..Reply::default()
            }),
            Request::Gc { network, keep } => {
                let keep: BTreeSet<String> = keep.iter().map(|(c, i)| key(&network, c, i)).collect();
                let gone: Vec<(String, Allocation)> = st
                    .allocations
                    .iter()
                    .filter(|(k, a)| a.network == network && !keep.contains(*k))
                    .map(|(k, a)| (k.clone(), a.clone()))
                    .collect();
                if gone.is_empty() {
                    return Ok(Reply::default());
                }
                let t = now().max(1);
                let ips: Vec<_> = gone.iter().map(|(_, a)| (a.ip, Some(t))).collect();
                let allocs: Vec<(&str, Option<&Allocation>)> = gone.iter().map(|(k, _)| (k.as_str(), None)).collect();
                st.commit(&ips, &allocs)?;
                self.reclaim_locked(st)?;
                Ok(Reply {
                    released: gone.into_iter().map(|(_, a)| a).collect(),
                    ..Reply::default()
                })
            }
            Request::Status => Ok(Reply::default()),
            Request::Publish { .. }
            | Request::Withdraw { .. }
            | Request::Sync { .. }
            | Request::Persisted
            | Request::Exec { .. } => Ok(Reply::default()),
        }
    }

    /// Publish again every pod whose fast-path link is not pinned (the pool went away between
    /// an ADD and its attach, or the pins were lost with a reboot); links that are gone are
    /// reported and skipped.
    async fn republish(&self) {
        let st = self.state.lock().await;
        for a in st.allocations.values() {
            let Some(f) = &a.fastpath else { continue };
            let pins = crate::bpf::Pins::for_network(&a.network);
            if !pins.has_link(&f.host_ifname) {
                self.fastpath.publish(
                    &a.network,
                    &f.host_ifname,
                    a.ip,
                    crate::bpf::PodEndpoint {
                        ifindex: f.ifindex,
                        mac: f.mac,
                        sandbox: f.sandbox,
                    },
                    f.socket_acceleration,
                    f.walls,
                );
            }
        }
    }

    /// Serve on a Unix socket until the task is dropped; reclaims idle addresses meanwhile.
    /// The socket hands out addresses and runs the plugin's verbs as root, so it is 0600 (its
    /// directory 0700 when the pool makes it) and a peer of another uid than the pool's own
    /// (SO_PEERCRED) is hung up on unread.
    pub async fn serve(self: Arc<Self>, socket: &Path) -> anyhow::Result<()> {
        if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
        }
        let mut refused = RefusedPeers::default();
        let _local = Registered::new(socket, self.clone());
        if let Err(e) = self.fill().await {
            tracing::warn!(error = %e, "warming the pool");
        }
        self.republish().await;
        let reclaimer = {
            let pool = self.clone();
            let every = (self.cfg.idle_reclaim / 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = pool.reclaim().await {
                        tracing::warn!(error = %e, "reclaiming idle addresses");
                    }
                }
            })
        };
        // The warm set is topped up off the ADDs' path: allocations wake this task, and a burst
        // of them is one fill.
        let filler = {
            let pool = self.clone();
            tokio::spawn(async move {
                loop {
                    pool.refill.notified().await;
                    if let Err(e) = pool.top_up().await {
                        tracing::warn!(error = %e, "refilling the warm pool");
                    }
                }
            })
        };
        let result = loop {
            let (conn, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => break Err(e.into()),
            };
            let peer = conn.peer_cred().map(|c| c.uid());
            if !matches!(peer, Ok(uid) if peer_allowed(uid, nix::unistd::geteuid().as_raw())) {
                refused.refused(peer.ok());
                continue;
            }
            let pool = self.clone();
            tokio::spawn(async move {
                if let Err(e) = pool.connection(conn).await {
                    tracing::debug!(error = %e, "pool connection");
                }
            });
        };
        reclaimer.abort();
        filler.abort();
        result
    }

    async fn connection(self: &Arc<Self>, conn: UnixStream) -> std::io::Result<()> {
        let (read, mut write) = conn.into_split();
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await? {
            let (reply, allocated) = match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    let alloc = matches!(req, Request::Alloc { .. });
                    (self.handle(req).await, alloc)
                }
                Err(e) => (
                    Reply {
                        error: Some(format!("bad request: {e}")),
                        ..Reply::default()
                    },
                    false,
                ),
            };
            let mut out = serde_json::to_vec(&reply).unwrap_or_default();
            out.push(b'\n');
            write.write_all(&out).await?;
            if allocated {
                // If the disk fails, the connection ends and so does the ADD.
                persisted(self.after_allocation())
                    .await
                    .map_err(std::io::Error::other)?;
            }
        }
        Ok(())
    }
}

/// Whether a process of `peer_uid` may use the pool's socket: only the pool's own user may.
fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid
}

/// Peers hung up on, logged at most every ten seconds (a loop of connections must not flood
/// the log).
#[derive(Default)]
struct RefusedPeers {
    count: u64,
    logged: Option<std::time::Instant>,
}

impl RefusedPeers {
    fn refused(&mut self, uid: Option<u32>) {
        self.count += 1;
        if self.logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            tracing::warn!(
                ?uid,
                refused = self.count,
                "IP pool: refused a connection from another uid than the pool's own"
            );
            self.logged = Some(std::time::Instant::now());
        }
    }
}

impl<P: Provider> Local for Pool<P> {
    fn call(self: Arc<Self>, req: Request) -> Pin<Box<dyn Future<Output = Reply> + Send>> {
        Box::pin(async move { Pool::handle(&self, req).await })
    }

    fn after_allocation(self: Arc<Self>) -> Persisting {
        Pool::after_allocation(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool_proto::{Link, local};

    fn pool(dir: &Path, min: usize, max: usize) -> Arc<Pool<LocalProvider>> {
        let cfg = PoolConfig {
            state: dir.join("pool.redb"),
            min_warm: min,
            max_warm: max,
            idle_reclaim: Duration::from_secs(3600),
        };
        Pool::open(cfg, LocalProvider::new(vec!["10.9.0.0/29".parse().unwrap()])).unwrap()
    }

    async fn serve(p: Arc<Pool<LocalProvider>>, socket: PathBuf) {
        let _ = p.serve(&socket).await;
    }

    fn alloc(c: &str) -> Request {
        Request::Alloc {
            network: "n".into(),
            container: c.into(),
            ifname: "eth0".into(),
        }
    }

    #[tokio::test]
    async fn addresses_are_warm_unique_persisted_and_reused_last() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(dir.path(), 2, 3);
        p.fill().await.unwrap();
        let r = p.handle(Request::Status).await;
        assert_eq!((r.warm, r.in_use), (2, 0));
        // 10.9.0.0/29: .1 is the gateway, .2-.6 are handed out, .7 is broadcast.
        let a = p.handle(alloc("a")).await.allocation.unwrap();
        assert_eq!(
            (a.ip, a.subnet),
            ("10.9.0.2".parse().unwrap(), "10.9.0.0/29".parse().unwrap())
        );
        assert_eq!(
            p.handle(alloc("a")).await.allocation.unwrap(),
            a,
            "ADD again: the same address"
        );
        let mut seen = BTreeSet::from([a.ip]);
        for c in ["b", "c", "d", "e"] {
            let r = p.handle(alloc(c)).await;
            assert!(seen.insert(r.allocation.unwrap().ip), "never handed out twice");
        }
        let full = p.handle(alloc("f")).await;
        assert!(full.error.unwrap().contains("no free addresses"));
        assert_eq!(full.free, 0);
        // Released, the address goes back to the warm set, and is handed out after older idle ones.
        let rel = p
            .handle(Request::Release {
                network: "n".into(),
                container: "b".into(),
                ifname: "eth0".into(),
            })
            .await;
        assert_eq!(rel.released.len(), 1);
        assert!(
            p.handle(Request::Release {
                network: "n".into(),
                container: "b".into(),
                ifname: "eth0".into()
            })
            .await
            .error
            .is_none(),
            "release is idempotent"
        );
        // A restart keeps everything.
        drop(p);
        let p = pool(dir.path(), 2, 3);
        let r = p
            .handle(Request::Get {
                network: "n".into(),
                container: "a".into(),
                ifname: "eth0".into(),
            })
            .await;
        assert_eq!(r.allocation.unwrap(), a);
        assert_eq!((r.in_use, r.warm), (4, 1));
        // GC keeps what is listed, releases the rest of the network.
        let gc = p
            .handle(Request::Gc {
                network: "n".into(),
                keep: vec![("a".into(), "eth0".into())],
            })
            .await;
        assert_eq!(gc.released.len(), 3);
        assert_eq!(p.handle(Request::Status).await.in_use, 1);
    }

    #[tokio::test]
    async fn idle_addresses_beyond_max_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(dir.path(), 0, 1);
        for c in ["a", "b", "c"] {
            p.handle(alloc(c)).await;
        }
        let gc = p
            .handle(Request::Gc {
                network: "n".into(),
                keep: vec![],
            })
            .await;
        assert_eq!(gc.released.len(), 3);
        assert_eq!(gc.warm, 1, "at most max_warm idle addresses stay assigned");
    }

    /// An allocation is answered before it is on disk, and the connection's next request waits
    /// for the disk: over the socket, and through the link a pool's own process uses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_request_on_a_connection_finds_the_allocation_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(dir.path(), 0, 1);
        let a = p.handle(alloc("a")).await.allocation.unwrap();
        assert!(p.state.lock().await.unsynced, "answered before the fsync");
        assert!(p.handle(Request::Persisted).await.error.is_none());
        assert!(!p.state.lock().await.unsynced, "Persisted waits for the disk");

        let socket = dir.path().join("pool.sock");
        let serving = tokio::spawn(serve(p.clone(), socket.clone()));
        while !socket.exists() || local(&socket).is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // In this process the client takes the pool directly.
        let mut c = Client::connect(&socket).await.unwrap();
        assert!(matches!(c.0, Link::Local { .. }));
        let b = c.call(&alloc("b")).await.unwrap().allocation.unwrap();
        assert_ne!(a.ip, b.ip);
        c.call(&Request::Status).await.unwrap();
        assert!(
            !p.state.lock().await.unsynced,
            "the request after an allocation came after the fsync"
        );
        // Over the socket, the same.
        let stream = UnixStream::connect(&socket).await.unwrap();
        let (read, write) = stream.into_split();
        let mut c = Client(Link::Socket {
            read: BufReader::new(read),
            write,
        });
        let d = c.call(&alloc("d")).await.unwrap().allocation.unwrap();
        assert!(d.ip != a.ip && d.ip != b.ip);
        c.call(&Request::Status).await.unwrap();
        assert!(
            !p.state.lock().await.unsynced,
            "the request after an allocation came after the fsync"
        );
        serving.abort();
        let _ = serving.await;
        assert!(
            local(&socket).is_none(),
            "a pool that stopped serving is not reached directly"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_socket_is_its_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = pool(dir.path(), 0, 1);
        let socket = dir.path().join("run/pool.sock");
        let serving = tokio::spawn(serve(p.clone(), socket.clone()));
        while !socket.exists() || local(&socket).is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&socket), 0o600);
        assert_eq!(mode(&dir.path().join("run")), 0o700);
        // A peer of the pool's own uid is served.
        let (read, write) = UnixStream::connect(&socket).await.unwrap().into_split();
        let mut c = Client(Link::Socket {
            read: BufReader::new(read),
            write,
        });
        assert!(c.call(&Request::Status).await.unwrap().error.is_none());
        assert!(peer_allowed(7, 7));
        assert!(!peer_allowed(65534, 0));
        serving.abort();
        let _ = serving.await;
    }
}
