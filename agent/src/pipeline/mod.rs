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
mod compress;
mod continuity;
mod follow;
mod histories;
mod jobs;
mod mailbox;
mod receiver;
mod resume;
mod shared;
#[cfg(test)]
mod sim;
mod upload;
mod upstream;

pub use shared::LiveStatus;

use std::sync::Arc;
use std::time::Duration;

use pgagent_protocol::{Lsn, ReplicationStream};
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
use mailbox::PartialMailbox;
use receiver::{Outlets, Receiver};
use resume::{Resume, StoredPartial};
use shared::Shared;
use upstream::Upstream;

/// The server connected to and the store claimed for its cluster: the first step.
pub struct Connected {
    upstream: Upstream,
    store: Arc<dyn ObjectStore>,
    cipher: Option<ObjectCipher>,
}

/// Connects to the server (`postgres.conninfo`, application name `pgagent` unless set),
/// opens the store and claims it for the server's cluster.
///
/// Errors: the connection's (explained, naming the fix); the store's; a store that holds
/// another cluster ([`crate::exit::Refused`]).
pub async fn connect(cfg: &Config) -> anyhow::Result<Connected> {
    let upstream = Upstream::connect(cfg).await?;
    let server = &upstream.server;
    tracing::info!(
        system_identifier = server.system_id,
        timeline = %server.timeline,
        position = %server.xlogpos,
        segment_size = server.seg.bytes(),
        "connected to {}",
        upstream.conn.redacted()
    );
    let store = crate::store::open(cfg).await?;
    let cipher = crate::store::claim_store(store.as_ref(), server, cfg).await?;
    Ok(Connected {
        upstream,
        store,
        cipher,
    })
}

impl Connected {
    /// The claimed store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The cipher of the claimed store (`None`: plaintext).
    pub fn cipher(&self) -> Option<&ObjectCipher> {
        self.cipher.as_ref()
    }

    /// Ensures the slot, decides where streaming resumes and starts the compress workers
    /// and the uploaders: the second step.
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
            store,
            cipher,
        } = self;
        upstream.ensure_slot().await?;
        let resume = resume::prepare(
            &mut upstream,
            cfg.staging_dir(),
            store.as_ref(),
            cipher.as_ref(),
        )
        .await?;
        let seg = upstream.server.seg;
        let plan = resume.plan;
        tracing::info!(timeline = %plan.tli, start = %plan.start, confirmed = %plan.floor, "streaming resumes");
        let shared = Arc::new(Shared::new(
            seg,
            cfg.raw.wal.confirm == Confirm::Bucket,
            tracker_for(&resume, seg),
            metrics,
        ));
        let sealer = Sealer {
            level: cfg.raw.wal.compression_level,
            seg,
            cipher,
        };
        let workers = Workers::start(cfg, sealer, &store, &shared, shutdown)?;
        if resume.stored_partial != StoredPartial::None {
            let segno = plan.start.segment_number(seg);
            workers.uploader.may_have_deltas(plan.tli, segno);
        }
        Ok(Running {
            cfg: cfg.clone(),
            upstream,
            store,
            resume,
            shared,
            workers,
        })
    }
}

/// The tracker at the resume point: complete segments a previous run left in staging below
/// it hold the frontier until they are up again, and the run of deltas the bucket holds of
/// the resume segment counts as uploaded as far as it goes (the next delta starts there).
fn tracker_for(resume: &Resume, seg: pgagent_protocol::WalSegmentSize) -> FlushTracker {
    let plan = resume.plan;
    let mut tracker = FlushTracker::new(seg, plan.start, plan.floor);
    tracker.hold_for_leftovers(resume.leftovers.iter().map(|s| s.segno));
    let start_segno = plan.start.segment_number(seg);
    if let StoredPartial::Holds(end) = resume.stored_partial {
        tracing::info!(held = %end, "the store holds the resume segment up to here; its deltas continue from there");
        tracker.partial_uploaded(plan.tli, start_segno, plan.start, end);
    }
    tracker
}

/// The compress pool and the uploaders, with the queues that feed them.
struct Workers {
    seg_tx: crossbeam_channel::Sender<CompressJob>,
    partials: Arc<PartialMailbox>,
    fatal_rx: mpsc::UnboundedReceiver<anyhow::Error>,
    pool: compress::CompressPool,
    imm_task: JoinHandle<()>,
    partial_task: JoinHandle<()>,
    uploader: upload::Uploader,
}

impl Workers {
    /// Pipeline: receiver → compress pool → immutable uploader; receiver → partial
    /// uploader.
    fn start(
        cfg: &Config,
        sealer: Sealer,
        store: &Arc<dyn ObjectStore>,
        shared: &Arc<Shared>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Workers> {
        // The receiver never waits on this queue: a job names a segment durable in staging,
        // so during a bucket outage staging grows (up to its quota) while streaming goes on.
        let (seg_tx, seg_rx) = crossbeam_channel::unbounded::<CompressJob>();
        // A small queue: a sealed segment is megabytes, and memory is bounded by what waits
        // here plus `upload_concurrency` uploads in flight.
        let (upload_tx, upload_rx) = mpsc::channel(2);
        let partials = Arc::new(PartialMailbox::new());
        let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
        let pool = compress::CompressPool::start(
            cfg.raw.wal.compress_threads,
            sealer.clone(),
            seg_rx,
            upload_tx,
            fatal_tx,
        )?;
        let uploader = upload::Uploader::new(
            store.clone(),
            shared.clone(),
            cfg.store().upload_concurrency,
            shutdown.clone(),
        );
        let imm_task = tokio::spawn(uploader.clone().run_immutable(upload_rx));
        let partial_task = tokio::spawn(uploader.clone().run_partials(partials.clone(), sealer));
        Ok(Workers {
            seg_tx,
            partials,
            fatal_rx,
            pool,
            imm_task,
            partial_task,
            uploader,
        })
    }
}

/// The pipeline started: the workers run, streaming has not begun.
pub struct Running {
    cfg: Config,
    upstream: Upstream,
    store: Arc<dyn ObjectStore>,
    resume: Resume,
    shared: Arc<Shared>,
    workers: Workers,
}

impl Running {
    /// What the server told about itself.
    pub fn server(&self) -> &ServerInfo {
        &self.upstream.server
    }

    /// The store streamed to.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The read-only view of the positions and the live status, for the status publisher.
    pub fn progress(&self) -> Progress {
        Progress(self.shared.clone())
    }

    /// Streams until `shutdown` and drains the workers: the third step. Complete segments
    /// a previous run left in staging below the resume point go up again first (a no-op
    /// when the bucket already has them), with the history files the store lacks.
    ///
    /// Errors: a fatal staging or worker error (then `shutdown` is cancelled); the store's
    /// or the server's before streaming starts.
    pub async fn stream(self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let Running {
            cfg,
            mut upstream,
            store,
            resume,
            shared,
            workers,
        } = self;
        let Workers {
            seg_tx,
            partials,
            mut fatal_rx,
            pool,
            imm_task,
            partial_task,
            uploader: _,
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
        let pending_histories = queue_histories(
            &mut upstream.client,
            store.as_ref(),
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
        let outlets = Outlets {
            segments: seg_tx,
            partials: partials.clone(),
            partial_interval: cfg.store().partial_interval,
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
        drop(receiver);
        partials.close();
        drain(
            shared,
            last_stream,
            pool,
            imm_task,
            partial_task,
            cfg.raw.wal.stop_timeout,
        )
        .await;
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

/// A read-only view of a running pipeline.
#[derive(Clone)]
pub struct Progress(Arc<Shared>);

impl Progress {
    /// The positions now.
    pub fn positions(&self) -> Positions {
        let shared = &self.0;
        let (received, flushed, uploaded, lag_bytes) = {
            let t = shared.tracker();
            (
                t.received_lsn(),
                t.flush_lsn(shared.confirm_bucket),
                t.bucket_frontier(),
                t.upload_lag_bytes(),
            )
        };
        let rpo_seconds = shared
            .rpo()
            .rpo_seconds(uploaded, std::time::Instant::now());
        Positions {
            received,
            flushed,
            uploaded,
            lag_bytes,
            rpo_seconds,
        }
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
    imm_task: JoinHandle<()>,
    partial_task: JoinHandle<()>,
    stop_timeout: Duration,
) {
    let all = async move {
        let _ = tokio::task::spawn_blocking(move || pool.join()).await;
        let _ = imm_task.await;
        let _ = partial_task.await;
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
                    lag_bytes = shared.tracker().upload_lag_bytes(),
                    "wal.stop_timeout passed with uploads still failing: stopping; staging keeps the WAL and the next start uploads it"
                );
                break;
            }
            _ = tick.tick() => {
                tracing::info!(lag_bytes = shared.tracker().upload_lag_bytes(), "waiting for uploads to finish (signal again to stop at once)");
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
