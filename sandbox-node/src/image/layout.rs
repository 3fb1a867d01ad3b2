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

/// Write a one-image layout under `dir`: the config, the layers (media type, blob) bottom first,
/// a manifest and an index naming the image `reference`.
pub fn write(dir: &Path, reference: &str, config: &[u8], layers: &[(&str, &[u8])]) -> Result<(), ImageError> {
    let (config_digest, config_size) = put(dir, config)?;
    let mut descriptors = Vec::new();
    for (media_type, blob) in layers {
        let (d, size) = put(dir, blob)?;
        descriptors.push(json!({"mediaType": media_type, "digest": d, "size": size}));
    }
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descriptors});
    let (md, msize) = put(dir, manifest.to_string().as_bytes())?;
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize,
        "annotations": {"org.opencontainers.image.ref.name": reference}}]});
    std::fs::write(dir.join("index.json"), index.to_string()).map_err(ImageError::io("writing index.json"))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion": "1.0.0"}"#).map_err(ImageError::io("writing oci-layout"))
}
