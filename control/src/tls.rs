//! The cluster CA (made at first start), the API server's serving certificate, and the two
//! halves of the kubelet API's mutual TLS: the client certificate control presents to nodes
//! (`kubelet-client.crt`, CN [`KUBELET_CLIENT_NAME`], client-auth only) and the serving
//! certificates nodes get from the same CA ([`issue_kubelet_serving`]). A node accepts only a
//! client certificate of the cluster CA that carries that name, so no other certificate the CA
//! issued (the API server's, another node's) opens a node's exec or logs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("invalid PEM in {0}")]
    Pem(PathBuf),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The common name of the client certificate control presents to nodes' kubelet APIs; nodes
/// accept no other by default.
pub const KUBELET_CLIENT_NAME: &str = "nodeless-kubelet-client";

/// A certificate and its private key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    crate::private::write(path, contents.as_bytes()).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

/// A leaf certificate of the CA: `common_name`, valid for `hosts` (names and IP addresses),
/// for `usage`.
fn leaf_params(
    common_name: &str,
    hosts: &[String],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(hosts.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params.extended_key_usages = vec![usage];
    Ok(params)
}

/// Sign `params` with the CA under `dir`; a new key pair.
fn sign(dir: &Path, params: CertificateParams) -> Result<Issued, TlsError> {
    let ca_key_pair = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
    let ca = ca_params()?.self_signed(&ca_key_pair)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key_pair)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for a node's kubelet API, from the cluster CA under `pki_dir`: for the
/// node's `hosts` (the addresses control dials: its InternalIP) and its name. Made in memory at
/// each node start; only the CA's key is on disk.
pub fn issue_kubelet_serving(pki_dir: &Path, node: &str, hosts: &[String]) -> Result<Issued, TlsError> {
    let mut names = hosts.to_vec();
    if !names.iter().any(|h| h == node) {
        names.push(node.to_string());
    }
    sign(
        pki_dir,
        leaf_params(
            &format!("system:node:{node}"),
            &names,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )?,
    )
}

/// A client certificate from the cluster CA under `pki_dir` for `common_name`: the kubelet
/// client's, and tests' (a certificate of the right CA with the wrong name must be refused).
pub fn issue_client(pki_dir: &Path, common_name: &str) -> Result<Issued, TlsError> {
    sign(
        pki_dir,
        leaf_params(common_name, &[], rcgen::ExtendedKeyUsagePurpose::ClientAuth)?,
    )
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo, as kubeadm's `--discovery-token-ca-cert-hash`
/// pins a cluster CA: `openssl x509 -pubkey -in ca.crt | openssl pkey -pubin -outform der |
/// sha256sum` gives the same hex.
pub fn spki_hash(cert_der: &[u8]) -> Option<String> {
    use sha2::Digest;
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).ok()?;
    Some(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(cert.public_key().raw))
    ))
}

/// [`spki_hash`] of the first certificate in `pem`.
pub fn spki_hash_pem(pem: &str) -> Option<String> {
    let certs = parse_certs(pem, "certificate").ok()?;
    spki_hash(certs.first()?.as_ref())
}

/// Sign a certificate for the public key of a certificate signing request (`csr_pem`, its
/// signature checked) with the CA under `pki_dir`: subject `common_name` in `organizations`,
/// for `hosts` (serving certificates), with `usage`, valid from now for `valid_for`. Nothing the
/// request asks for beyond its key is taken from it; the signer decides the rest.
pub fn sign_request(
    pki_dir: &Path,
    csr_pem: &str,
    common_name: &str,
    organizations: &[String],
    hosts: &[String],
    usage: rcgen::ExtendedKeyUsagePurpose,
    valid_for: std::time::Duration,
) -> Result<String, TlsError> {
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
    let mut params = leaf_params(common_name, hosts, usage)?;
    for o in organizations {
        params.distinguished_name.push(DnType::OrganizationName, o.as_str());
    }
    let now = std::time::SystemTime::now();
    // A minute's slack for clocks that run behind the signer's.
    params.not_before = (now - std::time::Duration::from_secs(60)).into();
    params.not_after = (now + valid_for).into();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    csr.params = params;
    let ca_key_pair = KeyPair::from_pem(&read(&pki_dir.join("ca.key"))?)?;
    let ca = ca_params()?.self_signed(&ca_key_pair)?;
    Ok(csr.signed_by(&ca, &ca_key_pair)?.pem())
}

/// A new key (ECDSA P-256) and a PEM certificate request for a node's certificate: subject
/// `system:node:<node>` in `system:nodes`, for `hosts` (a serving certificate's names and IP
/// addresses; none for a client certificate). Returns (request, key).
pub fn node_request(node: &str, hosts: &[String]) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("system:node:{node}"));
    dn.push(DnType::OrganizationName, "system:nodes");
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// What a certificate signing request asks for, its signature checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    /// Any other subject alternative name (e-mail, URI…).
    pub other_names: usize,
}

/// Read a PEM certificate signing request (`CERTIFICATE REQUEST`), checking its signature.
pub fn inspect_request(pem: &str) -> Result<Requested, String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
    if block.label != "CERTIFICATE REQUEST" {
        return Err(format!(
            "a PEM block of type \"{}\", not \"CERTIFICATE REQUEST\"",
            block.label
        ));
    }
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| format!("not a certificate request: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "the request's signature does not verify with its own key".to_string())?;
    let subject = &csr.certification_request_info.subject;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| a.as_str().map(str::to_string).ok();
    let mut out = Requested {
        common_name: subject.iter_common_name().next().and_then(text).unwrap_or_default(),
        organizations: subject.iter_organization().filter_map(text).collect(),
        ..Default::default()
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => out.dns_names.push(d.to_string()),
                    GeneralName::IPAddress(b) => match <[u8; 4]>::try_from(*b) {
                        Ok(v4) => out.ips.push(v4.into()),
                        Err(_) => match <[u8; 16]>::try_from(*b) {
                            Ok(v6) => out.ips.push(v6.into()),
                            Err(_) => out.other_names += 1,
                        },
                    },
                    _ => out.other_names += 1,
                }
            }
        }
    }
    Ok(out)
}

/// The key that signs ServiceAccount tokens (`sa.key`, ECDSA P-256, PKCS#8 PEM), made at first
/// start and kept, so tokens stay valid across restarts.
pub fn service_account_key(pki_dir: &Path) -> Result<String, TlsError> {
    let path = pki_dir.join("sa.key");
    match std::fs::read_to_string(&path) {
        Ok(pem) => Ok(pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pem = KeyPair::generate()?.serialize_pem();
            write_private(&path, &pem)?;
            Ok(pem)
        }
        Err(source) => Err(TlsError::Io { path, source }),
    }
}

fn parse_certs(pem: &str, what: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem(what.into()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(what.into()));
    }
    Ok(certs)
}

fn parse_key(pem: &str, what: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|_| TlsError::Pem(what.into()))?
        .ok_or_else(|| TlsError::Pem(what.into()))
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "nodeless-ca");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

/// The CA and serving certificate files under the data directory.
pub struct Pki {
    pub ca_cert_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// Control's client certificate for nodes' kubelet APIs (CN [`KUBELET_CLIENT_NAME`]).
    pub kubelet_client: Issued,
}

impl Pki {
    /// Load the PKI from `dir` (0700, its files 0600), making the CA and the kubelet client
    /// certificate on first start and a serving certificate for `hosts` (names and IP addresses)
    /// whenever the hosts change.
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Self, TlsError> {
        crate::private::dir(dir).map_err(|source| TlsError::Io {
            path: dir.into(),
            source,
        })?;
        let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let (srv_crt, srv_key, srv_hosts) = (dir.join("server.crt"), dir.join("server.key"), dir.join("server.hosts"));
        let (cli_crt, cli_key) = (dir.join("kubelet-client.crt"), dir.join("kubelet-client.key"));
        if !ca_crt.exists() || !ca_key.exists() {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_private(&ca_key, &key.serialize_pem())?;
            write_private(&ca_crt, &cert.pem())?;
            let _ = std::fs::remove_file(&srv_crt);
            let _ = std::fs::remove_file(&cli_crt);
        }
        let wanted_hosts = hosts.join(",");
        let have_hosts = std::fs::read_to_string(&srv_hosts).unwrap_or_default();
        if !srv_crt.exists() || !srv_key.exists() || have_hosts != wanted_hosts {
            let issued = sign(
                dir,
                leaf_params("nodeless-apiserver", hosts, rcgen::ExtendedKeyUsagePurpose::ServerAuth)?,
            )?;
            write_private(&srv_key, &issued.key_pem)?;
            write_private(&srv_crt, &issued.cert_pem)?;
            write_private(&srv_hosts, &wanted_hosts)?;
        }
        if !cli_crt.exists() || !cli_key.exists() {
            let issued = issue_client(dir, KUBELET_CLIENT_NAME)?;
            write_private(&cli_key, &issued.key_pem)?;
            write_private(&cli_crt, &issued.cert_pem)?;
        }
        // Files written by a version that left them readable.
        for f in [&ca_crt, &ca_key, &srv_crt, &srv_key, &srv_hosts, &cli_crt, &cli_key] {
            crate::private::file(f).map_err(|source| TlsError::Io {
                path: f.to_path_buf(),
                source,
            })?;
        }
        Ok(Self {
            ca_cert_pem: read(&ca_crt)?,
            server_cert_pem: read(&srv_crt)?,
            server_key_pem: read(&srv_key)?,
            kubelet_client: Issued {
                cert_pem: read(&cli_crt)?,
                key_pem: read(&cli_key)?,
            },
        })
    }

    /// How control dials nodes' kubelet APIs: trusting only the cluster CA for the node's
    /// serving certificate, and presenting the kubelet client certificate.
    pub fn kubelet_client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in parse_certs(&self.ca_cert_pem, "ca.crt")? {
            roots.add(cert)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                parse_certs(&self.kubelet_client.cert_pem, "kubelet-client.crt")?,
                parse_key(&self.kubelet_client.key_pem, "kubelet-client.key")?,
            )?;
        Ok(Arc::new(cfg))
    }

    /// A rustls server configuration offering HTTP/2 and HTTP/1.1 by ALPN. It sends the CA
    /// after the serving certificate, so a joining host can pin the CA by its hash
    /// (`--ca-cert-hash`, [`spki_hash`]), and asks for a client certificate of the cluster CA
    /// without requiring one (tokens stay good; nodes authenticate with their certificates).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut certs = parse_certs(&self.server_cert_pem, "server.crt")?;
        let ca = parse_certs(&self.ca_cert_pem, "ca.crt")?;
        let key = parse_key(&self.server_key_pem, "server.key")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in &ca {
            roots.add(cert.clone())?;
        }
        certs.extend(ca);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(format!("client certificate verifier: {e}"))))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(clients)
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}
