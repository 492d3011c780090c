//! pgagent: a PostgreSQL backup sidecar.
//!
//! It streams WAL over a physical replication connection into local staging and a bucket
//! (zstd-compressed, blake3-verified), so that a machine with nothing but the bucket can come
//! back to any point in time. See DESIGN.md for the contracts; `main.rs` only calls
//! [`main_entry`], which parses the command line ([`cli`]) and runs one command.
//!
//! Dependencies point down only, layer by layer (DESIGN.md, "Module map"); modules of one
//! layer may use each other but never in a circle. `tests/tests/architecture.rs` holds the
//! same layers as a table and fails on an import that runs back up.
//!
//! ```text
//! main_entry, cli      parse the command line into requests, dispatch
//!      │
//! commands/            one module per command: parse, call, print
//!      │                 (`run` starts the daemon; `restore` calls restore/ and prints)
//! daemon/              what `pgagent run` starts: metrics server, fetch server, schedules,
//!      │                 status publisher and the pipeline, on one shutdown token
//! services, one room each:
//!      │   pipeline/ (streaming WAL only)   fetch/ (restore_command)   backup/ (base backups)
//!      │   restore/ (tiers, materialize, recovery settings)   drill/ (restore, start, check)
//!      │   zfs/ (snapshots, mount layout)
//! shared modules:
//!      │   server (connect, explain)   store/ (claim, catalogs, records)   retrying_store
//!      │   metrics   statusfile   alerts   staging   tracker
//! config/ (raw, then validated)   exit (exit codes)
//!      │
//! leaves, which import nothing of the crate:
//!          retry (backoff policy)   schedule (cron)   times (record times)   progress
//!          child (child processes)   logging
//! ```
//!
//! So "what does `pgagent run` start?" is [`daemon::run`]; "how does a restore work?" is
//! [`restore::restore`]; "how do we connect?" is [`server::connect`] and
//! [`store::claim_store`]; "how do we retry?" is [`retry`].

pub mod alerts;
pub mod backup;
pub mod child;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod drill;
pub mod exit;
pub mod fetch;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod restore;
pub mod retry;
pub mod retrying_store;
pub mod schedule;
pub mod server;
pub mod staging;
pub mod statusfile;
pub mod store;
pub mod times;
pub mod tracker;
pub mod zfs;

use std::io::Write;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::{Config, RawConfig};

/// Parses the command line, runs the command, and returns the process exit code.
pub fn main_entry() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    let default_filter = match cli.command {
        Command::Fetch { .. } => fetch::LOG_FILTER,
        _ => logging::DEFAULT_FILTER,
    };
    logging::init_with_default(cli.log_format, default_filter);
    if let Command::Fetch { .. } = cli.command {
        // A panic must stop recovery like any other unexpected failure (exit::unless_panic).
        return exit::unless_panic(exit::FETCH_ABORT, || finish(run(cli)));
    }
    finish(run(cli))
}

/// The exit code of a finished command; an error is also written to stderr. A stderr that
/// cannot be written (a pipe whose reader is gone) loses the message, never the code:
/// `eprintln!` would panic there instead.
fn finish(result: anyhow::Result<()>) -> u8 {
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "pgagent: {e:#}");
            exit::code_for(&e)
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let raw = RawConfig::load(cli.config.as_deref(), &cli.overrides.clone().into())?;
    let cfg = raw.validate()?;
    Ok(cfg)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Fetch { file, path } = &cli.command {
        return fetch::run(load_config(&cli), file, path, &launch(&cli))
            .map_err(|e| exit::Coded::from(e).into());
    }
    let cfg = load_config(&cli)?;
    if let Command::FetchServer = cli.command {
        return fetch::restore_mode::run(cfg);
    }
    let cli_fetch_prefix = fetch_command_prefix(&cli, &cfg);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run => commands::run::run(cfg, cli_fetch_prefix).await,
            Command::Fetch { .. } | Command::FetchServer => {
                unreachable!("handled before the runtime starts")
            }
            Command::Backup { wait, fast } => commands::backup::run(&cfg, wait, fast).await,
            Command::Prune { dry_run } => commands::prune::run(&cfg, dry_run).await,
            Command::Verify { backup, wal } => {
                commands::verify::run(&cfg, backup.as_deref(), wal).await
            }
            Command::Restore(args) => {
                let req = args.request(&cli_fetch_prefix)?;
                commands::restore::run(&cfg, &req).await
            }
            Command::Snapshot => commands::snapshot::run(&cfg).await,
            Command::Drill(args) => {
                let req = args.request(&cli_fetch_prefix)?;
                commands::drill::run(&cfg, &req, args.json).await
            }
            Command::Preseed {
                pgdata,
                user,
                allow_new,
            } => {
                let opts = commands::preseed::PreseedOptions {
                    user,
                    allow_new,
                    fetch_prefix: cli_fetch_prefix,
                };
                commands::preseed::run(&cfg, &pgdata, &opts).await
            }
            Command::Doctor { pgdata } => commands::doctor::run(&cfg, pgdata.as_deref()).await,
            Command::List { what, json } => commands::list::run(&cfg, what, json).await,
            Command::Status { json } => commands::status::run(&cfg, json).await,
            Command::Key { action } => match action {
                cli::KeyAction::Add {
                    new_passphrase_file,
                } => commands::key::add(&cfg, new_passphrase_file.as_deref()).await,
                cli::KeyAction::List { json } => commands::key::list(&cfg, json).await,
                cli::KeyAction::Remove { id } => commands::key::remove(&cfg, &id).await,
            },
        }
    })
}

/// How `pgagent fetch` starts this executable as a restore-mode fetch server: the same
/// binary (`/proc/self/exe`, whatever `restore_command` called it by) with the same
/// configuration options; the environment is inherited.
fn launch(cli: &Cli) -> fetch::client::Launch {
    let exe = std::env::current_exe()
        .or_else(|_| std::env::args_os().next().map(Into::into).ok_or(()))
        .unwrap_or_else(|()| "pgagent".into());
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    // The server runs in `/`: relative paths are made absolute here.
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if let Some(c) = &cli.config {
        args.extend(["--config".into(), absolute(c).into()]);
    }
    if let Some(d) = &cli.overrides.staging_dir {
        args.extend(["--staging-dir".into(), absolute(d).into()]);
    }
    if let Some(u) = &cli.overrides.store_url {
        args.extend(["--store".into(), u.into()]);
    }
    args.extend([
        "--log-format".into(),
        clap::ValueEnum::to_possible_value(&cli.log_format)
            .map_or("text".into(), |v| v.get_name().into()),
    ]);
    fetch::client::Launch { exe, args }
}

/// The start of the `restore_command` that `pgagent restore` writes: this executable with the
/// configuration file and the store URL in use (credentials must reach PostgreSQL through
/// that file or its environment).
fn fetch_command_prefix(cli: &Cli, cfg: &config::Config) -> String {
    let exe = std::env::current_exe().unwrap_or_else(|_| "pgagent".into());
    let mut words = vec![exe.display().to_string()];
    if let Some(c) = &cli.config {
        let c = c.canonicalize().unwrap_or_else(|_| c.clone());
        words.extend(["--config".to_string(), c.display().to_string()]);
    }
    words.extend(["--store".to_string(), cfg.raw.store.url.clone()]);
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes `w` for `sh` when it holds anything but safe characters.
fn shell_quote(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@%+,".contains(c))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}
