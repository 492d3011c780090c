//! `pgagent cnpg operator|instance|restore|healthcheck`: the CloudNativePG plugin's
//! processes ([`crate::cnpg`]), each until SIGTERM/SIGINT.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cnpg::identity::Role;
use crate::cnpg::instance::SidecarPlace;
use crate::cnpg::operator::OperatorSettings;
use crate::cnpg::streaming::StartStreaming;
use crate::config::Config;
use crate::daemon::Host;

/// How long the health check waits for the sidecar's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// `pgagent cnpg operator`: serves the operator side until SIGTERM/SIGINT.
///
/// Errors: as [`crate::cnpg::operator::serve`].
pub fn operator(settings: OperatorSettings) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async { crate::cnpg::operator::serve(settings, stop_on_signals()).await })
}

/// `pgagent cnpg healthcheck`: Ok when the sidecar's socket in `plugins_dir` answers ready.
///
/// Errors: no answer within 4 s, or not ready.
pub fn healthcheck(plugins_dir: &Path) -> anyhow::Result<()> {
    let socket = plugins_dir.join(crate::cnpg::PLUGIN_NAME);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(crate::cnpg::client::probe(&socket, PROBE_TIMEOUT))
}

/// `pgagent cnpg instance|restore`: runs a sidecar with the configuration its environment
/// gives (`PGAGENT_*`) until SIGTERM/SIGINT.
///
/// Errors: an instance sidecar without its pod's name (exit 2); as
/// [`crate::cnpg::instance::run`].
pub async fn sidecar(cfg: Config, role: Role, place: SidecarPlace) -> anyhow::Result<()> {
    if role == Role::Instance && place.pod_name.is_empty() {
        anyhow::bail!(crate::config::ConfigError(
            "the instance sidecar needs its pod's name: set POD_NAME (or --pod-name)".into()
        ));
    }
    let daemon_cfg = cfg.clone();
    // Streaming is the daemon's services without their fetch server: the sidecar serves
    // restore_command itself, on the primary and on the replicas alike.
    let start: StartStreaming = Arc::new(move |token, metrics, progress| {
        let host = Host {
            metrics: Some(metrics),
            without_fetch_server: true,
            progress: Some(progress),
        };
        Box::pin(crate::daemon::run_hosted(
            daemon_cfg.clone(),
            token,
            String::new(),
            host,
        ))
    });
    crate::cnpg::instance::run(cfg, role, place, start, stop_on_signals()).await
}

fn stop_on_signals() -> CancellationToken {
    let shutdown = CancellationToken::new();
    super::signals::stop_on_signals(
        shutdown.clone(),
        super::signals::Messages {
            first: "shutting down: uploading what was received (signal again to stop at once)",
            second: "second signal: stopping now",
        },
    );
    shutdown
}
