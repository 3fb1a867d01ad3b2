//! Bearer-token authentication with two roles: admin (everything) and viewer — Kubernetes'
//! `view` ClusterRole: reads, but no Secrets (a Secret's bytes are credentials, not a view of the
//! cluster) and none of the subresources that reach into a pod (exec, attach, port-forward,
//! proxy), whatever the method: a websocket exec is a GET with `Upgrade`.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Viewer,
}

impl Role {
    pub fn user(self) -> &'static str {
        match self {
            Role::Admin => "nodeless:admin",
            Role::Viewer => "nodeless:viewer",
        }
    }
}

/// The token file under the data directory.
/// Subresources that act on a running pod or node rather than show an object.
const ACTING_SUBRESOURCES: [&str; 4] = ["exec", "attach", "portforward", "proxy"];

/// What a request asks for, as far as authorization cares.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// GET or HEAD (list and watch included).
    pub read: bool,
    pub group: &'a str,
    pub plural: &'a str,
    pub sub: Option<&'a str>,
}

/// Why a role may not do what it asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The role only reads.
    Write,
    /// Secrets are not part of the view.
    Secrets,
    /// exec, attach, port-forward and proxy act on a pod, whatever the method.
    Acting,
}

impl Role {
    /// The one authorization decision: `Ok` or why not.
    pub fn authorize(self, r: &Request<'_>) -> Result<(), Denial> {
        if self == Role::Admin {
            return Ok(());
        }
        if r.sub.is_some_and(|s| ACTING_SUBRESOURCES.contains(&s)) {
            return Err(Denial::Acting);
        }
        if r.group.is_empty() && r.plural == "secrets" {
            return Err(Denial::Secrets);
        }
        if !r.read {
            return Err(Denial::Write);
        }
        Ok(())
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

#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<String, Role>,
}

impl Authenticator {
    pub fn new(tokens: &Tokens) -> Self {
        let mut map = HashMap::new();
        map.insert(tokens.admin.clone(), Role::Admin);
        map.insert(tokens.viewer.clone(), Role::Viewer);
        Self { tokens: map }
    }

    /// The role of an `Authorization` header value, if it carries a known bearer token.
    pub fn authenticate(&self, header: Option<&str>) -> Option<Role> {
        let token = header?.strip_prefix("Bearer ")?.trim();
        // Compare in constant time per candidate so a token cannot be guessed byte by byte.
        self.tokens
            .iter()
            .find(|(t, _)| constant_eq(t.as_bytes(), token.as_bytes()))
            .map(|(_, r)| *r)
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_token() {
        let t = Tokens {
            admin: "a1".into(),
            viewer: "v1".into(),
        };
        let auth = Authenticator::new(&t);
        assert_eq!(auth.authenticate(Some("Bearer a1")), Some(Role::Admin));
        assert_eq!(auth.authenticate(Some("Bearer v1")), Some(Role::Viewer));
        assert_eq!(auth.authenticate(Some("Bearer x")), None);
        assert_eq!(auth.authenticate(Some("Basic a1")), None);
        assert_eq!(auth.authenticate(None), None);
    }

    #[test]
    fn the_viewer_is_kubernetes_view_role() {
        let req = |read, group, plural, sub| Request {
            read,
            group,
            plural,
            sub,
        };
        let v = Role::Viewer;
        assert_eq!(v.authorize(&req(true, "", "pods", None)), Ok(()));
        assert_eq!(v.authorize(&req(true, "", "pods", Some("log"))), Ok(()));
        assert_eq!(v.authorize(&req(true, "apps", "deployments", Some("scale"))), Ok(()));
        assert_eq!(v.authorize(&req(false, "", "pods", None)), Err(Denial::Write));
        for sub in ACTING_SUBRESOURCES {
            assert_eq!(
                v.authorize(&req(true, "", "pods", Some(sub))),
                Err(Denial::Acting),
                "{sub}"
            );
            assert_eq!(
                v.authorize(&req(false, "", "pods", Some(sub))),
                Err(Denial::Acting),
                "{sub}"
            );
        }
        assert_eq!(
            v.authorize(&req(true, "", "services", Some("proxy"))),
            Err(Denial::Acting)
        );
        assert_eq!(v.authorize(&req(true, "", "secrets", None)), Err(Denial::Secrets));
        // A CRD's resource that happens to be called secrets is not the core kind.
        assert_eq!(v.authorize(&req(true, "example.com", "secrets", None)), Ok(()));
        for sub in [None, Some("exec")] {
            assert_eq!(Role::Admin.authorize(&req(false, "", "secrets", sub)), Ok(()));
        }
    }
}
