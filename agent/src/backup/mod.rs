//! Base backups (DESIGN.md, "Base backups"): `BASE_BACKUP` over the replication connection,
//! its tar archives cut into content-addressed chunks, and a manifest per backup. With
//! several stores the server is read once and every store gets the chunks it lacks and a
//! manifest of its own ([`targets`]).

pub mod archive;
pub mod chunks;
pub mod guard;
pub mod lock;
pub mod parent;
pub mod start;
mod stored;
pub mod take;
pub mod targets;
pub mod wal;
