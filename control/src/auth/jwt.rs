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
    /// The public key as a JSON Web Key (RFC 7517), for `/openid/v1/jwks`.
    jwk: serde_json::Value,
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
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let kid = b64(&sha2::Sha256::digest(pair.public_key_der()));
        // The uncompressed point: 0x04, then X and Y, 32 bytes each.
        let point = pair.public_key_raw();
        if point.len() != 65 || point[0] != 4 {
            return Err("signing key: not an uncompressed P-256 point".into());
        }
        let jwk = serde_json::json!({"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..])});
        Ok(Self {
            encoding,
            decoding,
            kid,
            jwk,
        })
    }

    /// The key set relying parties verify tokens with (`/openid/v1/jwks`).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [self.jwk]})
    }

    /// The OpenID provider configuration (`/.well-known/openid-configuration`), with the key
    /// set at `jwks_uri`.
    pub fn discovery(jwks_uri: &str) -> serde_json::Value {
        serde_json::json!({
            "issuer": ISSUER,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
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
    fn the_key_set_holds_the_key_tokens_name() {
        use base64::Engine;
        let i = issuer();
        let (token, _) = i.issue(vec![ISSUER.into()], 600, private()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        let set = i.jwks();
        let key = &set["keys"][0];
        assert_eq!(key["kid"].as_str(), header.kid.as_deref());
        // The published key verifies the token.
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.clone()).unwrap();
        let decoding = DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[ISSUER]);
        assert!(jsonwebtoken::decode::<Claims>(&token, &decoding, &v).is_ok());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        assert_eq!(b64.decode(key["x"].as_str().unwrap()).unwrap().len(), 32);
        assert_eq!(Issuer::discovery("https://h/openid/v1/jwks")["issuer"], ISSUER);
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
