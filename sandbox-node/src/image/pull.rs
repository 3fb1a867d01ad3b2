//! Pulling images from registries through the OCI distribution protocol (with `oci-client`):
//! the manifest for this platform, its config and layers are written as an OCI layout in the
//! store's scratch space and imported from there, so a pulled image passes the same digest and
//! diff-ID checks as an imported one.

use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest;
use oci_client::secrets::RegistryAuth;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{ImageError, ImageRecord, ImageStore, reference};

const LAYER_TYPES: [&str; 4] =
    [manifest::IMAGE_LAYER_MEDIA_TYPE, manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE, manifest::IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE, manifest::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE];

/// Which registries are reached over plain HTTP (`--insecure-registry`, and loopback ones).
fn protocol(insecure: &[String], registry: &str) -> ClientProtocol {
    let host = registry.split(':').next().unwrap_or(registry);
    let loopback = host == "localhost" || host.starts_with("127.") || host == "[::1]";
    if loopback || insecure.iter().any(|i| i == registry || i == host) {
        ClientProtocol::HttpsExcept(vec![registry.to_string()])
    } else {
        ClientProtocol::Https
    }
}

fn put(dir: &Path, bytes: &[u8]) -> Result<(String, usize), ImageError> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    let p = dir.join("blobs/sha256").join(&digest[7..]);
    std::fs::create_dir_all(p.parent().unwrap_or(dir)).map_err(ImageError::io("writing a pulled blob"))?;
    std::fs::write(&p, bytes).map_err(ImageError::io("writing a pulled blob"))?;
    Ok((digest, bytes.len()))
}

/// Pull `image` (as a pod names it) into the store.
pub async fn pull(store: &ImageStore, image: &str, insecure: &[String]) -> Result<ImageRecord, ImageError> {
    let full = reference::normalize(image);
    let r: oci_client::Reference = full.parse().map_err(|e| ImageError::Pull(format!("{image:?} is not a valid reference: {e}")))?;
    let client = oci_client::Client::new(ClientConfig {
        protocol: protocol(insecure, r.registry()),
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    });
    let data = client.pull(&r, &RegistryAuth::Anonymous, LAYER_TYPES.to_vec()).await.map_err(|e| ImageError::Pull(format!("pulling {full}: {e}")))?;
    let dir = store.root().join("tmp").join(format!("pull-{}-{}", std::process::id(), rand::random::<u32>()));
    let written = (|| -> Result<(), ImageError> {
        let (config_digest, config_size) = put(&dir, &data.config.data)?;
        let mut layers = Vec::new();
        for l in &data.layers {
            let (d, size) = put(&dir, &l.data)?;
            layers.push(json!({"mediaType": l.media_type, "digest": d, "size": size}));
        }
        let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": manifest::IMAGE_CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size}, "layers": layers});
        let (md, msize) = put(&dir, manifest.to_string().as_bytes())?;
        let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": full}}]});
        std::fs::write(dir.join("index.json"), index.to_string()).map_err(ImageError::io("writing a pulled index"))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion": "1.0.0"}"#).map_err(ImageError::io("writing a pulled layout"))
    })();
    let imported = written.and_then(|()| store.import(&dir, Some(&full)));
    let _ = std::fs::remove_dir_all(&dir);
    imported?.into_iter().next().ok_or_else(|| ImageError::Pull(format!("{full}: the registry sent no image")))
}
