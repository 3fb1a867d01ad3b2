//! The OSS volume as a FUSE file system (fuser) over the S3 API ([`super::s3`]).
//!
//! - **Names.** A file is the object `<prefix><path>`; a directory is a key prefix ending in `/`,
//!   with a zero-byte marker object `<path>/` when it was made here (as ossfs and s3fs make it),
//!   so empty directories survive; directories other tools imply by their keys are seen too.
//! - **Metadata.** One listing (ListObjectsV2 with delimiter, every page) answers a directory's
//!   readdir and every lookup in it; listings are kept in a moka cache for the listing TTL and
//!   changed in place by what this mount does, so `stat` of 10,000 files is one listing, not
//!   10,000 HEADs.
//! - **Reads.** An open file is read in chunks of `part_size`, fetched by ranged GETs in parallel
//!   and, while the reader goes forward, `readahead` bytes ahead of it.
//! - **Writes.** A file opened for writing is staged in an unlinked file under the cache
//!   directory and uploaded when it is closed (flush) or fsync'd: one PUT when it is small, a
//!   multipart upload of `parallel` parts at a time otherwise. A file opened for writing without
//!   `O_TRUNC` is read in first.
//! - **Rename** is CopyObject + DeleteObject, key by key for a directory (not atomic, as on
//!   every S3 file system).
//! - **Owners and modes** are the mount's (`uid`, `gid`, `umask`), not stored per object:
//!   `chmod`/`chown` to anything else is `EPERM`; times are the objects' modification times.
//!
//! Every call runs on the tokio runtime and answers the kernel from there, so slow calls (an
//! upload, a listing) never hold up the others; a call the server does not answer ends in `EIO`
//! within the S3 client's bounds.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig, OpenAccMode, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};

use super::s3::{Level, S3, S3Error};
use crate::fuse::FsCounters;

/// How long the kernel may keep an entry or attributes before asking again.
const KERNEL_TTL: Duration = Duration::from_secs(1);
/// S3's limit on the parts of one upload.
const MAX_PARTS: u64 = 10_000;

/// How a mount behaves (from the volume's attributes and `otherOpts`).
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// The key prefix the mount shows (`""`, or ending in `/`).
    pub prefix: String,
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
    pub read_only: bool,
    /// How long a directory listing is trusted.
    pub listing_ttl: Duration,
    /// Chunk of ranged reads and part of multipart uploads.
    pub part_size: u64,
    /// Requests of one file in flight at once (chunks read, parts uploaded).
    pub parallel: usize,
    /// How far ahead of a sequential reader chunks are fetched.
    pub readahead: u64,
    /// Where files being written are staged.
    pub cache_dir: PathBuf,
}

/// One child of a directory listing.
#[derive(Clone, Copy, Debug)]
struct Child {
    dir: bool,
    size: u64,
    mtime: SystemTime,
}

type DirMap = Arc<Mutex<BTreeMap<String, Child>>>;

/// An inode: a path of the mount (`""` is the root; no trailing `/`).
#[derive(Debug)]
struct Node {
    key: String,
    dir: bool,
    size: u64,
    mtime: SystemTime,
    lookups: u64,
}

#[derive(Default)]
struct Nodes {
    by_ino: HashMap<u64, Node>,
    by_key: HashMap<String, u64>,
    next: u64,
}

impl Nodes {
    /// The inode of `key`, made or refreshed with what a listing says of it.
    fn upsert(&mut self, key: &str, c: Child) -> u64 {
        if let Some(&ino) = self.by_key.get(key) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.dir = c.dir;
                n.size = c.size;
                n.mtime = c.mtime;
                return ino;
            }
        }
        self.next += 1;
        let ino = self.next;
        self.by_key.insert(key.to_string(), ino);
        self.by_ino.insert(
            ino,
            Node {
                key: key.to_string(),
                dir: c.dir,
                size: c.size,
                mtime: c.mtime,
                lookups: 0,
            },
        );
        ino
    }

    fn rekey(&mut self, from: &str, to: &str) {
        let moved: Vec<(String, u64)> = self
            .by_key
            .iter()
            .filter(|(k, _)| *k == from || k.starts_with(&format!("{from}/")))
            .map(|(k, i)| (k.clone(), *i))
            .collect();
        for (k, ino) in moved {
            self.by_key.remove(&k);
            let nk = format!("{to}{}", &k[from.len()..]);
            // A node replaced by the rename is dropped from the names (its inode stays for
            // whoever holds it open).
            self.by_key.insert(nk.clone(), ino);
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.key = nk;
            }
        }
    }
}

/// A file being written: staged in an unlinked file.
struct Writer {
    /// Its path (a rename changes it).
    key: Mutex<String>,
    ino: u64,
    file: std::fs::File,
    state: tokio::sync::Mutex<WriteState>,
}

struct WriteState {
    size: u64,
    dirty: bool,
}

/// A file being read.
struct Reader {
    key: String,
    size: u64,
    chunks: Mutex<BTreeMap<u64, Chunk>>,
    last_end: AtomicU64,
}

type Chunk = Shared<BoxFuture<'static, Result<Bytes, i32>>>;

enum Handle {
    Read(Arc<Reader>),
    Write(Arc<Writer>),
    Dir(Arc<Vec<(u64, FileType, String)>>),
}

/// The file system; mount it with fuser.
pub struct ObjectFs {
    rt: tokio::runtime::Handle,
    inner: Arc<Inner>,
}

struct Inner {
    s3: S3,
    o: FsOptions,
    nodes: Mutex<Nodes>,
    dirs: moka::future::Cache<String, DirMap>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// Files made here and not uploaded yet: key → inode.
    pending: Mutex<HashMap<String, u64>>,
    next_fh: AtomicU64,
    counters: Arc<FsCounters>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn split(key: &str) -> (&str, &str) {
    match key.rfind('/') {
        Some(i) => (&key[..i], &key[i + 1..]),
        None => ("", key),
    }
}

fn eio(e: S3Error) -> i32 {
    tracing::warn!(error = %e, "object storage call failed");
    e.errno()
}

impl ObjectFs {
    pub fn new(s3: S3, o: FsOptions, counters: Arc<FsCounters>, rt: tokio::runtime::Handle) -> ObjectFs {
        let mut nodes = Nodes {
            next: 1,
            ..Default::default()
        };
        nodes.by_key.insert(String::new(), 1);
        nodes.by_ino.insert(
            1,
            Node {
                key: String::new(),
                dir: true,
                size: 0,
                mtime: SystemTime::now(),
                lookups: 1,
            },
        );
        let dirs = moka::future::Cache::builder()
            .time_to_live(o.listing_ttl)
            .max_capacity(4096)
            .build();
        ObjectFs {
            rt,
            inner: Arc::new(Inner {
                s3,
                o,
                nodes: Mutex::new(nodes),
                dirs,
                handles: Mutex::default(),
                pending: Mutex::default(),
                next_fh: AtomicU64::new(1),
                counters,
            }),
        }
    }

    /// Run `f` on the runtime, counting it (and its error).
    fn go<F>(&self, f: F)
    where
        F: std::future::Future<Output = Result<(), i32>> + Send + 'static,
    {
        let c = self.inner.counters.clone();
        c.operations.fetch_add(1, Ordering::Relaxed);
        self.rt.spawn(async move {
            if f.await.is_err() {
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

impl Inner {
    fn attr(&self, ino: u64, n: &Node) -> FileAttr {
        let (kind, perm, nlink) = if n.dir {
            (FileType::Directory, 0o777 & !self.o.umask, 2)
        } else {
            (FileType::RegularFile, 0o666 & !self.o.umask, 1)
        };
        FileAttr {
            ino: INodeNo(ino),
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.mtime,
            kind,
            perm: perm as u16,
            nlink,
            uid: self.o.uid,
            gid: self.o.gid,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    fn node_attr(&self, ino: u64) -> Result<FileAttr, i32> {
        let nodes = lock(&self.nodes);
        let n = nodes.by_ino.get(&ino).ok_or(libc::ENOENT)?;
        Ok(self.attr(ino, n))
    }

    fn key_of(&self, ino: u64) -> Result<(String, bool), i32> {
        let nodes = lock(&self.nodes);
        let n = nodes.by_ino.get(&ino).ok_or(libc::ENOENT)?;
        Ok((n.key.clone(), n.dir))
    }

    /// The object key of a mount path.
    fn object(&self, key: &str) -> String {
        format!("{}{key}", self.o.prefix)
    }

    /// The listing prefix of a directory.
    fn dir_prefix(&self, key: &str) -> String {
        if key.is_empty() {
            self.o.prefix.clone()
        } else {
            format!("{}{key}/", self.o.prefix)
        }
    }

    /// A directory's listing, from the cache or the server.
    async fn listing(self: &Arc<Self>, dir: &str) -> Result<DirMap, i32> {
        let me = self.clone();
        let d = dir.to_string();
        self.dirs
            .try_get_with(dir.to_string(), async move {
                let prefix = me.dir_prefix(&d);
                let level = me.s3.list_level(&prefix).await?;
                Ok::<_, S3Error>(Arc::new(Mutex::new(me.children(&prefix, &d, level))))
            })
            .await
            .map_err(|e: Arc<S3Error>| eio((*e).clone()))
    }

    fn children(&self, prefix: &str, dir: &str, level: Level) -> BTreeMap<String, Child> {
        let mut out = BTreeMap::new();
        for p in level.prefixes {
            if let Some(name) = p.strip_prefix(prefix).and_then(|n| n.strip_suffix('/')) {
                if !name.is_empty() && !name.contains('/') {
                    out.insert(
                        name.to_string(),
                        Child {
                            dir: true,
                            size: 0,
                            mtime: SystemTime::UNIX_EPOCH,
                        },
                    );
                }
            }
        }
        for o in level.objects {
            let Some(name) = o.key.strip_prefix(prefix) else {
                continue;
            };
            // The directory's own marker.
            if name.is_empty() {
                continue;
            }
            if let Some(d) = name.strip_suffix('/') {
                if !d.is_empty() && !d.contains('/') {
                    out.insert(
                        d.to_string(),
                        Child {
                            dir: true,
                            size: 0,
                            mtime: o.modified,
                        },
                    );
                }
                continue;
            }
            // A directory of the same name wins, as on ossfs.
            out.entry(name.to_string()).or_insert(Child {
                dir: false,
                size: o.size,
                mtime: o.modified,
            });
        }
        // Files made here and not yet uploaded are there all the same.
        let pending = lock(&self.pending);
        let nodes = lock(&self.nodes);
        for (key, ino) in pending.iter() {
            let (parent, name) = split(key);
            if parent == dir {
                if let Some(n) = nodes.by_ino.get(ino) {
                    out.insert(
                        name.to_string(),
                        Child {
                            dir: false,
                            size: n.size,
                            mtime: n.mtime,
                        },
                    );
                }
            }
        }
        out
    }

    /// Change a cached listing (if it is cached) by what this mount did.
    async fn note(&self, key: &str, child: Option<Child>) {
        let (parent, name) = split(key);
        if let Some(d) = self.dirs.get(parent).await {
            let mut d = lock(&d);
            match child {
                Some(c) => {
                    d.insert(name.to_string(), c);
                }
                None => {
                    d.remove(name);
                }
            }
        }
    }

    async fn lookup(self: &Arc<Self>, parent: u64, name: &str) -> Result<FileAttr, i32> {
        let (pkey, _) = self.key_of(parent)?;
        let key = join(&pkey, name);
        if let Some(&ino) = lock(&self.pending).get(&key) {
            let mut nodes = lock(&self.nodes);
            if let Some(n) = nodes.by_ino.get_mut(&ino) {
                n.lookups += 1;
                return Ok(self.attr(ino, n));
            }
        }
        let d = self.listing(&pkey).await?;
        let child = lock(&d).get(name).copied().ok_or(libc::ENOENT)?;
        let mut nodes = lock(&self.nodes);
        let ino = nodes.upsert(&key, child);
        let n = nodes.by_ino.get_mut(&ino).ok_or(libc::ENOENT)?;
        n.lookups += 1;
        Ok(self.attr(ino, n))
    }

    fn forget(&self, ino: u64, count: u64) {
        if ino == 1 {
            return;
        }
        let mut nodes = lock(&self.nodes);
        let gone = match nodes.by_ino.get_mut(&ino) {
            Some(n) => {
                n.lookups = n.lookups.saturating_sub(count);
                n.lookups == 0
            }
            None => false,
        };
        if gone && !lock(&self.pending).values().any(|&i| i == ino) {
            if let Some(n) = nodes.by_ino.remove(&ino) {
                if nodes.by_key.get(&n.key) == Some(&ino) {
                    nodes.by_key.remove(&n.key);
                }
            }
        }
    }

    fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }

    fn writer(&self, fh: u64) -> Option<Arc<Writer>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Write(w)) => Some(w.clone()),
            _ => None,
        }
    }

    fn staging_file(&self) -> Result<std::fs::File, i32> {
        tempfile::tempfile_in(&self.o.cache_dir).map_err(|e| {
            tracing::error!(error = %e, dir = %self.o.cache_dir.display(), "cannot stage a file being written");
            e.raw_os_error().unwrap_or(libc::EIO)
        })
    }

    /// Open a file for writing: staged empty when `truncate`, else with the object's bytes.
    async fn open_writer(self: &Arc<Self>, ino: u64, truncate: bool) -> Result<u64, i32> {
        if self.o.read_only {
            return Err(libc::EROFS);
        }
        let (key, dir) = self.key_of(ino)?;
        if dir {
            return Err(libc::EISDIR);
        }
        let file = self.staging_file()?;
        let mut size = 0;
        if !truncate && !lock(&self.pending).contains_key(&key) {
            if let Some(o) = self.s3.head(&self.object(&key)).await.map_err(eio)? {
                size = o.size;
                self.download_into(&key, &file, size).await?;
            }
        }
        let w = Arc::new(Writer {
            key: Mutex::new(key.clone()),
            ino,
            file,
            state: tokio::sync::Mutex::new(WriteState { size, dirty: truncate }),
        });
        if truncate {
            let mut nodes = lock(&self.nodes);
            if let Some(n) = nodes.by_ino.get_mut(&ino) {
                n.size = 0;
            }
        }
        Ok(self.new_fh(Handle::Write(w)))
    }

    async fn download_into(&self, key: &str, file: &std::fs::File, size: u64) -> Result<(), i32> {
        let part = self.o.part_size.max(1);
        let object = self.object(key);
        let chunks = (0..size.div_ceil(part)).map(|i| {
            let object = object.clone();
            async move {
                let start = i * part;
                let end = (start + part).min(size);
                let b = self.s3.get_range(&object, start, end).await.map_err(eio)?;
                Ok::<_, i32>((start, b))
            }
        });
        let mut s = futures::stream::iter(chunks).buffer_unordered(self.o.parallel.max(1));
        while let Some(r) = s.next().await {
            let (start, b) = r?;
            file.write_all_at(&b, start)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        }
        Ok(())
    }

    /// Upload a writer's staged bytes if they changed.
    async fn upload(self: &Arc<Self>, w: &Writer) -> Result<(), i32> {
        let mut st = w.state.lock().await;
        if !st.dirty {
            return Ok(());
        }
        let key = lock(&w.key).clone();
        let object = self.object(&key);
        let size = st.size;
        let part = self.o.part_size.max(size.div_ceil(MAX_PARTS)).max(5 << 20);
        if size <= part {
            let mut buf = vec![0u8; size as usize];
            w.file
                .read_exact_at(&mut buf, 0)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            self.s3.put(&object, Bytes::from(buf)).await.map_err(eio)?;
        } else {
            let upload = self.s3.multipart_start(&object).await.map_err(eio)?;
            let parts = size.div_ceil(part);
            let file = &w.file;
            let s3 = &self.s3;
            let sent: Result<Vec<String>, i32> = futures::stream::iter((0..parts).map(|i| {
                let object = object.clone();
                let upload = upload.clone();
                async move {
                    let start = i * part;
                    let len = (part.min(size - start)) as usize;
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, start)
                        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                    s3.multipart_part(&object, &upload, (i + 1) as u16, Bytes::from(buf))
                        .await
                        .map_err(eio)
                }
            }))
            .buffered(self.o.parallel.max(1))
            .try_collect()
            .await;
            match sent {
                Ok(etags) => {
                    if let Err(e) = self.s3.multipart_finish(&object, &upload, &etags).await {
                        self.s3.multipart_abort(&object, &upload).await;
                        return Err(eio(e));
                    }
                }
                Err(e) => {
                    self.s3.multipart_abort(&object, &upload).await;
                    return Err(e);
                }
            }
        }
        st.dirty = false;
        let now = SystemTime::now();
        lock(&self.pending).remove(&key);
        {
            let mut nodes = lock(&self.nodes);
            if let Some(n) = nodes.by_ino.get_mut(&w.ino) {
                n.size = size;
                n.mtime = now;
            }
        }
        self.note(
            &key,
            Some(Child {
                dir: false,
                size,
                mtime: now,
            }),
        )
        .await;
        Ok(())
    }

    async fn read(self: &Arc<Self>, fh: u64, offset: u64, size: u32) -> Result<Bytes, i32> {
        let h = match lock(&self.handles).get(&fh) {
            Some(Handle::Read(r)) => Ok(r.clone()),
            Some(Handle::Write(w)) => Err(w.clone()),
            _ => return Err(libc::EBADF),
        };
        let r = match h {
            Ok(r) => r,
            Err(w) => {
                let st = w.state.lock().await;
                let end = (offset + size as u64).min(st.size);
                if offset >= end {
                    return Ok(Bytes::new());
                }
                let mut buf = vec![0u8; (end - offset) as usize];
                w.file
                    .read_exact_at(&mut buf, offset)
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                return Ok(Bytes::from(buf));
            }
        };
        let end = (offset + size as u64).min(r.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let part = self.o.part_size.max(1);
        let first = offset / part;
        let last = (end - 1) / part;
        // The kernel sends a sequential reader's requests several at a time, not always in
        // order: near the furthest end read so far counts as going forward.
        let furthest = r.last_end.fetch_max(end, Ordering::Relaxed);
        let sequential = offset == 0 || offset.abs_diff(furthest) <= part;
        let window = self.o.readahead / part;
        let ahead = if sequential { window } else { 0 };
        let top = (r.size - 1) / part;
        let wanted: Vec<Chunk> = {
            let mut chunks = lock(&r.chunks);
            // Well behind the reader, or beyond its read-ahead: no longer needed.
            chunks.retain(|&i, _| i + 2 >= first && i <= last + window + 1);
            for i in first..=(last + ahead).min(top) {
                chunks.entry(i).or_insert_with(|| {
                    let me = self.clone();
                    let object = self.object(&r.key);
                    let size = r.size;
                    let f = async move {
                        let start = i * part;
                        let end = (start + part).min(size);
                        me.s3.get_range(&object, start, end).await.map_err(eio)
                    };
                    // Fetched on the runtime at once, whether or not this read waits for it.
                    let t = tokio::spawn(f);
                    async move { t.await.unwrap_or(Err(libc::EIO)) }.boxed().shared()
                });
            }
            (first..=last).filter_map(|i| chunks.get(&i).cloned()).collect()
        };
        let mut pieces = Vec::with_capacity(wanted.len());
        for (n, c) in wanted.into_iter().enumerate() {
            let b = c.await?;
            let base = (first + n as u64) * part;
            let from = offset.max(base) - base;
            let to = (end.min(base + b.len() as u64)).saturating_sub(base);
            if from < to {
                // A slice of the chunk: no copy.
                pieces.push(b.slice(from as usize..to as usize));
            }
        }
        let out = match pieces.len() {
            0 => Bytes::new(),
            1 => pieces.pop().unwrap_or_default(),
            _ => pieces.concat().into(),
        };
        self.counters.bytes_read.fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    async fn set_size(self: &Arc<Self>, ino: u64, fh: Option<u64>, size: u64) -> Result<(), i32> {
        if self.o.read_only {
            return Err(libc::EROFS);
        }
        let w = match fh.and_then(|f| self.writer(f)) {
            Some(w) => Some(w),
            None => {
                // A writer of this inode open elsewhere takes it.
                lock(&self.handles).values().find_map(|h| match h {
                    Handle::Write(w) if w.ino == ino => Some(w.clone()),
                    _ => None,
                })
            }
        };
        match w {
            Some(w) => {
                let mut st = w.state.lock().await;
                w.file
                    .set_len(size)
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                st.size = size;
                st.dirty = true;
            }
            None => {
                // No one writes it: make the object that size now.
                let fh = self.open_writer(ino, size == 0).await?;
                let w = self.writer(fh).ok_or(libc::EBADF)?;
                {
                    let mut st = w.state.lock().await;
                    w.file
                        .set_len(size)
                        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                    st.size = size;
                    st.dirty = true;
                }
                let r = self.upload(&w).await;
                lock(&self.handles).remove(&fh);
                r?;
            }
        }
        let mut nodes = lock(&self.nodes);
        if let Some(n) = nodes.by_ino.get_mut(&ino) {
            n.size = size;
        }
        Ok(())
    }

    async fn create(self: &Arc<Self>, parent: u64, name: &str) -> Result<(FileAttr, u64), i32> {
        if self.o.read_only {
            return Err(libc::EROFS);
        }
        let (pkey, _) = self.key_of(parent)?;
        let key = join(&pkey, name);
        let now = SystemTime::now();
        let child = Child {
            dir: false,
            size: 0,
            mtime: now,
        };
        let ino = {
            let mut nodes = lock(&self.nodes);
            let ino = nodes.upsert(&key, child);
            if let Some(n) = nodes.by_ino.get_mut(&ino) {
                n.lookups += 1;
            }
            ino
        };
        lock(&self.pending).insert(key.clone(), ino);
        self.note(&key, Some(child)).await;
        let file = self.staging_file()?;
        let w = Arc::new(Writer {
            key: Mutex::new(key),
            ino,
            file,
            state: tokio::sync::Mutex::new(WriteState { size: 0, dirty: true }),
        });
        let fh = self.new_fh(Handle::Write(w));
        Ok((self.node_attr(ino)?, fh))
    }

    async fn mkdir(self: &Arc<Self>, parent: u64, name: &str) -> Result<FileAttr, i32> {
        if self.o.read_only {
            return Err(libc::EROFS);
        }
        let (pkey, _) = self.key_of(parent)?;
        let key = join(&pkey, name);
        self.s3
            .put(&format!("{}/", self.object(&key)), Bytes::new())
            .await
            .map_err(eio)?;
        let child = Child {
            dir: true,
            size: 0,
            mtime: SystemTime::now(),
        };
        self.note(&key, Some(child)).await;
        let mut nodes = lock(&self.nodes);
        let ino = nodes.upsert(&key, child);
        let n = nodes.by_ino.get_mut(&ino).ok_or(libc::ENOENT)?;
        n.lookups += 1;
        Ok(self.attr(ino, n))
    }

    async fn remove(self: &Arc<Self>, parent: u64, name: &str, dir: bool) -> Result<(), i32> {
        if self.o.read_only {
            return Err(libc::EROFS);
        }
        let (pkey, _) = self.key_of(parent)?;
        let key = join(&pkey, name);
        if dir {
            let marker = format!("{}/", self.object(&key));
            if self.s3.has_under(&marker, &marker).await.map_err(eio)? {
                return Err(libc::ENOTEMPTY);
            }
            self.s3.delete(&marker).await.map_err(eio)?;
            self.dirs.invalidate(&key).await;
        } else {
            lock(&self.pending).remove(&key);
            self.s3.delete(&self.object(&key)).await.map_err(eio)?;
        }
        self.note(&key, None).await;
        let mut nodes = lock(&self.nodes);
        nodes.by_key.remove(&key);
        Ok(())
    }

    async fn rename(
        self: &Arc<Self>,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
        flags: RenameFlags,
    ) -> Result<(), i32> {
        if self.o.read_only {
            return Err(libc::EROFS);
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(libc::EINVAL);
        }
        let (pkey, _) = self.key_of(parent)?;
        let (npkey, _) = self.key_of(newparent)?;
        let from = join(&pkey, name);
        let to = join(&npkey, newname);
        let d = self.listing(&pkey).await?;
        let child = lock(&d).get(name).copied();
        let child = match child {
            Some(c) => c,
            None if lock(&self.pending).contains_key(&from) => Child {
                dir: false,
                size: 0,
                mtime: SystemTime::now(),
            },
            None => return Err(libc::ENOENT),
        };
        let nd = self.listing(&npkey).await?;
        let target = lock(&nd).get(newname).copied();
        if let Some(t) = target {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(libc::EEXIST);
            }
            if t.dir != child.dir {
                return Err(if t.dir { libc::EISDIR } else { libc::ENOTDIR });
            }
            if t.dir
                && self
                    .s3
                    .has_under(&format!("{}/", self.object(&to)), "")
                    .await
                    .map_err(eio)?
            {
                return Err(libc::ENOTEMPTY);
            }
        }
        if child.dir {
            let src = format!("{}/", self.object(&from));
            let dst = format!("{}/", self.object(&to));
            let keys = self.s3.list_all(&src).await.map_err(eio)?;
            for o in &keys {
                self.s3
                    .copy(&o.key, &format!("{dst}{}", &o.key[src.len()..]))
                    .await
                    .map_err(eio)?;
            }
            if keys.is_empty() {
                self.s3.put(&dst, Bytes::new()).await.map_err(eio)?;
            }
            for o in &keys {
                self.s3.delete(&o.key).await.map_err(eio)?;
            }
            self.dirs.invalidate(&from).await;
            self.dirs.invalidate(&to).await;
        } else {
            // A file still being written goes up first, so the copy has its bytes.
            let w = lock(&self.handles).values().find_map(|h| match h {
                Handle::Write(w) if *lock(&w.key) == from => Some(w.clone()),
                _ => None,
            });
            if let Some(w) = w {
                self.upload(&w).await?;
            }
            self.s3
                .copy(&self.object(&from), &self.object(&to))
                .await
                .map_err(eio)?;
            self.s3.delete(&self.object(&from)).await.map_err(eio)?;
        }
        self.note(&from, None).await;
        self.note(&to, Some(child)).await;
        let mut nodes = lock(&self.nodes);
        if let Some(old) = nodes.by_key.remove(&to) {
            if let Some(n) = nodes.by_ino.get_mut(&old) {
                n.key = String::new();
            }
        }
        nodes.rekey(&from, &to);
        drop(nodes);
        // Writers of the old name upload to the new one from now on.
        for h in lock(&self.handles).values() {
            if let Handle::Write(w) = h {
                let mut k = lock(&w.key);
                if *k == from {
                    *k = to.clone();
                }
            }
        }
        Ok(())
    }

    async fn opendir(self: &Arc<Self>, ino: u64) -> Result<u64, i32> {
        let (key, dir) = self.key_of(ino)?;
        if !dir {
            return Err(libc::ENOTDIR);
        }
        let d = self.listing(&key).await?;
        let snapshot: Vec<(String, Child)> = lock(&d).iter().map(|(k, v)| (k.clone(), *v)).collect();
        let parent = {
            let (p, _) = split(&key);
            lock(&self.nodes).by_key.get(p).copied().unwrap_or(1)
        };
        let mut entries = vec![
            (ino, FileType::Directory, ".".to_string()),
            (parent, FileType::Directory, "..".to_string()),
        ];
        {
            let mut nodes = lock(&self.nodes);
            for (name, c) in snapshot {
                let i = nodes.upsert(&join(&key, &name), c);
                let kind = if c.dir {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                entries.push((i, kind, name));
            }
        }
        Ok(self.new_fh(Handle::Dir(Arc::new(entries))))
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl fuser::Filesystem for ObjectFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        crate::fuse::init_kernel(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let inner = self.inner.clone();
        let name = name.to_string_lossy().into_owned();
        self.go(async move {
            match inner.lookup(parent.0, &name).await {
                Ok(a) => {
                    reply.entry(&KERNEL_TTL, &a, Generation(0));
                    Ok(())
                }
                Err(e) => {
                    reply.error(errno(e));
                    // Not finding a name is an answer, not a failure.
                    if e == libc::ENOENT { Ok(()) } else { Err(e) }
                }
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inner.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let inner = self.inner.clone();
        self.go(async move {
            let mut a = inner.node_attr(ino.0);
            // A file being written has the size of what is staged.
            if let Ok(attr) = a.as_mut() {
                let w = fh.and_then(|f| inner.writer(f.0)).or_else(|| {
                    lock(&inner.handles).values().find_map(|h| match h {
                        Handle::Write(w) if w.ino == ino.0 => Some(w.clone()),
                        _ => None,
                    })
                });
                if let Some(w) = w {
                    attr.size = w.state.lock().await.size;
                    attr.blocks = attr.size.div_ceil(512);
                }
            }
            match a {
                Ok(a) => {
                    reply.attr(&KERNEL_TTL, &a);
                    Ok(())
                }
                Err(e) => {
                    reply.error(errno(e));
                    Err(e)
                }
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let inner = self.inner.clone();
        self.go(async move {
            let r = async {
                let current = inner.node_attr(ino.0)?;
                // Owners and modes are the mount's: only what they already are is accepted.
                if mode.is_some_and(|m| (m & 0o7777) as u16 != current.perm)
                    || uid.is_some_and(|u| u != current.uid)
                    || gid.is_some_and(|g| g != current.gid)
                {
                    return Err(libc::EPERM);
                }
                if let Some(s) = size {
                    inner.set_size(ino.0, fh.map(|f| f.0), s).await?;
                }
                inner.node_attr(ino.0)
            }
            .await;
            match r {
                Ok(a) => {
                    reply.attr(&KERNEL_TTL, &a);
                    Ok(())
                }
                Err(e) => {
                    reply.error(errno(e));
                    Err(e)
                }
            }
        });
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let inner = self.inner.clone();
        let name = name.to_string_lossy().into_owned();
        self.go(async move {
            match inner.mkdir(parent.0, &name).await {
                Ok(a) => {
                    reply.entry(&KERNEL_TTL, &a, Generation(0));
                    Ok(())
                }
                Err(e) => {
                    reply.error(errno(e));
                    Err(e)
                }
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        let name = name.to_string_lossy().into_owned();
        let newname = newname.to_string_lossy().into_owned();
        self.go(async move { empty(reply, inner.rename(parent.0, &name, newparent.0, &newname, flags).await) });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let inner = self.inner.clone();
        self.go(async move {
            let r = async {
                if flags.acc_mode() != OpenAccMode::O_RDONLY {
                    return inner.open_writer(ino.0, flags.0 & libc::O_TRUNC != 0).await;
                }
                // A file this mount is writing is read from what is staged.
                let w = lock(&inner.handles).values().find_map(|h| match h {
                    Handle::Write(w) if w.ino == ino.0 => Some(w.clone()),
                    _ => None,
                });
                if let Some(w) = w {
                    return Ok(inner.new_fh(Handle::Write(w)));
                }
                let (key, dir) = inner.key_of(ino.0)?;
                if dir {
                    return Err(libc::EISDIR);
                }
                let size = lock(&inner.nodes).by_ino.get(&ino.0).map(|n| n.size).unwrap_or(0);
                Ok(inner.new_fh(Handle::Read(Arc::new(Reader {
                    key,
                    size,
                    chunks: Mutex::default(),
                    last_end: AtomicU64::new(0),
                }))))
            }
            .await;
            match r {
                Ok(fh) => {
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                    Ok(())
                }
                Err(e) => {
                    reply.error(errno(e));
                    Err(e)
                }
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let inner = self.inner.clone();
        self.go(async move {
            match inner.read(fh.0, offset, size).await {
                Ok(b) => {
                    reply.data(&b);
                    Ok(())
                }
                Err(e) => {
                    reply.error(errno(e));
                    Err(e)
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(w) = self.inner.writer(fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        // Written into the page cache at once, on this thread: nothing to wait for.
        self.inner.counters.operations.fetch_add(1, Ordering::Relaxed);
        let r = w.file.write_all_at(data, offset);
        match r {
            Ok(()) => {
                let end = offset + data.len() as u64;
                let size = self.rt.block_on(async {
                    let mut st = w.state.lock().await;
                    st.size = st.size.max(end);
                    st.dirty = true;
                    st.size
                });
                if let Some(n) = lock(&self.inner.nodes).by_ino.get_mut(&ino.0) {
                    n.size = size;
                }
                self.inner
                    .counters
                    .bytes_written
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                reply.written(data.len() as u32);
            }
            Err(e) => {
                self.inner.counters.errors.fetch_add(1, Ordering::Relaxed);
                reply.error(errno(e.raw_os_error().unwrap_or(libc::EIO)));
            }
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        self.sync(fh, reply);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.sync(fh, reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        self.go(async move {
            // Anything written since the last flush goes up before the handle is let go.
            let r = match inner.writer(fh.0) {
                Some(w) => inner.upload(&w).await,
                None => Ok(()),
            };
            lock(&inner.handles).remove(&fh.0);
            empty(reply, r)
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let inner = self.inner.clone();
        self.go(async move {
            match inner.opendir(ino.0).await {
                Ok(fh) => {
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                    Ok(())
                }
                Err(e) => {
                    reply.error(errno(e));
                    Err(e)
                }
            }
        });
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = match lock(&self.inner.handles).get(&fh.0) {
            Some(Handle::Dir(e)) => e.clone(),
            _ => {
                reply.error(Errno::EBADF);
                return;
            }
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.inner.handles).remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A bucket has no size: report a large, fixed one (as ossfs and s3fs do), so tools that
        // check for free space go on.
        let blocks = 1u64 << 36;
        reply.statfs(blocks, blocks, blocks, 1 << 32, 1 << 32, 4096, 1024, 4096);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let inner = self.inner.clone();
        let name = name.to_string_lossy().into_owned();
        self.go(async move {
            match inner.create(parent.0, &name).await {
                Ok((a, fh)) => {
                    reply.created(&KERNEL_TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty());
                    Ok(())
                }
                Err(e) => {
                    reply.error(errno(e));
                    Err(e)
                }
            }
        });
    }
}

impl ObjectFs {
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let inner = self.inner.clone();
        let name = name.to_string_lossy().into_owned();
        self.go(async move { empty(reply, inner.remove(parent.0, &name, dir).await) });
    }

    fn sync(&self, fh: FileHandle, reply: ReplyEmpty) {
        let inner = self.inner.clone();
        self.go(async move {
            let r = match inner.writer(fh.0) {
                Some(w) => inner.upload(&w).await,
                None => Ok(()),
            };
            empty(reply, r)
        });
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), i32>) -> Result<(), i32> {
    match r {
        Ok(()) => {
            reply.ok();
            Ok(())
        }
        Err(e) => {
            reply.error(errno(e));
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_join_and_split_at_the_last_slash() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a/b", "c"), "a/b/c");
        assert_eq!(split("a/b/c"), ("a/b", "c"));
        assert_eq!(split("c"), ("", "c"));
    }

    #[test]
    fn renaming_a_directory_moves_every_inode_under_it() {
        let mut n = Nodes::default();
        let c = Child {
            dir: false,
            size: 1,
            mtime: SystemTime::UNIX_EPOCH,
        };
        let a = n.upsert("d/a", c);
        let b = n.upsert("d/sub/b", c);
        let other = n.upsert("dx/a", c);
        n.rekey("d", "e");
        assert_eq!(n.by_key.get("e/a"), Some(&a));
        assert_eq!(n.by_key.get("e/sub/b"), Some(&b));
        assert_eq!(n.by_key.get("dx/a"), Some(&other));
        assert_eq!(n.by_ino[&b].key, "e/sub/b");
        assert!(!n.by_key.contains_key("d/a"));
    }
}
