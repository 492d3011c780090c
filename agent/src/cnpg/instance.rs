//! `pgagent cnpg instance` and `pgagent cnpg restore`: the sidecars CNPG's instance manager
//! talks to over the unix socket `<plugins dir>/pgagent.io`.
//!
//! ```text
//! instance sidecar ── Identity, WAL (archive, restore), Backup, Metrics ── plugins socket
//!    │  fetch server on <staging>/fetch.sock (restore_command, prefetch), always
//!    └─ streaming (the daemon's pipeline), only while the pod is the primary
//! ```
//!
//! The recovery job's sidecar serves Identity, RestoreJobHooks and WAL restore (recovery
//! replays from the store through it once the restore hook has rebuilt PGDATA).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgagent_cnpgi::backup::backup_server::BackupServer;
use pgagent_cnpgi::identity::identity_server::IdentityServer;
use pgagent_cnpgi::metrics::metrics_server::MetricsServer;
use pgagent_cnpgi::wal::restore_job_hooks_server::RestoreJobHooksServer;
use pgagent_cnpgi::wal::wal_server::WalServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use super::archive::Archiver;
use super::backup_service::BackupService;
use super::identity::{PluginIdentity, Role};
use super::metrics_service::{MetricsService, Recorded};
use super::pod::Pod;
use super::restore_job::RestoreJob;
use super::store_once::StoreOnce;
use super::streaming::{StartStreaming, Streaming};
use super::wal_service::WalService;
use super::PLUGIN_NAME;
use crate::config::Config;
use crate::fetch::server::{Server as FetchServer, ServerSettings};
use crate::metrics::Metrics;

/// Where a sidecar runs: its pod and the plugins directory.
#[derive(Debug, Clone)]
pub struct SidecarPlace {
    /// The pod's name.
    pub pod_name: String,
    /// The PostgreSQL data directory.
    pub pgdata: PathBuf,
    /// CNPG's plugins directory; the socket is `<dir>/pgagent.io`.
    pub plugins_dir: PathBuf,
}

/// Runs the instance sidecar (`role` [`Role::Instance`], streaming with `start` while the
/// pod is the primary) or the recovery job's ([`Role::Restore`]) until `shutdown`.
///
/// Errors: the staging directory or a socket cannot be created; the gRPC server fails.
pub async fn run(
    cfg: Config,
    role: Role,
    place: SidecarPlace,
    start: StartStreaming,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(cfg.staging_dir())
        .map_err(|e| anyhow::anyhow!("staging.dir {}: {e}", cfg.staging_dir().display()))?;
    let metrics = Arc::new(Metrics::new());
    let recorded = Arc::new(Recorded::default());
    let streaming =
        (role == Role::Instance).then(|| Arc::new(Streaming::new(start, metrics.clone())));
    let pod = Arc::new(Pod::new(
        place.pod_name.clone(),
        place.pgdata.clone(),
        streaming.clone(),
    ));
    let staging = cfg.staging_dir().to_path_buf();
    let fetch_socket = crate::fetch::paths::daemon_socket(&staging);
    let fetch = FetchServer::bind(
        cfg.clone(),
        ServerSettings {
            socket: fetch_socket.clone(),
            socket_mode: 0o660,
            cache_dir: crate::fetch::paths::daemon_cache(&staging),
            staging_wal: Some(staging.join("wal")),
            idle_timeout: None,
        },
        metrics.clone(),
    )?;
    let fetch_task = tokio::spawn(fetch.run(shutdown.clone()));

    let ready = Arc::new(AtomicBool::new(false));
    let identity = IdentityServer::new(PluginIdentity::new(role, ready.clone()));
    let mut server = Server::builder();
    let router = match role {
        Role::Instance => {
            let streaming = streaming.clone().expect("an instance sidecar streams");
            let store = Arc::new(StoreOnce::new(cfg.clone()));
            let archiver = Arc::new(Archiver::new(
                cfg.clone(),
                place.pgdata.clone(),
                store.clone(),
                streaming.clone(),
                metrics.clone(),
            ));
            let wal = WalService::new(
                cfg.clone(),
                pod.clone(),
                Some(archiver),
                fetch_socket,
                recorded.clone(),
            );
            tokio::spawn(tick(streaming, recorded.clone(), shutdown.clone()));
            server
                .add_service(identity)
                .add_service(WalServer::new(wal))
                .add_service(BackupServer::new(BackupService::new(
                    cfg.clone(),
                    store.clone(),
                    pod.clone(),
                    recorded.clone(),
                )))
                .add_service(MetricsServer::new(MetricsService::new(
                    &cfg,
                    store,
                    pod.clone(),
                    metrics.clone(),
                    recorded.clone(),
                )))
        }
        Role::Restore => {
            let wal = WalService::new(cfg.clone(), pod.clone(), None, fetch_socket, recorded);
            server
                .add_service(identity)
                .add_service(WalServer::new(wal))
                .add_service(RestoreJobHooksServer::new(RestoreJob::new(
                    cfg.clone(),
                    place.pgdata.clone(),
                )))
        }
        Role::Operator => anyhow::bail!("the operator side is `pgagent cnpg operator`"),
    };
    std::fs::create_dir_all(&place.plugins_dir)?;
    let socket = place.plugins_dir.join(PLUGIN_NAME);
    ready.store(true, Ordering::SeqCst);
    let served = super::serve::serve_unix(&socket, router, shutdown.clone()).await;
    ready.store(false, Ordering::SeqCst);
    if let Some(s) = &streaming {
        s.stop().await;
    }
    let _ = fetch_task.await;
    served
}

/// Every second: notes WAL reaching the store through the stream; every few seconds,
/// applies the last role seen again (a failed start of streaming is retried).
async fn tick(streaming: Arc<Streaming>, recorded: Arc<Recorded>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let mut last_uploaded = None;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Some(p) = streaming.progress() {
            let uploaded = p.positions().uploaded;
            if last_uploaded.is_some_and(|l| l != uploaded) {
                recorded.wal_stored();
            }
            last_uploaded = Some(uploaded);
        }
        n += 1;
        if n.is_multiple_of(5) {
            streaming.tick().await;
        }
    }
}
