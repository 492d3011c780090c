//! The pure part of the bucket watcher: which WAL objects a listing of `wal/` holds, and how
//! far the WAL in the bucket reaches contiguously from a given segment.
//!
//! The contiguous end (the "frontier") follows DESIGN.md "Store layout" and the README's:
//! complete segments `wal/<24 hex>`, then the pieces of the first missing one, its deltas
//! (`wal/<24 hex>.partial.d/<start>-<end>`) and, in a bucket written before deltas, its
//! `.partial`, assembled from its start up to the first hole
//! ([`pgagent_storage::deltas::assemble`]): how much of that segment the bucket holds.

use std::collections::{BTreeMap, BTreeSet};

use pgagent_protocol::{Lsn, SegNo, TimelineId, WalFileName, WalSegmentSize};
use pgagent_storage::deltas::{assemble, Delta, Piece};
use pgagent_storage::layout::wal_file_name;

/// A WAL object key, classified: `None` for keys outside `wal/`, history files, backup
/// history files and names that are not PostgreSQL WAL file names for `seg`.
pub fn parse_wal_key(key: &str, seg: WalSegmentSize) -> Option<WalFileName> {
    match WalFileName::parse(wal_file_name(key)?, seg)? {
        name @ (WalFileName::Segment { .. } | WalFileName::Partial { .. }) => Some(name),
        _ => None,
    }
}

/// The WAL objects of one timeline in a listing of `wal/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalListing {
    /// Segments present as complete objects.
    pub complete: BTreeSet<SegNo>,
    /// Segments present as `.partial` objects, with their keys.
    pub partials: BTreeMap<SegNo, String>,
    /// Segments present as deltas, each segment's in key order.
    pub deltas: BTreeMap<SegNo, Vec<Delta>>,
}

impl WalListing {
    /// Sorts the keys of a listing into complete segments, `.partial` objects and deltas of
    /// `tli`; other keys and timelines are left out.
    pub fn from_keys<'a>(
        keys: impl IntoIterator<Item = &'a str>,
        tli: TimelineId,
        seg: WalSegmentSize,
    ) -> WalListing {
        let mut listing = WalListing::default();
        for key in keys {
            if let Some(d) = Delta::parse_key(key, seg).filter(|d| d.tli == tli) {
                listing.deltas.entry(d.segno).or_default().push(d);
                continue;
            }
            match parse_wal_key(key, seg) {
                Some(WalFileName::Segment { tli: t, segno }) if t == tli => {
                    listing.complete.insert(segno);
                }
                Some(WalFileName::Partial { tli: t, segno }) if t == tli => {
                    listing.partials.insert(segno, key.to_owned());
                }
                _ => {}
            }
        }
        listing
    }

    /// The lowest segment present, complete, as `.partial` or as deltas.
    pub fn first_segment(&self) -> Option<SegNo> {
        let complete = self.complete.first().copied();
        let partial = self.partials.keys().next().copied();
        let deltas = self.deltas.keys().next().copied();
        [complete, partial, deltas].into_iter().flatten().min()
    }

    /// How far the pieces of `segno` reach from its start without a hole: its deltas and,
    /// when `legacy_len` gives the raw length of its `.partial`, that object.
    pub fn assembled_end(&self, segno: SegNo, legacy_len: Option<u64>, seg: WalSegmentSize) -> u64 {
        let legacy = self
            .partials
            .get(&segno)
            .zip(legacy_len)
            .map(|(key, end)| Piece {
                key: key.clone(),
                start: 0,
                end,
            });
        let deltas = self.deltas.get(&segno).into_iter().flatten();
        let pieces: Vec<Piece> = legacy
            .into_iter()
            .chain(deltas.map(|d| Piece::delta(d, seg)))
            .collect();
        assemble(&pieces).end
    }

    /// The segment whose pieces decide the frontier when the walk starts at `from`: the
    /// first segment at or after `from` without a complete object.
    pub fn first_incomplete(&self, from: SegNo) -> SegNo {
        let mut next = from;
        while self.complete.contains(&next) {
            next = next.next();
        }
        next
    }
}

/// End of the WAL the bucket holds contiguously from the start of segment `from`: walk the
/// complete segments from `from` on; at the first missing one, add how far its pieces
/// reach when `partial_len` knows it (`partial_len` maps a segment to the assembled end of
/// its pieces, [`WalListing::assembled_end`]). The result is at least the start of `from`.
pub fn contiguous_end(
    listing: &WalListing,
    from: SegNo,
    partial_len: &BTreeMap<SegNo, u64>,
    seg: WalSegmentSize,
) -> Lsn {
    let next = listing.first_incomplete(from);
    let len = partial_len
        .get(&next)
        .copied()
        .unwrap_or(0)
        .min(seg.bytes());
    next.start_lsn(seg) + len
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(SEG).unwrap()
    }

    fn listing(keys: &[&str]) -> WalListing {
        WalListing::from_keys(keys.iter().copied(), TimelineId(1), seg())
    }

    #[test]
    fn keys_are_classified_by_postgresql_names() {
        let s = seg();
        assert_eq!(
            parse_wal_key("wal/000000010000000A000000FE", s),
            Some(WalFileName::Segment {
                tli: TimelineId(1),
                segno: SegNo(0xA * 256 + 0xFE)
            })
        );
        assert_eq!(
            parse_wal_key("wal/000000010000000A000000FF.partial", s),
            Some(WalFileName::Partial {
                tli: TimelineId(1),
                segno: SegNo(0xA * 256 + 0xFF)
            })
        );
        for other in [
            "wal/00000002.history",
            "wal/000000010000000000000002.00000028.backup",
            "wal/000000010000000a000000fe",
            "wal/00000001000000000000000",
            "wal/000000010000000000000100",
            "chunks/ab/000000010000000000000001",
            "000000010000000000000001",
            "wal/x/000000010000000000000001",
            "cluster.json",
        ] {
            assert_eq!(parse_wal_key(other, s), None, "{other}");
        }
    }

    #[test]
    fn a_listing_keeps_one_timeline() {
        let l = listing(&[
            "cluster.json",
            "wal/000000010000000000000001",
            "wal/000000010000000000000002",
            "wal/000000010000000000000003.partial",
            "wal/000000020000000000000003",
            "wal/000000020000000000000004.partial",
            "wal/00000002.history",
        ]);
        assert_eq!(
            l.complete.iter().copied().collect::<Vec<_>>(),
            [SegNo(1), SegNo(2)]
        );
        assert_eq!(
            l.partials.get(&SegNo(3)).map(String::as_str),
            Some("wal/000000010000000000000003.partial")
        );
        assert_eq!(l.partials.len(), 1);
        assert_eq!(l.first_segment(), Some(SegNo(1)));
        assert_eq!(WalListing::default().first_segment(), None);
        assert_eq!(
            listing(&["wal/000000010000000000000005.partial"]).first_segment(),
            Some(SegNo(5))
        );
    }

    #[test]
    fn the_frontier_is_the_complete_run_then_the_partial() {
        let s = seg();
        let l = listing(&[
            "wal/000000010000000000000001",
            "wal/000000010000000000000002",
            "wal/000000010000000000000003.partial",
        ]);
        let lens = BTreeMap::from([(SegNo(3), 1000)]);
        assert_eq!(contiguous_end(&l, SegNo(1), &lens, s), Lsn(3 * SEG + 1000));
        assert_eq!(contiguous_end(&l, SegNo(2), &lens, s), Lsn(3 * SEG + 1000));
        assert_eq!(contiguous_end(&l, SegNo(3), &lens, s), Lsn(3 * SEG + 1000));
        // A walk that starts past everything the bucket holds ends where it starts.
        assert_eq!(contiguous_end(&l, SegNo(7), &lens, s), Lsn(7 * SEG));
        // Without the partial's length (not read, or gone), only whole segments count.
        assert_eq!(
            contiguous_end(&l, SegNo(1), &BTreeMap::new(), s),
            Lsn(3 * SEG)
        );
    }

    #[test]
    fn a_gap_stops_the_walk() {
        let s = seg();
        let l = listing(&[
            "wal/000000010000000000000001",
            "wal/000000010000000000000003",
            "wal/000000010000000000000004.partial",
        ]);
        let lens = BTreeMap::from([(SegNo(4), 10)]);
        assert_eq!(contiguous_end(&l, SegNo(1), &lens, s), Lsn(2 * SEG));
        assert_eq!(contiguous_end(&l, SegNo(3), &lens, s), Lsn(4 * SEG + 10));
        assert_eq!(l.first_incomplete(SegNo(1)), SegNo(2));
    }

    #[test]
    fn a_leftover_partial_of_a_complete_segment_does_not_count() {
        let s = seg();
        // The .partial of segment 1 outlived its complete object (its removal is best
        // effort); the frontier comes from segment 2's.
        let l = listing(&[
            "wal/000000010000000000000001",
            "wal/000000010000000000000001.partial",
            "wal/000000010000000000000002.partial",
        ]);
        let lens = BTreeMap::from([(SegNo(1), 500), (SegNo(2), 20)]);
        assert_eq!(contiguous_end(&l, SegNo(1), &lens, s), Lsn(2 * SEG + 20));
    }

    #[test]
    fn deltas_are_listed_and_reach_their_assembled_end() {
        let s = seg();
        let l = listing(&[
            "wal/000000010000000000000002",
            "wal/000000010000000000000003.partial",
            "wal/000000010000000000000003.partial.d/00001000-00002000",
            "wal/000000010000000000000003.partial.d/00002000-00003000",
            "wal/000000010000000000000003.partial.d/00004000-00005000",
            "wal/000000020000000000000003.partial.d/00000000-00009000",
            "wal/000000010000000000000004.partial.d/00000000-00000100",
        ]);
        assert_eq!(l.deltas.len(), 2, "timeline 1 only");
        assert_eq!(l.deltas[&SegNo(3)].len(), 3);
        assert_eq!(l.complete.len(), 1, "deltas are not segments");
        // The .partial holds 0x1800 bytes: continued by the deltas, up to the hole.
        assert_eq!(l.assembled_end(SegNo(3), Some(0x1800), s), 0x3000);
        // Its length unknown: the deltas start past a hole at 0.
        assert_eq!(l.assembled_end(SegNo(3), None, s), 0);
        assert_eq!(l.assembled_end(SegNo(4), None, s), 0x100);
        let lens = BTreeMap::from([(SegNo(3), 0x3000)]);
        assert_eq!(
            contiguous_end(&l, SegNo(2), &lens, s),
            Lsn(3 * SEG + 0x3000)
        );
        assert_eq!(
            listing(&["wal/000000010000000000000007.partial.d/00000000-00000100"]).first_segment(),
            Some(SegNo(7))
        );
    }

    #[test]
    fn a_partial_never_reaches_past_its_segment() {
        let s = seg();
        let l = listing(&["wal/000000010000000000000002.partial"]);
        let lens = BTreeMap::from([(SegNo(2), SEG + 5)]);
        assert_eq!(contiguous_end(&l, SegNo(2), &lens, s), Lsn(3 * SEG));
    }
}
