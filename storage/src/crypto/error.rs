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
    /// Another removal ran at the same time and removed the key this command unlocked the
    /// store with; the key `id` was written back so that the store keeps a key.
    #[error(
        "key {id} was put back: while it was being removed, another command removed key \
         {ours}, the one this command opened the store with, and both removals together \
         could leave the store without a key; check `pgagent key list` and remove again"
    )]
    RemovalRaced {
        /// The key this command removed and wrote back.
        id: String,
        /// The key this command unlocked the store with.
        ours: String,
    },
    /// `cluster.json` is missing from a store that holds keys or sealed objects, and the
    /// configuration opens none of its keys: a new master key would make every earlier
    /// object unreadable, so none is made.
    #[error(
        "cluster.json is missing, but the store holds {holds}: it is not a new store, and a \
         new master key would make its objects unreadable, so none is made ({why}); fix: \
         configure the passphrase of one of its keys (encryption.passphrase_file or \
         PGAGENT_ENCRYPTION_PASSPHRASE; cluster.json is then written back), or put \
         cluster.json and keys/ back from a copy"
    )]
    ClusterJsonMissing {
        /// What the store holds: its key files, a sealed object.
        holds: String,
        /// Why no key could be used.
        why: String,
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

    /// Refused for safety (exit 3): removing the last key or the one in use, a removal
    /// raced by another, a store without `cluster.json` whose keys cannot be opened.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            KeyError::LastKey { .. }
                | KeyError::InUse { .. }
                | KeyError::RemovalRaced { .. }
                | KeyError::ClusterJsonMissing { .. }
        )
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
