//! Framing of backend messages for tokio, and the socket types.
//!
//! `postgres-protocol` decodes complete backend messages from a buffer; this
//! module adapts it to `tokio_util::codec::Framed`, which keeps partially
//! received bytes across calls. That is what makes reading cancellation-safe:
//! a dropped read future loses no bytes. `CopyBothResponse` (`'W'`, only sent
//! for START_REPLICATION) is not decoded by `postgres-protocol` and is
//! handled here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use futures::{SinkExt, StreamExt};
use postgres_protocol::message::backend::{self, DataRowBody, ErrorResponseBody, Message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::error::{DbError, Error};

/// Tag of CopyBothResponse (protocol docs, "Message Formats").
pub(crate) const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// A backend message.
pub(crate) enum BackendMessage {
    /// Any message `postgres-protocol` decodes.
    Pg(Message),
    /// CopyBothResponse: the server entered COPY in both directions.
    CopyBothResponse,
}

/// Decoder of backend messages; the encoder passes pre-encoded frontend bytes through.
pub(crate) struct PgCodec;

impl Decoder for PgCodec {
    type Item = BackendMessage;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BackendMessage>> {
        if src.len() >= 5 && src[0] == COPY_BOTH_RESPONSE_TAG {
            let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
            if len < 4 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "invalid message length",
                ));
            }
            if src.len() < len + 1 {
                src.reserve(len + 1 - src.len());
                return Ok(None);
            }
            src.advance(len + 1);
            return Ok(Some(BackendMessage::CopyBothResponse));
        }
        Ok(Message::parse(src)?.map(BackendMessage::Pg))
    }
}

impl Encoder<Bytes> for PgCodec {
    type Error = io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// The transport under a connection.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A framed connection. Writes are queued in the frame's write buffer and
/// sent by [`Conn::flush`]; both reading and flushing can be cancelled and
/// resumed without losing bytes.
pub(crate) struct Conn {
    framed: Framed<Socket, PgCodec>,
}

impl Conn {
    pub(crate) fn new(socket: Socket) -> Conn {
        Conn {
            framed: Framed::new(socket, PgCodec),
        }
    }

    /// Queues a frontend message written by `encode` (a `postgres-protocol`
    /// `frontend::*` function).
    pub(crate) fn queue(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> io::Result<()>,
    ) -> Result<(), Error> {
        encode(self.framed.write_buffer_mut()).map_err(|e| Error::protocol(e.to_string()))
    }

    /// Sends everything queued.
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        SinkExt::<Bytes>::flush(&mut self.framed)
            .await
            .map_err(Error::io)
    }

    /// Receives the next message; end of stream is a "closed" error.
    pub(crate) async fn recv(&mut self) -> Result<BackendMessage, Error> {
        match self.framed.next().await {
            Some(Ok(m)) => Ok(m),
            Some(Err(e))
                if e.kind() == io::ErrorKind::InvalidInput
                    || e.kind() == io::ErrorKind::InvalidData =>
            {
                Err(Error::protocol(e.to_string()))
            }
            Some(Err(e)) => Err(Error::io(e)),
            None => Err(Error::closed("server closed the connection unexpectedly")),
        }
    }
}

/// Reads the fields of an ErrorResponse.
pub(crate) fn db_error(body: &ErrorResponseBody) -> DbError {
    let mut db = DbError::default();
    let mut localized_severity = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => localized_severity = value,
            b'V' => db.severity = value,
            b'C' => db.code = value,
            b'M' => db.message = value,
            b'D' => db.detail = Some(value),
            b'H' => db.hint = Some(value),
            _ => {}
        }
    }
    if db.severity.is_empty() {
        db.severity = localized_severity;
    }
    db
}

/// Converts an ErrorResponse into an [`Error`].
pub(crate) fn server_error(body: &ErrorResponseBody) -> Error {
    Error::db(db_error(body))
}

/// Logs a NoticeResponse.
pub(crate) fn log_notice(body: &backend::NoticeResponseBody) {
    let mut fields = body.fields();
    let mut message = String::new();
    let mut severity = String::new();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'V' => severity = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    tracing::info!(%severity, %message, "server notice");
}

/// The columns of a DataRow as raw bytes (text format), `None` for NULL.
pub(crate) fn data_row(body: &DataRowBody) -> Result<Vec<Option<Bytes>>, Error> {
    let buf = body.buffer_bytes();
    body.ranges()
        .map(|r| Ok(r.map(|r| buf.slice(r))))
        .collect()
        .map_err(|e: io::Error| Error::protocol(format!("malformed DataRow: {e}")))
}
