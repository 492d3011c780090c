//! Partial uploads as deltas: the segment being filled reaches the store as small immutable
//! objects, each holding only the WAL written since the previous one.
//!
//! ```text
//! wal/000000010000000A000000FF.partial.d/00000000-0001A000   WAL bytes [0x0, 0x1A000) of the segment
//! wal/000000010000000A000000FF.partial.d/0001A000-0001C2F8   the next second's WAL
//! ```
//!
//! A delta's name gives the byte offsets within its segment that it holds, `start` inclusive
//! and `end` exclusive, as 8 uppercase hex digits (a segment is at most 1 GiB,
//! `XLogSegmentSize` limits in `src/include/access/xlog_internal.h`), so a listing of
//! [`deltas_prefix`] alone says how far the deltas reach, without reading any of them. Each
//! delta is an envelope like every object (zstd + blake3 of its own raw bytes).
//!
//! The WAL of a segment that the store holds is the run of deltas that covers it from
//! offset 0 without a hole ([`assemble`]). Deltas may overlap: after a restart the agent
//! continues from the end of that run, and a PUT that a killed process had in flight can
//! land later and cover part of the same range with the same bytes. A delta past a hole
//! counts for nothing until the hole is filled.
//!
//! Stores written before deltas hold the segment being filled as one `<segment>.partial`
//! object, WAL from the segment start, overwritten as it grew: it is read as a delta from
//! offset 0 ([`Piece`]).
//!
//! The directory-like name (`.partial.d/`, not `.partial/`) keeps deltas apart from such an
//! object of the same segment on a file system store, where one name cannot be both a file
//! and a directory.

use pgagent_protocol::{segment_file_name, SegNo, TimelineId, WalFileName, WalSegmentSize};

use crate::layout::WAL_PREFIX;

/// What follows a segment name in the key of its deltas.
pub const DELTAS_SUFFIX: &str = ".partial.d/";

/// Hex digits of each offset in a delta's name.
const OFFSET_DIGITS: usize = 8;

/// One partial upload: bytes `[start, end)` of segment `segno` of timeline `tli`, offsets in
/// bytes from the segment start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Delta {
    /// Timeline.
    pub tli: TimelineId,
    /// Segment number.
    pub segno: SegNo,
    /// Offset of its first byte in the segment.
    pub start: u64,
    /// Offset just past its last byte (`start < end <= segment size`).
    pub end: u64,
}

impl Delta {
    /// Its store key, e.g. `wal/000000010000000A000000FF.partial.d/00000000-0001A000`.
    pub fn key(&self, seg: WalSegmentSize) -> String {
        format!(
            "{}{:0w$X}-{:0w$X}",
            deltas_prefix(self.tli, self.segno, seg),
            self.start,
            self.end,
            w = OFFSET_DIGITS
        )
    }

    /// Parses a delta key for a cluster with `seg`-byte segments. `None` for any other key,
    /// for offsets out of order or past the segment size, and for a segment name impossible
    /// with `seg`.
    pub fn parse_key(key: &str, seg: WalSegmentSize) -> Option<Delta> {
        let rest = key.strip_prefix(WAL_PREFIX)?;
        let (segment, range) = rest.split_once(DELTAS_SUFFIX)?;
        let WalFileName::Segment { tli, segno } = WalFileName::parse(segment, seg)? else {
            return None;
        };
        let (start, end) = range.split_once('-')?;
        let start = offset(start)?;
        let end = offset(end)?;
        (start < end && end <= seg.bytes()).then_some(Delta {
            tli,
            segno,
            start,
            end,
        })
    }

    /// Bytes it holds.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether it holds nothing (never true of a parsed delta).
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

fn offset(hex: &str) -> Option<u64> {
    let ok = hex.len() == OFFSET_DIGITS
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    ok.then(|| u64::from_str_radix(hex, 16).ok()).flatten()
}

/// The prefix of every delta of a segment: `wal/<segment>.partial.d/`.
pub fn deltas_prefix(tli: TimelineId, segno: SegNo, seg: WalSegmentSize) -> String {
    format!(
        "{WAL_PREFIX}{}{DELTAS_SUFFIX}",
        segment_file_name(tli, segno, seg)
    )
}

/// A key that sorts after every delta of the segment and before the next WAL object of the
/// store: `after` for [`crate::object_store::ObjectStore::list_after`] when looking past a segment's
/// deltas (`'0'` follows `'/'` in byte order).
pub fn after_deltas(tli: TimelineId, segno: SegNo, seg: WalSegmentSize) -> String {
    let prefix = deltas_prefix(tli, segno, seg);
    format!("{}0", prefix.trim_end_matches('/'))
}

/// A stored object holding WAL of one segment: a delta, or a `.partial` object written
/// before deltas (WAL from offset 0, `end` its raw length, read from its header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Store key.
    pub key: String,
    /// Offset of its first byte in the segment.
    pub start: u64,
    /// Offset just past its last byte.
    pub end: u64,
}

impl Piece {
    /// The piece a delta is.
    pub fn delta(d: &Delta, seg: WalSegmentSize) -> Piece {
        Piece {
            key: d.key(seg),
            start: d.start,
            end: d.end,
        }
    }
}

/// Where one range of the assembled segment comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// The piece.
    pub piece: Piece,
    /// First segment offset taken from it (`piece.start <= from`).
    pub from: u64,
    /// Offset just past the last one taken (`to <= piece.end`).
    pub to: u64,
}

/// How the WAL of a segment is put together from its pieces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assembly {
    /// End of the WAL the pieces hold without a hole from offset 0 (0: none).
    pub end: u64,
    /// The pieces to read, in segment order, and the range each one gives. Consecutive
    /// takes meet exactly (`takes[i].to == takes[i + 1].from`).
    pub takes: Vec<Take>,
    /// Whether some piece starts past `end`: the store holds WAL beyond a hole, which is
    /// not served until the hole is filled.
    pub beyond_hole: bool,
}

/// The longest run of WAL the pieces hold from offset 0 without a hole, using as few pieces
/// as a greedy walk finds: from each position, the piece that covers it and reaches
/// furthest. Pure; the order of `pieces` does not matter.
pub fn assemble(pieces: &[Piece]) -> Assembly {
    let mut out = Assembly::default();
    loop {
        let best = pieces
            .iter()
            .filter(|p| p.start <= out.end && p.end > out.end)
            .max_by(|a, b| a.end.cmp(&b.end).then_with(|| b.key.cmp(&a.key)));
        let Some(p) = best else { break };
        out.takes.push(Take {
            piece: p.clone(),
            from: out.end,
            to: p.end,
        });
        out.end = p.end;
    }
    out.beyond_hole = pieces.iter().any(|p| p.start > out.end);
    out
}

/// The first segment offset at which pieces `a` and `b` hold different bytes, within the
/// range both cover; `None` when they agree there or do not overlap. `a_raw` and `b_raw` are
/// their raw (opened, verified) contents, as long as their ranges.
///
/// Every piece of a segment is WAL the server wrote, so two pieces covering the same bytes
/// must hold the same bytes there; a difference is corruption (or a foreign writer), and an
/// assembly across it would be a silent mix of the two.
pub fn overlap_mismatch(a: &Piece, a_raw: &[u8], b: &Piece, b_raw: &[u8]) -> Option<u64> {
    let from = a.start.max(b.start);
    let to = a.end.min(b.end);
    if from >= to {
        return None;
    }
    let range = |p: &Piece, raw: &'_ [u8]| -> Option<Vec<u8>> {
        let lo = usize::try_from(from - p.start).ok()?;
        let hi = usize::try_from(to - p.start).ok()?;
        raw.get(lo..hi).map(<[u8]>::to_vec)
    };
    match (range(a, a_raw), range(b, b_raw)) {
        (Some(x), Some(y)) => x
            .iter()
            .zip(&y)
            .position(|(l, r)| l != r)
            .map(|i| from + i as u64),
        // A raw content shorter than its range: the first byte one of them lacks.
        _ => {
            let lacks = (a.start + a_raw.len() as u64).min(b.start + b_raw.len() as u64);
            Some(lacks.max(from))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    fn piece(start: u64, end: u64) -> Piece {
        Piece {
            key: format!("{start}-{end}"),
            start,
            end,
        }
    }

    fn ranges(a: &Assembly) -> Vec<(u64, u64, String)> {
        a.takes
            .iter()
            .map(|t| (t.from, t.to, t.piece.key.clone()))
            .collect()
    }

    #[test]
    fn keys_round_trip_and_sort_by_offset() {
        let d = Delta {
            tli: TimelineId(1),
            segno: SegNo(0xAFF),
            start: 0,
            end: 0x1A000,
        };
        let key = d.key(seg());
        assert_eq!(
            key,
            "wal/000000010000000A000000FF.partial.d/00000000-0001A000"
        );
        crate::layout::validate_key(&key).unwrap();
        assert_eq!(Delta::parse_key(&key, seg()), Some(d));
        let later = Delta {
            start: 0x1A000,
            end: 0x1C2F8,
            ..d
        };
        assert!(later.key(seg()) > key);
        assert!(key.starts_with(&deltas_prefix(d.tli, d.segno, seg())));
        let after = after_deltas(d.tli, d.segno, seg());
        crate::layout::validate_prefix(&after).unwrap();
        assert!(after > later.key(seg()));
        assert!(after.as_str() < "wal/000000010000000B00000000");
        assert!(after.as_str() < "wal/00000002.history");
    }

    #[test]
    fn other_keys_are_not_deltas() {
        for key in [
            "wal/000000010000000A000000FF",
            "wal/000000010000000A000000FF.partial",
            "wal/000000010000000A000000FF.partial.d/",
            "wal/000000010000000A000000FF.partial.d/00000000",
            "wal/000000010000000A000000FF.partial.d/00000000-0001a000",
            "wal/000000010000000A000000FF.partial.d/00001000-00001000",
            "wal/000000010000000A000000FF.partial.d/00002000-00001000",
            "wal/000000010000000A000000FF.partial.d/00000000-01000001",
            "wal/000000010000000A000000FF.partial.d/+0000000-00001000",
            "wal/000000010000000A000000FF.partial.d/00000000-00001000/x",
            "wal/00000002.history.partial.d/00000000-00001000",
            "wal/000000010000000A00000100.partial.d/00000000-00001000",
            "chunks/000000010000000A000000FF.partial.d/00000000-00001000",
        ] {
            assert_eq!(Delta::parse_key(key, seg()), None, "{key}");
        }
        let whole = "wal/000000010000000A000000FF.partial.d/00000000-01000000";
        assert_eq!(Delta::parse_key(whole, seg()).unwrap().len(), 16 << 20);
    }

    #[test]
    fn consecutive_deltas_assemble_in_order() {
        let a = assemble(&[piece(300, 450), piece(0, 100), piece(100, 300)]);
        assert_eq!(a.end, 450);
        assert!(!a.beyond_hole);
        assert_eq!(
            ranges(&a),
            [
                (0, 100, "0-100".into()),
                (100, 300, "100-300".into()),
                (300, 450, "300-450".into())
            ]
        );
    }

    #[test]
    fn a_hole_ends_the_run() {
        let a = assemble(&[piece(0, 100), piece(200, 300)]);
        assert_eq!(a.end, 100);
        assert!(a.beyond_hole);
        assert_eq!(ranges(&a), [(0, 100, "0-100".into())]);
        let none = assemble(&[piece(100, 300)]);
        assert_eq!(none.end, 0);
        assert!(none.takes.is_empty());
        assert!(none.beyond_hole);
        assert_eq!(assemble(&[]), Assembly::default());
    }

    #[test]
    fn overlapping_pieces_must_hold_the_same_bytes() {
        let wal: Vec<u8> = (0..400u32).map(|i| (i % 251) as u8).collect();
        let a = piece(0, 250);
        let b = piece(200, 400);
        let a_raw = &wal[0..250];
        let mut b_raw = wal[200..400].to_vec();
        assert_eq!(overlap_mismatch(&a, a_raw, &b, &b_raw), None);
        assert_eq!(overlap_mismatch(&b, &b_raw, &a, a_raw), None);
        // A byte that differs inside the overlap is found, at its segment offset; one past
        // the overlap is none of this check's business.
        b_raw[30] ^= 1;
        assert_eq!(overlap_mismatch(&a, a_raw, &b, &b_raw), Some(230));
        b_raw[30] ^= 1;
        b_raw[150] ^= 1;
        assert_eq!(overlap_mismatch(&a, a_raw, &b, &b_raw), None);
        // Pieces that only meet do not overlap.
        assert_eq!(
            overlap_mismatch(&piece(0, 100), &wal[..100], &piece(100, 200), &[9; 100]),
            None
        );
        // A content shorter than its name says is a mismatch too.
        assert_eq!(overlap_mismatch(&a, &a_raw[..210], &b, &b_raw), Some(210));
    }

    #[test]
    fn overlaps_take_each_byte_once_from_the_piece_reaching_furthest() {
        // A restart continued at 200 while a killed process's PUT of 200-260 landed late;
        // an older whole-prefix .partial holds 0-250.
        let a = assemble(&[
            piece(0, 100),
            piece(100, 200),
            piece(200, 260),
            piece(200, 400),
            piece(0, 250),
            piece(400, 410),
        ]);
        assert_eq!(a.end, 410);
        assert_eq!(
            ranges(&a),
            [
                (0, 250, "0-250".into()),
                (250, 400, "200-400".into()),
                (400, 410, "400-410".into())
            ]
        );
    }
}
