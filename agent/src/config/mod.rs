//! Configuration, in two steps (raw → validated).
//!
//! Raw values come from, lowest precedence first: built-in defaults, the TOML file
//! (`--config`, else `/etc/pgagent/pgagent.toml`, else `./pgagent.toml`), environment
//! variables `PGAGENT_<SECTION>_<KEY>` (e.g. `PGAGENT_STORE_URL`) and
//! `PGAGENT_STORES_<NAME>_<KEY>` (a key of a `[[stores]]` entry), and command-line flags.
//! [`RawConfig::validate`] then checks every value and builds the [`Config`] the commands use,
//! with its stores ([`Config::stores`]: the `[[stores]]` entries, or the one store of the
//! `store.url` shorthand; see `stores.rs`).
//! The PostgreSQL connection also honours the libpq environment (`PGHOST`, `PGUSER`, …),
//! filled in by the replication client for whatever `postgres.conninfo` leaves out.

mod load;
pub mod lock;
pub mod params;
mod passphrase;
mod sections;
mod stores;
mod stores_env;
mod validate;

#[cfg(test)]
mod stores_env_tests;
#[cfg(test)]
mod stores_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use pgagent_storage::crypto::Passphrase;
use pgagent_storage::keyring::keys::UnlockLimits;
use serde::{Deserialize, Serialize};

pub use load::Overrides;
pub use passphrase::{passphrase_from_env, read_passphrase_file};
pub use sections::*;
pub use stores::{
    env_name, MaxLag, OnLagExceeded, Role, StoreEntry, StoreRole, StoreSpec, DEFAULT_STORE_URL,
    SHORTHAND_STORE_NAME, STORE_KEYS,
};
pub use validate::validate_slot_name;

/// Sections of the file; also the prefixes of the environment variables.
pub const SECTIONS: &[&str] = &[
    "postgres",
    "staging",
    "store",
    "wal",
    "fetch",
    "backup",
    "zfs",
    "drill",
    "metrics",
    "alerts",
    "encryption",
];

/// Default configuration file locations, tried in order when `--config` is not given.
pub const DEFAULT_CONFIG_PATHS: &[&str] = &["/etc/pgagent/pgagent.toml", "pgagent.toml"];

/// A string that never appears in logs or `Debug` output, wiped from memory on drop.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A configuration error: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Everything read from defaults, file, environment and flags, before validation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// `[postgres]`
    pub postgres: PostgresSection,
    /// `[staging]`
    pub staging: StagingSection,
    /// `[store]`
    pub store: StoreSection,
    /// `[[stores]]`; empty: the one store of `store.url`.
    pub stores: Vec<StoreEntry>,
    /// `[wal]`
    pub wal: WalSection,
    /// `[fetch]`
    pub fetch: FetchSection,
    /// `[backup]`
    pub backup: BackupSection,
    /// `[zfs]`
    pub zfs: ZfsSection,
    /// `[drill]`
    pub drill: DrillSection,
    /// `[metrics]`
    pub metrics: MetricsSection,
    /// `[alerts]`
    pub alerts: AlertsSection,
    /// `[encryption]`
    pub encryption: EncryptionSection,
    /// The configuration file read, if any (not a key).
    #[serde(skip)]
    pub file: Option<std::path::PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// All values, checked.
    pub raw: RawConfig,
    /// The stores, in restore order (`restore_priority`, then as written); never empty,
    /// at least one required.
    pub stores: Vec<StoreSpec>,
    /// The configured stores a `--store NAME` selection left out, in restore order (empty
    /// without one): a reading command reports how far the stores it used are behind them.
    pub left_out: Vec<StoreSpec>,
    /// Parsed `metrics.listen`; `None` disables the endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// The store's passphrase, read from `encryption.passphrase_file` or taken from
    /// `PGAGENT_ENCRYPTION_PASSPHRASE` at start; `None`: no encryption configured.
    pub passphrase: Option<Passphrase>,
}

/// Commands that write to the stores: they take no `--store NAME` that leaves one out.
const WRITING_COMMANDS: &[&str] = &["run", "backup", "snapshot"];

/// Commands that work with every configured store: `run` streams to each, a base backup
/// and a snapshot record go into each, prune applies each store's retention, and `store
/// add` copies the cluster from one store into another.
const EVERY_STORE_COMMANDS: &[&str] = &["run", "backup", "snapshot", "prune", "store add"];

/// Commands that read several stores as one (`--store NAME` repeatable; none: every
/// store), in `restore_priority` order.
pub const READING_COMMANDS: &[&str] = &[
    "fetch",
    "fetch-server",
    "restore",
    "drill",
    "list",
    "verify",
    "status",
    "doctor",
];

impl Config {
    /// The staging directory.
    pub fn staging_dir(&self) -> &Path {
        &self.raw.staging.dir
    }

    /// The bounds of every unlock of the store's keys: `encryption.max_unlock_memory`, and
    /// the default bound on key files read.
    pub fn unlock_limits(&self) -> UnlockLimits {
        let kib = self.raw.encryption.max_unlock_memory.as_u64() / 1024;
        UnlockLimits {
            max_m_cost_kib: u32::try_from(kib).unwrap_or(u32::MAX),
            ..UnlockLimits::default()
        }
    }

    /// `store.as_of` (`--as-of`): the time every store is read as of, if any (one setting
    /// for all the stores).
    pub fn as_of(&self) -> Option<std::time::SystemTime> {
        self.stores.first().and_then(|s| s.as_of)
    }

    /// The store, for code that uses one: every command refuses a configuration of
    /// several before it starts ([`Config::one_store_for`]), so this is the only one.
    ///
    /// Panics when several stores are configured: using the first one silently would
    /// leave the others without the WAL they are configured for.
    pub fn store(&self) -> &StoreSpec {
        assert!(
            self.stores.len() == 1,
            "several stores are configured ({}); commands refuse them before they start",
            stores::names(&self.stores)
        );
        &self.stores[0]
    }

    /// The one store `command` uses, or a configuration error when several are
    /// configured: commands do not use more than one store yet, and using the first one
    /// silently would leave the others without the WAL they are configured for.
    /// `run`, `backup`, `snapshot` and `prune` use every store: for them this is the first
    /// one.
    pub fn one_store_for(&self, command: &str) -> Result<&StoreSpec, ConfigError> {
        match self.stores.as_slice() {
            [one, ..] if EVERY_STORE_COMMANDS.contains(&command) => Ok(one),
            [one] => Ok(one),
            several => Err(ConfigError(format!(
                "several stores are configured ({}), and `pgagent {command}` does not yet use \
                 more than one (`pgagent run` streams to all of them; a reading command takes \
                 --store NAME to choose one)",
                stores::names(several)
            ))),
        }
    }

    /// This configuration with `spec` as its one store, for code that works on one store
    /// at a time ([`Config::store`] is then `spec`).
    pub fn with_store(&self, spec: &StoreSpec) -> Config {
        Config {
            stores: vec![spec.clone()],
            ..self.clone()
        }
    }

    /// Keeps only the store `--store NAME` names, for `command`.
    ///
    /// Errors: a name no store has; a command that writes (`run`, `backup`, `snapshot`)
    /// when other stores are configured: it would leave them without what they are
    /// configured to hold.
    pub fn select_one(&mut self, name: &str, command: &str) -> Result<(), ConfigError> {
        let chosen = self
            .select_stores(&[name])?
            .into_iter()
            .next()
            .cloned()
            .expect("a known name selects its store");
        if self.stores.len() > 1 && WRITING_COMMANDS.contains(&command) {
            return Err(ConfigError(format!(
                "--store {name}: `pgagent {command}` writes to every configured store ({}); \
                 --store NAME chooses the store of a command that reads (restore, drill, \
                 fetch, list, verify, prune, doctor, status, key)",
                stores::names(&self.stores)
            )));
        }
        self.left_out = self
            .stores
            .iter()
            .filter(|s| s.name != chosen.name)
            .cloned()
            .collect();
        self.stores = vec![chosen];
        Ok(())
    }

    /// Keeps the stores `--store NAME…` names (all of them when `names` is empty), in
    /// restore order, for a command of [`READING_COMMANDS`]; the others go to
    /// [`Config::left_out`].
    ///
    /// Errors: a name no store has.
    pub fn select_for_reading<S: AsRef<str>>(&mut self, names: &[S]) -> Result<(), ConfigError> {
        let chosen: Vec<StoreSpec> = self.select_stores(names)?.into_iter().cloned().collect();
        self.left_out = self
            .stores
            .iter()
            .filter(|s| !chosen.iter().any(|c| c.name == s.name))
            .cloned()
            .collect();
        self.stores = chosen;
        Ok(())
    }

    /// This configuration with `spec` as its one store (nothing left out): how a command
    /// that reads several stores checks or lists each on its own.
    pub fn for_store(&self, spec: &StoreSpec) -> Config {
        Config {
            stores: vec![spec.clone()],
            left_out: Vec::new(),
            ..self.clone()
        }
    }

    /// The stores a `--store NAME…` selection names, in restore order; no names: all of
    /// them.
    ///
    /// Errors: a name no store has, listing the names there are.
    pub fn select_stores<S: AsRef<str>>(
        &self,
        names: &[S],
    ) -> Result<Vec<&StoreSpec>, ConfigError> {
        for n in names {
            let n = n.as_ref();
            if !self.stores.iter().any(|s| s.name == n) {
                return Err(ConfigError(format!(
                    "--store {n}: no store is named {n:?}; the stores are: {}",
                    stores::names(&self.stores)
                )));
            }
        }
        Ok(self
            .stores
            .iter()
            .filter(|s| names.is_empty() || names.iter().any(|n| n.as_ref() == s.name))
            .collect())
    }
}
