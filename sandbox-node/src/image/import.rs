//! Reading image archives: OCI image layouts (a directory, or a tar of one) and `docker save`
//! tars. Every blob's digest and every layer's diff ID is checked before anything is published.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::unpack::{MAX_UNPACKED_LAYER, decompressed, unpack_layer};
use super::{ImageConfig, ImageError, ImageRecord, ImageStore, reference};

const MANIFEST_LIST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A temporary directory removed when dropped, import succeeded or not.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(store: &ImageStore, what: &str) -> Result<Scratch, ImageError> {
    let dir = store
        .root()
        .join("tmp")
        .join(format!("{what}-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).map_err(ImageError::io("creating a scratch directory"))?;
    Ok(Scratch(dir))
}

/// Open the regular file `path` of the archive unpacked (or the layout) at `root`, following no
/// symlink out of it: an archive may hold links to anywhere (`config.json -> /dev/zero` would
/// hang the import, `-> /etc/shadow` read a node file), and a device or FIFO never ends. Links
/// that stay inside are followed: `docker save` links a layer it has already written.
fn open_in(root: &Path, path: &Path) -> Result<File, ImageError> {
    use rustix::fs::OFlags;
    let corrupt = |e: &dyn std::fmt::Display| ImageError::Corrupt(format!("{}: {e}", path.display()));
    let rel = path.strip_prefix(root).map_err(|e| corrupt(&e))?;
    let dir = crate::beneath::open_dir(root).map_err(|e| corrupt(&e))?;
    let fd = crate::beneath::open(
        &dir,
        rel,
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK,
        0,
        crate::beneath::Resolve::Beneath,
    )
    .map_err(|e| corrupt(&e))?;
    let file = File::from(fd);
    if !file.metadata().map_err(|e| corrupt(&e))?.is_file() {
        return Err(corrupt(&"not a regular file"));
    }
    Ok(file)
}

fn read_json(root: &Path, path: &Path) -> Result<Value, ImageError> {
    // An index, manifest or config is a few kilobytes; the archive's author decides its size.
    const MAX_JSON: u64 = 4 << 20;
    let mut bytes = Vec::new();
    let file = open_in(root, path)?;
    file.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::Corrupt(format!("{}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(ImageError::Corrupt(format!(
            "{} is larger than {MAX_JSON} bytes",
            path.display()
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt(format!("{}: {e}", path.display())))
}

fn file_digest(root: &Path, path: &Path) -> Result<(String, u64), ImageError> {
    let mut f = open_in(root, path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(ImageError::io("reading a blob"))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((format!("sha256:{}", hex::encode(h.finalize())), size))
}

/// The path of a blob in an OCI layout, after checking the digest is well formed.
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let (algo, hex) = digest
        .split_once(':')
        .ok_or_else(|| ImageError::Corrupt(format!("bad digest {digest:?}")))?;
    if algo != "sha256" || hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ImageError::Corrupt(format!("unsupported digest {digest:?}")));
    }
    Ok(layout.join("blobs").join(algo).join(hex))
}

fn verified_blob(layout: &Path, digest: &str) -> Result<(PathBuf, u64), ImageError> {
    let path = blob_path(layout, digest)?;
    let (actual, size) = file_digest(layout, &path)?;
    if actual != digest {
        return Err(ImageError::Corrupt(format!("blob {digest} has digest {actual}")));
    }
    Ok((path, size))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn image_config(config: &Value) -> (ImageConfig, Vec<String>) {
    let c = &config["config"];
    let cfg = ImageConfig {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
        user: c["User"].as_str().unwrap_or_default().to_string(),
    };
    (cfg, strings(&config["rootfs"]["diff_ids"]))
}

/// Unpack each layer not already in the store and check its diff ID.
fn unpack_layers(store: &ImageStore, root: &Path, blobs: &[PathBuf], diff_ids: &[String]) -> Result<(), ImageError> {
    if blobs.len() != diff_ids.len() {
        return Err(ImageError::Corrupt(format!(
            "{} layers but {} diff IDs in the config",
            blobs.len(),
            diff_ids.len()
        )));
    }
    for (blob, diff_id) in blobs.iter().zip(diff_ids) {
        // The diff ID names a directory of the store: hex digits only, or `sha256:../../etc`
        // (padded to 64) would make a node directory a layer of the image.
        let hex = diff_id.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::Corrupt(format!("bad diff ID {diff_id:?}")));
        }
        let dst = store.layer_dir(diff_id);
        if dst.exists() {
            continue;
        }
        let tmp = scratch(store, "layer")?;
        let file = open_in(root, blob)?;
        let got = unpack_layer(decompressed(file)?, &tmp.0, MAX_UNPACKED_LAYER)?;
        if &got != diff_id {
            return Err(ImageError::Corrupt(format!(
                "layer {} unpacks to {got}, the config says {diff_id}",
                blob.display()
            )));
        }
        match std::fs::rename(&tmp.0, &dst) {
            Ok(()) => {}
            // Another import published the same layer first.
            Err(_) if dst.exists() => {}
            Err(e) => {
                return Err(ImageError::Io {
                    what: "publishing a layer".into(),
                    source: e,
                });
            }
        }
    }
    Ok(())
}

/// Choose the linux/amd64 manifest of a multi-platform index.
fn pick_platform(list: &Value) -> Option<&Value> {
    let ms = list["manifests"].as_array()?;
    ms.iter()
        .find(|m| {
            m["platform"]["os"] == "linux"
                && m["platform"]["architecture"] == std::env::consts::ARCH.replace("x86_64", "amd64")
        })
        .or_else(|| ms.first())
}

fn oci_layout(store: &ImageStore, layout: &Path) -> Result<Vec<ImageRecord>, ImageError> {
    let index = read_json(layout, &layout.join("index.json"))?;
    let mut out = Vec::new();
    for desc in index["manifests"].as_array().into_iter().flatten() {
        let annotations = &desc["annotations"];
        let mut references = Vec::new();
        for key in ["io.containerd.image.name", "org.opencontainers.image.ref.name"] {
            if let Some(n) = annotations[key].as_str() {
                // A bare tag ("latest") names nothing by itself; `--name` supplies the repository.
                if n.contains('/') || n.contains(':') || key == "io.containerd.image.name" {
                    references.push(reference::normalize(n));
                }
            }
        }
        let mut digest = desc["digest"].as_str().unwrap_or_default().to_string();
        let media = desc["mediaType"].as_str().unwrap_or_default();
        let mut manifest = read_json(layout, &verified_blob(layout, &digest)?.0)?;
        if MANIFEST_LIST_TYPES.contains(&media) || manifest["manifests"].is_array() {
            let chosen = pick_platform(&manifest)
                .ok_or_else(|| ImageError::Corrupt("an empty image index".into()))?
                .clone();
            digest = chosen["digest"].as_str().unwrap_or_default().to_string();
            manifest = read_json(layout, &verified_blob(layout, &digest)?.0)?;
        }
        let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default().to_string();
        let config = read_json(layout, &verified_blob(layout, &config_digest)?.0)?;
        let mut blobs = Vec::new();
        let mut size = 0;
        for l in manifest["layers"].as_array().into_iter().flatten() {
            let (p, s) = verified_blob(layout, l["digest"].as_str().unwrap_or_default())?;
            blobs.push(p);
            size += s;
        }
        let (cfg, diff_ids) = image_config(&config);
        unpack_layers(store, layout, &blobs, &diff_ids)?;
        out.push(ImageRecord {
            id: config_digest,
            references,
            layers: diff_ids,
            config: cfg,
            size,
        });
    }
    Ok(out)
}

/// A file the archive's manifest names, which must be inside the archive: a relative path with
/// no `..` (an absolute one, joined, would replace `dir`).
fn in_archive(dir: &Path, name: &str) -> Result<PathBuf, ImageError> {
    let rel = Path::new(name);
    if name.is_empty()
        || !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
    {
        return Err(ImageError::Corrupt(format!("path {name:?} leaves the archive")));
    }
    Ok(dir.join(rel))
}

fn docker_archive(store: &ImageStore, dir: &Path) -> Result<Vec<ImageRecord>, ImageError> {
    let manifest = read_json(dir, &dir.join("manifest.json"))?;
    let mut out = Vec::new();
    for m in manifest.as_array().into_iter().flatten() {
        let config_path = in_archive(dir, m["Config"].as_str().unwrap_or_default())?;
        let (id, _) = file_digest(dir, &config_path)?;
        let config = read_json(dir, &config_path)?;
        let mut blobs = Vec::new();
        let mut size = 0;
        for l in strings(&m["Layers"]) {
            let p = in_archive(dir, &l)?;
            size += open_in(dir, &p)?
                .metadata()
                .map_err(|e| ImageError::Corrupt(format!("{l}: {e}")))?
                .len();
            blobs.push(p);
        }
        let (cfg, diff_ids) = image_config(&config);
        unpack_layers(store, dir, &blobs, &diff_ids)?;
        let references = strings(&m["RepoTags"])
            .iter()
            .map(|r| reference::normalize(r))
            .collect();
        out.push(ImageRecord {
            id,
            references,
            layers: diff_ids,
            config: cfg,
            size,
        });
    }
    Ok(out)
}

/// Unpack and check everything in `src`; the caller publishes the records.
pub(super) fn stage(store: &ImageStore, src: &Path) -> Result<Vec<ImageRecord>, ImageError> {
    let meta = std::fs::metadata(src).map_err(|e| ImageError::Io {
        what: format!("{}", src.display()),
        source: e,
    })?;
    if meta.is_dir() {
        return staged_dir(store, src);
    }
    let tmp = scratch(store, "archive")?;
    let file = File::open(src).map_err(|e| ImageError::Io {
        what: format!("{}", src.display()),
        source: e,
    })?;
    let mut archive = tar::Archive::new(decompressed(file)?);
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    archive
        .unpack(&tmp.0)
        .map_err(|e| ImageError::Corrupt(format!("{}: not a readable tar archive: {e}", src.display())))?;
    staged_dir(store, &tmp.0)
}

fn staged_dir(store: &ImageStore, dir: &Path) -> Result<Vec<ImageRecord>, ImageError> {
    if dir.join("index.json").exists() && dir.join("blobs").is_dir() {
        oci_layout(store, dir)
    } else if dir.join("manifest.json").exists() {
        docker_archive(store, dir)
    } else {
        Err(ImageError::Unsupported(format!(
            "{}: neither an OCI image layout (index.json, blobs/) nor a docker save archive (manifest.json)",
            dir.display()
        )))
    }
}
