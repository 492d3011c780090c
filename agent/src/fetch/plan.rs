//! Which segments recovery will ask for next: pure, no I/O.
//!
//! PostgreSQL asks for one segment at a time and names it with the timeline it expects the
//! segment on. `XLogFileReadAnyTLI` in `src/backend/access/transam/xlogrecovery.c` walks the
//! timelines of the recovery target's history (`expectedTLEs`, newest first) and tries the
//! newest timeline whose begin segment is not after the wanted segment; the begin of a
//! timeline is the switch point its parent left off at (`readTimeLineHistory` in
//! `src/backend/access/transam/timeline.c`). Across a switch, the segment holding the switch
//! point is therefore asked for on the new timeline, and the ones before it on the old one.
//!
//! [`TimelinePlan`] applies the same rule to the history file of the target timeline, so the
//! prefetcher downloads the names PostgreSQL will ask for, on either side of a switch.

use pgagent_protocol::{SegNo, TimelineHistory, TimelineId, WalSegmentSize};

/// The timelines recovery follows, with the first segment each one may be read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelinePlan {
    /// `(timeline, begin segment)`, newest timeline first; the oldest begins at segment 0.
    begins: Vec<(TimelineId, SegNo)>,
}

impl TimelinePlan {
    /// The plan of recovery towards `target`, whose history file says `history`.
    pub fn new(target: TimelineId, history: &TimelineHistory, seg: WalSegmentSize) -> Self {
        let mut begins = Vec::with_capacity(history.entries.len() + 1);
        let mut begin = SegNo(0);
        for entry in &history.entries {
            begins.push((entry.parent, begin));
            begin = entry.switch_point.segment_number(seg);
        }
        begins.push((target, begin));
        begins.reverse();
        TimelinePlan { begins }
    }

    /// The target timeline.
    pub fn target(&self) -> TimelineId {
        self.begins[0].0
    }

    /// Whether `tli` is the target or one of its ancestors.
    pub fn contains(&self, tli: TimelineId) -> bool {
        self.begins.iter().any(|(t, _)| *t == tli)
    }

    /// The timeline PostgreSQL asks for segment `segno` on: the newest one that has begun
    /// by then, never older than `floor` (`XLogFileReadAnyTLI` stops at `curFileTLI`).
    pub fn timeline_for(&self, segno: SegNo, floor: TimelineId) -> TimelineId {
        self.begins
            .iter()
            .find(|(tli, begin)| *begin <= segno || *tli <= floor)
            .map(|(tli, _)| (*tli).max(floor))
            .unwrap_or(floor)
    }
}

/// The `count` segments after `segno` that recovery is expected to ask for next, as
/// `(timeline, segment)`, given the segment just asked for on `tli`.
///
/// Without a plan, or when `tli` is not on it (recovery follows another timeline than the
/// newest history file served), the segments stay on `tli`.
pub fn next_segments(
    tli: TimelineId,
    segno: SegNo,
    plan: Option<&TimelinePlan>,
    count: usize,
) -> Vec<(TimelineId, SegNo)> {
    let plan = plan.filter(|p| p.contains(tli));
    (1..=count as u64)
        .map(|k| {
            let next = SegNo(segno.0 + k);
            let next_tli = plan.map_or(tli, |p| p.timeline_for(next, tli));
            (next_tli, next)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    fn history(text: &str) -> TimelineHistory {
        TimelineHistory::parse(text).unwrap()
    }

    #[test]
    fn one_timeline_stays_on_it() {
        let got = next_segments(TimelineId(1), SegNo(5), None, 3);
        assert_eq!(
            got,
            [
                (TimelineId(1), SegNo(6)),
                (TimelineId(1), SegNo(7)),
                (TimelineId(1), SegNo(8))
            ]
        );
        assert!(next_segments(TimelineId(1), SegNo(5), None, 0).is_empty());
    }

    #[test]
    fn the_switch_segment_is_asked_for_on_the_new_timeline() {
        // Timeline 2 began at 0/5123456, inside segment 5.
        let plan = TimelinePlan::new(TimelineId(2), &history("1\t0/5123456\tpromoted\n"), seg());
        assert_eq!(plan.target(), TimelineId(2));
        let got = next_segments(TimelineId(1), SegNo(3), Some(&plan), 4);
        assert_eq!(
            got,
            [
                (TimelineId(1), SegNo(4)),
                (TimelineId(2), SegNo(5)),
                (TimelineId(2), SegNo(6)),
                (TimelineId(2), SegNo(7))
            ]
        );
    }

    #[test]
    fn a_switch_at_a_segment_boundary_begins_with_that_segment() {
        let plan = TimelinePlan::new(TimelineId(2), &history("1\t0/6000000\tx\n"), seg());
        assert_eq!(plan.timeline_for(SegNo(5), TimelineId(1)), TimelineId(1));
        assert_eq!(plan.timeline_for(SegNo(6), TimelineId(1)), TimelineId(2));
    }

    #[test]
    fn several_switches_and_the_floor() {
        let plan = TimelinePlan::new(
            TimelineId(5),
            &history("1\t0/3000000\ta\n2\t0/8800000\tb\n4\t0/A000000\tc\n"),
            seg(),
        );
        let at = |s| plan.timeline_for(SegNo(s), TimelineId(1));
        assert_eq!(
            [at(0), at(2), at(3), at(7), at(8), at(9), at(10), at(11)],
            [1, 1, 2, 2, 4, 4, 5, 5].map(TimelineId)
        );
        // Once reading timeline 4, older timelines are not tried (curFileTLI).
        assert_eq!(plan.timeline_for(SegNo(2), TimelineId(4)), TimelineId(4));
        assert!(!plan.contains(TimelineId(3)));
    }

    #[test]
    fn a_timeline_off_the_plan_is_followed_as_asked() {
        let plan = TimelinePlan::new(TimelineId(3), &history("1\t0/3000000\ta\n"), seg());
        let got = next_segments(TimelineId(2), SegNo(1), Some(&plan), 2);
        assert_eq!(got, [(TimelineId(2), SegNo(2)), (TimelineId(2), SegNo(3))]);
    }
}
