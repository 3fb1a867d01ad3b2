//! Who a request comes from. Three kinds of bearer token are accepted: the admin token (user
//! `nodeless:admin`, in `system:masters`), the read-only token (user `nodeless:viewer`, bound to
//! `nodeless:cluster-viewer`), and ServiceAccount tokens this control plane signed ([`jwt`]),
//! which stop working when their ServiceAccount, or the Pod or Secret they are bound to, is gone.
//! What a user may do is RBAC's to say (`crate::rbac`): the tokens are ordinary subjects.
//!
//! Hosts that join a cluster authenticate in two more ways, as kubelets do: with a bootstrap
//! token ([`bootstrap`]) until they have a certificate, then with a client certificate of the
//! cluster CA ([`certificate_user`]: the common name is the user, the organizations its groups,
//! so a node's is `system:node:<name>` in `system:nodes`).

pub mod bootstrap;
pub mod jwt;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::Store;

/// The user of the admin token, and the user of the read-only token.
pub const ADMIN_USER: &str = "nodeless:admin";
pub const VIEWER_USER: &str = "nodeless:viewer";
/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group whose members may do anything, whatever RBAC's bindings say.
pub const SUPERUSERS: &str = "system:masters";
/// The group of nodes' users, and the prefix of a node's user name.
pub const NODES: &str = "system:nodes";
pub const NODE_USER_PREFIX: &str = "system:node:";

/// An authenticated user, as `user.Info` describes one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    pub fn admin() -> Self {
        User {
            name: ADMIN_USER.into(),
            groups: vec![SUPERUSERS.into(), AUTHENTICATED.into()],
            ..Default::default()
        }
    }

    pub fn viewer() -> Self {
        User {
            name: VIEWER_USER.into(),
            groups: vec![AUTHENTICATED.into()],
            ..Default::default()
        }
    }

    /// The user a ServiceAccount's token stands for.
    pub fn service_account(namespace: &str, name: &str, uid: &str) -> Self {
        User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            uid: uid.into(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                AUTHENTICATED.into(),
            ],
            extra: BTreeMap::new(),
        }
    }

    /// A member of `system:masters`: allowed everything, before any binding is read.
    pub fn is_superuser(&self) -> bool {
        self.groups.iter().any(|g| g == SUPERUSERS)
    }

    /// The Node this user is, for a node's credentials (`system:node:<name>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        let name = self.name.strip_prefix(NODE_USER_PREFIX)?;
        (!name.is_empty() && self.groups.iter().any(|g| g == NODES)).then_some(name)
    }

    /// As a `UserInfo` object (reviews, `kubectl auth whoami`).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = serde_json::json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = serde_json::json!(self.extra);
        }
        v
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    pub admin: String,
    pub viewer: String,
}

fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Tokens {
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())));
        }
        let tokens = Tokens {
            admin: new_token(),
            viewer: new_token(),
        };
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(serde_json::to_string_pretty(&tokens).unwrap_or_default().as_bytes())?;
        f.sync_all()?;
        Ok(tokens)
    }
}

tokio::task_local! {
    /// The user a request runs as, for what is decided deeper down (RBAC's escalation check,
    /// Knative's `creator` annotations). Writes by control's own controllers have none.
    pub static REQUESTER: User;
}

/// The user of the request being served, if a request (not a controller) is being served.
pub fn requester() -> Option<User> {
    REQUESTER.try_with(Clone::clone).ok()
}

/// How long a token whose signature checked out is taken without checking it again (the
/// apiserver caches successful token authentications for 10 s too). Only the signature: that
/// its ServiceAccount, Pod or Secret still exist is looked up on every request.
const VERIFIED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Authenticator {
    tokens: HashMap<String, User>,
    pub issuer: jwt::Issuer,
    /// Tokens whose signature, issuer and audience checked out, with their claims. An ES256
    /// verification costs about as much as the rest of a small request.
    verified: moka::sync::Cache<String, jwt::Claims>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(tokens: &Tokens, issuer: jwt::Issuer) -> Self {
        let mut map = HashMap::new();
        map.insert(tokens.admin.clone(), User::admin());
        map.insert(tokens.viewer.clone(), User::viewer());
        Self {
            tokens: map,
            issuer,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_FOR)
                .build(),
        }
    }

    /// The user of an `Authorization` header value, if it carries a known bearer token.
    pub fn authenticate(&self, store: &Store, header: Option<&str>) -> Option<User> {
        let token = header?.strip_prefix("Bearer ")?.trim();
        self.user_of(store, token)
    }

    /// The user a token stands for: a static token, or a ServiceAccount token that is valid for
    /// the API now (signature, audience, expiry, and the objects it names still there).
    pub fn user_of(&self, store: &Store, token: &str) -> Option<User> {
        // Compare in constant time per candidate so a token cannot be guessed byte by byte.
        if let Some((_, u)) = self
            .tokens
            .iter()
            .find(|(t, _)| constant_eq(t.as_bytes(), token.as_bytes()))
        {
            return Some(u.clone());
        }
        if let Some(user) = bootstrap::user_of(store, token) {
            return Some(user);
        }
        if token.matches('.').count() != 2 {
            return None;
        }
        let claims = match self.verified.get(token).filter(|c| c.exp > jwt::now()) {
            Some(c) => c,
            None => {
                let c = self.issuer.verify(token, jwt::ISSUER).ok()?;
                self.verified.insert(token.to_string(), c.clone());
                c
            }
        };
        service_account_user(store, &claims).ok()
    }
}

fn uid_at(store: &Store, key: &str) -> Option<String> {
    let s = store.get(key)?;
    if s.obj.pointer("/metadata/deletionTimestamp").is_some() {
        return None;
    }
    s.obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The user of verified claims, if what they name still exists with the same uid.
pub fn service_account_user(store: &Store, c: &jwt::Claims) -> Result<User, String> {
    let k = &c.kubernetes;
    let ns = &k.namespace;
    let sa = &k.serviceaccount;
    if uid_at(store, &format!("/core/serviceaccounts/{ns}/{}", sa.name)).as_deref() != Some(sa.uid.as_str()) {
        return Err(format!("service account {ns}/{} has been deleted", sa.name));
    }
    let mut user = User::service_account(ns, &sa.name, &sa.uid);
    if let Some(pod) = &k.pod {
        if uid_at(store, &format!("/core/pods/{ns}/{}", pod.name)).as_deref() != Some(pod.uid.as_str()) {
            return Err(format!("pod {ns}/{} has been deleted", pod.name));
        }
        user.extra
            .insert("authentication.kubernetes.io/pod-name".into(), vec![pod.name.clone()]);
        user.extra
            .insert("authentication.kubernetes.io/pod-uid".into(), vec![pod.uid.clone()]);
    }
    if let Some(secret) = &k.secret {
        if uid_at(store, &format!("/core/secrets/{ns}/{}", secret.name)).as_deref() != Some(secret.uid.as_str()) {
            return Err(format!("secret {ns}/{} has been deleted", secret.name));
        }
    }
    user.extra.insert(
        "authentication.kubernetes.io/credential-id".into(),
        vec![format!("JTI={}", c.jti)],
    );
    Ok(user)
}

/// The user of a client certificate the TLS handshake verified against the cluster CA: its
/// common name, in its organizations as groups, as the apiserver's x509 authenticator reads it.
pub fn certificate_user(der: &[u8]) -> Option<User> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push(AUTHENTICATED.into());
    Some(User {
        name,
        groups,
        ..Default::default()
    })
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_by_token() {
        let t = Tokens {
            admin: "a1".into(),
            viewer: "v1".into(),
        };
        let issuer = jwt::Issuer::from_pem(&rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let auth = Authenticator::new(&t, issuer);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        assert_eq!(auth.authenticate(&store, Some("Bearer a1")), Some(User::admin()));
        assert_eq!(auth.authenticate(&store, Some("Bearer v1")), Some(User::viewer()));
        assert_eq!(auth.authenticate(&store, Some("Bearer x")), None);
        assert_eq!(auth.authenticate(&store, Some("Basic a1")), None);
        assert_eq!(auth.authenticate(&store, None), None);
        assert!(User::admin().groups.contains(&SUPERUSERS.to_string()));
        assert!(!User::viewer().groups.contains(&SUPERUSERS.to_string()));
    }
}
