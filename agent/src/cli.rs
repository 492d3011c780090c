//! The command line (DESIGN.md, "Command line"): parsed into plain data, then turned into the
//! requests the commands take ([`RestoreArgs::request`], …); no side effects.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands::list::ListWhat;
use crate::config::{ConfigError, Overrides};
use crate::drill::DrillRequest;
use crate::logging::LogFormat;
use crate::restore::{RecoveryTarget, RestoreFrom, RestoreRequest};

/// PostgreSQL backup sidecar: streams WAL to a bucket and brings the cluster back from it.
#[derive(Debug, Parser)]
#[command(name = "pgagent", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file [default: /etc/pgagent/pgagent.toml, else ./pgagent.toml]
    #[arg(long, global = true, env = "PGAGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PGAGENT_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Settings that win over the file and the environment.
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags for the most used settings.
#[derive(Debug, Args, Clone, Default)]
pub struct OverrideArgs {
    /// postgres.conninfo: libpq connection string
    #[arg(long, global = true, value_name = "CONNINFO")]
    pub conninfo: Option<String>,
    /// postgres.slot: physical replication slot
    #[arg(long, global = true, value_name = "NAME")]
    pub slot: Option<String>,
    /// staging.dir: local staging directory
    #[arg(long, global = true, value_name = "DIR")]
    pub staging_dir: Option<PathBuf>,
    /// store.url (file:///path or s3://bucket/prefix?endpoint=…), or the name of a
    /// `[[stores]]` entry; a reading command (restore, drill, fetch, list, verify, status,
    /// doctor) takes several names and reads those stores only
    #[arg(long = "store", global = true, value_name = "URL|NAME")]
    pub store: Vec<String>,
    /// store.as_of: read the stores as they were at this UTC time (RFC 3339), past later
    /// overwrites and delete markers (a versioned S3 bucket); the stores take no writes
    #[arg(long = "as-of", global = true, value_name = "TIME")]
    pub as_of: Option<String>,
}

impl OverrideArgs {
    /// `--store` as `store.url`: a value with `://` is a URL (the first one; see
    /// [`OverrideArgs::check_store`] for why there is at most one).
    pub fn store_url(&self) -> Option<&str> {
        self.store
            .iter()
            .map(String::as_str)
            .find(|v| v.contains("://"))
    }

    /// `--store` as names of `[[stores]]` entries: every value without `://`, in the order
    /// given.
    pub fn store_names(&self) -> Vec<&str> {
        self.store
            .iter()
            .map(String::as_str)
            .filter(|v| !v.contains("://"))
            .collect()
    }

    /// Errors: a URL given with any other `--store` value: a URL replaces the one store,
    /// so it cannot be combined with another URL or with names.
    pub fn check_store(&self) -> Result<(), ConfigError> {
        if self.store_url().is_some() && self.store.len() > 1 {
            return Err(ConfigError(format!(
                "--store {}: a URL overrides the one store and is given alone; several \
                 stores are named by their [[stores]] names",
                self.store.join(" --store ")
            )));
        }
        Ok(())
    }
}

impl From<OverrideArgs> for Overrides {
    fn from(a: OverrideArgs) -> Self {
        Overrides {
            store_url: a.store_url().map(str::to_string),
            conninfo: a.conninfo,
            slot: a.slot,
            staging_dir: a.staging_dir,
            as_of: a.as_of,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The sidecar daemon: stream WAL into staging and the store.
    Run,
    /// restore_command: deliver one WAL file from the store (`pgagent fetch %f %p`).
    ///
    /// Exit 0 when delivered, 1 only when the store confirms the file is absent, 255 when
    /// recovery must stop (store unreachable past fetch.timeout, corrupt object, wrong store).
    Fetch {
        /// File name PostgreSQL asks for (%f): a segment, .partial, .history or .backup file.
        file: String,
        /// Where to write it (%p), relative to the current directory (PGDATA).
        path: PathBuf,
    },
    /// Internal: the restore-mode fetch server that `pgagent fetch` starts when no daemon
    /// answers; it exits after fetch.idle_timeout without a request.
    #[command(name = "fetch-server", hide = true)]
    FetchServer,
    /// Take a base backup now (BASE_BACKUP into content-addressed chunks).
    ///
    /// Returns once the files are stored and the WAL up to the backup's stop LSN is in the
    /// store (waiting at most backup.wal_timeout, or as long as it takes with --wait).
    Backup {
        /// Wait for the WAL up to the stop LSN as long as it takes.
        #[arg(long)]
        wait: bool,
        /// Immediate checkpoint instead of a spread one.
        #[arg(long)]
        fast: bool,
    },
    /// Take a consistent ZFS snapshot of zfs.datasets now (pg_backup_start, zfs snapshot -r,
    /// pg_backup_stop), record it, then apply snapshot retention.
    Snapshot,
    /// Restore a local snapshot or a base backup into a data directory, set up to recover
    /// to a target.
    Restore(RestoreArgs),
    /// Prove the store restores: restore into a scratch directory, start a throwaway
    /// PostgreSQL on it (unix socket only), let it recover through `pgagent fetch` and
    /// promote, check it, record the result in the store, and remove it.
    ///
    /// Exit 0 only when every check passed.
    Drill(DrillArgs),
    /// Before PostgreSQL starts: leave a valid cluster alone, restore into an empty data
    /// directory, refuse (exit 3) anything else.
    ///
    /// For systemd ExecStartPre or a Kubernetes init container.
    Preseed {
        /// The data directory PostgreSQL will start on.
        #[arg(long, value_name = "DIR")]
        pgdata: PathBuf,
        /// The user PostgreSQL runs as (name or uid) [default: this user, or when run as
        /// root the owner of PGDATA's parent].
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// First deployment only: when the store holds no cluster yet, leave the empty
        /// PGDATA for initdb instead of refusing.
        #[arg(long)]
        allow_new: bool,
    },
    /// Preflight: configuration, PostgreSQL connection and rights, slot, wal_level, bucket
    /// rights, clock skew, staging dataset, data directory layout. Exit 1 on any failure.
    Doctor {
        /// The data directory to check [default: asked from the server].
        #[arg(long, value_name = "DIR")]
        pgdata: Option<PathBuf>,
    },
    /// Check that every chunk of every backup exists and is intact, that the stored files
    /// are those PostgreSQL's backup_manifest lists (sizes, CRC-32C), that each incremental
    /// backup's chain is linked, and that the WAL from each backup's start to the newest
    /// segment has no gap; exit 1 on any problem.
    Verify {
        /// Check this backup and the backups its chain reads only.
        #[arg(long, value_name = "ID")]
        backup: Option<String>,
        /// Also download and check every WAL object.
        #[arg(long)]
        wal: bool,
    },
    /// Apply retention (backup.keep_backups, backup.keep_days): delete older backups (never
    /// one a kept incremental backup's chain reads), the chunks no kept backup needs and the
    /// WAL before the oldest kept backup.
    Prune {
        /// Print what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List what the store holds.
    List {
        /// What to list.
        #[arg(value_enum, default_value = "wal")]
        what: ListWhat,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show lags, positions and the last error of the running daemon.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Access keys (passphrases) of an encrypted store: add, list, remove.
    ///
    /// The store's passphrase comes from encryption.passphrase_file or
    /// PGAGENT_ENCRYPTION_PASSPHRASE, as for every command.
    Key {
        /// What to do.
        #[command(subcommand)]
        action: KeyAction,
    },
    /// The stores of a cluster kept in several stores (`[[stores]]`).
    Store {
        /// What to do.
        #[command(subcommand)]
        action: StoreAction,
    },
    /// CloudNativePG plugin (CNPG-I over gRPC): the operator side, the instance sidecar,
    /// the recovery job's sidecar; see docs/cnpg.md.
    Cnpg {
        /// Which part of the plugin to run.
        #[command(subcommand)]
        action: CnpgAction,
    },
}

/// `pgagent cnpg` parts.
#[derive(Debug, Subcommand)]
pub enum CnpgAction {
    /// The operator-side plugin: Identity, cluster validation and the lifecycle hooks that
    /// inject the sidecar, over TCP with mutual TLS 1.3 (certificates re-read on change).
    Operator {
        /// Address to listen on.
        #[arg(long, env = "PGAGENT_CNPG_LISTEN", default_value = "0.0.0.0:9090")]
        listen: String,
        /// The server certificate chain (PEM).
        #[arg(long, env = "PGAGENT_CNPG_SERVER_CERT", value_name = "FILE")]
        server_cert: PathBuf,
        /// The server certificate's private key (PEM).
        #[arg(long, env = "PGAGENT_CNPG_SERVER_KEY", value_name = "FILE")]
        server_key: PathBuf,
        /// The CA (or self-signed certificate) CNPG's client certificate must chain to.
        #[arg(long, env = "PGAGENT_CNPG_CLIENT_CA", value_name = "FILE")]
        client_ca: PathBuf,
        /// The image of the sidecar injected into instance pods and recovery jobs.
        #[arg(long, env = "PGAGENT_CNPG_SIDECAR_IMAGE")]
        sidecar_image: String,
    },
    /// The sidecar of an instance pod: WAL archive and restore, backups, metrics; streams
    /// WAL while the pod is the primary.
    Instance(SidecarArgs),
    /// The sidecar of the recovery job: restores PGDATA from the store and serves WAL to
    /// recovery.
    Restore(SidecarArgs),
    /// Exit 0 when the sidecar's socket answers ready (the sidecar's startup probe).
    Healthcheck {
        /// CNPG's plugins directory.
        #[arg(long, env = "PGAGENT_CNPG_PLUGINS_DIR", default_value = "/plugins")]
        plugins_dir: PathBuf,
    },
}

/// Where a sidecar runs.
#[derive(Debug, Clone, clap::Args)]
pub struct SidecarArgs {
    /// CNPG's plugins directory; the socket is `<dir>/pgagent.io`.
    #[arg(long, env = "PGAGENT_CNPG_PLUGINS_DIR", default_value = "/plugins")]
    pub plugins_dir: PathBuf,
    /// The pod's name, as the Cluster's status names the primary.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,
    /// The PostgreSQL data directory (paths CNPG sends are relative to it).
    #[arg(
        long,
        env = "PGDATA",
        default_value = "/var/lib/postgresql/data/pgdata"
    )]
    pub pgdata: PathBuf,
}

impl Command {
    /// The command as typed after `pgagent`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Run => "run",
            Command::Fetch { .. } => "fetch",
            Command::FetchServer => "fetch-server",
            Command::Backup { .. } => "backup",
            Command::Snapshot => "snapshot",
            Command::Restore(_) => "restore",
            Command::Drill(_) => "drill",
            Command::Preseed { .. } => "preseed",
            Command::Doctor { .. } => "doctor",
            Command::Verify { .. } => "verify",
            Command::Prune { .. } => "prune",
            Command::List { .. } => "list",
            Command::Status { .. } => "status",
            Command::Key { action } => match action {
                KeyAction::Add { .. } => "key add",
                KeyAction::List { .. } => "key list",
                KeyAction::Remove { .. } => "key remove",
            },
            Command::Store { action } => match action {
                StoreAction::Add { .. } => "store add",
            },
            Command::Cnpg { action } => match action {
                CnpgAction::Operator { .. } => "cnpg operator",
                CnpgAction::Instance(_) => "cnpg instance",
                CnpgAction::Restore(_) => "cnpg restore",
                CnpgAction::Healthcheck { .. } => "cnpg healthcheck",
            },
        }
    }
}

/// `pgagent store` actions.
#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Give a configured store that is new (empty) the cluster the other stores hold: its
    /// cluster.json and, for an encrypted cluster, its key files (the one master key of the
    /// cluster, wrapped under the same passphrases), copied as they are. `pgagent run` then
    /// fills it with the WAL it lacks. Exit 3 for a store that holds another cluster, or
    /// objects without a cluster.json.
    Add {
        /// The store's name, as `[[stores]]` names it.
        name: String,
    },
}

/// `pgagent key` actions.
#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Add an access key for a new passphrase (unlocking with the configured one).
    ///
    /// The new passphrase comes from --new-passphrase-file, else from the environment
    /// variable PGAGENT_NEW_PASSPHRASE; never from a command-line value, which other users
    /// can see in the process list.
    Add {
        /// File holding the new passphrase (one trailing newline is ignored).
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
    },
    /// List the access keys: id, when and where each was added; `*` marks the one the
    /// configured passphrase opens.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove an access key. Refused (exit 3) for the key the configured passphrase opens,
    /// and so for the last key: to rotate, add the new key, configure its passphrase, then
    /// remove the old one.
    Remove {
        /// The key's id, as `pgagent key list` shows it.
        id: String,
    },
}

/// `pgagent restore` options (DESIGN.md, "Command line").
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Data directory to restore into: missing or empty (see --force).
    #[arg(long, value_name = "DIR")]
    pub pgdata: PathBuf,
    /// Backup id, or "latest": the newest complete backup that can reach the target.
    #[arg(long, value_name = "ID", default_value = "latest")]
    pub backup: String,
    /// Where recovery stops.
    #[command(flatten)]
    pub target: TargetArgs,
    /// What the server does at the target.
    #[arg(long, value_name = "ACTION", default_value = "promote", value_parser = ["promote", "pause", "shutdown"])]
    pub target_action: String,
    /// Empty a non-empty data directory first (never one with a running server).
    #[arg(long, conflicts_with = "delta")]
    pub force: bool,
    /// Restore over an existing data directory: keep files whose chunks match, rewrite the
    /// others, remove what the backup does not hold. Not for an incremental backup yet
    /// (refused, exit 2).
    #[arg(long)]
    pub delta: bool,
    /// Write one backup exactly as stored, from the bucket, and set up no recovery: an
    /// incremental backup as its INCREMENTAL.* files with its own backup_label and the
    /// server's backup_manifest, as pg_combinebackup takes it. Needs --backup ID (not
    /// "latest"): restore each backup of a chain into its own directory.
    #[arg(long, conflicts_with_all = ["delta", "from", "target_action", "recovery_target"])]
    pub raw: bool,
    /// Which tier serves: a local ZFS snapshot, the bucket, or the first that can (auto).
    #[arg(long, value_enum, default_value = "auto")]
    pub from: RestoreFrom,
}

/// Where a recovery stops: at most one of these; none means the end of the WAL in the store.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Recover to this time, with a zone: 2026-11-30 05:37:48.984061+00 (as `select now()`
    /// prints it), 2026-11-30T05:37:48Z, 2026-11-30 11:07:48+05:30.
    #[arg(long, value_name = "TS", group = "recovery_target")]
    pub target_time: Option<String>,
    /// Recover up to this transaction id.
    #[arg(long, value_name = "XID", group = "recovery_target")]
    pub target_xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME", group = "recovery_target")]
    pub target_name: Option<String>,
    /// Recover to this LSN.
    #[arg(long, value_name = "LSN", group = "recovery_target")]
    pub target_lsn: Option<String>,
    /// Recover to the end of the WAL in the store ("latest", the default).
    #[arg(long, value_name = "latest", group = "recovery_target", value_parser = ["latest"])]
    pub target: Option<String>,
}

/// `pgagent drill`.
#[derive(Debug, Clone, Args)]
pub struct DrillArgs {
    /// Backup id, or "latest": the newest complete backup that can reach the target.
    #[arg(long, value_name = "ID", default_value = "latest")]
    pub backup: String,
    /// Which tier serves: a clone of a local ZFS snapshot, the bucket, or the first that can
    /// (auto).
    #[arg(long, value_enum, default_value = "auto")]
    pub from: RestoreFrom,
    /// Where recovery stops [default: the end of the WAL in the store].
    #[command(flatten)]
    pub target: TargetArgs,
    /// Leave the scratch directory (and the stopped server's files) in place.
    #[arg(long)]
    pub keep: bool,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
}

impl RestoreArgs {
    /// The restore these flags ask for; `fetch_prefix` starts the `restore_command`.
    ///
    /// Errors: a recovery target that does not parse ([`ConfigError`], exit 2).
    pub fn request(self, fetch_prefix: &str) -> anyhow::Result<RestoreRequest> {
        if self.raw && self.backup == "latest" {
            return Err(ConfigError(
                "--raw writes one backup as it is stored: name it with --backup ID".into(),
            )
            .into());
        }
        Ok(RestoreRequest {
            target: self.target.recovery_target()?,
            pgdata: self.pgdata,
            backup: Some(self.backup),
            action: self.target_action,
            force: self.force,
            delta: self.delta,
            raw: self.raw,
            restore_command: format!("{fetch_prefix} fetch %f %p"),
            from: self.from,
            owner: None,
        })
    }
}

impl DrillArgs {
    /// The drill these flags ask for; `fetch_prefix` starts the `restore_command`.
    ///
    /// Errors: a recovery target that does not parse ([`ConfigError`], exit 2).
    pub fn request(&self, fetch_prefix: &str) -> anyhow::Result<DrillRequest> {
        Ok(DrillRequest {
            backup: Some(self.backup.clone()),
            from: self.from,
            target: self.target.recovery_target()?,
            keep: self.keep,
            restore_command: format!("{fetch_prefix} fetch %f %p"),
        })
    }
}

impl TargetArgs {
    /// The recovery target the flags name; the end of the WAL in the store when none does.
    ///
    /// Errors: a time or LSN that does not parse ([`ConfigError`], exit 2).
    pub fn recovery_target(&self) -> anyhow::Result<RecoveryTarget> {
        Ok(if let Some(time) = &self.target_time {
            RecoveryTarget::time(time).map_err(|e| ConfigError(e.to_string()))?
        } else if let Some(x) = &self.target_xid {
            RecoveryTarget::Xid(x.clone())
        } else if let Some(n) = &self.target_name {
            RecoveryTarget::Name(n.clone())
        } else if let Some(l) = &self.target_lsn {
            RecoveryTarget::Lsn(
                l.parse()
                    .map_err(|e| ConfigError(format!("--target-lsn {l:?}: {e}")))?,
            )
        } else {
            RecoveryTarget::Latest
        })
    }
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
