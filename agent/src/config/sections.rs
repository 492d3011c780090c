//! The sections of the configuration file, their keys and defaults (one struct per
//! `[section]`; the README's configuration table is checked against them).

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::lock::LockSetting;
use super::Secret;

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

/// `[store]`: the bucket, and the settings every `[[stores]]` entry inherits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `file:///path` or `s3://bucket/prefix?endpoint=…&region=…&path_style=true`: the
    /// one-store shorthand (see `config/stores.rs`). `None`: not given, so
    /// [`super::DEFAULT_STORE_URL`] unless `[[stores]]` names the stores.
    pub url: Option<String>,
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
    /// S3 Object Lock on every object written: `off` (the default), `governance` or
    /// `compliance` (see `config/lock.rs` and docs/security.md).
    pub lock: LockSetting,
    /// Days each object stays locked after it is written; default: the longest time
    /// retention can need an object, plus a margin ([`super::lock::default_lock_days`]).
    pub lock_days: Option<u32>,
    /// Read the stores as they were at this time (RFC 3339, e.g. `2026-12-06T10:00:00Z`):
    /// every object in the version current then, past later overwrites and delete
    /// markers. Needs a versioned S3 bucket; the stores then take no writes.
    pub as_of: Option<String>,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            url: None,
            upload_concurrency: 8,
            part_size: ByteSize::mib(32),
            access_key_id: None,
            secret_access_key: None,
            request_timeout: Duration::from_secs(60),
            lock: LockSetting::Off,
            lock_days: None,
            as_of: None,
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
    /// How long a clean stop waits for the last uploads; past it (the bucket is away) the
    /// rest stays in staging, unconfirmed, and the next start uploads it.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
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
            stop_timeout: Duration::from_secs(30),
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
    /// How long transient store errors are retried: by `pgagent fetch` before recovery is
    /// aborted, and by `pgagent restore` for each read before the restore fails.
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
    /// Whether backups from PostgreSQL 17 on read only the blocks changed since the
    /// previous backup (`BASE_BACKUP ( INCREMENTAL )`); see [`IncrementalMode`].
    pub incremental: IncrementalMode,
    /// The most incremental backups in a row on one full backup: the next one is full.
    /// A restore reads every backup of the chain. At least 1.
    pub max_chain: u32,
}

/// `backup.incremental`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncrementalMode {
    /// Incremental when the server and the store allow it (PostgreSQL 17+ with
    /// `summarize_wal = on`, a parent that qualifies, the chain under `max_chain`), full
    /// otherwise, with the reason logged and counted.
    Auto,
    /// Always full backups.
    Off,
}

impl Default for BackupSection {
    fn default() -> Self {
        BackupSection {
            schedule: "0 3 * * *".into(),
            chunk_size: ByteSize::mib(1),
            wal_timeout: Duration::from_secs(600),
            keep_backups: 7,
            keep_days: 0,
            incremental: IncrementalMode::Auto,
            max_chain: 6,
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

/// `[drill]`: `pgagent drill`, a restore into a scratch directory and a throwaway server
/// started on it, checked (see [`crate::drill`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrillSection {
    /// Scratch directory the drill restores into and removes afterwards; empty:
    /// `<staging.dir>/drill`. Never PGDATA or inside it.
    pub dir: PathBuf,
    /// Directory of the `postgres`, `psql` and `pg_amcheck` binaries of the backup's major
    /// version; empty: `/usr/lib/postgresql/<major>/bin`, else `pg_config --bindir` when it
    /// is that major.
    pub pg_bin_dir: PathBuf,
    /// Run `pg_amcheck --all` on the recovered server when the binary exists.
    pub amcheck: bool,
    /// SQL run on the recovered server; the drill fails unless its first value is a number
    /// above 0 or `true` (e.g. `select count(*) from orders where created_at > now() -
    /// interval '1 day'`); empty: none.
    pub check_sql: String,
    /// Database `check_sql` runs in.
    pub check_database: String,
    /// How long restore plus recovery may take before the drill fails.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Cron schedule (UTC) of drills run by `pgagent run`; empty: none.
    pub schedule: String,
    /// Role the drill connects to its throwaway server as; empty: the restored cluster's
    /// bootstrap superuser (the role with oid 10), read from the copy itself. A superuser
    /// lets `pg_amcheck` run.
    pub user: String,
}

impl Default for DrillSection {
    fn default() -> Self {
        DrillSection {
            dir: PathBuf::new(),
            pg_bin_dir: PathBuf::new(),
            amcheck: true,
            check_sql: String::new(),
            check_database: "postgres".into(),
            timeout: Duration::from_secs(3600),
            schedule: String::new(),
            user: String::new(),
        }
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

/// `[encryption]`: client-side encryption of the store (docs/security.md). Set one of the
/// two passphrase settings to use an encrypted store; neither: a plaintext store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionSection {
    /// File holding the passphrase (one trailing newline is ignored), e.g. a systemd
    /// credential; should be readable by pgagent's user only.
    pub passphrase_file: Option<PathBuf>,
    /// The passphrase itself, from the environment only (`PGAGENT_ENCRYPTION_PASSPHRASE`):
    /// refused in the configuration file, which is often readable by others.
    pub passphrase: Option<Secret>,
    /// Most memory one key derivation may take when unlocking the store (default 256 MiB,
    /// 64 MiB to 1 GiB): a key file in the bucket asking for more is skipped with a
    /// warning naming it.
    pub max_unlock_memory: ByteSize,
}

impl Default for EncryptionSection {
    fn default() -> Self {
        EncryptionSection {
            passphrase_file: None,
            passphrase: None,
            max_unlock_memory: ByteSize::kib(u64::from(
                pgagent_storage::keyring::keys::UnlockLimits::DEFAULT_MAX_M_COST_KIB,
            )),
        }
    }
}
