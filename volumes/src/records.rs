//! The drivers' records under their state directories, written whole to a hidden temporary file,
//! synced and renamed over the old one, so a driver killed mid-write leaves the old record or
//! the new one, never half of one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::Error;

/// Write `bytes` to `path` atomically, the file made with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}

/// A record as JSON, written atomically (mode 0644).
pub fn save<T: serde::Serialize>(path: &Path, record: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec(record).map_err(|source| Error::Record {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes, 0o644)
}

/// A record, or `None` when there is none.
pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::Record {
            path: path.to_path_buf(),
            source,
        })
}
