//! The command line (DESIGN.md, "Command line"): parsed into plain data, no side effects.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Overrides;
use crate::logging::LogFormat;

/// PostgreSQL backup sidecar: streams WAL to a bucket and brings the cluster back from it.
#[derive(Debug, Parser)]
#[command(name = "pgagent", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file [default: /etc/pgagent/pgagent.toml, else ./pgagent.toml]
    #[arg(long, global = true, env = "PGAGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PGAGENT_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Settings that win over the file and the environment.
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags for the most used settings.
#[derive(Debug, Args, Clone, Default)]
pub struct OverrideArgs {
    /// postgres.conninfo: libpq connection string
    #[arg(long, global = true, value_name = "CONNINFO")]
    pub conninfo: Option<String>,
    /// postgres.slot: physical replication slot
    #[arg(long, global = true, value_name = "NAME")]
    pub slot: Option<String>,
    /// staging.dir: local staging directory
    #[arg(long, global = true, value_name = "DIR")]
    pub staging_dir: Option<PathBuf>,
    /// store.url: file:///path or s3://bucket/prefix?endpoint=…
    #[arg(long = "store", global = true, value_name = "URL")]
    pub store_url: Option<String>,
}

impl From<OverrideArgs> for Overrides {
    fn from(a: OverrideArgs) -> Self {
        Overrides {
            conninfo: a.conninfo,
            slot: a.slot,
            staging_dir: a.staging_dir,
            store_url: a.store_url,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The sidecar daemon: stream WAL into staging and the store.
    Run,
    /// restore_command: deliver one WAL file from the store (`pgagent fetch %f %p`).
    ///
    /// Exit 0 when delivered, 1 only when the store confirms the file is absent, 255 when
    /// recovery must stop (store unreachable past fetch.timeout, corrupt object, wrong store).
    Fetch {
        /// File name PostgreSQL asks for (%f): a segment, .partial, .history or .backup file.
        file: String,
        /// Where to write it (%p), relative to the current directory (PGDATA).
        path: PathBuf,
    },
    /// Internal: the restore-mode fetch server that `pgagent fetch` starts when no daemon
    /// answers; it exits after fetch.idle_timeout without a request.
    #[command(name = "fetch-server", hide = true)]
    FetchServer,
    /// List what the store holds.
    List {
        /// What to list.
        #[arg(value_enum, default_value = "wal")]
        what: ListWhat,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show lags, positions and the last error of the running daemon.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Things `pgagent list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListWhat {
    /// WAL segments per timeline, as ranges, with gaps.
    Wal,
    /// Timelines and their history files.
    Timelines,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from(["pgagent", "list", "wal", "--json", "--store", "file:///x"])
            .unwrap();
        assert_eq!(cli.overrides.store_url.as_deref(), Some("file:///x"));
        assert!(matches!(
            cli.command,
            Command::List {
                what: ListWhat::Wal,
                json: true
            }
        ));
    }

    #[test]
    fn fetch_takes_file_and_path() {
        let cli = Cli::try_parse_from([
            "pgagent",
            "fetch",
            "00000002.history",
            "pg_wal/RECOVERYHISTORY",
        ])
        .unwrap();
        match cli.command {
            Command::Fetch { file, path } => {
                assert_eq!(file, "00000002.history");
                assert_eq!(path, PathBuf::from("pg_wal/RECOVERYHISTORY"));
            }
            other => panic!("{other:?}"),
        }
    }
}
