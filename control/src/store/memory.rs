//! The in-memory index, the change history and the group-committing writer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{Backend, Event, EventType, Mutation, StoreError, Stored, Write};

/// Events kept in memory for watches that start from an older revision.
const HISTORY: usize = 50_000;
/// Largest batch one durable transaction takes.
const MAX_BATCH: usize = 2_048;
/// Compact the persisted change log every this many revisions.
const COMPACT_EVERY: u64 = 10_000;

struct State {
    objects: BTreeMap<String, Stored>,
    history: VecDeque<Arc<Event>>,
    revision: u64,
    /// A watch may resume from any revision >= this one.
    oldest_resumable: u64,
    /// How many events `history` keeps.
    history_limit: usize,
}

struct Request {
    write: Write,
    reply: oneshot::Sender<Result<Stored, StoreError>>,
}

/// Where writes go: the embedded backend's writer thread, or elsewhere (etcd).
#[derive(Clone)]
enum Sink {
    Local(mpsc::Sender<Request>),
    Remote(Arc<dyn super::RemoteWrites>),
}

/// The store handle. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    state: Arc<RwLock<State>>,
    events: broadcast::Sender<Arc<Event>>,
    sink: Sink,
    /// How long each group commit of the backend took (seconds).
    commits: prometheus_client::metrics::histogram::Histogram,
}

pub(super) fn set_resource_version(obj: &mut Value, rev: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

impl Store {
    /// Load the backend's contents and start the writer thread.
    pub fn open(backend: impl Backend) -> Result<Self, StoreError> {
        Self::open_with_history(backend, HISTORY)
    }

    /// As [`Store::open`], keeping `history_limit` events for resuming watches.
    pub fn open_with_history(mut backend: impl Backend, history_limit: usize) -> Result<Self, StoreError> {
        let loaded = backend.load()?;
        let mut objects = BTreeMap::new();
        for (key, bytes, rev) in loaded.objects {
            let obj: Value = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Backend(format!("corrupt object {key}: {e}")))?;
            objects.insert(
                key,
                Stored {
                    obj: Arc::new(obj),
                    rev,
                },
            );
        }
        let mut history = VecDeque::with_capacity(loaded.events.len());
        for (rev, kind, key, bytes) in loaded.events {
            let obj: Value = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Backend(format!("corrupt change {rev}: {e}")))?;
            history.push_back(Arc::new(Event {
                rev,
                kind,
                key,
                obj: Arc::new(obj),
                prev: None,
            }));
        }
        let oldest_resumable = history.front().map(|e| e.rev - 1).unwrap_or(loaded.revision);
        let state = Arc::new(RwLock::new(State {
            objects,
            history,
            revision: loaded.revision,
            oldest_resumable,
            history_limit: history_limit.max(1),
        }));
        let (events, _) = broadcast::channel(16_384);
        let (writes, rx) = mpsc::channel(8_192);
        // 0.1 ms to about 3 s.
        let commits = prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
        );
        let writer = Writer {
            state: state.clone(),
            events: events.clone(),
            backend: Box::new(backend),
            commits: commits.clone(),
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            state,
            events,
            sink: Sink::Local(writes),
            commits,
        })
    }

    /// A store whose objects live in etcd: `objects` is a snapshot at `revision`, and the
    /// returned [`Cache`] is what the etcd watch applies later changes to.
    pub(super) fn remote(
        objects: BTreeMap<String, Stored>,
        revision: u64,
        remote: Arc<dyn super::RemoteWrites>,
        commits: prometheus_client::metrics::histogram::Histogram,
    ) -> (Self, Cache) {
        let state = Arc::new(RwLock::new(State {
            objects,
            history: VecDeque::new(),
            revision,
            oldest_resumable: revision,
            history_limit: HISTORY,
        }));
        let (events, _) = broadcast::channel(16_384);
        let cache = Cache {
            state: state.clone(),
            events: events.clone(),
        };
        let store = Self {
            state,
            events,
            sink: Sink::Remote(remote),
            commits,
        };
        (store, cache)
    }

    /// The histogram of the backend's group commits (for `/metrics`).
    pub fn commit_histogram(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.commits.clone()
    }

    /// Open the embedded store in `dir`.
    pub fn open_embedded(dir: &std::path::Path) -> Result<Self, StoreError> {
        // Every object, Secrets included, is in there: the directory is the control plane's alone.
        crate::private::dir(dir).map_err(|e| StoreError::Backend(format!("{}: {e}", dir.display())))?;
        Self::open(super::redb::RedbBackend::open(&dir.join("objects.redb"))?)
    }

    /// Commit one write durably; returns the object as stored (absent fields filled).
    pub async fn write(&self, write: Write) -> Result<Stored, StoreError> {
        let writes = match &self.sink {
            Sink::Local(w) => w,
            Sink::Remote(remote) => {
                let started = std::time::Instant::now();
                let done = remote.write(write).await;
                self.commits.observe(started.elapsed().as_secs_f64());
                return done;
            }
        };
        let (reply, rx) = oneshot::channel();
        writes
            .send(Request { write, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub fn get(&self, key: &str) -> Option<Stored> {
        self.state.read().unwrap().objects.get(key).cloned()
    }

    pub fn revision(&self) -> u64 {
        self.state.read().unwrap().revision
    }

    /// Objects under `prefix`, in key order, starting after `after`, that pass `filter`, at most
    /// `limit` (0 = all). Returns them with the current revision and the last key when more remain.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        filter: &dyn Fn(&Value) -> bool,
    ) -> (Vec<Stored>, u64, Option<String>) {
        use std::ops::Bound;
        let state = self.state.read().unwrap();
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        let mut out: Vec<(&String, &Stored)> = Vec::new();
        let mut has_more = false;
        for (key, stored) in state.objects.range((start, Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            if !filter(&stored.obj) {
                continue;
            }
            if limit > 0 && out.len() == limit {
                has_more = true;
                break;
            }
            out.push((key, stored));
        }
        let next = if has_more {
            out.last().map(|(k, _)| (*k).clone())
        } else {
            None
        };
        (out.into_iter().map(|(_, s)| s.clone()).collect(), state.revision, next)
    }

    /// Watch keys under `prefix` for changes after revision `from`.
    pub fn watch(&self, prefix: &str, from: u64) -> Result<Watch, StoreError> {
        let state = self.state.read().unwrap();
        if from < state.oldest_resumable {
            return Err(StoreError::Gone {
                requested: from,
                oldest: state.oldest_resumable,
            });
        }
        let backlog: VecDeque<Arc<Event>> = if from < state.revision {
            let start = state.history.partition_point(|e| e.rev <= from);
            state
                .history
                .range(start..)
                .filter(|e| e.key.starts_with(prefix))
                .cloned()
                .collect()
        } else {
            VecDeque::new()
        };
        let rx = self.events.subscribe();
        let last = state.revision.max(from);
        Ok(Watch {
            prefix: prefix.to_string(),
            backlog,
            rx,
            last,
            from,
        })
    }
}

/// A stream of changes under one prefix. Ends (returns `None`) when it falls too far behind;
/// the caller's client then resumes from the last revision it saw.
pub struct Watch {
    prefix: String,
    backlog: VecDeque<Arc<Event>>,
    rx: broadcast::Receiver<Arc<Event>>,
    /// Live events with a revision at or below this were covered by the backlog.
    last: u64,
    from: u64,
}

impl Watch {
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        if let Some(e) = self.backlog.pop_front() {
            return Some(e);
        }
        loop {
            match self.rx.recv().await {
                Ok(e) if e.rev > self.last && e.rev > self.from && e.key.starts_with(&self.prefix) => {
                    return Some(e);
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => {
                    return None;
                }
            }
        }
    }
}

/// The write side of a store fed from elsewhere (etcd's watch): applies committed changes in
/// revision order and tells the watches.
#[derive(Clone)]
pub(super) struct Cache {
    state: Arc<RwLock<State>>,
    events: broadcast::Sender<Arc<Event>>,
}

impl Cache {
    /// The current object under `key`.
    pub(super) fn get(&self, key: &str) -> Option<Stored> {
        self.state.read().unwrap().objects.get(key).cloned()
    }

    pub(super) fn revision(&self) -> u64 {
        self.state.read().unwrap().revision
    }

    /// Every object, as of now.
    pub(super) fn objects(&self) -> BTreeMap<String, Stored> {
        self.state.read().unwrap().objects.clone()
    }

    /// Apply one change; `rev` must be above every change applied before.
    pub(super) fn apply(&self, kind: EventType, key: String, obj: Arc<Value>, rev: u64) {
        let mut state = self.state.write().unwrap();
        let prev = match kind {
            EventType::Deleted => state.objects.remove(&key).map(|s| s.obj),
            _ => state
                .objects
                .insert(key.clone(), Stored { obj: obj.clone(), rev })
                .map(|s| s.obj),
        };
        let event = Arc::new(Event {
            rev,
            kind,
            key,
            obj,
            prev,
        });
        if state.history.len() >= state.history_limit {
            if let Some(old) = state.history.pop_front() {
                state.oldest_resumable = old.rev;
            }
        }
        state.history.push_back(event.clone());
        state.revision = state.revision.max(rev);
        let _ = self.events.send(event);
    }

    /// Nothing under the prefix changed up to `rev` (a progress notice).
    pub(super) fn advance(&self, rev: u64) {
        let mut state = self.state.write().unwrap();
        state.revision = state.revision.max(rev);
    }

    /// After the history the watches need was compacted away: from now on a watch may resume
    /// only from `rev` on.
    pub(super) fn forget_before(&self, rev: u64) {
        let mut state = self.state.write().unwrap();
        state.history.clear();
        state.oldest_resumable = rev;
        state.revision = state.revision.max(rev);
    }
}

struct Writer {
    state: Arc<RwLock<State>>,
    events: broadcast::Sender<Arc<Event>>,
    backend: Box<dyn Backend>,
    commits: prometheus_client::metrics::histogram::Histogram,
}

/// What one request will do if the batch commits.
struct Staged {
    kind: EventType,
    key: String,
    obj: Arc<Value>,
    bytes: Vec<u8>,
    rev: u64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut last_compact = self.state.read().unwrap().revision;
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
            let revision = self.state.read().unwrap().revision;
            if revision - last_compact >= COMPACT_EVERY {
                last_compact = revision;
                let limit = self.state.read().unwrap().history_limit as u64;
                let below = revision.saturating_sub(limit);
                if let Err(e) = self.backend.compact(below) {
                    tracing::warn!(error = %e, "change-log compaction failed");
                }
            }
        }
    }

    fn commit_batch(&mut self, batch: Vec<Request>) {
        let (base_rev, mut results) = {
            let state = self.state.read().unwrap();
            (state.revision, Vec::with_capacity(batch.len()))
        };
        // Stage every request against the committed state plus earlier requests of this batch.
        let mut overlay: HashMap<String, Option<(Arc<Value>, u64)>> = HashMap::new();
        let mut staged: Vec<Staged> = Vec::new();
        let mut prevs: Vec<Option<Arc<Value>>> = Vec::new();
        let mut rev = base_rev;
        {
            let state = self.state.read().unwrap();
            for req in &batch {
                let key = req.write.key().to_string();
                let current = match overlay.get(&key) {
                    Some(v) => v.clone(),
                    None => state.objects.get(&key).map(|s| (s.obj.clone(), s.rev)),
                };
                let outcome = stage(&req.write, current.as_ref(), rev + 1);
                match outcome {
                    Ok((kind, mut obj)) => {
                        rev += 1;
                        set_resource_version(&mut obj, rev);
                        let bytes = match serde_json::to_vec(&obj) {
                            Ok(b) => b,
                            Err(e) => {
                                rev -= 1;
                                results.push(Err(StoreError::Backend(e.to_string())));
                                continue;
                            }
                        };
                        let obj = Arc::new(obj);
                        overlay.insert(
                            key.clone(),
                            if kind == EventType::Deleted {
                                None
                            } else {
                                Some((obj.clone(), rev))
                            },
                        );
                        prevs.push(current.map(|(o, _)| o));
                        results.push(Ok(staged.len()));
                        staged.push(Staged {
                            kind,
                            key,
                            obj,
                            bytes,
                            rev,
                        });
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
        }
        if !staged.is_empty() {
            let mutations: Vec<Mutation<'_>> = staged
                .iter()
                .map(|s| Mutation {
                    rev: s.rev,
                    kind: s.kind,
                    key: &s.key,
                    bytes: &s.bytes,
                })
                .collect();
            let started = std::time::Instant::now();
            let committed = self.backend.commit(&mutations, rev);
            self.commits.observe(started.elapsed().as_secs_f64());
            if let Err(e) = committed {
                tracing::error!(error = %e, "store commit failed; the batch is refused");
                let msg = e.to_string();
                for (req, _) in batch.into_iter().zip(results) {
                    let _ = req.reply.send(Err(StoreError::Backend(msg.clone())));
                }
                return;
            }
            let mut state = self.state.write().unwrap();
            for (s, prev) in staged.iter().zip(prevs) {
                match s.kind {
                    EventType::Deleted => {
                        state.objects.remove(&s.key);
                    }
                    _ => {
                        state.objects.insert(
                            s.key.clone(),
                            Stored {
                                obj: s.obj.clone(),
                                rev: s.rev,
                            },
                        );
                    }
                }
                let event = Arc::new(Event {
                    rev: s.rev,
                    kind: s.kind,
                    key: s.key.clone(),
                    obj: s.obj.clone(),
                    prev,
                });
                if state.history.len() >= state.history_limit {
                    if let Some(old) = state.history.pop_front() {
                        state.oldest_resumable = old.rev;
                    }
                }
                state.history.push_back(event.clone());
                let _ = self.events.send(event);
            }
            state.revision = rev;
        }
        for (req, result) in batch.into_iter().zip(results) {
            let reply = result.map(|i| Stored {
                obj: staged[i].obj.clone(),
                rev: staged[i].rev,
            });
            let _ = req.reply.send(reply);
        }
    }
}

/// Check a write's precondition against the current value; return the event type and new object.
fn stage(write: &Write, current: Option<&(Arc<Value>, u64)>, _rev: u64) -> Result<(EventType, Value), StoreError> {
    match write {
        Write::Create { obj, .. } => match current {
            Some(_) => Err(StoreError::AlreadyExists),
            None => Ok((EventType::Added, obj.clone())),
        },
        Write::Update { obj, expect_rev, .. } => match current {
            None => Err(StoreError::NotFound),
            Some((_, cur)) if expect_rev.is_some_and(|e| e != *cur) => Err(StoreError::Conflict { current: *cur }),
            Some(_) => Ok((EventType::Modified, obj.clone())),
        },
        Write::Delete { expect_rev, .. } => match current {
            None => Err(StoreError::NotFound),
            Some((_, cur)) if expect_rev.is_some_and(|e| e != *cur) => Err(StoreError::Conflict { current: *cur }),
            Some((obj, _)) => Ok((EventType::Deleted, (**obj).clone())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Open, waiting for a just-dropped store's writer thread to let go of the file.
    fn open(dir: &std::path::Path) -> Store {
        for _ in 0..200 {
            if let Ok(s) = Store::open_embedded(dir) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Store::open_embedded(dir).unwrap()
    }

    fn obj(name: &str, v: i64) -> Value {
        json!({"metadata": {"name": name}, "v": v})
    }

    #[tokio::test]
    async fn writes_are_ordered_checked_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let a = s
            .write(Write::Create {
                key: "/g/r/a".into(),
                obj: obj("a", 1),
            })
            .await
            .unwrap();
        assert_eq!(a.rev, 1);
        assert_eq!(a.obj["metadata"]["resourceVersion"], "1");
        assert!(matches!(
            s.write(Write::Create {
                key: "/g/r/a".into(),
                obj: obj("a", 2)
            })
            .await,
            Err(StoreError::AlreadyExists)
        ));
        assert!(matches!(
            s.write(Write::Update {
                key: "/g/r/a".into(),
                obj: obj("a", 2),
                expect_rev: Some(99)
            })
            .await,
            Err(StoreError::Conflict { current: 1 })
        ));
        let b = s
            .write(Write::Update {
                key: "/g/r/a".into(),
                obj: obj("a", 2),
                expect_rev: Some(1),
            })
            .await
            .unwrap();
        assert_eq!(b.rev, 2);
        // Concurrent writers share commits but each gets its own revision.
        let writes = (0..100).map(|i| {
            s.write(Write::Create {
                key: format!("/g/r/x{i:03}"),
                obj: obj("x", i),
            })
        });
        let revs: Vec<u64> = futures::future::join_all(writes)
            .await
            .into_iter()
            .map(|r| r.unwrap().rev)
            .collect();
        let mut sorted = revs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 100);
        s.write(Write::Delete {
            key: "/g/r/a".into(),
            expect_rev: None,
        })
        .await
        .unwrap();
        let rev = s.revision();
        drop(s);
        let s = open(dir.path());
        assert_eq!(s.revision(), rev, "the revision survives a reopen");
        assert!(s.get("/g/r/a").is_none());
        assert_eq!(s.get("/g/r/x042").unwrap().obj["v"], 42);
    }

    #[tokio::test]
    async fn watch_from_a_compacted_revision_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let backend = super::super::redb::RedbBackend::open(&dir.path().join("s.redb")).unwrap();
        let s = Store::open_with_history(backend, 5).unwrap();
        for i in 0..10 {
            s.write(Write::Create {
                key: format!("/g/r/o{i}"),
                obj: obj("o", i),
            })
            .await
            .unwrap();
        }
        assert!(matches!(
            s.watch("/g/r/", 2),
            Err(StoreError::Gone { requested: 2, .. })
        ));
        let mut w = s.watch("/g/r/", 6).unwrap();
        assert_eq!(w.next().await.unwrap().rev, 7);
    }

    #[tokio::test]
    async fn list_pages_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        for i in 0..10 {
            s.write(Write::Create {
                key: format!("/g/r/ns/o{i}"),
                obj: obj("o", i),
            })
            .await
            .unwrap();
        }
        s.write(Write::Create {
            key: "/g/r2/ns/other".into(),
            obj: obj("other", 0),
        })
        .await
        .unwrap();
        let (page, _, next) = s.list("/g/r/", None, 4, &|_| true);
        assert_eq!(page.len(), 4);
        let (rest, _, end) = s.list("/g/r/", next.as_deref(), 0, &|_| true);
        assert_eq!(rest.len(), 6);
        assert!(end.is_none());
        let (even, _, _) = s.list("/g/r/", None, 0, &|o| o["v"].as_i64().unwrap() % 2 == 0);
        assert_eq!(even.len(), 5);
    }

    #[tokio::test]
    async fn watch_resumes_from_history_even_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.write(Write::Create {
            key: "/g/r/a".into(),
            obj: obj("a", 1),
        })
        .await
        .unwrap();
        s.write(Write::Update {
            key: "/g/r/a".into(),
            obj: obj("a", 2),
            expect_rev: None,
        })
        .await
        .unwrap();
        drop(s);
        let s = open(dir.path());
        let mut w = s.watch("/g/r/", 1).unwrap();
        let e = w.next().await.unwrap();
        assert_eq!((e.rev, e.kind), (2, EventType::Modified));
        s.write(Write::Delete {
            key: "/g/r/a".into(),
            expect_rev: None,
        })
        .await
        .unwrap();
        let e = w.next().await.unwrap();
        assert_eq!((e.rev, e.kind), (3, EventType::Deleted));
        assert_eq!(e.obj["metadata"]["resourceVersion"], "3");
    }
}
