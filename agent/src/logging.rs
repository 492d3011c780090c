//! Logs via tracing: human-readable by default, JSON with `--log-format json`. The level
//! comes from `PGAGENT_LOG` (an `EnvFilter` directive, default `info`); colours only when
//! stderr is a terminal.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Filter used when `PGAGENT_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber, writing to stderr, with `default_filter` (an `EnvFilter`
/// directive) when `PGAGENT_LOG` is unset.
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_env("PGAGENT_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only on a terminal: PostgreSQL's log and the fetch server's log are files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
