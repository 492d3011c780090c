//! `pgagent key add|list|remove`: the access keys of an encrypted store (docs/security.md).
//!
//! Every action opens the store's key files with the configured passphrase
//! (`encryption.passphrase_file` or `PGAGENT_ENCRYPTION_PASSPHRASE`), except `list`, which
//! also works without one (it then marks no key). A store whose `cluster.json` says it is
//! plaintext is refused: its objects are not encrypted, so keys would protect nothing.
//! The keys of a new store are made by the first command that writes to it (`run`,
//! `backup`) with a passphrase configured; `key add` on a store without keys says so.

use pgagent_storage::cluster::read_cluster;
use pgagent_storage::crypto::{KdfParams, KeyError, Passphrase};
use pgagent_storage::keyring::keys::{self, Expect, KeyInfo, Unlocked};
use pgagent_storage::{ObjectStore, StoreError};
use serde::Serialize;

use crate::config::{passphrase_from_env, read_passphrase_file, Config, ConfigError};

/// Environment variable holding the new passphrase of `pgagent key add` when
/// `--new-passphrase-file` is not given.
pub const NEW_PASSPHRASE_ENV: &str = "PGAGENT_NEW_PASSPHRASE";

/// `pgagent key add`: adds an access key for a new passphrase, taken from
/// `new_passphrase_file` or else [`NEW_PASSPHRASE_ENV`].
///
/// Errors: no passphrase configured or given (exit 2), the configured one opens no key
/// (exit 2), store errors.
pub async fn add(
    cfg: &Config,
    new_passphrase_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let new = new_passphrase(new_passphrase_file, std::env::var(NEW_PASSPHRASE_ENV).ok())?;
    let store = crate::store::open(cfg).await?;
    let unlocked = unlock(cfg, store.as_ref()).await?;
    if Some(&new) == cfg.passphrase.as_ref() {
        return Err(ConfigError(
            "the new passphrase is the one configured, which already opens key ".to_string()
                + &unlocked.key_id
                + ": choose another",
        )
        .into());
    }
    let origin = crate::store::key_origin();
    let info = keys::add(
        store.as_ref(),
        &unlocked.master,
        &new,
        KdfParams::DEFAULT,
        &origin,
    )
    .await?;
    println!(
        "added key {} ({}@{}); {}",
        info.id,
        printable(&info.username),
        printable(&info.hostname),
        now_has(store.as_ref()).await
    );
    Ok(())
}

/// The new passphrase of `key add`: from the file if given, else from the environment.
fn new_passphrase(
    file: Option<&std::path::Path>,
    env: Option<String>,
) -> Result<Passphrase, ConfigError> {
    match (file, env) {
        (Some(_), Some(_)) => Err(ConfigError(format!(
            "--new-passphrase-file and {NEW_PASSPHRASE_ENV} are both set: keep one"
        ))),
        (Some(path), None) => read_passphrase_file("--new-passphrase-file", path),
        (None, Some(value)) => passphrase_from_env(NEW_PASSPHRASE_ENV, &value),
        (None, None) => Err(ConfigError(format!(
            "pgagent key add needs the new passphrase: --new-passphrase-file FILE, or the \
             environment variable {NEW_PASSPHRASE_ENV}"
        ))),
    }
}

/// One row of `pgagent key list --json`.
#[derive(Debug, Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    key: &'a KeyInfo,
    /// The configured passphrase opens this key.
    current: bool,
}

/// `pgagent key list`: every access key, with the one the configured passphrase opens
/// marked (none without a passphrase).
///
/// Errors: the store is plaintext or has no keys (exit 2), a configured passphrase that
/// opens no key (exit 2), an unusable key file, store errors.
pub async fn list(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let store = crate::store::open(cfg).await?;
    let current = match &cfg.passphrase {
        Some(_) => Some(unlock(cfg, store.as_ref()).await?.key_id),
        None => {
            refuse_plaintext(store.as_ref()).await?;
            None
        }
    };
    let listed = keys::list(store.as_ref()).await?;
    if listed.is_empty() {
        return Err(KeyError::NoKeys.into());
    }
    let rows: Vec<Row> = listed
        .iter()
        .map(|k| Row {
            key: k,
            current: current.as_deref() == Some(k.id.as_str()),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("  {:<32}  {:<20}  {:<16}  USER", "ID", "CREATED", "HOST");
    for r in &rows {
        // Everything but the id (checked against the file's name) is as the bucket holds it.
        println!(
            "{} {:<32}  {:<20}  {:<16}  {}",
            if r.current { '*' } else { ' ' },
            r.key.id,
            printable(&r.key.created_at),
            printable(&r.key.hostname),
            printable(&r.key.username)
        );
    }
    if current.is_none() {
        println!("(no passphrase configured: the key it opens is not marked)");
    }
    Ok(())
}

/// `pgagent key remove ID`: removes an access key other than the one the configured
/// passphrase opens.
///
/// Errors: unknown id (exit 2), the key in use or the last key (exit 3), as [`add`].
pub async fn remove(cfg: &Config, id: &str) -> anyhow::Result<()> {
    let store = crate::store::open(cfg).await?;
    let unlocked = unlock(cfg, store.as_ref()).await?;
    keys::remove(store.as_ref(), id, &unlocked).await?;
    println!("removed key {id}; {}", now_has(store.as_ref()).await);
    Ok(())
}

/// Opens the store's keys with the configured passphrase; when `cluster.json` exists, only
/// a key holding the master key it records counts.
async fn unlock(cfg: &Config, store: &dyn ObjectStore) -> anyhow::Result<Unlocked> {
    let passphrase = cfg.passphrase.as_ref().ok_or_else(|| {
        ConfigError(
            "pgagent key needs the passphrase of one of the store's keys: set \
             encryption.passphrase_file or PGAGENT_ENCRYPTION_PASSPHRASE"
                .into(),
        )
    })?;
    let cluster = read_cluster(store).await?;
    let (expect, first) = match cluster.as_ref().map(|c| c.encryption.as_ref()) {
        Some(None) => return Err(not_encrypted().into()),
        Some(Some(e)) => (Expect::KeyCheck(&e.key_check), e.key_id.as_deref()),
        None => (Expect::Any, None),
    };
    Ok(keys::unlock_with(store, passphrase, expect, first, cfg.unlock_limits()).await?)
}

/// Refuses a store whose `cluster.json` says it is plaintext (no passphrase configured).
async fn refuse_plaintext(store: &dyn ObjectStore) -> anyhow::Result<()> {
    match read_cluster(store).await? {
        Some(c) if !c.is_encrypted() => Err(ConfigError(format!(
            "{}: the store is not encrypted (cluster.json says so), so it has no keys; a \
             store is encrypted from its first write, with a passphrase configured",
            store.describe()
        ))
        .into()),
        _ => Ok(()),
    }
}

/// "the store now has N keys", after a change that succeeded: a failure to count is
/// reported (warning) but is no failure of the change.
async fn now_has(store: &dyn ObjectStore) -> String {
    match keys::list(store).await {
        Ok(listed) => format!("the store now has {}", count(listed.len())),
        Err(e) => {
            tracing::warn!(error = %e, "the change is made, but the keys could not be listed");
            format!("the keys could not be listed afterwards ({e}); see `pgagent key list`")
        }
    }
}

fn count(keys: usize) -> String {
    match keys {
        1 => "1 key".to_string(),
        n => format!("{n} keys"),
    }
}

/// `s` with control characters (terminal escapes among them) and backslashes escaped as
/// Rust does (`\u{1b}`, `\\`): host and user names come from key files in the bucket,
/// which others may write.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            // Controls, backslash, and the bidirectional overrides that reorder what follows.
            if c.is_control()
                || c == '\\'
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn not_encrypted() -> StoreError {
    StoreError::NotEncrypted {
        key: pgagent_storage::layout::CLUSTER_KEY.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_passphrase_comes_from_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("new");
        std::fs::write(&file, "new one\n").unwrap();
        let p = new_passphrase(Some(&file), None).unwrap();
        assert_eq!(p.expose_bytes(), b"new one");
        let p = new_passphrase(None, Some("from env".into())).unwrap();
        assert_eq!(p.expose_bytes(), b"from env");
        let e = new_passphrase(Some(&file), Some("x".into())).unwrap_err();
        assert!(e.to_string().contains("both"), "{e}");
        let e = new_passphrase(None, None).unwrap_err();
        assert!(e.to_string().contains(NEW_PASSPHRASE_ENV), "{e}");
        assert!(new_passphrase(None, Some(String::new())).is_err());
    }

    #[test]
    fn names_from_the_bucket_are_printed_without_terminal_escapes() {
        assert_eq!(printable("db1"), "db1");
        assert_eq!(printable("hôte-é"), "hôte-é");
        assert_eq!(
            printable("\x1b[2J\x1b]0;owned\x07"),
            "\\u{1b}[2J\\u{1b}]0;owned\\u{7}"
        );
        assert_eq!(printable("a\u{9b}b\nc\\"), "a\\u{9b}b\\nc\\\\");
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
    }
}
