//! State shared by the receiver, the uploader and the status publisher.

use std::sync::{Arc, Mutex, MutexGuard};

use pgagent_protocol::{TimelineId, WalSegmentSize};
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

    /// Records an error for `pgagent status`.
    pub fn set_error(&self, msg: impl Into<String>) {
        self.live().last_error = Some(msg.into());
    }
}
