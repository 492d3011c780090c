//! The pieces a simulated world is built from: a store with its role and its checker,
//! staging in memory, and the compress step run on the simulation's thread.

use std::time::Duration;

use pgagent_protocol::Lsn;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::check::Checker;
use super::store::SimStore;
use crate::config::{MaxLag, OnLagExceeded, StoreRole};
use crate::pipeline::compress::Sealer;
use crate::pipeline::jobs::{CompressJob, UploadJob};

/// One simulated store, its role and its checker.
pub(super) struct SimLane {
    pub(super) store: SimStore,
    pub(super) role: StoreRole,
    pub(super) partial_interval: Duration,
    /// Checks what fetch serves from this store alone.
    pub(super) checker: Checker,
    /// The store is down until then.
    pub(super) down_until: Option<Instant>,
}

impl SimLane {
    /// What this store alone must serve when `flush` was confirmed: all of it for a
    /// required store; for an async store under `hold` with a byte bound, all but that
    /// bound; nothing promised for another async store (until the end).
    pub(super) fn promised(&self, flush: Lsn) -> Option<Lsn> {
        match self.role {
            StoreRole::Required => Some(flush),
            StoreRole::Async {
                max_lag:
                    Some(MaxLag {
                        bytes: Some(b),
                        time: None,
                    }),
                on_lag_exceeded: OnLagExceeded::Hold,
            } => Some(Lsn(flush.0.saturating_sub(b.as_u64()))),
            StoreRole::Async { .. } => None,
        }
    }
}

/// A staging directory in memory where the machine has one (`/dev/shm`): the simulation
/// fsyncs as the agent does, and a disk's fsyncs would cost most of its time.
pub(super) fn staging_dir() -> Result<tempfile::TempDir, String> {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    dir.map_err(|e| format!("staging directory: {e}"))
}

/// The compress workers' part, on the simulation's thread: seals each staged segment or
/// history file as the pool does ([`Sealer::seal`]) and queues it for upload.
pub(super) async fn compress(
    rx: crossbeam_channel::Receiver<CompressJob>,
    tx: mpsc::Sender<UploadJob>,
    sealer: Sealer,
) {
    loop {
        match rx.try_recv() {
            Ok(job) => match sealer.seal(job) {
                Ok(up) => {
                    if tx.send(up).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!("seal: {e}"),
            },
            Err(crossbeam_channel::TryRecvError::Empty) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(crossbeam_channel::TryRecvError::Disconnected) => return,
        }
    }
}

/// The roles of a seed's stores, drawn from `rng`: half the seeds stream to one required
/// store; the others to two: a second required one, an async one that only alerts, or one
/// under `hold` (`max_lag.bytes` up to 4 segments of `segment` bytes), either first in
/// restore order.
pub(super) fn draw_roles(rng: &mut impl rand::Rng, segment: u64) -> Vec<StoreRole> {
    let mut roles = vec![StoreRole::Required];
    if rng.gen_bool(0.5) {
        let second = match rng.gen_range(0..3) {
            0 => StoreRole::Required,
            1 => StoreRole::Async {
                max_lag: Some(MaxLag {
                    time: Some(Duration::from_secs(30)),
                    bytes: None,
                }),
                on_lag_exceeded: OnLagExceeded::Alert,
            },
            _ => StoreRole::Async {
                max_lag: Some(MaxLag {
                    time: None,
                    bytes: Some(bytesize::ByteSize(rng.gen_range(64 * 1024..4 * segment))),
                }),
                on_lag_exceeded: OnLagExceeded::Hold,
            },
        };
        roles.push(second);
        if rng.gen_bool(0.5) {
            roles.reverse();
        }
    }
    roles
}
