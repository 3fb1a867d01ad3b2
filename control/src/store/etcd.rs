//! The store on etcd v3, for control planes of several replicas.
//!
//! Objects live under a key prefix as JSON; an object's resourceVersion is its etcd mod
//! revision, and the store's revision is etcd's. Every write is one etcd transaction that
//! compares the key's revision (create: absent; update and delete: the expected revision, or
//! present), so replicas never overwrite each other's changes. etcd acknowledges a write once a
//! quorum has it on disk; the reply waits until this replica's watch has applied it, so a client
//! reads its own writes from the replica it wrote to.
//!
//! Each replica keeps every object in memory, as the apiserver's watch cache does: a snapshot at
//! start-up, then etcd's watch from the next revision. Watches of this store's clients are
//! served from that cache; a watch that asks for a revision older than the cache's history is
//! `410 Gone`. The watch follows etcd across member failures (the client balances over every
//! endpoint) by resuming from the last revision it applied; if etcd compacted that revision away,
//! the replica lists again and applies the difference.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType as EtcdEvent, GetOptions, KeyValue, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use serde_json::Value;
use tokio::sync::watch;

use super::memory::{Cache, set_resource_version};
use super::{EventType, Store, StoreError, Stored, Write};

/// Keys per page when listing etcd at start-up.
const PAGE: i64 = 2_000;
/// How long a write waits for this replica's cache to reach it before replying anyway.
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// Pause between attempts to resume etcd's watch, or to send a write again.
const RETRY: Duration = Duration::from_millis(200);
/// How long a write keeps trying while etcd is unavailable (a member lost, a leader elected).
const WRITE_PATIENCE: Duration = Duration::from_secs(4);
/// How often each member's health is probed, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// Revisions etcd keeps behind the newest; the replica compacts older ones every
/// [`COMPACT_INTERVAL`] (kube-apiserver compacts every 5 minutes).
const KEEP_REVISIONS: u64 = 50_000;
const COMPACT_INTERVAL: Duration = Duration::from_secs(300);

/// Where the etcd cluster is and how to reach it.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://…` or `https://…`).
    pub endpoints: Vec<String>,
    /// Every key this cluster writes starts with this.
    pub prefix: String,
    /// PEM CA that signed the members' serving certificates (https endpoints).
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key, for members that require one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: "/nodeless".into(),
            ca: None,
            cert: None,
            key: None,
        }
    }
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd {what}: {e}"))
}

fn options(cfg: &EtcdConfig) -> Result<ConnectOptions, StoreError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    if cfg.ca.is_some() || cfg.cert.is_some() {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| backend(&format!("reading {}", p.display()), e));
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &cfg.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => {
                return Err(StoreError::Backend(
                    "etcd: a client certificate needs its key, and a key its certificate".into(),
                ));
            }
        }
        opts = opts.with_tls(tls);
    }
    Ok(opts)
}

async fn connect(cfg: &EtcdConfig) -> Result<Client, StoreError> {
    if cfg.endpoints.is_empty() {
        return Err(StoreError::Backend("etcd: no endpoints given".into()));
    }
    Client::connect(&cfg.endpoints, Some(options(cfg)?))
        .await
        .map_err(|e| backend(&format!("connecting to {}", cfg.endpoints.join(",")), e))
}

/// Keep only members that answer in the client's rotation. (The client balances requests over
/// its endpoints and would go on sending a share of them to a member that is gone.)
async fn probe_members(client: Client, cfg: EtcdConfig) {
    let Ok(opts) = options(&cfg) else { return };
    let mut probes = Vec::new();
    for ep in &cfg.endpoints {
        match Client::connect([ep.as_str()], Some(opts.clone().with_timeout(PROBE_TIMEOUT))).await {
            Ok(c) => probes.push((ep.clone(), c, true)),
            Err(e) => tracing::warn!(endpoint = %ep, error = %e, "cannot probe this etcd member"),
        }
    }
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        for (ep, probe, in_rotation) in probes.iter_mut() {
            let healthy = matches!(tokio::time::timeout(PROBE_TIMEOUT, probe.status()).await, Ok(Ok(_)));
            if healthy && !*in_rotation {
                if client.add_endpoint(ep.as_str()).await.is_ok() {
                    tracing::info!(endpoint = %ep, "etcd member answers again");
                    *in_rotation = true;
                }
            } else if !healthy && *in_rotation {
                if client.remove_endpoint(ep.as_str()).await.is_ok() {
                    tracing::warn!(endpoint = %ep, "etcd member does not answer; not sending to it");
                    *in_rotation = false;
                }
            }
        }
    }
}

/// Whether etcd did not take a request at all (no member reachable, no leader), so sending it
/// again cannot apply it twice.
fn unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.code() == tonic::Code::Unavailable,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// The write side, shared by every clone of the [`Store`].
pub(super) struct Remote {
    client: Client,
    prefix: String,
    /// The newest revision this replica's cache has applied.
    applied: watch::Receiver<u64>,
    /// Objects this replica wrote, by revision, until its watch brings them in: the watch takes
    /// them as they are rather than parsing etcd's copy again.
    written: Written,
}

type Written = Arc<std::sync::Mutex<std::collections::HashMap<u64, Arc<Value>>>>;

/// Parse an object as etcd holds it, with its resourceVersion.
fn decode(kv: &KeyValue) -> Result<Value, StoreError> {
    let mut obj: Value = serde_json::from_slice(kv.value())
        .map_err(|e| backend(&format!("corrupt object {}", String::from_utf8_lossy(kv.key())), e))?;
    set_resource_version(&mut obj, kv.mod_revision() as u64);
    Ok(obj)
}

/// An object as etcd holds it: without a resourceVersion (the key's mod revision is that).
fn encode(obj: &Value) -> Result<Vec<u8>, StoreError> {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).map_err(|e| StoreError::Backend(e.to_string()))
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Result<u64, StoreError> {
    header
        .map(|h| h.revision() as u64)
        .ok_or_else(|| StoreError::Backend("etcd: a response without a header".into()))
}

/// The current revision of a key from the `or_else` get of a failed transaction.
fn current_of(resp: &etcd_client::TxnResponse) -> Option<u64> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision() as u64),
        _ => None,
    })
}

/// After a resent transaction's compare failed: the revision at which the key holds exactly
/// `bytes`, if it does (the earlier send landed; objects carry a fresh uid or revision, so equal
/// bytes are this write's own).
fn landed(resp: &etcd_client::TxnResponse, resent: bool, bytes: &[u8]) -> Option<u64> {
    if !resent {
        return None;
    }
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .filter(|kv| kv.value() == bytes)
            .map(|kv| kv.mod_revision() as u64),
        _ => None,
    })
}

impl super::RemoteWrites for Remote {
    fn write(&self, write: Write) -> futures::future::BoxFuture<'_, Result<Stored, StoreError>> {
        Box::pin(Remote::write(self, write))
    }
}

impl Remote {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Run a transaction, sending it again while etcd is unavailable. A resend whose compare
    /// fails may be the first send having landed after all: `landed` tells from the failed
    /// transaction's read whether the key now holds exactly what this write put.
    async fn txn(&self, what: &str, txn: Txn) -> Result<(etcd_client::TxnResponse, bool), StoreError> {
        let mut kv = self.client.kv_client();
        let deadline = tokio::time::Instant::now() + WRITE_PATIENCE;
        let mut resent = false;
        loop {
            match kv.txn(txn.clone()).await {
                Ok(resp) => return Ok((resp, resent)),
                Err(e) if unavailable(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "etcd unavailable; sending the {what} again");
                    resent = true;
                    tokio::time::sleep(RETRY).await;
                }
                Err(e) => return Err(backend(what, e)),
            }
        }
    }

    async fn write(&self, write: Write) -> Result<Stored, StoreError> {
        let (stored, rev) = match write {
            Write::Create { key, obj } => {
                let k = self.key(&key);
                let bytes = encode(&obj)?;
                let txn = Txn::new()
                    .when([Compare::version(k.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(k.clone(), bytes.clone(), None)])
                    .or_else([TxnOp::get(k, None)]);
                let (resp, resent) = self.txn("create", txn).await?;
                if !resp.succeeded() {
                    return match landed(&resp, resent, &bytes) {
                        Some(rev) => self.reply(obj, rev).await,
                        None => Err(StoreError::AlreadyExists),
                    };
                }
                (obj, revision_of(resp.header())?)
            }
            Write::Update { key, obj, expect_rev } => {
                let k = self.key(&key);
                let cmp = match expect_rev {
                    Some(r) => Compare::mod_revision(k.clone(), CompareOp::Equal, r as i64),
                    None => Compare::version(k.clone(), CompareOp::Greater, 0),
                };
                let bytes = encode(&obj)?;
                let txn = Txn::new()
                    .when([cmp])
                    .and_then([TxnOp::put(k.clone(), bytes.clone(), None)])
                    .or_else([TxnOp::get(k, None)]);
                let (resp, resent) = self.txn("update", txn).await?;
                if !resp.succeeded() {
                    if let Some(rev) = landed(&resp, resent, &bytes) {
                        return self.reply(obj, rev).await;
                    }
                    return Err(match current_of(&resp) {
                        Some(current) => StoreError::Conflict { current },
                        None => StoreError::NotFound,
                    });
                }
                (obj, revision_of(resp.header())?)
            }
            Write::Delete { key, expect_rev } => {
                let k = self.key(&key);
                let cmp = match expect_rev {
                    Some(r) => Compare::mod_revision(k.clone(), CompareOp::Equal, r as i64),
                    None => Compare::version(k.clone(), CompareOp::Greater, 0),
                };
                let txn = Txn::new()
                    .when([cmp])
                    .and_then([TxnOp::delete(k.clone(), Some(DeleteOptions::new().with_prev_key()))])
                    .or_else([TxnOp::get(k, None)]);
                let (resp, _) = self.txn("delete", txn).await?;
                if !resp.succeeded() {
                    return Err(match current_of(&resp) {
                        Some(current) => StoreError::Conflict { current },
                        None => StoreError::NotFound,
                    });
                }
                let prev = resp.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Delete(d) => d.prev_kvs().first().cloned(),
                    _ => None,
                });
                let Some(prev) = prev else {
                    return Err(StoreError::NotFound);
                };
                (decode(&prev)?, revision_of(resp.header())?)
            }
        };
        self.reply(stored, rev).await
    }

    /// The object as written at `rev`, once this replica's watch has brought the change in
    /// (read-your-writes on this replica).
    async fn reply(&self, mut obj: Value, rev: u64) -> Result<Stored, StoreError> {
        set_resource_version(&mut obj, rev);
        let obj = Arc::new(obj);
        if *self.applied.borrow() < rev {
            self.written.lock().unwrap().insert(rev, obj.clone());
            let mut applied = self.applied.clone();
            let _ = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|a| *a >= rev)).await;
            // Taken by the watch, or (if the watch got there first) still here.
            self.written.lock().unwrap().remove(&rev);
        }
        Ok(Stored { obj, rev })
    }
}

/// Every object under the prefix at one revision (paged), keyed without the prefix.
async fn snapshot(client: &Client, prefix: &str) -> Result<(BTreeMap<String, Stored>, u64), StoreError> {
    let mut kv = client.kv_client();
    let end = prefix_end(prefix);
    let mut objects = BTreeMap::new();
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0i64;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = kv
            .get(from.clone(), Some(opts))
            .await
            .map_err(|e| backend("listing", e))?;
        if revision == 0 {
            revision = revision_of(resp.header())? as i64;
        }
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
            objects.insert(
                key,
                Stored {
                    obj: Arc::new(decode(kv)?),
                    rev: kv.mod_revision() as u64,
                },
            );
        }
        match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok((objects, revision as u64))
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Store {
    /// Open the store on an etcd cluster: load every object, then follow etcd's watch.
    pub async fn open_etcd(cfg: &EtcdConfig) -> Result<Store, StoreError> {
        let client = connect(cfg).await?;
        let (objects, revision) = snapshot(&client, &cfg.prefix).await?;
        let (applied_tx, applied) = watch::channel(revision);
        let written: Written = Arc::default();
        let remote = Arc::new(Remote {
            client: client.clone(),
            prefix: cfg.prefix.clone(),
            applied,
            written: written.clone(),
        });
        // 0.1 ms to about 3 s, as the embedded store's.
        let commits = prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
        );
        let (store, cache) = Store::remote(objects, revision, remote, commits);
        tracing::info!(
            endpoints = %cfg.endpoints.join(","),
            prefix = %cfg.prefix,
            revision,
            "store on etcd"
        );
        tokio::spawn(follow(client.clone(), cfg.prefix.clone(), cache, applied_tx, written));
        tokio::spawn(compact(client.clone()));
        if cfg.endpoints.len() > 1 {
            tokio::spawn(probe_members(client, cfg.clone()));
        }
        Ok(store)
    }
}

/// Apply etcd's changes to the cache for as long as the process runs.
async fn follow(client: Client, prefix: String, cache: Cache, applied: watch::Sender<u64>, written: Written) {
    loop {
        let from = cache.revision() + 1;
        match follow_once(&client, &prefix, &cache, &applied, &written, from).await {
            Ok(Resume::Compacted(at)) => {
                tracing::warn!(
                    from,
                    compacted = at,
                    "etcd compacted past this replica's watch; listing again"
                );
                if let Err(e) = relist(&client, &prefix, &cache, &applied).await {
                    tracing::warn!(error = %e, "listing etcd again failed; retrying");
                }
            }
            Ok(Resume::Ended) => tracing::warn!(from, "etcd's watch ended; resuming"),
            Err(e) => tracing::warn!(error = %e, from, "etcd's watch failed; resuming"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

enum Resume {
    Ended,
    Compacted(i64),
}

async fn follow_once(
    client: &Client,
    prefix: &str,
    cache: &Cache,
    applied: &watch::Sender<u64>,
    written: &Written,
    from: u64,
) -> Result<Resume, StoreError> {
    let opts = WatchOptions::new()
        .with_range(prefix_end(prefix))
        .with_start_revision(from as i64)
        .with_prev_key()
        .with_progress_notify();
    let mut stream = client
        .watch_client()
        .watch(prefix.as_bytes().to_vec(), Some(opts))
        .await
        .map_err(|e| backend("watch", e))?;
    while let Some(resp) = stream.message().await.map_err(|e| backend("watch", e))? {
        if resp.compact_revision() > 0 {
            return Ok(Resume::Compacted(resp.compact_revision()));
        }
        if resp.canceled() {
            return Ok(Resume::Ended);
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let rev = kv.mod_revision() as u64;
            if rev <= cache.revision() {
                continue;
            }
            let key = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
            match ev.event_type() {
                EtcdEvent::Put => {
                    let kind = if kv.create_revision() == kv.mod_revision() {
                        EventType::Added
                    } else {
                        EventType::Modified
                    };
                    let mine = written.lock().unwrap().remove(&rev);
                    match mine.map(Ok).unwrap_or_else(|| decode(kv).map(Arc::new)) {
                        Ok(obj) => cache.apply(kind, key, obj, rev),
                        Err(e) => tracing::error!(error = %e, "skipping an object etcd holds that is not JSON"),
                    }
                }
                EtcdEvent::Delete => {
                    // The deleted object, at the deleting revision.
                    let last = ev
                        .prev_kv()
                        .and_then(|p| decode(p).ok())
                        .or_else(|| cache.get(&key).map(|s| (*s.obj).clone()));
                    let Some(mut obj) = last else {
                        cache.advance(rev);
                        continue;
                    };
                    set_resource_version(&mut obj, rev);
                    cache.apply(EventType::Deleted, key, Arc::new(obj), rev);
                }
            }
        }
        if resp.events().is_empty() {
            // A progress notice: nothing under the prefix changed up to the header's revision.
            if let Some(h) = resp.header() {
                cache.advance(h.revision() as u64);
            }
        }
        applied.send_replace(cache.revision());
    }
    Ok(Resume::Ended)
}

/// After a compaction passed this replica: list again and apply the difference as changes at
/// the new revision, so watches carry on and end in the same state as etcd.
async fn relist(client: &Client, prefix: &str, cache: &Cache, applied: &watch::Sender<u64>) -> Result<(), StoreError> {
    let (objects, revision) = snapshot(client, prefix).await?;
    let before = cache.objects();
    let gone: Vec<(String, Stored)> = before
        .iter()
        .filter(|(k, _)| !objects.contains_key(*k))
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    // Changed objects in the order etcd changed them (each after everything the cache had),
    // then the deletions at the snapshot's revision.
    let mut changed: Vec<(String, Stored, EventType)> = objects
        .into_iter()
        .filter_map(|(key, now)| match before.get(&key) {
            Some(old) if old.rev == now.rev => None,
            Some(_) => Some((key, now, EventType::Modified)),
            None => Some((key, now, EventType::Added)),
        })
        .collect();
    changed.sort_by_key(|(_, s, _)| s.rev);
    for (key, now, kind) in changed {
        cache.apply(kind, key, now.obj, now.rev);
    }
    for (key, old) in gone {
        let mut obj = (*old.obj).clone();
        set_resource_version(&mut obj, revision);
        cache.apply(EventType::Deleted, key, Arc::new(obj), revision);
    }
    cache.forget_before(revision);
    applied.send_replace(cache.revision());
    Ok(())
}

/// Compact etcd's history to the last [`KEEP_REVISIONS`] every [`COMPACT_INTERVAL`]. Several
/// replicas doing it is harmless: a compaction to a revision already compacted is refused.
async fn compact(client: Client) {
    let mut kv = client.kv_client();
    loop {
        tokio::time::sleep(COMPACT_INTERVAL).await;
        let Ok(resp) = kv.get("/", Some(GetOptions::new().with_count_only())).await else {
            continue;
        };
        let Ok(rev) = revision_of(resp.header()) else { continue };
        if rev > KEEP_REVISIONS {
            let below = (rev - KEEP_REVISIONS) as i64;
            if let Err(e) = kv.compact(below, None).await {
                tracing::debug!(error = %e, below, "etcd compaction");
            }
        }
    }
}
