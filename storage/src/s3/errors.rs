//! Mapping of aws-sdk-s3 errors to [`StoreError`].
//!
//! The decision is taken from the HTTP status and the S3 error code (see the S3 API
//! reference, "Error responses"), the same for every operation:
//!
//! | status / code | kind |
//! | --- | --- |
//! | 404 `NoSuchKey`, or no code (HEAD has no body) | `NotFound` |
//! | 404 `NoSuchBucket` | `Config` (a missing bucket is not a missing object) |
//! | 403 | `PermissionDenied`, with a hint by code |
//! | 412 | `AlreadyExists` (a conditional put was refused) |
//! | 409 `ConditionalRequestConflict`, 429, 5xx except 501, 400 `RequestTimeout`/`ExpiredToken` | `Transient` |
//! | timeouts, connection and response errors | `Transient` |
//! | anything else | `Other` |

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::error::{Op, StoreError};

/// What the mapping needs from an SDK error, separated so it can be unit tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The service answered with this status, and optionally an error code and message.
    Status(u16, Option<String>, Option<String>),
    /// No usable answer: timeout, connection reset, unreadable response.
    Network,
    /// The request could not be built or sent for a local reason (bad endpoint, no
    /// credentials).
    Local,
}

/// Classifies an SDK error.
pub(crate) fn fault_of<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Fault {
    match err {
        SdkError::ServiceError(se) => Fault::Status(
            se.raw().status().as_u16(),
            se.err().code().map(str::to_string),
            se.err().message().map(str::to_string),
        ),
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Fault::Network,
        SdkError::DispatchFailure(d) if d.is_user() => Fault::Local,
        SdkError::DispatchFailure(_) => Fault::Network,
        _ => Fault::Local,
    }
}

/// Maps an SDK error of `op` on `key` (relative key, for messages).
pub(crate) fn map_sdk<E>(key: &str, op: Op, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let fault = fault_of(&err);
    let detail = DisplayErrorContext(&err).to_string();
    map_fault(key, op, fault, detail, Some(Box::new(err)))
}

/// The mapping itself, on a classified fault.
pub(crate) fn map_fault(
    key: &str,
    op: Op,
    fault: Fault,
    detail: String,
    source: Option<crate::error::BoxError>,
) -> StoreError {
    let key_s = key.to_string();
    let transient = |detail: String, source| StoreError::Transient {
        key: key_s.clone(),
        op,
        detail,
        source,
    };
    match fault {
        Fault::Network => transient(detail, source),
        Fault::Local => StoreError::Other {
            key: key_s,
            op,
            detail,
            source,
        },
        Fault::Status(status, code, message) => match (status, code.as_deref()) {
            (404, Some("NoSuchBucket")) => StoreError::config(format!(
                "the bucket does not exist ({} {key}); create it or fix the store URL",
                verb(op)
            )),
            (404, _) => StoreError::not_found(key),
            (403, code) => StoreError::PermissionDenied {
                key: key_s,
                op,
                hint: permission_hint(op, code, message.as_deref()),
                source,
            },
            (412, _) => StoreError::AlreadyExists { key: key_s },
            (409, Some("ConditionalRequestConflict")) | (429, _) => transient(detail, source),
            (400, Some("RequestTimeout" | "ExpiredToken" | "RequestTimeTooSkewed")) => {
                transient(detail, source)
            }
            (501, _) => StoreError::Other {
                key: key_s,
                op,
                detail: format!("the server does not implement this request: {detail}"),
                source,
            },
            (500..=599, _) => transient(detail, source),
            _ => StoreError::Other {
                key: key_s,
                op,
                detail,
                source,
            },
        },
    }
}

fn verb(op: Op) -> &'static str {
    match op {
        Op::Put => "writing",
        Op::Get | Op::Head => "reading",
        Op::List => "listing",
        Op::Delete => "deleting",
        Op::Open => "opening",
    }
}

fn permission_hint(op: Op, code: Option<&str>, message: Option<&str>) -> String {
    let hint: String = match code {
        Some("InvalidAccessKeyId") => "the access key id is not known to the service".into(),
        Some("SignatureDoesNotMatch") => {
            "the secret access key is wrong, or the region does not match the endpoint".into()
        }
        Some("RequestTimeTooSkewed") => "the system clock is off; synchronise it (NTP)".into(),
        // Garage answers a bad signature with AccessDenied "Forbidden: Invalid signature".
        _ if message.is_some_and(|m| m.to_ascii_lowercase().contains("signature")) => {
            "the secret access key is wrong, or the region does not match the endpoint".into()
        }
        _ => format!("the credentials need {} on the bucket", op.s3_action()),
    };
    match (code, message) {
        (Some(c), Some(m)) => format!("{hint} (server: {c}: {m})"),
        (Some(c), None) => format!("{hint} (server: {c})"),
        _ => hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn kind(status: u16, code: Option<&str>, op: Op) -> ErrorKind {
        map_fault(
            "wal/x",
            op,
            Fault::Status(status, code.map(str::to_string), None),
            "d".into(),
            None,
        )
        .kind()
    }

    #[test]
    fn status_mapping() {
        assert_eq!(kind(404, Some("NoSuchKey"), Op::Get), ErrorKind::NotFound);
        assert_eq!(kind(404, None, Op::Head), ErrorKind::NotFound);
        assert_eq!(kind(404, Some("NoSuchBucket"), Op::Get), ErrorKind::Config);
        assert_eq!(
            kind(403, Some("AccessDenied"), Op::Put),
            ErrorKind::PermissionDenied
        );
        assert_eq!(kind(412, None, Op::Put), ErrorKind::AlreadyExists);
        assert_eq!(
            kind(409, Some("ConditionalRequestConflict"), Op::Put),
            ErrorKind::Transient
        );
        assert_eq!(kind(429, None, Op::Put), ErrorKind::Transient);
        assert_eq!(kind(503, Some("SlowDown"), Op::Put), ErrorKind::Transient);
        assert_eq!(kind(500, None, Op::Get), ErrorKind::Transient);
        assert_eq!(
            kind(400, Some("RequestTimeout"), Op::Put),
            ErrorKind::Transient
        );
        assert_eq!(kind(501, None, Op::Put), ErrorKind::Other);
        assert_eq!(
            kind(400, Some("InvalidArgument"), Op::Put),
            ErrorKind::Other
        );
        let e = map_fault("k", Op::Get, Fault::Network, "reset".into(), None);
        assert!(e.is_transient());
        let e = map_fault("k", Op::Get, Fault::Local, "no credentials".into(), None);
        assert!(!e.is_transient());
    }

    #[test]
    fn permission_messages() {
        let e = map_fault(
            "wal/000000010000000000000001",
            Op::Put,
            Fault::Status(403, None, None),
            String::new(),
            None,
        );
        assert_eq!(
            e.to_string(),
            "access denied writing wal/000000010000000000000001: the credentials need \
             s3:PutObject on the bucket"
        );
        let e = map_fault(
            "k",
            Op::List,
            Fault::Status(403, Some("AccessDenied".into()), Some("Forbidden".into())),
            String::new(),
            None,
        );
        assert_eq!(
            e.to_string(),
            "access denied listing k: the credentials need s3:ListBucket on the bucket \
             (server: AccessDenied: Forbidden)"
        );
        let e = map_fault(
            "k",
            Op::Get,
            Fault::Status(403, Some("SignatureDoesNotMatch".into()), None),
            String::new(),
            None,
        );
        assert!(e.to_string().contains("secret access key"), "{e}");
    }
}
