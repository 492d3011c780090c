//! WAL page headers.
//!
//! Every WAL page starts with `XLogPageHeaderData`; the first page of a
//! segment carries the long form `XLogLongPageHeaderData`, which also names
//! the cluster (`src/include/access/xlog_internal.h`). Fields are stored in
//! the server's native byte order; every platform PostgreSQL ships on for
//! this project (x86-64, aarch64) is little-endian, so that is what is read.
//!
//! Layout of the long header (40 bytes, `SizeOfXLogLongPHD`):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 2 | `xlp_magic` |
//! | 2 | 2 | `xlp_info` |
//! | 4 | 4 | `xlp_tli` |
//! | 8 | 8 | `xlp_pageaddr` |
//! | 16 | 4 | `xlp_rem_len` |
//! | 20 | 4 | padding (alignment of the next `uint64`) |
//! | 24 | 8 | `xlp_sysid` |
//! | 32 | 4 | `xlp_seg_size` |
//! | 36 | 4 | `xlp_xlog_blcksz` |

use crate::wire::lsn::Lsn;
use crate::wire::timeline::TimelineId;

/// `xlp_info` flag: the first record on the page continues from the previous page.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `xlp_info` flag: this page has the long header.
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `xlp_info` flag: backup blocks starting on this page are optional.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// All defined `xlp_info` bits.
pub const XLP_ALL_FLAGS: u16 = 0x0007;
/// Size of the long page header in bytes (`SizeOfXLogLongPHD`).
pub const SIZE_OF_XLOG_LONG_PHD: usize = 40;

/// `XLOG_PAGE_MAGIC` per PostgreSQL major version, from
/// `src/include/access/xlog_internal.h` of each release branch.
const PAGE_MAGICS: &[(u16, u32)] = &[
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// The PostgreSQL major version (13, 14, … 18) that writes WAL pages with
/// this `XLOG_PAGE_MAGIC`, or `None` for an unknown magic.
pub fn pg_major_for_magic(magic: u16) -> Option<u32> {
    PAGE_MAGICS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, v)| *v)
}

/// The long page header at the start of every WAL segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XLogLongPageHeader {
    /// `XLOG_PAGE_MAGIC` of the server version that wrote the page.
    pub magic: u16,
    /// Flag bits (`XLP_*`).
    pub info: u16,
    /// Timeline of the first record on the page.
    pub tli: TimelineId,
    /// LSN of the first byte of this page.
    pub page_addr: Lsn,
    /// Bytes of a record continued from the previous page, 0 if none.
    pub rem_len: u32,
    /// The cluster's system identifier (as `IDENTIFY_SYSTEM` reports it).
    pub system_identifier: u64,
    /// Segment size in bytes.
    pub seg_size: u32,
    /// WAL block (page) size in bytes, normally 8192.
    pub xlog_blcksz: u32,
}

/// Bytes that are not a long WAL page header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// Fewer than 40 bytes.
    #[error("WAL page header truncated: {0} bytes, need 40")]
    Truncated(usize),
    /// `xlp_info` lacks `XLP_LONG_HEADER`: not the first page of a segment.
    #[error("WAL page has no long header (xlp_info {0:#06x})")]
    NotLongHeader(u16),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    (u64::from(u32_at(b, at + 4)) << 32) | u64::from(u32_at(b, at))
}

impl XLogLongPageHeader {
    /// Decodes the first 40 bytes of a segment. Extra bytes are ignored.
    /// The magic is not checked here; see [`pg_major_for_magic`].
    pub fn parse(bytes: &[u8]) -> Result<XLogLongPageHeader, PageError> {
        if bytes.len() < SIZE_OF_XLOG_LONG_PHD {
            return Err(PageError::Truncated(bytes.len()));
        }
        let info = u16_at(bytes, 2);
        if info & XLP_LONG_HEADER == 0 {
            return Err(PageError::NotLongHeader(info));
        }
        Ok(XLogLongPageHeader {
            magic: u16_at(bytes, 0),
            info,
            tli: TimelineId(u32_at(bytes, 4)),
            page_addr: Lsn(u64_at(bytes, 8)),
            rem_len: u32_at(bytes, 16),
            system_identifier: u64_at(bytes, 24),
            seg_size: u32_at(bytes, 32),
            xlog_blcksz: u32_at(bytes, 36),
        })
    }

    /// The PostgreSQL major version that wrote this page, if known.
    pub fn pg_major(&self) -> Option<u32> {
        pg_major_for_magic(self.magic)
    }

    /// True when the first record on the page continues from the previous segment.
    pub fn is_continuation(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::segment::WalSegmentSize;

    /// First 8 KiB of segment `000000010000000000000001` right after
    /// `initdb` of PostgreSQL 15 (system identifier 7710529744944742155).
    const PG15_SEGMENT_HEAD: &[u8] =
        include_bytes!("../../tests/fixtures/pg15_000000010000000000000001.head");

    #[test]
    fn parse_pg15_segment() {
        let h = XLogLongPageHeader::parse(PG15_SEGMENT_HEAD).unwrap();
        assert_eq!(h.magic, 0xD110);
        assert_eq!(h.pg_major(), Some(15));
        assert_eq!(h.info & XLP_LONG_HEADER, XLP_LONG_HEADER);
        assert!(!h.is_continuation());
        assert_eq!(h.tli, TimelineId(1));
        assert_eq!(h.page_addr, Lsn(0x100_0000));
        assert_eq!(h.rem_len, 0);
        assert_eq!(h.system_identifier, 7_710_529_744_944_742_155);
        assert_eq!(u64::from(h.seg_size), WalSegmentSize::DEFAULT.bytes());
        assert_eq!(h.xlog_blcksz, 8192);
    }

    #[test]
    fn constructed_bytes() {
        let mut b = vec![0u8; 40];
        b[0..2].copy_from_slice(&0xD116u16.to_le_bytes());
        b[2..4].copy_from_slice(&(XLP_LONG_HEADER | XLP_FIRST_IS_CONTRECORD).to_le_bytes());
        b[4..8].copy_from_slice(&7u32.to_le_bytes());
        b[8..16].copy_from_slice(&0x2_4000_0000u64.to_le_bytes());
        b[16..20].copy_from_slice(&123u32.to_le_bytes());
        b[20..24].copy_from_slice(&[0xAA; 4]);
        b[24..32].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        b[32..36].copy_from_slice(&(1u32 << 30).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let h = XLogLongPageHeader::parse(&b).unwrap();
        assert_eq!(h.pg_major(), Some(17));
        assert!(h.is_continuation());
        assert_eq!(h.tli, TimelineId(7));
        assert_eq!(h.page_addr, Lsn(0x2_4000_0000));
        assert_eq!(h.rem_len, 123);
        assert_eq!(h.system_identifier, 0x0102_0304_0506_0708);
        assert_eq!(h.seg_size, 1 << 30);
    }

    #[test]
    fn rejects() {
        assert_eq!(
            XLogLongPageHeader::parse(&PG15_SEGMENT_HEAD[..39]),
            Err(PageError::Truncated(39))
        );
        let mut short = PG15_SEGMENT_HEAD[..40].to_vec();
        short[2] &= !(XLP_LONG_HEADER as u8);
        assert!(matches!(
            XLogLongPageHeader::parse(&short),
            Err(PageError::NotLongHeader(_))
        ));
    }

    #[test]
    fn magics() {
        assert_eq!(pg_major_for_magic(0xD110), Some(15));
        assert_eq!(pg_major_for_magic(0xD113), Some(16));
        assert_eq!(pg_major_for_magic(0xD116), Some(17));
        assert_eq!(pg_major_for_magic(0xD118), Some(18));
        assert_eq!(pg_major_for_magic(0x1234), None);
    }
}
