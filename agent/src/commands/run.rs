//! `pgagent run`: the daemon ([`crate::daemon`]) until a signal stops it.

use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Runs the daemon; the first SIGTERM/SIGINT stops it cleanly, a second at once.
/// `fetch_prefix` is how a restored server calls this program (`<pgagent> [--config …]`),
/// for the `restore_command` of scheduled drills.
///
/// Errors: the daemon's (connection, store, staging).
pub async fn run(cfg: Config, fetch_prefix: String) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    super::signals::stop_on_signals(
        shutdown.clone(),
        super::signals::Messages {
            first: "shutting down: uploading what was received (signal again to stop at once)",
            second: "second signal: stopping now; staging keeps what is not uploaded",
        },
    );
    crate::daemon::run(cfg, shutdown, fetch_prefix).await
}
