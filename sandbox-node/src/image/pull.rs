//! Pulling images from registries through the OCI distribution protocol (with `oci-client`).
//! A registry's mirrors (`--registry-mirror docker.io=http://127.0.0.1:5000`, several tried in
//! order, then the registry itself, as containerd's `hosts.toml` does) serve the same repository
//! and tag; the image is stored under its own name whichever answered. Credentials come from the
//! pod's `imagePullSecrets` (`kubernetes.io/dockerconfigjson`), matched by registry host.
//! For each pull:
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

/// Which registries are reached over plain HTTP (`--insecure-registry`, loopback ones, and
/// mirrors given as `http://`).
fn protocol(insecure: &[String], registry: &str, plain: bool) -> ClientProtocol {
    let host = registry.split(':').next().unwrap_or(registry);
    let loopback = host == "localhost" || host.starts_with("127.") || host == "[::1]";
    if plain || loopback || insecure.iter().any(|i| i == registry || i == host) {
        ClientProtocol::HttpsExcept(vec![registry.to_string()])
    } else {
        ClientProtocol::Https
    }
}

/// One mirror of a registry: `<registry>=<scheme>://<host>[:<port>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The registry it stands in for, as references name it (`docker.io`).
    pub registry: String,
    /// `host[:port]` of the mirror.
    pub host: String,
    /// `http://`: reached without TLS.
    pub plain_http: bool,
}

impl std::str::FromStr for Mirror {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (registry, endpoint) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: a mirror is <registry>=<http|https>://<host>[:<port>]"))?;
        let registry = match registry.trim() {
            "index.docker.io" | "registry-1.docker.io" => "docker.io",
            r => r,
        };
        let (plain_http, rest) = match endpoint.split_once("://") {
            Some(("http", rest)) => (true, rest),
            Some(("https", rest)) => (false, rest),
            _ => return Err(format!("{s:?}: the mirror's address starts with http:// or https://")),
        };
        let host = rest.trim_end_matches('/');
        if registry.is_empty() || host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
            return Err(format!(
                "{s:?}: a mirror is <registry>=<http|https>://<host>[:<port>] (no path)"
            ));
        }
        Ok(Mirror {
            registry: registry.to_string(),
            host: host.to_string(),
            plain_http,
        })
    }
}

/// How the node reaches registries: `--insecure-registry` and `--registry-mirror`.
#[derive(Clone, Debug, Default)]
pub struct PullConfig {
    pub insecure: Vec<String>,
    pub mirrors: Vec<Mirror>,
}

/// A user name and password for one registry host, from a pull secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub host: String,
    pub username: String,
    pub password: String,
}

/// The credentials in a `.dockerconfigjson` (`{"auths": {"<registry>": {"auth": base64("user:pass")}
/// or {"username", "password"}}}`); a key may be a host or a URL (`https://index.docker.io/v1/`).
pub fn credentials_of(dockerconfigjson: &[u8]) -> Result<Vec<Credential>, String> {
    use base64::Engine;
    let v: serde_json::Value =
        serde_json::from_slice(dockerconfigjson).map_err(|e| format!("not a docker config: {e}"))?;
    let auths = v["auths"].as_object().ok_or("a docker config without \"auths\"")?;
    let mut out = Vec::new();
    for (key, entry) in auths {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        let host = match host {
            "index.docker.io" | "registry-1.docker.io" => "docker.io",
            h => h,
        };
        let (username, password) = match (entry["username"].as_str(), entry["password"].as_str()) {
            (Some(u), Some(p)) => (u.to_string(), p.to_string()),
            _ => {
                let auth = entry["auth"]
                    .as_str()
                    .ok_or_else(|| format!("{key}: neither auth nor username and password"))?;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|e| format!("{key}: auth is not base64: {e}"))?;
                let text = String::from_utf8(decoded).map_err(|_| format!("{key}: auth is not UTF-8"))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| format!("{key}: auth is not user:password"))?;
                (u.to_string(), p.to_string())
            }
        };
        out.push(Credential {
            host: host.to_string(),
            username,
            password,
        });
    }
    Ok(out)
}

/// Where to try `r` from: its registry's mirrors in order, then the registry itself; each with
/// whether it is reached over plain HTTP.
fn sources(r: &oci_client::Reference, mirrors: &[Mirror]) -> Vec<(oci_client::Reference, bool)> {
    let mut out: Vec<(oci_client::Reference, bool)> = mirrors
        .iter()
        .filter(|m| m.registry == r.registry())
        .map(|m| {
            let (host, repo) = (m.host.clone(), r.repository().to_string());
            let at = match (r.tag(), r.digest()) {
                (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(host, repo, t.into(), d.into()),
                (None, Some(d)) => oci_client::Reference::with_digest(host, repo, d.into()),
                (t, None) => oci_client::Reference::with_tag(host, repo, t.unwrap_or("latest").into()),
            };
            (at, m.plain_http)
        })
        .collect();
    out.push((r.clone(), false));
    out
}

/// Pull `image` (as a pod names it) into the store, from its registry's mirrors first.
pub async fn pull(
    store: &ImageStore,
    image: &str,
    cfg: &PullConfig,
    credentials: &[Credential],
) -> Result<ImageRecord, ImageError> {
    let full = reference::normalize(image);
    let r: oci_client::Reference = full
        .parse()
        .map_err(|e| ImageError::Pull(format!("{image:?} is not a valid reference: {e}")))?;
    let mut failures = Vec::new();
    for (source, plain) in sources(&r, &cfg.mirrors) {
        let registry = source.registry().to_string();
        match pull_from(
            store,
            &full,
            &source,
            protocol(&cfg.insecure, &registry, plain),
            credentials,
        )
        .await
        {
            Ok(record) => return Ok(record),
            Err(e) => failures.push(if registry == r.registry() {
                format!("from {registry}: {e}")
            } else {
                format!("from the mirror {registry}: {e}")
            }),
        }
    }
    Err(ImageError::Pull(format!(
        "pulling {full}: {}",
        failures.join("; then ")
    )))
}

/// One source's try: manifest, config and layers into a scratch layout, imported as `full`.
async fn pull_from(
    store: &ImageStore,
    full: &str,
    r: &oci_client::Reference,
    protocol: ClientProtocol,
    credentials: &[Credential],
) -> Result<ImageRecord, ImageError> {
    let client = oci_client::Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    });
    let auth = credentials
        .iter()
        .find(|c| c.host == r.registry())
        .map_or(RegistryAuth::Anonymous, |c| {
            RegistryAuth::Basic(c.username.clone(), c.password.clone())
        });
    let (manifest, _, config) = client
        .pull_manifest_and_config(r, &auth)
        .await
        .map_err(|e| ImageError::Pull(e.to_string()))?;
    let dir = store
        .root()
        .join("tmp")
        .join(format!("pull-{}-{}", std::process::id(), rand::random::<u32>()));
    let fetched = fetch_layers(&client, r, &manifest, &dir).await;
    let written = fetched.and_then(|layers| super::layout::write_placed(&dir, full, config.as_bytes(), &layers));
    let imported = written.and_then(|()| store.import(&dir, Some(full)));
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

    #[test]
    fn mirrors_parse_and_bad_ones_say_what_is_wrong() {
        let m: Mirror = "docker.io=http://127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            m,
            Mirror {
                registry: "docker.io".into(),
                host: "127.0.0.1:5000".into(),
                plain_http: true
            }
        );
        let m: Mirror = "index.docker.io=https://mirror.example/".parse().unwrap();
        assert_eq!(
            (m.registry.as_str(), m.host.as_str(), m.plain_http),
            ("docker.io", "mirror.example", false)
        );
        for bad in [
            "docker.io",
            "docker.io=127.0.0.1:5000",
            "docker.io=http://h/prefix",
            "=http://h",
        ] {
            let e = bad.parse::<Mirror>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_registrys_mirrors_come_first_in_order_then_the_registry() {
        let mirrors: Vec<Mirror> = [
            "docker.io=http://127.0.0.1:5000",
            "quay.io=https://q",
            "docker.io=https://m2",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let r: oci_client::Reference = "docker.io/library/busybox:latest".parse().unwrap();
        let got: Vec<(String, bool)> = sources(&r, &mirrors)
            .into_iter()
            .map(|(r, plain)| (r.whole(), plain))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1:5000/library/busybox:latest".to_string(), true),
                ("m2/library/busybox:latest".to_string(), false),
                ("docker.io/library/busybox:latest".to_string(), false),
            ]
        );
        let pinned: oci_client::Reference =
            "quay.io/a/b@sha256:0123456789012345678901234567890123456789012345678901234567890123"
                .parse()
                .unwrap();
        assert_eq!(sources(&pinned, &mirrors)[0].0.digest(), pinned.digest());
    }

    #[test]
    fn pull_secrets_give_credentials_by_registry_host() {
        let cfg = br#"{"auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"}, "127.0.0.1:5000": {"username": "u", "password": "p:w"}}}"#;
        let got = credentials_of(cfg).unwrap();
        assert_eq!(
            got,
            [
                Credential {
                    host: "docker.io".into(),
                    username: "user".into(),
                    password: "pass".into()
                },
                Credential {
                    host: "127.0.0.1:5000".into(),
                    username: "u".into(),
                    password: "p:w".into()
                },
            ]
        );
        assert!(
            credentials_of(br#"{"auths": {"r": {"auth": "!!"}}}"#)
                .unwrap_err()
                .contains("r: auth is not base64")
        );
        assert!(credentials_of(b"{}").unwrap_err().contains("auths"));
    }

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
