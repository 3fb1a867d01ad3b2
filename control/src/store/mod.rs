//! The object store: one revision counter, atomic durable writes, watch from any recent revision.
//!
//! [`Store`] keeps every object in memory (as the apiserver's watch cache does) and persists each
//! write through a [`Backend`] before acknowledging it. Writes funnel into one writer thread that
//! commits whatever has queued up in one durable transaction (group commit), so N concurrent
//! clients cost one fsync, not N. The embedded backend is redb ([`redb::RedbBackend`]). On etcd
//! ([`etcd`], for several control replicas) writes go to etcd one transaction each, and the
//! in-memory index follows etcd's watch.

pub mod etcd;
mod memory;
pub mod redb;

use std::sync::Arc;

use serde_json::Value;

pub use memory::{Store, Watch};

/// An object as stored, with the revision that last wrote it (its resourceVersion).
#[derive(Clone, Debug)]
pub struct Stored {
    pub obj: Arc<Value>,
    pub rev: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Clone, Debug)]
pub struct Event {
    pub rev: u64,
    pub kind: EventType,
    pub key: String,
    /// The object after the change; for a deletion, the last state with the deleting revision.
    pub obj: Arc<Value>,
    /// The object before the change (absent for creations and for events replayed after a restart).
    pub prev: Option<Arc<Value>>,
}

/// A write request. Preconditions are checked against the state at commit time.
#[derive(Debug)]
pub enum Write {
    Create {
        key: String,
        obj: Value,
    },
    Update {
        key: String,
        obj: Value,
        expect_rev: Option<u64>,
    },
    Delete {
        key: String,
        expect_rev: Option<u64>,
    },
}

impl Write {
    pub fn key(&self) -> &str {
        match self {
            Write::Create { key, .. } | Write::Update { key, .. } | Write::Delete { key, .. } => key,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object already exists")]
    AlreadyExists,
    #[error("object not found")]
    NotFound,
    #[error("the object has been modified (current revision {current})")]
    Conflict { current: u64 },
    #[error("too old resource version: {requested} ({oldest})")]
    Gone { requested: u64, oldest: u64 },
    #[error("storage backend failed: {0}")]
    Backend(String),
    #[error("the store is shut down")]
    Closed,
}

/// A mutation as the backend persists it: the key and its new bytes (None = deleted).
#[derive(Debug)]
pub struct Mutation<'a> {
    pub rev: u64,
    pub kind: EventType,
    pub key: &'a str,
    pub bytes: &'a [u8],
}

/// What a backend holds at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub revision: u64,
    /// Every live object: key, JSON bytes, revision.
    pub objects: Vec<(String, Vec<u8>, u64)>,
    /// The recent change log, oldest first, for watches that resume across a restart.
    pub events: Vec<(u64, EventType, String, Vec<u8>)>,
}

/// Durable persistence under the [`Store`]. `commit` must be atomic and durable when it returns.
pub trait Backend: Send + 'static {
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// Persist a batch in one transaction: object rows and change-log rows, and the new revision.
    fn commit(&mut self, batch: &[Mutation<'_>], revision: u64) -> Result<(), StoreError>;
    /// Drop change-log entries with revision below `below`.
    fn compact(&mut self, below: u64) -> Result<(), StoreError>;
}

/// Writes that go elsewhere (etcd) instead of to a [`Backend`] through the writer thread: the
/// store's cache is then fed by whoever implements this (see `etcd.rs`).
pub(crate) trait RemoteWrites: Send + Sync + 'static {
    fn write(&self, write: Write) -> futures::future::BoxFuture<'_, Result<Stored, StoreError>>;
}
