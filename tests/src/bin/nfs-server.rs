//! `nfs-server --listen ADDR [--export /export] [--root DIR]`: a small NFSv3 server over a local
//! directory, for the tests and benchmarks of the NAS CSI driver, which mount an export from it
//! instead of reaching a real NAS.
//!
//! The protocol (NFSv3, MOUNT v3 and a portmapper that only answers GETPORT with its own port, all
//! on one TCP port) is `nfs3_server`'s; this file adds [`DirFs`], its file system trait over
//! `std::fs`. A real directory rather than the crate's `MemFs`: `MemFs` keeps every file in one
//! `Vec` behind one lock, ignores a mode in SETATTR and refuses writes past the end of a file, and
//! a 512 MiB benchmark file should not live in the server's heap. Without `--root` it serves a
//! fresh temporary directory, removed on exit.
//!
//! Once the socket accepts connections it prints exactly one line, `listening IP:PORT`, so
//! `--listen 127.0.0.1:0` works; clients give that port as both the NFS and the MOUNT port. It
//! serves until SIGTERM or SIGINT and then exits 0. Log level: `RUST_LOG`; the default, `warn`,
//! leaves out `nfs3_server::nfs_handlers`, which logs every error status it answers (a GUARDED
//! CREATE of an existing name, a LOOKUP miss) as a warning or an error.
//!
//! Not a security boundary: any client, uid and source port is served, and files are made as the
//! server's user whatever uid the call carries. FSSTAT reports a fixed 1 TiB free (`nfs3_server`
//! answers it without asking the file system); there is no NLM, so kernel mounts need `nolock`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, Metadata, OpenOptions, Permissions};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use clap::Parser;
use nfs3_server::nfs3_types::nfs3::{
    Nfs3Option, createverf3, fattr3, filename3, ftype3, nfspath3, nfsstat3, nfstime3, sattr3, set_atime, set_mtime,
    specdata3, stable_how,
};
use nfs3_server::nfs3_types::xdr_codec::{Pack, Unpack};
use nfs3_server::tcp::{NFSTcp, NFSTcpListener};
use nfs3_server::vfs::{
    DirEntryPlus, FileHandleU64, NextResult, NfsFileSystem, NfsReadFileSystem, ReadDirPlusIterator,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::block_in_place;

/// What `RUST_LOG` defaults to: warnings, but none per request (see the module doc).
const DEFAULT_LOG: &str = "warn,nfs3_server::nfs_handlers=off";

/// The most one READ returns: what `nfs3_server`'s default FSINFO advertises as `rtmax`.
const READ_MAX: u32 = 1 << 20;

#[derive(Parser)]
#[command(about = "Serve a directory over NFSv3 (MOUNT and NFS on one TCP port) for tests")]
struct Args {
    /// Address to bind (IPv4); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The path clients mount.
    #[arg(long, default_value = "/export")]
    export: String,
    /// Directory to serve; a fresh temporary one if not given.
    #[arg(long)]
    root: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    if !args.listen.is_ipv4() {
        bail!("--listen {}: nfs3_server binds IPv4 addresses only", args.listen);
    }

    // Declared before the listener, so that a temporary root outlives it.
    let (root, _temp) = match args.root {
        Some(root) => (root, None),
        None => {
            let temp = tempfile::tempdir().context("creating a temporary root")?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let fs = DirFs::new(&root).with_context(|| format!("serving {}", root.display()))?;
    let mut listener = NFSTcpListener::bind(&args.listen.to_string(), fs)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    listener.with_export_name(&args.export);
    // Before the line, so that a signal sent as soon as it is read ends the server cleanly.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut stdout = io::stdout();
    writeln!(
        stdout,
        "listening {}:{}",
        listener.get_listen_ip(),
        listener.get_listen_port()
    )?;
    stdout.flush()?;

    tokio::select! {
        served = listener.handle_forever() => served.context("accepting connections")?,
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    Ok(())
}

/// `nfs3_server`'s file system trait over a directory. A handle is the inode number (also the
/// NFS fileid), mapped to the path it was last seen at by `paths`; every use checks that the path
/// still holds that inode, and answers `NFS3ERR_STALE` if not. Inode numbers are only unique on
/// one device, so the root should not have other file systems mounted below it.
#[derive(Clone)]
struct DirFs {
    root_id: u64,
    /// Reported for every file, so that clients never see a mount point inside the export.
    fsid: u64,
    paths: Arc<RwLock<HashMap<u64, PathBuf>>>,
}

impl DirFs {
    fn new(root: &Path) -> io::Result<Self> {
        let root = fs::canonicalize(root)?;
        let meta = fs::metadata(&root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
        }
        let paths = HashMap::from([(meta.ino(), root.clone())]);
        Ok(Self {
            root_id: meta.ino(),
            fsid: meta.dev(),
            paths: Arc::new(RwLock::new(paths)),
        })
    }

    /// The path of `id` and its metadata (not following a symlink).
    fn stat(&self, id: &FileHandleU64) -> Result<(PathBuf, Metadata), nfsstat3> {
        let path = self
            .paths
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id.as_u64())
            .cloned();
        let path = path.ok_or(nfsstat3::NFS3ERR_STALE)?;
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.ino() == id.as_u64() => Ok((path, meta)),
            Ok(_) => Err(nfsstat3::NFS3ERR_STALE),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(nfsstat3::NFS3ERR_STALE),
            Err(e) => Err(nfs_error(e)),
        }
    }

    /// The path of `name` in directory `dir`.
    fn child(&self, dir: &FileHandleU64, name: &filename3<'_>) -> Result<PathBuf, nfsstat3> {
        let name = name.as_ref();
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let (dir, meta) = self.stat(dir)?;
        if !meta.is_dir() {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        Ok(dir.join(OsStr::from_bytes(name)))
    }

    /// Records that `path` holds the file `meta` describes, and returns its handle and attributes.
    fn remember(&self, path: PathBuf, meta: &Metadata) -> (FileHandleU64, fattr3) {
        self.paths
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(meta.ino(), path);
        (FileHandleU64::new(meta.ino()), fattr(meta, self.fsid))
    }

    /// Opens the regular file `id`.
    fn open(&self, id: &FileHandleU64, options: &OpenOptions) -> Result<File, nfsstat3> {
        let (path, meta) = self.stat(id)?;
        if !meta.is_file() {
            return Err(not_file(&meta));
        }
        options.open(path).map_err(nfs_error)
    }

    /// Applies `set` to `path`, whose metadata was `meta`. Times and mode are left alone on a
    /// symlink (the calls would follow it).
    fn set_attr(path: &Path, meta: &Metadata, set: &sattr3) -> Result<(), nfsstat3> {
        let link = meta.is_symlink();
        let (uid, gid) = (some(set.uid), some(set.gid));
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(path, uid, gid).map_err(nfs_error)?;
        }
        if let Some(mode) = some(set.mode)
            && !link
        {
            fs::set_permissions(path, Permissions::from_mode(mode & 0o7777)).map_err(nfs_error)?;
        }
        if let Some(size) = some(set.size) {
            if !meta.is_file() {
                return Err(not_file(meta));
            }
            let file = OpenOptions::new().write(true).open(path).map_err(nfs_error)?;
            block_in_place(|| file.set_len(size)).map_err(nfs_error)?;
        }
        let mut times = FileTimes::new();
        let mut any = false;
        match set.atime {
            set_atime::DONT_CHANGE => {}
            set_atime::SET_TO_SERVER_TIME => (times, any) = (times.set_accessed(SystemTime::now()), true),
            set_atime::SET_TO_CLIENT_TIME(t) => (times, any) = (times.set_accessed(t.into()), true),
        }
        match set.mtime {
            set_mtime::DONT_CHANGE => {}
            set_mtime::SET_TO_SERVER_TIME => (times, any) = (times.set_modified(SystemTime::now()), true),
            set_mtime::SET_TO_CLIENT_TIME(t) => (times, any) = (times.set_modified(t.into()), true),
        }
        if any && !link {
            File::open(path).and_then(|f| f.set_times(times)).map_err(nfs_error)?;
        }
        Ok(())
    }

    /// Creates file `name` in `dir`; `exclusive` makes it fail if the name exists.
    fn create_file(
        &self,
        dir: &FileHandleU64,
        name: &filename3<'_>,
        set: &sattr3,
        exclusive: bool,
    ) -> Result<(PathBuf, Metadata), nfsstat3> {
        let path = self.child(dir, name)?;
        let mut options = OpenOptions::new();
        options
            .write(true)
            .mode(some(set.mode).map_or(0o644, |mode| mode & 0o7777));
        if exclusive {
            options.create_new(true)
        } else {
            options.create(true)
        };
        let file = options.open(&path).map_err(nfs_error)?;
        let meta = file.metadata().map_err(nfs_error)?;
        // The mode given to open() went through the umask; set it again if the client gave one.
        Self::set_attr(&path, &meta, set)?;
        let meta = file.metadata().map_err(nfs_error)?;
        Ok((path, meta))
    }
}

impl NfsReadFileSystem for DirFs {
    type Handle = FileHandleU64;

    fn root_dir(&self) -> FileHandleU64 {
        FileHandleU64::new(self.root_id)
    }

    async fn lookup(&self, dir: &FileHandleU64, name: &filename3<'_>) -> Result<FileHandleU64, nfsstat3> {
        let path = match name.as_ref() {
            b"." => return Ok(*dir),
            b".." if dir.as_u64() == self.root_id => return Ok(*dir),
            b".." => self
                .stat(dir)?
                .0
                .parent()
                .map(Path::to_path_buf)
                .ok_or(nfsstat3::NFS3ERR_NOENT)?,
            _ => self.child(dir, name)?,
        };
        let meta = fs::symlink_metadata(&path).map_err(nfs_error)?;
        Ok(self.remember(path, &meta).0)
    }

    async fn getattr(&self, id: &FileHandleU64) -> Result<fattr3, nfsstat3> {
        Ok(fattr(&self.stat(id)?.1, self.fsid))
    }

    async fn read(&self, id: &FileHandleU64, offset: u64, count: u32) -> Result<(Vec<u8>, bool), nfsstat3> {
        let file = self.open(id, OpenOptions::new().read(true))?;
        let count = count.min(READ_MAX);
        block_in_place(|| {
            let mut data = Vec::with_capacity(count as usize);
            (&file).seek(SeekFrom::Start(offset))?;
            (&file).take(count.into()).read_to_end(&mut data)?;
            let eof = offset + data.len() as u64 >= file.metadata()?.len();
            Ok((data, eof))
        })
        .map_err(nfs_error)
    }

    async fn readdirplus(
        &self,
        dir: &FileHandleU64,
        cookie: u64,
    ) -> Result<impl ReadDirPlusIterator<FileHandleU64>, nfsstat3> {
        let (path, meta) = self.stat(dir)?;
        if !meta.is_dir() {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        // A cookie is the inode number in the entry; listing in inode order lets a listing resume
        // after any entry, even one removed since (`rm -r` removes what it has been given).
        let all = block_in_place(|| fs::read_dir(&path)?.collect::<io::Result<Vec<_>>>()).map_err(nfs_error)?;
        let mut entries: Vec<_> = all
            .into_iter()
            .filter(|e| e.ino() > cookie)
            .map(|e| (e.ino(), e.file_name().into_vec()))
            .collect();
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        Ok(DirIter {
            fs: self.clone(),
            dir: path,
            entries,
        })
    }

    async fn readlink(&self, id: &FileHandleU64) -> Result<nfspath3<'_>, nfsstat3> {
        let (path, meta) = self.stat(id)?;
        if !meta.is_symlink() {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let target = fs::read_link(path).map_err(nfs_error)?;
        Ok(nfspath3::from(target.into_os_string().into_vec()))
    }
}

impl NfsFileSystem for DirFs {
    async fn setattr(&self, id: &FileHandleU64, set: sattr3) -> Result<fattr3, nfsstat3> {
        let (path, meta) = self.stat(id)?;
        Self::set_attr(&path, &meta, &set)?;
        self.getattr(id).await
    }

    async fn write(
        &self,
        id: &FileHandleU64,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<(fattr3, stable_how), nfsstat3> {
        let file = self.open(id, OpenOptions::new().write(true))?;
        block_in_place(|| {
            file.write_all_at(data, offset)?;
            match stable {
                stable_how::UNSTABLE => {}
                stable_how::DATA_SYNC => file.sync_data()?,
                stable_how::FILE_SYNC => file.sync_all()?,
            }
            Ok((fattr(&file.metadata()?, self.fsid), stable))
        })
        .map_err(nfs_error)
    }

    async fn create(
        &self,
        dir: &FileHandleU64,
        name: &filename3<'_>,
        set: sattr3,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let (path, meta) = self.create_file(dir, name, &set, false)?;
        Ok(self.remember(path, &meta))
    }

    /// Without keeping the verifier: a CREATE retransmitted after a lost reply gets
    /// NFS3ERR_EXIST rather than the file it made (RFC 1813, 3.3.8).
    async fn create_exclusive(
        &self,
        dir: &FileHandleU64,
        name: &filename3<'_>,
        _verf: createverf3,
    ) -> Result<FileHandleU64, nfsstat3> {
        let (path, meta) = self.create_file(dir, name, &sattr3::default(), true)?;
        Ok(self.remember(path, &meta).0)
    }

    async fn mkdir(&self, dir: &FileHandleU64, name: &filename3<'_>) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let path = self.child(dir, name)?;
        fs::create_dir(&path).map_err(nfs_error)?;
        let meta = fs::symlink_metadata(&path).map_err(nfs_error)?;
        Ok(self.remember(path, &meta))
    }

    /// Also serves RMDIR: `nfs3_server` sends both here.
    async fn remove(&self, dir: &FileHandleU64, name: &filename3<'_>) -> Result<(), nfsstat3> {
        let path = self.child(dir, name)?;
        let meta = fs::symlink_metadata(&path).map_err(nfs_error)?;
        let removed = if meta.is_dir() {
            fs::remove_dir(&path)
        } else {
            block_in_place(|| fs::remove_file(&path))
        };
        removed.map_err(nfs_error)?;
        let mut paths = self.paths.write().unwrap_or_else(PoisonError::into_inner);
        if paths.get(&meta.ino()) == Some(&path) {
            paths.remove(&meta.ino());
        }
        Ok(())
    }

    async fn rename<'a>(
        &self,
        from_dir: &FileHandleU64,
        from_name: &filename3<'a>,
        to_dir: &FileHandleU64,
        to_name: &filename3<'a>,
    ) -> Result<(), nfsstat3> {
        let from = self.child(from_dir, from_name)?;
        let to = self.child(to_dir, to_name)?;
        fs::rename(&from, &to).map_err(nfs_error)?;
        // Move the entry and, for a directory, every path below it.
        let mut paths = self.paths.write().unwrap_or_else(PoisonError::into_inner);
        for path in paths.values_mut() {
            if let Ok(rest) = path.strip_prefix(&from) {
                *path = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
            }
        }
        Ok(())
    }

    async fn symlink<'a>(
        &self,
        dir: &FileHandleU64,
        name: &filename3<'a>,
        target: &nfspath3<'a>,
        _set: &sattr3,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let path = self.child(dir, name)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target.as_ref()), &path).map_err(nfs_error)?;
        let meta = fs::symlink_metadata(&path).map_err(nfs_error)?;
        Ok(self.remember(path, &meta))
    }

    async fn commit(&self, id: &FileHandleU64, _offset: u64, _count: u32) -> Result<(), nfsstat3> {
        let file = self.open(id, OpenOptions::new().read(true))?;
        block_in_place(|| file.sync_all()).map_err(nfs_error)
    }
}

/// The rest of one READDIRPLUS: entries with an inode number above the cookie, stat'ed as they
/// are taken (a page holds a few dozen of them). Kept in reverse, so `next` pops the smallest.
struct DirIter {
    fs: DirFs,
    dir: PathBuf,
    entries: Vec<(u64, Vec<u8>)>,
}

impl ReadDirPlusIterator<FileHandleU64> for DirIter {
    async fn next(&mut self) -> NextResult<DirEntryPlus<FileHandleU64>> {
        while let Some((cookie, name)) = self.entries.pop() {
            let path = self.dir.join(OsStr::from_bytes(&name));
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed since
                Err(e) => return NextResult::Err(nfs_error(e)),
            };
            let (handle, attr) = self.fs.remember(path, &meta);
            return NextResult::Ok(DirEntryPlus {
                fileid: meta.ino(),
                name: filename3::from(name),
                cookie,
                name_attributes: Some(attr),
                name_handle: Some(handle),
            });
        }
        NextResult::Eof
    }
}

/// The NFS attributes of a file; `fsid` is the same for all.
fn fattr(meta: &Metadata, fsid: u64) -> fattr3 {
    // The S_IFMT bits of st_mode.
    let type_ = match meta.mode() & 0o170_000 {
        0o040_000 => ftype3::NF3DIR,
        0o120_000 => ftype3::NF3LNK,
        0o060_000 => ftype3::NF3BLK,
        0o020_000 => ftype3::NF3CHR,
        0o010_000 => ftype3::NF3FIFO,
        0o140_000 => ftype3::NF3SOCK,
        _ => ftype3::NF3REG,
    };
    fattr3 {
        type_,
        mode: meta.mode() & 0o7777,
        nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size(),
        used: meta.blocks() * 512,
        rdev: specdata3::default(), // no MKNOD, and no device files expected under the root
        fsid,
        fileid: meta.ino(),
        atime: nfs_time(meta.atime(), meta.atime_nsec()),
        mtime: nfs_time(meta.mtime(), meta.mtime_nsec()),
        ctime: nfs_time(meta.ctime(), meta.ctime_nsec()),
    }
}

/// NFS3ERR_ISDIR for a directory, NFS3ERR_INVAL for the rest of what is not a regular file.
fn not_file(meta: &Metadata) -> nfsstat3 {
    if meta.is_dir() {
        nfsstat3::NFS3ERR_ISDIR
    } else {
        nfsstat3::NFS3ERR_INVAL
    }
}

fn some<T: Pack + Unpack>(option: Nfs3Option<T>) -> Option<T> {
    match option {
        Nfs3Option::Some(value) => Some(value),
        Nfs3Option::None => None,
    }
}

fn nfs_time(seconds: i64, nanoseconds: i64) -> nfstime3 {
    nfstime3 {
        seconds: u32::try_from(seconds).unwrap_or(0),
        nseconds: u32::try_from(nanoseconds).unwrap_or(0),
    }
}

/// The NFS status for a failed file system call; anything without its own status is `NFS3ERR_IO`.
fn nfs_error(e: io::Error) -> nfsstat3 {
    use io::ErrorKind as Kind;
    match e.kind() {
        Kind::NotFound => nfsstat3::NFS3ERR_NOENT,
        Kind::PermissionDenied => nfsstat3::NFS3ERR_ACCES,
        Kind::AlreadyExists => nfsstat3::NFS3ERR_EXIST,
        Kind::NotADirectory => nfsstat3::NFS3ERR_NOTDIR,
        Kind::IsADirectory => nfsstat3::NFS3ERR_ISDIR,
        Kind::DirectoryNotEmpty => nfsstat3::NFS3ERR_NOTEMPTY,
        Kind::StorageFull => nfsstat3::NFS3ERR_NOSPC,
        Kind::QuotaExceeded => nfsstat3::NFS3ERR_DQUOT,
        Kind::FileTooLarge => nfsstat3::NFS3ERR_FBIG,
        Kind::ReadOnlyFilesystem => nfsstat3::NFS3ERR_ROFS,
        Kind::CrossesDevices => nfsstat3::NFS3ERR_XDEV,
        Kind::InvalidFilename => nfsstat3::NFS3ERR_NAMETOOLONG,
        Kind::InvalidInput => nfsstat3::NFS3ERR_INVAL,
        _ => {
            tracing::warn!("file system error: {e}");
            nfsstat3::NFS3ERR_IO
        }
    }
}
