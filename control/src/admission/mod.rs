//! Admission: the apiserver's validation for the fields users hit, and the platform's rules — what
//! a serverless Kubernetes does not run is refused with the rule that says why (as ECI does).

pub mod certificates;
pub mod limits;
mod names;
pub mod node_restriction;
mod platform;
pub mod quota;
pub mod runtime_class;
pub mod service_account;
pub mod storage;
pub(crate) mod validate;

pub use nodeless_types::quantity::{Quantity, parse_quantity};

use serde_json::Value;

/// One field-level problem, as `Status.details.causes` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub field: String,
    /// Kubernetes CauseType: FieldValueRequired, FieldValueInvalid, …
    pub reason: &'static str,
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueRequired",
            message: "Required value".into(),
        }
    }

    pub fn required_because(field: impl Into<String>, why: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueRequired",
            message: format!("Required value: {why}"),
        }
    }

    pub fn invalid(field: impl Into<String>, value: &Value, why: &str) -> Self {
        let shown = match value {
            Value::String(s) => format!("\"{s}\""),
            other => other.to_string(),
        };
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {shown}: {why}"),
        }
    }

    pub fn unsupported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Self {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: \"{value}\": supported values: {}", list.join(", ")),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: \"{value}\""),
        }
    }

    pub fn forbidden(field: impl Into<String>, why: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {why}"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Invalid(Vec<Cause>),
    Forbidden { rule: &'static str, message: String },
}

/// Cluster-level switches for the platform rules.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub allow_host_network: bool,
}

/// Decide on a create (`old` None) or update of `obj`.
pub fn admit(group: &str, kind: &str, obj: &Value, old: Option<&Value>, policy: &Policy) -> Verdict {
    if let Some((rule, message)) = platform::check(group, kind, obj, policy) {
        return Verdict::Forbidden { rule, message };
    }
    let mut causes = validate::validate(group, kind, obj, old);
    if (group, kind, old) == ("certificates.k8s.io", "CertificateSigningRequest", None) {
        causes.extend(certificates::validate_create(obj));
    }
    if causes.is_empty() {
        Verdict::Allowed
    } else {
        Verdict::Invalid(causes)
    }
}

/// The apiserver's message for an invalid object:
/// `Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1: must be …`.
pub fn invalid_message(qualified_kind: &str, name: &str, causes: &[Cause]) -> String {
    let parts: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
    let joined = if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    };
    format!("{qualified_kind} \"{name}\" is invalid: {joined}")
}
