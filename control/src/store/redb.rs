//! The embedded backend: one redb file under the data directory.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Backend, EventType, Loaded, Mutation, StoreError};

const OBJECTS: TableDefinition<'_, &str, (u64, &[u8])> = TableDefinition::new("objects");
const CHANGES: TableDefinition<'_, u64, (u8, &str, &[u8])> = TableDefinition::new("changes");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// How many change-log entries are loaded at start-up for resuming watches.
const LOG_LOADED: usize = 50_000;

pub struct RedbBackend {
    db: Database,
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbBackend {
    /// Open (or create) the database at `path`, readable by its owner only (it holds Secrets).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // redb creates the file with the process's umask; made empty here first (redb takes an
        // empty file for a new database), it is 0600 from its first byte.
        {
            use std::os::unix::fs::OpenOptionsExt;
            let io = |e: std::io::Error| StoreError::Backend(format!("{}: {e}", path.display()));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(crate::private::FILE_MODE)
                .open(path)
                .map_err(io)?;
            crate::private::file(path).map_err(io)?;
        }
        let db = Database::create(path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(OBJECTS).map_err(backend)?;
            txn.open_table(CHANGES).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(Self { db })
    }
}

fn type_code(t: EventType) -> u8 {
    match t {
        EventType::Added => 0,
        EventType::Modified => 1,
        EventType::Deleted => 2,
    }
}

fn code_type(c: u8) -> EventType {
    match c {
        0 => EventType::Added,
        1 => EventType::Modified,
        _ => EventType::Deleted,
    }
}

impl Backend for RedbBackend {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let revision = meta.get("revision").map_err(backend)?.map(|v| v.value()).unwrap_or(0);
        let objects_t = txn.open_table(OBJECTS).map_err(backend)?;
        let mut objects = Vec::with_capacity(objects_t.len().map_err(backend)? as usize);
        for row in objects_t.iter().map_err(backend)? {
            let (k, v) = row.map_err(backend)?;
            let (rev, bytes) = v.value();
            objects.push((k.value().to_string(), bytes.to_vec(), rev));
        }
        let changes = txn.open_table(CHANGES).map_err(backend)?;
        let mut events = Vec::new();
        for row in changes.iter().map_err(backend)?.rev().take(LOG_LOADED) {
            let (rev, v) = row.map_err(backend)?;
            let (code, key, bytes) = v.value();
            events.push((rev.value(), code_type(code), key.to_string(), bytes.to_vec()));
        }
        events.reverse();
        Ok(Loaded {
            revision,
            objects,
            events,
        })
    }

    fn commit(&mut self, batch: &[Mutation<'_>], revision: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
            let mut changes = txn.open_table(CHANGES).map_err(backend)?;
            for m in batch {
                match m.kind {
                    EventType::Deleted => {
                        objects.remove(m.key).map_err(backend)?;
                    }
                    _ => {
                        objects.insert(m.key, (m.rev, m.bytes)).map_err(backend)?;
                    }
                }
                changes
                    .insert(m.rev, (type_code(m.kind), m.key, m.bytes))
                    .map_err(backend)?;
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert("revision", revision).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    fn compact(&mut self, below: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut changes = txn.open_table(CHANGES).map_err(backend)?;
            changes.retain_in(..below, |_, _| false).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }
}
