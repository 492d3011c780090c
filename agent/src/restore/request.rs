//! What a restore is asked: the data directory, the backup, the target, the tiers that may
//! serve, and the file that marks a data directory as being written.

use std::path::PathBuf;

use super::target::RecoveryTarget;

/// What `pgagent restore` (and `preseed`, and a drill) asks of a restore.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The data directory to create or fill.
    pub pgdata: PathBuf,
    /// A backup id, or `None` for the newest that can reach the target.
    pub backup: Option<String>,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// `recovery_target_action`: `promote`, `pause` or `shutdown`.
    pub action: String,
    /// Empty a non-empty data directory first.
    pub force: bool,
    /// Keep files that already match the backup, rewrite the others, remove the rest.
    /// Refused (exit 2) for an incremental backup.
    pub delta: bool,
    /// Write the backup exactly as stored, from the bucket: an incremental backup as its
    /// `INCREMENTAL.*` files with its own `backup_label` and the server's
    /// `backup_manifest` (what pg_combinebackup takes), nothing rebuilt, no recovery
    /// settings.
    pub raw: bool,
    /// The `restore_command` to write.
    pub restore_command: String,
    /// Which tiers may serve.
    pub from: RestoreFrom,
    /// Owner (uid, gid) of the restored files when run as root; `None`: the owner of the
    /// data directory's parent.
    pub owner: Option<(u32, u32)>,
}

/// The tiers a restore may use (DESIGN.md, "ZFS"); also the values of `--from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestoreFrom {
    /// The newest usable local snapshot, else the bucket.
    Auto,
    /// A local snapshot only.
    Snapshot,
    /// The bucket only.
    Bucket,
}

/// A file a bucket restore keeps in the data directory while it writes, so an interrupted
/// restore is never taken for a cluster (preseed refuses a directory holding it).
pub const RESTORING_FILE: &str = "pgagent.restoring";
