//! Whether a segment's partial content may answer a request for the segment: pure, no I/O.
//!
//! The store keeps the segment being filled as deltas (`<segment>.partial.d/<start>-<end>`),
//! or, in stores written before deltas, as one `<segment>.partial` object; assembled from
//! the segment's start up to the first hole and served zero-padded when recovery asks for
//! that segment, it lets a recovery from the bucket alone reach the last confirmed byte
//! (DESIGN.md, "fetch"). Every run of pieces from offset 0 is a prefix of the WAL the server
//! wrote on that timeline: the agent writes a segment's pieces from the WAL it received, and
//! after a restart it receives the segment again from its start and continues the run the
//! bucket holds. So the run is served whatever follows it:
//!
//! - later WAL of the same timeline (a later segment complete, as deltas, or a `.backup`
//!   file) does not make the run wrong. Uploads are not ordered: the next segment's first
//!   delta can land before this segment's complete object, and the host can die in between.
//!   The run then holds every byte of this segment that was confirmed to the server (the
//!   flush position never passes a hole), and the hole after it ends recovery there, which
//!   is right; answering "not found" instead would end recovery at the segment's start and
//!   lose confirmed WAL;
//! - a later timeline that forked off this one before the end of the run (its history file
//!   says so: `readTimeLineHistory`, `src/backend/access/transam/timeline.c`) is the one
//!   case withheld: the run then holds WAL past the switch point, a branch the cluster left,
//!   such as an old primary's last seconds before a failover. PostgreSQL asks for the old
//!   timeline's segment when the new timeline's is missing (`XLogFileReadAnyTLI` in
//!   `src/backend/access/transam/xlogrecovery.c` tries every timeline of the history, newest
//!   first), and would replay that branch. A fork at or after the run's end leaves it whole
//!   WAL of its timeline: the usual case of a standby promoted at the end of the WAL the
//!   bucket held, whose own timeline then starts exactly there; a recovery pinned to the old
//!   timeline (`recovery_target_timeline`) needs that partial segment to reach its end.
//!
//! What a fetch learns cheaply ([`super::Fetcher`] does the I/O): the first WAL object of a
//! later timeline (one bounded LIST after [`pgagent_storage::layout::after_timeline`]: names
//! sort by timeline first) and, only when there is one, the history files of the later
//! timelines, read upwards from that one until one is missing, as PostgreSQL's
//! `findNewestTimeLine` probes for them (a fetch server keeps the history files it read:
//! they never change).

use pgagent_protocol::{Lsn, TimelineHistory, TimelineId, WalSegmentSize};

use crate::store::wal::WalKey;

/// The timeline of the first WAL object among `keys` (store keys listed in key order after
/// every object of timeline `tli`) if it is later than `tli`: where a look for forks starts.
/// Keys that are no WAL object of this segment size are skipped; `None` when no later
/// timeline has an object.
pub fn first_later_timeline<'a>(
    tli: TimelineId,
    keys: impl IntoIterator<Item = &'a str>,
    seg: WalSegmentSize,
) -> Option<TimelineId> {
    keys.into_iter()
        .filter_map(|k| WalKey::parse(k, seg))
        .map(|w| match w {
            WalKey::History(t) => t,
            other => {
                other
                    .segment()
                    .expect("only history files have no segment")
                    .0
            }
        })
        .find(|t| *t > tli)
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

    fn later(tli: u32, keys: &[&str]) -> Option<TimelineId> {
        first_later_timeline(TimelineId(tli), keys.iter().copied(), seg())
    }

    #[test]
    fn the_first_object_of_a_later_timeline_starts_the_look_for_forks() {
        assert_eq!(later(1, &[]), None);
        assert_eq!(later(1, &["wal/00000002.history"]), Some(TimelineId(2)));
        assert_eq!(
            later(1, &["wal/000000050000000000000001"]),
            Some(TimelineId(5))
        );
        assert_eq!(
            later(
                1,
                &["wal/000000020000000000000003.partial.d/00000000-00000100"]
            ),
            Some(TimelineId(2))
        );
        // Keys that are no WAL object are skipped; objects of the same or an earlier
        // timeline (a listing never returns them) count for nothing.
        assert_eq!(
            later(
                3,
                &[
                    "wal/notes",
                    "wal/000000030000000000000009",
                    "wal/00000004.history"
                ]
            ),
            Some(TimelineId(4))
        );
        assert_eq!(later(1, &["wal/notes"]), None);
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
