//! Every API failure, and its one translation into a Kubernetes `Status`.

use serde_json::{Value, json};

use super::registry::Served;

/// A field-level cause, as `Status.details.causes` carries it.
#[derive(Clone, Debug)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// Who an error names: `(group, kind-or-resource, name)`.
#[derive(Clone, Debug, Default)]
pub struct Subject {
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        resource: String,
        name: String,
        subject: Subject,
    },
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        resource: String,
        name: String,
        subject: Subject,
    },
    #[error(
        "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict {
        resource: String,
        name: String,
        subject: Subject,
    },
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{message}")]
    ApplyConflict {
        message: String,
        causes: Vec<Cause>,
        subject: Subject,
    },
    #[error("{message}")]
    Invalid {
        message: String,
        causes: Vec<Cause>,
        subject: Subject,
    },
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("the request body is too large: limit is {limit} bytes")]
    TooLarge { limit: usize },
    #[error("too old resource version: {requested} ({oldest})")]
    Gone { requested: u64, oldest: u64 },
    /// 429: the request is refused for now (an eviction a disruption budget does not allow).
    #[error("{message}")]
    TooManyRequests { message: String, cause: Cause },
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::NotAcceptable(_) => 406,
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::PreconditionFailed(_)
            | ApiError::ApplyConflict { .. } => 409,
            ApiError::Gone { .. } => 410,
            ApiError::TooLarge { .. } => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Invalid { .. } => 422,
            ApiError::TooManyRequests { .. } => 429,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::PreconditionFailed(_) | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Gone { .. } => "Expired",
            ApiError::TooLarge { .. } => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::TooManyRequests { .. } => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable(_) => "ServiceUnavailable",
        }
    }

    /// The `Status` object the apiserver would send.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let (subject, causes) = match self {
            ApiError::NotFound { subject, .. }
            | ApiError::AlreadyExists { subject, .. }
            | ApiError::Conflict { subject, .. } => (Some(subject), None),
            ApiError::Invalid { subject, causes, .. } | ApiError::ApplyConflict { subject, causes, .. } => {
                (Some(subject), Some(causes))
            }
            _ => (None, None),
        };
        if let ApiError::TooManyRequests { cause, .. } = self {
            status["details"] = json!({"causes": [{"reason": cause.reason, "message": cause.message}]});
        }
        if let Some(s) = subject {
            let mut details = json!({ "name": s.name, "kind": s.kind });
            if !s.group.is_empty() {
                details["group"] = json!(s.group);
            }
            if let Some(causes) = causes {
                details["causes"] = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
            }
            status["details"] = details;
        }
        status
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }

    pub fn internal(msg: impl std::fmt::Display) -> Self {
        ApiError::Internal(msg.to_string())
    }
}

/// The error subject the apiserver puts in `details` (kind is the plural resource name).
pub fn subject(served: &Served, name: &str) -> Subject {
    Subject {
        group: served.def.group.clone(),
        kind: served.def.plural.clone(),
        name: name.to_string(),
    }
}

/// A 422 for one field of `obj`, as the API server words it: `<Kind> "<name>" is invalid:
/// <field>: <message>`, with the field and reason in the Status's causes.
pub fn invalid(served: &Served, obj: &Value, field: &str, reason: &str, message: String) -> ApiError {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    ApiError::Invalid {
        message: format!(
            "{} \"{name}\" is invalid: {field}: {message}",
            served.def.qualified_kind()
        ),
        causes: vec![Cause {
            reason: reason.into(),
            message,
            field: field.into(),
        }],
        subject: Subject {
            group: served.def.group.clone(),
            kind: served.def.kind.clone(),
            name,
        },
    }
}

pub fn not_found(served: &Served, name: &str) -> ApiError {
    ApiError::NotFound {
        resource: served.def.qualified_resource(),
        name: name.to_string(),
        subject: subject(served, name),
    }
}

pub fn store_err(served: &Served, name: &str, e: crate::store::StoreError) -> ApiError {
    use crate::store::StoreError as S;
    let resource = served.def.qualified_resource();
    let subject = subject(served, name);
    let name = name.to_string();
    match e {
        S::AlreadyExists => ApiError::AlreadyExists {
            resource,
            name,
            subject,
        },
        S::NotFound => ApiError::NotFound {
            resource,
            name,
            subject,
        },
        S::Conflict { .. } => ApiError::Conflict {
            resource,
            name,
            subject,
        },
        S::Gone { requested, oldest } => ApiError::Gone { requested, oldest },
        S::Backend(m) => ApiError::Internal(m),
        S::Closed => ApiError::Unavailable("the store is shutting down".into()),
    }
}
