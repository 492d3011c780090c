//! Whether a segment's `.partial` object may answer a request for the segment: pure, no I/O.
//!
//! The store keeps the segment being filled as `<segment>.partial`, WAL from the segment's
//! start to the last upload. Served zero-padded when recovery asks for that segment, it lets
//! a recovery from the bucket alone reach the last streamed second (DESIGN.md, "fetch").
//! That is right only for the newest WAL of its timeline. Any other `.partial` is WAL that
//! something later superseded, and must not be replayed as if it were the segment:
//!
//! - a later segment of the same timeline is in the store (complete, `.partial` or a
//!   `.backup` file): the `.partial` is a leftover behind newer WAL, and padding it would
//!   end recovery in the middle of the timeline;
//! - a later timeline forked off this one before the `.partial`'s end (its history file says
//!   so: `readTimeLineHistory`, `src/backend/access/transam/timeline.c`): the `.partial` holds
//!   WAL past the switch point, a branch the cluster left, such as an old primary's last
//!   seconds before a failover. PostgreSQL asks for the old timeline's segment when the new
//!   timeline's is missing (`XLogFileReadAnyTLI` in
//!   `src/backend/access/transam/xlogrecovery.c` tries every timeline of the history, newest
//!   first), and would replay that branch. A fork at or after the `.partial`'s end leaves it
//!   whole WAL of its timeline: the usual case of a standby promoted at the end of the WAL
//!   the bucket held, whose own timeline then starts exactly there; a recovery pinned to the
//!   old timeline (`recovery_target_timeline`) needs that `.partial` to reach its end.
//!
//! What a fetch learns cheaply ([`super::Fetcher`] does the I/O): the first WAL object after
//! the `.partial` in `wal/` (one bounded LIST: names sort by timeline, then segment, so every
//! later object of the timeline comes first and every later timeline after them) and, only
//! when that object belongs to a later timeline, the history files of the later timelines,
//! read upwards from that one until one is missing, as PostgreSQL's `findNewestTimeLine`
//! probes for them (a fetch server keeps the history files it read: they never change).

use pgagent_protocol::{Lsn, SegNo, TimelineHistory, TimelineId, WalFileName, WalSegmentSize};

/// What the first key after a `.partial` in `wal/` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextKey {
    /// Nothing follows: no later WAL on the timeline and no later timeline.
    Nothing,
    /// A later segment (or `.backup` file) of the same timeline: the `.partial` is stale.
    LaterOnTimeline(SegNo),
    /// The first object of a later timeline: its history (and the later ones') decide.
    LaterTimeline(TimelineId),
}

/// Classifies `next`, the first WAL file name after the `.partial` of `(tli, segno)` in the
/// store (`None`: nothing follows; a name that is not a WAL file name counts as nothing).
pub fn next_key(tli: TimelineId, segno: SegNo, next: Option<&str>, seg: WalSegmentSize) -> NextKey {
    let Some(name) = next.and_then(|n| WalFileName::parse(n, seg)) else {
        return NextKey::Nothing;
    };
    let (t, s) = match name {
        WalFileName::Segment { tli, segno }
        | WalFileName::Partial { tli, segno }
        | WalFileName::BackupHistory { tli, segno, .. } => (tli, Some(segno)),
        WalFileName::History(t) => (t, None),
    };
    match (t.cmp(&tli), s) {
        (std::cmp::Ordering::Equal, Some(s)) if s > segno => NextKey::LaterOnTimeline(s),
        (std::cmp::Ordering::Greater, _) => NextKey::LaterTimeline(t),
        _ => NextKey::Nothing,
    }
}

/// The switch point where a later timeline, whose history is `history`, left `tli`, if it
/// lies before `partial_end` (the LSN just past the WAL a `.partial` of `tli` holds): then
/// that `.partial` holds WAL of a branch the cluster left.
pub fn forks_before(history: &TimelineHistory, tli: TimelineId, partial_end: Lsn) -> Option<Lsn> {
    history.switch_point_of(tli).filter(|&x| x < partial_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    fn next(tli: u32, segno: u64, name: Option<&str>) -> NextKey {
        next_key(TimelineId(tli), SegNo(segno), name, seg())
    }

    #[test]
    fn what_follows_a_partial() {
        use NextKey::*;
        assert_eq!(next(1, 3, None), Nothing);
        assert_eq!(
            next(1, 3, Some("000000010000000000000004")),
            LaterOnTimeline(SegNo(4))
        );
        assert_eq!(
            next(1, 3, Some("000000010000000100000000.partial")),
            LaterOnTimeline(SegNo(256))
        );
        assert_eq!(
            next(1, 3, Some("000000010000000000000007.00000028.backup")),
            LaterOnTimeline(SegNo(7))
        );
        assert_eq!(
            next(1, 3, Some("00000002.history")),
            LaterTimeline(TimelineId(2))
        );
        assert_eq!(
            next(1, 3, Some("000000050000000000000001")),
            LaterTimeline(TimelineId(5))
        );
        // Not after the partial (a listing never returns these, but they mean nothing).
        assert_eq!(next(2, 3, Some("000000020000000000000003")), Nothing);
        assert_eq!(next(2, 3, Some("000000010000000000000009")), Nothing);
        assert_eq!(next(1, 3, Some("cluster.json")), Nothing);
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
