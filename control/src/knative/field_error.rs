//! Knative's refusals as its webhook words them: knative.dev/pkg's `apis.FieldError`, a message
//! and the fields it is about (`must not set the field(s): spec.template.spec.containers[0].tty`),
//! with details on a line of their own; every refusal of a write is reported at once, merged and
//! sorted as Knative does, behind the apiserver's words for a webhook's denial. Clients and
//! Knative's own tests compare that text (`TestServiceAccountValidation` does).

use std::fmt;

use crate::api::error::ApiError;

/// The name of Knative's validating webhook, as the apiserver's denial quotes it.
const WEBHOOK: &str = "validation.webhook.serving.knative.dev";

/// One refusal: a message about one or more fields, with optional details.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub message: String,
    pub paths: Vec<String>,
    pub details: String,
}

impl FieldError {
    /// `apis.ErrGeneric`: a message of our own about `paths`.
    pub fn generic(message: impl Into<String>, paths: &[String]) -> Self {
        FieldError {
            message: message.into(),
            paths: paths.to_vec(),
            details: String::new(),
        }
    }

    /// `apis.ErrMissingField`.
    pub fn missing(path: impl Into<String>) -> Self {
        Self::generic("missing field(s)", &[path.into()])
    }

    /// `apis.ErrDisallowedFields`.
    pub fn disallowed(paths: &[String]) -> Self {
        Self::generic("must not set the field(s)", paths)
    }

    /// `apis.ErrInvalidValue`: `invalid value: <value>`.
    pub fn invalid_value(value: impl fmt::Display, path: impl Into<String>) -> Self {
        Self::generic(format!("invalid value: {value}"), &[path.into()])
    }

    /// `apis.ErrOutOfBoundsValue`: `expected <lo> <= <value> <= <hi>`.
    pub fn out_of_bounds(
        value: impl fmt::Display,
        lo: impl fmt::Display,
        hi: impl fmt::Display,
        path: impl Into<String>,
    ) -> Self {
        Self::generic(format!("expected {lo} <= {value} <= {hi}"), &[path.into()])
    }

    /// `apis.ErrMissingOneOf`.
    pub fn missing_one_of(paths: &[String]) -> Self {
        Self::generic("expected exactly one, got neither", paths)
    }

    /// `apis.ErrMultipleOneOf`.
    pub fn multiple_one_of(paths: &[String]) -> Self {
        Self::generic("expected exactly one, got both", paths)
    }

    /// `apis.ErrInvalidKeyName`.
    pub fn invalid_key_name(key: &str, path: impl Into<String>) -> Self {
        Self::generic(format!("invalid key name \"{key}\""), &[path.into()])
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
}

/// Every refusal of one write.
#[derive(Clone, Debug, Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    pub fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The refusals as Knative reports them: those with the same message and details are one,
    /// naming all their fields (sorted); then sorted by message and details.
    pub fn merged(&self) -> Vec<FieldError> {
        let mut out: Vec<FieldError> = Vec::new();
        for e in &self.0 {
            match out
                .iter_mut()
                .find(|o| o.message == e.message && o.details == e.details)
            {
                Some(o) => {
                    for p in &e.paths {
                        if !o.paths.contains(p) {
                            o.paths.push(p.clone());
                        }
                    }
                }
                None => out.push(e.clone()),
            }
        }
        for e in &mut out {
            e.paths.sort();
        }
        out.sort_by(|a, b| (&a.message, &a.details).cmp(&(&b.message, &b.details)));
        out
    }

    /// The apiserver's answer to a write the webhook denies: 400, `admission webhook "…"
    /// denied the request: validation failed: <refusals>`.
    pub fn into_api_error(self) -> ApiError {
        ApiError::bad_request(format!(
            "admission webhook \"{WEBHOOK}\" denied the request: validation failed: {self}"
        ))
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.merged().iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {}", e.message, e.paths.join(", "))?;
            if !e.details.is_empty() {
                write!(f, "\n{}", e.details)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_and_sorted_as_knative_prints_them() {
        let mut errs = FieldErrors::default();
        errs.push(FieldError::disallowed(&["spec.b".into()]));
        errs.push(FieldError::invalid_value("x@y", "spec.sa").with_details("not a name"));
        errs.push(FieldError::disallowed(&["spec.a".into()]));
        assert_eq!(
            errs.to_string(),
            "invalid value: x@y: spec.sa\nnot a name\nmust not set the field(s): spec.a, spec.b"
        );
        let e = errs.into_api_error();
        assert_eq!(e.code(), 400);
        assert!(
            e.to_string().starts_with(
                "admission webhook \"validation.webhook.serving.knative.dev\" denied the request: validation failed: invalid value: x@y"
            ),
            "{e}"
        );
    }
}
