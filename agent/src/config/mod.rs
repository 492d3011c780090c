//! Configuration, in two steps (raw → validated).
//!
//! Raw values come from, lowest precedence first: built-in defaults, the TOML file
//! (`--config`, else `/etc/pgagent/pgagent.toml`, else `./pgagent.toml`), environment
//! variables `PGAGENT_<SECTION>_<KEY>` (e.g. `PGAGENT_STORE_URL`), and command-line flags.
//! [`RawConfig::validate`] then checks every value and builds the [`Config`] the commands use.
//! The PostgreSQL connection also honours the libpq environment (`PGHOST`, `PGUSER`, …),
//! filled in by the replication client for whatever `postgres.conninfo` leaves out.

mod load;
mod passphrase;
mod sections;
mod validate;

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
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// All values, checked.
    pub raw: RawConfig,
    /// Parsed `metrics.listen`; `None` disables the endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// The store's passphrase, read from `encryption.passphrase_file` or taken from
    /// `PGAGENT_ENCRYPTION_PASSPHRASE` at start; `None`: no encryption configured.
    pub passphrase: Option<Passphrase>,
}

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

    /// Options for opening the store.
    pub fn store_options(&self) -> pgagent_storage::StoreOptions {
        let s = &self.raw.store;
        pgagent_storage::StoreOptions {
            upload_concurrency: s.upload_concurrency,
            part_size: s.part_size.as_u64(),
            access_key_id: s.access_key_id.as_ref().map(|k| k.0.clone()),
            secret_access_key: s.secret_access_key.as_ref().map(|k| k.0.clone()),
            request_timeout: s.request_timeout,
            ..Default::default()
        }
    }
}
