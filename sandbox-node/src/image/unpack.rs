//! Unpacking one image layer into a directory overlayfs can stack: AUFS-style whiteouts in the
//! tar (`.wh.<name>`, `.wh..wh..opq`) become overlayfs whiteouts (a 0/0 character device) and
//! opaque directories (`trusted.overlay.opaque=y`).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Reads through to an inner reader while hashing every byte: the layer's diff ID.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new() }
    }

    /// Hash whatever the consumer left unread too, and give the digest.
    pub fn finish(mut self) -> std::io::Result<String> {
        let mut buf = vec![0u8; 64 * 1024];
        while self.read(&mut buf)? > 0 {}
        Ok(format!("sha256:{}", hex::encode(self.hasher.finalize())))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Wrap a layer blob in the decompressor its magic bytes call for (gzip or none).
pub fn decompressed(mut file: std::fs::File) -> Result<Box<dyn Read>, ImageError> {
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(ImageError::io("reading a layer"))?;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0)).map_err(ImageError::io("reading a layer"))?;
    match &magic[..n] {
        [0x1f, 0x8b, ..] => Ok(Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))),
        [0x28, 0xb5, 0x2f, 0xfd] => Err(ImageError::Unsupported("zstd-compressed layers".into())),
        _ => Ok(Box::new(std::io::BufReader::new(file))),
    }
}

/// A relative path inside the layer, or None for one that would leave it.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Unpack a layer tar stream into `dst` (which exists and is empty) and return its diff ID.
pub fn unpack_layer(stream: Box<dyn Read>, dst: &Path) -> Result<String, ImageError> {
    let mut hashing = HashingReader::new(stream);
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(true);
        let entries = archive.entries().map_err(|e| ImageError::Corrupt(format!("layer is not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ImageError::Corrupt(format!("layer tar: {e}")))?;
            let raw = entry.path().map_err(|e| ImageError::Corrupt(format!("layer tar path: {e}")))?.into_owned();
            let Some(rel) = inside(&raw) else {
                return Err(ImageError::Corrupt(format!("layer entry {} leaves the layer", raw.display())));
            };
            let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if name == OPAQUE {
                let dir = dst.join(rel.parent().unwrap_or(Path::new("")));
                std::fs::create_dir_all(&dir).map_err(ImageError::io("creating a directory"))?;
                xattr::set(&dir, "trusted.overlay.opaque", b"y").map_err(ImageError::io("marking an opaque directory"))?;
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let dir = dst.join(rel.parent().unwrap_or(Path::new("")));
                std::fs::create_dir_all(&dir).map_err(ImageError::io("creating a directory"))?;
                let target = dir.join(hidden);
                let _ = std::fs::remove_file(&target);
                nix::sys::stat::mknod(&target, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
                    .map_err(|e| ImageError::Io { what: "creating a whiteout".into(), source: e.into() })?;
                continue;
            }
            let unpacked = entry.unpack_in(dst).map_err(|e| ImageError::Corrupt(format!("unpacking {}: {e}", raw.display())))?;
            if !unpacked {
                return Err(ImageError::Corrupt(format!("layer entry {} leaves the layer", raw.display())));
            }
        }
    }
    hashing.finish().map_err(ImageError::io("reading a layer"))
}
