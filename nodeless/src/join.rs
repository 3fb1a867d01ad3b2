//! A host joining a cluster with a bootstrap token, as `kubeadm join` and kubelet's TLS
//! bootstrap do it, and `nodeless token create`, which makes the token.
//!
//! 1. Discovery: the host connects to `--server` and takes the CA whose public key hashes to
//!    `--ca-cert-hash` from the certificates the API server sends (the serving certificate, then
//!    the CA). The handshake is verified against that CA; nothing is sent before it is.
//! 2. With the bootstrap token, it asks for a client certificate for `system:node:<name>`
//!    (signer `kubernetes.io/kube-apiserver-client-kubelet`); control approves it for a user in
//!    `system:bootstrappers` and signs it. The new key never leaves the host.
//! 3. From then on the node uses only that certificate (kept in `<data-dir>/node/kubelet.kubeconfig`,
//!    reused at the next start), and with it asks for its kubelet API's serving certificate
//!    (signer `kubernetes.io/kubelet-serving`, for its name and address).
//!
//! What the node's certificate lets it do is control's node authorizer and NodeRestriction.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use kube::Api;
use nodeless_control::admission::certificates::{KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER};
use nodeless_sandbox_node::kubelet_tls::KubeletTls;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// How long a host waits for its certificate to be approved and signed.
const SIGNING_WAIT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Clone, Default)]
pub struct JoinArgs {
    /// Join the cluster whose API server is here (`https://host:port`) with --token instead of a
    /// kubeconfig; `nodeless token create` prints the whole command.
    #[arg(long, requires_all = ["token", "ca_cert_hash"])]
    pub server: Option<String>,
    /// A bootstrap token (`<id>.<secret>`), used once to get the node's own certificate.
    #[arg(long, requires = "server")]
    pub token: Option<String>,
    /// The cluster CA's public key hash (`sha256:<hex>`) the API server must present.
    #[arg(long, requires = "server")]
    pub ca_cert_hash: Option<String>,
}

/// A host's credentials after joining: its kubeconfig (the node's client certificate) and its
/// kubelet API's serving certificate.
pub struct Joined {
    pub client: kube::Client,
    pub kubelet: KubeletTls,
}

fn kubeconfig_yaml(server: &str, ca_pem: &str, user: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "nodeless", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": "node", "user": user}],
        "contexts": [{"name": "nodeless", "context": {"cluster": "nodeless", "user": "node"}}],
        "current-context": "nodeless",
    }))
    .unwrap_or_default()
}

/// Records the chain the server sends and accepts it only if it holds the pinned CA and the
/// serving certificate verifies against that CA.
#[derive(Debug)]
struct PinnedCa {
    hash: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    found: Mutex<Option<CertificateDer<'static>>>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| nodeless_control::tls::spki_hash(c.as_ref()).as_deref() == Some(self.hash.as_str()))
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the API server presented no CA whose public key hashes to {}",
                    self.hash
                ))
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = verifier.verify_server_cert(end_entity, &[], server_name, ocsp, now)?;
        if let Ok(mut f) = self.found.lock() {
            *f = Some(ca.clone().into_owned());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The cluster CA (PEM) the server at `server` presents, if its key hashes to `hash`.
fn discover_ca(server: &str, hash: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(server).with_context(|| format!("--server {server}"))?;
    anyhow::ensure!(url.scheme() == "https", "--server must be an https:// URL");
    let host = url
        .host_str()
        .context("--server names no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = url.port().unwrap_or(443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pinned = Arc::new(PinnedCa {
        hash: hash.to_ascii_lowercase(),
        provider: provider.clone(),
        found: Mutex::new(None),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(pinned.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name)?;
    let mut tcp =
        std::net::TcpStream::connect((host.as_str(), port)).with_context(|| format!("connecting to {server}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .with_context(|| format!("TLS handshake with {server} (is --ca-cert-hash this cluster's?)"))?;
    }
    let ca = pinned
        .found
        .lock()
        .ok()
        .and_then(|f| f.clone())
        .context("the handshake ended without the pinned CA")?;
    Ok(pem_of(ca.as_ref()))
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// Ask for a certificate from `signer` for `request_pem` and wait until it is issued; its PEM.
async fn request_certificate(
    client: &kube::Client,
    node: &str,
    signer: &str,
    usages: &[&str],
    request_pem: &str,
) -> anyhow::Result<String> {
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut csr = CertificateSigningRequest::default();
    csr.metadata.generate_name = Some(format!("node-csr-{node}-"));
    csr.spec = CertificateSigningRequestSpec {
        request: k8s_openapi::ByteString(request_pem.as_bytes().to_vec()),
        signer_name: signer.to_string(),
        usages: Some(usages.iter().map(|u| u.to_string()).collect()),
        ..Default::default()
    };
    let made = csrs
        .create(&Default::default(), &csr)
        .await
        .with_context(|| format!("asking for a certificate ({signer})"))?;
    let name = made.metadata.name.unwrap_or_default();
    let deadline = tokio::time::Instant::now() + SIGNING_WAIT;
    loop {
        let now = csrs
            .get(&name)
            .await
            .with_context(|| format!("reading CertificateSigningRequest {name}"))?;
        let status = now.status.unwrap_or_default();
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            return String::from_utf8(cert.0).context("the issued certificate is not PEM");
        }
        if let Some(c) = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
        {
            anyhow::bail!(
                "CertificateSigningRequest {name} ({signer}) was {}: {}",
                c.type_.to_lowercase(),
                c.message.unwrap_or_default()
            );
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "CertificateSigningRequest {name} ({signer}) was not signed within {} s: approve it with `kubectl certificate approve {name}`",
            SIGNING_WAIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Join with `args` (or with the credentials an earlier join left in `data_dir`): the node's
/// client and its kubelet API's serving certificate for `host_ip`.
pub async fn join(args: &JoinArgs, data_dir: &Path, node: &str, host_ip: &str) -> anyhow::Result<Joined> {
    let (Some(server), Some(token), Some(hash)) = (&args.server, &args.token, &args.ca_cert_hash) else {
        anyhow::bail!("joining needs --server, --token and --ca-cert-hash");
    };
    let kubeconfig = crate::node_cmd::node_dir(data_dir).join("kubelet.kubeconfig");
    let ca_path = crate::node_cmd::node_dir(data_dir).join("ca.crt");
    let (ca_pem, client) = match (std::fs::read_to_string(&kubeconfig), std::fs::read_to_string(&ca_path)) {
        (Ok(_), Ok(ca)) if nodeless_control::tls::spki_hash_pem(&ca).as_deref() == Some(hash.as_str()) => {
            tracing::info!(kubeconfig = %kubeconfig.display(), "using the node's certificate from an earlier join");
            (ca, crate::node_cmd::client_from(&kubeconfig).await?)
        }
        _ => {
            let (server_, hash_) = (server.clone(), hash.clone());
            let ca = tokio::task::spawn_blocking(move || discover_ca(&server_, &hash_)).await??;
            let bootstrap =
                crate::node_cmd::client_from_yaml(&kubeconfig_yaml(server, &ca, serde_json::json!({"token": token})))
                    .await?;
            let (request, key) = nodeless_control::tls::node_request(node, &[])?;
            let cert = request_certificate(
                &bootstrap,
                node,
                KUBELET_CLIENT_SIGNER,
                &["digital signature", "client auth"],
                &request,
            )
            .await?;
            use base64::Engine;
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            let yaml = kubeconfig_yaml(
                server,
                &ca,
                serde_json::json!({"client-certificate-data": b64(&cert), "client-key-data": b64(&key)}),
            );
            std::fs::create_dir_all(crate::node_cmd::node_dir(data_dir))?;
            crate::node_cmd::write_private(&ca_path, &ca)?;
            crate::node_cmd::write_private(&kubeconfig, &yaml)?;
            println!(
                "nodeless: joined {server} as system:node:{node} (credentials in {})",
                kubeconfig.display()
            );
            (ca, crate::node_cmd::client_from_yaml(&yaml).await?)
        }
    };
    let (request, key) = nodeless_control::tls::node_request(node, &[host_ip.to_string(), node.to_string()])?;
    let cert = request_certificate(
        &client,
        node,
        KUBELET_SERVING_SIGNER,
        &["digital signature", "server auth"],
        &request,
    )
    .await
    .context("getting the kubelet API's serving certificate")?;
    Ok(Joined {
        client,
        kubelet: KubeletTls {
            cert_chain_pem: cert,
            key_pem: key,
            client_ca_pem: ca_pem,
            client_names: Vec::new(),
        },
    })
}

/// `nodeless token create`: a bootstrap token valid for `ttl`, made with the admin `client`,
/// and the command that joins a host with it.
pub async fn create_token(
    client: kube::Client,
    kubeconfig: &Path,
    ttl: Duration,
    server: Option<String>,
) -> anyhow::Result<String> {
    use nodeless_control::auth::bootstrap;
    let token = bootstrap::generate();
    let expires = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + ttl).to_string();
    let secret = bootstrap::secret(&token, &expires, "made by nodeless token create").context("token shape")?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, bootstrap::NAMESPACE);
    secrets
        .create(&Default::default(), &serde_json::from_value(secret)?)
        .await
        .context("creating the bootstrap token's Secret")?;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("the kubeconfig names no cluster")?;
    let server = match server {
        Some(s) => s,
        None => cluster.server.context("the kubeconfig's cluster has no server")?,
    };
    let ca = cluster
        .certificate_authority_data
        .context("the kubeconfig carries no certificate-authority-data")?;
    use base64::Engine;
    let ca_pem = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(ca)?)?;
    let hash = nodeless_control::tls::spki_hash_pem(&ca_pem).context("the kubeconfig's CA is not a certificate")?;
    Ok(format!(
        "nodeless node --server {server} --token {token} --ca-cert-hash {hash}"
    ))
}
