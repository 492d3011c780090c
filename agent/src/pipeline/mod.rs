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

mod compress;
mod continuity;
mod jobs;
mod mailbox;
mod receiver;
mod resume;
mod shared;
mod upload;

pub use shared::LiveStatus;

use std::sync::Arc;
use std::time::Duration;

use pgagent_protocol::{ConnConfig, Lsn, ReplicationClient, ReplicationStream, SegNo, TimelineId};
use pgagent_storage::ObjectStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Confirm};
use crate::metrics::Metrics;
use crate::server::{explain, ServerInfo};
use crate::staging::StagingWriter;
use crate::tracker::FlushTracker;
use jobs::{CompressJob, RawSource, WalObject};
use mailbox::PartialMailbox;
use receiver::{Outlets, Receiver, SessionEnd};
use resume::{Resume, StoredPartial};
use shared::Shared;

/// The server connected to and the store claimed for its cluster: the first step.
pub struct Connected {
    conn: ConnConfig,
    client: ReplicationClient,
    server: ServerInfo,
    store: Arc<dyn ObjectStore>,
}

/// Connects to the server (`postgres.conninfo`, application name `pgagent` unless set),
/// opens the store and claims it for the server's cluster.
///
/// Errors: the connection's (explained, naming the fix); the store's; a store that holds
/// another cluster ([`crate::exit::Refused`]).
pub async fn connect(cfg: &Config) -> anyhow::Result<Connected> {
    let mut conn = ConnConfig::parse(&cfg.raw.postgres.conninfo)
        .map_err(|e| anyhow::anyhow!("postgres.conninfo: {e}"))?;
    // The name `synchronous_standby_names` and pg_stat_replication know the agent by.
    conn.application_name
        .get_or_insert_with(|| "pgagent".to_string());
    let (client, server) = crate::server::connect(&conn).await?;
    tracing::info!(
        system_identifier = server.system_id,
        timeline = %server.timeline,
        position = %server.xlogpos,
        segment_size = server.seg.bytes(),
        "connected to {}",
        conn.redacted()
    );
    let store = pgagent_storage::open(&cfg.raw.store.url, &cfg.store_options()).await?;
    crate::store::claim_store(store.as_ref(), &server).await?;
    Ok(Connected {
        conn,
        client,
        server,
        store,
    })
}

impl Connected {
    /// The claimed store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
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
            conn,
            mut client,
            server,
            store,
        } = self;
        let staging_dir = cfg.staging_dir().to_path_buf();
        let slot = cfg.raw.postgres.slot.clone();
        let wrap = |e: pgagent_protocol::Error| anyhow::anyhow!(explain(&conn, &e));
        if client.create_physical_slot(&slot).await.map_err(wrap)? {
            tracing::info!(slot, "created physical replication slot");
        }
        let resume = resume::prepare(
            &mut client,
            &conn,
            &server,
            &slot,
            &staging_dir,
            store.as_ref(),
        )
        .await?;
        let plan = resume.plan;
        tracing::info!(timeline = %plan.tli, start = %plan.start, confirmed = %plan.floor, "streaming resumes");
        let shared = Arc::new(Shared::new(
            server.seg,
            cfg.raw.wal.confirm == Confirm::Bucket,
            tracker_for(&resume, server.seg),
            metrics,
        ));
        let workers = Workers::start(cfg, &store, &shared, shutdown)?;
        Ok(Running {
            cfg: cfg.clone(),
            conn,
            client,
            server,
            store,
            slot,
            resume,
            shared,
            workers,
        })
    }
}

/// The tracker at the resume point: complete segments a previous run left in staging below
/// it hold the frontier until they are up again, and the stored `.partial` of the resume
/// segment counts as uploaded as far as it goes.
fn tracker_for(resume: &Resume, seg: pgagent_protocol::WalSegmentSize) -> FlushTracker {
    let plan = resume.plan;
    let mut tracker = FlushTracker::new(seg, plan.start, plan.floor);
    tracker.hold_for_leftovers(resume.leftovers.iter().map(|s| s.segno));
    let start_segno = plan.start.segment_number(seg);
    match resume.stored_partial {
        StoredPartial::None => {}
        StoredPartial::Holds(end) => {
            tracing::info!(held = %end, "the store holds the resume segment up to here; no shorter .partial replaces it");
            tracker.partial_uploaded(plan.tli, start_segno, end);
        }
        StoredPartial::Unknown => tracker.assume_stored_partial(
            plan.tli,
            start_segno,
            SegNo(start_segno.0 + 1).start_lsn(seg),
        ),
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
}

impl Workers {
    /// Pipeline: receiver → compress pool → immutable uploader; receiver → partial
    /// uploader.
    fn start(
        cfg: &Config,
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
        let level = cfg.raw.wal.compression_level;
        let pool = compress::CompressPool::start(
            cfg.raw.wal.compress_threads,
            level,
            seg_rx,
            upload_tx,
            fatal_tx,
        )?;
        let uploader = upload::Uploader::new(
            store.clone(),
            shared.clone(),
            cfg.raw.store.upload_concurrency,
            shutdown.clone(),
        );
        let imm_task = tokio::spawn(uploader.clone().run_immutable(upload_rx));
        let partial_task = tokio::spawn(uploader.run_partials(partials.clone(), level));
        Ok(Workers {
            seg_tx,
            partials,
            fatal_rx,
            pool,
            imm_task,
            partial_task,
        })
    }
}

/// The pipeline started: the workers run, streaming has not begun.
pub struct Running {
    cfg: Config,
    conn: ConnConfig,
    client: ReplicationClient,
    server: ServerInfo,
    store: Arc<dyn ObjectStore>,
    slot: String,
    resume: Resume,
    shared: Arc<Shared>,
    workers: Workers,
}

impl Running {
    /// What the server told about itself.
    pub fn server(&self) -> &ServerInfo {
        &self.server
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
            conn,
            mut client,
            server,
            store,
            slot,
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
            &mut client,
            store.as_ref(),
            &seg_tx,
            &shared,
            server.timeline,
        )
        .await?;

        let writer = StagingWriter::new(cfg.staging_dir(), server.seg)?;
        shared
            .metrics
            .staging_quota_bytes
            .set(i64::try_from(cfg.raw.staging.quota.as_u64()).unwrap_or(i64::MAX));
        let outlets = Outlets {
            segments: seg_tx,
            partials: partials.clone(),
            partial_interval: cfg.raw.wal.partial_interval,
            status_interval: cfg.raw.wal.status_interval,
            quota: cfg.raw.staging.quota.as_u64(),
            synchronous: cfg.raw.wal.synchronous,
        };
        let mut receiver = Receiver::new(shared.clone(), writer, outlets, plan.start);
        let session = Session {
            conn: &conn,
            slot: &slot,
            tli: plan.tli,
            start: plan.start,
            fallback: resume.fallback,
            pending_histories,
        };
        let streamed = tokio::select! {
            r = follow(&mut receiver, client, session, shutdown) => r,
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

/// Where and how streaming starts.
struct Session<'a> {
    conn: &'a ConnConfig,
    slot: &'a str,
    tli: TimelineId,
    start: Lsn,
    /// Set when streaming starts at the store's end to fill a gap: the original start, to
    /// fall back to if the server no longer has the WAL in between.
    fallback: Option<Lsn>,
    /// Timelines whose history file could not be had yet (retried at each connection).
    pending_histories: Vec<TimelineId>,
}

/// Streams across reconnects and timeline switches until shutdown; returns the open stream
/// (for the last status update), if there is one.
///
/// After a session that streamed, the next connection is tried at once and the backoff
/// starts over: one dropped connection costs a reconnect, not a wait that grew over the
/// life of the process. Only attempts that fail in a row wait longer and longer.
async fn follow(
    receiver: &mut Receiver,
    client: ReplicationClient,
    mut s: Session<'_>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<ReplicationStream>> {
    let conn = s.conn;
    let mut client = Some(client);
    let mut delays = reconnect_backoff();
    loop {
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let mut c = match client.take() {
            Some(c) => c,
            None => match ReplicationClient::connect(conn).await {
                Ok(mut c) => {
                    // The slot may have been dropped while we were away; recreate it.
                    if let Err(e) = c.create_physical_slot(s.slot).await {
                        tracing::warn!(error = %explain(conn, &e), "cannot ensure the replication slot");
                    }
                    c
                }
                Err(e) => {
                    wait_retry(receiver, &mut delays, explain(conn, &e), shutdown).await;
                    continue;
                }
            },
        };
        fetch_pending_histories(&mut c, receiver, &mut s.pending_histories).await?;
        let stream = match c.start_replication(Some(s.slot), s.start, s.tli).await {
            Ok(st) => st,
            Err(e) => {
                let msg = format!(
                    "START_REPLICATION at {} on timeline {}: {}",
                    s.start,
                    s.tli,
                    explain(conn, &e)
                );
                if fall_back(receiver, &mut s, &msg) {
                    continue;
                }
                wait_retry(receiver, &mut delays, msg, shutdown).await;
                continue;
            }
        };
        tracing::info!(timeline = %s.tli, start = %s.start, "streaming");
        match receiver.session(stream, s.tli, shutdown).await {
            Ok(SessionEnd::Shutdown(stream)) => return Ok(Some(stream)),
            Ok(SessionEnd::TimelineEnded {
                stream,
                next_tli,
                next_tli_start,
            }) => {
                tracing::info!(timeline = %s.tli, next = %next_tli, at = %next_tli_start, "timeline ended; following the switch");
                receiver.close_partial()?;
                {
                    let mut t = receiver.shared().tracker();
                    // WAL of the new timeline is confirmed only once its history file is in
                    // the bucket too.
                    t.hold_for_history(next_tli, next_tli_start);
                    t.timeline_switched(next_tli_start);
                }
                s.pending_histories.push(next_tli);
                let mut c = stream.into_client();
                fetch_pending_histories(&mut c, receiver, &mut s.pending_histories).await?;
                s.tli = next_tli;
                let seg = receiver.shared().seg;
                s.start = next_tli_start.segment_number(seg).start_lsn(seg);
                receiver.set_position(s.start);
                client = Some(c);
                delays = reconnect_backoff();
            }
            Err(e) => {
                if e.downcast_ref::<crate::staging::StagingError>().is_some() {
                    return Err(e.context("staging"));
                }
                receiver.close_partial()?;
                let streamed = receiver.take_streamed();
                if streamed {
                    s.fallback = None;
                }
                s.start = receiver.resume_point();
                let msg = format!("replication connection lost: {e:#}");
                if !streamed && fall_back(receiver, &mut s, &msg) {
                    continue;
                }
                if streamed {
                    tracing::warn!("{msg}; reconnecting");
                    receiver.shared().set_error(msg);
                    delays = reconnect_backoff();
                } else {
                    wait_retry(receiver, &mut delays, msg, shutdown).await;
                }
            }
        }
    }
}

/// When streaming started at the store's end to fill a gap and the server no longer has
/// that WAL (`requested WAL segment … has already been removed`), goes back to the original
/// start and reports the gap: the WAL in between is lost to the bucket. Returns whether it
/// did.
fn fall_back(receiver: &mut Receiver, s: &mut Session<'_>, msg: &str) -> bool {
    let Some(to) = s.fallback else { return false };
    if !msg.contains("has already been removed") {
        return false;
    }
    s.fallback = None;
    let from = s.start;
    tracing::error!(
        from = %from,
        to = %to,
        "WAL GAP: the store lacks this WAL and the server no longer has it ({msg}); a recovery from the store cannot pass it: take a new base backup"
    );
    receiver.shared().report_gap(from, to);
    receiver.shared().tracker().rebase(to);
    receiver.set_position(to);
    s.start = to;
    true
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    crate::retry::delays(crate::retry::Policy::RECONNECT)
}

async fn wait_retry(
    receiver: &Receiver,
    delays: &mut impl Iterator<Item = Duration>,
    msg: String,
    shutdown: &CancellationToken,
) {
    let delay = delays.next().unwrap_or(Duration::from_secs(30));
    tracing::warn!(retry_in = ?delay, "{msg}");
    receiver.shared().set_error(msg);
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Queues the history files of every timeline up to `current` that the store lacks, holding
/// the flush frontier at each switch point until its file lands. Returns the timelines whose
/// file the server could not give now (retried at the next connection).
async fn queue_histories(
    client: &mut ReplicationClient,
    store: &dyn ObjectStore,
    out: &crossbeam_channel::Sender<CompressJob>,
    shared: &Shared,
    current: TimelineId,
) -> anyhow::Result<Vec<TimelineId>> {
    let mut pending = Vec::new();
    for t in 2..=current.0 {
        let tli = TimelineId(t);
        let key = pgagent_storage::layout::wal_key(&pgagent_protocol::history_file_name(tli));
        if store.head(&key).await?.is_some() {
            continue;
        }
        match crate::server::fetch_history(client, tli).await {
            Ok(content) => {
                let switch = switch_point(&content, tli).unwrap_or(Lsn::INVALID);
                shared.tracker().hold_for_history(tli, switch);
                out.send(CompressJob {
                    object: WalObject::History { tli },
                    source: RawSource::Bytes(content),
                })?;
            }
            // A server keeps the history of its own ancestry; older branches may be gone.
            Err(e) if tli != current => {
                tracing::debug!(timeline = t, error = %e, "history file not available")
            }
            Err(e) => {
                tracing::warn!(timeline = t, error = %e, "history file not available yet; WAL is not confirmed until it is in the store");
                shared.tracker().hold_for_history(tli, Lsn::INVALID);
                pending.push(tli);
            }
        }
    }
    Ok(pending)
}

/// Where `tli` branched off its parent, from its history file's last line.
fn switch_point(content: &[u8], tli: TimelineId) -> Option<Lsn> {
    let text = std::str::from_utf8(content).ok()?;
    let history = pgagent_protocol::TimelineHistory::parse(text).ok()?;
    history.check_child(tli).ok()?;
    history.entries.last().map(|e| e.switch_point)
}

/// Fetches and queues the history files still missing; those the server cannot give stay
/// pending (and keep the frontier held).
async fn fetch_pending_histories(
    client: &mut ReplicationClient,
    receiver: &Receiver,
    pending: &mut Vec<TimelineId>,
) -> anyhow::Result<()> {
    let mut still = Vec::new();
    for tli in pending.drain(..) {
        match crate::server::fetch_history(client, tli).await {
            Ok(content) => receiver.queue_history(tli, content)?,
            Err(e) => {
                tracing::warn!(timeline = %tli, error = %e, "history file not fetched; retried at the next connection");
                still.push(tli);
            }
        }
    }
    *pending = still;
    Ok(())
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
