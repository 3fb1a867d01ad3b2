//! Unpacking one image layer into a directory overlayfs can stack: AUFS-style whiteouts in the
//! tar (`.wh.<name>`, `.wh..wh..opq`) become overlayfs whiteouts (a 0/0 character device) and
//! opaque directories (`trusted.overlay.opaque=y`). tar's own checks keep its entries inside the
//! layer; the whiteouts and markers made here go through [`crate::beneath`] so that a symlink an
//! earlier entry planted is never followed out of it.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use std::os::fd::OwnedFd;

use rustix::fs::{FileType, Mode, OFlags, XattrFlags};
use sha2::{Digest, Sha256};

use super::ImageError;
use crate::beneath::{self, Resolve};

/// The most one layer may unpack to: a small gzip can expand a thousandfold (a decompression
/// bomb), and the node's disk is shared by every pod.
pub const MAX_UNPACKED_LAYER: u64 = 32 << 30;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Reads through to an inner reader while hashing every byte: the layer's diff ID.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
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

/// Reads at most `left` bytes from the inner reader, and fails past that.
struct Capped<R> {
    inner: R,
    left: u64,
    max: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "the layer unpacks to more than {} bytes",
                self.max
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Wrap a layer blob in the decompressor its magic bytes call for (gzip or none).
pub fn decompressed(mut file: std::fs::File) -> Result<Box<dyn Read>, ImageError> {
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(ImageError::io("reading a layer"))?;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(ImageError::io("reading a layer"))?;
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

/// An opaque-directory marker or a whiteout, made in the layer's own tree: its directory is
/// resolved beneath the layer with no symlink anywhere on the way (the tar's own entries may
/// have planted one pointing at the node's files), and every change is made through that
/// directory's descriptor.
fn mark_hidden(root: &OwnedFd, rel: &Path, name: &str) -> std::io::Result<()> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let dir = beneath::mkdir_all(root, parent, 0o755, Resolve::NoSymlinks)?;
    if name == OPAQUE {
        let dir = beneath::open(
            &dir,
            Path::new(""),
            OFlags::RDONLY | OFlags::DIRECTORY,
            0,
            Resolve::NoSymlinks,
        )?;
        return Ok(rustix::fs::fsetxattr(
            &dir,
            "trusted.overlay.opaque",
            b"y",
            XattrFlags::empty(),
        )?);
    }
    let hidden = Path::new(&name[WHITEOUT_PREFIX.len()..]);
    if hidden.as_os_str().is_empty()
        || hidden.components().count() != 1
        || hidden == Path::new("..")
        || hidden == Path::new(".")
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a whiteout must name one entry",
        ));
    }
    beneath::remove(&dir, hidden)?;
    Ok(rustix::fs::mknodat(
        &dir,
        hidden,
        FileType::CharacterDevice,
        Mode::empty(),
        0,
    )?)
}

/// An error and every cause under it: tar's own message hides the reader's.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Unpack a layer tar stream into `dst` (which exists and is empty) and return its diff ID;
/// a stream longer than `max` bytes is refused.
pub fn unpack_layer(stream: Box<dyn Read>, dst: &Path, max: u64) -> Result<String, ImageError> {
    let mut hashing = HashingReader::new(Capped {
        inner: stream,
        left: max,
        max,
    });
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(true);
        let root = beneath::open_dir(dst).map_err(ImageError::io("opening the layer directory"))?;
        let entries = archive
            .entries()
            .map_err(|e| ImageError::Corrupt(format!("layer is not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ImageError::Corrupt(format!("layer tar: {e}")))?;
            let raw = entry
                .path()
                .map_err(|e| ImageError::Corrupt(format!("layer tar path: {e}")))?
                .into_owned();
            let Some(rel) = inside(&raw) else {
                return Err(ImageError::Corrupt(format!(
                    "layer entry {} leaves the layer",
                    raw.display()
                )));
            };
            let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if name == OPAQUE || name.starts_with(WHITEOUT_PREFIX) {
                mark_hidden(&root, &rel, &name)
                    .map_err(|e| ImageError::Corrupt(format!("layer entry {}: {e}", raw.display())))?;
                continue;
            }
            let unpacked = entry
                .unpack_in(dst)
                .map_err(|e| ImageError::Corrupt(format!("unpacking {}: {}", raw.display(), with_causes(&e))))?;
            if !unpacked {
                return Err(ImageError::Corrupt(format!(
                    "layer entry {} leaves the layer",
                    raw.display()
                )));
            }
        }
    }
    hashing
        .finish()
        .map_err(|e| ImageError::Corrupt(format!("reading a layer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, tar::EntryType, &str)]) -> Box<dyn Read> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o755);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            if *kind == tar::EntryType::Symlink {
                h.set_size(0);
                b.append_link(&mut h, path, data).unwrap();
            } else {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_bytes()).unwrap();
            }
        }
        Box::new(std::io::Cursor::new(b.into_inner().unwrap()))
    }

    /// The attack of the issue: a symlink to a node directory, then a whiteout "inside" it.
    #[test]
    fn a_whiteout_through_a_symlink_is_refused_and_changes_nothing_outside() {
        let t = tempfile::tempdir().unwrap();
        let (dst, host) = (t.path().join("layer"), t.path().join("host"));
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let host_s = host.display().to_string();
        for (kind, second) in [
            ("whiteout", "a/.wh.passwd"),
            ("opaque", "a/.wh..wh..opq"),
            ("nested whiteout", "a/sub/.wh.x"),
        ] {
            let _ = std::fs::remove_file(dst.join("a"));
            let tar = layer(&[
                ("a", tar::EntryType::Symlink, &host_s),
                (second, tar::EntryType::Regular, ""),
            ]);
            let err = unpack_layer(tar, &dst, MAX_UNPACKED_LAYER).unwrap_err();
            assert!(matches!(err, ImageError::Corrupt(_)), "{kind}: {err}");
            assert_eq!(
                std::fs::read_to_string(host.join("passwd")).unwrap(),
                "root:x:0:0::/root:/bin/sh\n",
                "{kind}"
            );
            assert!(!host.join("sub").exists(), "{kind}");
            assert!(xattr::get(&host, "trusted.overlay.opaque").unwrap().is_none(), "{kind}");
        }
    }

    #[test]
    fn whiteouts_and_opaque_markers_in_the_layer_itself() {
        let t = tempfile::tempdir().unwrap();
        let dst = t.path().join("layer");
        std::fs::create_dir_all(&dst).unwrap();
        let tar = layer(&[
            ("etc/", tar::EntryType::Directory, ""),
            ("etc/.wh.motd", tar::EntryType::Regular, ""),
            ("var/lib/.wh..wh..opq", tar::EntryType::Regular, ""),
            ("bin/sh", tar::EntryType::Regular, "#!"),
        ]);
        let id = unpack_layer(tar, &dst, MAX_UNPACKED_LAYER).unwrap();
        assert!(id.starts_with("sha256:"));
        use std::os::unix::fs::FileTypeExt;
        let m = std::fs::symlink_metadata(dst.join("etc/motd")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(
            xattr::get(dst.join("var/lib"), "trusted.overlay.opaque")
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(std::fs::read_to_string(dst.join("bin/sh")).unwrap(), "#!");
        // A whiteout cannot name its own directory's parent.
        let tar = layer(&[("x/.wh...", tar::EntryType::Regular, "")]);
        assert!(unpack_layer(tar, &dst, MAX_UNPACKED_LAYER).is_err());
    }

    #[test]
    fn a_layer_unpacking_past_its_cap_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let dst = t.path().join("layer");
        std::fs::create_dir_all(&dst).unwrap();
        let big = "x".repeat(64 * 1024);
        let err = unpack_layer(layer(&[("f", tar::EntryType::Regular, &big)]), &dst, 32 * 1024).unwrap_err();
        assert!(err.to_string().contains("more than 32768 bytes"), "{err}");
        let dst2 = t.path().join("layer2");
        std::fs::create_dir_all(&dst2).unwrap();
        unpack_layer(layer(&[("f", tar::EntryType::Regular, &big)]), &dst2, 1 << 20).unwrap();
    }
}
