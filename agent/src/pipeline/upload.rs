//! The uploader: sealed objects into the store, with bounded concurrency and retries.
//!
//! Every WAL object is immutable (`put_immutable`: same hash is a no-op, a different hash is
//! a conflict that is never overwritten): complete segments, history files, and the deltas
//! of the segment being filled (`storage::deltas`). Deltas go up one at a time and in
//! order, each holding the WAL from the end of the run the bucket already holds to the
//! newest view, so the run never has a hole this process made and each WAL byte of a
//! segment is compressed and uploaded once as a delta and once in the complete segment.
//! Once a segment is complete in the bucket its deltas are garbage: removed here when the
//! credentials allow it, else by `pgagent prune`.
//!
//! Every failure is retried with capped exponential backoff: the bucket coming back is the
//! normal end of an outage, and until then nothing is confirmed to the server, so the slot
//! keeps the WAL. A conflict is retried too (slowly), since an operator may remove the
//! offending object; it raises `pgagent_conflicts_total` once per object.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::Retryable;

use pgagent_protocol::{segment_file_name, SegNo, TimelineId};
use pgagent_storage::immutable::{put_immutable, ImmutablePut};
use pgagent_storage::layout::{wal_key, PARTIAL_SUFFIX};
use pgagent_storage::{ObjectStore, StoreError};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::blocking::off_thread;
use super::compress::Sealer;
use super::jobs::{CompressJob, RawSource, UploadJob, WalObject};
use super::lanes::LaneId;
use super::mailbox::PartialMailbox;
use super::shared::Shared;
use crate::metrics::ByteStage;
use crate::retry::Policy;

/// Wait between two attempts at an object in conflict: an operator has to act first.
const CONFLICT_RETRY: Duration = Duration::from_secs(60);

/// Uploads sealed WAL objects into one store: the store of lane `lane`.
#[derive(Debug, Clone)]
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    lane: LaneId,
    shared: Arc<Shared>,
    concurrency: Arc<Semaphore>,
    delete_denied: Arc<AtomicBool>,
    /// Segments that may have deltas in the bucket, removed once the segment is complete.
    with_deltas: Arc<Mutex<HashSet<(TimelineId, SegNo)>>>,
    /// Held by the one cleanup of superseded deltas that runs at a time.
    cleanup: Arc<tokio::sync::Mutex<()>>,
    shutdown: CancellationToken,
}

/// Whether an upload created the object or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    AlreadyPresent,
}

impl Uploader {
    /// An uploader into `store`, lane `lane`, with at most `concurrency` uploads in
    /// flight. Once `shutdown` is cancelled, an object in conflict is left in staging
    /// instead of retried (a clean stop must not wait for an operator); other failures are
    /// still retried.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        lane: LaneId,
        shared: Arc<Shared>,
        concurrency: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Uploader {
            store,
            lane,
            shared,
            concurrency: Arc::new(Semaphore::new(concurrency.max(1))),
            delete_denied: Arc::new(AtomicBool::new(false)),
            with_deltas: Arc::default(),
            cleanup: Arc::default(),
            shutdown,
        }
    }

    /// Uploads complete segments and history files as they come, several at once. Returns
    /// when the channel is closed and every upload has landed.
    pub async fn run_immutable(self, mut rx: mpsc::Receiver<UploadJob>) {
        let mut tasks = JoinSet::new();
        while let Some(job) = rx.recv().await {
            let permit = self.permit().await;
            let me = self.clone();
            tasks.spawn(async move {
                me.upload(job).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// One of the `concurrency` slots, held while an upload is in flight.
    pub async fn permit(&self) -> OwnedSemaphorePermit {
        self.concurrency
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed")
    }

    /// Counts an object copied into this store from another store.
    pub fn count_copy(&self) {
        let name = self.shared.lanes().lane(self.lane).name.clone();
        self.shared.metrics.stores.copied(&name);
    }

    /// The cluster's WAL segment size.
    pub fn seg(&self) -> pgagent_protocol::WalSegmentSize {
        self.shared.seg
    }

    /// Seals and uploads deltas one at a time, in order. Returns when the mailbox is closed
    /// and the last one has landed.
    ///
    /// Each view is narrowed to the WAL the bucket lacks (see [`Uploader::narrow`]); a view
    /// that adds nothing is skipped.
    pub async fn run_partials(self, mailbox: Arc<PartialMailbox>, sealer: Sealer) {
        while let Some(job) = mailbox.next().await {
            let Some(job) = self.narrow(job) else {
                continue;
            };
            let sealer = sealer.clone();
            let sealed = off_thread(move || sealer.seal(job)).await;
            let job = match sealed {
                Ok(job) => job,
                Err(e) => {
                    // The next tick sends a fresh view; the complete segment covers it anyway.
                    tracing::warn!(error = %e, "cannot read the staged .partial for upload");
                    continue;
                }
            };
            let _permit = self.concurrency.acquire().await.expect("never closed");
            if let WalObject::Partial { tli, segno, .. } = job.object {
                self.may_have_deltas(tli, segno);
            }
            self.upload(job).await;
        }
    }

    /// Cuts a view (WAL from its segment's start) down to a delta of the WAL past the run
    /// the bucket holds of that segment; `None` when that adds nothing. Only this task
    /// uploads deltas, one at a time, so the run cannot move while the delta is sealed.
    fn narrow(&self, mut job: CompressJob) -> Option<CompressJob> {
        let WalObject::Partial {
            tli,
            segno,
            ref mut start,
            end,
        } = job.object
        else {
            return Some(job);
        };
        let lanes = self.shared.lanes();
        if !lanes.partial_is_news(self.lane, tli, segno, end) {
            return None;
        }
        let base = segno.start_lsn(self.shared.seg);
        *start = lanes
            .lane(self.lane)
            .tracker
            .stored_partial_end(tli, segno)
            .unwrap_or(base);
        if let RawSource::Range { from, .. } = &mut job.source {
            *from = start.0 - base.0;
        }
        Some(job)
    }

    /// Notes that segment `segno` of `tli` may have deltas in the bucket (this run uploads
    /// one, or found some at start), so that they are removed once it is complete.
    pub fn may_have_deltas(&self, tli: TimelineId, segno: SegNo) {
        self.with_deltas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((tli, segno));
    }

    /// Puts `job` into the store, retrying until it lands (or, after shutdown, until a
    /// conflict), then records it in the lane's tracker.
    pub async fn upload(&self, job: UploadJob) {
        let seg = self.shared.seg;
        let key = job.object.key(seg);
        let kind = job.object.kind();
        let m = &self.shared.metrics;
        let mut conflict_counted = false;
        let attempt = || self.attempt(&key, &job);
        let shutdown = self.shutdown.clone();
        let outcome = attempt
            .retry(Policy::UPLOAD.backoff())
            .sleep(move |d| pause(d, shutdown.clone()))
            // A clean stop does not wait for an operator to resolve a conflict.
            .when(|e: &StoreError| !(e.is_conflict() && self.shutdown.is_cancelled()))
            .adjust(|e, d| if e.is_conflict() { Some(CONFLICT_RETRY) } else { d })
            .notify(|e, d| {
                m.upload_errors(kind).inc();
                if e.is_conflict() {
                    if !std::mem::replace(&mut conflict_counted, true) {
                        m.conflicts_total.inc();
                    }
                    tracing::error!(key, error = %e, "WAL object conflict: the store holds different content under this name; it is never overwritten, and WAL past it is not confirmed to the server");
                } else {
                    tracing::warn!(key, error = %e, retry_in = ?d, "upload failed");
                }
                self.shared.set_error(format!("upload {key}: {e}"));
                self.shared.lanes().set_failing(self.lane, true);
            })
            .await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                m.upload_errors(kind).inc();
                tracing::error!(key, error = %e, "stopping with the conflicting object left in staging");
                return;
            }
        };
        self.shared.lanes().set_failing(self.lane, false);
        if outcome == Outcome::Created {
            m.uploads(kind).inc();
            m.upload_bytes(ByteStage::Raw).inc_by(job.sealed.raw_len);
            m.upload_bytes(ByteStage::Stored)
                .inc_by(job.sealed.body.len() as u64);
            tracing::debug!(
                key,
                raw = job.sealed.raw_len,
                stored = job.sealed.body.len(),
                "uploaded"
            );
        } else {
            tracing::debug!(key, "already in the store with the same content");
        }
        self.landed(&job).await;
    }

    async fn attempt(&self, key: &str, job: &UploadJob) -> Result<Outcome, StoreError> {
        Ok(
            match put_immutable(self.store.as_ref(), key, &job.sealed).await? {
                ImmutablePut::Created => Outcome::Created,
                ImmutablePut::AlreadyPresent => Outcome::AlreadyPresent,
            },
        )
    }

    /// Bookkeeping once an object is durable in the bucket.
    async fn landed(&self, job: &UploadJob) {
        match job.object {
            WalObject::Segment { tli, segno } => {
                self.shared
                    .lanes()
                    .tracker(self.lane)
                    .segment_uploaded(segno);
                if let Some(release) = &job.remove_after {
                    release.done();
                }
                let had_deltas = self
                    .with_deltas
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(tli, segno));
                // Under an object lock a delete only hides the deltas behind a delete marker
                // (their locked versions stay and are billed): `pgagent prune` deletes them
                // once their locks end.
                let locked = self.store.lock_policy().is_some();
                if had_deltas && !locked && !self.delete_denied.load(Ordering::Relaxed) {
                    tokio::spawn(self.clone().remove_superseded(tli, segno));
                }
            }
            WalObject::Partial {
                tli,
                segno,
                start,
                end,
            } => self
                .shared
                .lanes()
                .tracker(self.lane)
                .partial_uploaded(tli, segno, start, end),
            WalObject::History { tli } => {
                self.shared.lanes().tracker(self.lane).history_uploaded(tli)
            }
        }
        self.shared.frontier_moved.notify_one();
    }

    /// Best effort, in the background: the deltas of a segment that is now complete in the
    /// bucket are no longer needed, nor a `.partial` object an older version wrote for it
    /// (one listing of `wal/<segment>.partial` finds both). Credentials without delete
    /// rights are fine, and a store that locks what it writes is left alone: `pgagent prune`
    /// removes leftovers. One cleanup runs at a time, in
    /// key order, stopping at the first failure. A fetch racing with it still serves the
    /// whole segment: it looks for the complete object again before serving pieces.
    async fn remove_superseded(self, tli: TimelineId, segno: SegNo) {
        let _one = self.cleanup.lock().await;
        let prefix = wal_key(&format!(
            "{}{PARTIAL_SUFFIX}",
            segment_file_name(tli, segno, self.shared.seg)
        ));
        let listed = match self.store.list(&prefix).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(prefix, error = %e, "cannot list superseded deltas");
                return;
            }
        };
        for meta in listed {
            if self.shutdown.is_cancelled() {
                return;
            }
            match self.store.delete(&meta.key).await {
                Ok(()) => {}
                Err(e) if e.is_permission() => {
                    self.delete_denied.store(true, Ordering::Relaxed);
                    tracing::info!("the store credentials cannot delete; deltas of complete segments are left for `pgagent prune`");
                    return;
                }
                Err(e) => {
                    // Stop at the first failure: deletes go in key order (from the segment
                    // start), so what is left is always the end of the run, never a run
                    // from offset 0 cut short. `pgagent prune` removes the rest.
                    tracing::debug!(key = meta.key, error = %e, "could not remove a superseded delta; leaving the rest to `pgagent prune`");
                    return;
                }
            }
        }
    }
}

/// Waits `d` before the next upload attempt. The wait after a conflict (exactly
/// [`CONFLICT_RETRY`], see `adjust` in `Uploader::upload`) ends at shutdown, so the conflict
/// is looked at once more and the stop goes on; other waits run out (a retry without a wait
/// would hammer a store that is down).
async fn pause(d: Duration, shutdown: CancellationToken) {
    if d == CONFLICT_RETRY {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = shutdown.cancelled() => {}
        }
    } else {
        tokio::time::sleep(d).await
    }
}
