//! The WAL a store holds, from one listing of `wal/` (DESIGN.md "Store layout", the README's
//! store layout): complete segments, the pieces of segments still being filled (deltas, and
//! `.partial` objects of stores written before deltas, [`pgagent_storage::deltas`]),
//! timeline and backup history files. Pure, except [`legacy_lengths`], which reads the
//! headers of the few `.partial` objects whose length a listing does not give.
//!
//! `pgagent list`, `verify` and `prune` share it, so that they agree on what a piece is and
//! how far a segment held as pieces reaches.

use std::collections::{BTreeMap, BTreeSet};

use pgagent_protocol::{Lsn, SegNo, TimelineId, WalFileName, WalSegmentSize};
use pgagent_storage::deltas::{assemble, Assembly, Delta, Piece};
use pgagent_storage::envelope::{Header, MAX_HEADER_LEN};
use pgagent_storage::layout::{wal_file_name, WAL_PREFIX};
use pgagent_storage::{ObjectMeta, ObjectStore};

/// A segment of a timeline.
pub type SegmentId = (TimelineId, SegNo);

/// What one key under `wal/` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalKey {
    /// A complete segment, `wal/<segment>`.
    Segment(SegmentId),
    /// A `.partial` object written before deltas: WAL from the segment start.
    LegacyPartial(SegmentId),
    /// A delta of the segment being filled.
    Delta(Delta),
    /// A timeline history file.
    History(TimelineId),
    /// A backup history file (`<segment>.<offset>.backup`) in that segment.
    BackupHistory(SegmentId),
}

impl WalKey {
    /// Classifies a store key for a cluster of `seg`-byte segments; `None` for keys outside
    /// `wal/` and names that are none of the above.
    pub fn parse(key: &str, seg: WalSegmentSize) -> Option<WalKey> {
        if let Some(d) = Delta::parse_key(key, seg) {
            return Some(WalKey::Delta(d));
        }
        Some(match WalFileName::parse(wal_file_name(key)?, seg)? {
            WalFileName::Segment { tli, segno } => WalKey::Segment((tli, segno)),
            WalFileName::Partial { tli, segno } => WalKey::LegacyPartial((tli, segno)),
            WalFileName::History(tli) => WalKey::History(tli),
            WalFileName::BackupHistory { tli, segno, .. } => WalKey::BackupHistory((tli, segno)),
        })
    }

    /// The segment it belongs to (`None` for a history file).
    pub fn segment(&self) -> Option<SegmentId> {
        match self {
            WalKey::Segment(id) | WalKey::LegacyPartial(id) | WalKey::BackupHistory(id) => {
                Some(*id)
            }
            WalKey::Delta(d) => Some((d.tli, d.segno)),
            WalKey::History(_) => None,
        }
    }
}

/// The pieces one segment is held as: a legacy `.partial` object and deltas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentPieces {
    /// Key of its `.partial` object, in a store written before deltas.
    pub legacy: Option<String>,
    /// Its deltas, in key order.
    pub deltas: Vec<Delta>,
}

impl SegmentPieces {
    /// Number of objects.
    pub fn count(&self) -> usize {
        self.deltas.len() + usize::from(self.legacy.is_some())
    }

    /// Every key, the `.partial` first.
    pub fn keys(&self, seg: WalSegmentSize) -> Vec<String> {
        let deltas = self.deltas.iter().map(|d| d.key(seg));
        self.legacy.iter().cloned().chain(deltas).collect()
    }

    /// How the pieces put the segment together; `legacy_len` is the raw length of the
    /// `.partial` object (its header's), `None` when it is not known: that piece then
    /// counts for nothing.
    pub fn assemble(&self, legacy_len: Option<u64>, seg: WalSegmentSize) -> Assembly {
        let legacy = self.legacy.iter().zip(legacy_len).map(|(key, len)| Piece {
            key: key.clone(),
            start: 0,
            end: len,
        });
        let deltas = self.deltas.iter().map(|d| Piece::delta(d, seg));
        assemble(&legacy.chain(deltas).collect::<Vec<_>>())
    }
}

/// A segment held only as pieces (no complete object), as far as they reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialSegment {
    /// Bytes of WAL from the segment start without a hole ([`Assembly::end`]).
    pub end: u64,
    /// Whether some delta starts past `end` (WAL beyond a hole).
    pub beyond_hole: bool,
    /// Deltas it has.
    pub deltas: usize,
    /// Whether a legacy `.partial` object is one of its pieces.
    pub legacy: bool,
}

impl PartialSegment {
    /// LSN just past its WAL held without a hole.
    pub fn end_lsn(&self, segno: SegNo, seg: WalSegmentSize) -> Lsn {
        segno.start_lsn(seg) + self.end
    }
}

/// One listing of `wal/`, sorted by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalIndex {
    /// Complete segments, with their stored size in bytes.
    pub complete: BTreeMap<SegmentId, u64>,
    /// Pieces of every segment that has some, whether or not it is also complete.
    pub pieces: BTreeMap<SegmentId, SegmentPieces>,
    /// Timelines with a history file.
    pub histories: BTreeSet<TimelineId>,
    /// Backup history files: key and segment.
    pub backup_histories: Vec<(String, SegmentId)>,
    /// Keys under `wal/` that are no WAL object of this cluster's segment size.
    pub unknown: Vec<String>,
}

impl WalIndex {
    /// Sorts a listing of `wal/` (other keys are ignored).
    pub fn from_listing(objects: &[ObjectMeta], seg: WalSegmentSize) -> WalIndex {
        let mut index = WalIndex::default();
        for o in objects.iter().filter(|o| o.key.starts_with(WAL_PREFIX)) {
            match WalKey::parse(&o.key, seg) {
                Some(WalKey::Segment(id)) => {
                    index.complete.insert(id, o.size);
                }
                Some(WalKey::LegacyPartial(id)) => {
                    index.pieces.entry(id).or_default().legacy = Some(o.key.clone());
                }
                Some(WalKey::Delta(d)) => {
                    index
                        .pieces
                        .entry((d.tli, d.segno))
                        .or_default()
                        .deltas
                        .push(d);
                }
                Some(WalKey::History(t)) => {
                    index.histories.insert(t);
                }
                Some(WalKey::BackupHistory(id)) => index.backup_histories.push((o.key.clone(), id)),
                None => index.unknown.push(o.key.clone()),
            }
        }
        for p in index.pieces.values_mut() {
            p.deltas.sort();
        }
        index
    }

    /// Segments held only as pieces: the segment being filled, or leftovers of an agent
    /// that stopped before completing them.
    pub fn incomplete(&self) -> impl Iterator<Item = (&SegmentId, &SegmentPieces)> {
        self.pieces
            .iter()
            .filter(|(id, _)| !self.complete.contains_key(id))
    }

    /// The `.partial` objects of segments held only as pieces: their raw length (in their
    /// header) is needed to assemble them.
    pub fn legacy_to_read(&self) -> Vec<(SegmentId, String)> {
        self.incomplete()
            .filter_map(|(id, p)| p.legacy.clone().map(|k| (*id, k)))
            .collect()
    }

    /// The segments held only as pieces, assembled; `legacy_len` gives the raw length of
    /// their `.partial` objects ([`legacy_lengths`]).
    pub fn partial_segments(
        &self,
        legacy_len: &BTreeMap<SegmentId, u64>,
        seg: WalSegmentSize,
    ) -> BTreeMap<SegmentId, PartialSegment> {
        self.incomplete()
            .map(|(id, p)| {
                let a = p.assemble(legacy_len.get(id).copied(), seg);
                let info = PartialSegment {
                    end: a.end,
                    beyond_hole: a.beyond_hole,
                    deltas: p.deltas.len(),
                    legacy: p.legacy.is_some(),
                };
                (*id, info)
            })
            .collect()
    }

    /// The end of the newest WAL in the store: on the highest timeline that holds WAL, the
    /// end of its last complete segment or, when later, of a segment held only as pieces
    /// (`partials`, from [`WalIndex::partial_segments`]). `None` for a store without WAL.
    pub fn newest_end(
        &self,
        partials: &BTreeMap<SegmentId, PartialSegment>,
        seg: WalSegmentSize,
    ) -> Option<(TimelineId, Lsn)> {
        let complete = self
            .complete
            .keys()
            .map(|&(tli, segno)| (tli, segno.end_lsn(seg)));
        let partial = partials
            .iter()
            .filter(|(_, p)| p.end > 0)
            .map(|(&(tli, segno), p)| (tli, p.end_lsn(segno, seg)));
        complete.chain(partial).max()
    }

    /// Keys of the pieces of segments whose complete object is in the store: nothing reads
    /// them any more (`pgagent prune` deletes them).
    pub fn superseded_pieces(&self, seg: WalSegmentSize) -> Vec<String> {
        self.pieces
            .iter()
            .filter(|(id, _)| self.complete.contains_key(id))
            .flat_map(|(_, p)| p.keys(seg))
            .collect()
    }
}

/// Reads the header of each `.partial` object in `keys` (one small ranged GET each) for its
/// raw length. Returns the lengths, and `(key, why)` for each header that does not parse or
/// declares more than a segment of `seg` bytes (such an object counts for nothing). An
/// object deleted since the listing is left out. The header is not verified here (that takes
/// the whole object): what reports it uses is for display, and what seeds the agent's
/// resume verifies every piece (`pipeline::continuity`).
///
/// Errors: the store's, other than not found.
pub async fn legacy_lengths(
    store: &dyn ObjectStore,
    keys: &[(SegmentId, String)],
    seg: WalSegmentSize,
) -> anyhow::Result<(BTreeMap<SegmentId, u64>, Vec<(String, String)>)> {
    let mut lens = BTreeMap::new();
    let mut bad = Vec::new();
    for (id, key) in keys {
        let head = match store.get_range(key, 0, MAX_HEADER_LEN as u64).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("read {key}"))),
        };
        match Header::parse(&head) {
            Ok(h) if h.raw_len <= seg.bytes() => {
                lens.insert(*id, h.raw_len);
            }
            Ok(h) => bad.push((
                key.clone(),
                format!(
                    "{key}: its header declares {} bytes, more than a segment ({})",
                    h.raw_len,
                    seg.bytes()
                ),
            )),
            Err(e) => bad.push((key.clone(), e.with_key(key).to_string())),
        }
    }
    Ok((lens, bad))
}

/// A listing of `keys`, each of `size` bytes and without a modification time: input for
/// the tests of the modules that read a listing of `wal/`.
#[cfg(test)]
pub fn listing_of<K: Into<String>>(
    keys: impl IntoIterator<Item = K>,
    size: u64,
) -> Vec<ObjectMeta> {
    keys.into_iter()
        .map(|k| ObjectMeta {
            key: k.into(),
            size,
            last_modified: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 10,
            last_modified: None,
        }
    }

    fn id(tli: u32, segno: u64) -> SegmentId {
        (TimelineId(tli), SegNo(segno))
    }

    #[test]
    fn the_newest_end_is_on_the_highest_timeline_and_counts_the_pieces() {
        let listing = |keys: &[&str]| {
            let objects: Vec<ObjectMeta> = keys.iter().map(|k| meta(k)).collect();
            WalIndex::from_listing(&objects, seg())
        };
        let newest = |keys: &[&str]| {
            let index = listing(keys);
            index.newest_end(&index.partial_segments(&BTreeMap::new(), seg()), seg())
        };
        assert_eq!(newest(&["wal/00000002.history"]), None);
        let end = |tli: u32, lsn: u64| Some((TimelineId(tli), Lsn(lsn)));
        assert_eq!(
            newest(&[
                "wal/000000010000000000000001",
                "wal/000000010000000000000002"
            ]),
            end(1, 3 << 24)
        );
        // Deltas of the next segment reach further; a delta past a hole counts for nothing.
        assert_eq!(
            newest(&[
                "wal/000000010000000000000002",
                "wal/000000010000000000000003.partial.d/00000000-00001000",
                "wal/000000010000000000000003.partial.d/00002000-00003000",
            ]),
            end(1, (3 << 24) + 0x1000)
        );
        assert_eq!(
            newest(&[
                "wal/000000010000000000000002",
                "wal/000000010000000000000003.partial.d/00001000-00002000",
            ]),
            end(1, 3 << 24)
        );
        // A later timeline is newer even when it starts lower.
        assert_eq!(
            newest(&[
                "wal/000000010000000000000005",
                "wal/000000020000000000000004.partial.d/00000000-00000800",
            ]),
            end(2, (4 << 24) + 0x800)
        );
    }

    #[test]
    fn keys_are_sorted_by_kind() {
        let objects: Vec<ObjectMeta> = [
            "cluster.json",
            "wal/000000010000000000000001",
            "wal/000000010000000000000001.partial.d/00000000-00001000",
            "wal/000000010000000000000002.partial",
            "wal/000000010000000000000002.partial.d/00001000-00002000",
            "wal/000000010000000000000002.partial.d/00000800-00001000",
            "wal/000000010000000000000002.00000028.backup",
            "wal/00000002.history",
            "wal/000000010000000000000003.partial.d/junk",
            "wal/notes.txt",
        ]
        .iter()
        .map(|k| meta(k))
        .collect();
        let index = WalIndex::from_listing(&objects, seg());
        assert_eq!(index.complete.keys().collect::<Vec<_>>(), [&id(1, 1)]);
        assert_eq!(index.pieces.len(), 2);
        let two = &index.pieces[&id(1, 2)];
        assert_eq!(
            two.legacy.as_deref(),
            Some("wal/000000010000000000000002.partial")
        );
        assert_eq!(two.deltas.len(), 2);
        assert!(two.deltas[0].start < two.deltas[1].start, "sorted");
        assert_eq!(index.histories, BTreeSet::from([TimelineId(2)]));
        assert_eq!(index.backup_histories.len(), 1);
        assert_eq!(
            index.unknown,
            [
                "wal/000000010000000000000003.partial.d/junk",
                "wal/notes.txt"
            ]
        );
        assert_eq!(
            index.superseded_pieces(seg()),
            ["wal/000000010000000000000001.partial.d/00000000-00001000"]
        );
        assert_eq!(
            index.legacy_to_read(),
            [(id(1, 2), "wal/000000010000000000000002.partial".to_string())]
        );
    }

    #[test]
    fn a_segment_held_as_pieces_reaches_their_assembled_end() {
        let objects: Vec<ObjectMeta> = [
            "wal/000000010000000000000004.partial",
            "wal/000000010000000000000004.partial.d/00000800-00001000",
            "wal/000000010000000000000004.partial.d/00001000-00001800",
            "wal/000000010000000000000005.partial.d/00000000-00000100",
            "wal/000000010000000000000005.partial.d/00000200-00000300",
        ]
        .iter()
        .map(|k| meta(k))
        .collect();
        let index = WalIndex::from_listing(&objects, seg());
        // The legacy .partial holds 0x900 bytes: the deltas continue it.
        let lens = BTreeMap::from([(id(1, 4), 0x900)]);
        let parts = index.partial_segments(&lens, seg());
        assert_eq!(
            parts[&id(1, 4)],
            PartialSegment {
                end: 0x1800,
                beyond_hole: false,
                deltas: 2,
                legacy: true
            }
        );
        assert_eq!(parts[&id(1, 4)].end_lsn(SegNo(4), seg()), Lsn(0x400_1800));
        assert_eq!(
            parts[&id(1, 5)],
            PartialSegment {
                end: 0x100,
                beyond_hole: true,
                deltas: 2,
                legacy: false
            }
        );
        // Without the .partial's length, its deltas start past a hole.
        let unknown = index.partial_segments(&BTreeMap::new(), seg());
        assert_eq!(unknown[&id(1, 4)].end, 0);
        assert!(unknown[&id(1, 4)].beyond_hole);
    }
}
