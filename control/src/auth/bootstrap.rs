//! Bootstrap tokens, as kubeadm makes them: a Secret `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token` holding `token-id` and `token-secret`; the bearer token is
//! `<id>.<secret>` (6 and 16 characters of `[a-z0-9]`). A token authenticates as
//! `system:bootstrap:<id>` in the group `system:bootstrappers` (and the `auth-extra-groups` the
//! Secret lists) while its `usage-bootstrap-authentication` is `"true"` and its `expiration` has
//! not passed. What such a user may do is RBAC's to say: by default, ask for a node's client
//! certificate (`crate::rbac::defaults`), nothing else. `nodeless token create` makes one.

use base64::Engine;
use serde_json::{Value, json};

use super::{AUTHENTICATED, User};
use crate::store::Store;

/// The Secret type of bootstrap tokens.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The group every bootstrap token's user is in.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The namespace bootstrap token Secrets live in.
pub const NAMESPACE: &str = "kube-system";

/// `<id>.<secret>` split, if `token` has the shape of a bootstrap token.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// A new token `<id>.<secret>`, from the OS's random source.
pub fn generate() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect()
    };
    let id = pick(6);
    format!("{id}.{}", pick(16))
}

/// The Secret that makes `token` valid until `expiration` (RFC 3339), for authentication only,
/// with `description`.
pub fn secret(token: &str, expiration: &str, description: &str) -> Option<Value> {
    let (id, secret) = parse(token)?;
    Some(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": NAMESPACE},
        "type": SECRET_TYPE,
        "stringData": {
            "description": description,
            "token-id": id,
            "token-secret": secret,
            "expiration": expiration,
            "usage-bootstrap-authentication": "true",
        },
    }))
}

fn data(secret: &Value, field: &str) -> Option<String> {
    let encoded = secret.pointer(&format!("/data/{field}"))?.as_str()?;
    let raw = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    String::from_utf8(raw).ok()
}

/// The user of a bootstrap token whose Secret exists, is for authentication and has not expired.
pub fn user_of(store: &Store, token: &str) -> Option<User> {
    let (id, given) = parse(token)?;
    let stored = store.get(&format!("/core/secrets/{NAMESPACE}/bootstrap-token-{id}"))?;
    let s = &*stored.obj;
    if s.get("type").and_then(Value::as_str) != Some(SECRET_TYPE)
        || s.pointer("/metadata/deletionTimestamp").is_some()
        || data(s, "token-id").as_deref() != Some(id)
        || data(s, "usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return None;
    }
    let secret = data(s, "token-secret")?;
    if !super::constant_eq(secret.as_bytes(), given.as_bytes()) {
        return None;
    }
    if let Some(exp) = data(s, "expiration") {
        let exp = chrono::DateTime::parse_from_rfc3339(&exp).ok()?;
        if exp <= chrono::Utc::now() {
            return None;
        }
    }
    let mut groups = vec![BOOTSTRAPPERS.to_string()];
    // Extra groups must stay under system:bootstrappers: a token cannot be made an admin's.
    groups.extend(
        data(s, "auth-extra-groups")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|g| g.starts_with("system:bootstrappers:"))
            .map(str::to_string),
    );
    groups.push(AUTHENTICATED.into());
    Some(User {
        name: format!("system:bootstrap:{id}"),
        groups,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_kubeadms_shape() {
        let t = generate();
        let (id, key) = parse(&t).expect("a generated token parses");
        assert_eq!((id.len(), key.len()), (6, 16));
        assert_eq!(parse("abcdef.0123456789abcdef"), Some(("abcdef", "0123456789abcdef")));
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "a.b.c",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let s = secret("abcdef.0123456789abcdef", "2030-01-01T00:00:00Z", "x").unwrap();
        assert_eq!(s["metadata"]["name"], "bootstrap-token-abcdef");
        assert_eq!(s["stringData"]["token-secret"], "0123456789abcdef");
    }
}
