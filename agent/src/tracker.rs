//! What may be confirmed to the server as `flush`.
//!
//! With a physical slot, the `flush` position in a standby status update is what lets the
//! server recycle WAL (`PhysicalConfirmReceivedLocation` in
//! `src/backend/replication/walsender.c` sets the slot's `restart_lsn` to it). pgagent must
//! therefore never report a position that is not durable where `confirm` says: in the bucket
//! (the default) or fsynced in staging.
//!
//! [`FlushTracker`] is the pure bookkeeping behind that rule. Uploads finish out of order (the
//! uploader runs several at once), so the bucket frontier is the end of the longest run of
//! contiguous complete segments from the start position, extended by the run of deltas
//! (partial uploads, `storage::deltas`) of the first segment not yet complete.

use std::collections::{BTreeMap, BTreeSet};

use pgagent_protocol::{Lsn, SegNo, TimelineId, WalSegmentSize};

/// Something that must be in the bucket before WAL past a position may be confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hold {
    /// A complete segment a previous run left in staging, below the start, queued for upload
    /// again: the frontier stays at its start until it lands.
    Segment(SegNo),
    /// The history file of a timeline: WAL after the switch to it is useless to a recovery
    /// without it (`recovery_target_timeline` follows history files), so the frontier stays
    /// at the switch point until it lands.
    History(TimelineId),
    /// One store of several, at start: what it holds below the resume point is not known
    /// yet (it may lag: an async store that was down). Its end counts as nothing until that
    /// is read, and then as the first segment it still has to copy.
    CatchUp,
}

/// Bookkeeping of what is durable in staging and in the bucket.
///
/// Invariants: `staged <= received`; the value reported as `flush` never goes below `floor`
/// and never passes the bucket frontier when the frontier is above the floor.
#[derive(Debug, Clone)]
pub struct FlushTracker {
    seg: WalSegmentSize,
    /// Position below which everything was confirmed before this process started (the slot's
    /// `restart_lsn`, or the resume point); reported until the frontier passes it.
    floor: Lsn,
    /// Lowest segment that is not yet in the bucket as a complete object.
    next_needed: SegNo,
    /// Complete segments uploaded ahead of `next_needed` (out-of-order completions).
    ahead: BTreeSet<SegNo>,
    /// How far the bucket holds segments not yet complete there, as far as the frontier is
    /// concerned: per segment, the end of the run of its deltas from the segment start. More
    /// than one when a later segment's first delta lands before an earlier segment's
    /// complete object (uploads are not ordered): the earlier run still counts until then.
    partials: BTreeMap<SegNo, Lsn>,
    /// The segment whose deltas the bucket holds (timeline, segment, end of their run from
    /// the segment start): where the next delta starts.
    stored_partial: Option<(TimelineId, SegNo, Lsn)>,
    /// What must land before the frontier may pass a position (see [`Hold`]).
    holds: BTreeMap<Hold, Lsn>,
    /// End of WAL received from the server (`write`).
    received: Lsn,
    /// End of WAL fsynced in staging.
    staged: Lsn,
}

impl FlushTracker {
    /// Starts tracking at `start` (a segment start: streaming always restarts at one) with
    /// `floor` as the position the server already had confirmed.
    pub fn new(seg: WalSegmentSize, start: Lsn, floor: Lsn) -> Self {
        FlushTracker {
            seg,
            floor,
            next_needed: start.segment_number(seg),
            ahead: BTreeSet::new(),
            partials: BTreeMap::new(),
            stored_partial: None,
            holds: BTreeMap::new(),
            received: start,
            staged: start,
        }
    }

    /// Holds the frontier below `segnos` (segments left in staging by a previous run and
    /// queued for upload again) until each of them has landed.
    pub fn hold_for_leftovers(&mut self, segnos: impl IntoIterator<Item = SegNo>) {
        for s in segnos.into_iter().filter(|s| *s < self.next_needed) {
            self.holds.insert(Hold::Segment(s), s.start_lsn(self.seg));
        }
    }

    /// Holds the frontier at nothing until [`FlushTracker::caught_up_to`] says what the store
    /// holds below the start (see [`Hold::CatchUp`]).
    pub fn hold_for_catch_up(&mut self) {
        self.holds.insert(Hold::CatchUp, Lsn::INVALID);
    }

    /// The store holds everything below the start except `copies` (complete segments, each
    /// to be copied in and recorded with [`FlushTracker::segment_uploaded`]): the frontier
    /// is held at the first of them still missing.
    pub fn caught_up_to(&mut self, copies: impl IntoIterator<Item = SegNo>) {
        self.hold_for_leftovers(copies);
        self.holds.remove(&Hold::CatchUp);
    }

    /// Holds the frontier at `switch_point` until the history file of `tli` has landed.
    pub fn hold_for_history(&mut self, tli: TimelineId, switch_point: Lsn) {
        let at = self.holds.entry(Hold::History(tli)).or_insert(switch_point);
        *at = (*at).min(switch_point);
    }

    /// Records that the history file of `tli` is durable in the bucket.
    pub fn history_uploaded(&mut self, tli: TimelineId) {
        self.holds.remove(&Hold::History(tli));
    }

    /// Records WAL received up to `end` (exclusive).
    pub fn received(&mut self, end: Lsn) {
        self.received = self.received.max(end);
    }

    /// Records WAL fsynced in staging up to `end` (exclusive).
    pub fn staged(&mut self, end: Lsn) {
        self.staged = self.staged.max(end);
        self.received = self.received.max(end);
    }

    /// Records that complete segment `segno` is durable in the bucket.
    pub fn segment_uploaded(&mut self, segno: SegNo) {
        self.holds.remove(&Hold::Segment(segno));
        if segno < self.next_needed {
            return;
        }
        self.ahead.insert(segno);
        while self.ahead.remove(&self.next_needed) {
            self.next_needed = self.next_needed.next();
        }
        self.partials = self.partials.split_off(&self.next_needed);
    }

    /// Records that WAL of segment `segno` of timeline `tli` from `start` to `end` is durable
    /// in the bucket as a delta (uploaded now; or, with `start` at the segment start, the run
    /// of deltas found there at start). It counts only when it continues the run the bucket
    /// holds from the segment start: a delta past a hole counts for nothing.
    pub fn partial_uploaded(&mut self, tli: TimelineId, segno: SegNo, start: Lsn, end: Lsn) {
        let held = self.stored_partial_end(tli, segno);
        let continues = start == segno.start_lsn(self.seg) || held.is_some_and(|h| h >= start);
        if !continues || !self.partial_is_news(tli, segno, end) {
            return;
        }
        let run = self.partials.entry(segno).or_insert(end);
        *run = (*run).max(end);
        self.stored_partial = Some((tli, segno, end));
    }

    /// End of the run of WAL the bucket holds from the start of segment `segno` of `tli`, if
    /// that is the segment being filled: where its next delta starts.
    pub fn stored_partial_end(&self, tli: TimelineId, segno: SegNo) -> Option<Lsn> {
        match self.stored_partial {
            Some((t, s, e)) if (t, s) == (tli, segno) => Some(e),
            _ => None,
        }
    }

    /// Starts over at `start` (a segment start) with `start` as the confirmed position: the
    /// WAL before it is lost to this run (the server no longer has it), and what was
    /// tracked below it never completes.
    pub fn rebase(&mut self, start: Lsn) {
        *self = FlushTracker {
            stored_partial: self.stored_partial,
            received: self.received.max(start),
            staged: self.staged.max(start),
            ..FlushTracker::new(self.seg, start, start)
        };
    }

    /// Whether a delta of `tli`/`segno` ending at `end` would add to what the bucket holds:
    /// false when the segment is complete in the bucket, when the bucket's run of that
    /// segment already reaches `end` (after a restart a segment is received again from its
    /// start), and for a segment before the one whose deltas the bucket holds (a view queued
    /// before a newer segment's delta landed).
    pub fn partial_is_news(&self, tli: TimelineId, segno: SegNo, end: Lsn) -> bool {
        if segno < self.next_needed || self.ahead.contains(&segno) {
            return false;
        }
        match self.stored_partial {
            Some((t, s, e)) => (tli, segno, end) > (t, s, e),
            None => true,
        }
    }

    /// Forgets the `.partial` of a timeline that ended: its bytes stay valid, but the new
    /// timeline restarts the same segment from its start.
    pub fn timeline_switched(&mut self, new_start: Lsn) {
        let segno = new_start.segment_number(self.seg);
        if let Some(e) = self.partials.get_mut(&segno) {
            // The old timeline's partial covers up to the switch point, which the new
            // timeline's segment repeats byte for byte; keep it as the frontier.
            *e = (*e).min(new_start);
        }
    }

    /// The position already confirmed when tracking started (or after a rebase).
    pub fn floor(&self) -> Lsn {
        self.floor
    }

    /// End of WAL received (`write` in the status update).
    pub fn received_lsn(&self) -> Lsn {
        self.received
    }

    /// End of the WAL that is contiguous and durable in the bucket.
    pub fn bucket_frontier(&self) -> Lsn {
        let complete = self.next_needed.start_lsn(self.seg);
        let frontier = match self.partials.get(&self.next_needed) {
            Some(&e) => complete.max(e),
            None => complete,
        };
        self.holds.values().fold(frontier, |f, at| f.min(*at))
    }

    /// The position to report as `flush`: the bucket frontier (or staging when `bucket` is
    /// false), never below the floor and never beyond what was received.
    pub fn flush_lsn(&self, bucket: bool) -> Lsn {
        let durable = if bucket {
            self.bucket_frontier()
        } else {
            self.staged
        };
        durable.max(self.floor).min(self.received.max(self.floor))
    }

    /// Bytes received but not yet durable in the bucket.
    pub fn upload_lag_bytes(&self) -> u64 {
        self.received.0.saturating_sub(self.bucket_frontier().0)
    }
}

/// Measures the recovery point objective: how long ago the oldest WAL byte that is not yet
/// in the bucket was received.
///
/// It keeps (position, time received) samples, at most one per `resolution`, and drops those
/// the bucket frontier has passed.
#[derive(Debug)]
pub struct RpoClock {
    samples: std::collections::VecDeque<(Lsn, std::time::Instant)>,
    resolution: std::time::Duration,
}

impl RpoClock {
    /// A clock keeping one sample per `resolution` at most.
    pub fn new(resolution: std::time::Duration) -> Self {
        RpoClock {
            samples: Default::default(),
            resolution,
        }
    }

    /// Notes that WAL up to `end` was received at `now`.
    pub fn received(&mut self, end: Lsn, now: std::time::Instant) {
        match self.samples.back_mut() {
            Some((lsn, at)) if now.duration_since(*at) < self.resolution => *lsn = (*lsn).max(end),
            _ => self.samples.push_back((end, now)),
        }
    }

    /// Seconds since the oldest WAL beyond `frontier` was received; 0 when nothing is
    /// waiting.
    pub fn rpo_seconds(&mut self, frontier: Lsn, now: std::time::Instant) -> f64 {
        // Samples coalesce a window of `resolution`: bytes of the first sample beyond the
        // frontier arrived no earlier than its time, so this overstates by < `resolution`.
        while self
            .samples
            .front()
            .is_some_and(|(lsn, _)| *lsn <= frontier)
        {
            self.samples.pop_front();
        }
        self.samples.front().map_or(0.0, |(_, at)| {
            now.saturating_duration_since(*at).as_secs_f64()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpo_is_the_age_of_the_oldest_waiting_byte() {
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let mut c = RpoClock::new(std::time::Duration::from_millis(100));
        c.received(Lsn(100), t0);
        c.received(Lsn(200), t0 + s(2));
        c.received(Lsn(300), t0 + s(4));
        assert_eq!(c.rpo_seconds(Lsn(300), t0 + s(5)), 0.0);
        c.received(Lsn(400), t0 + s(6));
        c.received(Lsn(500), t0 + s(8));
        assert_eq!(c.rpo_seconds(Lsn(300), t0 + s(10)), 4.0);
        assert_eq!(c.rpo_seconds(Lsn(400), t0 + s(10)), 2.0);
        assert_eq!(c.rpo_seconds(Lsn(500), t0 + s(10)), 0.0);
    }

    const MB: u64 = 1 << 20;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(16 * MB).unwrap()
    }

    fn lsn_of(segno: u64, off: u64) -> Lsn {
        Lsn(segno * 16 * MB + off)
    }

    #[test]
    fn frontier_waits_for_contiguous_segments() {
        let mut t = FlushTracker::new(seg(), lsn_of(10, 0), lsn_of(10, 0));
        t.staged(lsn_of(13, 5));
        t.segment_uploaded(SegNo(12));
        assert_eq!(
            t.bucket_frontier(),
            lsn_of(10, 0),
            "a gap at 10 holds the frontier"
        );
        t.segment_uploaded(SegNo(10));
        assert_eq!(t.bucket_frontier(), lsn_of(11, 0));
        t.segment_uploaded(SegNo(11));
        assert_eq!(t.bucket_frontier(), lsn_of(13, 0));
    }

    #[test]
    fn partial_counts_only_on_the_first_missing_segment() {
        let mut t = FlushTracker::new(seg(), lsn_of(10, 0), lsn_of(10, 0));
        t.staged(lsn_of(11, 100));
        t.partial_uploaded(TimelineId(1), SegNo(11), lsn_of(11, 0), lsn_of(11, 100));
        assert_eq!(
            t.bucket_frontier(),
            lsn_of(10, 0),
            "segment 10 not yet uploaded"
        );
        t.segment_uploaded(SegNo(10));
        assert_eq!(t.bucket_frontier(), lsn_of(11, 100));
        assert_eq!(t.flush_lsn(true), lsn_of(11, 100));
    }

    #[test]
    fn a_later_segments_delta_landing_first_never_moves_the_frontier_back() {
        let tli = TimelineId(1);
        let mut t = FlushTracker::new(seg(), lsn_of(10, 0), lsn_of(10, 0));
        t.staged(lsn_of(11, 100));
        t.partial_uploaded(tli, SegNo(10), lsn_of(10, 0), lsn_of(10, 800));
        assert_eq!(t.flush_lsn(true), lsn_of(10, 800));
        // Segment 10 completed; 11's first delta lands before 10's complete object.
        t.partial_uploaded(tli, SegNo(11), lsn_of(11, 0), lsn_of(11, 100));
        assert_eq!(t.flush_lsn(true), lsn_of(10, 800), "10's run still counts");
        t.segment_uploaded(SegNo(10));
        assert_eq!(t.flush_lsn(true), lsn_of(11, 100));
    }

    #[test]
    fn an_older_partial_never_moves_the_frontier_back() {
        let mut t = FlushTracker::new(seg(), lsn_of(10, 0), lsn_of(10, 0));
        t.staged(lsn_of(10, 900));
        t.partial_uploaded(TimelineId(1), SegNo(10), lsn_of(10, 0), lsn_of(10, 800));
        t.partial_uploaded(TimelineId(1), SegNo(10), lsn_of(10, 0), lsn_of(10, 300));
        assert_eq!(t.bucket_frontier(), lsn_of(10, 800));
    }

    #[test]
    fn flush_never_below_floor_nor_beyond_received() {
        let mut t = FlushTracker::new(seg(), lsn_of(10, 0), lsn_of(10, 500));
        assert_eq!(t.flush_lsn(true), lsn_of(10, 500));
        t.staged(lsn_of(10, 700));
        assert_eq!(t.flush_lsn(false), lsn_of(10, 700));
        t.partial_uploaded(TimelineId(1), SegNo(10), lsn_of(10, 0), lsn_of(10, 600));
        assert_eq!(t.flush_lsn(true), lsn_of(10, 600));
    }

    #[test]
    fn staging_confirm_follows_fsync_not_receipt() {
        let mut t = FlushTracker::new(seg(), lsn_of(1, 0), lsn_of(1, 0));
        t.received(lsn_of(1, 4000));
        t.staged(lsn_of(1, 2000));
        assert_eq!(t.flush_lsn(false), lsn_of(1, 2000));
        assert_eq!(t.upload_lag_bytes(), 4000);
    }

    #[test]
    fn segments_left_in_staging_hold_the_frontier_until_they_land() {
        // A crash left 5 staged (not uploaded); 6 had landed; streaming resumes at 7.
        let mut t = FlushTracker::new(seg(), lsn_of(7, 0), lsn_of(5, 0));
        t.hold_for_leftovers([SegNo(5)]);
        t.staged(lsn_of(7, 100));
        t.partial_uploaded(TimelineId(1), SegNo(7), lsn_of(7, 0), lsn_of(7, 100));
        assert_eq!(t.bucket_frontier(), lsn_of(5, 0), "5 is only in staging");
        assert_eq!(t.flush_lsn(true), lsn_of(5, 0));
        t.segment_uploaded(SegNo(5));
        assert_eq!(t.bucket_frontier(), lsn_of(7, 100));
    }

    #[test]
    fn partial_of_an_ended_timeline_is_cut_at_the_switch_point() {
        let mut t = FlushTracker::new(seg(), lsn_of(5, 0), lsn_of(5, 0));
        t.staged(lsn_of(5, 9000));
        t.partial_uploaded(TimelineId(1), SegNo(5), lsn_of(5, 0), lsn_of(5, 9000));
        t.timeline_switched(lsn_of(5, 4000));
        assert_eq!(t.bucket_frontier(), lsn_of(5, 4000));
    }

    #[test]
    fn a_shorter_partial_of_the_same_object_is_not_news() {
        // A restart re-receives segment 10 from its start; the bucket already holds 800 bytes.
        let mut t = FlushTracker::new(seg(), lsn_of(10, 0), lsn_of(10, 800));
        let tli = TimelineId(1);
        t.partial_uploaded(tli, SegNo(10), lsn_of(10, 0), lsn_of(10, 800));
        assert!(!t.partial_is_news(tli, SegNo(10), lsn_of(10, 300)));
        assert!(!t.partial_is_news(tli, SegNo(10), lsn_of(10, 800)));
        assert!(t.partial_is_news(tli, SegNo(10), lsn_of(10, 801)));
        assert!(t.partial_is_news(tli, SegNo(11), lsn_of(11, 1)));
        assert!(
            t.partial_is_news(TimelineId(2), SegNo(10), lsn_of(10, 100)),
            "another timeline's object is another object"
        );
        t.received(lsn_of(10, 300));
        assert_eq!(
            t.bucket_frontier(),
            lsn_of(10, 800),
            "found at start, it counts"
        );
    }

    #[test]
    fn wal_after_a_switch_waits_for_the_history_file() {
        let mut t = FlushTracker::new(seg(), lsn_of(5, 0), lsn_of(5, 0));
        t.staged(lsn_of(6, 100));
        t.hold_for_history(TimelineId(2), lsn_of(5, 4000));
        t.segment_uploaded(SegNo(5));
        t.partial_uploaded(TimelineId(2), SegNo(6), lsn_of(6, 0), lsn_of(6, 100));
        assert_eq!(t.bucket_frontier(), lsn_of(5, 4000));
        assert_eq!(t.flush_lsn(true), lsn_of(5, 4000));
        t.history_uploaded(TimelineId(2));
        assert_eq!(t.flush_lsn(true), lsn_of(6, 100));
    }

    #[test]
    fn a_delta_counts_only_when_it_continues_the_run() {
        let mut t = FlushTracker::new(seg(), lsn_of(10, 0), lsn_of(10, 0));
        let tli = TimelineId(1);
        t.staged(lsn_of(10, 900));
        t.partial_uploaded(tli, SegNo(10), lsn_of(10, 0), lsn_of(10, 300));
        assert_eq!(t.stored_partial_end(tli, SegNo(10)), Some(lsn_of(10, 300)));
        t.partial_uploaded(tli, SegNo(10), lsn_of(10, 400), lsn_of(10, 600));
        assert_eq!(t.bucket_frontier(), lsn_of(10, 300), "a hole at 300..400");
        t.partial_uploaded(tli, SegNo(10), lsn_of(10, 300), lsn_of(10, 500));
        assert_eq!(t.bucket_frontier(), lsn_of(10, 500));
        t.partial_uploaded(tli, SegNo(10), lsn_of(10, 250), lsn_of(10, 700));
        assert_eq!(
            t.bucket_frontier(),
            lsn_of(10, 700),
            "an overlap continues it"
        );
        assert_eq!(t.stored_partial_end(tli, SegNo(10)), Some(lsn_of(10, 700)));
        assert_eq!(t.stored_partial_end(tli, SegNo(11)), None);
    }

    #[test]
    fn views_of_complete_or_older_segments_are_not_news() {
        let mut t = FlushTracker::new(seg(), lsn_of(10, 0), lsn_of(10, 0));
        let tli = TimelineId(1);
        t.staged(lsn_of(12, 100));
        t.segment_uploaded(SegNo(10));
        t.segment_uploaded(SegNo(12));
        assert!(
            !t.partial_is_news(tli, SegNo(10), lsn_of(10, 5)),
            "complete"
        );
        assert!(
            !t.partial_is_news(tli, SegNo(12), lsn_of(12, 5)),
            "complete, ahead"
        );
        t.partial_uploaded(tli, SegNo(13), lsn_of(13, 0), lsn_of(13, 50));
        assert!(!t.partial_is_news(tli, SegNo(11), lsn_of(11, 5)), "older");
        assert!(t.partial_is_news(tli, SegNo(13), lsn_of(13, 51)));
    }

    #[test]
    fn a_rebase_forgets_what_can_no_longer_complete() {
        let mut t = FlushTracker::new(seg(), lsn_of(5, 0), lsn_of(5, 0));
        t.staged(lsn_of(5, 100));
        t.rebase(lsn_of(8, 0));
        assert_eq!(t.flush_lsn(true), lsn_of(8, 0));
        t.staged(lsn_of(8, 10));
        t.partial_uploaded(TimelineId(1), SegNo(8), lsn_of(8, 0), lsn_of(8, 10));
        assert_eq!(t.flush_lsn(true), lsn_of(8, 10));
    }
}
