//! Pulling images from registries through the OCI distribution protocol (with `oci-client`):
//! the manifest for this platform, its config and layers are written as an OCI layout in the
//! store's scratch space and imported from there, so a pulled image passes the same digest and
//! diff-ID checks as an imported one.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest;
use oci_client::secrets::RegistryAuth;

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
    let layers: Vec<(&str, &[u8])> = data.layers.iter().map(|l| (l.media_type.as_str(), &l.data[..])).collect();
    let written = super::layout::write(&dir, &full, &data.config.data, &layers);
    let imported = written.and_then(|()| store.import(&dir, Some(&full)));
    let _ = std::fs::remove_dir_all(&dir);
    imported?.into_iter().next().ok_or_else(|| ImageError::Pull(format!("{full}: the registry sent no image")))
}
