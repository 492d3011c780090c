//! The WAL a restore of each backup replays: continuous from its start to the newest WAL in
//! the store, on the timelines recovery follows.

use std::collections::BTreeMap;

use pgagent_protocol::{segment_file_name, Lsn, SegNo, TimelineId, WalSegmentSize};

use crate::fetch::plan::TimelinePlan;
use crate::store::wal::{PartialSegment, SegmentId, WalIndex};

/// A segment missing on the walk of [`wal_gaps`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Its file name.
    pub segment: String,
    /// When the store holds it only as partial pieces: where their WAL from its start ends.
    pub partial_end: Option<Lsn>,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is missing", self.segment)?;
        if let Some(end) = self.partial_end {
            write!(
                f,
                " (the store holds it only as partial pieces, WAL up to {end}, and later WAL follows)"
            )?;
        }
        Ok(())
    }
}

/// Where the walk of [`wal_gaps`] ended and what it missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// The last segment reached.
    pub last: String,
    /// End of the WAL reached: the end of `last`, or of its WAL from its start when it is
    /// held only as partial pieces.
    pub end: Lsn,
    /// Segments missing on the way.
    pub gaps: Vec<Gap>,
}

/// Walks from segment `first` on `tli` to the newest segment in `index`, on the timelines
/// of `plan`. A segment held only as partial pieces (`partials`) counts for the newest
/// segment only, up to its assembled end; anywhere else it is a gap (later WAL exists, so
/// the segment should be complete).
pub fn wal_gaps(
    index: &WalIndex,
    partials: &BTreeMap<SegmentId, PartialSegment>,
    plan: &Option<TimelinePlan>,
    tli: TimelineId,
    first: SegNo,
    seg: WalSegmentSize,
) -> Walk {
    let mut newest: BTreeMap<TimelineId, SegNo> = BTreeMap::new();
    for &(t, s) in index.complete.keys().chain(partials.keys()) {
        let e = newest.entry(t).or_insert(s);
        *e = (*e).max(s);
    }
    let timeline_for = |s: SegNo| match plan {
        Some(p) if p.contains(tli) => p.timeline_for(s, tli),
        _ => tli,
    };
    let end = newest.values().copied().max().unwrap_or(first);
    let mut walk = Walk {
        last: segment_file_name(tli, first, seg),
        end: first.start_lsn(seg),
        gaps: Vec::new(),
    };
    let mut s = first;
    while s <= end {
        let t = timeline_for(s);
        let name = segment_file_name(t, s, seg);
        let is_last = newest.get(&t).is_some_and(|n| *n == s) && s == end;
        let partial = partials.get(&(t, s));
        if index.complete.contains_key(&(t, s)) {
            walk.last = name;
            walk.end = s.end_lsn(seg);
        } else if let Some(p) = partial.filter(|_| is_last) {
            walk.last = name;
            walk.end = p.end_lsn(s, seg);
        } else if newest.get(&t).is_some_and(|n| *n >= s) {
            walk.gaps.push(Gap {
                segment: name,
                partial_end: partial.map(|p| p.end_lsn(s, seg)),
            });
        } else {
            break;
        }
        s = s.next();
    }
    walk
}

/// Notes on segments held only as partial pieces with deltas past a hole, when no later
/// WAL of their timeline is in the store: the newest WAL, still being uploaded. Such a hole
/// is an upload in flight (deltas may land out of order), or WAL an agent that stopped
/// sends again when it starts (it resumes from the end of the run without a hole, and its
/// slot holds that WAL on the server); a recovery from the store alone stops at the hole
/// meanwhile. Not a problem by itself: a hole in a segment behind later WAL shows as a gap
/// of the backups whose WAL passes it ([`wal_gaps`]).
pub fn hole_notes(
    index: &WalIndex,
    partials: &BTreeMap<SegmentId, PartialSegment>,
    seg: WalSegmentSize,
) -> Vec<String> {
    partials
        .iter()
        .filter(|(_, p)| p.beyond_hole)
        .filter(|((t, s), _)| {
            let later = (*t, s.next())..=(*t, SegNo(u64::MAX));
            index.complete.range(later.clone()).next().is_none()
                && partials.range(later).next().is_none()
        })
        .map(|(&(t, s), p)| {
            format!(
                "{}: the newest WAL of timeline {t} is held as deltas with a hole at {}: an \
                 upload in flight, or WAL the agent sends again when it restarts; a recovery \
                 from the store alone stops there until it is filled",
                segment_file_name(t, s, seg),
                p.end_lsn(s, seg)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgagent_protocol::TimelineHistory;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    /// The index of `keys` and its partial segments (`.partial` objects hold 0x1000 bytes).
    fn index(keys: &[&str]) -> (WalIndex, BTreeMap<SegmentId, PartialSegment>) {
        let objects = crate::store::wal::listing_of(keys.iter().map(|k| format!("wal/{k}")), 1);
        let index = WalIndex::from_listing(&objects, seg());
        let legacy = index
            .legacy_to_read()
            .into_iter()
            .map(|(id, _)| (id, 0x1000))
            .collect();
        let partials = index.partial_segments(&legacy, seg());
        (index, partials)
    }

    fn walk(keys: &[&str], plan: &Option<TimelinePlan>, first: u64) -> Walk {
        let (index, partials) = index(keys);
        wal_gaps(&index, &partials, plan, TimelineId(1), SegNo(first), seg())
    }

    fn names(gaps: &[Gap]) -> Vec<&str> {
        gaps.iter().map(|g| g.segment.as_str()).collect()
    }

    #[test]
    fn continuous_wal_and_a_gap() {
        let keys = [
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000005",
            "000000010000000000000006.partial",
        ];
        let w = walk(&keys, &None, 2);
        assert_eq!(names(&w.gaps), ["000000010000000000000004"]);
        assert_eq!(w.gaps[0].partial_end, None);
        assert_eq!(w.last, "000000010000000000000006");
        assert_eq!(w.end, Lsn(0x600_1000));
        assert!(walk(&keys, &None, 5).gaps.is_empty());
    }

    #[test]
    fn the_newest_segment_held_as_deltas_reaches_their_assembled_end() {
        let keys = [
            "000000010000000000000002",
            "000000010000000000000002.partial.d/00000000-00001000",
            "000000010000000000000003.partial",
            "000000010000000000000003.partial.d/00000800-00002000",
            "000000010000000000000003.partial.d/00003000-00004000",
        ];
        let w = walk(&keys, &None, 2);
        assert!(w.gaps.is_empty(), "{:?}", w.gaps);
        assert_eq!(w.last, "000000010000000000000003");
        assert_eq!(w.end, Lsn(0x300_2000), "legacy .partial, then a delta");
        let (index, partials) = index(&keys);
        let notes = hole_notes(&index, &partials, seg());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("000000010000000000000003: the newest WAL of timeline 1")
                && notes[0].contains("a hole at 0/3002000"),
            "{notes:?}"
        );
    }

    #[test]
    fn a_segment_held_as_deltas_behind_later_wal_is_a_gap() {
        // Segment 3 never completed in the store, yet segment 4 did: 3's deltas reach
        // 0/3002000 and the rest of it is missing.
        let keys = [
            "000000010000000000000002",
            "000000010000000000000003.partial.d/00000000-00002000",
            "000000010000000000000003.partial.d/00003000-00004000",
            "000000010000000000000004",
        ];
        let w = walk(&keys, &None, 2);
        assert_eq!(
            w.gaps,
            [Gap {
                segment: "000000010000000000000003".into(),
                partial_end: Some(Lsn(0x300_2000)),
            }]
        );
        assert!(w.gaps[0].to_string().contains("WAL up to 0/3002000"));
        assert_eq!(w.last, "000000010000000000000004");
        // Its hole is part of that gap, not a note about the newest WAL.
        let (index, partials) = index(&keys);
        assert!(hole_notes(&index, &partials, seg()).is_empty());
    }

    #[test]
    fn wal_follows_the_timeline_switch() {
        let plan = TimelinePlan::new(
            TimelineId(2),
            &TimelineHistory::parse("1\t0/4800000\tpromoted\n").unwrap(),
            seg(),
        );
        let mut keys = vec![
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004.partial",
            "000000010000000000000004.partial.d/00001000-00002000",
            "000000020000000000000004",
            "000000020000000000000005",
            "00000002.history",
        ];
        let w = walk(&keys, &Some(plan.clone()), 2);
        assert!(w.gaps.is_empty(), "{:?}", w.gaps);
        assert_eq!(w.last, "000000020000000000000005");
        keys.retain(|k| *k != "000000020000000000000004");
        let w = walk(&keys, &Some(plan), 2);
        assert_eq!(names(&w.gaps), ["000000020000000000000004"]);
    }
}
