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
//!      │   zfs/ (snapshots, mount layout)   cnpg/ (CloudNativePG plugin: gRPC services; its
//!      │   command hands it the daemon's streaming to start and stop)
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
pub mod cnpg;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod drill;
pub mod exit;
pub mod fetch;
pub mod logging;
pub mod metrics;
pub mod pg_manifest;
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

/// The validated configuration for the command: a command that reads
/// ([`config::READING_COMMANDS`]) keeps the stores `--store NAME…` names, every configured
/// store without one, and reads them as one; `run`, `backup`, `snapshot` and `prune` write
/// to (or prune) every store; any other command uses one store, so a configuration of
/// several is refused here ([`Config::one_store_for`]) unless `--store NAME` chose one,
/// rather than one of the stores being used silently.
fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    cli.overrides.check_store()?;
    let raw = RawConfig::load(cli.config.as_deref(), &cli.overrides.clone().into())?;
    let mut cfg = raw.validate()?;
    let names = cli.overrides.store_names();
    let command = cli.command.name();
    if config::READING_COMMANDS.contains(&command) {
        cfg.select_for_reading(&names)?;
        return Ok(cfg);
    }
    if let Some(t) = cfg.as_of() {
        return Err(config::ConfigError(format!(
            "store.as_of = {} (--as-of, PGAGENT_STORE_AS_OF) reads the stores as they were              then and writes nothing; `pgagent {command}` writes: unset it ({})",
            humantime::format_rfc3339_seconds(t),
            config::READING_COMMANDS.join(", ")
        ))
        .into());
    }
    match names.as_slice() {
        [] => {}
        [name] => cfg.select_one(name, command)?,
        several => {
            return Err(config::ConfigError(format!(
                "--store {}: `pgagent {command}` takes one --store NAME; several are read \
                 together by {}",
                several.join(" --store "),
                config::READING_COMMANDS.join(", ")
            ))
            .into())
        }
    }
    cfg.one_store_for(command)?;
    Ok(cfg)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Fetch { file, path } = &cli.command {
        return fetch::run(load_config(&cli), file, path, &launch(&cli))
            .map_err(|e| exit::Coded::from(e).into());
    }
    // The operator side and the health check read no pgagent configuration.
    match &cli.command {
        Command::Cnpg {
            action:
                cli::CnpgAction::Operator {
                    listen,
                    server_cert,
                    server_key,
                    client_ca,
                    sidecar_image,
                },
        } => {
            return commands::cnpg::operator(cnpg::operator::OperatorSettings {
                listen: listen.clone(),
                tls: cnpg::tls::TlsFiles {
                    cert: server_cert.clone(),
                    key: server_key.clone(),
                    client_ca: client_ca.clone(),
                },
                sidecar_image: sidecar_image.clone(),
            })
        }
        Command::Cnpg {
            action: cli::CnpgAction::Healthcheck { plugins_dir },
        } => return commands::cnpg::healthcheck(plugins_dir),
        _ => {}
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
            Command::Store { action } => match action {
                cli::StoreAction::Add { name } => commands::store::add(&cfg, &name).await,
            },
            Command::Cnpg { action } => {
                let (role, args) = match action {
                    cli::CnpgAction::Instance(args) => (cnpg::identity::Role::Instance, args),
                    cli::CnpgAction::Restore(args) => (cnpg::identity::Role::Restore, args),
                    cli::CnpgAction::Operator { .. } | cli::CnpgAction::Healthcheck { .. } => {
                        unreachable!("handled before the configuration is read")
                    }
                };
                let place = cnpg::instance::SidecarPlace {
                    pod_name: args.pod_name,
                    pgdata: args.pgdata,
                    plugins_dir: args.plugins_dir,
                };
                commands::cnpg::sidecar(cfg, role, place).await
            }
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
    for v in &cli.overrides.store {
        args.extend(["--store".into(), v.into()]);
    }
    if let Some(t) = &cli.overrides.as_of {
        args.extend(["--as-of".into(), t.into()]);
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
/// that file or its environment). Stores of `[[stores]]` are named by the file (passed
/// even when it was found at a default path) and, when `--store NAME…` chose some, by
/// those names: recovery reads the stores the restore read, and with `--as-of` (or
/// `store.as_of`) as of the same time.
fn fetch_command_prefix(cli: &Cli, cfg: &config::Config) -> String {
    let exe = std::env::current_exe().unwrap_or_else(|_| "pgagent".into());
    let mut words = vec![exe.display().to_string()];
    let shorthand = cfg.raw.stores.is_empty();
    let file = cli
        .config
        .as_ref()
        .or(cfg.raw.file.as_ref().filter(|_| !shorthand));
    if let Some(c) = file {
        let c = c.canonicalize().unwrap_or_else(|_| c.clone());
        words.extend(["--config".to_string(), c.display().to_string()]);
    }
    if shorthand {
        words.extend(["--store".to_string(), cfg.store().url.clone()]);
    } else {
        // The stores `--store NAME…` chose: recovery reads the ones this restore read.
        for name in cli.overrides.store_names() {
            words.extend(["--store".to_string(), name.to_string()]);
        }
    }
    // Recovery reads the versions the restore read.
    if let Some(t) = cfg.as_of() {
        words.extend([
            "--as-of".to_string(),
            humantime::format_rfc3339_seconds(t).to_string(),
        ]);
    }
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

/// The dispatch: a configuration of several stores refused for every command that uses one
/// store, and the `restore_command` written for one store.
#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TWO_STORES: &str = "[[stores]]\nname = \"nas\"\nurl = \"file:///mnt/nas/pgagent\"\n\n\
                              [[stores]]\nname = \"r2\"\nurl = \"file:///mnt/far/pgagent\"\nrole = \"async\"\n";

    fn cli(config: &Path, command: &[&str]) -> Cli {
        let mut args = vec!["pgagent", "--config", config.to_str().unwrap()];
        args.extend(command);
        Cli::try_parse_from(args).unwrap()
    }

    /// A command that does not read several stores as one refuses a configuration of
    /// several, naming itself; a reading command keeps them all, in restore order.
    #[test]
    fn commands_that_use_one_store_refuse_several_naming_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgagent.toml");
        std::fs::write(&file, TWO_STORES).unwrap();
        let pgdata = dir.path().join("pgdata");
        let pgdata = pgdata.to_str().unwrap();
        let commands: &[(&str, &[&str])] = &[
            ("preseed", &["preseed", "--pgdata", pgdata]),
            ("key list", &["key", "list"]),
        ];
        for (name, args) in commands {
            let err = run(cli(&file, args)).unwrap_err();
            let msg = format!("{err:#}");
            assert_eq!(exit::code_for(&err), exit::USAGE, "{name}: {msg}");
            assert!(
                msg.contains("several stores are configured (nas, r2)")
                    && msg.contains(&format!("`pgagent {name}` does not yet use more than one")),
                "{name}: {msg}"
            );
        }
        // `run`, `backup`, `snapshot` and `prune` work with every store.
        for command in ["run", "backup", "snapshot", "prune"] {
            let cfg = load_config(&cli(&file, &[command])).unwrap();
            assert_eq!(cfg.stores.len(), 2, "{command}");
        }
        let readers: &[&[&str]] = &[
            &["fetch-server"],
            &["fetch", "000000010000000000000001", "x"],
            &["restore", "--pgdata", pgdata],
            &["drill"],
            &["doctor"],
            &["verify"],
            &["list"],
            &["status"],
        ];
        for args in readers {
            let cfg = load_config(&cli(&file, args)).unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
            let names: Vec<&str> = cfg.stores.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["nas", "r2"], "{args:?}");
            assert!(cfg.left_out.is_empty());
        }
        // Several names for a command that uses one store: refused.
        let err =
            load_config(&cli(&file, &["prune", "--store", "nas", "--store", "r2"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("takes one --store NAME"),
            "{err:#}"
        );
    }

    /// `--as-of` reaches the recovery `restore_command` and the fetch server a fetch starts,
    /// and the fetch server of the bucket as it is answers no request for the past; a
    /// writing command refuses it.
    #[test]
    fn as_of_is_carried_into_recovery_and_refused_by_writers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgagent.toml");
        std::fs::write(&file, "[store]\nurl = \"s3://b/db1\"\n").unwrap();
        let at = "2026-12-06T09:00:00Z";
        let c = cli(&file, &["restore", "--pgdata", "/x", "--as-of", at]);
        let cfg = load_config(&c).unwrap();
        let prefix = fetch_command_prefix(&c, &cfg);
        assert!(
            prefix.ends_with(&format!("--store s3://b/db1 --as-of {at}")),
            "{prefix}"
        );
        let fetch = cli(&file, &["--as-of", at, "fetch", "a", "b"]);
        let args: Vec<String> = launch(&fetch)
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.windows(2).any(|w| w == ["--as-of", at]), "{args:?}");
        let now = load_config(&cli(&file, &["list"])).unwrap();
        assert_ne!(
            fetch::paths::store_identity(&cfg),
            fetch::paths::store_identity(&now),
            "a server of the store as it is must not answer for the past"
        );
        for writer in [&["backup"][..], &["prune"], &["run"], &["snapshot"]] {
            let mut args = writer.to_vec();
            args.extend(["--as-of", at]);
            let err = load_config(&cli(&file, &args)).unwrap_err();
            assert_eq!(exit::code_for(&err), exit::USAGE, "{writer:?}");
            assert!(format!("{err:#}").contains("writes nothing"), "{err:#}");
        }
    }

    #[test]
    fn restore_command_names_a_store_of_stores_by_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgagent.toml");

        // The shorthand: `--store URL`, as before.
        std::fs::write(&file, "[store]\nurl = \"file:///srv/store\"\n").unwrap();
        let canonical = file.canonicalize().unwrap().display().to_string();
        let c = cli(&file, &["restore", "--pgdata", "/x"]);
        let cfg = load_config(&c).unwrap();
        let prefix = fetch_command_prefix(&c, &cfg);
        assert!(
            prefix.ends_with(&format!("--config {canonical} --store file:///srv/store")),
            "{prefix}"
        );

        // One `[[stores]]` entry: the file alone (`--store` would conflict with it), even when
        // it was not named by --config.
        std::fs::write(
            &file,
            "[[stores]]\nname = \"nas\"\nurl = \"file:///srv/nas\"\n",
        )
        .unwrap();
        let cfg = load_config(&c).unwrap();
        assert_eq!(cfg.store().name, "nas");
        let prefix = fetch_command_prefix(&c, &cfg);
        assert!(
            prefix.ends_with(&format!("--config {canonical}")),
            "{prefix}"
        );
        let without = Cli::try_parse_from(["pgagent", "restore", "--pgdata", "/x"]).unwrap();
        let prefix = fetch_command_prefix(&without, &cfg);
        assert!(
            prefix.ends_with(&format!("--config {canonical}")),
            "{prefix}"
        );
        assert!(!prefix.contains("--store"), "{prefix}");
    }

    /// `--store NAME` chooses stores of several for a command that reads (the others are
    /// left out, for its report), and the `restore_command` a restore writes reads those
    /// stores too; a command that writes refuses to leave the others out; an unknown name
    /// lists the known ones.
    #[test]
    fn store_name_chooses_the_store_of_a_reading_command() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgagent.toml");
        std::fs::write(&file, TWO_STORES).unwrap();
        let canonical = file.canonicalize().unwrap().display().to_string();
        for command in [
            &["restore", "--pgdata", "/x", "--store", "r2"][..],
            &["drill", "--store", "r2"],
            &["list", "backups", "--store", "r2"],
            &["verify", "--store", "r2"],
            &["fetch-server", "--store", "r2"],
            &["key", "list", "--store", "r2"],
        ] {
            let c = cli(&file, command);
            let cfg = load_config(&c).unwrap_or_else(|e| panic!("{command:?}: {e:#}"));
            assert_eq!(cfg.store().name, "r2", "{command:?}");
            assert_eq!(cfg.store().url, "file:///mnt/far/pgagent", "{command:?}");
            assert_eq!(cfg.left_out.len(), 1, "{command:?}");
            assert_eq!(cfg.left_out[0].name, "nas", "{command:?}");
        }
        let c = cli(&file, &["restore", "--pgdata", "/x", "--store", "r2"]);
        let prefix = fetch_command_prefix(&c, &load_config(&c).unwrap());
        assert!(
            prefix.ends_with(&format!("--config {canonical} --store r2")),
            "{prefix}"
        );
        // Both named, in the order given; read in restore order.
        let c = cli(
            &file,
            &[
                "restore", "--pgdata", "/x", "--store", "r2", "--store", "nas",
            ],
        );
        let cfg = load_config(&c).unwrap();
        let names: Vec<&str> = cfg.stores.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["nas", "r2"]);
        let prefix = fetch_command_prefix(&c, &cfg);
        assert!(
            prefix.ends_with(&format!("--config {canonical} --store r2 --store nas")),
            "{prefix}"
        );
        for writer in ["run", "backup", "snapshot"] {
            let err = load_config(&cli(&file, &[writer, "--store", "nas"])).unwrap_err();
            let msg = format!("{err:#}");
            assert_eq!(exit::code_for(&err), exit::USAGE, "{writer}: {msg}");
            assert!(
                msg.contains("writes to every configured store (nas, r2)"),
                "{msg}"
            );
        }
        let err = load_config(&cli(&file, &["list", "--store", "b2"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("no store is named \"b2\"; the stores are: nas, r2"),
            "{err:#}"
        );
        // One store configured: a writer may name it.
        std::fs::write(
            &file,
            "[[stores]]\nname = \"nas\"\nurl = \"file:///srv/nas\"\n",
        )
        .unwrap();
        let cfg = load_config(&cli(&file, &["backup", "--store", "nas"])).unwrap();
        assert_eq!(cfg.store().name, "nas");
    }
}
