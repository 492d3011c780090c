//! The WAL stream of `START_REPLICATION ... PHYSICAL` (CopyBoth mode).
//!
//! Flow from the PostgreSQL documentation, "Streaming Replication
//! Protocol", and `StartReplication`/`WalSndLoop`/`WalSndDone` in
//! `src/backend/replication/walsender.c`:
//!
//! - the server sends CopyData holding XLogData (`'w'`) and keepalives
//!   (`'k'`); the client sends CopyData holding status updates (`'r'`);
//! - when the streamed timeline ends (the server was promoted past it), the
//!   server sends CopyDone; the client answers CopyDone; the server sends a
//!   one-row result set (`next_tli` int8, `next_tli_startpos` text),
//!   CommandComplete and ReadyForQuery: the connection accepts commands again;
//! - when the server shuts down it sends CommandComplete without CopyDone
//!   (or an ErrorResponse `57P01`) and closes the connection.
//!
//! [`ReplicationStream::next`] keeps its progress in `self` and reads through
//! a framed buffer, so it can be dropped at any await point (as in
//! `tokio::select!` with a timer) and called again without losing bytes.
//!
//! The stream owns the `Connection` while it runs and gives it back with
//! `ReplicationStream::into_client`, which the client module defines: this
//! module does not depend on the client.

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::client::codec::{data_row, log_notice, server_error, BackendMessage};
use crate::client::connection::Connection;
use crate::error::Error;
use crate::wire::command::parse_next_timeline;
use crate::wire::lsn::Lsn;
use crate::wire::message::{PrimaryKeepalive, ReplicationMessage, StandbyStatusUpdate, XLogData};
use crate::wire::timeline::TimelineId;

/// What the stream delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// WAL bytes.
    XLogData(XLogData),
    /// A keepalive; answer with [`ReplicationStream::send_status`] at once
    /// when `reply_requested` is set.
    Keepalive(PrimaryKeepalive),
    /// The streamed timeline ended; WAL continues on `next_tli` from
    /// `next_tli_start` (the switch point). The stream is over; use
    /// [`ReplicationStream::into_client`] for further commands.
    EndOfTimeline {
        /// The timeline that follows.
        next_tli: TimelineId,
        /// Where the next timeline starts.
        next_tli_start: Lsn,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In CopyBoth.
    Streaming,
    /// The server sent CopyDone; ours is queued; reading the trailing result.
    Ending { next: Option<(TimelineId, Lsn)> },
    /// ReadyForQuery seen; the end has not been reported yet.
    Ended { next: Option<(TimelineId, Lsn)> },
    /// The end was reported (or the stream failed); the connection is idle
    /// when `usable`.
    Finished { usable: bool },
}

/// An active WAL stream.
pub struct ReplicationStream {
    conn: Connection,
    state: State,
}

impl ReplicationStream {
    /// A stream on a connection that has just entered CopyBoth.
    pub(crate) fn new(conn: Connection) -> Self {
        ReplicationStream {
            conn,
            state: State::Streaming,
        }
    }

    /// A stream that ended before any WAL was sent: `next` is the next
    /// timeline and where it starts.
    pub(crate) fn ended(conn: Connection, next: (TimelineId, Lsn)) -> Self {
        ReplicationStream {
            conn,
            state: State::Ended { next: Some(next) },
        }
    }

    /// Waits for the next event. Cancellation-safe.
    ///
    /// Errors: [`Error::is_connection`] when the connection breaks or the
    /// server ends streaming because it shuts down; a server error; a
    /// protocol error for malformed messages or calls after the end.
    pub async fn next(&mut self) -> Result<StreamEvent, Error> {
        let result = self.step().await;
        if let Err(e) = &result {
            if self.state != (State::Finished { usable: true }) {
                tracing::debug!(error = %e, "replication stream failed");
                self.state = State::Finished { usable: false };
            }
        }
        result
    }

    async fn step(&mut self) -> Result<StreamEvent, Error> {
        loop {
            match self.state {
                State::Streaming => {
                    let message = self.conn.recv().await?;
                    if let Some(event) = self.on_streaming(message)? {
                        return Ok(event);
                    }
                }
                State::Ending { next } => {
                    // Flushing first is idempotent: a flush cancelled half way
                    // keeps the rest of our CopyDone in the write buffer.
                    self.conn.flush().await?;
                    let message = self.conn.recv().await?;
                    self.state = match message {
                        BackendMessage::Pg(Message::DataRow(body)) => State::Ending {
                            next: Some(parse_next_timeline(&data_row(&body)?)?),
                        },
                        BackendMessage::Pg(Message::ReadyForQuery(_)) => State::Ended { next },
                        BackendMessage::Pg(Message::ErrorResponse(body)) => {
                            return Err(server_error(&body))
                        }
                        BackendMessage::Pg(Message::NoticeResponse(body)) => {
                            log_notice(&body);
                            continue;
                        }
                        // CopyData sent before our CopyDone arrived, column
                        // descriptions and the command tag carry nothing new.
                        BackendMessage::Pg(
                            Message::CopyData(_)
                            | Message::RowDescription(_)
                            | Message::CommandComplete(_)
                            | Message::ParameterStatus(_),
                        ) => continue,
                        _ => return Err(Error::protocol("unexpected message after CopyDone")),
                    };
                }
                State::Ended { next } => {
                    self.state = State::Finished { usable: true };
                    return match next {
                        Some((next_tli, next_tli_start)) => Ok(StreamEvent::EndOfTimeline {
                            next_tli,
                            next_tli_start,
                        }),
                        None => Err(Error::closed(
                            "server ended streaming without naming a next timeline",
                        )),
                    };
                }
                State::Finished { .. } => {
                    return Err(Error::protocol("the replication stream has ended"))
                }
            }
        }
    }

    fn on_streaming(&mut self, message: BackendMessage) -> Result<Option<StreamEvent>, Error> {
        let message = match message {
            BackendMessage::Pg(m) => m,
            BackendMessage::CopyBothResponse => {
                return Err(Error::protocol(
                    "unexpected CopyBothResponse while streaming",
                ))
            }
        };
        match message {
            Message::CopyData(body) => {
                let parsed = ReplicationMessage::parse(body.into_bytes())
                    .map_err(|e| Error::protocol(e.to_string()))?;
                Ok(Some(match parsed {
                    ReplicationMessage::XLogData(x) => StreamEvent::XLogData(x),
                    ReplicationMessage::PrimaryKeepalive(k) => StreamEvent::Keepalive(k),
                }))
            }
            Message::CopyDone => {
                self.conn.queue(|buf| {
                    frontend::copy_done(buf);
                    Ok(())
                })?;
                self.state = State::Ending { next: None };
                Ok(None)
            }
            // WalSndDone: the server is shutting down and closes the
            // connection after this.
            Message::CommandComplete(_) => Err(Error::closed(
                "server ended streaming (it is shutting down)",
            )),
            Message::ErrorResponse(body) => Err(server_error(&body)),
            Message::NoticeResponse(body) => {
                log_notice(&body);
                Ok(None)
            }
            Message::ParameterStatus(_) => Ok(None),
            _ => Err(Error::protocol("unexpected message while streaming")),
        }
    }

    /// Sends a standby status update and flushes it. If this future is
    /// dropped before completion, the unsent part stays buffered and goes
    /// out with the next send.
    pub async fn send_status(&mut self, status: &StandbyStatusUpdate) -> Result<(), Error> {
        if self.state != State::Streaming {
            return Err(Error::protocol(
                "cannot send a status update: the stream has ended",
            ));
        }
        let mut payload = BytesMut::new();
        status.encode(&mut payload);
        self.conn.queue(|buf| {
            frontend::CopyData::new(payload.freeze())?.write(buf);
            Ok(())
        })?;
        self.conn.flush().await
    }

    /// Hands the connection back, usable for commands only once the end of
    /// the stream was reported ([`StreamEvent::EndOfTimeline`]).
    pub(crate) fn into_connection(self) -> Connection {
        let mut conn = self.conn;
        conn.set_usable(self.state == State::Finished { usable: true });
        conn
    }
}
