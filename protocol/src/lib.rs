//! The PostgreSQL side of pgagent.
//!
//! Pure, I/O-free modules decode and encode PostgreSQL's formats:
//! [`lsn`], [`timeline`], [`segment`] (segment math and file names),
//! [`history`] (timeline history files), [`page`] (WAL page headers) and
//! [`message`] (streaming replication messages). [`conninfo`] parses libpq
//! connection strings. [`client`] is a physical replication client built on
//! `postgres-protocol`: startup, authentication, TLS, replication commands
//! and the CopyBoth WAL stream; [`basebackup`] receives base backups.

pub mod basebackup;
pub mod client;
mod codec;
pub mod command;
mod connection;
pub mod conninfo;
mod conninfo_uri;
pub mod error;
pub mod history;
pub mod lsn;
pub mod message;
pub mod page;
pub mod pgpass;
pub mod segment;
pub mod sql;
mod startup;
pub mod stream;
pub mod timeline;
mod tls;

pub use basebackup::{BaseBackupEvent, BaseBackupOptions, BaseBackupStream, Tablespace};
pub use client::{ReplicationClient, SlotPosition, SystemIdentity};
pub use conninfo::{ConnConfig, Host, SslMode};
pub use error::{DbError, Error};
pub use history::{HistoryEntry, HistoryError, TimelineHistory};
pub use lsn::Lsn;
pub use message::{
    pg_epoch_micros, system_time_from_pg_micros, PrimaryKeepalive, ReplicationMessage,
    StandbyStatusUpdate, XLogData,
};
pub use page::{pg_major_for_magic, XLogLongPageHeader};
pub use segment::{history_file_name, segment_file_name, SegNo, WalFileName, WalSegmentSize};
pub use sql::SqlSession;
pub use stream::{ReplicationStream, StreamEvent};
pub use timeline::TimelineId;
