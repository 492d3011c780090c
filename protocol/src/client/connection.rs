//! An authenticated connection, whoever is using it at the moment.
//!
//! A [`Connection`] is the framed socket plus what the session learnt about
//! the server (its ParameterStatus values) and whether it can take commands.
//! The command client, the WAL stream, the base backup stream and the SQL
//! session each own one in turn: a stream takes the connection from the
//! client and hands it back as a `Connection`, and the client is built from
//! that. So the streams never name the client, and the client is the only
//! module that knows both.

use postgres_protocol::message::backend::{Message, ParameterStatusBody};
use postgres_protocol::message::frontend;

use crate::client::codec::{data_row, log_notice, server_error, BackendMessage, Conn};
use crate::error::Error;
use crate::wire::command::Row;

/// Most bytes sent in one CopyData message by [`Connection::copy_in`]; the
/// size `pg_basebackup` reads its manifest in.
pub(crate) const COPY_IN_CHUNK: usize = 128 * 1024;

/// A connection that reached ReadyForQuery once, with the server's parameters.
pub(crate) struct Connection {
    conn: Conn,
    /// ParameterStatus values in arrival order; a later one for the same
    /// name overrides an earlier one.
    parameters: Vec<(String, String)>,
    /// Set when the connection was handed back in a state where commands
    /// cannot run (still in COPY mode, or broken).
    broken: bool,
}

impl Connection {
    /// A connection in command mode, as startup leaves it.
    pub(crate) fn new(conn: Conn, parameters: Vec<(String, String)>) -> Connection {
        Connection {
            conn,
            parameters,
            broken: false,
        }
    }

    /// Marks whether commands can run on this connection again (a stream
    /// says so when it hands the connection back).
    pub(crate) fn set_usable(&mut self, usable: bool) {
        self.broken = !usable;
    }

    /// Whether commands can run on this connection.
    pub(crate) fn is_usable(&self) -> bool {
        !self.broken
    }

    /// A ParameterStatus value the server reported (e.g. `server_version`).
    pub(crate) fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The ParameterStatus values, for a reader that records them itself.
    pub(crate) fn parameters_mut(&mut self) -> &mut Vec<(String, String)> {
        &mut self.parameters
    }

    /// Records a ParameterStatus message; a malformed one is ignored.
    pub(crate) fn note_parameter(&mut self, body: &ParameterStatusBody) {
        if let (Ok(n), Ok(v)) = (body.name(), body.value()) {
            self.parameters.push((n.to_owned(), v.to_owned()));
        }
    }

    /// Queues a frontend message (see [`Conn::queue`]).
    pub(crate) fn queue(
        &mut self,
        encode: impl FnOnce(&mut bytes::BytesMut) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        self.conn.queue(encode)
    }

    /// Sends everything queued (see [`Conn::flush`]).
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        self.conn.flush().await
    }

    /// Receives the next message (see [`Conn::recv`]).
    pub(crate) async fn recv(&mut self) -> Result<BackendMessage, Error> {
        self.conn.recv().await
    }

    /// Runs one command with the simple query protocol and collects its
    /// rows. Server errors are returned after ReadyForQuery, so the
    /// connection stays usable; an unexpected message leaves it unusable.
    pub(crate) async fn query_raw(&mut self, sql: &str) -> Result<Vec<Row>, Error> {
        self.command(sql, None).await
    }

    /// [`Connection::query_raw`] with every value as UTF-8 text (`None` for NULL).
    pub(crate) async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, Error> {
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

    /// Runs `sql`, a command the server answers with CopyInResponse (e.g.
    /// `UPLOAD_MANIFEST`), sends `data` as CopyData messages of at most
    /// [`COPY_IN_CHUNK`] bytes and CopyDone, and waits for ReadyForQuery.
    /// Server errors (before the COPY, or after it when the server checks
    /// what it got) are returned after ReadyForQuery, so the connection stays
    /// usable; an unexpected message leaves it unusable.
    pub(crate) async fn copy_in(&mut self, sql: &str, data: &[u8]) -> Result<(), Error> {
        self.command(sql, Some(data)).await.map(drop)
    }

    /// One command of the simple query protocol up to ReadyForQuery: its rows, and, when
    /// the server asks for them with CopyInResponse, `copy_in`'s bytes sent as CopyData
    /// then CopyDone (a CopyInResponse without them is unexpected).
    async fn command(&mut self, sql: &str, copy_in: Option<&[u8]>) -> Result<Vec<Row>, Error> {
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
                BackendMessage::Pg(Message::CopyInResponse(_)) if copy_in.is_some() => {
                    self.send_copy(copy_in.unwrap_or_default()).await?
                }
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

    /// `data` as CopyData messages of at most [`COPY_IN_CHUNK`] bytes, then CopyDone.
    async fn send_copy(&mut self, data: &[u8]) -> Result<(), Error> {
        for piece in data.chunks(COPY_IN_CHUNK) {
            let body = bytes::Bytes::copy_from_slice(piece);
            self.conn.queue(|buf| {
                frontend::CopyData::new(body)
                    .map_err(std::io::Error::other)?
                    .write(buf);
                Ok(())
            })?;
            self.conn.flush().await?;
        }
        self.conn.queue(|buf| {
            frontend::copy_done(buf);
            Ok(())
        })?;
        self.conn.flush().await
    }

    /// Sends Terminate and closes the connection.
    pub(crate) async fn close(mut self) -> Result<(), Error> {
        self.conn.queue(|buf| {
            frontend::terminate(buf);
            Ok(())
        })?;
        self.conn.flush().await
    }
}
