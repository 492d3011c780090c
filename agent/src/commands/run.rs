//! `pgagent run`: the daemon ([`crate::daemon`]) until a signal stops it.

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::exit;

/// Runs the daemon; the first SIGTERM/SIGINT stops it cleanly, a second at once.
/// `fetch_prefix` is how a restored server calls this program (`<pgagent> [--config …]`),
/// for the `restore_command` of scheduled drills.
///
/// Errors: the daemon's (connection, store, staging).
pub async fn run(cfg: Config, fetch_prefix: String) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    crate::daemon::run(cfg, shutdown, fetch_prefix).await
}

/// First SIGTERM/SIGINT: cancel `shutdown` (flush, upload, stop). Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut count = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        count += 1;
        if count == 1 {
            tracing::info!(
                "shutting down: uploading what was received (signal again to stop at once)"
            );
            shutdown.cancel();
        } else {
            tracing::warn!("second signal: stopping now; staging keeps what is not uploaded");
            std::process::exit(i32::from(exit::FAILURE));
        }
    }
}
