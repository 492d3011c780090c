//! The restore service: a data directory set up to recover to a target through
//! `restore_command = 'pgagent fetch %f %p'`, from the first tier that can serve (DESIGN.md,
//! "Base backups" and "ZFS"). Used by `pgagent restore`, `preseed` and `drill`; starting
//! PostgreSQL is left to the caller.
//!
//! ```text
//! tiers ──► snapshot   a local ZFS snapshot that reaches the target: clone or rollback
//!   │
//!   └─────► bucket     the newest complete backup that reaches the target
//!              ├─► materialize (places, delta)   files from verified chunks
//!              └─► rebuild      an incremental backup: chain (links checked), combine
//!                               (pg_combinebackup's plan), present (chunks there),
//!                               rebuild_file (blocks from chunks), pg_manifest
//! pgdata      the data directory: made ready, then recovery.signal and the settings
//!   └─► autoconf   one clean set of recovery settings in postgresql.auto.conf
//! request, target   what was asked: the directory, the backup, where recovery stops
//! ```
//!
//! The settings (PostgreSQL docs, "Recovery Target" 20.5.5 and "Archive Recovery" 20.5.4)
//! replace any the restored files carried, so no earlier target survives.

mod autoconf;
mod bucket;
pub mod chain;
pub mod combine;
mod delta;
mod materialize;
mod pgdata;
mod places;
mod present;
pub mod rebuild;
mod rebuild_file;
mod request;
mod snapshot;
mod target;
mod tiers;

pub use request::{RestoreFrom, RestoreRequest, RESTORING_FILE};
pub use target::RecoveryTarget;
pub use tiers::{restore, Served};
