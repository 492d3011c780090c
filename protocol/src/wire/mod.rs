//! The wire layer: PostgreSQL's formats, parsed and encoded without I/O.
//!
//! Every function here works on values and buffers it is given, never on a
//! socket, a file or the environment, so it can be tested on its own. Like
//! `postgres-protocol` beside `tokio-postgres`, it does not know the client
//! (`crate::client`) that uses it. From the bottom up:
//!
//! - [`lsn`], [`timeline`]: WAL positions and timeline IDs;
//! - [`segment`]: segment sizes, numbers and file names, and segment
//!   arithmetic on LSNs;
//! - [`history`]: timeline history files;
//! - [`page`]: WAL page headers;
//! - [`message`]: the streaming replication messages inside CopyData
//!   (XLogData, keepalive, standby status update);
//! - [`command`]: the arguments and result rows of replication commands;
//! - [`basebackup`]: the `BASE_BACKUP` command text and its answer as a state
//!   machine;
//! - [`incremental`]: the `INCREMENTAL.<relfile>` files of an incremental
//!   base backup;
//! - [`backup_label`]: the lines of a `backup_label` that link an
//!   incremental backup to the one it was taken against.

pub mod backup_label;
pub mod basebackup;
pub mod command;
pub mod history;
pub mod incremental;
pub mod lsn;
pub mod message;
pub mod page;
pub mod segment;
pub mod timeline;
