//! What the watcher found: violations, counts of what it checked, the last listing.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use pgagent_protocol::{Lsn, SegNo, WalSegmentSize};

use super::frontier::{contiguous_end, WalListing};

/// Violations kept in full in a report (the count goes on).
const MAX_KEPT: usize = 50;

/// One broken promise, as seen by the watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Time since the watcher started.
    pub at: Duration,
    /// What was wrong.
    pub kind: ViolationKind,
}

/// The kinds of [`Violation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViolationKind {
    /// An object's bytes differ from the server's `pg_wal` file (or a complete segment has
    /// the wrong length).
    Content {
        /// Object key.
        key: String,
        /// Where and how it differs.
        detail: String,
    },
    /// An object does not open (bad envelope, length or hash).
    Unreadable {
        /// Object key.
        key: String,
        /// The store's error.
        error: String,
    },
    /// A `.partial` came back shorter than the bucket held before, or the pieces of a
    /// segment (its deltas, with its `.partial`) reach less far than they did.
    Backwards {
        /// Object key (for pieces: the prefix of the segment's deltas).
        key: String,
        /// Raw length seen before, bytes.
        before: u64,
        /// Raw length now, bytes.
        now: u64,
    },
    /// A delta's content changed after it was first read (deltas are immutable).
    Changed {
        /// Object key.
        key: String,
    },
    /// The slot's `restart_lsn` passed the end of the WAL the bucket held.
    SlotAhead {
        /// The slot's `restart_lsn`, read before the listing.
        restart_lsn: Lsn,
        /// End of the contiguous WAL from the segment holding `restart_lsn`.
        frontier: Lsn,
        /// The object the walk stopped at, and what the bucket had there.
        stopped_at: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {:.1}s: ", self.at.as_secs_f64())?;
        match &self.kind {
            ViolationKind::Content { key, detail } => write!(f, "{key}: {detail}"),
            ViolationKind::Unreadable { key, error } => write!(f, "{key} does not open: {error}"),
            ViolationKind::Backwards { key, before, now } => write!(
                f,
                "{key} went backwards: {now} bytes after {before} (the bucket must never hold less)"
            ),
            ViolationKind::Changed { key } => write!(
                f,
                "{key} changed content after it was read (a delta is never written twice)"
            ),
            ViolationKind::SlotAhead {
                restart_lsn,
                frontier,
                stopped_at,
            } => write!(
                f,
                "slot restart_lsn {restart_lsn} is past the bucket's contiguous WAL end {frontier} ({stopped_at})"
            ),
        }
    }
}

/// The slot's position and the bucket's frontier from one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotCheck {
    /// The slot's `restart_lsn`.
    pub restart_lsn: Lsn,
    /// End of the contiguous WAL in the bucket from the segment holding `restart_lsn`.
    pub frontier: Lsn,
}

/// Counts and findings of a watcher, as [`crate::watcher::Watcher::stop`] returns them.
#[derive(Debug, Clone, Default)]
pub struct WatchReport {
    /// How long the watcher ran.
    pub elapsed: Duration,
    /// Rounds that listed the bucket and checked every object in it.
    pub rounds: u64,
    /// Rounds that also compared the slot with the bucket (the slot existed).
    pub slot_checks: u64,
    /// Complete segments compared byte for byte with the server's file.
    pub segments_compared: u64,
    /// `.partial` versions compared byte for byte with the server's file.
    pub partials_compared: u64,
    /// Deltas compared byte for byte with the server's file at their offsets.
    pub deltas_compared: u64,
    /// Objects not compared because the server's file was gone.
    pub gone_from_server: u64,
    /// The violations seen (the first 50; the rest are only counted).
    pub violations: Vec<Violation>,
    /// Violations beyond those kept.
    pub violations_dropped: u64,
    /// Rounds that failed (store or SQL errors), with the last few messages.
    pub failed_rounds: u64,
    /// The last few errors of failed rounds.
    pub errors: Vec<String>,
    /// The last successful slot check.
    pub last_slot_check: Option<SlotCheck>,
    /// The bucket's WAL objects at the last round.
    pub listing: WalListing,
    /// How far the pieces (`.partial`, deltas) of each segment holding some reached from
    /// its start at the last round ([`WalListing::assembled_end`]).
    pub partial_lens: BTreeMap<SegNo, u64>,
    /// Segment size the report's LSNs are computed with.
    pub seg: Option<WalSegmentSize>,
}

impl WatchReport {
    /// Records a violation (kept in full up to a limit, counted beyond it).
    pub(super) fn push_violation(&mut self, v: Violation) {
        if self.violations.len() < MAX_KEPT {
            self.violations.push(v);
        } else {
            self.violations_dropped += 1;
        }
    }

    /// Panics unless no violation was seen, at least `min_rounds` rounds ran with a slot
    /// check, and at least `min_compared` objects (segments and partial versions) were
    /// compared with the server (segments, partial versions, deltas): a watcher that checked
    /// nothing proves nothing.
    pub fn assert_clean(&self, min_rounds: u64, min_compared: u64) {
        let problems = self.problems(min_rounds, min_compared);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// What [`WatchReport::assert_clean`] would complain about, one line each.
    pub fn problems(&self, min_rounds: u64, min_compared: u64) -> Vec<String> {
        let mut out = Vec::new();
        if !self.violations.is_empty() {
            let mut s = format!(
                "bucket watcher saw {} violation(s):",
                self.violations.len() as u64 + self.violations_dropped
            );
            for v in &self.violations {
                s.push_str(&format!("\n  {v}"));
            }
            out.push(s);
        }
        if self.slot_checks < min_rounds {
            out.push(format!(
                "bucket watcher checked the slot in only {} rounds (wanted {min_rounds}); errors: {:?}",
                self.slot_checks, self.errors
            ));
        }
        let compared = self.segments_compared + self.partials_compared + self.deltas_compared;
        if compared < min_compared {
            out.push(format!(
                "bucket watcher compared only {compared} objects with pg_wal (wanted {min_compared})"
            ));
        }
        out
    }

    /// The first segment in the bucket and the end of the WAL held contiguously from it, at
    /// the last round.
    pub fn contiguous_from_first(&self) -> Option<(SegNo, Lsn)> {
        let seg = self.seg?;
        let first = self.listing.first_segment()?;
        Some((
            first,
            contiguous_end(&self.listing, first, &self.partial_lens, seg),
        ))
    }

    /// `Err` naming the first missing segment unless the bucket held, at the last round,
    /// every byte from its first segment up to `end` with no gap.
    pub fn check_no_gap_to(&self, end: Lsn) -> Result<(), String> {
        let Some(seg) = self.seg else {
            return Err("the watcher never listed the bucket".into());
        };
        let Some((first, reached)) = self.contiguous_from_first() else {
            return Err("no WAL object in the bucket".into());
        };
        if reached >= end {
            return Ok(());
        }
        let missing = self.listing.first_incomplete(first);
        let later: Vec<_> = self
            .listing
            .complete
            .range(missing..)
            .take(3)
            .map(|s| s.0)
            .collect();
        Err(format!(
            "the bucket holds WAL contiguously from segment {:X} ({}) only up to {reached}, short of {end}: segment {:X} is missing as a complete object (its pieces hold {} bytes from its start); later complete segments: {:X?}",
            first.0,
            first.start_lsn(seg),
            missing.0,
            self.partial_lens.get(&missing).copied().unwrap_or(0),
            later
        ))
    }
}

impl fmt::Display for WatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rounds in {:.1}s ({} slot checks, {} failed), {} segments, {} partial versions and {} deltas compared, {} gone from the server, {} violations",
            self.rounds,
            self.elapsed.as_secs_f64(),
            self.slot_checks,
            self.failed_rounds,
            self.segments_compared,
            self.partials_compared,
            self.deltas_compared,
            self.gone_from_server,
            self.violations.len() as u64 + self.violations_dropped
        )?;
        if let Some(c) = self.last_slot_check {
            write!(
                f,
                "; last restart_lsn {} frontier {}",
                c.restart_lsn, c.frontier
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgagent_protocol::TimelineId;

    const SEG: u64 = 16 << 20;

    fn report(keys: &[&str], partials: &[(u64, u64)]) -> WatchReport {
        let seg = WalSegmentSize::new(SEG).unwrap();
        WatchReport {
            listing: WalListing::from_keys(keys.iter().copied(), TimelineId(1), seg),
            partial_lens: partials.iter().map(|&(s, l)| (SegNo(s), l)).collect(),
            seg: Some(seg),
            ..WatchReport::default()
        }
    }

    #[test]
    fn no_gap_up_to_the_end_passes() {
        let r = report(
            &[
                "wal/000000010000000000000003",
                "wal/000000010000000000000004",
                "wal/000000010000000000000005.partial",
            ],
            &[(5, 100)],
        );
        assert_eq!(
            r.contiguous_from_first(),
            Some((SegNo(3), Lsn(5 * SEG + 100)))
        );
        assert_eq!(r.check_no_gap_to(Lsn(5 * SEG + 100)), Ok(()));
        assert!(r.check_no_gap_to(Lsn(5 * SEG + 101)).is_err());
    }

    #[test]
    fn a_gap_names_the_missing_segment() {
        let r = report(
            &[
                "wal/000000010000000000000003",
                "wal/000000010000000000000005",
                "wal/000000010000000000000006.partial",
            ],
            &[(6, 100)],
        );
        let err = r.check_no_gap_to(Lsn(6 * SEG)).unwrap_err();
        assert!(err.contains("segment 4 is missing"), "{err}");
        assert!(err.contains("[5]"), "{err}");
    }

    #[test]
    fn an_empty_bucket_or_an_unlisted_one_fails() {
        assert!(report(&[], &[]).check_no_gap_to(Lsn(1)).is_err());
        assert!(WatchReport::default().check_no_gap_to(Lsn(1)).is_err());
    }

    #[test]
    fn a_lazy_watcher_is_a_failure() {
        let mut r = report(&[], &[]);
        r.slot_checks = 3;
        r.segments_compared = 1;
        r.partials_compared = 1;
        assert_eq!(r.problems(3, 2), Vec::<String>::new());
        assert_eq!(r.problems(4, 2).len(), 1);
        assert_eq!(r.problems(3, 3).len(), 1);
        r.deltas_compared = 1;
        assert_eq!(r.problems(3, 3), Vec::<String>::new());
        r.push_violation(Violation {
            at: Duration::from_secs(1),
            kind: ViolationKind::SlotAhead {
                restart_lsn: Lsn(2),
                frontier: Lsn(1),
                stopped_at: "x".into(),
            },
        });
        let p = r.problems(0, 0);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("slot restart_lsn 0/2 is past"), "{}", p[0]);
    }
}
