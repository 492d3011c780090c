//! The PostgreSQL side of pgagent, in two layers.
//!
//! - [`wire`] parses and encodes PostgreSQL's formats without I/O: LSNs,
//!   timelines, WAL segment numbers and file names, timeline history files,
//!   WAL page headers, the streaming replication messages, the arguments and
//!   results of replication commands, and the `BASE_BACKUP` answer as a
//!   state machine.
//! - [`client`] does the I/O: the codec that adapts `postgres-protocol` to
//!   tokio, connection settings (libpq conninfo, environment, password file),
//!   TLS, startup and authentication, the replication client, the WAL stream,
//!   the base backup stream and a small SQL session.
//!
//! Dependencies point from `client` down to `wire` only; nothing in `wire`
//! refers to `client`. Both use [`error`], the crate's one error type, which
//! depends on neither.
//!
//! The modules of both layers are also reachable at the crate root under
//! their earlier paths (`pgagent_protocol::lsn`, `pgagent_protocol::basebackup`,
//! `pgagent_protocol::client::is_valid_slot_name`…), and the types dependents
//! use are re-exported below.

pub mod client;
pub mod error;
pub mod wire;

pub use client::{basebackup, conninfo, pgpass, sql, stream};
pub use wire::{backup_label, history, incremental, lsn, message, page, segment, timeline};

pub use client::basebackup::{BaseBackupEvent, BaseBackupOptions, BaseBackupStream, Tablespace};
pub use client::conninfo::{ConnConfig, Host, SslMode};
pub use client::sql::SqlSession;
pub use client::stream::{ReplicationStream, StreamEvent};
pub use client::{ReplicationClient, SlotPosition, SystemIdentity};
pub use error::{DbError, Error};
pub use wire::history::{HistoryEntry, HistoryError, TimelineHistory};
pub use wire::lsn::Lsn;
pub use wire::message::{
    pg_epoch_micros, system_time_from_pg_micros, PrimaryKeepalive, ReplicationMessage,
    StandbyStatusUpdate, XLogData,
};
pub use wire::page::{pg_major_for_magic, XLogLongPageHeader};
pub use wire::segment::{history_file_name, segment_file_name, SegNo, WalFileName, WalSegmentSize};
pub use wire::timeline::TimelineId;
