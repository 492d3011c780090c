//! Configuration, in two steps (raw → validated).
//!
//! Raw values come from, lowest precedence first: built-in defaults, the TOML file
//! (`--config`, else `/etc/pgagent/pgagent.toml`, else `./pgagent.toml`), environment
//! variables `PGAGENT_<SECTION>_<KEY>` (e.g. `PGAGENT_STORE_URL`), and command-line flags.
//! [`RawConfig::validate`] then checks every value and builds the [`Config`] the commands use.
//! The PostgreSQL connection also honours the libpq environment (`PGHOST`, `PGUSER`, …),
//! filled in by the replication client for whatever `postgres.conninfo` leaves out.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Sections of the file; also the prefixes of the environment variables.
pub const SECTIONS: &[&str] = &[
    "postgres", "staging", "store", "wal", "fetch", "backup", "zfs", "metrics", "alerts",
];

/// Default configuration file locations, tried in order when `--config` is not given.
pub const DEFAULT_CONFIG_PATHS: &[&str] = &["/etc/pgagent/pgagent.toml", "pgagent.toml"];

/// A string that never appears in logs or `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// `[postgres]`: the server to stream from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSection {
    /// libpq-style connection string (`key=value …` or a `postgres://` URI); empty means
    /// "libpq environment and defaults".
    pub conninfo: String,
    /// Physical replication slot; created if missing.
    pub slot: String,
}

impl Default for PostgresSection {
    fn default() -> Self {
        PostgresSection {
            conninfo: String::new(),
            slot: "pgagent".into(),
        }
    }
}

/// `[staging]`: the local directory (a ZFS dataset in production) for raw segments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StagingSection {
    /// Directory path.
    pub dir: PathBuf,
    /// Bytes of not-yet-uploaded WAL after which the agent stops receiving.
    pub quota: ByteSize,
}

impl Default for StagingSection {
    fn default() -> Self {
        StagingSection {
            dir: "/var/lib/pgagent/staging".into(),
            quota: ByteSize::gib(20),
        }
    }
}

/// `[store]`: the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `file:///path` or `s3://bucket/prefix?endpoint=…&region=…&path_style=true`.
    pub url: String,
    /// Uploads in flight at once (R2 throttles past a few).
    pub upload_concurrency: usize,
    /// Multipart part size in bytes (all parts but the last are this size).
    pub part_size: ByteSize,
    /// S3 access key id; the standard AWS chain is used when unset.
    pub access_key_id: Option<Secret>,
    /// S3 secret access key.
    pub secret_access_key: Option<Secret>,
    /// Timeout of one store request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            url: "file:///var/lib/pgagent/store".into(),
            upload_concurrency: 8,
            part_size: ByteSize::mib(32),
            access_key_id: None,
            secret_access_key: None,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// What `flush` in the standby status update means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirm {
    /// WAL is durable in the bucket (the default; like `archive_command`).
    Bucket,
    /// WAL is fsynced in staging.
    Staging,
}

/// `[wal]`: streaming.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalSection {
    /// How often the segment being filled is uploaded as `.partial` while it changes.
    #[serde(with = "humantime_serde")]
    pub partial_interval: Duration,
    /// What `flush` confirms to the server.
    pub confirm: Confirm,
    /// zstd level (1–22; negative levels are the fast modes).
    pub compression_level: i32,
    /// Threads compressing and hashing segments.
    pub compress_threads: usize,
    /// Longest time between two standby status updates.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// Synchronous-standby mode: upload the partial segment as soon as WAL arrives (one
    /// upload in flight, the next one batching what came meanwhile), so that with
    /// `synchronous_standby_names` naming the agent a commit returns only once its WAL is in
    /// the bucket.
    pub synchronous: bool,
}

impl Default for WalSection {
    fn default() -> Self {
        WalSection {
            partial_interval: Duration::from_secs(1),
            confirm: Confirm::Bucket,
            compression_level: 3,
            compress_threads: 2,
            status_interval: Duration::from_secs(10),
            synchronous: false,
        }
    }
}

/// `[fetch]`: `restore_command` serving.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchSection {
    /// Segments downloaded ahead of the one asked for.
    pub prefetch: usize,
    /// How long transient store errors are retried before recovery is aborted.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Bound of the prefetch cache: verified segments waiting to be asked for, in bytes.
    pub cache_size: ByteSize,
    /// A fetch server started by `pgagent fetch` (restore mode) exits after this long
    /// without a request.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for FetchSection {
    fn default() -> Self {
        FetchSection {
            prefetch: 16,
            timeout: Duration::from_secs(300),
            cache_size: ByteSize::mib(512),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// `[backup]`: base backups.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSection {
    /// Cron schedule of base backups taken by `pgagent run`.
    pub schedule: String,
    /// Size of the content-addressed chunks files are cut into, in bytes.
    pub chunk_size: ByteSize,
    /// How long `pgagent backup` waits for the WAL up to the stop LSN to reach the store
    /// before leaving the backup `running`.
    #[serde(with = "humantime_serde")]
    pub wal_timeout: Duration,
    /// `pgagent prune` keeps this many newest complete backups (at least 1).
    pub keep_backups: usize,
    /// `pgagent prune` also keeps complete backups younger than this many days; 0: no age
    /// rule.
    pub keep_days: u64,
}

impl Default for BackupSection {
    fn default() -> Self {
        BackupSection {
            schedule: "0 3 * * *".into(),
            chunk_size: ByteSize::mib(1),
            wal_timeout: Duration::from_secs(600),
            keep_backups: 7,
            keep_days: 0,
        }
    }
}

/// How `pgagent restore` brings back a local snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotRestoreMode {
    /// `zfs clone` into a new dataset mounted where `--pgdata` points; nothing is destroyed.
    Clone,
    /// `zfs rollback -r` of the datasets in place: discards what changed since the snapshot
    /// and newer snapshots, so it needs `--force`.
    Rollback,
}

/// `[zfs]`: staging dataset, snapshots of the cluster's datasets, and their retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZfsSection {
    /// The `zfs` command (looked up in `PATH`).
    pub command: PathBuf,
    /// Datasets snapshotted together by `pgagent snapshot`, each with `zfs snapshot -r`:
    /// the one holding PGDATA first, then the WAL dataset if separate. Empty: no snapshots.
    pub datasets: Vec<String>,
    /// The dataset of `staging.dir`; empty: found from the mount table.
    pub staging_dataset: String,
    /// Create `staging_dataset`, mounted at `staging.dir` with the properties staging
    /// wants, when it does not exist.
    pub create_staging: bool,
    /// Cron schedule of snapshots taken by `pgagent run`; empty: none.
    pub snapshot_schedule: String,
    /// Retention keeps the newest snapshot of each of this many last hours…
    pub keep_hourly: usize,
    /// … days …
    pub keep_daily: usize,
    /// … and weeks (the newest snapshot is always kept).
    pub keep_weekly: usize,
    /// How a restore uses a snapshot: `clone` or `rollback`.
    pub restore_mode: SnapshotRestoreMode,
}

impl Default for ZfsSection {
    fn default() -> Self {
        ZfsSection {
            command: "zfs".into(),
            datasets: Vec::new(),
            staging_dataset: String::new(),
            create_staging: false,
            snapshot_schedule: String::new(),
            keep_hourly: 24,
            keep_daily: 7,
            keep_weekly: 4,
            restore_mode: SnapshotRestoreMode::Clone,
        }
    }
}

impl ZfsSection {
    /// The retention policy.
    pub fn retention(&self) -> crate::zfs::retention::Policy {
        crate::zfs::retention::Policy {
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
        }
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

/// `[metrics]`: the HTTP endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of `/metrics`, `/healthz`, `/readyz`; empty disables the endpoint.
    pub listen: String,
    /// RPO bound in seconds: above it `/readyz` answers 503 and an incident starts.
    pub max_rpo_seconds: f64,
    /// node_exporter textfile collector directory: `pgagent.prom` is rewritten there every
    /// second; empty: none.
    pub textfile_dir: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: "127.0.0.1:9187".into(),
            max_rpo_seconds: 300.0,
            textfile_dir: String::new(),
        }
    }
}

/// `[alerts]`: commands run when an incident starts and ends (see [`crate::alerts`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsSection {
    /// Shell command run once when an incident starts; empty: none.
    pub on_failure: String,
    /// Shell command run once when a reported incident ends; empty: none.
    pub on_recovery: String,
    /// A hook still running after this long is killed.
    #[serde(with = "humantime_serde")]
    pub hook_timeout: Duration,
    /// How long a problem must last to be an incident.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Least time between two reported incidents; one sooner is only logged.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            on_failure: String::new(),
            on_recovery: String::new(),
            hook_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(30),
            min_interval: Duration::from_secs(300),
        }
    }
}

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
    /// `[metrics]`
    pub metrics: MetricsSection,
    /// `[alerts]`
    pub alerts: AlertsSection,
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--conninfo`
    pub conninfo: Option<String>,
    /// `--slot`
    pub slot: Option<String>,
    /// `--staging-dir`
    pub staging_dir: Option<PathBuf>,
    /// `--store`
    pub store_url: Option<String>,
}

impl Overrides {
    fn apply(&self, mut figment: Figment) -> Figment {
        if let Some(v) = &self.conninfo {
            figment = figment.merge(Serialized::global("postgres.conninfo", v));
        }
        if let Some(v) = &self.slot {
            figment = figment.merge(Serialized::global("postgres.slot", v));
        }
        if let Some(v) = &self.staging_dir {
            figment = figment.merge(Serialized::global("staging.dir", v));
        }
        if let Some(v) = &self.store_url {
            figment = figment.merge(Serialized::global("store.url", v));
        }
        figment
    }
}

/// A configuration error: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Maps `PGAGENT_STORE_UPLOAD_CONCURRENCY` (lowercased by figment) to `store.upload_concurrency`;
/// variables of no known section (such as `PGAGENT_CONFIG`) are left out.
fn env_key(key: &figment::value::UncasedStr) -> Option<figment::value::Uncased<'static>> {
    let key = key.as_str().to_ascii_lowercase();
    SECTIONS.iter().find_map(|section| {
        key.strip_prefix(section)
            .and_then(|rest| rest.strip_prefix('_'))
            .filter(|rest| !rest.is_empty())
            .map(|rest| format!("{section}.{rest}").into())
    })
}

impl RawConfig {
    /// Layers defaults, file, environment and flags. `path` is `--config`; when it is given
    /// the file must exist.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<RawConfig, ConfigError> {
        Self::load_with_env(path, overrides, Env::prefixed("PGAGENT_"))
    }

    fn load_with_env(
        path: Option<&Path>,
        overrides: &Overrides,
        env: Env,
    ) -> Result<RawConfig, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        let file = match path {
            Some(p) if !p.exists() => {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    p.display()
                )))
            }
            Some(p) => Some(p.to_path_buf()),
            None => DEFAULT_CONFIG_PATHS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists()),
        };
        if let Some(file) = &file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = overrides.apply(figment.merge(env.filter_map(|k| env_key(k))));
        figment
            .extract()
            .map_err(|e| ConfigError(e.to_string().replace('\n', "; ")))
    }

    /// Checks every value and builds the runtime configuration.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let bad = |msg: String| Err(ConfigError(msg));
        validate_slot_name(&self.postgres.slot)?;
        if self.store.url.trim().is_empty() {
            return bad("store.url is empty".into());
        }
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
        crate::backup::schedule::parse("backup.schedule", &self.backup.schedule)?;
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
        if crate::backup::schedule::parse("zfs.snapshot_schedule", &self.zfs.snapshot_schedule)?
            .is_some()
            && self.zfs.datasets.is_empty()
        {
            return bad("zfs.snapshot_schedule is set but zfs.datasets is empty".into());
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
        Ok(Config {
            metrics_listen,
            raw: self,
        })
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

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// All values, checked.
    pub raw: RawConfig,
    /// Parsed `metrics.listen`; `None` disables the endpoint.
    pub metrics_listen: Option<SocketAddr>,
}

impl Config {
    /// The staging directory.
    pub fn staging_dir(&self) -> &Path {
        &self.raw.staging.dir
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)], ov: Overrides) -> Result<RawConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgagent.toml");
        std::fs::write(&path, toml).unwrap();
        // A unique prefix keeps tests independent of the process environment.
        let prefix = format!("PGAGENT_T{}_", std::process::id());
        for (k, v) in env {
            std::env::set_var(format!("{prefix}{k}"), v);
        }
        let r = RawConfig::load_with_env(Some(&path), &ov, Env::prefixed(&prefix));
        for (k, _) in env {
            std::env::remove_var(format!("{prefix}{k}"));
        }
        r
    }

    #[test]
    fn precedence_is_flag_env_file_default() {
        let toml = "[store]\nurl = \"file:///from/file\"\nupload_concurrency = 3\n[wal]\nconfirm = \"staging\"\n";
        let raw = load(toml, &[], Overrides::default()).unwrap();
        assert_eq!(raw.store.url, "file:///from/file");
        assert_eq!(raw.store.upload_concurrency, 3);
        assert_eq!(raw.wal.confirm, Confirm::Staging);
        assert_eq!(raw.postgres.slot, "pgagent", "default kept");

        let raw = load(
            toml,
            &[
                ("STORE_URL", "file:///from/env"),
                ("STORE_UPLOAD_CONCURRENCY", "5"),
            ],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(raw.store.url, "file:///from/env");
        assert_eq!(raw.store.upload_concurrency, 5);

        let ov = Overrides {
            store_url: Some("file:///from/flag".into()),
            ..Default::default()
        };
        let raw = load(toml, &[("STORE_URL", "file:///from/env")], ov).unwrap();
        assert_eq!(raw.store.url, "file:///from/flag");
    }

    #[test]
    fn durations_and_sizes_parse_from_human_text() {
        let raw = load(
            "[staging]\nquota = \"2GiB\"\n[wal]\npartial_interval = \"250ms\"\n",
            &[("FETCH_TIMEOUT", "90s")],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(raw.staging.quota, ByteSize::gib(2));
        assert_eq!(raw.wal.partial_interval, Duration::from_millis(250));
        assert_eq!(raw.fetch.timeout, Duration::from_secs(90));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = load("[store]\nulr = \"x\"\n", &[], Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("ulr"), "{err}");
    }

    #[test]
    fn validation_rejects_bad_values() {
        let mut raw = RawConfig::default();
        raw.postgres.slot = "Bad-Slot".into();
        assert!(raw.clone().validate().is_err());
        raw.postgres.slot = "ok_slot".into();
        raw.wal.compression_level = 40;
        let err = raw.clone().validate().unwrap_err();
        assert!(err.to_string().contains("compression_level"), "{err}");
        raw.wal.compression_level = 3;
        raw.metrics.listen = "nope".into();
        assert!(raw.clone().validate().is_err());
        raw.metrics.listen = String::new();
        assert!(raw.validate().unwrap().metrics_listen.is_none());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let mut raw = RawConfig::default();
        raw.store.secret_access_key = Some(Secret("hunter2".into()));
        assert!(!format!("{raw:?}").contains("hunter2"));
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let raw = load(
            include_str!("../../docker/pgagent.toml"),
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(raw.store.upload_concurrency, 4);
        raw.validate().unwrap();
    }

    /// Every key of the configuration, `section.key`, from the defaults.
    fn all_keys() -> Vec<String> {
        let v = serde_json::to_value(RawConfig::default()).unwrap();
        let mut keys = Vec::new();
        for (section, table) in v.as_object().unwrap() {
            for key in table.as_object().unwrap().keys() {
                keys.push(format!("{section}.{key}"));
            }
        }
        keys
    }

    /// The README's configuration reference is checked against the code both ways: every
    /// key is in the table with its environment variable and default, and every key the
    /// table names exists.
    #[test]
    fn the_readme_reference_matches_the_code() {
        let readme = include_str!("../../README.md");
        let rows: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| key | environment | default | meaning |"))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .collect();
        let keys = all_keys();
        assert!(keys.len() > 30, "{keys:?}");
        for key in &keys {
            let (section, name) = key.split_once('.').unwrap();
            let env = format!(
                "`PGAGENT_{}_{}`",
                section.to_uppercase(),
                name.to_uppercase()
            );
            let row = rows
                .iter()
                .find(|r| r.split(" | ").next().unwrap().contains(&format!("`{key}`")));
            let row = row.unwrap_or_else(|| panic!("README's configuration table lacks `{key}`"));
            assert!(row.contains(&env), "README row of {key} lacks {env}: {row}");
            assert!(row.split(" | ").count() >= 4, "{row}");
        }
        for row in &rows {
            let first = row.split(" | ").next().unwrap();
            for part in first.split('`').skip(1).step_by(2) {
                if part.contains('.') && !part.starts_with("--") {
                    assert!(
                        keys.contains(&part.to_string()),
                        "README names unknown key {part}"
                    );
                }
            }
        }
        for section in SECTIONS {
            assert!(
                keys.iter().any(|k| k.starts_with(&format!("{section}."))),
                "{section}"
            );
        }
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = RawConfig::load(
            Some(Path::new("/nonexistent/x.toml")),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }
}
