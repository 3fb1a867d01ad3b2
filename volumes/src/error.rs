//! The drivers' errors, typed, and the one place they become gRPC statuses.
//!
//! The code is the contract: kubelet, the external sidecars and csi-sanity act on it.
//! INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, OUT_OF_RANGE and ABORTED are the caller's
//! (a request to change before retrying); FAILED_PRECONDITION is a call out of order (publish
//! before stage, delete while attached), which the caller retries once the order is right;
//! RESOURCE_EXHAUSTED and INTERNAL are ours, and INTERNAL names the call or tool that failed.

use std::path::PathBuf;

/// What a driver call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required field of the request is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A field of the request has a value the driver does not take.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The volume, node or path named does not exist (for this driver).
    #[error("{0}")]
    NotFound(String),
    /// Something of that name exists and differs from what was asked.
    #[error("{0}")]
    AlreadyExists(String),
    /// The call is out of order: the state it needs is not there (yet).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A capacity the driver cannot give.
    #[error("{0}")]
    OutOfRange(String),
    /// A ListVolumes starting token the driver did not hand out.
    #[error("{0}")]
    Aborted(String),
    /// A limit of the driver's is reached (volumes per node).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A system call or file operation failed; `call` names it.
    #[error("{call} {}: {source}", path.display())]
    Io {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tool (losetup, blkid, mkfs, resize2fs, xfs_growfs) failed or could not be run.
    #[error("{command}: {detail}")]
    Command { command: String, detail: String },
    /// A record under the state directory is unreadable.
    #[error("record {}: {source}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The worker running the call went away (a panic, or the runtime shutting down).
    #[error("driver worker failed: {0}")]
    Worker(String),
}

impl Error {
    /// A failed call or file operation on `path`.
    pub fn io(call: &'static str, path: impl Into<PathBuf>, source: impl Into<std::io::Error>) -> Self {
        Error::Io {
            call,
            path: path.into(),
            source: source.into(),
        }
    }

    /// A field with a value the driver does not take.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// The gRPC code the error is answered with.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Missing(_) | Error::Invalid { .. } => tonic::Code::InvalidArgument,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Error::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Error::OutOfRange(_) => tonic::Code::OutOfRange,
            Error::Aborted(_) => tonic::Code::Aborted,
            Error::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            Error::Io { .. } | Error::Command { .. } | Error::Record { .. } | Error::Worker(_) => tonic::Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = e.code();
        if code == tonic::Code::Internal {
            tracing::warn!(error = %e, "CSI call failed");
        }
        tonic::Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn each_kind_of_error_has_its_code_and_says_what() {
        let e = Error::Missing("volume_id");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.to_string(), "volume_id is required");
        let e = Error::io("mount", "/a/b", std::io::Error::from_raw_os_error(16));
        assert_eq!(e.code(), tonic::Code::Internal);
        assert!(e.to_string().starts_with("mount /a/b: "), "{e}");
        let s = tonic::Status::from(Error::NotFound("volume d-x does not exist".into()));
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::NotFound, "volume d-x does not exist")
        );
    }
}
