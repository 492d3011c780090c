//! Timeline history files (`TTTTTTTT.history`).
//!
//! Each line names an ancestor timeline and the LSN where it was left:
//! `parentTLI <TAB> switchpoint <TAB> reason`, written by
//! `writeTimeLineHistory` and read by `readTimeLineHistory` in
//! `src/backend/access/transam/timeline.c`. Blank lines and lines whose
//! first non-blank character is `#` are comments.

use crate::wire::lsn::Lsn;
use crate::wire::timeline::TimelineId;

/// One ancestor of a timeline: the history of a timeline lists every
/// timeline it descends from, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub parent: TimelineId,
    /// First LSN that is no longer on `parent` (exclusive end of `parent`).
    pub switch_point: Lsn,
    /// Free text recorded at promotion, e.g. `no recovery target specified`.
    pub reason: String,
}

/// The parsed content of one history file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimelineHistory {
    /// Ancestors, oldest first; timeline IDs strictly increase.
    pub entries: Vec<HistoryEntry>,
}

/// A history file that `readTimeLineHistory` would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// A line does not start with a decimal timeline ID.
    #[error("syntax error in history file line {line}: expected a numeric timeline ID")]
    ExpectedTimeline {
        /// 1-based line number.
        line: usize,
    },
    /// A line has no `X/X` switch point after the timeline ID.
    #[error(
        "syntax error in history file line {line}: expected a write-ahead log switchpoint location"
    )]
    ExpectedSwitchPoint {
        /// 1-based line number.
        line: usize,
    },
    /// Timeline IDs do not strictly increase, or switch points go backwards.
    #[error(
        "invalid data in history file line {line}: timeline IDs and switch points must increase"
    )]
    NotIncreasing {
        /// 1-based line number.
        line: usize,
    },
    /// An ancestor's ID is not below the timeline the file belongs to.
    #[error(
        "invalid data in history file: timeline {ancestor} is not less than child timeline {child}"
    )]
    NotAncestor {
        /// Largest ancestor in the file.
        ancestor: TimelineId,
        /// The timeline the file was read for.
        child: TimelineId,
    },
}

impl TimelineHistory {
    /// Parses a history file. The reason text is the rest of the line after
    /// the switch point, trimmed; PostgreSQL itself ignores it.
    pub fn parse(text: &str) -> Result<TimelineHistory, HistoryError> {
        let mut entries: Vec<HistoryEntry> = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let rest = raw.trim_start();
            if rest.is_empty() || rest.starts_with('#') {
                continue;
            }
            let (tli_text, rest) = split_token(rest);
            let parent: TimelineId = tli_text
                .parse()
                .map_err(|_| HistoryError::ExpectedTimeline { line })?;
            let (lsn_text, rest) = split_token(rest);
            let switch_point: Lsn = lsn_text
                .parse()
                .map_err(|_| HistoryError::ExpectedSwitchPoint { line })?;
            if let Some(last) = entries.last() {
                if parent <= last.parent || switch_point < last.switch_point {
                    return Err(HistoryError::NotIncreasing { line });
                }
            }
            entries.push(HistoryEntry {
                parent,
                switch_point,
                reason: rest.trim().to_owned(),
            });
        }
        Ok(TimelineHistory { entries })
    }

    /// Checks that every ancestor is below `child`, the timeline whose
    /// history this is (the last check in `readTimeLineHistory`).
    pub fn check_child(&self, child: TimelineId) -> Result<(), HistoryError> {
        match self.entries.last() {
            Some(last) if last.parent >= child => Err(HistoryError::NotAncestor {
                ancestor: last.parent,
                child,
            }),
            _ => Ok(()),
        }
    }

    /// The timeline that WAL position `lsn` belongs to, given that this is
    /// the history of timeline `current` (`tliOfPointInHistory`): the first
    /// ancestor whose switch point is past `lsn`, else `current`. A switch
    /// point itself belongs to the newer timeline.
    pub fn timeline_for_lsn(&self, current: TimelineId, lsn: Lsn) -> TimelineId {
        self.entries
            .iter()
            .find(|e| lsn < e.switch_point)
            .map_or(current, |e| e.parent)
    }

    /// Where timeline `tli` ended (`tliSwitchPoint`), or `None` if `tli` is
    /// not an ancestor in this history (e.g. it is the current timeline).
    pub fn switch_point_of(&self, tli: TimelineId) -> Option<Lsn> {
        self.entries
            .iter()
            .find(|e| e.parent == tli)
            .map(|e| e.switch_point)
    }
}

/// Splits off the first whitespace-delimited token (as `sscanf("%u\t%X/%X")` reads).
fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const THREE: &str = "1\t0/3000158\tno recovery target specified\n\
                         \n\
                         # comment\n\
                         2\t0/5000000\tat restore point \"x\"\n";

    #[test]
    fn parse_file() {
        let h = TimelineHistory::parse(THREE).unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.entries[0].parent, TimelineId(1));
        assert_eq!(h.entries[0].switch_point, Lsn(0x300_0158));
        assert_eq!(h.entries[0].reason, "no recovery target specified");
        assert_eq!(h.entries[1].reason, "at restore point \"x\"");
        assert!(h.check_child(TimelineId(3)).is_ok());
        assert!(h.check_child(TimelineId(2)).is_err());
    }

    #[test]
    fn lookup() {
        let h = TimelineHistory::parse(THREE).unwrap();
        let cur = TimelineId(3);
        assert_eq!(h.timeline_for_lsn(cur, Lsn(0)), TimelineId(1));
        assert_eq!(h.timeline_for_lsn(cur, Lsn(0x300_0157)), TimelineId(1));
        assert_eq!(h.timeline_for_lsn(cur, Lsn(0x300_0158)), TimelineId(2));
        assert_eq!(h.timeline_for_lsn(cur, Lsn(0x500_0000)), cur);
        assert_eq!(h.switch_point_of(TimelineId(1)), Some(Lsn(0x300_0158)));
        assert_eq!(h.switch_point_of(TimelineId(2)), Some(Lsn(0x500_0000)));
        assert_eq!(h.switch_point_of(cur), None);
        assert_eq!(
            TimelineHistory::default().timeline_for_lsn(TimelineId(1), Lsn(5)),
            TimelineId(1)
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            TimelineHistory::parse("x\t0/1\n"),
            Err(HistoryError::ExpectedTimeline { line: 1 })
        );
        assert_eq!(
            TimelineHistory::parse("# c\n1\n"),
            Err(HistoryError::ExpectedSwitchPoint { line: 2 })
        );
        assert_eq!(
            TimelineHistory::parse("2\t0/1\tr\n1\t0/2\tr\n"),
            Err(HistoryError::NotIncreasing { line: 2 })
        );
        assert_eq!(
            TimelineHistory::parse("1\t0/5\tr\n2\t0/2\tr\n"),
            Err(HistoryError::NotIncreasing { line: 2 })
        );
        assert_eq!(TimelineHistory::parse("").unwrap().entries.len(), 0);
    }

    proptest! {
        #[test]
        fn round_trip(points in proptest::collection::vec(any::<u32>(), 0..8)) {
            let mut points = points;
            points.sort_unstable();
            let text: String = points
                .iter()
                .enumerate()
                .map(|(i, p)| format!("{}\t{}\treason {i}\n", i + 1, Lsn(u64::from(*p) << 8)))
                .collect();
            let h = TimelineHistory::parse(&text).unwrap();
            prop_assert_eq!(h.entries.len(), points.len());
            for (i, e) in h.entries.iter().enumerate() {
                prop_assert_eq!(e.parent, TimelineId(i as u32 + 1));
                prop_assert_eq!(e.switch_point, Lsn(u64::from(points[i]) << 8));
                prop_assert_eq!(&e.reason, &format!("reason {i}"));
            }
        }
    }
}
