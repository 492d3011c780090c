//! Errors of key management ([`super::keys`], [`super::access`]).

use crate::error::StoreError;

/// Why a passphrase could not unlock a store, or a key could not be added or removed.
///
/// Callers decide with predicates: [`KeyError::is_wrong_passphrase`] (a configuration
/// error, exit 2), [`KeyError::is_refused`] (refused for safety, exit 3),
/// [`KeyError::store_error`] for the store's own failures (retry the transient ones).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No `keys/` object opens with the passphrase.
    #[error(
        "no key in keys/ opens with this passphrase ({tried} tried{}): check \
         encryption.passphrase_file or PGAGENT_ENCRYPTION_PASSPHRASE",
        skipped_note(.skipped)
    )]
    NoMatchingKey {
        /// Key files tried.
        tried: usize,
        /// Key files that could not be tried or opened a key of another store, with why.
        skipped: Vec<String>,
    },
    /// The store has no `keys/` objects at all.
    #[error(
        "the store holds no keys (keys/ is empty): it is not encrypted, or nothing has been \
         written yet; the first `pgagent run` or `pgagent backup` with a passphrase configured \
         creates them"
    )]
    NoKeys,
    /// No key with this id.
    #[error("no key {id:?} in keys/: `pgagent key list` shows the ids")]
    UnknownKey {
        /// The id asked for.
        id: String,
    },
    /// Removing the only key would make the store unreadable.
    #[error(
        "refusing to remove key {id}: it is the store's last key, and without one nobody \
         can read the store; add another key first (`pgagent key add`)"
    )]
    LastKey {
        /// The id asked for.
        id: String,
    },
    /// Removing the key the configured passphrase opens would lock this host out.
    #[error(
        "refusing to remove key {id}: the configured passphrase opens it, and every agent \
         using that passphrase would stop; configure another key's passphrase (encryption.\
         passphrase_file or PGAGENT_ENCRYPTION_PASSPHRASE), then remove this one"
    )]
    InUse {
        /// The id asked for.
        id: String,
    },
    /// An empty passphrase.
    #[error("the passphrase is empty: an empty passphrase protects nothing")]
    EmptyPassphrase,
    /// A key file that cannot be used: bad JSON, unknown algorithm, parameters out of bounds.
    #[error("{key}: not a usable key file: {detail}")]
    Corrupt {
        /// Object key (`keys/<id>`).
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// A store operation failed (or the store's encryption does not match the
    /// configuration: [`StoreError::is_encryption_mismatch`]).
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn skipped_note(skipped: &[String]) -> String {
    if skipped.is_empty() {
        String::new()
    } else {
        format!("; skipped: {}", skipped.join("; "))
    }
}

impl KeyError {
    /// The passphrase opens no key: a configuration error.
    pub fn is_wrong_passphrase(&self) -> bool {
        matches!(self, KeyError::NoMatchingKey { .. })
    }

    /// A removal refused for safety (the last key, or the one in use).
    pub fn is_refused(&self) -> bool {
        matches!(self, KeyError::LastKey { .. } | KeyError::InUse { .. })
    }

    /// The store error underneath, if the store failed.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            KeyError::Store(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn corrupt(key: &str, detail: impl Into<String>) -> KeyError {
        KeyError::Corrupt {
            key: key.to_string(),
            detail: detail.into(),
        }
    }
}
