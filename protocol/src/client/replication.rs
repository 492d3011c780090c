//! A physical replication client.
//!
//! Commands of the replication protocol (PostgreSQL documentation,
//! "Streaming Replication Protocol"; `src/backend/replication/walsender.c`
//! and `repl_gram.y`) sent over the simple query protocol on a connection
//! opened with `replication=true`.

use bytes::Bytes;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::client::basebackup::{BaseBackupOptions, BaseBackupStream};
use crate::client::codec::{data_row, log_notice, server_error, BackendMessage};
use crate::client::connection::Connection;
use crate::client::conninfo::ConnConfig;
use crate::client::startup;
use crate::client::stream::ReplicationStream;
use crate::error::{Error, DUPLICATE_OBJECT};
use crate::wire::command::{
    self, check_slot_name, parse_byte_size, parse_server_version, SlotPosition, SystemIdentity,
};
use crate::wire::lsn::Lsn;
use crate::wire::segment::WalSegmentSize;
use crate::wire::timeline::TimelineId;

/// A connection to a walsender, idle between commands.
///
/// The streams it starts own the connection while they run and give it back
/// with `into_client` (defined at the end of this module, so that the stream
/// modules need not know this type).
pub struct ReplicationClient {
    conn: Connection,
}

impl ReplicationClient {
    /// Opens a physical replication connection (`replication=true`): TCP or
    /// unix socket, TLS per `sslmode`, authentication by trust, password,
    /// md5 or SCRAM-SHA-256.
    ///
    /// Errors: [`Error::is_connection`] when the server cannot be reached,
    /// [`Error::is_tls`], [`Error::is_auth`] (wrong password `28P01`, no
    /// pg_hba.conf entry `28000`), or the server's error (e.g. `42501` when
    /// the role lacks REPLICATION).
    pub async fn connect(cfg: &ConnConfig) -> Result<ReplicationClient, Error> {
        let conn = startup::establish(cfg, startup::SessionKind::Physical).await?;
        Ok(ReplicationClient { conn })
    }

    /// A ParameterStatus value the server reported (e.g. `server_version`).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.conn.parameter(name)
    }

    /// Runs `sql` with the simple query protocol and returns the rows of the
    /// last result set as text (`None` for NULL). On a replication
    /// connection only replication commands and `SHOW` are accepted.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        self.conn.simple_query(sql).await
    }

    /// `IDENTIFY_SYSTEM`: system identifier, current timeline and WAL position.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, Error> {
        let rows = self.conn.query_raw("IDENTIFY_SYSTEM").await?;
        command::identify_system(&rows)
    }

    /// `SHOW name`: the current value of a setting, as text.
    pub async fn show(&mut self, name: &str) -> Result<String, Error> {
        command::check_setting_name(name)?;
        let rows = self.conn.query_raw(&format!("SHOW {name}")).await?;
        command::show_value(&rows, name)
    }

    /// The server's WAL segment size (`SHOW wal_segment_size`, e.g. `16MB`).
    pub async fn wal_segment_size(&mut self) -> Result<WalSegmentSize, Error> {
        let shown = self.show("wal_segment_size").await?;
        let bytes = parse_byte_size(&shown)
            .ok_or_else(|| Error::protocol(format!("cannot parse wal_segment_size {shown:?}")))?;
        WalSegmentSize::new(bytes).map_err(|e| Error::protocol(e.to_string()))
    }

    /// The server version in `server_version_num` form (e.g. 150018), from
    /// the `server_version` reported at startup, else `SHOW server_version_num`.
    pub async fn server_version_num(&mut self) -> Result<u32, Error> {
        if let Some(v) = self
            .parameter("server_version")
            .and_then(parse_server_version)
        {
            return Ok(v);
        }
        let shown = self.show("server_version_num").await?;
        shown
            .parse()
            .map_err(|_| Error::protocol(format!("invalid server_version_num {shown:?}")))
    }

    /// `CREATE_REPLICATION_SLOT name PHYSICAL RESERVE_WAL`. Returns `true` if
    /// the slot was created, `false` if it already existed (SQLSTATE `42710`).
    /// The slot name must be 1 to 63 of `[a-z0-9_]`.
    pub async fn create_physical_slot(&mut self, name: &str) -> Result<bool, Error> {
        check_slot_name(name)?;
        match self
            .conn
            .query_raw(&format!(
                "CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL"
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(DUPLICATE_OBJECT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `READ_REPLICATION_SLOT name` (PostgreSQL 15+): `None` if no such slot.
    pub async fn read_replication_slot(
        &mut self,
        name: &str,
    ) -> Result<Option<SlotPosition>, Error> {
        check_slot_name(name)?;
        let rows = self
            .conn
            .query_raw(&format!("READ_REPLICATION_SLOT {name}"))
            .await?;
        command::replication_slot(&rows)
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and raw content.
    /// Timeline 1 has no history file (the server reports an error).
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Bytes), Error> {
        let rows = self
            .conn
            .query_raw(&format!("TIMELINE_HISTORY {}", tli.0))
            .await?;
        command::timeline_history(&rows)
    }

    /// `START_REPLICATION [SLOT slot] PHYSICAL start TIMELINE tli`: enters
    /// CopyBoth and returns the WAL stream. `start` should be the start of a
    /// segment or a position already received. Errors from the server (e.g.
    /// a missing slot, `42704`, or WAL already removed) come back here.
    pub async fn start_replication(
        mut self,
        slot: Option<&str>,
        start: Lsn,
        tli: TimelineId,
    ) -> Result<ReplicationStream, Error> {
        if !self.conn.is_usable() {
            return Err(Error::protocol("connection is still streaming"));
        }
        let slot_clause = match slot {
            Some(s) => {
                check_slot_name(s)?;
                format!("SLOT {s} ")
            }
            None => String::new(),
        };
        let sql = format!(
            "START_REPLICATION {slot_clause}PHYSICAL {start} TIMELINE {}",
            tli.0
        );
        self.conn.queue(|buf| frontend::query(&sql, buf))?;
        self.conn.flush().await?;
        let mut failure = None;
        let mut next_timeline = None;
        loop {
            match self.conn.recv().await? {
                BackendMessage::CopyBothResponse => return Ok(ReplicationStream::new(self.conn)),
                BackendMessage::Pg(Message::ErrorResponse(body)) => {
                    failure = Some(server_error(&body))
                }
                BackendMessage::Pg(Message::NoticeResponse(body)) => log_notice(&body),
                BackendMessage::Pg(Message::ParameterStatus(body)) => {
                    self.conn.note_parameter(&body)
                }
                // Starting exactly at the end of a historic timeline streams
                // nothing: walsender answers at once with the next timeline.
                BackendMessage::Pg(Message::DataRow(body)) => {
                    next_timeline = Some(command::parse_next_timeline(&data_row(&body)?)?)
                }
                BackendMessage::Pg(Message::RowDescription(_))
                | BackendMessage::Pg(Message::CommandComplete(_)) => {}
                BackendMessage::Pg(Message::ReadyForQuery(_)) => {
                    return match (failure, next_timeline) {
                        (Some(e), _) => Err(e),
                        (None, Some(next)) => Ok(ReplicationStream::ended(self.conn, next)),
                        (None, None) => {
                            Err(Error::protocol("START_REPLICATION ended without streaming"))
                        }
                    }
                }
                _ => {
                    return Err(Error::protocol(
                        "unexpected message in reply to START_REPLICATION",
                    ))
                }
            }
        }
    }

    /// `BASE_BACKUP`: starts a base backup and returns once the server has
    /// sent the start position and the tablespace list; the archives and the
    /// manifest follow as events of the returned stream (see
    /// [`crate::wire::basebackup`] for both wire layouts). The command is written in
    /// the syntax of the server's version: options in parentheses and one
    /// COPY stream from PostgreSQL 15, keywords and one COPY per tablespace
    /// on 13 and 14.
    ///
    /// Errors: [`Error::is_config`] for invalid options or a server older
    /// than 13; the server's error (e.g. `42601` for an option the server
    /// does not know); connection errors. The connection is lost with any
    /// error here.
    pub async fn base_backup(
        mut self,
        opts: &BaseBackupOptions,
    ) -> Result<BaseBackupStream, Error> {
        if !self.conn.is_usable() {
            return Err(Error::protocol("connection is still streaming"));
        }
        let version = self.server_version_num().await?;
        let command = opts.command(version)?;
        self.conn.queue(|buf| frontend::query(&command.sql, buf))?;
        self.conn.flush().await?;
        BaseBackupStream::begin(self.conn, &command).await
    }

    /// `UPLOAD_MANIFEST` (PostgreSQL 17+): sends the parent backup's
    /// `backup_manifest`, exactly as the server wrote it, for the next
    /// `BASE_BACKUP ( INCREMENTAL )` on this connection. The server checks
    /// the manifest's own checksum and keeps it in the walsender's memory
    /// until the connection ends (`UploadManifest` in `walsender.c`).
    ///
    /// Errors: the server's (`42601` before 17, which has no such command;
    /// `XX000`-class errors for a manifest that does not parse or whose
    /// checksum is wrong); connection errors. The connection stays usable
    /// after a server error.
    pub async fn upload_manifest(&mut self, manifest: &[u8]) -> Result<(), Error> {
        self.conn.copy_in("UPLOAD_MANIFEST", manifest).await
    }

    /// Sends Terminate and closes the connection.
    pub async fn close(self) -> Result<(), Error> {
        self.conn.close().await
    }
}

// The streams hand their connection back as a `Connection`; turning it into
// a client is done here, so that the client depends on the streams and not
// the other way round.

impl ReplicationStream {
    /// Returns to command mode. Meant for after
    /// [`StreamEvent::EndOfTimeline`](crate::client::stream::StreamEvent::EndOfTimeline);
    /// at any other point the returned client refuses commands with a
    /// protocol error (the connection is still in COPY mode or broken).
    pub fn into_client(self) -> ReplicationClient {
        ReplicationClient {
            conn: self.into_connection(),
        }
    }
}

impl BaseBackupStream {
    /// Returns to command mode. The client accepts commands after the end of
    /// the backup or after a non-fatal server error; at any other point it
    /// refuses them with a protocol error (the connection is still in COPY
    /// mode or broken).
    pub fn into_client(self) -> ReplicationClient {
        ReplicationClient {
            conn: self.into_connection(),
        }
    }
}
