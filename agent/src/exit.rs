//! Exit codes, decided in one place (DESIGN.md, "Exit codes").

use pgagent_storage::crypto::KeyError;
use pgagent_storage::StoreError;

use crate::config::ConfigError;

/// Refused for safety (exit 3): a foreign cluster in the store prefix, a non-empty PGDATA…
#[derive(Debug, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub String);

/// An error that carries its own exit code: `pgagent fetch`'s, whose codes PostgreSQL reads
/// (1 "not found", 255 "stop recovery"). Display and source are the inner error's.
#[derive(Debug)]
pub struct Coded {
    /// The exit code.
    pub code: u8,
    /// What went wrong.
    pub error: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Coded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// Success.
pub const OK: u8 = 0;
/// A failure with a message (and, for `fetch` only, "confirmed not found").
pub const FAILURE: u8 = 1;
/// Usage or configuration error.
pub const USAGE: u8 = 2;
/// Refused for safety.
pub const REFUSED: u8 = 3;
/// `fetch` only: recovery must stop (PostgreSQL aborts recovery on a `restore_command` exit
/// status above 125, `RestoreArchivedFile` in `src/backend/access/transam/xlogarchive.c`).
pub const FETCH_ABORT: u8 = 255;

/// Runs `f` and returns its exit code, or `on_panic` if it panics (the panic hook has printed
/// the message by then).
///
/// `pgagent fetch` runs under it with [`FETCH_ABORT`]: Rust's own status for a panic, 101, is
/// below 126, which PostgreSQL takes from `restore_command` for "file not found"
/// (`RestoreArchivedFile` in `src/backend/access/transam/xlogarchive.c`) and so ends recovery
/// early instead of stopping it. A process killed by a signal (or built with
/// `panic = "abort"`, which ends in SIGABRT) needs nothing: PostgreSQL stops recovery on a
/// signal other than SIGTERM, and on SIGTERM it is shutting down anyway.
pub fn unless_panic(on_panic: u8, f: impl FnOnce() -> u8) -> u8 {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// The exit code for an error that ended a command.
pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Coded>() {
            return e.code;
        }
        if cause.is::<Refused>() {
            return REFUSED;
        }
        if cause.is::<ConfigError>() {
            return USAGE;
        }
        if let Some(e) = cause.downcast_ref::<KeyError>() {
            return key_error_code(e);
        }
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            if let Some(code) = store_error_code(e) {
                return code;
            }
        }
    }
    FAILURE
}

/// Store errors with a code of their own: another cluster's prefix is refused (3); a store
/// whose encryption does not match the configuration is a configuration error (2).
fn store_error_code(e: &StoreError) -> Option<u8> {
    if e.is_foreign_cluster() {
        Some(REFUSED)
    } else if e.is_encryption_mismatch() {
        Some(USAGE)
    } else {
        None
    }
}

/// Key errors: a passphrase that opens nothing, a store without keys, an unknown key id are
/// configuration or usage errors (2); removing the last key or the one in use, a removal
/// raced by another, and a store that lost `cluster.json` but whose keys do not open are
/// refused (3).
fn key_error_code(e: &KeyError) -> u8 {
    match e {
        KeyError::NoMatchingKey { .. }
        | KeyError::NoKeys
        | KeyError::EmptyPassphrase
        | KeyError::UnknownKey { .. } => USAGE,
        KeyError::LastKey { .. }
        | KeyError::InUse { .. }
        | KeyError::RemovalRaced { .. }
        | KeyError::ClusterJsonMissing { .. } => REFUSED,
        KeyError::Store(s) => store_error_code(s).unwrap_or(FAILURE),
        KeyError::Corrupt { .. } => FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_given_code() {
        assert_eq!(
            unless_panic(FETCH_ABORT, || panic!("an invariant broke")),
            255
        );
        assert_eq!(unless_panic(FETCH_ABORT, || FAILURE), FAILURE);
        assert_eq!(unless_panic(FETCH_ABORT, || OK), OK);
    }

    #[test]
    fn codes_follow_the_cause_chain() {
        let e = anyhow::Error::new(Refused("x".into())).context("outer");
        assert_eq!(code_for(&e), REFUSED);
        assert_eq!(code_for(&ConfigError("bad".into()).into()), USAGE);
        assert_eq!(code_for(&anyhow::anyhow!("other")), FAILURE);
    }

    #[test]
    fn key_and_encryption_errors_have_their_codes() {
        let wrong = KeyError::NoMatchingKey {
            tried: 2,
            skipped: Vec::new(),
        };
        assert_eq!(
            code_for(&anyhow::Error::new(wrong).context("key list")),
            USAGE
        );
        let last = KeyError::LastKey { id: "a".into() };
        assert_eq!(code_for(&last.into()), REFUSED);
        let in_use = KeyError::InUse { id: "a".into() };
        assert_eq!(code_for(&in_use.into()), REFUSED);
        let enc = StoreError::Encrypted {
            key: "cluster.json".into(),
        };
        assert_eq!(code_for(&anyhow::Error::new(enc).context("fetch")), USAGE);
        let plain = KeyError::Store(StoreError::NotEncrypted {
            key: "cluster.json".into(),
        });
        assert_eq!(code_for(&plain.into()), USAGE);
        let corrupt = KeyError::Corrupt {
            key: "keys/a".into(),
            detail: "x".into(),
        };
        assert_eq!(code_for(&corrupt.into()), FAILURE);
    }

    #[test]
    fn an_error_with_its_own_code_keeps_it_and_its_message() {
        let inner = std::io::Error::other("the store said no");
        let coded = Coded {
            code: FETCH_ABORT,
            error: Box::new(inner),
        };
        let e = anyhow::Error::new(coded).context("outer");
        assert_eq!(code_for(&e), FETCH_ABORT);
        assert_eq!(format!("{e:#}"), "outer: the store said no");
    }
}
