//! WAL segment numbers, sizes and file names.
//!
//! The names and rules here keep PostgreSQL's own (`XLogFileName`,
//! `IsXLogFileName`, `IsPartialXLogFileName`, `IsTLHistoryFileName`,
//! `IsBackupHistoryFileName`, `IsValidWalSegSize` in
//! `src/include/access/xlog_internal.h`) so they can be checked side by side
//! with the C macros.

use std::fmt;

use crate::wire::lsn::Lsn;
use crate::wire::timeline::TimelineId;

/// Smallest segment size `initdb --wal-segsize` accepts (`WalSegMinSize`): 1 MiB.
pub const WAL_SEG_MIN_SIZE: u64 = 1024 * 1024;
/// Largest segment size `initdb --wal-segsize` accepts (`WalSegMaxSize`): 1 GiB.
pub const WAL_SEG_MAX_SIZE: u64 = 1024 * 1024 * 1024;
/// Length of a segment file name (`XLOG_FNAME_LEN`): 24 hex digits.
pub const XLOG_FNAME_LEN: usize = 24;

/// A segment number (`XLogSegNo`): the LSN divided by the segment size.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct SegNo(pub u64);

impl SegNo {
    /// LSN of the first byte of this segment: the segment number times the
    /// segment size in bytes (`XLogSegNoOffsetToRecPtr(segno, 0, ...)`).
    pub fn start_lsn(self, seg: WalSegmentSize) -> Lsn {
        Lsn(self.0 * seg.bytes())
    }

    /// The first LSN past this segment (an exclusive end): `seg.bytes()`
    /// bytes after [`SegNo::start_lsn`], which is where the next segment
    /// starts (`XLogSegNoOffsetToRecPtr(segno + 1, 0, ...)`). A segment
    /// holds the LSNs `start_lsn(seg)..end_lsn(seg)`.
    pub fn end_lsn(self, seg: WalSegmentSize) -> Lsn {
        self.next().start_lsn(seg)
    }

    /// The segment that follows this one (`segno + 1`): its first byte is
    /// this segment's [`SegNo::end_lsn`].
    pub fn next(self) -> SegNo {
        SegNo(self.0 + 1)
    }
}

/// Segment arithmetic on LSNs. It is defined here rather than in the LSN
/// module so that segments build on LSNs and not the other way round.
impl Lsn {
    /// The segment this position falls in (`XLByteToSeg`): the position in
    /// bytes divided by the segment size in bytes.
    pub fn segment_number(self, seg: WalSegmentSize) -> SegNo {
        SegNo(self.0 / seg.bytes())
    }

    /// Offset of this position inside its segment, in bytes (`XLogSegmentOffset`).
    pub fn segment_offset(self, seg: WalSegmentSize) -> u64 {
        self.0 % seg.bytes()
    }

    /// True if this position is the first byte of a segment.
    pub fn is_segment_start(self, seg: WalSegmentSize) -> bool {
        self.segment_offset(seg) == 0
    }
}

impl fmt::Display for SegNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The size of a WAL segment file in bytes: a power of two from 1 MiB to
/// 1 GiB (`IsValidWalSegSize`), fixed at `initdb` time; 16 MiB by default.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct WalSegmentSize(u32);

/// A segment size outside what PostgreSQL accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL segment size {0} bytes: must be a power of two between 1 MiB and 1 GiB")]
pub struct InvalidSegmentSize(pub u64);

impl WalSegmentSize {
    /// 16 MiB, the default `--wal-segsize`.
    pub const DEFAULT: WalSegmentSize = WalSegmentSize(16 * 1024 * 1024);

    /// Validates a size in bytes as `IsValidWalSegSize` does.
    pub fn new(bytes: u64) -> Result<Self, InvalidSegmentSize> {
        if bytes.is_power_of_two() && (WAL_SEG_MIN_SIZE..=WAL_SEG_MAX_SIZE).contains(&bytes) {
            Ok(WalSegmentSize(bytes as u32))
        } else {
            Err(InvalidSegmentSize(bytes))
        }
    }

    /// Size in bytes.
    pub fn bytes(self) -> u64 {
        u64::from(self.0)
    }

    /// Segments per 4 GiB "xlogid" (`XLogSegmentsPerXLogId`): the modulus of the
    /// last 8 hex digits of a segment file name.
    pub fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / self.bytes()
    }
}

impl Default for WalSegmentSize {
    fn default() -> Self {
        WalSegmentSize::DEFAULT
    }
}

/// The file name of a segment (`XLogFileName`): `TTTTTTTTXXXXXXXXYYYYYYYY`,
/// timeline, segment / segments-per-xlogid, segment % segments-per-xlogid.
pub fn segment_file_name(tli: TimelineId, segno: SegNo, seg: WalSegmentSize) -> String {
    let per = seg.segments_per_xlogid();
    format!(
        "{:08X}{:08X}{:08X}",
        tli.0,
        (segno.0 / per) as u32,
        (segno.0 % per) as u32
    )
}

/// The name of a timeline history file (`TLHistoryFileName`): `TTTTTTTT.history`.
pub fn history_file_name(tli: TimelineId) -> String {
    format!("{:08X}.history", tli.0)
}

/// A file name found in `pg_wal`, an archive or a `restore_command` request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum WalFileName {
    /// A complete segment, e.g. `000000010000000A000000FE`.
    Segment {
        /// Timeline of the segment.
        tli: TimelineId,
        /// Segment number.
        segno: SegNo,
    },
    /// A segment still being filled, e.g. `000000010000000A000000FF.partial`.
    Partial {
        /// Timeline of the segment.
        tli: TimelineId,
        /// Segment number.
        segno: SegNo,
    },
    /// A timeline history file, e.g. `00000002.history`.
    History(TimelineId),
    /// A backup history file, e.g. `000000010000000000000002.00000028.backup`.
    BackupHistory {
        /// Timeline of the backup start.
        tli: TimelineId,
        /// Segment holding the backup start.
        segno: SegNo,
        /// Offset of the backup start inside that segment, in bytes.
        offset: u32,
    },
}

fn is_upper_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

fn hex32(s: &str) -> Option<u32> {
    (s.len() == 8 && is_upper_hex(s))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

/// Parses the 24-hex-digit segment part; `None` when the low part does not
/// fit this segment size (such a name cannot come from `XLogFileName`).
fn parse_segment(s: &str, seg: WalSegmentSize) -> Option<(TimelineId, SegNo)> {
    if s.len() != XLOG_FNAME_LEN {
        return None;
    }
    let tli = hex32(&s[0..8])?;
    let log = u64::from(hex32(&s[8..16])?);
    let low = u64::from(hex32(&s[16..24])?);
    let per = seg.segments_per_xlogid();
    if low >= per {
        return None;
    }
    Some((TimelineId(tli), SegNo(log * per + low)))
}

impl WalFileName {
    /// Classifies a file name with the `IsXLogFileName`, `IsPartialXLogFileName`,
    /// `IsTLHistoryFileName` and `IsBackupHistoryFileName` rules (uppercase hex
    /// only). Returns `None` for anything else, including names whose
    /// segment part is impossible for `seg`.
    pub fn parse(name: &str, seg: WalSegmentSize) -> Option<WalFileName> {
        if !name.is_ascii() {
            return None;
        }
        if name.len() == XLOG_FNAME_LEN {
            let (tli, segno) = parse_segment(name, seg)?;
            return Some(WalFileName::Segment { tli, segno });
        }
        if let Some(base) = name.strip_suffix(".partial") {
            let (tli, segno) = parse_segment(base, seg)?;
            return Some(WalFileName::Partial { tli, segno });
        }
        if let Some(base) = name.strip_suffix(".history") {
            return hex32(base).map(|t| WalFileName::History(TimelineId(t)));
        }
        if let Some(base) = name.strip_suffix(".backup") {
            let (segment, offset) = base.split_once('.')?;
            let (tli, segno) = parse_segment(segment, seg)?;
            let offset = hex32(offset)?;
            return Some(WalFileName::BackupHistory { tli, segno, offset });
        }
        None
    }

    /// The file name, the inverse of [`WalFileName::parse`].
    pub fn file_name(&self, seg: WalSegmentSize) -> String {
        match *self {
            WalFileName::Segment { tli, segno } => segment_file_name(tli, segno, seg),
            WalFileName::Partial { tli, segno } => {
                format!("{}.partial", segment_file_name(tli, segno, seg))
            }
            WalFileName::History(tli) => history_file_name(tli),
            WalFileName::BackupHistory { tli, segno, offset } => {
                format!(
                    "{}.{:08X}.backup",
                    segment_file_name(tli, segno, seg),
                    offset
                )
            }
        }
    }

    /// The timeline named in the file.
    pub fn timeline(&self) -> TimelineId {
        match *self {
            WalFileName::Segment { tli, .. }
            | WalFileName::Partial { tli, .. }
            | WalFileName::BackupHistory { tli, .. }
            | WalFileName::History(tli) => tli,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        assert!(WalSegmentSize::new(16 << 20).is_ok());
        assert!(WalSegmentSize::new(1 << 20).is_ok());
        assert!(WalSegmentSize::new(1 << 30).is_ok());
        assert!(WalSegmentSize::new(1 << 19).is_err());
        assert!(WalSegmentSize::new(1 << 31).is_err());
        assert!(WalSegmentSize::new(3 << 20).is_err());
        assert!(WalSegmentSize::new(0).is_err());
        assert_eq!(WalSegmentSize::DEFAULT.segments_per_xlogid(), 256);
        assert_eq!(
            WalSegmentSize::new(1 << 30).unwrap().segments_per_xlogid(),
            4
        );
    }

    #[test]
    fn lsn_segment_math() {
        let seg = WalSegmentSize::DEFAULT;
        let lsn = Lsn(0x1_0300_0028);
        assert_eq!(lsn.segment_number(seg), SegNo(0x103));
        assert_eq!(lsn.segment_offset(seg), 0x28);
        assert!(!lsn.is_segment_start(seg));
        assert!(Lsn(0x1_0300_0000).is_segment_start(seg));
    }

    #[test]
    fn next_and_end() {
        let seg = WalSegmentSize::DEFAULT;
        assert_eq!(SegNo(0).next(), SegNo(1));
        assert_eq!(SegNo(0xAFF).next(), SegNo(0xB00));
        // The end of segment 0 is 16 MiB, the start of segment 1.
        assert_eq!(SegNo(0).end_lsn(seg), Lsn(16 << 20));
        assert_eq!(SegNo(0).end_lsn(seg), SegNo(1).start_lsn(seg));
        // The last byte of a segment is inside it; its end is not.
        let last = SegNo(0x103)
            .end_lsn(seg)
            .checked_sub(Lsn(1))
            .map(Lsn)
            .unwrap();
        assert_eq!(last.segment_number(seg), SegNo(0x103));
        assert_eq!(SegNo(0x103).end_lsn(seg).segment_number(seg), SegNo(0x104));
        let big = WalSegmentSize::new(1 << 30).unwrap();
        assert_eq!(SegNo(3).end_lsn(big), Lsn(4 << 30));
    }

    #[test]
    fn names() {
        let seg = WalSegmentSize::DEFAULT;
        let segno = SegNo(0xA * 256 + 0xFE);
        assert_eq!(
            segment_file_name(TimelineId(1), segno, seg),
            "000000010000000A000000FE"
        );
        assert_eq!(segno.start_lsn(seg), Lsn(0xA_FE00_0000));
        assert_eq!(segno.end_lsn(seg), Lsn(0xA_FF00_0000));
        assert_eq!(history_file_name(TimelineId(2)), "00000002.history");
        let big = WalSegmentSize::new(1 << 30).unwrap();
        assert_eq!(
            segment_file_name(TimelineId(3), SegNo(9), big),
            "000000030000000200000001"
        );
    }

    #[test]
    fn parse_kinds() {
        let seg = WalSegmentSize::DEFAULT;
        assert_eq!(
            WalFileName::parse("000000010000000A000000FE", seg),
            Some(WalFileName::Segment {
                tli: TimelineId(1),
                segno: SegNo(0xAFE)
            })
        );
        assert_eq!(
            WalFileName::parse("000000010000000A000000FF.partial", seg),
            Some(WalFileName::Partial {
                tli: TimelineId(1),
                segno: SegNo(0xAFF)
            })
        );
        assert_eq!(
            WalFileName::parse("0000000A.history", seg),
            Some(WalFileName::History(TimelineId(10)))
        );
        assert_eq!(
            WalFileName::parse("000000010000000000000002.00000028.backup", seg),
            Some(WalFileName::BackupHistory {
                tli: TimelineId(1),
                segno: SegNo(2),
                offset: 0x28
            })
        );
    }

    #[test]
    fn parse_rejects() {
        let seg = WalSegmentSize::DEFAULT;
        for bad in [
            "000000010000000a000000fe",
            "000000010000000A000000F",
            "000000010000000A000000FE0",
            "000000010000000A00000100",
            "000000010000000A000000FE.part",
            "0000000a.history",
            "00000001.history.tmp",
            "archive_status",
            "000000010000000000000002.backup",
            "000000010000000000000002.0000002.backup",
            "00000001000000000000000é",
            "",
        ] {
            assert_eq!(WalFileName::parse(bad, seg), None, "{bad:?}");
        }
    }

    fn any_name() -> impl Strategy<Value = (WalFileName, WalSegmentSize)> {
        (20u32..=30, any::<u32>(), any::<u32>(), any::<u32>(), 0u8..4).prop_map(
            |(shift, tli, n, offset, kind)| {
                let seg = WalSegmentSize::new(1u64 << shift).unwrap();
                // Keep the segment number within what 64-bit LSNs can address.
                let segno = SegNo(u64::from(n) * seg.segments_per_xlogid() / 4);
                let tli = TimelineId(tli);
                let name = match kind {
                    0 => WalFileName::Segment { tli, segno },
                    1 => WalFileName::Partial { tli, segno },
                    2 => WalFileName::History(tli),
                    _ => WalFileName::BackupHistory { tli, segno, offset },
                };
                (name, seg)
            },
        )
    }

    proptest! {
        #[test]
        fn round_trip((name, seg) in any_name()) {
            prop_assert_eq!(WalFileName::parse(&name.file_name(seg), seg), Some(name));
        }

        #[test]
        fn segment_decomposition(v in any::<u64>(), shift in 20u32..=30) {
            let seg = WalSegmentSize::new(1u64 << shift).unwrap();
            let lsn = Lsn(v);
            let segno = lsn.segment_number(seg);
            prop_assert_eq!(segno.start_lsn(seg).0 + lsn.segment_offset(seg), v);
            // end_lsn is exclusive and is where the next segment starts; it
            // overflows u64 only for the very last segment.
            if let Some(end) = segno.0.checked_add(1).and_then(|n| n.checked_mul(seg.bytes())) {
                prop_assert!(lsn.0 < end);
                prop_assert_eq!(segno.end_lsn(seg), Lsn(end));
                prop_assert_eq!(segno.next().start_lsn(seg), Lsn(end));
                prop_assert_eq!(segno.end_lsn(seg).checked_sub(segno.start_lsn(seg)), Some(seg.bytes()));
            }
        }
    }
}
