//! What an OSS volume says, read as alibaba-cloud-csi-driver's ossplugin reads it: the PV's (or
//! StorageClass's) `bucket`, `url`, `path` and `otherOpts`, and the `akId`/`akSecret` of its
//! secret. Everything is checked here, once, so a bad volume fails its call with the field's
//! name instead of mounting something else.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Chunk of reads and part of uploads unless `otherOpts` says otherwise (s3fs's
/// `multipart_size`, in MiB).
pub const PART_MIB: u64 = 8;
/// Requests of one file in flight (s3fs's `parallel_count`).
pub const PARALLEL: usize = 8;
/// Read-ahead of a sequential reader, in MiB (`readahead_mib`).
pub const READAHEAD_MIB: u64 = 64;
/// How long a listing is trusted (s3fs's and ossfs's `stat_cache_expire`, in seconds).
pub const LISTING_TTL_SECS: u64 = 10;

/// `otherOpts` that ossfs and s3fs take and that change nothing here, with why.
const WITHOUT_EFFECT: &[(&str, &str)] = &[
    ("allow_other", "every mount is shared with the pod's users"),
    (
        "nonempty",
        "mount points are always the driver's own, empty directories",
    ),
    (
        "max_stat_cache_size",
        "the listing cache is bounded by directories, not entries",
    ),
    ("dbglevel", "logging follows RUST_LOG"),
    ("enable_noobj_cache", "listings already answer missing names"),
    ("noxattr", "extended attributes are not offered"),
    ("sigv4", "requests are always signed with SigV4"),
    ("kernel_cache", "the kernel keeps pages while a file is open"),
    (
        "use_cache",
        "files being written are staged in the driver's cache directory",
    ),
];

/// Everything a mount needs, handed to the mount process in a 0600 file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountConfig {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub path_style: bool,
    /// The key prefix shown (`""`, or ending in `/`).
    pub prefix: String,
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
    pub read_only: bool,
    pub listing_ttl_secs: u64,
    pub part_mib: u64,
    pub parallel: usize,
    pub readahead_mib: u64,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    /// Where the mount writes its counters.
    pub stats_file: PathBuf,
}

impl MountConfig {
    pub fn fs_options(&self) -> super::fs::FsOptions {
        super::fs::FsOptions {
            prefix: self.prefix.clone(),
            uid: self.uid,
            gid: self.gid,
            umask: self.umask,
            read_only: self.read_only,
            listing_ttl: Duration::from_secs(self.listing_ttl_secs),
            part_size: self.part_mib << 20,
            parallel: self.parallel,
            readahead: self.readahead_mib << 20,
            cache_dir: self.cache_dir.clone(),
        }
    }
}

/// A volume's attributes and options, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub bucket: String,
    /// `http(s)://host[:port]`.
    pub endpoint: String,
    pub region: String,
    pub path_style: bool,
    /// The prefix within the bucket (`""`, or ending in `/`).
    pub prefix: String,
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
    pub read_only: bool,
    pub listing_ttl_secs: u64,
    pub part_mib: u64,
    pub parallel: usize,
    pub readahead_mib: u64,
}

/// A bucket name as OSS and S3 allow it: 3–63 lower-case letters, digits, `-` and `.`.
fn is_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && !b.starts_with(['-', '.'])
        && !b.ends_with(['-', '.'])
}

/// `path`: `/` or `/a/b` (ossplugin's form) → the prefix `""` or `a/b/`.
pub fn prefix_of(path: &str) -> Result<String, Error> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(Error::invalid(
            "path",
            format!("{path:?} has an empty, '.' or '..' segment"),
        ));
    }
    Ok(format!("{trimmed}/"))
}

/// `url`: a host (`oss-cn-hangzhou.aliyuncs.com`, https is meant) or a full `http(s)://` URL.
fn endpoint_of(url: &str) -> Result<(String, String), Error> {
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let parsed: url::Url = full
        .parse()
        .map_err(|e| Error::invalid("url", format!("{url:?} is not a host or URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid(
            "url",
            format!("{url:?}: only http and https are spoken"),
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| Error::invalid("url", format!("{url:?} names no host")))?
        .to_string();
    if parsed.path() != "/" && !parsed.path().is_empty() {
        return Err(Error::invalid("url", format!("{url:?}: the endpoint takes no path")));
    }
    let endpoint = format!("{}://{}", parsed.scheme(), parsed.authority());
    Ok((endpoint, host))
}

/// Split `otherOpts` (`-o a=b,c -o d`) into `key → value` (an empty value for flags).
pub fn other_opts(s: &str) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    let mut words = s.split_whitespace();
    while let Some(w) = words.next() {
        let list = if w == "-o" {
            words
                .next()
                .ok_or_else(|| Error::invalid("otherOpts", "'-o' at the end takes no options"))?
        } else if let Some(rest) = w.strip_prefix("-o") {
            rest
        } else {
            return Err(Error::invalid(
                "otherOpts",
                format!("{w:?}: options are given as '-o name[=value]'"),
            ));
        };
        for o in list.split(',').filter(|o| !o.is_empty()) {
            let (k, v) = o.split_once('=').unwrap_or((o, ""));
            out.push((k.to_string(), v.to_string()));
        }
    }
    Ok(out)
}

fn number<T>(key: &str, v: &str, radix8: bool) -> Result<T, Error>
where
    T: TryFrom<u64>,
{
    let parsed = if radix8 {
        u64::from_str_radix(v, 8).ok()
    } else {
        v.parse::<u64>().ok()
    };
    parsed
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| Error::invalid("otherOpts", format!("{key}={v:?} is not a number")))
}

/// Read a volume from its attributes (a PV's `volumeAttributes`, or a StorageClass's
/// parameters with the volume's own path), `read_only` when the capability or publish asks.
pub fn volume(attrs: &HashMap<String, String>, read_only: bool) -> Result<Volume, Error> {
    let bucket = attrs.get("bucket").map(String::as_str).unwrap_or("");
    if bucket.is_empty() {
        return Err(Error::Missing("bucket"));
    }
    if !is_bucket(bucket) {
        return Err(Error::invalid("bucket", format!("{bucket:?} is not a bucket name")));
    }
    let url = attrs.get("url").map(String::as_str).unwrap_or("");
    if url.is_empty() {
        return Err(Error::Missing("url"));
    }
    let (endpoint, host) = endpoint_of(url)?;
    let prefix = prefix_of(attrs.get("path").map(String::as_str).unwrap_or("/"))?;
    // An address or a bare name cannot carry the bucket in its host.
    let mut path_style = host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') || !host.contains('.');
    let mut region = host
        .split('.')
        .next()
        .and_then(|h| h.strip_prefix("oss-"))
        .map(|r| format!("oss-{}", r.trim_end_matches("-internal")))
        .unwrap_or_else(|| "us-east-1".to_string());
    let mut v = Volume {
        bucket: bucket.to_string(),
        endpoint,
        region: String::new(),
        path_style: false,
        prefix,
        uid: 0,
        gid: 0,
        umask: 0o022,
        read_only,
        listing_ttl_secs: LISTING_TTL_SECS,
        part_mib: PART_MIB,
        parallel: PARALLEL,
        readahead_mib: READAHEAD_MIB,
    };
    for (k, val) in other_opts(attrs.get("otherOpts").map(String::as_str).unwrap_or(""))? {
        match k.as_str() {
            "uid" => v.uid = number(&k, &val, false)?,
            "gid" => v.gid = number(&k, &val, false)?,
            "umask" => {
                v.umask = number(&k, &val, true)?;
                if v.umask > 0o777 {
                    return Err(Error::invalid("otherOpts", format!("umask={val} is more than 777")));
                }
            }
            "ro" => v.read_only = true,
            "use_path_request_style" => path_style = true,
            "region" | "endpoint" if !val.is_empty() => region = val.clone(),
            "stat_cache_expire" => v.listing_ttl_secs = number(&k, &val, false)?,
            "multipart_size" => {
                v.part_mib = number(&k, &val, false)?;
                if !(5..=5120).contains(&v.part_mib) {
                    return Err(Error::invalid("otherOpts", "multipart_size is 5 to 5120 (MiB)"));
                }
            }
            "parallel_count" => {
                v.parallel = number(&k, &val, false)?;
                if !(1..=64).contains(&v.parallel) {
                    return Err(Error::invalid("otherOpts", "parallel_count is 1 to 64"));
                }
            }
            "readahead_mib" => v.readahead_mib = number(&k, &val, false)?,
            _ if WITHOUT_EFFECT.iter().any(|(w, _)| *w == k) => {}
            _ => {
                return Err(Error::invalid(
                    "otherOpts",
                    format!("{k:?} is not an option of this driver (see volumes/README.md)"),
                ));
            }
        }
    }
    v.region = region;
    v.path_style = path_style;
    Ok(v)
}

/// `akId`/`akSecret` of the volume's secret (ossplugin's keys), or none for a public bucket.
pub fn credentials(secrets: &HashMap<String, String>) -> Result<Option<(String, String)>, Error> {
    let id = secrets.get("akId").filter(|s| !s.is_empty());
    let secret = secrets.get("akSecret").filter(|s| !s.is_empty());
    match (id, secret) {
        (Some(i), Some(s)) => Ok(Some((i.clone(), s.clone()))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::Missing("akSecret")),
        (None, Some(_)) => Err(Error::Missing("akId")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn alibaba_attributes_are_read() {
        let v = volume(
            &attrs(&[
                ("bucket", "my-bucket"),
                ("url", "oss-cn-hangzhou.aliyuncs.com"),
                ("path", "/data/app"),
                (
                    "otherOpts",
                    "-o max_stat_cache_size=0 -o allow_other -o uid=1000,gid=1000,umask=027",
                ),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(v.endpoint, "https://oss-cn-hangzhou.aliyuncs.com");
        assert_eq!(v.region, "oss-cn-hangzhou");
        assert!(!v.path_style);
        assert_eq!(v.prefix, "data/app/");
        assert_eq!((v.uid, v.gid, v.umask), (1000, 1000, 0o027));
    }

    #[test]
    fn an_address_endpoint_is_spoken_to_path_style() {
        let v = volume(&attrs(&[("bucket", "b12"), ("url", "http://127.0.0.1:9000")]), true).unwrap();
        assert!(v.path_style);
        assert!(v.read_only);
        assert_eq!(v.prefix, "");
        assert_eq!(v.endpoint, "http://127.0.0.1:9000");
        assert_eq!(v.region, "us-east-1");
    }

    #[test]
    fn bad_volumes_name_their_field() {
        let e = volume(&attrs(&[("url", "x")]), false).unwrap_err();
        assert!(e.to_string().contains("bucket"), "{e}");
        let e = volume(&attrs(&[("bucket", "Bad_Bucket"), ("url", "x.y")]), false).unwrap_err();
        assert!(e.to_string().contains("bucket"), "{e}");
        let e = volume(&attrs(&[("bucket", "bbb"), ("url", "ftp://x.y")]), false).unwrap_err();
        assert!(e.to_string().contains("url"), "{e}");
        let e = volume(&attrs(&[("bucket", "bbb"), ("url", "x.y"), ("path", "/a/../b")]), false).unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");
        let e = volume(
            &attrs(&[("bucket", "bbb"), ("url", "x.y"), ("otherOpts", "-o frobnicate")]),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("frobnicate"), "{e}");
        let e = volume(
            &attrs(&[("bucket", "bbb"), ("url", "x.y"), ("otherOpts", "-o uid=me")]),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("uid"), "{e}");
        let e = volume(
            &attrs(&[("bucket", "bbb"), ("url", "x.y"), ("otherOpts", "--debug")]),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("-o"), "{e}");
    }

    #[test]
    fn credentials_come_in_pairs() {
        assert_eq!(credentials(&HashMap::new()).unwrap(), None);
        let both = attrs(&[("akId", "a"), ("akSecret", "s")]);
        assert_eq!(credentials(&both).unwrap(), Some(("a".into(), "s".into())));
        assert!(credentials(&attrs(&[("akId", "a")])).is_err());
    }
}
