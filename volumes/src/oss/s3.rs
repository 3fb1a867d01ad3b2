//! The S3 calls the OSS file system makes, signed by `rusty-s3` (SigV4 in the query string, the
//! way Alibaba OSS, AWS S3, MinIO and s3s all accept) and sent with `reqwest`.
//!
//! Keys are the bucket's own strings, never normalised: a file `a%b` is the object `a%b`, as
//! ossfs and s3fs name it, so a bucket written by either reads the same here.
//!
//! Every call is bounded: a request that does not answer within [`REQUEST_TIMEOUT`] fails, and
//! idempotent calls are tried [`ATTEMPTS`] times with a short back-off, so a server that goes
//! away turns into `EIO` for the caller within seconds, and the next call after it returns
//! succeeds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rusty_s3::actions::{ListObjectsV2, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};

/// How long one request may take before it is abandoned.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How often an idempotent request is tried before its error is returned.
pub const ATTEMPTS: u32 = 3;
/// How long a signed URL is valid (it is used at once; this only covers clock skew).
const SIGNED_FOR: Duration = Duration::from_secs(600);

/// What went wrong with a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3Error {
    #[error("no such object")]
    NotFound,
    #[error("access denied: {0}")]
    Denied(String),
    #[error("the server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot reach the server: {0}")]
    Transport(String),
    #[error("unreadable answer: {0}")]
    Parse(String),
}

impl S3Error {
    /// The errno a file system call reports for it.
    pub fn errno(&self) -> i32 {
        match self {
            S3Error::NotFound => libc_enoent(),
            S3Error::Denied(_) => 13, // EACCES
            _ => 5,                   // EIO
        }
    }

    fn retryable(&self) -> bool {
        match self {
            S3Error::Transport(_) => true,
            S3Error::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

const fn libc_enoent() -> i32 {
    2
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// One level of a listing: objects directly under the prefix, and the prefixes one level down.
#[derive(Debug, Clone, Default)]
pub struct Level {
    pub objects: Vec<Object>,
    pub prefixes: Vec<String>,
}

/// Where a bucket is and who calls it.
#[derive(Clone)]
pub struct S3 {
    bucket: Arc<Bucket>,
    credentials: Option<Arc<Credentials>>,
    http: reqwest::Client,
    pub counters: Arc<crate::fuse::FsCounters>,
}

impl S3 {
    /// A client of `bucket` at `endpoint` (`http(s)://host[:port]`), path-style when
    /// `path_style` (MinIO, s3s, a private endpoint), virtual-host style otherwise (OSS, S3).
    pub fn new(
        endpoint: &str,
        bucket: &str,
        region: &str,
        path_style: bool,
        credentials: Option<(String, String)>,
    ) -> Result<S3, String> {
        let url: url::Url = endpoint
            .parse()
            .map_err(|e| format!("endpoint {endpoint:?} is not a URL: {e}"))?;
        let style = if path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(url, style, bucket.to_string(), region.to_string())
            .map_err(|e| format!("bucket {bucket:?} at {endpoint:?}: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(S3 {
            bucket: Arc::new(bucket),
            credentials: credentials.map(|(k, s)| Arc::new(Credentials::new(k, s))),
            http,
            counters: Arc::default(),
        })
    }

    /// Count its calls in `counters` (the mount's).
    pub fn with_counters(mut self, counters: Arc<crate::fuse::FsCounters>) -> S3 {
        self.counters = counters;
        self
    }

    fn creds(&self) -> Option<&Credentials> {
        self.credentials.as_deref()
    }

    /// Send `make()` (a fresh request each try), retrying transport errors and 5xx answers
    /// when `idempotent`.
    async fn send(
        &self,
        idempotent: bool,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, S3Error> {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let r = match make().send().await {
                Err(e) => Err(S3Error::Transport(e.to_string())),
                Ok(resp) if resp.status().is_success() => Ok(resp),
                Ok(resp) => Err(error_of(resp).await),
            };
            match r {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    if e != S3Error::NotFound {
                        self.counters.request_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if !(idempotent && e.retryable() && attempt < ATTEMPTS) {
                        return Err(e);
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause *= 4;
            attempt += 1;
        }
    }

    /// Whether the bucket answers these credentials (a listing of one key).
    pub async fn check(&self, prefix: &str) -> Result<(), S3Error> {
        self.list_page(prefix, Some("/"), None, 1).await.map(|_| ())
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: usize,
    ) -> Result<rusty_s3::actions::ListObjectsV2Response, S3Error> {
        let url = {
            let mut a: ListObjectsV2<'_> = self.bucket.list_objects_v2(self.creds());
            if !prefix.is_empty() {
                a.with_prefix(prefix);
            }
            if let Some(d) = delimiter {
                a.with_delimiter(d);
            }
            if let Some(t) = token {
                a.with_continuation_token(t);
            }
            a.with_max_keys(max_keys);
            a.sign(SIGNED_FOR)
        };
        let resp = self.send(true, || self.http.get(url.clone())).await?;
        let text = resp.text().await.map_err(|e| S3Error::Transport(e.to_string()))?;
        ListObjectsV2::parse_response(&text).map_err(|e| S3Error::Parse(e.to_string()))
    }

    /// Everything directly under `prefix` (which ends in `/`, or is empty for the bucket's
    /// top), every page of it.
    pub async fn list_level(&self, prefix: &str) -> Result<Level, S3Error> {
        let mut level = Level::default();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(prefix, Some("/"), token.as_deref(), 1000).await?;
            for c in page.contents {
                level.objects.push(Object {
                    modified: c
                        .last_modified
                        .as_deref()
                        .map(parse_time)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                    size: c.size.unwrap_or(0),
                    key: c.key,
                });
            }
            level
                .prefixes
                .extend(page.common_prefixes.into_iter().map(|p| p.prefix));
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(level),
            }
        }
    }

    /// Every key under `prefix`, at any depth (for renaming or removing a directory).
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<Object>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(prefix, None, token.as_deref(), 1000).await?;
            out.extend(page.contents.into_iter().map(|c| {
                Object {
                    modified: c
                        .last_modified
                        .as_deref()
                        .map(parse_time)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                    size: c.size.unwrap_or(0),
                    key: c.key,
                }
            }));
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Whether anything but `except` lies under `prefix` (one short listing).
    pub async fn has_under(&self, prefix: &str, except: &str) -> Result<bool, S3Error> {
        let page = self.list_page(prefix, None, None, 2).await?;
        Ok(page.contents.iter().any(|c| c.key != except) || !page.common_prefixes.is_empty())
    }

    /// An object's size and modification time, or `None` if there is none.
    pub async fn head(&self, key: &str) -> Result<Option<Object>, S3Error> {
        let url = self.bucket.head_object(self.creds(), key).sign(SIGNED_FOR);
        match self.send(true, || self.http.head(url.clone())).await {
            Ok(resp) => {
                let h = resp.headers();
                let size = h
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let modified = h
                    .get(reqwest::header::LAST_MODIFIED)
                    .and_then(|v| v.to_str().ok())
                    .and_then(httpdate_parse)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                Ok(Some(Object {
                    key: key.to_string(),
                    size,
                    modified,
                }))
            }
            Err(S3Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bytes `start..end` of an object.
    pub async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes, S3Error> {
        if end <= start {
            return Ok(Bytes::new());
        }
        let url = self.bucket.get_object(self.creds(), key).sign(SIGNED_FOR);
        let range = format!("bytes={}-{}", start, end - 1);
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let resp = self
                .send(true, || {
                    self.http.get(url.clone()).header(reqwest::header::RANGE, &range)
                })
                .await?;
            // A body cut short is retried like a failed request.
            match resp.bytes().await {
                Ok(b) => {
                    self.counters
                        .bytes_downloaded
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                    return Ok(b);
                }
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, key, "reading an object's body; trying again");
                }
                Err(e) => {
                    self.counters.request_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(S3Error::Transport(e.to_string()));
                }
            }
            tokio::time::sleep(pause).await;
            pause *= 4;
            attempt += 1;
        }
    }

    /// Write a whole object.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), S3Error> {
        let url = self.bucket.put_object(self.creds(), key).sign(SIGNED_FOR);
        let n = body.len() as u64;
        // A PUT of the same bytes is idempotent.
        self.send(true, || self.http.put(url.clone()).body(body.clone()))
            .await?;
        self.counters.bytes_uploaded.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Copy an object within the bucket (CopyObject: a PUT naming its source).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), S3Error> {
        let source = format!("/{}/{}", self.bucket.name(), percent_encode_key(from));
        let url = {
            let mut a = self.bucket.put_object(self.creds(), to);
            a.headers_mut().insert("x-amz-copy-source", source.clone());
            a.sign(SIGNED_FOR)
        };
        let resp = self
            .send(true, || self.http.put(url.clone()).header("x-amz-copy-source", &source))
            .await?;
        // A copy can fail after its 200 has been sent: the error is then in the body.
        let text = resp.text().await.map_err(|e| S3Error::Transport(e.to_string()))?;
        if text.contains("<Error>") {
            return Err(S3Error::Status {
                status: 200,
                body: first_line(&text),
            });
        }
        Ok(())
    }

    /// Remove an object (removing one that is gone is no error).
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        let url = self.bucket.delete_object(self.creds(), key).sign(SIGNED_FOR);
        match self.send(true, || self.http.delete(url.clone())).await {
            Ok(_) | Err(S3Error::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Start a multipart upload; its id.
    pub async fn multipart_start(&self, key: &str) -> Result<String, S3Error> {
        let url = self.bucket.create_multipart_upload(self.creds(), key).sign(SIGNED_FOR);
        let resp = self.send(false, || self.http.post(url.clone())).await?;
        let text = resp.text().await.map_err(|e| S3Error::Transport(e.to_string()))?;
        let parsed = rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|e| S3Error::Parse(e.to_string()))?;
        Ok(parsed.upload_id().to_string())
    }

    /// Upload part `number` (from 1); its ETag.
    pub async fn multipart_part(&self, key: &str, upload: &str, number: u16, body: Bytes) -> Result<String, S3Error> {
        let url = self
            .bucket
            .upload_part(self.creds(), key, number, upload)
            .sign(SIGNED_FOR);
        let n = body.len() as u64;
        let resp = self
            .send(true, || self.http.put(url.clone()).body(body.clone()))
            .await?;
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| S3Error::Parse("an uploaded part has no ETag".into()))?;
        self.counters.bytes_uploaded.fetch_add(n, Ordering::Relaxed);
        Ok(etag)
    }

    /// Join the uploaded parts into the object.
    pub async fn multipart_finish(&self, key: &str, upload: &str, etags: &[String]) -> Result<(), S3Error> {
        let action = self
            .bucket
            .complete_multipart_upload(self.creds(), key, upload, etags.iter().map(String::as_str));
        let url = action.sign(SIGNED_FOR);
        let body = action.body();
        let resp = self
            .send(true, || self.http.post(url.clone()).body(body.clone()))
            .await?;
        let text = resp.text().await.map_err(|e| S3Error::Transport(e.to_string()))?;
        if text.contains("<Error>") {
            return Err(S3Error::Status {
                status: 200,
                body: first_line(&text),
            });
        }
        Ok(())
    }

    /// Give up a multipart upload (its parts are dropped by the server).
    pub async fn multipart_abort(&self, key: &str, upload: &str) {
        let url = self
            .bucket
            .abort_multipart_upload(self.creds(), key, upload)
            .sign(SIGNED_FOR);
        if let Err(e) = self.send(true, || self.http.delete(url.clone())).await {
            tracing::warn!(key, error = %e, "aborting a multipart upload");
        }
    }
}

async fn error_of(resp: reqwest::Response) -> S3Error {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    match status {
        404 if !body.contains("NoSuchBucket") => S3Error::NotFound,
        401 | 403 => S3Error::Denied(code_of(&body).unwrap_or_else(|| format!("HTTP {status}"))),
        _ => S3Error::Status {
            status,
            body: code_of(&body).unwrap_or_else(|| first_line(&body)),
        },
    }
}

/// The `<Code>` and `<Message>` of an S3 error body.
fn code_of(body: &str) -> Option<String> {
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let close = format!("</{t}>");
        let s = body.find(&open)? + open.len();
        let e = body[s..].find(&close)? + s;
        Some(body[s..e].to_string())
    };
    let code = tag("Code")?;
    Some(match tag("Message") {
        Some(m) if !m.is_empty() => format!("{code}: {m}"),
        _ => code,
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(200).collect()
}

/// A key in a URL path: every byte but unreserved characters and `/` escaped.
fn percent_encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `2024-01-02T03:04:05.000Z` as a time (the epoch if unreadable).
fn parse_time(s: &str) -> SystemTime {
    s.parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| {
            let ns = t.as_nanosecond();
            u64::try_from(ns)
                .ok()
                .map(|ns| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns))
        })
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// An HTTP date (`Tue, 02 Jan 2024 03:04:05 GMT`) as a time.
fn httpdate_parse(s: &str) -> Option<SystemTime> {
    let t = jiff::fmt::rfc2822::parse(s).ok()?;
    let ns = t.timestamp().as_nanosecond();
    u64::try_from(ns)
        .ok()
        .map(|ns| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_give_their_code_and_message() {
        let body = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>no</Message></Error>";
        assert_eq!(code_of(body).as_deref(), Some("AccessDenied: no"));
        assert_eq!(code_of("plain"), None);
    }

    #[test]
    fn keys_are_escaped_for_copy_sources() {
        assert_eq!(percent_encode_key("a b/c%d.txt"), "a%20b/c%25d.txt");
    }

    #[test]
    fn times_of_listings_and_headers_are_read() {
        let t = parse_time("2024-01-02T03:04:05.000Z");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_704_164_645
        );
        let h = httpdate_parse("Tue, 02 Jan 2024 03:04:05 GMT").unwrap();
        assert_eq!(h, t);
        assert_eq!(parse_time("garbage"), SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn errors_become_errnos() {
        assert_eq!(S3Error::NotFound.errno(), 2);
        assert_eq!(S3Error::Denied("x".into()).errno(), 13);
        assert_eq!(S3Error::Transport("x".into()).errno(), 5);
        assert!(
            S3Error::Status {
                status: 503,
                body: String::new()
            }
            .retryable()
        );
        assert!(
            !S3Error::Status {
                status: 400,
                body: String::new()
            }
            .retryable()
        );
    }
}
