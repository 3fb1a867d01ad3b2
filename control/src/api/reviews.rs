//! What is answered and never stored: access reviews (`kubectl auth can-i`), rules reviews
//! (`kubectl auth can-i --list`), token reviews, `kubectl auth whoami`, and TokenRequest
//! (`kubectl create token`, a pod's projected token).

use ::http::Response;
use serde_json::{Value, json};

use super::ApiState;
use super::error::{ApiError, invalid, not_found};
use super::http::{Body, Want, respond};
use super::registry::Served;
use crate::auth::{self, User, jwt};
use crate::rbac::{self, Attributes};

/// Kubernetes' default and least token lifetimes.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;
const MIN_TOKEN_SECONDS: i64 = 600;
/// A pod's token asked for with the admission's lifetime lives a year, as with the apiserver's
/// `--service-account-extend-token-expiration` (on by default): clients that never reread the
/// file keep working; the node still rewrites it hourly.
const EXTENDED_TOKEN_SECONDS: u64 = 365 * 24 * 3600;

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    v.pointer(path).and_then(Value::as_str).unwrap_or("")
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The attributes a review's spec asks about.
fn asked(served: &Served, body: &Value, namespace: Option<&str>) -> Result<Attributes, ApiError> {
    let spec = body.get("spec").unwrap_or(&Value::Null);
    match (spec.get("resourceAttributes"), spec.get("nonResourceAttributes")) {
        (Some(r), None) => {
            let ns = match (namespace, s(r, "/namespace")) {
                (Some(path_ns), ns) if !ns.is_empty() && ns != path_ns => {
                    return Err(invalid(
                        served,
                        body,
                        "spec.resourceAttributes.namespace",
                        "FieldValueInvalid",
                        format!("Invalid value: \"{ns}\": must match metadata.namespace"),
                    ));
                }
                (Some(path_ns), _) => path_ns,
                (None, ns) => ns,
            };
            Ok(Attributes::resource(
                s(r, "/verb"),
                s(r, "/group"),
                s(r, "/resource"),
                Some(s(r, "/subresource")),
                Some(ns),
                Some(s(r, "/name")),
            ))
        }
        (None, Some(n)) => Ok(Attributes::NonResource {
            verb: s(n, "/verb").to_string(),
            path: s(n, "/path").to_string(),
        }),
        _ => Err(invalid(
            served,
            body,
            "spec.resourceAttributes",
            "FieldValueRequired",
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
        )),
    }
}

/// The user a SubjectAccessReview asks about.
fn subject(served: &Served, body: &Value) -> Result<User, ApiError> {
    let spec = body.get("spec").unwrap_or(&Value::Null);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let user = User {
        name: s(spec, "/user").to_string(),
        uid: s(spec, "/uid").to_string(),
        groups: strings(spec.get("groups")),
        extra: spec
            .get("extra")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), strings(Some(v)))).collect())
            .unwrap_or_default(),
    };
    if user.name.is_empty() && user.groups.is_empty() {
        return Err(invalid(
            served,
            body,
            "spec.user",
            "FieldValueInvalid",
            "Invalid value: \"\": at least one of user or group must be specified".into(),
        ));
    }
    Ok(user)
}

fn answered(mut body: Value, served: &Served, namespace: Option<&str>, status: Value) -> Value {
    body["apiVersion"] = json!(served.def.api_version());
    body["kind"] = json!(served.def.kind);
    if !body.get("metadata").is_some_and(Value::is_object) {
        body["metadata"] = json!({});
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    if let Some(ns) = namespace {
        body["metadata"]["namespace"] = json!(ns);
    }
    body["status"] = status;
    body
}

fn decision(state: &ApiState, user: &User, attrs: &Attributes) -> Value {
    let d = rbac::authorize(&state.store, user, attrs);
    let mut status = json!({"allowed": d.allowed});
    if !d.reason.is_empty() {
        status["reason"] = json!(d.reason);
    }
    status
}

/// The rules a user has in a namespace, in `SelfSubjectRulesReview` form.
fn rules_status(state: &ApiState, user: &User, namespace: &str) -> Value {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for (rules, _) in rbac::rules_for(&state.store, user, Some(namespace).filter(|n| !n.is_empty())) {
        for r in rules {
            if let Some(urls) = r.non_resource_urls.filter(|u| !u.is_empty()) {
                non_resource_rules.push(json!({"verbs": r.verbs, "nonResourceURLs": urls}));
            }
            if let Some(resources) = r.resources.filter(|u| !u.is_empty()) {
                let mut rule =
                    json!({"verbs": r.verbs, "apiGroups": r.api_groups.unwrap_or_default(), "resources": resources});
                if let Some(names) = r.resource_names.filter(|n| !n.is_empty()) {
                    rule["resourceNames"] = json!(names);
                }
                resource_rules.push(rule);
            }
        }
    }
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}

/// Answer a create of a review kind.
pub(super) fn review(
    state: &ApiState,
    served: &Served,
    namespace: Option<&str>,
    body: Value,
    answer: Want,
) -> Result<Response<Body>, ApiError> {
    let me = auth::requester().ok_or(ApiError::Unauthorized)?;
    let status = match served.def.kind.as_str() {
        "SelfSubjectAccessReview" => decision(state, &me, &asked(served, &body, None)?),
        "SubjectAccessReview" => decision(state, &subject(served, &body)?, &asked(served, &body, None)?),
        "LocalSubjectAccessReview" => decision(state, &subject(served, &body)?, &asked(served, &body, namespace)?),
        "SelfSubjectRulesReview" => rules_status(state, &me, s(&body, "/spec/namespace")),
        "SelfSubjectReview" => json!({"userInfo": me.to_json()}),
        "TokenReview" => token_review(state, &body),
        other => return Err(ApiError::Internal(format!("{other} is not a review"))),
    };
    Ok(respond(answer, 201, &answered(body, served, namespace, status), &[]))
}

fn token_review(state: &ApiState, body: &Value) -> Value {
    let token = s(body, "/spec/token");
    let audiences: Vec<String> = body
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let wanted = if audiences.is_empty() {
        vec![jwt::ISSUER.to_string()]
    } else {
        audiences.clone()
    };
    let refused = |why: &str| json!({"authenticated": false, "user": {}, "error": why});
    // A static token is for this API only.
    if let Some(user) = state.auth.user_of(&state.store, token).filter(|_| !token.contains('.')) {
        if !wanted.iter().any(|a| a == jwt::ISSUER) {
            return refused("token audiences do not match");
        }
        return json!({"authenticated": true, "user": user.to_json(), "audiences": [jwt::ISSUER]});
    }
    for aud in &wanted {
        if let Ok(claims) = state.auth.issuer.verify(token, aud) {
            return match auth::service_account_user(&state.store, &claims) {
                Ok(user) => {
                    let matched: Vec<&String> = wanted.iter().filter(|a| claims.aud.contains(a)).collect();
                    json!({"authenticated": true, "user": user.to_json(), "audiences": matched})
                }
                Err(why) => refused(&why),
            };
        }
    }
    refused("invalid bearer token")
}

/// `POST serviceaccounts/<name>/token`: a token for the ServiceAccount, perhaps bound to a Pod or
/// Secret of its namespace (it stops working when that object goes).
pub(super) fn token_request(
    state: &ApiState,
    served: &Served,
    namespace: &str,
    name: &str,
    body: Value,
    answer: Want,
) -> Result<Response<Body>, ApiError> {
    let sa = state
        .store
        .get(&served.key(Some(namespace), name))
        .ok_or_else(|| not_found(served, name))?;
    let token_kind = || {
        let mut def = served.def.clone();
        def.group = "authentication.k8s.io".into();
        def.kind = "TokenRequest".into();
        Served {
            def,
            schema: None,
            columns: None,
            custom: false,
            scale_paths: None,
            view_of: None,
        }
    };
    let bad = |field: &str, message: String| invalid(&token_kind(), &body, field, "FieldValueInvalid", message);
    if !matches!(s(&body, "/kind"), "" | "TokenRequest") {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({}) is not TokenRequest",
            s(&body, "/kind")
        )));
    }
    let seconds = match body.pointer("/spec/expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_TOKEN_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| {
            bad(
                "spec.expirationSeconds",
                format!("Invalid value: {v}: must be a number"),
            )
        })?,
    };
    if seconds < MIN_TOKEN_SECONDS {
        return Err(bad(
            "spec.expirationSeconds",
            format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes"),
        ));
    }
    if seconds > 1 << 32 {
        return Err(bad(
            "spec.expirationSeconds",
            format!("Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"),
        ));
    }
    let mut audiences: Vec<String> = body
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences.push(jwt::ISSUER.into());
    }
    let sa_uid = s(&sa.obj, "/metadata/uid").to_string();
    let mut private = jwt::Private {
        namespace: namespace.to_string(),
        serviceaccount: jwt::Ref {
            name: name.to_string(),
            uid: sa_uid,
        },
        pod: None,
        secret: None,
    };
    if let Some(bound) = body.pointer("/spec/boundObjectRef").filter(|b| b.is_object()) {
        let kind = s(bound, "/kind");
        let bound_name = s(bound, "/name");
        let plural = match kind {
            "Pod" => "pods",
            "Secret" => "secrets",
            _ => {
                return Err(bad(
                    "spec.boundObjectRef.kind",
                    format!("Unsupported value: \"{kind}\": supported values: \"Pod\", \"Secret\""),
                ));
            }
        };
        let key = format!("/core/{plural}/{namespace}/{bound_name}");
        let obj = state.store.get(&key).ok_or_else(|| ApiError::NotFound {
            resource: plural.into(),
            name: bound_name.into(),
            subject: super::error::Subject {
                group: String::new(),
                kind: plural.into(),
                name: bound_name.into(),
            },
        })?;
        let uid = s(&obj.obj, "/metadata/uid");
        let want_uid = s(bound, "/uid");
        if !want_uid.is_empty() && want_uid != uid {
            return Err(ApiError::Conflict {
                resource: plural.into(),
                name: bound_name.into(),
                subject: Default::default(),
            });
        }
        let r = jwt::Ref {
            name: bound_name.to_string(),
            uid: uid.to_string(),
        };
        if kind == "Pod" {
            private.pod = Some(r);
        } else {
            private.secret = Some(r);
        }
    }
    let extended = private.pod.is_some() && seconds == crate::admission::service_account::DEFAULT_TOKEN_SECONDS;
    let lifetime = if extended {
        EXTENDED_TOKEN_SECONDS
    } else {
        seconds as u64
    };
    let (token, _) = state
        .auth
        .issuer
        .issue(audiences.clone(), lifetime, private)
        .map_err(ApiError::Internal)?;
    let exp = jwt::now() + seconds as u64;
    let expires = chrono::DateTime::from_timestamp(exp as i64, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(seconds);
    let out = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": now_rfc3339()},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires},
    });
    Ok(respond(answer, 201, &out, &[]))
}
