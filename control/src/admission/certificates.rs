//! CertificateSigningRequests (`certificates.k8s.io/v1`): what a request must hold to be taken,
//! who made it (written by the API server, never by the requester), and what an approval may
//! change. Approving and signing is `crate::controllers::certificates`.

use base64::Engine;
use serde_json::{Value, json};

use super::Cause;
use crate::auth::User;

/// The signers control signs for: client certificates for the API server (approved by an
/// administrator), nodes' client certificates, and nodes' kubelet serving certificates.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// The key usages a request may name (`certificates.k8s.io/v1` KeyUsage).
const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// The PEM text of `spec.request` (base64 in JSON, as every `[]byte` field).
pub fn request_pem(obj: &Value) -> Option<String> {
    let b64 = obj.pointer("/spec/request")?.as_str()?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(raw).ok()
}

/// The strings of the list at `ptr` (a request's usages, its requester's groups).
pub fn strings(obj: &Value, ptr: &str) -> Vec<String> {
    obj.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// The usages a request names.
pub fn usages(obj: &Value) -> Vec<String> {
    strings(obj, "/spec/usages")
}

/// Checks on a new request, as the apiserver's validation makes them.
pub fn validate_create(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    match obj.pointer("/spec/request") {
        None => causes.push(Cause::required("spec.request")),
        Some(_) => match request_pem(obj).map(|pem| crate::tls::inspect_request(&pem)) {
            None => causes.push(Cause::invalid(
                "spec.request",
                &json!("<bytes>"),
                "must be a base64-encoded PEM certificate request",
            )),
            Some(Err(why)) => causes.push(Cause::invalid("spec.request", &json!("<bytes>"), &why)),
            Some(Ok(_)) => {}
        },
    }
    let signer = obj
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if signer.is_empty() {
        causes.push(Cause::required("spec.signerName"));
    } else if signer.split('/').count() != 2 || signer.starts_with('/') || signer.ends_with('/') {
        causes.push(Cause::invalid(
            "spec.signerName",
            &json!(signer),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
    }
    let used = usages(obj);
    if used.is_empty() {
        causes.push(Cause::required("spec.usages"));
    }
    for (i, u) in used.iter().enumerate() {
        if !USAGES.contains(&u.as_str()) {
            causes.push(Cause::unsupported(format!("spec.usages[{i}]"), u, USAGES));
        }
    }
    if let Some(secs) = obj.pointer("/spec/expirationSeconds") {
        if secs.as_i64().is_none_or(|s| s < 600) {
            causes.push(Cause::invalid(
                "spec.expirationSeconds",
                secs,
                "may not specify a duration less than 600 seconds (10 minutes)",
            ));
        }
    }
    causes
}

/// Write who asks into the request (`spec.username`, `uid`, `groups`, `extra`), whatever the
/// body said, and start it with no status.
pub fn stamp_requester(obj: &mut Value, user: &User) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    spec["username"] = json!(user.name);
    spec["groups"] = json!(user.groups);
    match user.uid.as_str() {
        "" => {
            if let Some(m) = spec.as_object_mut() {
                m.remove("uid");
            }
        }
        uid => spec["uid"] = json!(uid),
    }
    match user.extra.is_empty() {
        true => {
            if let Some(m) = spec.as_object_mut() {
                m.remove("extra");
            }
        }
        false => spec["extra"] = json!(user.extra),
    }
    if let Some(m) = obj.as_object_mut() {
        m.remove("status");
    }
}

/// The decisions an approval brings (`Approved` and `Denied` conditions) against the request's
/// current ones: one decision, never both, never taken back.
pub fn approval(old: &Value, decided: &[Value]) -> Vec<Cause> {
    let mut causes = Vec::new();
    let kind = |c: &Value| c.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
    let had: Vec<String> = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(kind)
        .filter(|t| t == "Approved" || t == "Denied")
        .collect();
    let now: Vec<String> = decided.iter().map(kind).collect();
    if now.iter().any(|t| t == "Approved") && now.iter().any(|t| t == "Denied") {
        causes.push(Cause::invalid(
            "status.conditions",
            &json!(now),
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
    for t in &had {
        if !now.contains(t) {
            causes.push(Cause::forbidden(
                "status.conditions",
                &format!("updates may not remove a condition of type \"{t}\""),
            ));
        }
    }
    for (i, c) in decided.iter().enumerate() {
        if c.get("status").and_then(Value::as_str) != Some("True") {
            causes.push(Cause::unsupported(
                format!("status.conditions[{i}].status"),
                c.get("status").and_then(Value::as_str).unwrap_or_default(),
                &["True"],
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_is_one_and_final() {
        let approved = json!({"type": "Approved", "status": "True"});
        let denied = json!({"type": "Denied", "status": "True"});
        let fresh = json!({});
        assert!(approval(&fresh, std::slice::from_ref(&approved)).is_empty());
        assert!(!approval(&fresh, &[approved.clone(), denied.clone()]).is_empty());
        let was = json!({"status": {"conditions": [approved.clone()]}});
        assert!(!approval(&was, &[]).is_empty(), "an approval cannot be taken back");
        assert!(!approval(&fresh, &[json!({"type": "Approved", "status": "False"})]).is_empty());
    }

    #[test]
    fn the_requester_is_written_by_the_server() {
        let mut obj = json!({"spec": {"username": "system:masters-wannabe", "groups": ["system:masters"]},
                             "status": {"certificate": "x"}});
        let u = User {
            name: "system:bootstrap:abcdef".into(),
            groups: vec!["system:bootstrappers".into(), "system:authenticated".into()],
            ..Default::default()
        };
        stamp_requester(&mut obj, &u);
        assert_eq!(obj["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(
            obj["spec"]["groups"],
            json!(["system:bootstrappers", "system:authenticated"])
        );
        assert!(obj.get("status").is_none());
    }

    #[test]
    fn requests_must_be_signed_csrs_with_a_signer_and_usages() {
        let causes = validate_create(&json!({"spec": {"request": "bm90IGEgY3Ny"}}));
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["spec.request", "spec.signerName", "spec.usages"]);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:a");
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let ok = json!({"spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": KUBELET_CLIENT_SIGNER,
            "usages": ["digital signature", "client auth"],
        }});
        assert_eq!(validate_create(&ok), Vec::new());
        let mut bad = ok.clone();
        bad["spec"]["usages"] = json!(["client auth", "root of all"]);
        bad["spec"]["expirationSeconds"] = json!(60);
        let fields: Vec<String> = validate_create(&bad).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec.usages[1]", "spec.expirationSeconds"]);
    }
}
