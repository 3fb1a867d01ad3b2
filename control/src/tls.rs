//! The cluster CA (made at first start) and the API server's serving certificate.

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

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.into(), source })
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io { path: path.into(), source };
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "nodeless-ca");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

/// The CA and serving certificate files under the data directory.
pub struct Pki {
    pub ca_cert_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

impl Pki {
    /// Load the PKI from `dir`, making the CA on first start and a serving certificate for
    /// `hosts` (names and IP addresses) whenever the hosts change.
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Self, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.into(), source })?;
        let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let (srv_crt, srv_key, srv_hosts) = (dir.join("server.crt"), dir.join("server.key"), dir.join("server.hosts"));
        if !ca_crt.exists() || !ca_key.exists() {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_private(&ca_key, &key.serialize_pem())?;
            write_private(&ca_crt, &cert.pem())?;
            let _ = std::fs::remove_file(&srv_crt);
        }
        let wanted_hosts = hosts.join(",");
        let have_hosts = std::fs::read_to_string(&srv_hosts).unwrap_or_default();
        if !srv_crt.exists() || !srv_key.exists() || have_hosts != wanted_hosts {
            let ca_key_pair = KeyPair::from_pem(&read(&ca_key)?)?;
            let ca = ca_params()?.self_signed(&ca_key_pair)?;
            let mut params = CertificateParams::new(hosts.to_vec())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "nodeless-apiserver");
            params.distinguished_name = dn;
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2124, 1, 1);
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca, &ca_key_pair)?;
            write_private(&srv_key, &key.serialize_pem())?;
            write_private(&srv_crt, &cert.pem())?;
            write_private(&srv_hosts, &wanted_hosts)?;
        }
        Ok(Self { ca_cert_pem: read(&ca_crt)?, server_cert_pem: read(&srv_crt)?, server_key_pem: read(&srv_key)? })
    }

    /// A rustls server configuration offering HTTP/2 and HTTP/1.1 by ALPN.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let certs: Vec<_> = rustls_pemfile::certs(&mut self.server_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::Pem("server.crt".into()))?;
        let key = rustls_pemfile::private_key(&mut self.server_key_pem.as_bytes())
            .map_err(|_| TlsError::Pem("server.key".into()))?
            .ok_or_else(|| TlsError::Pem("server.key".into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}
