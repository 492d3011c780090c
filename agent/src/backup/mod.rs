//! Base backups (DESIGN.md, "Base backups"): `BASE_BACKUP` over the replication connection,
//! its tar archives cut into content-addressed chunks, and a manifest per backup.

pub mod archive;
pub mod chunks;
pub mod guard;
pub mod take;
