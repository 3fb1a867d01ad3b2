//! `s3-server --root DIR --listen ADDR --access-key AK --secret-key SK [--bucket NAME]...`: a small
//! S3 server over a local directory, for the tests and benchmarks of the OSS CSI driver, which
//! mount a bucket from it with s3fs instead of reaching a real object store.
//!
//! Each subdirectory of `DIR` is a bucket (`--bucket` creates it if missing); requests are
//! path-style and must carry a SigV4 (or SigV2) signature made with `AK`/`SK`. The objects
//! themselves are served by `s3s-fs`, with the few fixes s3fs needs around directories (see
//! [`Server`]). Once the socket accepts connections it prints exactly one line,
//! `listening http://IP:PORT`, so `--listen 127.0.0.1:0` works; it serves until SIGTERM or SIGINT
//! and then exits 0. Log level: `RUST_LOG` (default `warn`: server errors and refused signatures).
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{Body, S3, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// How long open connections get to finish once a signal arrives.
const DRAIN: Duration = Duration::from_secs(2);

/// The MD5 of nothing: the ETag of an empty object.
const EMPTY_ETAG: &str = "d41d8cd98f00b204e9800998ecf8427e";
/// The type s3fs gives the objects `mkdir` puts, and reads back as "a directory".
const DIR_TYPE: &str = "application/x-directory";

#[derive(Parser)]
#[command(about = "Serve a directory over S3 (path-style, signed requests) for tests")]
struct Args {
    /// Directory to serve; each subdirectory is a bucket.
    #[arg(long)]
    root: PathBuf,
    /// Address to bind; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long)]
    access_key: String,
    #[arg(long)]
    secret_key: String,
    /// A bucket to create under the root if missing (repeatable).
    #[arg(long)]
    bucket: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    for bucket in &args.bucket {
        if !s3s::path::check_bucket_name(bucket) {
            bail!("{bucket:?} is not a valid bucket name");
        }
        let dir = args.root.join(bucket);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let root = std::fs::canonicalize(&args.root).with_context(|| format!("serving {}", args.root.display()))?;
    // s3s-fs's error type is not a std error; its Debug form carries the cause.
    let fs = FileSystem::new(&root).map_err(|e| anyhow!("serving {}: {e:?}", root.display()))?;
    let mut builder = S3ServiceBuilder::new(Server { root, fs });
    builder.set_auth(SimpleAuth::from_single(args.access_key, args.secret_key));
    let service = builder.build();

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening http://{}", listener.local_addr()?)?;
    stdout.flush()?;

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    // Out of descriptors and the like: wait a little, as hyper's own loop does.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        let conn = http.serve_connection(TokioIo::new(socket), service.clone());
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN:?}; exiting anyway");
    }
    Ok(())
}

/// s3s-fs keeps object `a/b` as file `ROOT/BUCKET/a/b` and "directory object" `a/` (what `mkdir`
/// through s3fs puts) as directory `ROOT/BUCKET/a`, but reads directories as if they were files:
/// a HEAD of `a` or `a/` fails with 500 (s3fs then retries for minutes), and a listing by "/"
/// leaves out a directory with no file under it. `Server` answers those cases itself: `a/` is an
/// empty object of type [`DIR_TYPE`], `a` none, and every subdirectory is a common prefix. All
/// else goes to s3s-fs.
struct Server {
    root: PathBuf,
    fs: FileSystem,
}

impl Server {
    /// The directory `bucket/key` names (a trailing `/` or not), if there is one under the root.
    fn dir(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        let rel = Path::new(bucket).join(key.trim_end_matches('/'));
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return None; // `..` and the like: s3s-fs refuses them
        }
        let path = self.root.join(rel);
        path.is_dir().then_some(path)
    }

    /// The Last-Modified of the empty object that directory `dir` stands for under `key`, or
    /// NoSuchKey when `key` lacks the trailing `/`.
    fn dir_object(key: &str, dir: &Path) -> S3Result<Timestamp> {
        if !key.ends_with('/') {
            return Err(s3_error!(NoSuchKey));
        }
        let modified = dir.metadata().and_then(|m| m.modified());
        Ok(Timestamp::from(modified.map_err(|e| s3_error!(e, InternalError))?))
    }

    /// Adds each subdirectory of the one a listing by "/" under `prefix` looks into, as a common
    /// prefix, if its key falls in the page returned, `(after, last]` (`last` only when the page
    /// is truncated), so a page may hold a few more than max-keys. Returns how many it added.
    fn add_dirs(
        &self,
        bucket: &str,
        prefix: Option<&str>,
        after: Option<&str>,
        last: Option<&str>,
        out: &mut Option<Vec<CommonPrefix>>,
    ) -> usize {
        let prefix = prefix.unwrap_or("");
        let (parent, stem) = prefix.split_at(prefix.rfind('/').map_or(0, |i| i + 1));
        let Some(Ok(entries)) = self.dir(bucket, parent).map(std::fs::read_dir) else {
            return 0;
        };
        let mut keys: BTreeSet<String> = out.take().into_iter().flatten().filter_map(|p| p.prefix).collect();
        let before = keys.len();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !name.starts_with(stem) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let key = format!("{parent}{name}/");
            if after.is_none_or(|a| key.as_str() > a) && last.is_none_or(|l| key.as_str() <= l) {
                keys.insert(key);
            }
        }
        let added = keys.len() - before;
        *out = (!keys.is_empty()).then(|| keys.into_iter().map(|k| CommonPrefix { prefix: Some(k) }).collect());
        added
    }
}

#[async_trait::async_trait]
impl S3 for Server {
    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let Some(dir) = self.dir(&req.input.bucket, &req.input.key) else {
            return self.fs.head_object(req).await;
        };
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(0),
            content_type: Some(DIR_TYPE.into()),
            e_tag: Some(ETag::Strong(EMPTY_ETAG.into())),
            last_modified: Some(Self::dir_object(&req.input.key, &dir)?),
            ..Default::default()
        }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let Some(dir) = self.dir(&req.input.bucket, &req.input.key) else {
            return self.fs.get_object(req).await;
        };
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::from(Body::empty())),
            content_length: Some(0),
            content_type: Some(DIR_TYPE.into()),
            e_tag: Some(ETag::Strong(EMPTY_ETAG.into())),
            last_modified: Some(Self::dir_object(&req.input.key, &dir)?),
            ..Default::default()
        }))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        // s3s-fs would unlink the directory `a` names and fail; there is no object `a` to delete.
        if !req.input.key.ends_with('/') && self.dir(&req.input.bucket, &req.input.key).is_some() {
            return Ok(S3Response::new(DeleteObjectOutput::default()));
        }
        self.fs.delete_object(req).await
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = &req.input;
        let by_slash = input.delimiter.as_deref() == Some("/");
        let (bucket, prefix, after) = (input.bucket.clone(), input.prefix.clone(), input.marker.clone());
        let mut resp = self.fs.list_objects(req).await?;
        if by_slash {
            let out = &mut resp.output;
            let last = out.next_marker.clone().filter(|_| out.is_truncated == Some(true));
            let (prefix, after, last) = (prefix.as_deref(), after.as_deref(), last.as_deref());
            self.add_dirs(&bucket, prefix, after, last, &mut out.common_prefixes);
        }
        Ok(resp)
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = &req.input;
        let by_slash = input.delimiter.as_deref() == Some("/");
        let after = input.continuation_token.clone().max(input.start_after.clone());
        let (bucket, prefix) = (input.bucket.clone(), input.prefix.clone());
        let mut resp = self.fs.list_objects_v2(req).await?;
        if by_slash {
            let out = &mut resp.output;
            let last = out
                .next_continuation_token
                .clone()
                .filter(|_| out.is_truncated == Some(true));
            let (prefix, after, last) = (prefix.as_deref(), after.as_deref(), last.as_deref());
            let added = self.add_dirs(&bucket, prefix, after, last, &mut out.common_prefixes);
            out.key_count = out.key_count.map(|n| n + i32::try_from(added).unwrap_or(0));
        }
        Ok(resp)
    }

    // The rest of what s3s-fs implements, unchanged.
    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.fs.delete_bucket(req).await
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.fs.put_object(req).await
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.fs.copy_object(req).await
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.fs.delete_objects(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.fs.upload_part(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.fs.upload_part_copy(req).await
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.fs.list_parts(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.fs.complete_multipart_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.fs.abort_multipart_upload(req).await
    }
}
