//! A physical replication client.
//!
//! Commands of the replication protocol (PostgreSQL documentation,
//! "Streaming Replication Protocol"; `src/backend/replication/walsender.c`
//! and `repl_gram.y`) sent over the simple query protocol on a connection
//! opened with `replication=true`.

use bytes::Bytes;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::basebackup::{BaseBackupOptions, BaseBackupStream};
use crate::codec::{data_row, log_notice, server_error, BackendMessage, Conn};
use crate::conninfo::ConnConfig;
use crate::error::{Error, DUPLICATE_OBJECT};
use crate::lsn::Lsn;
use crate::segment::WalSegmentSize;
use crate::startup;
use crate::stream::{parse_next_timeline, ReplicationStream};
use crate::timeline::TimelineId;

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier (as in `pg_control` and WAL page headers).
    pub system_id: u64,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// Current WAL flush position (primary) or replay position (standby).
    pub xlogpos: Lsn,
    /// Database connected to; `None` for a physical replication connection.
    pub dbname: Option<String>,
}

/// The answer to `READ_REPLICATION_SLOT` for an existing physical slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotPosition {
    /// Oldest LSN the slot keeps; `None` if the slot reserves no WAL yet.
    pub restart_lsn: Option<Lsn>,
    /// Timeline of `restart_lsn`, when known.
    pub restart_tli: Option<TimelineId>,
}

/// A connection to a walsender, idle between commands.
pub struct ReplicationClient {
    conn: Conn,
    parameters: Vec<(String, String)>,
    /// Set when the connection was handed back in a state where commands
    /// cannot run (see [`ReplicationStream::into_client`]).
    broken: bool,
}

/// Rows of a result set in text format; `None` is SQL NULL.
type RawRows = Vec<Vec<Option<Bytes>>>;

fn text(value: &Option<Bytes>, what: &str) -> Result<String, Error> {
    let v = value
        .as_ref()
        .ok_or_else(|| Error::protocol(format!("{what} is NULL")))?;
    String::from_utf8(v.to_vec()).map_err(|_| Error::protocol(format!("{what} is not UTF-8")))
}

fn parse<T: std::str::FromStr>(value: &Option<Bytes>, what: &str) -> Result<T, Error> {
    let t = text(value, what)?;
    t.parse()
        .map_err(|_| Error::protocol(format!("invalid {what}: {t:?}")))
}

/// Whether `name` is a slot name `ReplicationSlotValidateName`
/// (`src/backend/replication/slot.c`) accepts: 1 to 63 of `[a-z0-9_]`.
pub fn is_valid_slot_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

pub(crate) fn check_slot_name(name: &str) -> Result<(), Error> {
    if is_valid_slot_name(name) {
        Ok(())
    } else {
        Err(Error::config(format!(
            "invalid replication slot name {name:?}: use 1 to 63 lower case letters, digits and underscores"
        )))
    }
}

/// Parses a byte quantity as `SHOW` prints it for GUC_UNIT_BYTE settings
/// (`16MB`, `1GB`, `512kB`, `8192B`, or a bare number of bytes).
pub fn parse_byte_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let number: u64 = s[..digits].parse().ok()?;
    let factor: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Turns a `server_version` string (`15.18 (Debian 15.18-1.pgdg120+1)`,
/// `9.6.24`, `18beta1`) into `server_version_num` form (150018, 90624, 180000).
pub fn parse_server_version(s: &str) -> Option<u32> {
    let head: &str = s.split_whitespace().next()?;
    let mut parts = head.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let second = parts.next().flatten().unwrap_or(0);
    if major >= 10 {
        Some(major * 10_000 + second)
    } else {
        let third = parts.next().flatten().unwrap_or(0);
        Some(major * 10_000 + second * 100 + third)
    }
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
        let established = startup::establish(cfg, startup::SessionKind::Physical).await?;
        Ok(ReplicationClient {
            conn: established.conn,
            parameters: established.parameters,
            broken: false,
        })
    }

    pub(crate) fn from_parts(conn: Conn, parameters: Vec<(String, String)>, broken: bool) -> Self {
        ReplicationClient {
            conn,
            parameters,
            broken,
        }
    }

    /// A ParameterStatus value the server reported (e.g. `server_version`).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Runs one command and collects its rows. Server errors are returned
    /// after ReadyForQuery, so the connection stays usable.
    async fn query_raw(&mut self, sql: &str) -> Result<RawRows, Error> {
        if self.broken {
            return Err(Error::protocol(
                "connection is still streaming; no command can be sent",
            ));
        }
        self.conn.queue(|buf| frontend::query(sql, buf))?;
        self.conn.flush().await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.conn.recv().await? {
                BackendMessage::Pg(Message::DataRow(body)) => rows.push(data_row(&body)?),
                BackendMessage::Pg(Message::RowDescription(_))
                | BackendMessage::Pg(Message::CommandComplete(_))
                | BackendMessage::Pg(Message::EmptyQueryResponse) => {}
                BackendMessage::Pg(Message::ErrorResponse(body)) => {
                    failure = Some(server_error(&body))
                }
                BackendMessage::Pg(Message::NoticeResponse(body)) => log_notice(&body),
                BackendMessage::Pg(Message::ParameterStatus(body)) => self.note_parameter(&body),
                BackendMessage::Pg(Message::ReadyForQuery(_)) => {
                    return match failure {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                _ => {
                    self.broken = true;
                    return Err(Error::protocol(format!(
                        "unexpected message in reply to {sql:?}"
                    )));
                }
            }
        }
    }

    fn note_parameter(&mut self, body: &postgres_protocol::message::backend::ParameterStatusBody) {
        if let (Ok(n), Ok(v)) = (body.name(), body.value()) {
            self.parameters.push((n.to_owned(), v.to_owned()));
        }
    }

    /// Runs `sql` with the simple query protocol and returns the rows of the
    /// last result set as text (`None` for NULL). On a replication
    /// connection only replication commands and `SHOW` are accepted.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        self.query_raw(sql)
            .await?
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|c| {
                        c.map(|b| {
                            String::from_utf8(b.to_vec())
                                .map_err(|_| Error::protocol("column value is not UTF-8"))
                        })
                        .transpose()
                    })
                    .collect()
            })
            .collect()
    }

    /// `IDENTIFY_SYSTEM`: system identifier, current timeline and WAL position.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, Error> {
        let rows = self.query_raw("IDENTIFY_SYSTEM").await?;
        let row = match rows.as_slice() {
            [row] if row.len() >= 4 => row,
            _ => {
                return Err(Error::protocol(
                    "IDENTIFY_SYSTEM returned an unexpected result",
                ))
            }
        };
        Ok(SystemIdentity {
            system_id: parse(&row[0], "systemid")?,
            timeline: parse(&row[1], "timeline")?,
            xlogpos: parse(&row[2], "xlogpos")?,
            dbname: row[3]
                .as_ref()
                .map(|_| text(&row[3], "dbname"))
                .transpose()?,
        })
    }

    /// `SHOW name`: the current value of a setting, as text.
    pub async fn show(&mut self, name: &str) -> Result<String, Error> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(Error::config(format!("invalid setting name {name:?}")));
        }
        let rows = self.query_raw(&format!("SHOW {name}")).await?;
        match rows.as_slice() {
            [row] if !row.is_empty() => text(&row[0], name),
            _ => Err(Error::protocol(format!(
                "SHOW {name} returned an unexpected result"
            ))),
        }
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
            .query_raw(&format!("READ_REPLICATION_SLOT {name}"))
            .await?;
        let row = match rows.as_slice() {
            [row] if row.len() >= 3 => row,
            _ => {
                return Err(Error::protocol(
                    "READ_REPLICATION_SLOT returned an unexpected result",
                ))
            }
        };
        if row[0].is_none() {
            return Ok(None);
        }
        Ok(Some(SlotPosition {
            restart_lsn: row[1]
                .as_ref()
                .map(|_| parse(&row[1], "restart_lsn"))
                .transpose()?,
            restart_tli: row[2]
                .as_ref()
                .map(|_| parse(&row[2], "restart_tli"))
                .transpose()?,
        }))
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and raw content.
    /// Timeline 1 has no history file (the server reports an error).
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Bytes), Error> {
        let rows = self
            .query_raw(&format!("TIMELINE_HISTORY {}", tli.0))
            .await?;
        match rows.as_slice() {
            [row] if row.len() >= 2 => {
                let content = row[1]
                    .clone()
                    .ok_or_else(|| Error::protocol("history content is NULL"))?;
                Ok((text(&row[0], "filename")?, content))
            }
            _ => Err(Error::protocol(
                "TIMELINE_HISTORY returned an unexpected result",
            )),
        }
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
        if self.broken {
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
                BackendMessage::CopyBothResponse => {
                    return Ok(ReplicationStream::new(self.conn, self.parameters))
                }
                BackendMessage::Pg(Message::ErrorResponse(body)) => {
                    failure = Some(server_error(&body))
                }
                BackendMessage::Pg(Message::NoticeResponse(body)) => log_notice(&body),
                BackendMessage::Pg(Message::ParameterStatus(body)) => self.note_parameter(&body),
                // Starting exactly at the end of a historic timeline streams
                // nothing: walsender answers at once with the next timeline.
                BackendMessage::Pg(Message::DataRow(body)) => {
                    next_timeline = Some(parse_next_timeline(&data_row(&body)?)?)
                }
                BackendMessage::Pg(Message::RowDescription(_))
                | BackendMessage::Pg(Message::CommandComplete(_)) => {}
                BackendMessage::Pg(Message::ReadyForQuery(_)) => {
                    return match (failure, next_timeline) {
                        (Some(e), _) => Err(e),
                        (None, Some(next)) => {
                            Ok(ReplicationStream::ended(self.conn, self.parameters, next))
                        }
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
    /// [`crate::basebackup`] for both wire layouts). The command is written in
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
        if self.broken {
            return Err(Error::protocol("connection is still streaming"));
        }
        let version = self.server_version_num().await?;
        let command = opts.command(version)?;
        self.conn.queue(|buf| frontend::query(&command.sql, buf))?;
        self.conn.flush().await?;
        BaseBackupStream::begin(self.conn, self.parameters, &command).await
    }

    /// Sends Terminate and closes the connection.
    pub async fn close(mut self) -> Result<(), Error> {
        self.conn.queue(|buf| {
            frontend::terminate(buf);
            Ok(())
        })?;
        self.conn.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("16MB"), Some(16 << 20));
        assert_eq!(parse_byte_size("1GB"), Some(1 << 30));
        assert_eq!(parse_byte_size("512kB"), Some(512 << 10));
        assert_eq!(parse_byte_size("8192"), Some(8192));
        assert_eq!(parse_byte_size("8192B"), Some(8192));
        assert_eq!(parse_byte_size("16 MB"), Some(16 << 20));
        assert_eq!(parse_byte_size("MB"), None);
        assert_eq!(parse_byte_size("16XB"), None);
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-1.pgdg120+1)"),
            Some(150018)
        );
        assert_eq!(parse_server_version("16.4"), Some(160004));
        assert_eq!(parse_server_version("18beta1"), Some(180000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("x"), None);
    }

    #[test]
    fn slot_names() {
        assert!(check_slot_name("pgagent_1").is_ok());
        assert!(check_slot_name("").is_err());
        assert!(check_slot_name("Upper").is_err());
        assert!(check_slot_name("a; DROP").is_err());
        assert!(check_slot_name(&"a".repeat(64)).is_err());
    }
}
