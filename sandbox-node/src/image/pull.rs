//! Pulling images from registries through the OCI distribution protocol (with `oci-client`):
//! the manifest for this platform, its config and layers are written as an OCI layout in the
//! store's scratch space and imported from there, so a pulled image passes the same digest and
//! diff-ID checks as an imported one. Layers stream to disk, each held to the size its manifest
//! declares (and at most [`MAX_LAYER`]): a registry cannot make the node hold an image in memory
//! or write more than it announced.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{self, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use tokio::io::AsyncWrite;

use super::layout::PlacedLayer;
use super::{ImageError, ImageRecord, ImageStore, reference};

/// The largest compressed layer the node pulls; a registry may declare anything.
const MAX_LAYER: u64 = 16 << 30;

const LAYER_TYPES: [&str; 4] = [
    manifest::IMAGE_LAYER_MEDIA_TYPE,
    manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE,
    manifest::IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE,
    manifest::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
];

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
    let r: oci_client::Reference = full
        .parse()
        .map_err(|e| ImageError::Pull(format!("{image:?} is not a valid reference: {e}")))?;
    let client = oci_client::Client::new(ClientConfig {
        protocol: protocol(insecure, r.registry()),
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    });
    let (manifest, _, config) = client
        .pull_manifest_and_config(&r, &RegistryAuth::Anonymous)
        .await
        .map_err(|e| ImageError::Pull(format!("pulling {full}: {e}")))?;
    let dir = store
        .root()
        .join("tmp")
        .join(format!("pull-{}-{}", std::process::id(), rand::random::<u32>()));
    let fetched = fetch_layers(&client, &r, &manifest, &dir).await;
    let written = fetched.and_then(|layers| super::layout::write_placed(&dir, &full, config.as_bytes(), &layers));
    let imported = written.and_then(|()| store.import(&dir, Some(&full)));
    let _ = std::fs::remove_dir_all(&dir);
    imported?
        .into_iter()
        .next()
        .ok_or_else(|| ImageError::Pull(format!("{full}: the registry sent no image")))
}

/// Stream every layer the manifest names into the layout at `dir`, each held to the size the
/// manifest declares and to [`MAX_LAYER`]; nothing is held in memory whole.
async fn fetch_layers(
    client: &oci_client::Client,
    r: &oci_client::Reference,
    manifest: &OciImageManifest,
    dir: &Path,
) -> Result<Vec<PlacedLayer>, ImageError> {
    let mut placed = Vec::new();
    for layer in &manifest.layers {
        if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
            return Err(ImageError::Unsupported(format!(
                "layer media type {:?}",
                layer.media_type
            )));
        }
        let declared = u64::try_from(layer.size)
            .map_err(|_| ImageError::Corrupt(format!("layer {} has a negative size", layer.digest)))?;
        if declared > MAX_LAYER {
            return Err(ImageError::Pull(format!(
                "layer {} is {declared} bytes, more than the node takes ({MAX_LAYER})",
                layer.digest
            )));
        }
        let path = super::layout::blob_path(dir, &layer.digest)?;
        std::fs::create_dir_all(path.parent().unwrap_or(dir)).map_err(ImageError::io("writing a blob"))?;
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(ImageError::io("writing a blob"))?;
        let mut out = Capped {
            inner: file,
            left: declared,
        };
        client
            .pull_blob(r, layer, &mut out)
            .await
            .map_err(|e| ImageError::Pull(format!("pulling layer {}: {e}", layer.digest)))?;
        out.inner.sync_all().await.map_err(ImageError::io("writing a blob"))?;
        placed.push((layer.media_type.clone(), layer.digest.clone(), declared));
    }
    Ok(placed)
}

/// A writer that takes at most the bytes a descriptor declared.
struct Capped<W> {
    inner: W,
    left: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Capped<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            return Poll::Ready(Err(std::io::Error::other(
                "the registry sent more bytes than the manifest declares",
            )));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.left -= *n as u64;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_blob_longer_than_declared_is_cut_off() {
        let mut w = Capped {
            inner: Vec::new(),
            left: 4,
        };
        w.write_all(b"abcd").await.unwrap();
        assert!(w.write_all(b"e").await.is_err());
        assert_eq!(w.inner, b"abcd");
    }
}
