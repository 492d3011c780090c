//! `pgagent run`: the streaming pipeline of DESIGN.md.
//!
//! ```text
//! receiver ──► staging (.partial, fsync, rename) ──► compress+hash threads ──► uploader ──► store
//!    ▲                                                                             │
//!    └──────────── standby status updates (flush = durable in the bucket) ◄────────┘
//! ```
//!
//! Shutdown (first SIGTERM/SIGINT): stop receiving, fsync and upload the segment being
//! filled as `.partial`, drain the workers and the uploader, confirm the final position to
//! the server, close. A second signal exits at once (see `main`).

mod compress;
mod jobs;
mod receiver;
mod shared;
pub mod startup;
mod upload;

pub use startup::{check_staging, explain, ServerInfo};

use std::sync::Arc;
use std::time::Duration;

use pgagent_protocol::{ConnConfig, Lsn, ReplicationClient, ReplicationStream, TimelineId};
use pgagent_storage::ObjectStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Confirm};
use crate::metrics::Metrics;
use crate::staging::{StagingScan, StagingWriter};
use crate::statusfile::{self, DaemonStatus};
use crate::tracker::FlushTracker;
use jobs::{CompressJob, RawSource, WalObject};
use receiver::{Outlets, Receiver, SessionEnd};
use shared::Shared;

/// Runs the daemon until `shutdown` is cancelled and everything received is uploaded.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let metrics_task = match cfg.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("metrics.listen {addr}: {e}; fix: choose a free address or set metrics.listen = \"\"")
            })?;
            tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
                cfg.raw.metrics.max_rpo_seconds,
                shutdown.clone(),
            )))
        }
        None => None,
    };

    let staging_dir = cfg.staging_dir().to_path_buf();
    for line in crate::zfs::staging::startup_check(&cfg)? {
        tracing::warn!("{line}");
    }
    check_staging(&staging_dir)?;
    let fetch_task =
        crate::fetch::server::spawn_daemon_server(&cfg, metrics.clone(), shutdown.clone());
    if let Some(cron) =
        crate::backup::schedule::parse("zfs.snapshot_schedule", &cfg.raw.zfs.snapshot_schedule)?
    {
        tracing::info!(
            schedule = cfg.raw.zfs.snapshot_schedule,
            datasets = cfg.raw.zfs.datasets.join(","),
            "ZFS snapshots scheduled (UTC)"
        );
        tokio::spawn(crate::commands::snapshot::scheduled(
            cfg.clone(),
            cron,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(cron) = crate::backup::schedule::parse("backup.schedule", &cfg.raw.backup.schedule)?
    {
        tracing::info!(
            schedule = cfg.raw.backup.schedule,
            "base backups scheduled (UTC)"
        );
        tokio::spawn(crate::backup::schedule::run(
            cfg.clone(),
            cron,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    let mut conn = ConnConfig::parse(&cfg.raw.postgres.conninfo)
        .map_err(|e| anyhow::anyhow!("postgres.conninfo: {e}"))?;
    // The name `synchronous_standby_names` and pg_stat_replication know the agent by.
    conn.application_name
        .get_or_insert_with(|| "pgagent".to_string());
    let (mut client, server) = startup::connect(&conn).await?;
    tracing::info!(
        system_identifier = server.system_id,
        timeline = %server.timeline,
        position = %server.xlogpos,
        segment_size = server.seg.bytes(),
        "connected to {}",
        conn.redacted()
    );
    let store = pgagent_storage::open(&cfg.raw.store.url, &cfg.store_options()).await?;
    startup::claim_store(store.as_ref(), &server).await?;
    // The backup and snapshot gauges start from what the store holds, not from zero, so a
    // restart does not look like "no backup for a day".
    {
        let (store, metrics) = (store.clone(), metrics.clone());
        tokio::spawn(async move {
            use crate::commands::status::{last_points, unix_seconds};
            match last_points(store.as_ref()).await {
                Ok(p) => {
                    if let Some(t) = p.last_backup.and_then(|(_, at)| unix_seconds(&at)) {
                        metrics.backup_last_success_timestamp_seconds.set(t);
                    }
                    if let Some(t) = p.last_snapshot.and_then(|(_, at)| unix_seconds(&at)) {
                        metrics.snapshot_last_success_timestamp_seconds.set(t);
                    }
                }
                Err(e) => tracing::warn!("cannot read the last backup from the store: {e:#}"),
            }
        });
    }

    let slot = cfg.raw.postgres.slot.clone();
    let wrap = |e: pgagent_protocol::Error| anyhow::anyhow!(explain(&conn, &e));
    if client.create_physical_slot(&slot).await.map_err(wrap)? {
        tracing::info!(slot, "created physical replication slot");
    }
    // READ_REPLICATION_SLOT exists from PostgreSQL 15 on; before that, staging or the
    // server's position decide where streaming starts.
    let slot_pos = if server.version_num >= 150000 {
        client
            .read_replication_slot(&slot)
            .await
            .map_err(wrap)?
            .and_then(|p| p.restart_lsn.map(|l| (l, p.restart_tli)))
    } else {
        None
    };
    let scan = StagingScan::read(&staging_dir, server.seg)?;
    let plan = startup::plan_resume(&scan, slot_pos, &server);
    tracing::info!(timeline = %plan.tli, start = %plan.start, confirmed = %plan.floor, "streaming resumes");

    let seg = server.seg;
    // Complete segments a previous run left in staging below the resume point go up again
    // (a no-op when the bucket already has them); streaming rewrites the rest.
    let leftovers: Vec<_> = scan
        .complete
        .iter()
        .filter(|s| s.segno < plan.start.segment_number(seg))
        .collect();
    let mut tracker = FlushTracker::new(seg, plan.start, plan.floor);
    tracker.hold_for_leftovers(leftovers.iter().map(|s| s.segno));
    let shared = Arc::new(Shared::new(
        seg,
        cfg.raw.wal.confirm == Confirm::Bucket,
        tracker,
        metrics.clone(),
    ));

    // Pipeline: receiver → compress pool → immutable uploader; receiver → partial uploader.
    let (seg_tx, seg_rx) = crossbeam_channel::bounded::<CompressJob>(4);
    // Small queues: a sealed segment is megabytes, and memory is bounded by what waits here
    // plus `upload_concurrency` uploads in flight.
    let (upload_tx, upload_rx) = mpsc::channel(2);
    let (partial_tx, partial_rx) = mpsc::channel::<CompressJob>(1);
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();
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
    let partial_task = tokio::spawn(uploader.run_partials(partial_rx, level));
    let publisher = spawn_publisher(
        shared.clone(),
        staging_dir.clone(),
        store.as_ref(),
        server.system_id,
        &cfg,
    );

    // The channel is bounded: sending may wait for the workers, off the async threads.
    tokio::task::block_in_place(|| {
        leftovers.iter().try_for_each(|s| {
            seg_tx.send(CompressJob {
                object: WalObject::Segment {
                    tli: s.tli,
                    segno: s.segno,
                },
                source: RawSource::Path(s.path.clone()),
            })
        })
    })?;
    queue_histories(&mut client, store.as_ref(), &seg_tx, server.timeline).await?;

    let writer = StagingWriter::new(&staging_dir, seg)?;
    shared
        .metrics
        .staging_quota_bytes
        .set(i64::try_from(cfg.raw.staging.quota.as_u64()).unwrap_or(i64::MAX));
    let outlets = Outlets {
        segments: seg_tx,
        partials: partial_tx,
        partial_interval: cfg.raw.wal.partial_interval,
        status_interval: cfg.raw.wal.status_interval,
        quota: cfg.raw.staging.quota.as_u64(),
        synchronous: cfg.raw.wal.synchronous,
    };
    let mut receiver = Receiver::new(shared.clone(), writer, outlets, plan.start);
    let streamed = tokio::select! {
        r = stream(&mut receiver, client, &conn, &slot, plan.tli, plan.start, &shutdown) => r,
        Some(e) = fatal_rx.recv() => Err(e),
    };
    let last_stream = match streamed {
        Ok(s) => s,
        Err(e) => {
            shutdown.cancel();
            return Err(e);
        }
    };

    // Clean shutdown: the segment being filled goes up as .partial, then everything drains.
    receiver.close_partial().await?;
    drop(receiver);
    drain(shared.clone(), last_stream, pool, imm_task, partial_task).await;
    publisher.abort();
    publish(
        &shared,
        &staging_dir,
        &store.describe(),
        server.system_id,
        true,
    );
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    if let Some(t) = fetch_task {
        let _ = t.await;
    }
    tracing::info!(flushed = %shared.tracker().flush_lsn(shared.confirm_bucket), "stopped cleanly");
    Ok(())
}

/// Streams across reconnects and timeline switches until shutdown; returns the open stream
/// (for the last status update), if there is one.
async fn stream(
    receiver: &mut Receiver,
    client: ReplicationClient,
    conn: &ConnConfig,
    slot: &str,
    mut tli: TimelineId,
    mut start: Lsn,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<ReplicationStream>> {
    let mut client = Some(client);
    let mut delays = reconnect_backoff();
    loop {
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let c = match client.take() {
            Some(c) => c,
            None => match ReplicationClient::connect(conn).await {
                Ok(mut c) => {
                    // The slot may have been dropped while we were away; recreate it.
                    if let Err(e) = c.create_physical_slot(slot).await {
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
        let stream = match c.start_replication(Some(slot), start, tli).await {
            Ok(s) => s,
            Err(e) => {
                wait_retry(
                    receiver,
                    &mut delays,
                    format!(
                        "START_REPLICATION at {start} on timeline {tli}: {}",
                        explain(conn, &e)
                    ),
                    shutdown,
                )
                .await;
                continue;
            }
        };
        tracing::info!(timeline = %tli, start = %start, "streaming");
        match receiver.session(stream, tli, shutdown).await {
            Ok(SessionEnd::Shutdown(stream)) => return Ok(Some(stream)),
            Ok(SessionEnd::TimelineEnded {
                stream,
                next_tli,
                next_tli_start,
            }) => {
                tracing::info!(timeline = %tli, next = %next_tli, at = %next_tli_start, "timeline ended; following the switch");
                receiver.close_partial().await?;
                receiver
                    .shared()
                    .tracker()
                    .timeline_switched(next_tli_start);
                let mut c = stream.into_client();
                match startup::fetch_history(&mut c, next_tli).await {
                    Ok(content) => receiver.queue_history(next_tli, content)?,
                    Err(e) => {
                        tracing::warn!(error = %e, "history file not fetched; retried at the next start")
                    }
                }
                tli = next_tli;
                let seg = receiver.shared().seg;
                start = next_tli_start.segment_number(seg).start_lsn(seg);
                receiver.set_position(start);
                client = Some(c);
                delays = reconnect_backoff();
            }
            Err(e) => {
                if e.downcast_ref::<crate::staging::StagingError>().is_some() {
                    return Err(e.context("staging"));
                }
                receiver.close_partial().await?;
                start = receiver.resume_point();
                wait_retry(
                    receiver,
                    &mut delays,
                    format!("replication connection lost: {e:#}"),
                    shutdown,
                )
                .await;
            }
        }
    }
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

/// Queues the history files of every timeline up to `current` that the store lacks.
async fn queue_histories(
    client: &mut ReplicationClient,
    store: &dyn ObjectStore,
    out: &crossbeam_channel::Sender<CompressJob>,
    current: TimelineId,
) -> anyhow::Result<()> {
    for t in 2..=current.0 {
        let tli = TimelineId(t);
        let key = pgagent_storage::layout::wal_key(&pgagent_protocol::history_file_name(tli));
        if store.head(&key).await?.is_some() {
            continue;
        }
        match startup::fetch_history(client, tli).await {
            Ok(content) => tokio::task::block_in_place(|| {
                out.send(CompressJob {
                    object: WalObject::History { tli },
                    source: RawSource::Bytes(content),
                })
            })?,
            // A server keeps the history of its own ancestry; older branches may be gone.
            Err(e) => tracing::debug!(timeline = t, error = %e, "history file not available"),
        }
    }
    Ok(())
}

/// Waits until the compress workers and uploaders have finished, keeping the server informed.
async fn drain(
    shared: Arc<Shared>,
    mut stream: Option<ReplicationStream>,
    pool: compress::CompressPool,
    imm_task: JoinHandle<()>,
    partial_task: JoinHandle<()>,
) {
    let all = async move {
        let _ = tokio::task::spawn_blocking(move || pool.join()).await;
        let _ = imm_task.await;
        let _ = partial_task.await;
    };
    tokio::pin!(all);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = &mut all => break,
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

/// Every second: gauges, `status.json`, the textfile, and the alert hooks.
fn spawn_publisher(
    shared: Arc<Shared>,
    staging_dir: std::path::PathBuf,
    store: &dyn ObjectStore,
    system_id: u64,
    cfg: &Config,
) -> JoinHandle<()> {
    let store = store.describe();
    let alerts = cfg.raw.alerts.clone();
    let max_rpo = cfg.raw.metrics.max_rpo_seconds;
    let textfile_dir = (!cfg.raw.metrics.textfile_dir.is_empty())
        .then(|| std::path::PathBuf::from(&cfg.raw.metrics.textfile_dir));
    tokio::spawn(async move {
        let mut incidents = crate::alerts::Incidents::new(alerts.grace, alerts.min_interval);
        let mut textfile_failed = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let status = publish(&shared, &staging_dir, &store, system_id, false);
            if let Some(dir) = &textfile_dir {
                match crate::metrics::write_textfile(&shared.metrics, dir) {
                    Ok(()) => textfile_failed = false,
                    Err(e) if !textfile_failed => {
                        textfile_failed = true;
                        tracing::error!("metrics.textfile_dir {}: {e}", dir.display());
                    }
                    Err(_) => {}
                }
            }
            let problems = crate::alerts::problems(&status, max_rpo);
            if let Some(event) = incidents.observe(&problems, std::time::Instant::now()) {
                let command = match event.kind {
                    crate::alerts::EventKind::Failure => &alerts.on_failure,
                    crate::alerts::EventKind::Recovery => &alerts.on_recovery,
                };
                tracing::warn!(event = ?event.kind, problems = ?event.problems, "incident");
                if !command.is_empty() {
                    tokio::spawn(crate::alerts::run_hook(
                        command.clone(),
                        crate::alerts::hook_env(&event, &status),
                        alerts.hook_timeout,
                    ));
                }
            }
        }
    })
}

/// Updates the gauges and `status.json`.
fn publish(
    shared: &Shared,
    staging_dir: &std::path::Path,
    store: &str,
    system_id: u64,
    stopped: bool,
) -> DaemonStatus {
    let (received, flushed, uploaded, lag) = {
        let t = shared.tracker();
        (
            t.received_lsn(),
            t.flush_lsn(shared.confirm_bucket),
            t.bucket_frontier(),
            t.upload_lag_bytes(),
        )
    };
    let rpo = shared
        .rpo()
        .rpo_seconds(uploaded, std::time::Instant::now());
    let staging_bytes = crate::staging::staging_bytes(staging_dir);
    let m = &shared.metrics;
    m.wal_received_lsn.set(received.0 as i64);
    m.wal_uploaded_lsn.set(uploaded.0 as i64);
    m.upload_lag_bytes.set(lag as i64);
    m.rpo_seconds.set(rpo);
    m.staging_bytes.set(staging_bytes as i64);
    let live = shared.live().clone();
    let status = DaemonStatus {
        pid: std::process::id(),
        updated_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        system_identifier: system_id.to_string(),
        store: store.to_string(),
        stopped,
        connected: live.connected,
        timeline: live.timeline.map(|t| t.0),
        received_lsn: received.to_string(),
        flushed_lsn: flushed.to_string(),
        uploaded_lsn: uploaded.to_string(),
        upload_lag_bytes: lag,
        rpo_seconds: rpo,
        staging_bytes,
        staging_full: m.staging_full.get() == 1,
        last_error: live.last_error,
    };
    if let Err(e) = statusfile::write(staging_dir, &status) {
        tracing::debug!(error = %e, "cannot write status.json");
    }
    status
}
