//! State shared by the receiver, the uploader and the status publisher.

use std::sync::{Arc, Mutex, MutexGuard};

use pgagent_protocol::{Lsn, TimelineId, WalSegmentSize};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::tracker::{FlushTracker, RpoClock};

/// What the status publisher shows besides the tracker's positions.
#[derive(Debug, Clone, Default)]
pub struct LiveStatus {
    /// The replication connection is streaming.
    pub connected: bool,
    /// Timeline being streamed.
    pub timeline: Option<TimelineId>,
    /// Last error worth showing to an operator (connection, upload, conflict).
    pub last_error: Option<String>,
    /// WAL that is neither in the bucket nor on the server any more: (from, to).
    pub wal_gap: Option<(Lsn, Lsn)>,
    /// The staging disk is full: receiving waits for room.
    pub staging_disk_full: bool,
}

/// State shared by the pipeline's tasks.
#[derive(Debug)]
pub struct Shared {
    /// The cluster's WAL segment size.
    pub seg: WalSegmentSize,
    /// `confirm = "bucket"`: flush means durable in the bucket.
    pub confirm_bucket: bool,
    tracker: Mutex<FlushTracker>,
    /// Signalled whenever the bucket frontier moves, so the receiver reports it at once.
    pub frontier_moved: Notify,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    live: Mutex<LiveStatus>,
    rpo: Mutex<RpoClock>,
}

impl Shared {
    /// Shared state around a tracker.
    pub fn new(
        seg: WalSegmentSize,
        confirm_bucket: bool,
        tracker: FlushTracker,
        metrics: Arc<Metrics>,
    ) -> Self {
        Shared {
            seg,
            confirm_bucket,
            tracker: Mutex::new(tracker),
            frontier_moved: Notify::new(),
            metrics,
            live: Mutex::new(LiveStatus::default()),
            rpo: Mutex::new(RpoClock::new(std::time::Duration::from_millis(100))),
        }
    }

    /// The flush tracker (held briefly; never across an await).
    pub fn tracker(&self) -> MutexGuard<'_, FlushTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live status.
    pub fn live(&self) -> MutexGuard<'_, LiveStatus> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The RPO clock.
    pub fn rpo(&self) -> MutexGuard<'_, RpoClock> {
        self.rpo.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a gap in the WAL the bucket holds, for `status`, `/readyz` and
    /// `pgagent_wal_gap_bytes`. It stays reported for the life of the process.
    pub fn report_gap(&self, from: Lsn, to: Lsn) {
        self.live().wal_gap = Some((from, to));
        self.metrics
            .wal_gap_bytes
            .set(i64::try_from(to.0.saturating_sub(from.0)).unwrap_or(i64::MAX));
        self.set_error(format!(
            "WAL gap in the store from {from} to {to}: take a new base backup"
        ));
    }

    /// Records an error for `pgagent status`.
    pub fn set_error(&self, msg: impl Into<String>) {
        self.live().last_error = Some(msg.into());
    }
}
