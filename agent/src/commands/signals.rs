//! SIGTERM and SIGINT for the commands that clean up before they exit (`run`, `drill`):
//! the first signal cancels a token and the command winds down; a second exits at once.

use tokio_util::sync::CancellationToken;

use crate::exit;

/// What is logged on each signal.
#[derive(Debug, Clone, Copy)]
pub struct Messages {
    /// On the first signal, when `stop` is cancelled.
    pub first: &'static str,
    /// On the second, just before the process exits (status 1).
    pub second: &'static str,
}

/// Spawns the watcher: the first SIGTERM/SIGINT cancels `stop`, a second exits at once.
pub fn stop_on_signals(stop: CancellationToken, messages: Messages) {
    tokio::spawn(watch(stop, messages));
}

async fn watch(stop: CancellationToken, messages: Messages) {
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
            tracing::info!("{}", messages.first);
            stop.cancel();
        } else {
            tracing::warn!("{}", messages.second);
            std::process::exit(i32::from(exit::FAILURE));
        }
    }
}
