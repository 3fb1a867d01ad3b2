//! Bearer-token authentication with two roles: admin (everything) and viewer (read only).

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
        let tokens = Tokens { admin: new_token(), viewer: new_token() };
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
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
        self.tokens.iter().find(|(t, _)| constant_eq(t.as_bytes(), token.as_bytes())).map(|(_, r)| *r)
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
        let t = Tokens { admin: "a1".into(), viewer: "v1".into() };
        let auth = Authenticator::new(&t);
        assert_eq!(auth.authenticate(Some("Bearer a1")), Some(Role::Admin));
        assert_eq!(auth.authenticate(Some("Bearer v1")), Some(Role::Viewer));
        assert_eq!(auth.authenticate(Some("Bearer x")), None);
        assert_eq!(auth.authenticate(Some("Basic a1")), None);
        assert_eq!(auth.authenticate(None), None);
    }
}
