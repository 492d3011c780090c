//! The streaming pipeline of DESIGN.md: WAL from the server into staging and the bucket.
//!
//! ```text
//! receiver ──► staging (.partial, fsync, rename) ──► compress+hash threads ──► uploader ──► store
//!    ▲                                                                             │
//!    └──────────── standby status updates (flush = durable in the bucket) ◄────────┘
//! ```
//!
//! Three steps, each a value the daemon holds: [`connect`] (the server and the claimed
//! store), [`Connected::start`] (the slot, the resume point, the workers), and
//! [`Running::stream`] (stream across reconnects and timeline switches until shutdown,
//! then drain). [`Progress`] is the read-only view the status publisher samples.
//!
//! Shutdown (first SIGTERM/SIGINT): stop receiving, fsync and upload the segment being
//! filled as `.partial`, drain the workers and the uploader, confirm the final position to
//! the server, close. A second signal exits at once (see `main`).

mod blocking;
mod catch_up;
mod compress;
mod connect;
mod continuity;
mod fanout;
mod follow;
mod histories;
mod jobs;
mod lanes;
mod mailbox;
mod partial_outlets;
mod pins;
#[cfg(test)]
mod progress_tests;
mod receiver;
mod resume;
mod shared;
#[cfg(test)]
mod sim;
mod upload;
mod upstream;
mod workers;

pub use connect::{connect, Connected, StoreOut};
pub use shared::LiveStatus;

use std::sync::Arc;
use std::time::Duration;

use pgagent_protocol::{Lsn, ReplicationStream, TimelineId};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::ObjectStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Confirm};
use crate::metrics::Metrics;
use crate::server::ServerInfo;
use crate::staging::StagingWriter;
use crate::tracker::FlushTracker;
use compress::Sealer;
use follow::{follow, Session};
use histories::queue_histories;
use jobs::{CompressJob, RawSource, WalObject};
use lanes::{Lane, Lanes};
use receiver::{Outlets, Receiver};
use resume::{Resume, StoredPartial};
use shared::Shared;
use upstream::Upstream;
use workers::{spawn_lanes, LaneSpec, LaneTasks};

impl Connected {
    /// The first store (the first in restore order).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.stores[0].store
    }

    /// Every store, in restore order.
    pub fn stores(&self) -> &[StoreOut] {
        &self.stores
    }

    /// The cipher of the claimed store (`None`: plaintext).
    pub fn cipher(&self) -> Option<&ObjectCipher> {
        self.cipher.as_ref()
    }

    /// Ensures the slot, decides where streaming resumes and starts the compress workers
    /// and every store's lane: the second step.
    ///
    /// The resume point is decided with the primary store (the first required store that
    /// held the cluster when the agent started); every other store's
    /// lane starts from what that store holds there, and a store whose WAL ends below it
    /// copies the segments in between from the first required store.
    ///
    /// Errors: the server's (slot, resume reads), the store's, staging's.
    pub async fn start(
        self,
        cfg: &Config,
        metrics: Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Running> {
        let Connected {
            mut upstream,
            stores,
            primary,
            cipher,
        } = self;
        upstream.ensure_slot().await?;
        let resume = resume::prepare(
            &mut upstream,
            cfg.staging_dir(),
            stores[primary].store.as_ref(),
            cipher.as_ref(),
        )
        .await?;
        let seg = upstream.server.seg;
        let plan = resume.plan;
        tracing::info!(timeline = %plan.tli, start = %plan.start, confirmed = %plan.floor, "streaming resumes");
        let mut views = Vec::with_capacity(stores.len());
        for (i, s) in stores.iter().enumerate() {
            views.push(if i == primary {
                resume.stored_partial
            } else {
                resume::stored_partial_of(s.store.as_ref(), cipher.as_ref(), &plan, seg).await
            });
        }
        let lanes = stores
            .iter()
            .zip(&views)
            .enumerate()
            .map(|(i, (s, v))| {
                let tracker = tracker_for(&resume, *v, i == primary, seg);
                Lane::new(&s.spec.name, s.spec.role, tracker)
            })
            .collect();
        let shared = Arc::new(Shared::new(
            seg,
            Lanes::new(lanes, cfg.raw.wal.confirm == Confirm::Bucket),
            metrics,
        ));
        let sealer = Sealer {
            level: cfg.raw.wal.compression_level,
            seg,
            cipher: cipher.clone(),
        };
        let specs: Vec<LaneSpec> = stores
            .iter()
            .map(|s| LaneSpec {
                role: s.spec.role,
                store: s.store.clone(),
                concurrency: s.spec.upload_concurrency,
                partial_interval: s.spec.partial_interval,
            })
            .collect();
        let mut workers = Workers::start(cfg, sealer, &specs, &shared, shutdown)?;
        let segno = plan.start.segment_number(seg);
        for (i, v) in views.iter().enumerate() {
            if *v != StoredPartial::None {
                workers.lanes.may_have_deltas(i, plan.tli, segno);
            }
            if i != primary {
                let lane = catch_up::LaneStores {
                    lane: i,
                    name: stores[i].spec.name.clone(),
                    store: stores[i].store.clone(),
                    source: stores[primary].store.clone(),
                    pin_targets: pin_targets(&specs, i),
                };
                catch_up::spawn(
                    &mut workers.lanes,
                    &shared,
                    lane,
                    &plan,
                    cipher.clone(),
                    shutdown,
                );
            }
        }
        Ok(Running {
            cfg: cfg.clone(),
            upstream,
            stores,
            resume,
            shared,
            workers,
        })
    }
}

/// The stores an async lane `lane` keeps its pin in: every required store but itself (an
/// empty list for a required lane: it never skips an object).
fn pin_targets(specs: &[LaneSpec], lane: usize) -> Vec<Arc<dyn ObjectStore>> {
    if specs[lane].role == crate::config::StoreRole::Required {
        return Vec::new();
    }
    specs
        .iter()
        .enumerate()
        .filter(|(i, s)| *i != lane && s.role == crate::config::StoreRole::Required)
        .map(|(_, s)| s.store.clone())
        .collect()
}

/// A lane's tracker at the resume point: complete segments a previous run left in staging
/// below it hold its end until they are up again, and the run of deltas its store holds of
/// the resume segment (`stored`) counts as uploaded as far as it goes (the next delta
/// starts there). A store other than the one the resume point was decided with (`primary`
/// false) counts as holding nothing until its catch-up has read what it holds below the
/// resume point (`catch_up`).
fn tracker_for(
    resume: &Resume,
    stored: StoredPartial,
    primary: bool,
    seg: pgagent_protocol::WalSegmentSize,
) -> FlushTracker {
    let plan = resume.plan;
    let mut tracker = FlushTracker::new(seg, plan.start, plan.floor);
    if !primary {
        tracker.hold_for_catch_up();
    }
    tracker.hold_for_leftovers(resume.leftovers.iter().map(|s| s.segno));
    let start_segno = plan.start.segment_number(seg);
    if let StoredPartial::Holds(end) = stored {
        tracing::info!(held = %end, "the store holds the resume segment up to here; its deltas continue from there");
        tracker.partial_uploaded(plan.tli, start_segno, plan.start, end);
    }
    tracker
}

/// The compress pool and every store's lane, with the queues that feed them.
struct Workers {
    seg_tx: crossbeam_channel::Sender<CompressJob>,
    fatal_rx: mpsc::UnboundedReceiver<anyhow::Error>,
    pool: compress::CompressPool,
    lanes: LaneTasks,
}

impl Workers {
    /// Pipeline: receiver → compress pool → fan-out → each store's immutable uploader;
    /// receiver → each store's partial uploader.
    fn start(
        cfg: &Config,
        sealer: Sealer,
        specs: &[LaneSpec],
        shared: &Arc<Shared>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Workers> {
        // The receiver never waits on this queue: a job names a segment durable in staging,
        // so during a bucket outage staging grows (up to its quota) while streaming goes on.
        let (seg_tx, seg_rx) = crossbeam_channel::unbounded::<CompressJob>();
        // A small queue: a sealed segment is megabytes.
        let (upload_tx, upload_rx) = mpsc::channel(2);
        let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
        let pool = compress::CompressPool::start(
            cfg.raw.wal.compress_threads,
            sealer.clone(),
            seg_rx,
            upload_tx,
            fatal_tx,
        )?;
        let lanes = spawn_lanes(
            specs,
            upload_rx,
            shared,
            &sealer,
            cfg.raw.wal.synchronous,
            shutdown,
        );
        Ok(Workers {
            seg_tx,
            fatal_rx,
            pool,
            lanes,
        })
    }
}

/// The pipeline started: the workers run, streaming has not begun.
pub struct Running {
    cfg: Config,
    upstream: Upstream,
    stores: Vec<StoreOut>,
    resume: Resume,
    shared: Arc<Shared>,
    workers: Workers,
}

impl Running {
    /// What the server told about itself.
    pub fn server(&self) -> &ServerInfo {
        &self.upstream.server
    }

    /// The first store streamed to (the first in restore order).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.stores[0].store
    }

    /// Every store streamed to, in restore order.
    pub fn stores(&self) -> &[StoreOut] {
        &self.stores
    }

    /// The read-only view of the positions and the live status, for the status publisher.
    pub fn progress(&self) -> Progress {
        Progress(self.shared.clone())
    }

    /// Streams until `shutdown` and drains the workers: the third step. Complete segments
    /// a previous run left in staging below the resume point go up again first (a no-op
    /// where a store already has them), with the history files a store lacks.
    ///
    /// Errors: a fatal staging or worker error (then `shutdown` is cancelled); a store's
    /// or the server's before streaming starts.
    pub async fn stream(self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let Running {
            cfg,
            mut upstream,
            stores,
            resume,
            shared,
            workers,
        } = self;
        let Workers {
            seg_tx,
            mut fatal_rx,
            pool,
            lanes,
        } = workers;
        let plan = resume.plan;
        for s in &resume.leftovers {
            seg_tx.send(CompressJob {
                object: WalObject::Segment {
                    tli: s.tli,
                    segno: s.segno,
                },
                source: RawSource::Path(s.path.clone()),
            })?;
        }
        let all: Vec<Arc<dyn ObjectStore>> = stores.iter().map(|s| s.store.clone()).collect();
        let pending_histories = queue_histories(
            &mut upstream.client,
            &all,
            &seg_tx,
            &shared,
            upstream.server.timeline,
        )
        .await?;

        let writer = StagingWriter::new(cfg.staging_dir(), upstream.server.seg)?;
        shared
            .metrics
            .staging_quota_bytes
            .set(i64::try_from(cfg.raw.staging.quota.as_u64()).unwrap_or(i64::MAX));
        let LaneTasks {
            outlets: partials,
            draining,
            copiers,
            ..
        } = lanes;
        let outlets = Outlets {
            segments: seg_tx,
            partials,
            status_interval: cfg.raw.wal.status_interval,
            quota: cfg.raw.staging.quota.as_u64(),
            synchronous: cfg.raw.wal.synchronous,
        };
        let mut receiver = Receiver::new(shared.clone(), writer, outlets, plan.start);
        let session = Session {
            tli: plan.tli,
            start: plan.start,
            fallback: resume.fallback,
            pending_histories,
        };
        let streamed = tokio::select! {
            r = follow(&mut receiver, upstream, session, shutdown) => r,
            Some(e) = fatal_rx.recv() => Err(e),
        };
        let last_stream = match streamed {
            Ok(s) => s,
            Err(e) => {
                shutdown.cancel();
                return Err(e);
            }
        };

        // Clean shutdown: the segment being filled goes up as .partial, then everything
        // drains.
        receiver.close_partial()?;
        receiver.close_outlets();
        drop(receiver);
        drain(
            shared,
            last_stream,
            pool,
            draining,
            cfg.raw.wal.stop_timeout,
        )
        .await;
        for c in copiers {
            c.abort();
        }
        Ok(())
    }
}

/// Positions of the pipeline, as the tracker and the RPO clock have them now.
#[derive(Debug, Clone, Copy)]
pub struct Positions {
    /// Received from the server.
    pub received: Lsn,
    /// Confirmed to the server (`flush`).
    pub flushed: Lsn,
    /// Durable in the bucket.
    pub uploaded: Lsn,
    /// Bytes received and not yet in the bucket.
    pub lag_bytes: u64,
    /// Seconds of WAL a loss of this machine would lose now.
    pub rpo_seconds: f64,
}

/// One store's position.
#[derive(Debug, Clone, PartialEq)]
pub struct StorePosition {
    /// The store's name.
    pub name: String,
    /// Whether `flush` waits for it.
    pub required: bool,
    /// End of the WAL durable and contiguous in it.
    pub uploaded: Lsn,
    /// Bytes received and not yet in it.
    pub lag_bytes: u64,
    /// Seconds of WAL it lacks: how long ago the oldest WAL it lacks was received.
    pub rpo_seconds: f64,
    /// An async store behind by more than its `max_lag`.
    pub lag_exceeded: bool,
    /// Its last upload attempt failed.
    pub failing: bool,
}

/// A read-only view of a running pipeline.
#[derive(Clone)]
pub struct Progress(Arc<Shared>);

impl Progress {
    /// The positions now.
    pub fn positions(&self) -> Positions {
        let now = tokio::time::Instant::now().into_std();
        let mut lanes = self.0.lanes();
        let (received, flushed, uploaded, lag_bytes) = (
            lanes.received_lsn(),
            lanes.flush_lsn(now),
            lanes.required_end(),
            lanes.upload_lag_bytes(),
        );
        let rpo_seconds = lanes
            .iter_mut()
            .filter(|l| l.is_required())
            .map(|l| l.rpo_seconds(now))
            .fold(0.0, f64::max);
        Positions {
            received,
            flushed,
            uploaded,
            lag_bytes,
            rpo_seconds,
        }
    }

    /// Each store's position, in restore order.
    pub fn stores(&self) -> Vec<StorePosition> {
        let now = tokio::time::Instant::now().into_std();
        let mut lanes = self.0.lanes();
        let received = lanes.received_lsn();
        lanes
            .iter_mut()
            .map(|l| StorePosition {
                name: l.name.clone(),
                required: l.is_required(),
                uploaded: l.tracker.bucket_frontier(),
                lag_bytes: received.0.saturating_sub(l.tracker.bucket_frontier().0),
                rpo_seconds: l.rpo_seconds(now),
                lag_exceeded: l.lag_exceeded(now),
                failing: l.failing,
            })
            .collect()
    }

    /// The end of the WAL of timeline `tli` durable in every required store (an LSN, the
    /// position `flush` follows), or `None` while the pipeline streams another timeline or
    /// none. Every byte of `tli` below it is served by fetch, byte for byte, as a confirmed
    /// `flush` is (the simulation holds it to that): a whole segment of `tli` below it may
    /// be answered as archived.
    ///
    /// The timeline is read on both sides of the position, so the two are of one timeline
    /// (at a switch, the frontier stops at the switch point before the new timeline is set).
    pub fn durable_end_on(&self, tli: TimelineId) -> Option<Lsn> {
        let before = self.0.live().timeline;
        let end = self.0.lanes().required_end();
        let after = self.0.live().timeline;
        (before == Some(tli) && after == before).then_some(end)
    }

    /// The connection state and the last error.
    pub fn live(&self) -> LiveStatus {
        self.0.live().clone()
    }
}

/// Waits until the compress workers and uploaders have finished, keeping the server
/// informed, for at most `stop_timeout`: past it (the bucket is away), what is not uploaded
/// stays in staging, nothing of it was confirmed, and the next start uploads it.
async fn drain(
    shared: Arc<Shared>,
    mut stream: Option<ReplicationStream>,
    pool: compress::CompressPool,
    draining: Vec<JoinHandle<()>>,
    stop_timeout: Duration,
) {
    let all = async move {
        let _ = tokio::task::spawn_blocking(move || pool.join()).await;
        for t in draining {
            let _ = t.await;
        }
    };
    tokio::pin!(all);
    let give_up = tokio::time::sleep(stop_timeout);
    tokio::pin!(give_up);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = &mut give_up => {
                tracing::warn!(
                    lag_bytes = shared.lanes().upload_lag_bytes(),
                    "wal.stop_timeout passed with uploads still failing: stopping; staging keeps the WAL and the next start uploads it"
                );
                break;
            }
            _ = tick.tick() => {
                tracing::info!(lag_bytes = shared.lanes().upload_lag_bytes(), "waiting for uploads to finish (signal again to stop at once)");
                if let Some(s) = stream.as_mut() {
                    if receiver::send_status(&shared, s).await.is_err() {
                        stream = None;
                    }
                }
            }
        }
    }
    if let Some(mut s) = stream {
        let _ = receiver::send_status(&shared, &mut s).await;
    }
}
