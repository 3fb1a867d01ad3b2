//! Long-lived ServiceAccount token Secrets, as Kubernetes' tokens controller fills them: a
//! Secret of type `kubernetes.io/service-account-token` annotated
//! `kubernetes.io/service-account.name: <account>` gets `data.token`, `data.ca.crt` and
//! `data.namespace`, and the account's uid in `kubernetes.io/service-account.uid`. Tools written
//! before TokenRequest (CI systems, dashboards, `kubectl` configs handed to people) still ask
//! for tokens this way.
//!
//! The token is a JWT bound to the Secret: deleting the Secret revokes it, and so does deleting
//! the account (the check every request makes, `auth::service_account_user`). Kubernetes'
//! legacy tokens carry no expiry; the JWTs here need one, and it is a century away. A Secret
//! filled for an account that is gone, or for an earlier account of the same name (another
//! uid), is deleted, as Kubernetes deletes it. One that names an account not made yet stays
//! empty and is looked at again, so a manifest listing the Secret before the account works.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::{Outcome, is_deleting, keys_where, split_key, str_at};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::auth::jwt;
use crate::store::Event;

pub const TYPE: &str = "kubernetes.io/service-account-token";
pub const ACCOUNT_NAME: &str = "kubernetes.io/service-account.name";
pub const ACCOUNT_UID: &str = "kubernetes.io/service-account.uid";
/// How long a legacy token lives (they have no expiry in Kubernetes).
const LIFETIME: u64 = 100 * 365 * 24 * 3600;
/// How soon a Secret waiting for its account is looked at again.
const WAIT_FOR_ACCOUNT: Duration = Duration::from_secs(5);

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer(&format!("/metadata/annotations/{}", key.replace('/', "~1")))
        .and_then(Value::as_str)
}

fn is_token_secret(obj: &Value) -> bool {
    str_at(obj, "/type") == TYPE
}

pub fn interested(client: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with("/core/secrets/") {
        return if is_token_secret(&ev.obj) {
            vec![ev.key.clone()]
        } else {
            Vec::new()
        };
    }
    // An account made or gone: the Secrets that name it.
    if ev.key.starts_with("/core/serviceaccounts/") {
        let ns = str_at(&ev.obj, "/metadata/namespace");
        let account = str_at(&ev.obj, "/metadata/name");
        let secrets = client.served("", "secrets");
        return keys_where(client, &secrets, Some(ns), &|s| {
            is_token_secret(s) && annotation(s, ACCOUNT_NAME) == Some(account)
        });
    }
    Vec::new()
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    let secrets = client.served("", "secrets");
    keys_where(client, &secrets, None, &is_token_secret)
}

pub async fn reconcile(client: LocalClient, key: String) -> Outcome {
    let (ns, name) = split_key(&key);
    let ns = ns.unwrap_or_default().to_string();
    let secrets = client.served("", "secrets");
    let Some(secret) = client.get(&secrets, Some(&ns), name) else {
        return Ok(None);
    };
    if !is_token_secret(&secret.obj) || is_deleting(&secret.obj) {
        return Ok(None);
    }
    let Some(account) = annotation(&secret.obj, ACCOUNT_NAME).map(str::to_string) else {
        return Ok(None);
    };
    let filled_for = annotation(&secret.obj, ACCOUNT_UID).map(str::to_string);
    let accounts = client.served("", "serviceaccounts");
    let sa = client
        .get(&accounts, Some(&ns), &account)
        .filter(|sa| !is_deleting(&sa.obj));
    let uid = sa.as_ref().map(|sa| str_at(&sa.obj, "/metadata/uid").to_string());
    match (&filled_for, &uid) {
        // Filled for an account that is gone or was made again: the token means nothing now.
        (Some(was), now) if now.as_deref() != Some(was.as_str()) => {
            tracing::info!(namespace = %ns, secret = %name, account = %account, "the token's account is gone: deleting its Secret");
            return client.delete(&secrets, Some(&ns), name, None).await.map(|()| None);
        }
        (_, None) => return Ok(Some(WAIT_FOR_ACCOUNT)),
        (Some(_), Some(_)) if has_token(&secret.obj) => return Ok(None),
        _ => {}
    }
    let uid = uid.unwrap_or_default();
    let private = jwt::Private {
        namespace: ns.clone(),
        serviceaccount: jwt::Ref {
            name: account.clone(),
            uid: uid.clone(),
        },
        pod: None,
        secret: Some(jwt::Ref {
            name: name.to_string(),
            uid: str_at(&secret.obj, "/metadata/uid").to_string(),
        }),
    };
    let (token, _) = client
        .state
        .auth
        .issuer
        .issue(vec![jwt::ISSUER.to_string()], LIFETIME, private)
        .map_err(ApiError::Internal)?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut new = (*secret.obj).clone();
    new["metadata"]["annotations"][ACCOUNT_UID] = json!(uid);
    if !new.get("data").is_some_and(Value::is_object) {
        new["data"] = json!({});
    }
    new["data"]["token"] = json!(b64(&token));
    new["data"]["ca.crt"] = json!(b64(&client.state.ca_pem));
    new["data"]["namespace"] = json!(b64(&ns));
    client.update(&secrets, &secret, new).await?;
    Ok(None)
}

fn has_token(secret: &Value) -> bool {
    secret
        .pointer("/data/token")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty())
}
