//! ZFS (DESIGN.md, "ZFS"): the staging dataset's properties, consistent snapshots of the
//! cluster's datasets, their retention, and the mount layout checks `preseed` and `doctor`
//! make.
//!
//! The `zfs` command is the only interface to ZFS ([`command`]); everything it prints is
//! parsed by pure functions that are tested without a pool ([`mounts`], [`props`],
//! [`retention`]).

pub mod command;
pub mod mounts;
pub mod props;
pub mod retention;
pub mod snapshots;
pub mod staging;
pub mod take;

pub use command::{Zfs, ZfsError};

/// User property that marks a snapshot as pgagent's: its value is the snapshot id.
/// Retention destroys only snapshots that carry it.
pub const ID_PROPERTY: &str = "pgagent:snapshot";

/// User property holding the snapshot record as one line of JSON (label, LSNs, data
/// directory), so a snapshot can be restored without the store.
pub const RECORD_PROPERTY: &str = "pgagent:record";

/// Prefix of the snapshot names pgagent makes: `<dataset>@pgagent-<id>`.
pub const SNAPSHOT_NAME_PREFIX: &str = "pgagent-";
