//! The NAS volume as a FUSE file system speaking NFSv3 (the `nfs3_client` crate) to the
//! export, for hosts whose kernel has no NFS client (this one's has none; production hosts
//! mount with the kernel's and never run this).
//!
//! - **Calls.** Each FUSE call is one or a few NFSv3 calls (LOOKUP, GETATTR, SETATTR, READ,
//!   WRITE, COMMIT, CREATE, MKDIR, REMOVE, RMDIR, RENAME, SYMLINK, READLINK, LINK,
//!   READDIRPLUS, FSSTAT), run on the tokio runtime and answered from there; a pool of TCP
//!   connections carries them, one call in flight on each, so reads and writes of many files
//!   (and the kernel's read-ahead of one) go side by side.
//! - **Writes** are sent UNSTABLE as they come and answered at once (write-behind, at most
//!   [`WRITES_IN_FLIGHT`] per file); `close` (flush) and `fsync` wait for them and COMMIT, and
//!   report any error, as the kernel's NFS client does.
//! - **Names.** READDIRPLUS answers carry handles and attributes; they are kept for
//!   [`DENTRY_TTL`] so an `ls -l` after a listing makes no LOOKUP per name.
//! - **Identity.** The mount process is a trusted client (AUTH_UNIX root, as the kernel's
//!   mount is on the host); the kernel checks each caller's permissions against the server's
//!   owners and modes (`default_permissions`), and new files are made with the caller's ids.
//! - **Failures.** A call that does not answer within [`CALL_TIMEOUT`], or whose connection
//!   broke, fails with `EIO` and its connection is made again on the next call, so a server
//!   that goes away gives `EIO` and one that comes back serves again.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::FutureExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};

use crate::fuse::FsCounters;

/// How long one NFS call may take before it fails with EIO.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Writes of one file sent and not yet answered, at most.
pub const WRITES_IN_FLIGHT: usize = 16;
/// How long names and attributes from a listing answer lookups.
pub const DENTRY_TTL: Duration = Duration::from_secs(1);
/// How long the kernel may keep an entry or attributes.
const KERNEL_TTL: Duration = Duration::from_secs(1);

type Client = nfs3_client::Nfs3Client<TokioIo<tokio::net::TcpStream>>;

/// Where the export is.
#[derive(Clone, Debug)]
pub struct Export {
    pub host: String,
    /// The NFS and MOUNT ports; `None` asks the server's portmapper (port 111).
    pub nfs_port: Option<u16>,
    pub mount_port: Option<u16>,
    /// The exported path, and the directory under it the volume is (`""` for the export).
    pub path: String,
    pub subdir: String,
    pub read_only: bool,
    /// Connections to the server (one call in flight on each).
    pub connections: usize,
}

/// A connection pool to one export.
pub struct Pool {
    export: Export,
    slots: Vec<tokio::sync::Mutex<Option<Client>>>,
    next: AtomicUsize,
    pub counters: Arc<FsCounters>,
}

fn root_auth() -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 0,
        machinename: Opaque::owned(b"nodeless".to_vec()),
        uid: 0,
        gid: 0,
        gids: vec![],
    })
}

/// An NFS call's failure, as an errno.
pub fn errno_of(s: nfsstat3) -> i32 {
    match s {
        nfsstat3::NFS3ERR_PERM => libc::EPERM,
        nfsstat3::NFS3ERR_NOENT => libc::ENOENT,
        nfsstat3::NFS3ERR_IO => libc::EIO,
        nfsstat3::NFS3ERR_NXIO => libc::ENXIO,
        nfsstat3::NFS3ERR_ACCES => libc::EACCES,
        nfsstat3::NFS3ERR_EXIST => libc::EEXIST,
        nfsstat3::NFS3ERR_XDEV => libc::EXDEV,
        nfsstat3::NFS3ERR_NODEV => libc::ENODEV,
        nfsstat3::NFS3ERR_NOTDIR => libc::ENOTDIR,
        nfsstat3::NFS3ERR_ISDIR => libc::EISDIR,
        nfsstat3::NFS3ERR_INVAL => libc::EINVAL,
        nfsstat3::NFS3ERR_FBIG => libc::EFBIG,
        nfsstat3::NFS3ERR_NOSPC => libc::ENOSPC,
        nfsstat3::NFS3ERR_ROFS => libc::EROFS,
        nfsstat3::NFS3ERR_MLINK => libc::EMLINK,
        nfsstat3::NFS3ERR_NAMETOOLONG => libc::ENAMETOOLONG,
        nfsstat3::NFS3ERR_NOTEMPTY => libc::ENOTEMPTY,
        nfsstat3::NFS3ERR_DQUOT => libc::EDQUOT,
        nfsstat3::NFS3ERR_STALE | nfsstat3::NFS3ERR_BADHANDLE => libc::ESTALE,
        nfsstat3::NFS3ERR_NOTSUPP => libc::EOPNOTSUPP,
        nfsstat3::NFS3ERR_JUKEBOX => libc::EAGAIN,
        _ => libc::EIO,
    }
}

/// Turn an NFS result into the ok value or an errno.
fn ok<T, E>(r: Nfs3Result<T, E>) -> Result<T, i32> {
    match r {
        Nfs3Result::Ok(v) => Ok(v),
        Nfs3Result::Err((s, _)) => Err(errno_of(s)),
    }
}

impl Pool {
    pub fn new(export: Export) -> Pool {
        let n = export.connections.max(1);
        Pool {
            slots: (0..n).map(|_| tokio::sync::Mutex::new(None)).collect(),
            export,
            next: AtomicUsize::new(0),
            counters: Arc::default(),
        }
    }

    /// MOUNT the export: its root handle (and, with a `subdir`, the handle of that directory).
    pub async fn connect(&self) -> Result<(Client, nfs_fh3), String> {
        let e = &self.export;
        let mut b = Nfs3ConnectionBuilder::new(TokioConnector, e.host.clone(), e.path.clone())
            .connect_from_privileged_port(false)
            .credential(root_auth());
        if let Some(p) = e.nfs_port {
            b = b.nfs3_port(p);
        }
        if let Some(p) = e.mount_port {
            b = b.mount_port(p);
        }
        let conn = tokio::time::timeout(CALL_TIMEOUT, b.mount())
            .await
            .map_err(|_| {
                format!(
                    "{}:{} did not answer within {} s",
                    e.host,
                    e.path,
                    CALL_TIMEOUT.as_secs()
                )
            })?
            .map_err(|err| format!("mounting {}:{}: {err}", e.host, e.path))?;
        let root = conn.root_nfs_fh3();
        Ok((conn.into_nfs3_client(), root))
    }

    /// Run `f` on a pooled connection (made again if it broke), bounded by [`CALL_TIMEOUT`].
    pub async fn call<T, F>(&self, f: F) -> Result<T, i32>
    where
        F: for<'c> FnOnce(&'c mut Client) -> futures::future::BoxFuture<'c, Result<T, nfs3_client::RpcError>>,
    {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if slot.is_none() {
            match self.connect().await {
                Ok((c, _)) => *slot = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "NFS server unreachable");
                    self.counters.request_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(libc::EIO);
                }
            }
        }
        let Some(client) = slot.as_mut() else {
            return Err(libc::EIO);
        };
        match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "NFS call failed; its connection is dropped");
                *slot = None;
                self.counters.request_errors.fetch_add(1, Ordering::Relaxed);
                Err(libc::EIO)
            }
            Err(_) => {
                tracing::warn!("an NFS call did not answer in time; its connection is dropped");
                *slot = None;
                self.counters.request_errors.fetch_add(1, Ordering::Relaxed);
                Err(libc::EIO)
            }
        }
    }
}

fn name3(name: &str) -> filename3<'static> {
    filename3(Opaque::owned(name.as_bytes().to_vec()))
}

fn kind_of(t: ftype3) -> FileType {
    match t {
        ftype3::NF3DIR => FileType::Directory,
        ftype3::NF3LNK => FileType::Symlink,
        ftype3::NF3BLK => FileType::BlockDevice,
        ftype3::NF3CHR => FileType::CharDevice,
        ftype3::NF3SOCK => FileType::Socket,
        ftype3::NF3FIFO => FileType::NamedPipe,
        ftype3::NF3REG => FileType::RegularFile,
    }
}

struct Node {
    fh: nfs_fh3,
    lookups: u64,
}

#[derive(Default)]
struct Nodes {
    by_ino: HashMap<u64, Node>,
    by_fh: HashMap<Vec<u8>, u64>,
    next: u64,
}

impl Nodes {
    fn ino(&mut self, fh: &nfs_fh3) -> u64 {
        if let Some(&i) = self.by_fh.get(fh.data.as_ref()) {
            return i;
        }
        self.next += 1;
        let i = self.next;
        self.by_fh.insert(fh.data.to_vec(), i);
        self.by_ino.insert(
            i,
            Node {
                fh: fh.clone(),
                lookups: 0,
            },
        );
        i
    }
}

/// Chunks of an open file fetched ahead of a reader going forward.
#[derive(Default)]
struct Ahead {
    ino: u64,
    chunks: Mutex<std::collections::BTreeMap<u64, Chunk>>,
    furthest: AtomicU64,
}

type Chunk = futures::future::Shared<futures::future::BoxFuture<'static, Result<(bytes::Bytes, bool), i32>>>;

/// Chunks (of the server's `rtmax`) fetched ahead of a sequential reader.
pub const READ_AHEAD_CHUNKS: u64 = 8;

/// A file open for writing: its writes in flight and the first error of any.
#[derive(Default)]
struct Writes {
    tasks: Mutex<Vec<tokio::task::JoinHandle<Result<(), i32>>>>,
    error: Mutex<Option<i32>>,
    dirty: std::sync::atomic::AtomicBool,
}

/// The file system; mount it with fuser.
pub struct NfsFs {
    rt: tokio::runtime::Handle,
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    read_only: bool,
    nodes: Mutex<Nodes>,
    /// (parent inode, name) → (handle, attributes), from listings.
    dentries: moka::sync::Cache<(u64, String), (nfs_fh3, fattr3)>,
    writes: Mutex<HashMap<u64, Arc<Writes>>>,
    /// Read-ahead of each open file (by FUSE handle: a new open reads anew).
    ahead: Mutex<HashMap<u64, Arc<Ahead>>>,
    next_fh: AtomicU64,
    /// Largest READ and WRITE the server takes (FSINFO).
    rtmax: u32,
    wtmax: u32,
    sem: Arc<tokio::sync::Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NfsFs {
    /// Connect to the export (its subdirectory looked up), ready to mount.
    pub async fn connect(export: Export, rt: tokio::runtime::Handle) -> Result<NfsFs, String> {
        let read_only = export.read_only;
        let subdir = export.subdir.clone();
        let pool = Pool::new(export);
        let (mut client, mut root) = pool.connect().await?;
        for part in subdir.split('/').filter(|p| !p.is_empty()) {
            let r = client
                .lookup(&LOOKUP3args {
                    what: diropargs3 {
                        dir: root.clone(),
                        name: name3(part),
                    },
                })
                .await
                .map_err(|e| format!("looking up {subdir:?}: {e}"))?;
            root = match r {
                Nfs3Result::Ok(ok) => ok.object,
                Nfs3Result::Err((s, _)) => return Err(format!("{subdir:?} on the export: {s:?}")),
            };
        }
        let info = client
            .fsinfo(&FSINFO3args { fsroot: root.clone() })
            .await
            .map_err(|e| format!("FSINFO: {e}"))?;
        let (rtmax, wtmax) = match info {
            Nfs3Result::Ok(i) => (i.rtmax.clamp(4096, 1 << 20), i.wtmax.clamp(4096, 1 << 20)),
            Nfs3Result::Err(_) => (1 << 16, 1 << 16),
        };
        *pool.slots[0].lock().await = Some(client);
        let mut nodes = Nodes {
            next: 1,
            ..Default::default()
        };
        nodes.by_fh.insert(root.data.to_vec(), 1);
        nodes.by_ino.insert(1, Node { fh: root, lookups: 1 });
        Ok(NfsFs {
            rt,
            inner: Arc::new(Inner {
                pool,
                read_only,
                nodes: Mutex::new(nodes),
                dentries: moka::sync::Cache::builder()
                    .time_to_live(DENTRY_TTL)
                    .max_capacity(100_000)
                    .build(),
                writes: Mutex::default(),
                ahead: Mutex::default(),
                next_fh: AtomicU64::new(1),
                rtmax,
                wtmax,
                sem: Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT)),
            }),
        })
    }

    pub fn counters(&self) -> Arc<FsCounters> {
        self.inner.pool.counters.clone()
    }

    fn go<F>(&self, f: F)
    where
        F: std::future::Future<Output = Result<(), i32>> + Send + 'static,
    {
        let c = self.inner.pool.counters.clone();
        c.operations.fetch_add(1, Ordering::Relaxed);
        self.rt.spawn(async move {
            if f.await.is_err() {
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

impl Inner {
    fn fh(&self, ino: u64) -> Result<nfs_fh3, i32> {
        lock(&self.nodes)
            .by_ino
            .get(&ino)
            .map(|n| n.fh.clone())
            .ok_or(libc::ESTALE)
    }

    fn attr(&self, ino: u64, a: &fattr3) -> FileAttr {
        let t = |x: &nfstime3| SystemTime::from(x);
        FileAttr {
            ino: INodeNo(ino),
            size: a.size,
            blocks: a.used.div_ceil(512),
            atime: t(&a.atime),
            mtime: t(&a.mtime),
            ctime: t(&a.ctime),
            crtime: t(&a.ctime),
            kind: kind_of(a.type_),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: (a.rdev.specdata1 << 8) | a.rdev.specdata2,
            blksize: self.wtmax,
            flags: 0,
        }
    }

    /// An entry the kernel now holds a reference to.
    fn entry(&self, fh: &nfs_fh3, a: &fattr3) -> FileAttr {
        let mut nodes = lock(&self.nodes);
        let ino = nodes.ino(fh);
        if let Some(n) = nodes.by_ino.get_mut(&ino) {
            n.lookups += 1;
        }
        self.attr(ino, a)
    }

    async fn getattr_fh(&self, fh: nfs_fh3) -> Result<fattr3, i32> {
        let r = self
            .pool
            .call(move |c| Box::pin(async move { c.getattr(&GETATTR3args { object: fh }).await }))
            .await?;
        Ok(ok(r)?.obj_attributes)
    }

    async fn lookup(&self, parent: u64, name: &str) -> Result<FileAttr, i32> {
        if let Some((fh, a)) = self.dentries.get(&(parent, name.to_string())) {
            return Ok(self.entry(&fh, &a));
        }
        let dir = self.fh(parent)?;
        let n = name3(name);
        let r = self
            .pool
            .call(move |c| {
                Box::pin(async move {
                    c.lookup(&LOOKUP3args {
                        what: diropargs3 { dir, name: n },
                    })
                    .await
                })
            })
            .await?;
        let r = ok(r)?;
        let a = match r.obj_attributes {
            Nfs3Option::Some(a) => a,
            Nfs3Option::None => self.getattr_fh(r.object.clone()).await?,
        };
        Ok(self.entry(&r.object, &a))
    }

    fn forget(&self, ino: u64, n: u64) {
        if ino == 1 {
            return;
        }
        let mut nodes = lock(&self.nodes);
        let gone = nodes.by_ino.get_mut(&ino).is_some_and(|node| {
            node.lookups = node.lookups.saturating_sub(n);
            node.lookups == 0
        });
        if gone {
            if let Some(node) = nodes.by_ino.remove(&ino) {
                nodes.by_fh.remove(node.fh.data.as_ref());
            }
        }
    }

    async fn setattr(&self, ino: u64, s: sattr3) -> Result<FileAttr, i32> {
        if self.read_only {
            return Err(libc::EROFS);
        }
        let fh = self.fh(ino)?;
        let f2 = fh.clone();
        let r = self
            .pool
            .call(move |c| {
                Box::pin(async move {
                    c.setattr(&SETATTR3args {
                        object: f2,
                        new_attributes: s,
                        guard: Nfs3Option::None,
                    })
                    .await
                })
            })
            .await?;
        let r = ok(r)?;
        let a = match r.obj_wcc.after {
            Nfs3Option::Some(a) => a,
            Nfs3Option::None => self.getattr_fh(fh).await?,
        };
        Ok(self.attr(ino, &a))
    }

    /// One READ of `count` bytes at `offset`: the bytes and whether the file ends there.
    async fn read_once(&self, file: nfs_fh3, offset: u64, count: u32) -> Result<(bytes::Bytes, bool), i32> {
        let r = self
            .pool
            .call(move |c| Box::pin(async move { c.read(&READ3args { file, offset, count }).await }))
            .await?;
        let r = ok(r)?;
        Ok((bytes::Bytes::from(r.data.into_owned()), r.eof))
    }

    /// Read through the open file's chunks (of `rtmax`), fetching up to [`READ_AHEAD_CHUNKS`]
    /// ahead while the reader goes forward; a file written through this handle is read
    /// directly (its writes land first).
    async fn read(self: &Arc<Self>, ino: u64, fh: u64, offset: u64, size: u32) -> Result<bytes::Bytes, i32> {
        let file = self.fh(ino)?;
        if lock(&self.writes).contains_key(&fh) {
            self.flush(ino, fh).await?;
            let (data, _) = self.read_once(file, offset, size.min(self.rtmax)).await?;
            return Ok(data);
        }
        let ahead = lock(&self.ahead)
            .entry(fh)
            .or_insert_with(|| {
                Arc::new(Ahead {
                    ino,
                    ..Default::default()
                })
            })
            .clone();
        let part = self.rtmax as u64;
        let end = offset + size as u64;
        let first = offset / part;
        let last = (end - 1) / part;
        let furthest = ahead.furthest.fetch_max(end, Ordering::Relaxed);
        let sequential = offset == 0 || offset.abs_diff(furthest) <= part;
        let reach = if sequential { last + READ_AHEAD_CHUNKS } else { last };
        let wanted: Vec<Chunk> = {
            let mut chunks = lock(&ahead.chunks);
            chunks.retain(|&i, _| i + 2 >= first && i <= last + READ_AHEAD_CHUNKS + 1);
            for i in first..=reach {
                chunks.entry(i).or_insert_with(|| {
                    let me = self.clone();
                    let file = file.clone();
                    let t = tokio::spawn(async move { me.read_once(file, i * part, part as u32).await });
                    async move { t.await.unwrap_or(Err(libc::EIO)) }.boxed().shared()
                });
            }
            (first..=last).filter_map(|i| chunks.get(&i).cloned()).collect()
        };
        let mut pieces = Vec::with_capacity(wanted.len());
        for (n, c) in wanted.into_iter().enumerate() {
            let (data, eof) = c.await?;
            let base = (first + n as u64) * part;
            let from = (offset.max(base) - base) as usize;
            let to = ((end.min(base + part)) - base) as usize;
            if from < data.len() {
                // A slice of the chunk: no copy.
                pieces.push(data.slice(from..to.min(data.len())));
            }
            if eof || data.len() < part as usize {
                break;
            }
        }
        let out = match pieces.len() {
            0 => bytes::Bytes::new(),
            1 => pieces.pop().unwrap_or_default(),
            _ => pieces.concat().into(),
        };
        self.pool
            .counters
            .bytes_read
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    fn writes_of(&self, fh: u64) -> Arc<Writes> {
        lock(&self.writes).entry(fh).or_default().clone()
    }

    /// Send a write, answering before the server does (its error comes at flush).
    async fn write(self: &Arc<Self>, ino: u64, fh: u64, offset: u64, data: Vec<u8>) -> Result<u32, i32> {
        if self.read_only {
            return Err(libc::EROFS);
        }
        // What was read ahead of this file is no longer what it holds.
        {
            let mut ahead = lock(&self.ahead);
            if !ahead.is_empty() {
                ahead.retain(|_, a| a.ino != ino);
            }
        }
        let w = self.writes_of(fh);
        if let Some(e) = *lock(&w.error) {
            return Err(e);
        }
        let file = self.fh(ino)?;
        let len = data.len() as u32;
        let permit = self.sem.clone().acquire_owned().await.map_err(|_| libc::EIO)?;
        w.dirty.store(true, Ordering::Relaxed);
        let me = self.clone();
        let w2 = w.clone();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let mut off = offset;
            for chunk in data.chunks(me.wtmax as usize) {
                let file = file.clone();
                let bytes = chunk.to_vec();
                let n = bytes.len() as u32;
                let r = me
                    .pool
                    .call(move |c| {
                        Box::pin(async move {
                            c.write(&WRITE3args {
                                file,
                                offset: off,
                                count: n,
                                stable: stable_how::UNSTABLE,
                                data: Opaque::owned(bytes),
                            })
                            .await
                        })
                    })
                    .await
                    .and_then(ok);
                match r {
                    Ok(res) if res.count == n => {}
                    Ok(_) => {
                        *lock(&w2.error) = Some(libc::EIO);
                        return Err(libc::EIO);
                    }
                    Err(e) => {
                        lock(&w2.error).get_or_insert(e);
                        return Err(e);
                    }
                }
                off += n as u64;
            }
            me.pool
                .counters
                .bytes_written
                .fetch_add(off - offset, Ordering::Relaxed);
            Ok(())
        });
        let mut tasks = lock(&w.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        Ok(len)
    }

    /// Wait for a file's writes, COMMIT them, and report the first error.
    async fn flush(&self, ino: u64, fh: u64) -> Result<(), i32> {
        let Some(w) = lock(&self.writes).get(&fh).cloned() else {
            return Ok(());
        };
        let tasks: Vec<_> = std::mem::take(&mut *lock(&w.tasks));
        for t in tasks {
            let _ = t.await;
        }
        if let Some(e) = lock(&w.error).take() {
            return Err(e);
        }
        if w.dirty.swap(false, Ordering::Relaxed) {
            let file = self.fh(ino)?;
            let r = self
                .pool
                .call(move |c| {
                    Box::pin(async move {
                        c.commit(&COMMIT3args {
                            file,
                            offset: 0,
                            count: 0,
                        })
                        .await
                    })
                })
                .await?;
            ok(r)?;
        }
        Ok(())
    }

    async fn create(&self, parent: u64, name: &str, mode: u32, uid: u32, gid: u32) -> Result<FileAttr, i32> {
        if self.read_only {
            return Err(libc::EROFS);
        }
        let dir = self.fh(parent)?;
        let n = name3(name);
        let attrs = sattr3 {
            mode: Nfs3Option::Some(mode & 0o7777),
            uid: Nfs3Option::Some(uid),
            gid: Nfs3Option::Some(gid),
            ..Default::default()
        };
        let r = self
            .pool
            .call(move |c| {
                Box::pin(async move {
                    c.create(&CREATE3args {
                        where_: diropargs3 { dir, name: n },
                        how: createhow3::UNCHECKED(attrs),
                    })
                    .await
                })
            })
            .await?;
        let r = ok(r)?;
        self.made(parent, name, r.obj, r.obj_attributes).await
    }

    /// The entry of something just made (its handle and attributes, looked up if the answer
    /// lacked them).
    async fn made(&self, parent: u64, name: &str, fh: post_op_fh3, a: post_op_attr) -> Result<FileAttr, i32> {
        self.dentries.invalidate(&(parent, name.to_string()));
        let fh = match fh {
            Nfs3Option::Some(fh) => fh,
            Nfs3Option::None => return self.lookup(parent, name).await,
        };
        let a = match a {
            Nfs3Option::Some(a) => a,
            Nfs3Option::None => self.getattr_fh(fh.clone()).await?,
        };
        Ok(self.entry(&fh, &a))
    }

    async fn mkdir(&self, parent: u64, name: &str, mode: u32, uid: u32, gid: u32) -> Result<FileAttr, i32> {
        if self.read_only {
            return Err(libc::EROFS);
        }
        let dir = self.fh(parent)?;
        let n = name3(name);
        let attributes = sattr3 {
            mode: Nfs3Option::Some(mode & 0o7777),
            uid: Nfs3Option::Some(uid),
            gid: Nfs3Option::Some(gid),
            ..Default::default()
        };
        let r = self
            .pool
            .call(move |c| {
                Box::pin(async move {
                    c.mkdir(&MKDIR3args {
                        where_: diropargs3 { dir, name: n },
                        attributes,
                    })
                    .await
                })
            })
            .await?;
        let r = ok(r)?;
        self.made(parent, name, r.obj, r.obj_attributes).await
    }

    async fn remove(&self, parent: u64, name: &str, dir: bool) -> Result<(), i32> {
        if self.read_only {
            return Err(libc::EROFS);
        }
        self.dentries.invalidate(&(parent, name.to_string()));
        let d = self.fh(parent)?;
        let n = name3(name);
        if dir {
            let r = self
                .pool
                .call(move |c| {
                    Box::pin(async move {
                        c.rmdir(&RMDIR3args {
                            object: diropargs3 { dir: d, name: n },
                        })
                        .await
                    })
                })
                .await?;
            ok(r).map(|_| ())
        } else {
            let r = self
                .pool
                .call(move |c| {
                    Box::pin(async move {
                        c.remove(&REMOVE3args {
                            object: diropargs3 { dir: d, name: n },
                        })
                        .await
                    })
                })
                .await?;
            ok(r).map(|_| ())
        }
    }

    async fn rename(&self, parent: u64, name: &str, newparent: u64, newname: &str) -> Result<(), i32> {
        if self.read_only {
            return Err(libc::EROFS);
        }
        self.dentries.invalidate(&(parent, name.to_string()));
        self.dentries.invalidate(&(newparent, newname.to_string()));
        let from = self.fh(parent)?;
        let to = self.fh(newparent)?;
        let (n1, n2) = (name3(name), name3(newname));
        let r = self
            .pool
            .call(move |c| {
                Box::pin(async move {
                    c.rename(&RENAME3args {
                        from: diropargs3 { dir: from, name: n1 },
                        to: diropargs3 { dir: to, name: n2 },
                    })
                    .await
                })
            })
            .await?;
        ok(r).map(|_| ())
    }

    async fn readlink(&self, ino: u64) -> Result<Vec<u8>, i32> {
        let symlink = self.fh(ino)?;
        let r = self
            .pool
            .call(move |c| Box::pin(async move { c.readlink(&READLINK3args { symlink }).await }))
            .await?;
        Ok(ok(r)?.data.0.to_vec())
    }

    async fn symlink(&self, parent: u64, name: &str, target: &[u8], uid: u32, gid: u32) -> Result<FileAttr, i32> {
        if self.read_only {
            return Err(libc::EROFS);
        }
        let dir = self.fh(parent)?;
        let n = name3(name);
        let data = nfspath3(Opaque::owned(target.to_vec()));
        let r = self
            .pool
            .call(move |c| {
                Box::pin(async move {
                    c.symlink(&SYMLINK3args {
                        where_: diropargs3 { dir, name: n },
                        symlink: symlinkdata3 {
                            symlink_attributes: sattr3 {
                                uid: Nfs3Option::Some(uid),
                                gid: Nfs3Option::Some(gid),
                                ..Default::default()
                            },
                            symlink_data: data,
                        },
                    })
                    .await
                })
            })
            .await?;
        let r = ok(r)?;
        self.made(parent, name, r.obj, r.obj_attributes).await
    }

    /// One READDIRPLUS page from `cookie`: (cookie, inode, kind, name) of each entry, and
    /// whether it was the last page. Names and attributes answer lookups for a moment.
    async fn readdir(
        &self,
        ino: u64,
        cookie: u64,
        verf: cookieverf3,
    ) -> Result<(Vec<(u64, u64, FileType, String)>, bool, cookieverf3), i32> {
        let dir = self.fh(ino)?;
        let r = self
            .pool
            .call(move |c| {
                Box::pin(async move {
                    c.readdirplus(&READDIRPLUS3args {
                        dir,
                        cookie,
                        cookieverf: verf,
                        dircount: 64 * 1024,
                        maxcount: 256 * 1024,
                    })
                    .await
                })
            })
            .await?;
        let r = ok(r)?;
        let mut out = Vec::new();
        let mut nodes = lock(&self.nodes);
        for e in r.reply.entries.into_inner() {
            let name = String::from_utf8_lossy(e.name.0.as_ref()).into_owned();
            let (child, kind) = match (e.name_handle, e.name_attributes) {
                (Nfs3Option::Some(fh), Nfs3Option::Some(a)) => {
                    let i = if name == "." {
                        ino
                    } else if name == ".." {
                        1
                    } else {
                        nodes.ino(&fh)
                    };
                    let kind = kind_of(a.type_);
                    if name != "." && name != ".." {
                        self.dentries.insert((ino, name.clone()), (fh, a));
                    }
                    (i, kind)
                }
                _ => (e.fileid | (1 << 63), FileType::RegularFile),
            };
            out.push((e.cookie, child, kind, name));
        }
        Ok((out, r.reply.eof, r.cookieverf))
    }

    async fn statfs(&self) -> Result<FSSTAT3resok, i32> {
        let fsroot = self.fh(1)?;
        let r = self
            .pool
            .call(move |c| Box::pin(async move { c.fsstat(&FSSTAT3args { fsroot }).await }))
            .await?;
        ok(r)
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn opt<T: nfs3_client::nfs3_types::xdr_codec::Pack + nfs3_client::nfs3_types::xdr_codec::Unpack>(
    v: Option<T>,
) -> Nfs3Option<T> {
    match v {
        Some(v) => Nfs3Option::Some(v),
        None => Nfs3Option::None,
    }
}

fn time_of(t: Option<TimeOrNow>) -> (set_atime, set_mtime) {
    match t {
        None => (set_atime::DONT_CHANGE, set_mtime::DONT_CHANGE),
        Some(TimeOrNow::Now) => (set_atime::SET_TO_SERVER_TIME, set_mtime::SET_TO_SERVER_TIME),
        Some(TimeOrNow::SpecificTime(t)) => match nfstime3::try_from(t) {
            Ok(n) => (set_atime::SET_TO_CLIENT_TIME(n), set_mtime::SET_TO_CLIENT_TIME(n)),
            Err(_) => (set_atime::DONT_CHANGE, set_mtime::DONT_CHANGE),
        },
    }
}

macro_rules! answer {
    ($reply:ident, $r:expr, |$v:ident| $ok:expr) => {
        match $r {
            Ok($v) => {
                $ok;
                Ok(())
            }
            Err(e) => {
                $reply.error(errno(e));
                Err(e)
            }
        }
    };
}

impl fuser::Filesystem for NfsFs {
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
                    if e == libc::ENOENT { Ok(()) } else { Err(e) }
                }
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inner.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let inner = self.inner.clone();
        self.go(async move {
            let r = async {
                let fh = inner.fh(ino.0)?;
                let a = inner.getattr_fh(fh).await?;
                Ok(inner.attr(ino.0, &a))
            }
            .await;
            answer!(reply, r, |a| reply.attr(&KERNEL_TTL, &a))
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
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
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
            // Writes before a truncation land before it.
            if size.is_some() {
                if let Some(f) = fh {
                    inner.flush(ino.0, f.0).await.ok();
                }
            }
            let s = sattr3 {
                mode: opt(mode.map(|m| m & 0o7777)),
                uid: opt(uid),
                gid: opt(gid),
                size: opt(size),
                atime: time_of(atime).0,
                mtime: time_of(mtime).1,
            };
            let r = inner.setattr(ino.0, s).await;
            answer!(reply, r, |a| reply.attr(&KERNEL_TTL, &a))
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let inner = self.inner.clone();
        self.go(async move { answer!(reply, inner.readlink(ino.0).await, |d| reply.data(&d)) });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let inner = self.inner.clone();
        let name = name.to_string_lossy().into_owned();
        let (uid, gid) = (req.uid(), req.gid());
        self.go(async move {
            let r = inner.mkdir(parent.0, &name, mode & !umask, uid, gid).await;
            answer!(reply, r, |a| reply.entry(&KERNEL_TTL, &a, Generation(0)))
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let inner = self.inner.clone();
        let name = name.to_string_lossy().into_owned();
        self.go(async move { answer!(reply, inner.remove(parent.0, &name, false).await, |_v| reply.ok()) });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let inner = self.inner.clone();
        let name = name.to_string_lossy().into_owned();
        self.go(async move { answer!(reply, inner.remove(parent.0, &name, true).await, |_v| reply.ok()) });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let inner = self.inner.clone();
        let name = link_name.to_string_lossy().into_owned();
        let target = target.as_os_str().as_encoded_bytes().to_vec();
        let (uid, gid) = (req.uid(), req.gid());
        self.go(async move {
            let r = inner.symlink(parent.0, &name, &target, uid, gid).await;
            answer!(reply, r, |a| reply.entry(&KERNEL_TTL, &a, Generation(0)))
        });
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
        if !flags.is_empty() {
            // NFSv3 has no exchange or no-replace rename.
            reply.error(Errno::EINVAL);
            return;
        }
        let inner = self.inner.clone();
        let name = name.to_string_lossy().into_owned();
        let newname = newname.to_string_lossy().into_owned();
        self.go(async move {
            let r = inner.rename(parent.0, &name, newparent.0, &newname).await;
            answer!(reply, r, |_v| reply.ok())
        });
    }

    fn open(&self, _req: &Request, _ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.inner.read_only && flags.acc_mode() != fuser::OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        let fh = self.inner.next_fh.fetch_add(1, Ordering::Relaxed);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let inner = self.inner.clone();
        self.go(async move { answer!(reply, inner.read(ino.0, fh.0, offset, size).await, |d| reply.data(&d)) });
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
        let inner = self.inner.clone();
        let data = data.to_vec();
        self.go(async move {
            let r = inner.write(ino.0, fh.0, offset, data).await;
            answer!(reply, r, |n| reply.written(n))
        });
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        let inner = self.inner.clone();
        self.go(async move { answer!(reply, inner.flush(ino.0, fh.0).await, |_v| reply.ok()) });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let inner = self.inner.clone();
        self.go(async move { answer!(reply, inner.flush(ino.0, fh.0).await, |_v| reply.ok()) });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        self.go(async move {
            let r = inner.flush(ino.0, fh.0).await;
            lock(&inner.writes).remove(&fh.0);
            lock(&inner.ahead).remove(&fh.0);
            answer!(reply, r, |_v| reply.ok())
        });
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.inner.next_fh.fetch_add(1, Ordering::Relaxed);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let inner = self.inner.clone();
        self.go(async move {
            // The offset the kernel gives back is the last entry's cookie (0 at the start).
            let mut cookie = offset;
            let mut verf = cookieverf3::default();
            loop {
                let (entries, eof, v) = match inner.readdir(ino.0, cookie, verf).await {
                    Ok(x) => x,
                    Err(e) => {
                        reply.error(errno(e));
                        return Err(e);
                    }
                };
                verf = v;
                for (c, child, kind, name) in entries {
                    if reply.add(INodeNo(child), c, kind, &name) {
                        reply.ok();
                        return Ok(());
                    }
                    cookie = c;
                }
                if eof {
                    reply.ok();
                    return Ok(());
                }
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let inner = self.inner.clone();
        self.go(async move {
            let r = inner.statfs().await;
            answer!(reply, r, |s| reply.statfs(
                s.tbytes / 4096,
                s.fbytes / 4096,
                s.abytes / 4096,
                s.tfiles,
                s.afiles,
                4096,
                255,
                4096
            ))
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let inner = self.inner.clone();
        let name = name.to_string_lossy().into_owned();
        let (uid, gid) = (req.uid(), req.gid());
        let fh = self.inner.next_fh.fetch_add(1, Ordering::Relaxed);
        self.go(async move {
            let r = inner.create(parent.0, &name, mode & !umask, uid, gid).await;
            answer!(reply, r, |a| reply.created(
                &KERNEL_TTL,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty()
            ))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfs_errors_become_errnos() {
        assert_eq!(errno_of(nfsstat3::NFS3ERR_NOENT), libc::ENOENT);
        assert_eq!(errno_of(nfsstat3::NFS3ERR_NOTEMPTY), libc::ENOTEMPTY);
        assert_eq!(errno_of(nfsstat3::NFS3ERR_STALE), libc::ESTALE);
        assert_eq!(errno_of(nfsstat3::NFS3ERR_SERVERFAULT), libc::EIO);
    }

    #[test]
    fn handles_get_one_inode_each() {
        let mut n = Nodes {
            next: 1,
            ..Default::default()
        };
        let a = nfs_fh3 {
            data: Opaque::owned(vec![1, 2, 3]),
        };
        let b = nfs_fh3 {
            data: Opaque::owned(vec![4]),
        };
        let ia = n.ino(&a);
        assert_eq!(n.ino(&a), ia);
        assert_ne!(n.ino(&b), ia);
        assert_eq!(ia, 2);
    }
}
