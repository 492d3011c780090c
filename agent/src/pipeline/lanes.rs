//! One lane per store: what each store holds, and the `flush` all of them allow together.
//!
//! The receiver reads the server once and stages each byte once; every store then gets the
//! same objects through its own lane (its own upload queue, retries and, here, its own
//! [`FlushTracker`]). The lanes differ only in what they hold, so the rule for `flush` is:
//!
//! - `flush` never passes the durable end of a **required** store: the lowest of their
//!   ends (each computed by its tracker exactly as with one store).
//! - An **async** store's end does not limit `flush`, unless its role says
//!   `on_lag_exceeded = "hold"`: then `flush` stays within `max_lag.bytes` of its end, and
//!   while its oldest missing WAL is older than `max_lag.time`, `flush` does not move.
//! - `flush` never goes backwards: a position once allowed was durable where the rule
//!   said, and stays so (objects are immutable and never removed below a store's end).
//!
//! Pure bookkeeping, no I/O: the receiver, the uploaders and the status publisher call it
//! under one lock, and the simulation steps it.

use std::time::{Duration, Instant};

use pgagent_protocol::{Lsn, SegNo, TimelineId};

use crate::config::{OnLagExceeded, StoreRole};
use crate::tracker::{FlushTracker, RpoClock};

/// Index of a lane: the store's position in the configuration (restore order).
pub type LaneId = usize;

/// One store's lane.
#[derive(Debug)]
pub struct Lane {
    /// The store's name (the `store` label of its metrics).
    pub name: String,
    /// Required or async, with the lag policy.
    pub role: StoreRole,
    /// What the store holds, as with one store.
    pub tracker: FlushTracker,
    /// When the WAL it does not hold yet was received.
    rpo: RpoClock,
    /// Its last upload attempt failed (the store is down, or refuses).
    pub failing: bool,
}

impl Lane {
    /// A lane for store `name` starting from `tracker`.
    pub fn new(name: impl Into<String>, role: StoreRole, tracker: FlushTracker) -> Lane {
        Lane {
            name: name.into(),
            role,
            tracker,
            rpo: RpoClock::new(Duration::from_millis(100)),
            failing: false,
        }
    }

    /// Whether `flush` waits for this store.
    pub fn is_required(&self) -> bool {
        self.role == StoreRole::Required
    }

    /// Seconds of WAL a loss of every other copy would lose from this store now.
    pub fn rpo_seconds(&mut self, now: Instant) -> f64 {
        let end = self.tracker.bucket_frontier();
        self.rpo.rpo_seconds(end, now)
    }

    /// Whether the store is behind by more than its `max_lag` (time or bytes); never for a
    /// required store or one without a bound.
    pub fn lag_exceeded(&mut self, now: Instant) -> bool {
        let StoreRole::Async {
            max_lag: Some(max), ..
        } = self.role
        else {
            return false;
        };
        let bytes = max
            .bytes
            .is_some_and(|b| self.tracker.upload_lag_bytes() > b.as_u64());
        let time = max
            .time
            .is_some_and(|t| self.rpo_seconds(now) > t.as_secs_f64());
        bytes || time
    }

    /// The highest `flush` this lane allows, given the highest the others allow: its end
    /// for a required store; for an async store under `hold`, its end plus `max_lag.bytes`
    /// (and no move at all while `max_lag.time` is exceeded); otherwise no bound.
    fn bound(&mut self, now: Instant, reported: Lsn) -> Option<Lsn> {
        match self.role {
            StoreRole::Required => Some(self.tracker.flush_lsn(true)),
            StoreRole::Async {
                max_lag: Some(max),
                on_lag_exceeded: OnLagExceeded::Hold,
            } => {
                let end = self.tracker.bucket_frontier();
                let by_bytes = max.bytes.map(|b| end + b.as_u64());
                let by_time = max
                    .time
                    .filter(|t| self.rpo_seconds(now) > t.as_secs_f64())
                    .map(|_| reported);
                match (by_bytes, by_time) {
                    (Some(b), Some(t)) => Some(b.min(t)),
                    (b, t) => b.or(t),
                }
            }
            StoreRole::Async { .. } => None,
        }
    }
}

/// Every store's lane, and the `flush` they allow together (see the module doc).
///
/// Invariant: at least one lane is required (configuration refuses otherwise).
#[derive(Debug)]
pub struct Lanes {
    lanes: Vec<Lane>,
    /// Highest `flush` allowed so far: never goes back.
    reported: Lsn,
    /// `confirm = "bucket"`: flush waits for the stores; else staging is enough.
    confirm_bucket: bool,
}

impl Lanes {
    /// Lanes in configuration order; `confirm_bucket` as `wal.confirm = "bucket"`.
    ///
    /// Panics when no lane is required (configuration guarantees one).
    pub fn new(lanes: Vec<Lane>, confirm_bucket: bool) -> Lanes {
        assert!(
            lanes.iter().any(Lane::is_required),
            "at least one required store"
        );
        let floor = lanes
            .iter()
            .map(|l| l.tracker.floor())
            .min()
            .unwrap_or(Lsn::INVALID);
        Lanes {
            lanes,
            reported: floor,
            confirm_bucket,
        }
    }

    /// The lanes.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &Lane> {
        self.lanes.iter()
    }

    /// The lanes, to read their clocks.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Lane> {
        self.lanes.iter_mut()
    }

    /// Lane `id`'s tracker.
    ///
    /// Panics on an id that is not a lane's.
    pub fn tracker(&mut self, id: LaneId) -> &mut FlushTracker {
        &mut self.lanes[id].tracker
    }

    /// Lane `id`.
    pub fn lane(&self, id: LaneId) -> &Lane {
        &self.lanes[id]
    }

    /// Records whether lane `id`'s last upload attempt failed.
    pub fn set_failing(&mut self, id: LaneId, failing: bool) {
        self.lanes[id].failing = failing;
    }

    /// Records WAL received up to `end` at `now` in every lane.
    pub fn received(&mut self, end: Lsn, now: Instant) {
        for l in &mut self.lanes {
            l.tracker.received(end);
            l.rpo.received(end, now);
        }
    }

    /// Records WAL fsynced in staging up to `end` in every lane.
    pub fn staged(&mut self, end: Lsn) {
        for l in &mut self.lanes {
            l.tracker.staged(end);
        }
    }

    /// Holds every store's end at `switch_point` until it has the history file of `tli`.
    pub fn hold_for_history(&mut self, tli: TimelineId, switch_point: Lsn) {
        for l in &mut self.lanes {
            l.tracker.hold_for_history(tli, switch_point);
        }
    }

    /// Every lane starts over at `start` ([`FlushTracker::rebase`]): the WAL before it is
    /// lost to this run, and `flush` restarts from there.
    pub fn rebase(&mut self, start: Lsn) {
        for l in &mut self.lanes {
            l.tracker.rebase(start);
        }
        self.reported = start;
    }

    /// A timeline switched at `new_start` ([`FlushTracker::timeline_switched`]).
    pub fn timeline_switched(&mut self, new_start: Lsn) {
        for l in &mut self.lanes {
            l.tracker.timeline_switched(new_start);
        }
    }

    /// Whether a delta of `tli`/`segno` ending at `end` would add to what lane `id`'s store
    /// holds ([`FlushTracker::partial_is_news`]).
    pub fn partial_is_news(&self, id: LaneId, tli: TimelineId, segno: SegNo, end: Lsn) -> bool {
        self.lanes[id].tracker.partial_is_news(tli, segno, end)
    }

    /// End of WAL received (`write`).
    pub fn received_lsn(&self) -> Lsn {
        self.lanes[0].tracker.received_lsn()
    }

    /// The position to report as `flush` at `now` (see the module doc); with
    /// `confirm = "staging"`, what staging holds.
    pub fn flush_lsn(&mut self, now: Instant) -> Lsn {
        if !self.confirm_bucket {
            let staged = self.lanes[0].tracker.flush_lsn(false);
            self.reported = self.reported.max(staged);
            return self.reported;
        }
        let reported = self.reported;
        let allowed = self
            .lanes
            .iter_mut()
            .filter_map(|l| l.bound(now, reported))
            .min()
            .expect("a required lane bounds flush");
        self.reported = self.reported.max(allowed);
        self.reported
    }

    /// The end every required store holds: what `flush` follows (before any `hold`).
    pub fn required_end(&self) -> Lsn {
        self.lanes
            .iter()
            .filter(|l| l.is_required())
            .map(|l| l.tracker.bucket_frontier())
            .min()
            .expect("a required lane")
    }

    /// Bytes received and not yet in every required store: what staging must keep.
    pub fn upload_lag_bytes(&self) -> u64 {
        self.lanes
            .iter()
            .filter(|l| l.is_required())
            .map(|l| l.tracker.upload_lag_bytes())
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
#[path = "lanes_tests.rs"]
mod tests;
