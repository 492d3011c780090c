//! State shared by the receiver, the uploader and the status publisher.

use std::sync::{Arc, Mutex, MutexGuard};

use pgagent_protocol::{Lsn, TimelineId, WalSegmentSize};
use tokio::sync::Notify;

use super::lanes::Lanes;
use crate::metrics::Metrics;

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
    lanes: Mutex<Lanes>,
    /// Signalled whenever a store's end moves, so the receiver reports it at once.
    pub frontier_moved: Notify,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    live: Mutex<LiveStatus>,
}

impl Shared {
    /// Shared state around the stores' lanes.
    pub fn new(seg: WalSegmentSize, lanes: Lanes, metrics: Arc<Metrics>) -> Self {
        Shared {
            seg,
            lanes: Mutex::new(lanes),
            frontier_moved: Notify::new(),
            metrics,
            live: Mutex::new(LiveStatus::default()),
        }
    }

    /// The stores' lanes (held briefly; never across an await).
    pub fn lanes(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The position to report as `flush` now ([`Lanes::flush_lsn`]).
    pub fn flush_lsn(&self) -> Lsn {
        self.lanes()
            .flush_lsn(tokio::time::Instant::now().into_std())
    }

    /// The live status.
    pub fn live(&self) -> MutexGuard<'_, LiveStatus> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
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
