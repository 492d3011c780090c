//! `pgagent run`: the services the daemon hosts, started with one cancellation token and
//! joined on shutdown.
//!
//! ```text
//! metrics/health server ─┐
//! fetch server ──────────┤
//! schedules ─────────────┼── shutdown token ── first SIGTERM/SIGINT (see `lib.rs`)
//! streaming pipeline ────┤
//! status publisher ──────┘
//! ```
//!
//! In order: the metrics server binds, staging is checked, the fetch server and the
//! schedules start, the pipeline connects and claims the store, the backup and snapshot
//! gauges are read from the store, the pipeline starts its workers, the status publisher
//! starts, and the pipeline streams until shutdown. Then the status is published one last
//! time (`stopped`) and the servers are joined.

mod schedules;
mod status;
pub mod usage;

use std::sync::Arc;

use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::ObjectStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline;

/// Runs the daemon until `shutdown` is cancelled and everything received is uploaded;
/// `fetch_prefix` starts the `restore_command` of scheduled drills.
///
/// Errors: a metrics address that cannot be bound, a staging directory that cannot be
/// written, a schedule that does not parse, and the pipeline's (see [`pipeline`]).
pub async fn run(
    cfg: Config,
    shutdown: CancellationToken,
    fetch_prefix: String,
) -> anyhow::Result<()> {
    run_hosted(cfg, shutdown, fetch_prefix, Host::default()).await
}

/// What a process that hosts the daemon's services beside its own shares with them (the
/// CloudNativePG sidecar starts and stops streaming as its pod gains and loses the primary
/// role, and keeps serving `restore_command` in between). `Host::default()` is `pgagent run`.
#[derive(Default)]
pub struct Host {
    /// The metrics to count into (kept across runs); `None`: a new set.
    pub metrics: Option<Arc<Metrics>>,
    /// The host serves `restore_command` itself: no fetch server is started here.
    pub without_fetch_server: bool,
    /// Receives the running pipeline's progress once it streams (`None` again at the end).
    pub progress: Option<tokio::sync::watch::Sender<Option<pipeline::Progress>>>,
}

/// [`run`] with what a hosting process shares ([`Host`]).
///
/// Errors: as [`run`].
pub async fn run_hosted(
    cfg: Config,
    shutdown: CancellationToken,
    fetch_prefix: String,
    host: Host,
) -> anyhow::Result<()> {
    let metrics = host.metrics.unwrap_or_else(|| Arc::new(Metrics::new()));
    let metrics_task = serve_metrics(&cfg, &metrics, &shutdown).await?;
    check_staging(&cfg)?;
    // Every part uses every store: the pipeline and the backups write to each, the fetch
    // server and the drills read them as one.
    let fetch_task = if host.without_fetch_server {
        None
    } else {
        crate::fetch::server::spawn_daemon_server(&cfg, metrics.clone(), shutdown.clone())
    };
    let schedule_tasks = schedules::start(&cfg, &metrics, &shutdown, &fetch_prefix)?;

    let connected = pipeline::connect(&cfg).await?;
    spawn_last_points(
        connected.store().clone(),
        connected.cipher().cloned(),
        metrics.clone(),
    );
    let running = connected.start(&cfg, metrics.clone(), &shutdown).await?;
    let progress = running.progress();
    if let Some(tx) = &host.progress {
        tx.send_replace(Some(progress.clone()));
    }
    let publisher = Arc::new(status::Publisher::new(
        progress.clone(),
        metrics.clone(),
        cfg.staging_dir().to_path_buf(),
        running.store().describe(),
        running.server().system_id,
    ));
    let ticking = publisher.spawn(&cfg);
    let streamed = running.stream(&shutdown).await;
    if let Some(tx) = &host.progress {
        tx.send_replace(None);
    }
    streamed?;

    ticking.abort();
    publisher.publish(true);
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    if let Some(t) = fetch_task {
        let _ = t.await;
    }
    for t in schedule_tasks {
        let _ = t.await;
    }
    tracing::info!(flushed = %progress.positions().flushed, "stopped cleanly");
    Ok(())
}

/// Binds `metrics.listen` (when set) and serves `/metrics`, `/healthz` and `/readyz` until
/// `shutdown`.
async fn serve_metrics(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<JoinHandle<std::io::Result<()>>>> {
    let Some(addr) = cfg.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "metrics.listen {addr}: {e}; fix: choose a free address or set metrics.listen = \"\""
        )
    })?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    Ok(Some(tokio::spawn(crate::metrics::serve(
        listener,
        metrics.clone(),
        cfg.raw.metrics.max_rpo_seconds,
        shutdown.clone(),
    ))))
}

/// The staging dataset's ZFS properties (warnings) and a durable write into staging. A
/// full disk is no reason to stop: it is reported, and receiving waits for room.
fn check_staging(cfg: &Config) -> anyhow::Result<()> {
    for line in crate::zfs::staging::startup_check(cfg)? {
        tracing::warn!("{line}");
    }
    match crate::staging::check_staging(cfg.staging_dir()) {
        Err(e) if crate::staging::is_disk_full(&e) => {
            tracing::error!("{e:#}");
            Ok(())
        }
        r => r,
    }
}

/// The backup, snapshot and drill gauges start from what the store holds, not from zero,
/// so a restart does not look like "no backup for a day" (and a drill run by hand counts).
fn spawn_last_points(
    store: Arc<dyn ObjectStore>,
    cipher: Option<ObjectCipher>,
    metrics: Arc<Metrics>,
) {
    tokio::spawn(async move {
        use crate::store::last_points;
        use crate::times::unix_seconds;
        match last_points(store.as_ref(), cipher.as_ref()).await {
            Ok(p) => {
                if let Some(t) = p.last_backup.and_then(|(_, at)| unix_seconds(&at)) {
                    metrics.backup_last_success_timestamp_seconds.set(t);
                }
                if let Some(t) = p.last_snapshot.and_then(|(_, at)| unix_seconds(&at)) {
                    metrics.snapshot_last_success_timestamp_seconds.set(t);
                }
                if let Some(t) = p.last_passed_drill.as_deref().and_then(unix_seconds) {
                    metrics.drill_last_success_timestamp_seconds.set(t);
                }
            }
            Err(e) => tracing::warn!("cannot read the last backup from the store: {e:#}"),
        }
    });
}
