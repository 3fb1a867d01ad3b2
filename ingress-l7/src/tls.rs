//! Certificates by SNI: the TLS hosts of the Ingresses served, each with the key pair of its
//! `kubernetes.io/tls` Secret, picked during the handshake (an exact name first, then a `*.`
//! certificate for the name's parent domain). The set is swapped whole when an Ingress or a
//! Secret changes, so a renewed certificate is served from the next handshake on. A client that
//! names no host, or one without a certificate, gets a self-signed certificate made at start
//! (as ingress-nginx's "fake certificate"), which it will not trust unless told to.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Secret;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::routes::{TlsHost, secret_pem};

#[derive(Debug)]
pub struct Certs {
    by_host: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    fallback: Arc<CertifiedKey>,
}

impl Certs {
    pub fn new() -> Result<Certs, String> {
        let c = rcgen::generate_simple_self_signed(vec!["nodeless-ingress.invalid".to_string()])
            .map_err(|e| format!("making the default certificate: {e}"))?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(c.key_pair.serialize_der().into());
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("the default certificate's key: {e}"))?;
        Ok(Certs {
            by_host: ArcSwap::default(),
            fallback: Arc::new(CertifiedKey::new(vec![c.cert.der().clone()], signing)),
        })
    }

    /// Load the certificates for `hosts` from `secrets` (`namespace/name` -> Secret). A Secret
    /// that is missing or unreadable leaves its hosts out; the reasons are returned.
    pub fn update(&self, hosts: &[TlsHost], secrets: &HashMap<String, Arc<Secret>>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut loaded: HashMap<String, Arc<CertifiedKey>> = HashMap::new();
        let mut by_secret: HashMap<&str, Option<Arc<CertifiedKey>>> = HashMap::new();
        for h in hosts {
            let key = by_secret
                .entry(h.secret.as_str())
                .or_insert_with(|| match secrets.get(&h.secret) {
                    None => {
                        problems.push(format!("secret {} (for {}) does not exist", h.secret, h.host));
                        None
                    }
                    Some(s) => match certified_key(s) {
                        Ok(k) => Some(Arc::new(k)),
                        Err(e) => {
                            problems.push(format!("secret {}: {e}", h.secret));
                            None
                        }
                    },
                });
            if let Some(k) = key {
                loaded.insert(h.host.clone(), k.clone());
            }
        }
        self.by_host.store(Arc::new(loaded));
        problems
    }

    pub fn hosts(&self) -> usize {
        self.by_host.load().len()
    }

    fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.by_host.load();
        let name = name.to_ascii_lowercase();
        map.get(&name).cloned().or_else(|| {
            name.split_once('.')
                .and_then(|(_, parent)| map.get(&format!("*.{parent}")).cloned())
        })
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            hello
                .server_name()
                .and_then(|n| self.lookup(n))
                .unwrap_or_else(|| self.fallback.clone()),
        )
    }
}

/// The key pair of a TLS Secret.
pub fn certified_key(secret: &Secret) -> Result<CertifiedKey, String> {
    let (crt, key) = secret_pem(secret)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut crt.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = rustls_pemfile::private_key(&mut key.as_slice())
        .map_err(|e| format!("tls.key: {e}"))?
        .ok_or("tls.key holds no private key")?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("tls.key: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(name: &str, hosts: &[&str]) -> Arc<Secret> {
        let cert = rcgen::generate_simple_self_signed(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
        let b64 = |s: String| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "default"}, "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(cert.cert.pem()), "tls.key": b64(cert.key_pair.serialize_pem())}}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn certificates_by_exact_and_wildcard_name() {
        let secrets: HashMap<String, Arc<Secret>> = [
            ("default/a".to_string(), secret("a", &["a.example"])),
            ("default/w".to_string(), secret("w", &["*.w.example"])),
            ("default/bad".to_string(), Arc::new(Secret::default())),
        ]
        .into();
        let hosts = vec![
            TlsHost {
                host: "a.example".into(),
                secret: "default/a".into(),
            },
            TlsHost {
                host: "*.w.example".into(),
                secret: "default/w".into(),
            },
            TlsHost {
                host: "b.example".into(),
                secret: "default/bad".into(),
            },
            TlsHost {
                host: "c.example".into(),
                secret: "default/absent".into(),
            },
        ];
        let certs = Certs::new().unwrap();
        let problems = certs.update(&hosts, &secrets);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("default/absent") && p.contains("does not exist")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("default/bad") && p.contains("no data")),
            "{problems:?}"
        );
        assert_eq!(certs.hosts(), 2);
        let a = certs.lookup("A.example").expect("exact, any case");
        let w = certs.lookup("x.w.example").expect("wildcard");
        assert!(!Arc::ptr_eq(&a, &w));
        assert!(certs.lookup("y.x.w.example").is_none(), "a wildcard covers one label");
        assert!(certs.lookup("w.example").is_none());
        assert!(certs.lookup("b.example").is_none());
    }
}
