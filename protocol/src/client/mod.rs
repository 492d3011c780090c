//! The I/O layer: a PostgreSQL client for physical replication and backups.
//!
//! It meets tokio and the network and builds on the wire layer
//! ([`crate::wire`]) for everything it parses or encodes; nothing in the wire
//! layer refers back to this one. From the bottom up:
//!
//! - `codec`: framing of backend messages for tokio (the one place that
//!   adapts `postgres-protocol` to a socket), the socket types, and the
//!   reading of ErrorResponse, NoticeResponse and DataRow bodies;
//! - [`conninfo`] (with `conninfo_uri` and [`pgpass`]): libpq connection
//!   settings. They live here and not in the wire layer because resolving
//!   them reads the environment (`PGHOST`…), the password file and the user
//!   database (`getpwuid`, for the default user and home directory);
//! - `tls`: the rustls configuration for `sslmode`, which reads certificate
//!   files;
//! - `connection`: an authenticated connection (socket, server parameters,
//!   whether commands can run), the value the client and the streams hand
//!   to each other;
//! - `startup`: socket, TLS negotiation, StartupMessage and authentication;
//! - [`stream`]: the WAL stream of `START_REPLICATION` (CopyBoth);
//! - [`basebackup`]: the `BASE_BACKUP` stream;
//! - [`ReplicationClient`] (`replication`): the replication commands; it
//!   starts the streams and is rebuilt from the connection they give back;
//! - [`sql`]: a regular SQL session for `pg_backup_start`/`pg_backup_stop`
//!   and slot queries on servers before 15.

pub mod basebackup;
mod codec;
mod connection;
pub mod conninfo;
mod conninfo_uri;
pub mod pgpass;
mod replication;
pub mod sql;
mod startup;
pub mod stream;
mod tls;

pub use crate::wire::command::{
    is_valid_slot_name, parse_byte_size, parse_server_version, SlotPosition, SystemIdentity,
};
pub use replication::ReplicationClient;
