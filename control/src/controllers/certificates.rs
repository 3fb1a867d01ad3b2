//! Approving and signing CertificateSigningRequests, as kube-controller-manager's csrapproving
//! and csrsigning controllers do, with the cluster CA.
//!
//! Approved on their own:
//! - a node's client certificate (`kubernetes.io/kube-apiserver-client-kubelet`, subject
//!   `system:node:<name>` in `system:nodes`, client auth only), asked for by a user RBAC lets
//!   create `certificatesigningrequests/nodeclient` (bootstrap tokens, by default) or, for its own
//!   name, `certificatesigningrequests/selfnodeclient` (a node renewing);
//! - a node's kubelet serving certificate (`kubernetes.io/kubelet-serving`) asked for by that node
//!   itself, for its own name and addresses no other Node claims (Kubernetes leaves these to an
//!   administrator or an approver such as kubelet-csr-approver, which checks the same).
//!
//! Requests are removed an hour after they are decided and a day after they are made if nobody
//! decides, as kube-controller-manager's cleaner does. Everything else waits for
//! `kubectl certificate approve`. Approved requests of the three
//! signers control knows are signed for what the signer allows and no more; a request a signer
//! cannot sign gets a `Failed` condition with the reason.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::split_key;
use crate::admission::certificates::{
    CLIENT_SIGNER, KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER, request_pem, strings, usages,
};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::auth::{NODE_USER_PREFIX, NODES, User};
use crate::rbac::{self, Attributes};
use crate::store::Event;
use crate::tls::Requested;

const GROUP: &str = "certificates.k8s.io";
const PLURAL: &str = "certificatesigningrequests";
/// How long a certificate lasts unless the request asks for less (kube-controller-manager's
/// `--cluster-signing-duration` default).
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    if ev.key.starts_with(&format!("/{GROUP}/{PLURAL}/")) {
        vec![ev.key.clone()]
    } else {
        Vec::new()
    }
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    super::all_keys(client, GROUP, PLURAL)
}

fn has_condition(csr: &Value, kind: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("type").and_then(Value::as_str) == Some(kind)
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
}

fn requester(csr: &Value) -> User {
    User {
        name: csr
            .pointer("/spec/username")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        groups: strings(csr, "/spec/groups"),
        ..Default::default()
    }
}

/// The node a request's subject names, if it is a node's (`system:node:<name>` in exactly
/// `system:nodes`, no other names).
fn node_subject(req: &Requested) -> Option<&str> {
    let node = req
        .common_name
        .strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty())?;
    (req.organizations == [NODES]).then_some(node)
}

/// Whether every usage is one of `allowed` and `needed` is among them.
fn usages_fit(csr: &Value, allowed: &[&str], needed: &str) -> bool {
    let u = usages(csr);
    u.iter().any(|x| x == needed) && u.iter().all(|x| allowed.contains(&x.as_str()))
}

const CLIENT_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];
const SERVING_USAGES: &[&str] = &["digital signature", "key encipherment", "server auth"];

/// Why `req` is no node's client certificate, if it is not.
fn kubelet_client_problem(csr: &Value, req: &Requested) -> Option<&'static str> {
    if node_subject(req).is_none() {
        return Some("the subject must be CN=system:node:<name>, O=system:nodes");
    }
    if !req.dns_names.is_empty() || !req.ips.is_empty() || req.other_names > 0 {
        return Some("a node's client certificate carries no subject alternative names");
    }
    if !usages_fit(csr, CLIENT_USAGES, "client auth") {
        return Some("usages must be client auth, with digital signature or key encipherment");
    }
    None
}

/// Why `req` is no kubelet serving certificate, if it is not.
fn kubelet_serving_problem(csr: &Value, req: &Requested) -> Option<&'static str> {
    let Some(node) = node_subject(req) else {
        return Some("the subject must be CN=system:node:<name>, O=system:nodes");
    };
    if req.other_names > 0 || req.dns_names.iter().any(|d| d != node) {
        return Some("a kubelet serving certificate names only the node and its IP addresses");
    }
    if req.ips.is_empty() && req.dns_names.is_empty() {
        return Some("a kubelet serving certificate needs at least one name or IP address");
    }
    if !usages_fit(csr, SERVING_USAGES, "server auth") {
        return Some("usages must be server auth, with digital signature or key encipherment");
    }
    None
}

/// Addresses another Node (not `node`) lists.
fn claimed_by_others(client: &LocalClient, node: &str) -> Vec<String> {
    let nodes = client.served("", "nodes");
    client
        .list(&nodes, None, &|_| true)
        .iter()
        .filter(|n| n.obj.pointer("/metadata/name").and_then(Value::as_str) != Some(node))
        .flat_map(|n| {
            n.obj
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a.get("address").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The reason to approve `csr` on its own, if there is one.
fn auto_approval(client: &LocalClient, csr: &Value, req: &Requested) -> Option<String> {
    let signer = csr.pointer("/spec/signerName").and_then(Value::as_str)?;
    let who = requester(csr);
    let may = |sub: &str| {
        rbac::authorize(
            &client.state.store,
            &who,
            &Attributes::resource("create", GROUP, PLURAL, Some(sub), None, None),
        )
        .allowed
    };
    match signer {
        KUBELET_CLIENT_SIGNER if kubelet_client_problem(csr, req).is_none() => {
            if who.name == req.common_name && may("selfnodeclient") {
                Some("Auto approving self kubelet client certificate after SubjectAccessReview.".into())
            } else if who.name != req.common_name && may("nodeclient") {
                Some("Auto approving kubelet client certificate after SubjectAccessReview.".into())
            } else {
                None
            }
        }
        KUBELET_SERVING_SIGNER if kubelet_serving_problem(csr, req).is_none() => {
            let node = node_subject(req)?;
            if who.node_name() != Some(node) {
                return None;
            }
            let others = claimed_by_others(client, node);
            if req.ips.iter().any(|ip| others.contains(&ip.to_string())) {
                return None;
            }
            Some(format!(
                "Auto approving the serving certificate of node {node}: asked by the node, for its own name and addresses no other node claims."
            ))
        }
        _ => None,
    }
}

/// What an approved request of a signer control knows is signed as: (CN, O, hosts, usage), or
/// why it cannot be.
fn signing_terms(csr: &Value, req: &Requested) -> Result<(Vec<String>, rcgen::ExtendedKeyUsagePurpose), &'static str> {
    let signer = csr
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match signer {
        KUBELET_CLIENT_SIGNER => match kubelet_client_problem(csr, req) {
            Some(why) => Err(why),
            None => Ok((Vec::new(), rcgen::ExtendedKeyUsagePurpose::ClientAuth)),
        },
        KUBELET_SERVING_SIGNER => match kubelet_serving_problem(csr, req) {
            Some(why) => Err(why),
            None => Ok((
                req.dns_names
                    .iter()
                    .cloned()
                    .chain(req.ips.iter().map(ToString::to_string))
                    .collect(),
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            )),
        },
        CLIENT_SIGNER => {
            if req.common_name.is_empty() {
                Err("a client certificate needs a common name: its user")
            } else if !req.dns_names.is_empty() || !req.ips.is_empty() || req.other_names > 0 {
                Err("a client certificate for the API server carries no subject alternative names")
            } else if !usages_fit(csr, CLIENT_USAGES, "client auth") {
                Err("usages must be client auth, with digital signature or key encipherment")
            } else {
                Ok((Vec::new(), rcgen::ExtendedKeyUsagePurpose::ClientAuth))
            }
        }
        _ => Err("not a signer of this cluster"),
    }
}

fn condition(kind: &str, reason: &str, message: &str) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({"type": kind, "status": "True", "reason": reason, "message": message,
           "lastUpdateTime": now, "lastTransitionTime": now})
}

/// How long a request is kept once decided (approved, denied, failed) and while pending, as
/// kube-controller-manager's CSR cleaner keeps them.
const KEEP_DECIDED: Duration = Duration::from_secs(3600);
const KEEP_PENDING: Duration = Duration::from_secs(24 * 3600);

/// Approve, sign, and clean up one request; looked at again when it is due to be removed.
pub async fn reconcile(client: LocalClient, key: String) -> super::Outcome {
    let served = client.served(GROUP, PLURAL);
    let (_, name) = split_key(&key);
    let Some(current) = client.get(&served, None, name) else {
        return Ok(None);
    };
    let csr = &*current.obj;
    let age = chrono::DateTime::parse_from_rfc3339(super::str_at(csr, "/metadata/creationTimestamp"))
        .ok()
        .and_then(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).to_std().ok())
        .unwrap_or_default();
    let issued = csr
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty());
    let decided = issued || ["Approved", "Denied", "Failed"].iter().any(|c| has_condition(csr, c));
    let keep = if decided { KEEP_DECIDED } else { KEEP_PENDING };
    if age >= keep {
        client.delete(&served, None, name, None).await?;
        tracing::info!(csr = %name, "removed a certificate signing request past its time");
        return Ok(None);
    }
    let again = Some(keep - age);
    if issued || has_condition(csr, "Denied") || has_condition(csr, "Failed") {
        return Ok(again);
    }
    let signer = csr
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if ![CLIENT_SIGNER, KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER].contains(&signer) {
        return Ok(again);
    }
    let Some(req) = request_pem(csr).and_then(|pem| crate::tls::inspect_request(&pem).ok()) else {
        return Ok(again); // Admission refuses these; nothing to sign.
    };
    let mut new = csr.clone();
    if !has_condition(csr, "Approved") {
        let Some(why) = auto_approval(&client, csr, &req) else {
            return Ok(again);
        };
        push_condition(&mut new, condition("Approved", "AutoApproved", &why));
        tracing::info!(csr = %name, requester = %requester(csr).name, subject = %req.common_name, "approved");
    }
    match signing_terms(csr, &req) {
        Err(why) => push_condition(&mut new, condition("Failed", "SignerValidationFailure", why)),
        Ok((hosts, usage)) => {
            let asked = csr
                .pointer("/spec/expirationSeconds")
                .and_then(Value::as_u64)
                .map(Duration::from_secs)
                .unwrap_or(MAX_DURATION);
            let pem = request_pem(csr).unwrap_or_default();
            let organizations = req.organizations.clone();
            let pki = client.state.pki_dir.clone();
            let cn = req.common_name.clone();
            let signed = tokio::task::spawn_blocking(move || {
                crate::tls::sign_request(&pki, &pem, &cn, &organizations, &hosts, usage, asked.min(MAX_DURATION))
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
            match signed {
                Ok(cert) => {
                    new["status"]["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(cert));
                    tracing::info!(csr = %name, subject = %req.common_name, signer, "signed");
                }
                Err(e) => push_condition(&mut new, condition("Failed", "SigningError", &e.to_string())),
            }
        }
    }
    client.update_status(&served, &current, new).await?;
    Ok(Some(KEEP_DECIDED.saturating_sub(age)))
}

fn push_condition(csr: &mut Value, c: Value) {
    if !csr.get("status").is_some_and(Value::is_object) {
        csr["status"] = json!({});
    }
    match csr["status"].get_mut("conditions").and_then(Value::as_array_mut) {
        Some(list) => list.push(c),
        None => csr["status"]["conditions"] = json!([c]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requested(cn: &str, orgs: &[&str], dns: &[&str], ips: &[&str]) -> Requested {
        Requested {
            common_name: cn.into(),
            organizations: orgs.iter().map(|s| s.to_string()).collect(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            other_names: 0,
        }
    }

    #[test]
    fn node_certificates_are_held_to_their_shape() {
        let client_csr = json!({"spec": {"usages": ["digital signature", "client auth"]}});
        let ok = requested("system:node:a", &[NODES], &[], &[]);
        assert_eq!(kubelet_client_problem(&client_csr, &ok), None);
        for bad in [
            requested("system:node:a", &[NODES, "system:masters"], &[], &[]),
            requested("admin", &[NODES], &[], &[]),
            requested("system:node:a", &[NODES], &["a"], &[]),
        ] {
            assert!(kubelet_client_problem(&client_csr, &bad).is_some(), "{bad:?}");
        }
        let serving = json!({"spec": {"usages": ["digital signature", "server auth"]}});
        assert!(
            kubelet_client_problem(&serving, &ok).is_some(),
            "server auth is not a client's"
        );
        let host = requested("system:node:a", &[NODES], &["a"], &["10.0.0.5"]);
        assert_eq!(kubelet_serving_problem(&serving, &host), None);
        let other_name = requested("system:node:a", &[NODES], &["b"], &["10.0.0.5"]);
        assert!(kubelet_serving_problem(&serving, &other_name).is_some());
        assert!(kubelet_serving_problem(&client_csr, &host).is_some());
    }
}
