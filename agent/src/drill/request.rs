//! What a drill is asked: the backup, the tiers that may serve, the target, whether to keep
//! the scratch directory, and the `restore_command` of the restored server.

use crate::restore::{RecoveryTarget, RestoreFrom};

/// What `pgagent drill` was asked.
#[derive(Debug, Clone)]
pub struct DrillRequest {
    /// A backup id, or `None`/`latest` for the newest that can reach the target.
    pub backup: Option<String>,
    /// Which tiers may serve.
    pub from: RestoreFrom,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// Leave the scratch directory in place.
    pub keep: bool,
    /// The `restore_command` the restored server uses (`<pgagent> [--config …] fetch %f %p`).
    pub restore_command: String,
}
