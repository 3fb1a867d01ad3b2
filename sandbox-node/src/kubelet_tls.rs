//! Who may use the kubelet API. It runs commands in pods as root (exec, attach), reads their logs
//! and opens their ports, and it listens on a TCP port that any local user (loopback is no
//! boundary) or any peer on the node's network can reach; kubelet guards the same API with a
//! client CA. So the node serves it over TLS with a certificate from the cluster CA and asks
//! every client for a certificate: one that chains to the client CA (rustls'
//! `WebPkiClientVerifier`, which also wants the client-auth key usage) and whose subject common
//! name is one the node was told to accept — by default only control's
//! ([`DEFAULT_CLIENT_NAME`]), so no other certificate of the same CA (the API server's, another
//! node's serving certificate) is taken for control.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The client certificate name control presents (`nodeless_control::tls::KUBELET_CLIENT_NAME`;
/// spelled here too because components do not depend on each other).
pub const DEFAULT_CLIENT_NAME: &str = "nodeless-kubelet-client";

#[derive(Debug, thiserror::Error)]
pub enum KubeletTlsError {
    #[error("{0}: no PEM certificate or key in it")]
    Pem(String),
    #[error("the kubelet API's client CA: {0}")]
    ClientCa(String),
    #[error("no client certificate name to accept (--kubelet-client-name)")]
    NoClientNames,
    #[error("the kubelet API's TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the kubelet API serves with and whom it lets in.
#[derive(Clone)]
pub struct KubeletTls {
    /// The node's serving certificate (and any intermediates), PEM.
    pub cert_chain_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// The CA client certificates must chain to, PEM.
    pub client_ca_pem: String,
    /// Common names a client certificate may carry.
    pub client_names: Vec<String>,
}

impl std::fmt::Debug for KubeletTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletTls")
            .field("client_names", &self.client_names)
            .finish_non_exhaustive()
    }
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, KubeletTlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| KubeletTlsError::Pem(what.into()))?;
    if certs.is_empty() {
        return Err(KubeletTlsError::Pem(what.into()));
    }
    Ok(certs)
}

impl KubeletTls {
    /// The rustls configuration: HTTP/1.1 (upgrades to websockets and SPDY ride on it), a
    /// client certificate required and checked by [`NamedClients`].
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, KubeletTlsError> {
        if self.client_names.iter().all(|n| n.is_empty()) {
            return Err(KubeletTlsError::NoClientNames);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&self.client_ca_pem, "the client CA")? {
            roots.add(ca).map_err(|e| KubeletTlsError::ClientCa(e.to_string()))?;
        }
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| KubeletTlsError::ClientCa(e.to_string()))?;
        let verifier = Arc::new(NamedClients {
            inner: webpki,
            names: self.client_names.clone(),
        });
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .map_err(|_| KubeletTlsError::Pem("the serving key".into()))?
            .ok_or_else(|| KubeletTlsError::Pem("the serving key".into()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&self.cert_chain_pem, "the serving certificate")?, key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// The subject common names of a DER certificate (none if it does not parse).
pub fn common_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect()
}

/// Whether a certificate with these common names is one of `allowed`: exactly one common name
/// (a subject with two could name an allowed client beside another), and it is allowed.
pub fn name_allowed(names: &[String], allowed: &[String]) -> bool {
    matches!(names, [one] if allowed.iter().any(|a| a == one))
}

/// rustls' chain verification, then the subject's common name.
#[derive(Debug)]
struct NamedClients {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

impl ClientCertVerifier for NamedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if !name_allowed(&common_names(end_entity), &self.names) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_a_single_allowed_common_name_passes() {
        let allowed = names(&[DEFAULT_CLIENT_NAME]);
        assert!(name_allowed(&names(&[DEFAULT_CLIENT_NAME]), &allowed));
        assert!(!name_allowed(&names(&["nodeless-apiserver"]), &allowed));
        assert!(!name_allowed(&names(&[]), &allowed));
        assert!(!name_allowed(&names(&["other", DEFAULT_CLIENT_NAME]), &allowed));
        assert!(!name_allowed(&names(&[DEFAULT_CLIENT_NAME]), &[]));
    }

    #[test]
    fn common_names_come_from_the_subject() {
        let mut params = rcgen::CertificateParams::new(vec!["ignored.example".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, DEFAULT_CLIENT_NAME);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "nodeless");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_names(cert.der()), names(&[DEFAULT_CLIENT_NAME]));
        assert!(common_names(b"not a certificate").is_empty());
    }

    #[test]
    fn a_configuration_needs_a_name_to_accept_and_a_client_ca() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut tls = KubeletTls {
            cert_chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            client_ca_pem: cert.pem(),
            client_names: names(&[DEFAULT_CLIENT_NAME]),
        };
        assert!(tls.server_config().is_ok());
        tls.client_names.clear();
        assert!(matches!(tls.server_config(), Err(KubeletTlsError::NoClientNames)));
        tls.client_names = names(&[DEFAULT_CLIENT_NAME]);
        tls.client_ca_pem = String::new();
        assert!(matches!(tls.server_config(), Err(KubeletTlsError::Pem(_))));
    }

    /// A CA, and leaf certificates from it.
    struct Ca {
        key: rcgen::KeyPair,
        cert: rcgen::Certificate,
    }

    impl Ca {
        fn new() -> Ca {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, "test-ca");
            let cert = p.self_signed(&key).unwrap();
            Ca { key, cert }
        }

        fn leaf(&self, cn: &str, sans: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
            let mut p = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    /// A handshake and one byte each way between the node's configuration and a client
    /// presenting `identity` (or none), trusting `server_ca`.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        server_ca: &str,
        identity: Option<(String, String)>,
    ) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certs(server_ca, "ca").unwrap().remove(0)).unwrap();
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let client = match identity {
            Some((c, k)) => b
                .with_client_auth_cert(
                    certs(&c, "client").unwrap(),
                    rustls_pemfile::private_key(&mut k.as_bytes()).unwrap().unwrap(),
                )
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        let (a, z) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(async move {
            let mut s = tokio_rustls::TlsAcceptor::from(server)
                .accept(z)
                .await
                .map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            s.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            s.write_all(&byte).await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())
        });
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let dialed = async {
            let mut c = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, a)
                .await
                .map_err(|e| e.to_string())?;
            c.write_all(b"x").await.map_err(|e| e.to_string())?;
            c.flush().await.map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            c.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        }
        .await;
        let served = serve.await.unwrap();
        dialed.and(served)
    }

    #[tokio::test]
    async fn only_controls_certificate_from_the_client_ca_gets_through() {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let cluster = Ca::new();
        let (cert, key) = cluster.leaf("system:node:n1", &["127.0.0.1"], ServerAuth);
        let tls = KubeletTls {
            cert_chain_pem: cert,
            key_pem: key,
            client_ca_pem: cluster.cert.pem(),
            client_names: names(&[DEFAULT_CLIENT_NAME]),
        };
        let server = tls.server_config().unwrap();
        let ca = cluster.cert.pem();
        assert_eq!(
            handshake(
                server.clone(),
                &ca,
                Some(cluster.leaf(DEFAULT_CLIENT_NAME, &[], ClientAuth))
            )
            .await,
            Ok(())
        );
        assert!(
            handshake(server.clone(), &ca, None).await.is_err(),
            "no client certificate"
        );
        assert!(
            handshake(
                server.clone(),
                &ca,
                Some(Ca::new().leaf(DEFAULT_CLIENT_NAME, &[], ClientAuth))
            )
            .await
            .is_err(),
            "another CA"
        );
        assert!(
            handshake(
                server.clone(),
                &ca,
                Some(cluster.leaf("system:node:n2", &[], ClientAuth))
            )
            .await
            .is_err(),
            "another name"
        );
        assert!(
            handshake(
                server.clone(),
                &ca,
                Some(cluster.leaf(DEFAULT_CLIENT_NAME, &["127.0.0.1"], ServerAuth))
            )
            .await
            .is_err(),
            "a serving certificate"
        );
    }
}
