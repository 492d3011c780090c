//! Whether a segment's partial content may answer a request for the segment: pure, no I/O.
//!
//! The store keeps the segment being filled as deltas (`<segment>.partial.d/<start>-<end>`),
//! or, in stores written before deltas, as one `<segment>.partial` object; assembled from
//! the segment's start up to the first hole and served zero-padded when recovery asks for
//! that segment, it lets a recovery from the bucket alone reach the last streamed second
//! (DESIGN.md, "fetch"). That is right only for the newest WAL of its timeline. Any other
//! partial content is WAL that something later superseded, and must not be replayed as if it
//! were the segment:
//!
//! - a later segment of the same timeline is in the store (complete, as deltas or
//!   `.partial`, or a `.backup` file): the partial content is a leftover behind newer WAL,
//!   and padding it would end recovery in the middle of the timeline;
//! - a later timeline forked off this one before the end of the partial content (its history
//!   file says so: `readTimeLineHistory`, `src/backend/access/transam/timeline.c`): it holds
//!   WAL past the switch point, a branch the cluster left, such as an old primary's last
//!   seconds before a failover. PostgreSQL asks for the old timeline's segment when the new
//!   timeline's is missing (`XLogFileReadAnyTLI` in
//!   `src/backend/access/transam/xlogrecovery.c` tries every timeline of the history, newest
//!   first), and would replay that branch. A fork at or after its end leaves it whole WAL of
//!   its timeline: the usual case of a standby promoted at the end of the WAL the bucket
//!   held, whose own timeline then starts exactly there; a recovery pinned to the old
//!   timeline (`recovery_target_timeline`) needs that partial segment to reach its end.
//!
//! What a fetch learns cheaply ([`super::Fetcher`] does the I/O): the first WAL object after
//! the segment's pieces in `wal/` (one bounded LIST after
//! [`pgagent_storage::deltas::after_deltas`]: names sort by timeline, then segment, so every
//! later object of the timeline comes first and every later timeline after them; a later
//! segment held only as deltas, possibly a thousand of them, is recognised by its first
//! delta) and, only when that object belongs to a later timeline, the history files of the
//! later timelines, read upwards from that one until one is missing, as PostgreSQL's
//! `findNewestTimeLine` probes for them (a fetch server keeps the history files it read:
//! they never change).

use pgagent_protocol::{Lsn, SegNo, TimelineHistory, TimelineId, WalSegmentSize};

use crate::store::wal::WalKey;

/// What the first WAL object after a segment's pieces in `wal/` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextKey {
    /// Nothing follows: no later WAL on the timeline and no later timeline.
    Nothing,
    /// A later segment (complete, partial pieces, or a `.backup` file) of the same timeline:
    /// the partial content is stale.
    LaterOnTimeline(SegNo),
    /// The first object of a later timeline: its history (and the later ones') decide.
    LaterTimeline(TimelineId),
}

/// Classifies the first WAL object among `keys`, store keys listed in key order after the
/// pieces of `(tli, segno)` (keys that are no WAL object of this segment size are skipped).
/// Returns it with its key (`None`: nothing follows).
pub fn next_key<'a>(
    tli: TimelineId,
    segno: SegNo,
    keys: impl IntoIterator<Item = &'a str>,
    seg: WalSegmentSize,
) -> (NextKey, Option<&'a str>) {
    let Some((key, next)) = keys
        .into_iter()
        .find_map(|k| WalKey::parse(k, seg).map(|w| (k, w)))
    else {
        return (NextKey::Nothing, None);
    };
    let (t, s) = match next {
        WalKey::History(t) => (t, None),
        other => {
            let (t, s) = other.segment().expect("only history files have no segment");
            (t, Some(s))
        }
    };
    let kind = match (t.cmp(&tli), s) {
        (std::cmp::Ordering::Equal, Some(s)) if s > segno => NextKey::LaterOnTimeline(s),
        (std::cmp::Ordering::Greater, _) => NextKey::LaterTimeline(t),
        _ => NextKey::Nothing,
    };
    (kind, Some(key))
}

/// The switch point where a later timeline, whose history is `history`, left `tli`, if it
/// lies before `partial_end` (the LSN just past the partial content of a segment of `tli`):
/// then that partial content holds WAL of a branch the cluster left.
pub fn forks_before(history: &TimelineHistory, tli: TimelineId, partial_end: Lsn) -> Option<Lsn> {
    history.switch_point_of(tli).filter(|&x| x < partial_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    fn next(tli: u32, segno: u64, keys: &[&str]) -> NextKey {
        next_key(TimelineId(tli), SegNo(segno), keys.iter().copied(), seg()).0
    }

    #[test]
    fn what_follows_a_partial_segment() {
        use NextKey::*;
        assert_eq!(next(1, 3, &[]), Nothing);
        assert_eq!(
            next(1, 3, &["wal/000000010000000000000004"]),
            LaterOnTimeline(SegNo(4))
        );
        assert_eq!(
            next(1, 3, &["wal/000000010000000100000000.partial"]),
            LaterOnTimeline(SegNo(256))
        );
        assert_eq!(
            next(1, 3, &["wal/000000010000000000000007.00000028.backup"]),
            LaterOnTimeline(SegNo(7))
        );
        assert_eq!(
            next(1, 3, &["wal/00000002.history"]),
            LaterTimeline(TimelineId(2))
        );
        assert_eq!(
            next(1, 3, &["wal/000000050000000000000001"]),
            LaterTimeline(TimelineId(5))
        );
        // Not after the partial segment (a listing never returns these, but they mean
        // nothing).
        assert_eq!(next(2, 3, &["wal/000000020000000000000003"]), Nothing);
        assert_eq!(next(2, 3, &["wal/000000010000000000000009"]), Nothing);
        // Keys that are no WAL object are skipped; the first WAL object decides.
        assert_eq!(
            next(1, 3, &["wal/notes", "wal/000000010000000000000005"]),
            LaterOnTimeline(SegNo(5))
        );
        assert_eq!(next(1, 3, &["wal/notes"]), Nothing);
    }

    #[test]
    fn a_later_segment_held_only_as_deltas_is_later_wal() {
        // With 1 s uploads the next segment may have a thousand deltas: every key of a
        // bounded listing is one of them.
        let deltas: Vec<String> = (0..16)
            .map(|i| {
                format!(
                    "wal/000000010000000000000004.partial.d/{:08X}-{:08X}",
                    i * 0x100,
                    (i + 1) * 0x100
                )
            })
            .collect();
        let keys: Vec<&str> = deltas.iter().map(String::as_str).collect();
        let (kind, key) = next_key(TimelineId(1), SegNo(3), keys.iter().copied(), seg());
        assert_eq!(kind, NextKey::LaterOnTimeline(SegNo(4)));
        assert_eq!(key, Some(keys[0]));
        assert_eq!(
            next(
                1,
                3,
                &["wal/000000020000000000000003.partial.d/00000000-00000100"]
            ),
            NextKey::LaterTimeline(TimelineId(2))
        );
    }

    #[test]
    fn only_a_fork_before_the_partials_end_counts() {
        let h = TimelineHistory::parse("1\t0/3800000\tpromoted\n2\t0/9000000\tx\n").unwrap();
        let fork = |tli: u32, end: u64| forks_before(&h, TimelineId(tli), Lsn(end));
        // Timeline 1 left at 0/3800000: a .partial of it holding WAL up to 0/3A00000 (or a
        // later segment's) holds WAL past the fork.
        assert_eq!(fork(1, 0x3A0_0000), Some(Lsn(0x380_0000)));
        assert_eq!(fork(1, 0x420_0000), Some(Lsn(0x380_0000)));
        // A .partial ending at the switch point, or before it, is whole WAL of timeline 1.
        assert_eq!(fork(1, 0x380_0000), None);
        assert_eq!(fork(1, 0x310_0000), None);
        assert_eq!(fork(2, 0x900_0001), Some(Lsn(0x900_0000)));
        // Timeline 3 (the history's own) and unrelated timelines have no switch point here.
        assert_eq!(fork(3, 0xFFFF_0000), None);
        assert_eq!(fork(7, 0xFFFF_0000), None);
    }
}
