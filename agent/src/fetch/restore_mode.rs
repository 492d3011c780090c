//! The restore-mode fetch server (`pgagent fetch-server`, started by `pgagent fetch`).
//!
//! On a machine with nothing but the bucket there is no daemon: the first `pgagent fetch`
//! starts this server in the background and later calls reuse it, so each
//! `restore_command` call costs a local copy instead of a store connection. It holds
//! `fetch-<id>.lock` while it runs (a second one waits briefly for it, then leaves) and
//! exits after `fetch.idle_timeout` without a request, logging what it served and the
//! requests it sent to the store, by operation.

use std::fs::{File, TryLockError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::paths::RestorePaths;
use super::server::{Server, ServerSettings};
use crate::config::Config;
use crate::metrics::Metrics;

/// How long a starting server waits for the lock of one that is exiting.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Runs the restore-mode server for `cfg` until it has been idle for `fetch.idle_timeout`
/// or gets SIGTERM/SIGINT. Returns at once (Ok) if another server holds the lock.
///
/// Errors: no usable directory, or the lock, cache or socket cannot be created.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let paths = RestorePaths::for_config(&cfg).context(
        "no usable directory for the fetch server: set staging.dir to a writable directory",
    )?;
    paths
        .prepare()
        .with_context(|| format!("prepare {}", paths.dir.display()))?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&paths.lock)
        .with_context(|| format!("open {}", paths.lock.display()))?;
    let waited_until = Instant::now() + LOCK_WAIT;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if Instant::now() < waited_until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(TryLockError::WouldBlock) => {
                tracing::info!(
                    "another fetch server holds {}; leaving it to serve",
                    paths.lock.display()
                );
                return Ok(());
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("lock {}", paths.lock.display()))
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let idle = cfg.raw.fetch.idle_timeout;
    let store = super::paths::store_identity(&cfg);
    let summary = runtime.block_on(async move {
        let settings = ServerSettings {
            socket: paths.socket.clone(),
            socket_mode: 0o600,
            cache_dir: paths.cache.clone(),
            staging_wal: None,
            idle_timeout: Some(idle),
        };
        let server = Server::bind(cfg, settings, Arc::new(Metrics::new()))
            .with_context(|| format!("fetch server on {}", paths.socket.display()))?;
        tracing::info!(
            "fetch server (restore mode) for {store} listening on {}",
            paths.socket.display()
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        anyhow::Ok(server.run(shutdown).await)
    })?;
    // No metrics endpoint here: the store requests it sent are in its last log line, per
    // store when it read several as one.
    let by_store = crate::store::read::requests_by_store();
    let store_requests = if by_store.is_empty() {
        crate::store::requests().totals().to_string()
    } else {
        by_store
            .iter()
            .map(|(name, t)| format!("{name}: {t}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    tracing::info!(
        served = summary.served,
        prefetch_hits = summary.prefetch_hits,
        prefetch_misses = summary.prefetch_misses,
        store_requests = %store_requests,
        "fetch server stopped"
    );
    drop(lock);
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}
