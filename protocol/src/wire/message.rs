//! Streaming replication messages carried inside CopyData.
//!
//! Wire formats from the PostgreSQL documentation, "Streaming Replication
//! Protocol" (START_REPLICATION), as produced and consumed by
//! `src/backend/replication/walsender.c`. All integers are big-endian;
//! timestamps are microseconds since 2000-01-01 00:00:00 UTC (the
//! PostgreSQL epoch).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::wire::lsn::Lsn;

/// Sub-message tag of XLogData (server → client).
pub const XLOG_DATA_TAG: u8 = b'w';
/// Sub-message tag of the primary keepalive (server → client).
pub const PRIMARY_KEEPALIVE_TAG: u8 = b'k';
/// Sub-message tag of the standby status update (client → server).
pub const STANDBY_STATUS_UPDATE_TAG: u8 = b'r';

/// Seconds from the Unix epoch to the PostgreSQL epoch (2000-01-01 UTC),
/// `(POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY`.
pub const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// Microseconds since 2000-01-01 00:00:00 UTC for `t` (negative before it),
/// the `TimestampTz` of the replication protocol.
pub fn pg_epoch_micros(t: SystemTime) -> i64 {
    let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    match t.duration_since(epoch) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |v| -v),
    }
}

/// The inverse of [`pg_epoch_micros`].
pub fn system_time_from_pg_micros(micros: i64) -> SystemTime {
    let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    if micros >= 0 {
        epoch + Duration::from_micros(micros as u64)
    } else {
        epoch - Duration::from_micros(micros.unsigned_abs())
    }
}

/// A run of WAL bytes (`'w'`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XLogData {
    /// LSN of the first byte of `data`.
    pub wal_start: Lsn,
    /// The server's current end of WAL when it sent this message.
    pub wal_end: Lsn,
    /// Server clock at send time, µs since 2000-01-01 UTC.
    pub send_time: i64,
    /// WAL bytes, starting at `wal_start`.
    pub data: Bytes,
}

impl XLogData {
    /// LSN just past the last byte of `data`.
    pub fn data_end(&self) -> Lsn {
        self.wal_start + self.data.len() as u64
    }
}

/// A keepalive from the server (`'k'`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// Server clock at send time, µs since 2000-01-01 UTC.
    pub send_time: i64,
    /// The server asks for a status update right away (to avoid a timeout).
    pub reply_requested: bool,
}

/// A message inside CopyData from a walsender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL bytes.
    XLogData(XLogData),
    /// A keepalive.
    PrimaryKeepalive(PrimaryKeepalive),
}

/// CopyData content that is not a known replication message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Empty CopyData.
    #[error("empty replication message")]
    Empty,
    /// Unknown sub-message tag.
    #[error("unknown replication message tag {0:?}")]
    UnknownTag(char),
    /// The body is shorter (or longer, for fixed-size messages) than the format says.
    #[error("replication message {tag:?} has {len} bytes, expected {expected}")]
    BadLength {
        /// The tag.
        tag: char,
        /// Body length received.
        len: usize,
        /// Length the format requires.
        expected: usize,
    },
}

const XLOG_DATA_HEADER: usize = 1 + 8 + 8 + 8;
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
/// Encoded size of a standby status update, tag included.
pub const STANDBY_STATUS_UPDATE_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

impl ReplicationMessage {
    /// Decodes the payload of one CopyData message. `data` of XLogData shares
    /// `body`'s buffer (no copy).
    pub fn parse(mut body: Bytes) -> Result<ReplicationMessage, MessageError> {
        let tag = *body.first().ok_or(MessageError::Empty)?;
        let len = body.len();
        match tag {
            XLOG_DATA_TAG => {
                if len < XLOG_DATA_HEADER {
                    return Err(MessageError::BadLength {
                        tag: 'w',
                        len,
                        expected: XLOG_DATA_HEADER,
                    });
                }
                body.advance(1);
                let wal_start = Lsn(body.get_u64());
                let wal_end = Lsn(body.get_u64());
                let send_time = body.get_i64();
                Ok(ReplicationMessage::XLogData(XLogData {
                    wal_start,
                    wal_end,
                    send_time,
                    data: body,
                }))
            }
            PRIMARY_KEEPALIVE_TAG => {
                if len != KEEPALIVE_LEN {
                    return Err(MessageError::BadLength {
                        tag: 'k',
                        len,
                        expected: KEEPALIVE_LEN,
                    });
                }
                body.advance(1);
                Ok(ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                    wal_end: Lsn(body.get_u64()),
                    send_time: body.get_i64(),
                    reply_requested: body.get_u8() != 0,
                }))
            }
            other => Err(MessageError::UnknownTag(char::from(other))),
        }
    }
}

/// The standby's progress report (`'r'`). With a slot, `flush` is what the
/// server may recycle WAL up to; invariant: `flush <= write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last WAL byte + 1 received and written.
    pub write: Lsn,
    /// Last WAL byte + 1 made durable.
    pub flush: Lsn,
    /// Last WAL byte + 1 applied (a WAL archiver applies nothing; send `flush`
    /// or [`Lsn::INVALID`]).
    pub apply: Lsn,
    /// Client clock, µs since 2000-01-01 UTC (see [`pg_epoch_micros`]).
    pub client_time: i64,
    /// Ask the server to answer with a keepalive at once.
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Appends the CopyData payload (tag + 33 bytes) to `buf`. The caller
    /// wraps it in a CopyData message.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(STANDBY_STATUS_UPDATE_LEN);
        buf.put_u8(STANDBY_STATUS_UPDATE_TAG);
        buf.put_u64(self.write.0);
        buf.put_u64(self.flush.0);
        buf.put_u64(self.apply.0);
        buf.put_i64(self.client_time);
        buf.put_u8(u8::from(self.reply_requested));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn xlog_data() {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(0x1_0000_0000);
        b.put_u64(0x1_0000_0010);
        b.put_i64(789);
        b.put_slice(b"walbytes");
        let m = ReplicationMessage::parse(b.freeze()).unwrap();
        let ReplicationMessage::XLogData(x) = m else {
            panic!("not XLogData: {m:?}")
        };
        assert_eq!(x.wal_start, Lsn(0x1_0000_0000));
        assert_eq!(x.wal_end, Lsn(0x1_0000_0010));
        assert_eq!(x.send_time, 789);
        assert_eq!(&x.data[..], b"walbytes");
        assert_eq!(x.data_end(), Lsn(0x1_0000_0008));
    }

    #[test]
    fn keepalive() {
        // 'k', end 0/1A1D8F8, send time, reply requested.
        let raw: [u8; 18] = [
            b'k', 0, 0, 0, 0, 0x01, 0xA1, 0xD8, 0xF8, 0, 0x02, 0xC4, 0x5E, 0x10, 0x7A, 0x3C, 0x81,
            1,
        ];
        let m = ReplicationMessage::parse(Bytes::copy_from_slice(&raw)).unwrap();
        assert_eq!(
            m,
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(0x1A1_D8F8),
                send_time: 0x0002_C45E_107A_3C81,
                reply_requested: true,
            })
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(
            ReplicationMessage::parse(Bytes::new()),
            Err(MessageError::Empty)
        );
        assert_eq!(
            ReplicationMessage::parse(Bytes::from_static(b"x")),
            Err(MessageError::UnknownTag('x'))
        );
        assert!(matches!(
            ReplicationMessage::parse(Bytes::from_static(b"w123")),
            Err(MessageError::BadLength { tag: 'w', .. })
        ));
        assert!(matches!(
            ReplicationMessage::parse(Bytes::from_static(&[b'k'; 19])),
            Err(MessageError::BadLength { tag: 'k', .. })
        ));
    }

    #[test]
    fn status_update_bytes() {
        let s = StandbyStatusUpdate {
            write: Lsn(0x0102_0304_0506_0708),
            flush: Lsn(2),
            apply: Lsn(3),
            client_time: -1,
            reply_requested: true,
        };
        let mut b = BytesMut::new();
        s.encode(&mut b);
        assert_eq!(b.len(), STANDBY_STATUS_UPDATE_LEN);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[9..17], &2u64.to_be_bytes());
        assert_eq!(&b[17..25], &3u64.to_be_bytes());
        assert_eq!(&b[25..33], &[0xFF; 8]);
        assert_eq!(b[33], 1);
    }

    #[test]
    fn epoch() {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        assert_eq!(pg_epoch_micros(pg_epoch), 0);
        assert_eq!(pg_epoch_micros(pg_epoch + Duration::from_micros(5)), 5);
        assert_eq!(pg_epoch_micros(UNIX_EPOCH), -946_684_800_000_000);
        assert_eq!(system_time_from_pg_micros(-946_684_800_000_000), UNIX_EPOCH);
    }

    proptest! {
        #[test]
        fn epoch_round_trip(v in -(1i64 << 60)..(1i64 << 60)) {
            prop_assert_eq!(pg_epoch_micros(system_time_from_pg_micros(v)), v);
        }

        #[test]
        fn xlog_data_round_trip(start in any::<u64>(), end in any::<u64>(), t in any::<i64>(),
                                data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = BytesMut::new();
            b.put_u8(b'w');
            b.put_u64(start);
            b.put_u64(end);
            b.put_i64(t);
            b.put_slice(&data);
            let m = ReplicationMessage::parse(b.freeze()).unwrap();
            prop_assert_eq!(m, ReplicationMessage::XLogData(XLogData {
                wal_start: Lsn(start), wal_end: Lsn(end), send_time: t, data: Bytes::from(data),
            }));
        }
    }
}
