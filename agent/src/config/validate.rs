//! Checks of every value, from raw to the validated [`Config`].

use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use pgagent_storage::crypto::{KdfParams, Passphrase};

use super::{passphrase_from_env, read_passphrase_file, Config, ConfigError, RawConfig};

impl RawConfig {
    /// Checks every value and builds the runtime configuration.
    pub fn validate(mut self) -> Result<Config, ConfigError> {
        let bad = |msg: String| Err(ConfigError(msg));
        validate_slot_name(&self.postgres.slot)?;
        if self.store.upload_concurrency == 0 || self.store.upload_concurrency > 256 {
            return bad(format!(
                "store.upload_concurrency = {} is out of range 1..=256",
                self.store.upload_concurrency
            ));
        }
        if self.store.part_size.as_u64() < 5 * 1024 * 1024 {
            return bad("store.part_size must be at least 5MiB (the S3 minimum)".into());
        }
        if !(-7..=22).contains(&self.wal.compression_level) {
            return bad(format!(
                "wal.compression_level = {} is out of range -7..=22",
                self.wal.compression_level
            ));
        }
        if self.wal.partial_interval < Duration::from_millis(50) {
            return bad("wal.partial_interval must be at least 50ms".into());
        }
        if self.wal.status_interval < Duration::from_millis(100) {
            return bad("wal.status_interval must be at least 100ms".into());
        }
        if self.wal.compress_threads == 0 {
            return bad("wal.compress_threads must be at least 1".into());
        }
        crate::schedule::parse("backup.schedule", &self.backup.schedule)
            .map_err(|e| ConfigError(e.0))?;
        let unlock = self.encryption.max_unlock_memory.as_u64();
        let (least, most) = (
            u64::from(KdfParams::DEFAULT.m_cost_kib) * 1024,
            u64::from(KdfParams::MAX_M_COST_KIB) * 1024,
        );
        if !(least..=most).contains(&unlock) {
            return bad(format!(
                "encryption.max_unlock_memory = {}: must be from {} (what keys are made with) \
                 to {}",
                self.encryption.max_unlock_memory,
                ByteSize::b(least),
                ByteSize::b(most)
            ));
        }
        for d in &self.zfs.datasets {
            validate_dataset("zfs.datasets", d)?;
        }
        if !self.zfs.staging_dataset.is_empty() {
            validate_dataset("zfs.staging_dataset", &self.zfs.staging_dataset)?;
        }
        if self.zfs.create_staging && self.zfs.staging_dataset.is_empty() {
            return bad(
                "zfs.create_staging needs zfs.staging_dataset (the dataset to create)".into(),
            );
        }
        if crate::schedule::parse("zfs.snapshot_schedule", &self.zfs.snapshot_schedule)
            .map_err(|e| ConfigError(e.0))?
            .is_some()
            && self.zfs.datasets.is_empty()
        {
            return bad("zfs.snapshot_schedule is set but zfs.datasets is empty".into());
        }
        if self.backup.max_chain == 0 {
            return bad("backup.max_chain = 0: at least 1 (set backup.incremental = \"off\" for full backups only)".to_string());
        }
        let chunk = self.backup.chunk_size.as_u64();
        if !(64 * 1024..=64 * 1024 * 1024).contains(&chunk) {
            return bad(format!(
                "backup.chunk_size = {} is out of range 64KiB..=64MiB",
                self.backup.chunk_size
            ));
        }
        if self.fetch.prefetch > 256 {
            return bad(format!(
                "fetch.prefetch = {} is out of range 0..=256",
                self.fetch.prefetch
            ));
        }
        if self.fetch.timeout < Duration::from_secs(1) {
            return bad("fetch.timeout must be at least 1s".into());
        }
        if self.fetch.idle_timeout < Duration::from_secs(1) {
            return bad("fetch.idle_timeout must be at least 1s".into());
        }
        if self.staging.dir.as_os_str().is_empty() {
            return bad("staging.dir is empty".into());
        }
        if self.metrics.max_rpo_seconds.is_nan() || self.metrics.max_rpo_seconds <= 0.0 {
            return bad("metrics.max_rpo_seconds must be more than 0".into());
        }
        let metrics_listen = if self.metrics.listen.trim().is_empty() {
            None
        } else {
            Some(self.metrics.listen.parse::<SocketAddr>().map_err(|e| {
                ConfigError(format!("metrics.listen = {:?}: {e}", self.metrics.listen))
            })?)
        };
        let stores = super::stores::validate_stores(&self)?;
        let passphrase = self.passphrase()?;
        // One copy of the secret is enough: the `Passphrase` (wiped on drop); the string
        // taken from the environment is wiped now (`Secret` zeroizes on drop).
        self.encryption.passphrase = None;
        Ok(Config {
            stores,
            left_out: Vec::new(),
            metrics_listen,
            passphrase,
            raw: self,
        })
    }
}

impl RawConfig {
    /// The configured passphrase: `encryption.passphrase_file` read now, or
    /// `encryption.passphrase` (environment only, see [`RawConfig::load`]); never both, never
    /// empty, so that a secret that failed to arrive never turns into a plaintext store.
    fn passphrase(&self) -> Result<Option<Passphrase>, ConfigError> {
        let e = &self.encryption;
        match (&e.passphrase_file, &e.passphrase) {
            (Some(_), Some(_)) => Err(ConfigError(
                "encryption.passphrase_file and PGAGENT_ENCRYPTION_PASSPHRASE are both set: \
                 keep one"
                    .into(),
            )),
            (Some(path), None) => {
                read_passphrase_file("encryption.passphrase_file", path).map(Some)
            }
            (None, Some(p)) => passphrase_from_env("PGAGENT_ENCRYPTION_PASSPHRASE", &p.0).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Checks a slot name the way PostgreSQL does (`ReplicationSlotValidateName` in
/// `src/backend/replication/slot.c`): 1–63 characters of `[a-z0-9_]`.
pub fn validate_slot_name(name: &str) -> Result<(), ConfigError> {
    if pgagent_protocol::client::is_valid_slot_name(name) {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "postgres.slot = {name:?}: a slot name is 1-63 characters of lower-case letters, digits and underscores"
        )))
    }
}

/// Checks a dataset name enough to pass it to `zfs` safely: `pool/name…`, no snapshot
/// part, no spaces, not an option.
fn validate_dataset(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && !name.starts_with(['-', '/'])
        && !name.ends_with('/')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{key} = {name:?} is not a ZFS dataset name (pool/name, no @, spaces or leading /)"
        )))
    }
}
