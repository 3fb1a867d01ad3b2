//! Writing an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) from a config and
//! layer blobs: what a registry pull produces before import, and how test images are made.

use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::ImageError;

fn put(dir: &Path, bytes: &[u8]) -> Result<(String, usize), ImageError> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    let p = dir.join("blobs/sha256").join(&digest[7..]);
    std::fs::create_dir_all(p.parent().unwrap_or(dir)).map_err(ImageError::io("writing a blob"))?;
    std::fs::write(&p, bytes).map_err(ImageError::io("writing a blob"))?;
    Ok((digest, bytes.len()))
}

/// A layer blob already in the layout's `blobs/sha256/`: (media type, digest, size).
pub type PlacedLayer = (String, String, u64);

/// Write a one-image layout under `dir`: the config, the layers (media type, blob) bottom first,
/// a manifest and an index naming the image `reference`.
pub fn write(dir: &Path, reference: &str, config: &[u8], layers: &[(&str, &[u8])]) -> Result<(), ImageError> {
    let mut placed = Vec::new();
    for (media_type, blob) in layers {
        let (d, size) = put(dir, blob)?;
        placed.push((media_type.to_string(), d, size as u64));
    }
    write_placed(dir, reference, config, &placed)
}

/// Like [`write`], for layers whose blobs were streamed into `blobs/sha256/` already (see
/// [`blob_path`]).
pub fn write_placed(dir: &Path, reference: &str, config: &[u8], layers: &[PlacedLayer]) -> Result<(), ImageError> {
    let (config_digest, config_size) = put(dir, config)?;
    let descriptors: Vec<_> = layers
        .iter()
        .map(|(m, d, size)| json!({"mediaType": m, "digest": d, "size": size}))
        .collect();
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descriptors});
    let (md, msize) = put(dir, manifest.to_string().as_bytes())?;
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize,
        "annotations": {"org.opencontainers.image.ref.name": reference}}]});
    std::fs::write(dir.join("index.json"), index.to_string()).map_err(ImageError::io("writing index.json"))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion": "1.0.0"}"#)
        .map_err(ImageError::io("writing oci-layout"))
}

/// Where the blob `digest` goes in the layout at `dir`, once the digest is checked to be a
/// well-formed sha256 (a registry's manifest names it).
pub fn blob_path(dir: &Path, digest: &str) -> Result<std::path::PathBuf, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(dir.join("blobs/sha256").join(hex))
        }
        _ => Err(ImageError::Corrupt(format!("unsupported digest {digest:?}"))),
    }
}
