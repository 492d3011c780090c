//! Typed errors of the storage layer.
//!
//! Every failure names the object key it concerns and falls in one [`ErrorKind`], so callers
//! decide with predicates instead of string matching: retry [`StoreError::is_transient`],
//! exit 1 on [`StoreError::is_not_found`] (confirmed absence), exit 255 / alarm on
//! [`StoreError::is_corrupt`] or [`StoreError::is_conflict`], exit 3 on
//! [`StoreError::is_foreign_cluster`]; a store whose encryption does not match the
//! configuration is [`StoreError::is_encryption_mismatch`].

use std::fmt;

/// A boxed lower-level cause (I/O error, SDK error), kept for `source()` chains.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The store operation that failed; used to phrase messages and the permission to grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `put`, `put_if_absent` and multipart uploads.
    Put,
    /// `get` and `get_range`.
    Get,
    /// `head`.
    Head,
    /// `list`.
    List,
    /// `delete`.
    Delete,
    /// Opening the store (credentials, endpoint, configuration).
    Open,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Put => "writing",
            Op::Get => "reading",
            Op::Head => "checking",
            Op::List => "listing",
            Op::Delete => "deleting",
            Op::Open => "opening",
        }
    }

    /// The S3 IAM action a policy must grant for this operation.
    pub fn s3_action(self) -> &'static str {
        match self {
            Op::Put => "s3:PutObject",
            Op::Get | Op::Head => "s3:GetObject",
            Op::List | Op::Open => "s3:ListBucket",
            Op::Delete => "s3:DeleteObject",
        }
    }
}

/// Error of an [`ObjectStore`](crate::object_store::ObjectStore) operation or of the formats stored in it.
///
/// `key` is the object key relative to the store prefix (for `list`, the listed prefix).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist (HTTP 404, `NoSuchKey`, `ENOENT`).
    #[error("{key}: object not found")]
    NotFound {
        /// Key that was asked for.
        key: String,
    },
    /// A conditional put was refused because the object already exists (HTTP 412).
    #[error("{key}: object already exists")]
    AlreadyExists {
        /// Key that was written.
        key: String,
    },
    /// An immutable object exists with different content: never overwritten, always an alarm.
    #[error(
        "{key}: an object with different content already exists (stored blake3 {existing}, \
         new blake3 {new}); it was not overwritten: check that only one agent writes to this prefix"
    )]
    Conflict {
        /// Key of the object.
        key: String,
        /// Hex blake3 hash of the raw bytes already stored.
        existing: String,
        /// Hex blake3 hash of the raw bytes that were to be written.
        new: String,
    },
    /// The credentials are not allowed to do this (HTTP 403, `EACCES`).
    #[error("access denied {} {key}: {hint}", op.verb())]
    PermissionDenied {
        /// Key concerned.
        key: String,
        /// Operation that was refused.
        op: Op,
        /// How to fix it, e.g. "the credentials need s3:PutObject on the bucket".
        hint: String,
        /// Lower-level cause.
        #[source]
        source: Option<BoxError>,
    },
    /// A fault worth retrying: timeout, connection error, HTTP 5xx, throttling (429, 503 SlowDown).
    #[error("temporary failure {} {key}: {detail}", op.verb())]
    Transient {
        /// Key concerned.
        key: String,
        /// Operation that failed.
        op: Op,
        /// What went wrong, for humans.
        detail: String,
        /// Lower-level cause.
        #[source]
        source: Option<BoxError>,
    },
    /// Stored bytes failed verification (envelope header, length or hash).
    #[error("{key}: corrupt object: {detail}")]
    Corrupt {
        /// Key of the object (empty when the bytes were checked before their key was known).
        key: String,
        /// Which check failed.
        detail: String,
    },
    /// The object (or the store, for `cluster.json`) is encrypted and no cipher was given.
    #[error(
        "{key}: encrypted, and no passphrase is configured: set encryption.passphrase_file or \
         PGAGENT_ENCRYPTION_PASSPHRASE"
    )]
    Encrypted {
        /// Key of the object.
        key: String,
    },
    /// The object (or the store, for `cluster.json`) is plaintext but a cipher was given: a
    /// store is all encrypted or all plaintext.
    #[error(
        "{key}: not encrypted, but a passphrase is configured (a store is all encrypted or all \
         plaintext): unset encryption.passphrase_file and PGAGENT_ENCRYPTION_PASSPHRASE for \
         this store, or point store.url at an empty prefix to start an encrypted one"
    )]
    NotEncrypted {
        /// Key of the object.
        key: String,
    },
    /// The key is not a valid store key (see [`validate_key`](crate::layout::validate_key)).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The rejected key.
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The store URL cannot be used.
    #[error("invalid store URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with any secret removed.
        url: String,
        /// Why it was rejected, and how to fix it.
        reason: String,
    },
    /// A setting is out of range or inconsistent.
    #[error("invalid store configuration: {detail}")]
    Config {
        /// What is wrong, and how to fix it.
        detail: String,
    },
    /// The prefix holds another cluster (different system identifier or WAL segment size).
    #[error(
        "the store belongs to another cluster: {detail} (store has {found}, this server is \
         {expected}); use a separate prefix for each cluster"
    )]
    ForeignCluster {
        /// What this agent's server reports.
        expected: String,
        /// What `cluster.json` in the store says.
        found: String,
        /// Which field differs.
        detail: String,
    },
    /// The store was written by a newer, incompatible version of the format.
    #[error("{key}: store format version {found} is newer than the supported {supported}; upgrade pgagent")]
    IncompatibleFormat {
        /// Key of the object that carries the version.
        key: String,
        /// Version found.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// Anything else (unexpected HTTP status, local I/O error).
    #[error("error {} {key}: {detail}", op.verb())]
    Other {
        /// Key concerned.
        key: String,
        /// Operation that failed.
        op: Op,
        /// What went wrong.
        detail: String,
        /// Lower-level cause.
        #[source]
        source: Option<BoxError>,
    },
}

/// Fieldless view of a [`StoreError`] variant, for matching and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// See [`StoreError::NotFound`].
    NotFound,
    /// See [`StoreError::AlreadyExists`].
    AlreadyExists,
    /// See [`StoreError::Conflict`].
    Conflict,
    /// See [`StoreError::PermissionDenied`].
    PermissionDenied,
    /// See [`StoreError::Transient`].
    Transient,
    /// See [`StoreError::Corrupt`].
    Corrupt,
    /// See [`StoreError::Encrypted`].
    Encrypted,
    /// See [`StoreError::NotEncrypted`].
    NotEncrypted,
    /// See [`StoreError::InvalidKey`].
    InvalidKey,
    /// See [`StoreError::InvalidUrl`].
    InvalidUrl,
    /// See [`StoreError::Config`].
    Config,
    /// See [`StoreError::ForeignCluster`].
    ForeignCluster,
    /// See [`StoreError::IncompatibleFormat`].
    IncompatibleFormat,
    /// See [`StoreError::Other`].
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Transient => "transient",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Encrypted => "encrypted",
            ErrorKind::NotEncrypted => "not_encrypted",
            ErrorKind::InvalidKey => "invalid_key",
            ErrorKind::InvalidUrl => "invalid_url",
            ErrorKind::Config => "config",
            ErrorKind::ForeignCluster => "foreign_cluster",
            ErrorKind::IncompatibleFormat => "incompatible_format",
            ErrorKind::Other => "other",
        };
        f.write_str(s)
    }
}

impl StoreError {
    /// The variant without its fields.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            StoreError::Conflict { .. } => ErrorKind::Conflict,
            StoreError::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            StoreError::Transient { .. } => ErrorKind::Transient,
            StoreError::Corrupt { .. } => ErrorKind::Corrupt,
            StoreError::Encrypted { .. } => ErrorKind::Encrypted,
            StoreError::NotEncrypted { .. } => ErrorKind::NotEncrypted,
            StoreError::InvalidKey { .. } => ErrorKind::InvalidKey,
            StoreError::InvalidUrl { .. } => ErrorKind::InvalidUrl,
            StoreError::Config { .. } => ErrorKind::Config,
            StoreError::ForeignCluster { .. } => ErrorKind::ForeignCluster,
            StoreError::IncompatibleFormat { .. } => ErrorKind::IncompatibleFormat,
            StoreError::Other { .. } => ErrorKind::Other,
        }
    }

    /// The object key involved, if the error concerns one.
    pub fn key(&self) -> Option<&str> {
        match self {
            StoreError::NotFound { key }
            | StoreError::AlreadyExists { key }
            | StoreError::Conflict { key, .. }
            | StoreError::PermissionDenied { key, .. }
            | StoreError::Transient { key, .. }
            | StoreError::Corrupt { key, .. }
            | StoreError::Encrypted { key }
            | StoreError::NotEncrypted { key }
            | StoreError::InvalidKey { key, .. }
            | StoreError::IncompatibleFormat { key, .. }
            | StoreError::Other { key, .. } => Some(key),
            StoreError::InvalidUrl { .. }
            | StoreError::Config { .. }
            | StoreError::ForeignCluster { .. } => None,
        }
    }

    /// The object is confirmed absent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Retrying later may succeed (timeouts, connection errors, 5xx, throttling).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }

    /// An immutable object exists with different content.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// The credentials lack a permission.
    pub fn is_permission(&self) -> bool {
        matches!(self, StoreError::PermissionDenied { .. })
    }

    /// Stored bytes failed verification.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }

    /// The store prefix holds another cluster.
    pub fn is_foreign_cluster(&self) -> bool {
        matches!(self, StoreError::ForeignCluster { .. })
    }

    /// The object or store is encrypted and no cipher was configured.
    pub fn is_encrypted(&self) -> bool {
        matches!(self, StoreError::Encrypted { .. })
    }

    /// The object or store is plaintext but a cipher was configured.
    pub fn is_not_encrypted(&self) -> bool {
        matches!(self, StoreError::NotEncrypted { .. })
    }

    /// The store's encryption does not match the configuration, either way
    /// ([`StoreError::Encrypted`], [`StoreError::NotEncrypted`]): a configuration error,
    /// and for `pgagent fetch` a reason to stop recovery.
    pub fn is_encryption_mismatch(&self) -> bool {
        self.is_encrypted() || self.is_not_encrypted()
    }

    /// Sets the key of a [`StoreError::Corrupt`], [`StoreError::Encrypted`] or
    /// [`StoreError::NotEncrypted`] raised before the key was known (for example by
    /// [`envelope::open`](crate::envelope::open)); other variants are returned unchanged.
    pub fn with_key(self, key: &str) -> Self {
        match self {
            StoreError::Corrupt { key: k, detail } if k.is_empty() => StoreError::Corrupt {
                key: key.to_string(),
                detail,
            },
            StoreError::Encrypted { key: k } if k.is_empty() => StoreError::Encrypted {
                key: key.to_string(),
            },
            StoreError::NotEncrypted { key: k } if k.is_empty() => StoreError::NotEncrypted {
                key: key.to_string(),
            },
            other => other,
        }
    }

    pub(crate) fn corrupt(key: &str, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            key: key.to_string(),
            detail: detail.into(),
        }
    }

    pub(crate) fn not_found(key: &str) -> Self {
        StoreError::NotFound {
            key: key.to_string(),
        }
    }

    pub(crate) fn config(detail: impl Into<String>) -> Self {
        StoreError::Config {
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_message_names_key_and_action() {
        let e = StoreError::PermissionDenied {
            key: "wal/000000010000000000000001".into(),
            op: Op::Put,
            hint: format!("the credentials need {} on the bucket", Op::Put.s3_action()),
            source: None,
        };
        assert_eq!(
            e.to_string(),
            "access denied writing wal/000000010000000000000001: the credentials need \
             s3:PutObject on the bucket"
        );
        assert!(e.is_permission());
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    }

    #[test]
    fn predicates_are_exclusive() {
        let e = StoreError::not_found("a");
        assert!(e.is_not_found() && !e.is_transient() && !e.is_conflict() && !e.is_corrupt());
        let e = StoreError::corrupt("", "bad magic").with_key("wal/x");
        assert_eq!(e.key(), Some("wal/x"));
        assert!(e.is_corrupt());
    }
}
