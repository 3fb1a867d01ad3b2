//! ServiceAccount tokens: JWTs signed by control's own key (ES256), with the claims Kubernetes
//! puts in them (`kubernetes.io`: namespace, ServiceAccount, and the Pod or Secret the token is
//! bound to), so client libraries and tools that read them find what they expect.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The issuer and the API's audience, as a cluster with the default `--service-account-issuer`.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Private {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Private,
}

pub struct Issuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("kid", &self.kid).finish()
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Issuer {
    /// From a PKCS#8 PEM ECDSA P-256 private key.
    pub fn from_pem(private_pem: &str) -> Result<Self, String> {
        let pair = rcgen::KeyPair::from_pem(private_pem).map_err(|e| format!("signing key: {e}"))?;
        let public = pair.public_key_pem();
        let encoding = EncodingKey::from_ec_pem(private_pem.as_bytes()).map_err(|e| format!("signing key: {e}"))?;
        let decoding = DecodingKey::from_ec_pem(public.as_bytes()).map_err(|e| format!("signing key: {e}"))?;
        // The key id: a digest of the public key, as Kubernetes derives it.
        use base64::Engine;
        use sha2::Digest;
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(pair.public_key_der()));
        Ok(Self {
            encoding,
            decoding,
            kid,
        })
    }

    /// A token for a ServiceAccount, valid from now for `seconds`.
    pub fn issue(&self, audiences: Vec<String>, seconds: u64, private: Private) -> Result<(String, u64), String> {
        let now = now();
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                private.namespace, private.serviceaccount.name
            ),
            aud: audiences,
            exp: now + seconds,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: private,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| e.to_string())?;
        Ok((token, claims.exp))
    }

    /// The claims of a token this issuer signed that has not expired and names `audience`.
    pub fn verify(&self, token: &str, audience: &str) -> Result<Claims, String> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[audience]);
        v.leeway = 0;
        v.validate_nbf = true;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> Issuer {
        Issuer::from_pem(&rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap()
    }

    fn private() -> Private {
        Private {
            namespace: "ns".into(),
            serviceaccount: Ref {
                name: "robot".into(),
                uid: "u1".into(),
            },
            pod: None,
            secret: None,
        }
    }

    #[test]
    fn a_token_verifies_for_its_audience_only_and_by_its_issuer_only() {
        let i = issuer();
        let (token, exp) = i.issue(vec![ISSUER.into()], 600, private()).unwrap();
        assert!(exp >= now() + 599);
        let claims = i.verify(&token, ISSUER).unwrap();
        assert_eq!(claims.sub, "system:serviceaccount:ns:robot");
        assert_eq!(claims.kubernetes, private());
        assert!(i.verify(&token, "vault").is_err(), "another audience");
        assert!(issuer().verify(&token, ISSUER).is_err(), "another key");
        let mut forged = token.clone();
        forged.replace_range(forged.len() - 4.., "AAAA");
        assert!(i.verify(&forged, ISSUER).is_err());
        let (other, _) = i.issue(vec!["vault".into()], 600, private()).unwrap();
        assert!(i.verify(&other, ISSUER).is_err());
    }
}
