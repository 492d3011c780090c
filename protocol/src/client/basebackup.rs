//! `BASE_BACKUP` on a connection: reads backend messages and feeds them to
//! the decoder of the wire layer ([`crate::wire::basebackup`], which also
//! describes both wire layouts).
//!
//! The stream owns the `Connection` while the backup runs and gives it
//! back with `BaseBackupStream::into_client`, which the replication client
//! defines: this module does not depend on the client.
//!
//! The wire types a backup is asked and delivered with are re-exported here,
//! so that this module is the one place to take base backups from.

use postgres_protocol::message::backend::Message;

use crate::client::codec::{data_row, db_error, log_notice, BackendMessage};
use crate::client::connection::Connection;
use crate::error::Error;
use crate::wire::basebackup::decoder::{Backend, BaseBackupDecoder, Status, Step};
use crate::wire::basebackup::BaseBackupCommand;
use crate::wire::lsn::Lsn;
use crate::wire::timeline::TimelineId;

pub use crate::wire::basebackup::{
    BaseBackupEvent, BaseBackupOptions, Tablespace, MAX_LABEL_BYTES, MAX_RATE_LOWER_KIB,
    MAX_RATE_UPPER_KIB, MIN_SERVER_VERSION, STREAM_FORMAT_VERSION,
};

/// A base backup being received, from
/// `ReplicationClient::base_backup`.
///
/// Read it with [`BaseBackupStream::next`] until `None`, then take the end
/// position from [`BaseBackupStream::end`] and the connection back with
/// [`BaseBackupStream::into_client`]. Dropping it before the end closes the
/// connection, and the server abandons the backup.
pub struct BaseBackupStream {
    conn: Connection,
    decoder: BaseBackupDecoder,
    start: (Lsn, TimelineId),
    /// An event produced while reading the header (13/14: the first archive).
    pending: Option<BaseBackupEvent>,
}

/// Turns a backend message into decoder input; notices are logged and
/// parameter changes recorded, neither reaches the decoder.
fn translate(
    message: BackendMessage,
    parameters: &mut Vec<(String, String)>,
) -> Result<Option<Backend>, Error> {
    let message = match message {
        BackendMessage::Pg(m) => m,
        BackendMessage::CopyBothResponse => return Ok(Some(Backend::Other("CopyBothResponse"))),
    };
    Ok(Some(match message {
        Message::RowDescription(_) => Backend::RowDescription,
        Message::DataRow(body) => Backend::DataRow(data_row(&body)?),
        Message::CommandComplete(_) => Backend::CommandComplete,
        Message::CopyOutResponse(_) => Backend::CopyOutResponse,
        Message::CopyData(body) => Backend::CopyData(body.into_bytes()),
        Message::CopyDone => Backend::CopyDone,
        Message::ErrorResponse(body) => Backend::ErrorResponse(db_error(&body)),
        Message::ReadyForQuery(_) => Backend::ReadyForQuery,
        Message::NoticeResponse(body) => {
            log_notice(&body);
            return Ok(None);
        }
        Message::ParameterStatus(body) => {
            if let (Ok(n), Ok(v)) = (body.name(), body.value()) {
                parameters.push((n.to_owned(), v.to_owned()));
            }
            return Ok(None);
        }
        Message::CopyInResponse(_) => Backend::Other("CopyInResponse"),
        Message::EmptyQueryResponse => Backend::Other("EmptyQueryResponse"),
        _ => Backend::Other("an unexpected message type"),
    }))
}

impl BaseBackupStream {
    /// Reads the answer to `command` (already sent) up to the first COPY:
    /// start position and tablespace list.
    pub(crate) async fn begin(
        mut conn: Connection,
        command: &BaseBackupCommand,
    ) -> Result<BaseBackupStream, Error> {
        let mut decoder = BaseBackupDecoder::new(command.format, command.manifest);
        let pending = loop {
            let message = conn.recv().await?;
            let Some(input) = translate(message, conn.parameters_mut())? else {
                continue;
            };
            match decoder.feed(input)? {
                Step::Event(event) => break Some(event),
                Step::Continue if decoder.header_complete() => break None,
                Step::Continue => {}
                Step::Done => return Err(Error::protocol("BASE_BACKUP ended before any archive")),
            }
        };
        let start = decoder
            .start()
            .ok_or_else(|| Error::protocol("BASE_BACKUP sent no start position"))?;
        Ok(BaseBackupStream {
            conn,
            decoder,
            start,
            pending,
        })
    }

    /// The backup's start position: the redo point of its checkpoint
    /// (`START WAL LOCATION` in `backup_label`). Recovery needs the WAL
    /// from the start of this position's segment.
    pub fn start_lsn(&self) -> Lsn {
        self.start.0
    }

    /// The timeline of [`Self::start_lsn`].
    pub fn start_timeline(&self) -> TimelineId {
        self.start.1
    }

    /// The tablespace rows in server order: other tablespaces first, the
    /// main data directory (no OID, no location) last. One archive follows
    /// for each.
    pub fn tablespaces(&self) -> &[Tablespace] {
        self.decoder.tablespaces()
    }

    /// Waits for the next event; `None` once the backup completed (then
    /// [`Self::end`] is `Some`), and again on later calls. Cancellation-safe:
    /// a dropped call loses no bytes.
    ///
    /// Errors: the server's error as [`Error::code`]/[`Error::server_message`]
    /// (e.g. `57014` after a cancel request, `XX001` for checksum failures
    /// found in data files, `57P01` when the server shuts down, which is also
    /// [`Error::is_connection`]); [`Error::is_connection`] when the
    /// connection breaks; a protocol error for messages out of place. After
    /// an error every call fails.
    pub async fn next(&mut self) -> Result<Option<BaseBackupEvent>, Error> {
        if let Some(event) = self.pending.take() {
            return Ok(Some(event));
        }
        loop {
            match self.decoder.status() {
                Status::Running => {}
                Status::Done => return Ok(None),
                Status::Failed => return Err(Error::protocol("the base backup has failed")),
            }
            let input = match self.conn.recv().await {
                Ok(message) => translate(message, self.conn.parameters_mut()),
                Err(e) => Err(e),
            };
            let input = match input {
                Ok(Some(input)) => input,
                Ok(None) => continue,
                Err(e) => {
                    self.decoder.abandon();
                    return Err(e);
                }
            };
            match self.decoder.feed(input)? {
                Step::Continue => {}
                Step::Event(event) => return Ok(Some(event)),
                Step::Done => return Ok(None),
            }
        }
    }

    /// The end position and its timeline (`STOP WAL LOCATION`), once
    /// [`Self::next`] returned `None`. A restore must replay WAL at least up
    /// to here to be consistent.
    pub fn end(&self) -> Option<(Lsn, TimelineId)> {
        self.decoder.end()
    }

    /// Hands the connection back, usable for commands after the end of the
    /// backup or after a non-fatal server error.
    pub(crate) fn into_connection(self) -> Connection {
        let mut conn = self.conn;
        conn.set_usable(self.decoder.connection_usable());
        conn
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;

    /// Decodes one backend message from its wire form: tag, Int32 length, body.
    fn wire(tag: u8, body: &[u8]) -> BackendMessage {
        let mut buf = BytesMut::new();
        buf.put_u8(tag);
        buf.put_i32(body.len() as i32 + 4);
        buf.put_slice(body);
        BackendMessage::Pg(Message::parse(&mut buf).unwrap().unwrap())
    }

    #[test]
    fn translation() {
        let mut params = Vec::new();
        let mut t = |m| translate(m, &mut params).unwrap();

        let Some(Backend::CopyData(d)) = t(wire(b'd', b"n base.tar")) else {
            panic!("not CopyData")
        };
        assert_eq!(&d[..], b"n base.tar");

        // DataRow: 2 columns, "0/1" and NULL.
        let mut row = BytesMut::new();
        row.put_i16(2);
        row.put_i32(3);
        row.put_slice(b"0/1");
        row.put_i32(-1);
        let Some(Backend::DataRow(cols)) = t(wire(b'D', &row)) else {
            panic!("not DataRow")
        };
        assert_eq!(cols, vec![Some(bytes::Bytes::from_static(b"0/1")), None]);

        let Some(Backend::ErrorResponse(db)) = t(wire(
            b'E',
            b"SERROR\0VERROR\0C57014\0Mcanceling statement due to user request\0\0",
        )) else {
            panic!("not ErrorResponse")
        };
        assert_eq!(db.code, "57014");
        assert_eq!(db.severity, "ERROR");

        assert!(matches!(
            t(wire(b'H', &[0, 0, 0])),
            Some(Backend::CopyOutResponse)
        ));
        assert!(matches!(t(wire(b'c', b"")), Some(Backend::CopyDone)));
        assert!(matches!(t(wire(b'Z', b"I")), Some(Backend::ReadyForQuery)));
        assert!(matches!(
            t(BackendMessage::CopyBothResponse),
            Some(Backend::Other("CopyBothResponse"))
        ));
        assert!(t(wire(b'N', b"SNOTICE\0Mhello\0\0")).is_none());
        assert!(t(wire(b'S', b"application_name\0x\0")).is_none());
        assert_eq!(params, vec![("application_name".into(), "x".into())]);
    }
}
