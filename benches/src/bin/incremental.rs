//! Incremental base backups (PostgreSQL 17+): for each major, a full `pgagent backup`, then
//! one after 1 % of `pgbench_accounts` changed as one range and one after 1 % changed
//! scattered, each incremental (`backup.incremental = auto`) and full with chunk
//! deduplication only (`off`); then a chain to depth 6 and the restore of its last backup
//! against the restore of a full backup of the same cluster; pgBackRest beside it where it
//! runs. The scenario is described in `pgagent_benches::incbench`.
//!
//! ```text
//! cargo build --release -p pgagent --bins
//! cargo run --release -p pgagent-benches --bin incremental-backup
//! ```
//!
//! Environment: `BENCH_DB_GIB` (database size, default 1.5: pgbench scale 102),
//! `BENCH_PG_MAJORS` (default `17,18`), `PGAGENT_BIN` (default `target/release/pgagent`),
//! and the harness's `PGAGENT_TEST_KEEP=1`.
//! Prints progress on stderr and the results as markdown on stdout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use pgagent_benches::backupbench::peers::BackRest;
use pgagent_benches::backupbench::pgagent::{Client, Store};
use pgagent_benches::backupbench::{load_pgbench, pgbench_scale};
use pgagent_benches::incbench::report::{
    backrest_table, chain_table, restore_table, steps_table, BackRestRow, Restore, Step,
};
use pgagent_benches::incbench::{
    first_error_line, incremental_files, restores_chains, Change, Measured, Settings, CHAIN_DEPTH,
    CHANGED_PCT,
};
use pgagent_benches::replay::agent::Streamer;
use pgagent_benches::replay::pgbackrest::{dir_bytes, locate_or_install};
use pgagent_benches::replay::prepare::server_conf;
use pgagent_benches::replay::sys::{self, shared_tempdir};
use pgagent_storage::manifest::BackupKind;
use pgagent_tests::{OsUser, PgOptions, PgServer};

/// Everything the run prints at the end.
#[derive(Default)]
struct Results {
    clusters: Vec<String>,
    steps: Vec<Step>,
    chains: Vec<String>,
    restores: Vec<Restore>,
    backrest: Vec<BackRestRow>,
    notes: Vec<String>,
}

/// One major's run: its server, store and clients.
struct Run<'a> {
    settings: &'a Settings,
    pg: &'a PgServer,
    server: String,
    work: &'a Path,
    store: Store,
    off: Store,
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    sys::scrub_pgagent_env();
    let user = sys::pg_user()?;
    let scale = pgbench_scale(settings.db_bytes);
    let backrest = locate_or_install();
    let mut results = Results::default();
    for &major in &settings.majors {
        run_major(
            &settings,
            major,
            scale,
            user.as_ref(),
            &backrest,
            &mut results,
        )
        .with_context(|| format!("PostgreSQL {major}"))?;
    }

    println!("## Incremental base backups (PostgreSQL {})\n", {
        let m: Vec<String> = settings.majors.iter().map(u32::to_string).collect();
        m.join(", ")
    });
    println!(
        "Machine: {}; pgbench scale {scale}; {}.\n",
        pgagent_benches::machine(),
        results.clusters.join("; ")
    );
    println!("{}", steps_table(&results.steps));
    println!(
        "The chain to depth {CHAIN_DEPTH} ({} % of rows, a new range, before each backup):\n",
        pgagent_benches::incbench::CHAIN_STEP_PCT
    );
    for c in &results.chains {
        println!("{c}");
    }
    if !results.restores.is_empty() {
        println!("{}", restore_table(&results.restores));
    }
    if !results.backrest.is_empty() {
        println!("{}", backrest_table(&results.backrest));
    }
    for n in &results.notes {
        println!("{n}\n");
    }
    Ok(())
}

fn run_major(
    settings: &Settings,
    major: u32,
    scale: u32,
    user: Option<&OsUser>,
    backrest: &Result<PathBuf, String>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let work = shared_tempdir(&format!("pgagent-bench-incremental-{major}-"))?;
    let mut conf = server_conf();
    conf.push("summarize_wal = on".to_owned());
    let pg = PgServer::start(PgOptions {
        major: Some(major),
        extra_conf: conf,
        ..PgOptions::default()
    })?;
    let server = pg.psql("SHOW server_version")?;
    let server = server.split_whitespace().next().unwrap_or("?").to_owned();
    eprint!("PostgreSQL {server}: ");
    let db_bytes = load_pgbench(&pg, scale)?;
    results
        .clusters
        .push(format!("PostgreSQL {server}: {} MiB", db_bytes >> 20));

    let store = Store::file(&work.path().join("store"));
    let mut off = store.clone();
    off.env
        .push(("PGAGENT_BACKUP_INCREMENTAL", "off".to_owned()));
    let streamer = Streamer::start(
        &settings.pgagent_bin,
        &pg,
        &store.url,
        &store.env,
        &work.path().join("run"),
    )?;
    let run = Run {
        settings,
        pg: &pg,
        server: server.clone(),
        work: work.path(),
        store,
        off,
    };
    let br = match backrest {
        Ok(bin) => {
            match BackRest::create(bin.clone(), &work.path().join("pgbackrest"), &pg, user) {
                Ok(br) => Some(br),
                Err(e) => {
                    let version = sys_output(bin, &["version"]);
                    results.notes.push(format!(
                        "pgBackRest skipped on PostgreSQL {server}: {} cannot back it up \
                     (`stanza-create`: {}).",
                        version.trim(),
                        first_error_line(&format!("{e:#}"))
                    ));
                    None
                }
            }
        }
        Err(why) => {
            results.notes.push(format!("pgBackRest skipped: {why}"));
            None
        }
    };

    eprintln!("full backup");
    let full = run.take(false)?;
    if full.kind != BackupKind::Full {
        anyhow::bail!("the first backup {} is not full", full.id);
    }
    let full_server = full.server_bytes;
    let mut br_rows = Vec::new();
    let mut backrest_row = |after: &str, kind: &'static str| -> anyhow::Result<()> {
        if let Some(br) = &br {
            eprintln!("  pgbackrest backup --type={kind}");
            let began = Instant::now();
            let grew = br.backup(kind)?;
            br_rows.push(BackRestRow {
                server: server.clone(),
                after: after.to_owned(),
                kind,
                wall: began.elapsed(),
                grew,
            });
        }
        Ok(())
    };
    let init = format!("`pgbench -i -s {scale}`");
    backrest_row(&init, "full")?;
    let mut steps = vec![Step {
        server: server.clone(),
        after: init,
        auto: full,
        off: None,
        full_server_bytes: full_server,
    }];
    for change in [
        Change::range(scale, CHANGED_PCT),
        Change::scattered(CHANGED_PCT),
    ] {
        eprintln!("{}", change.label);
        let rows = change.apply(&pg)?;
        let auto = run.take(false)?;
        if auto.kind != BackupKind::Incremental {
            results.notes.push(format!(
                "PostgreSQL {server}, after {}: full, not incremental {}",
                change.label,
                auto.fallback.as_deref().unwrap_or("(no reason printed)")
            ));
        }
        let off = run.take(true)?;
        let after = format!("{} ({rows} rows)", change.label);
        backrest_row(&after, "incr")?;
        steps.push(Step {
            server: server.clone(),
            after,
            auto,
            off: Some(off),
            full_server_bytes: full_server,
        });
    }
    results.steps.extend(steps);
    results.backrest.extend(br_rows);

    let mut chain = Vec::new();
    for step in 1..=CHAIN_DEPTH {
        let change = Change::chain_step(scale, step);
        eprintln!("{}", change.label);
        change.apply(&pg)?;
        chain.push(run.take(false)?);
    }
    eprintln!("full backup after the chain (incremental off)");
    let full_after = run.take(true)?;
    results
        .chains
        .push(chain_table(&server, &chain, full_server));
    let last = chain.last().context("empty chain")?;
    if last.depth != CHAIN_DEPTH || last.kind != BackupKind::Incremental {
        results.notes.push(format!(
            "PostgreSQL {server}: the chain ends at {} {}, not at depth {CHAIN_DEPTH}; \
             no restore timed.",
            last.id,
            last.kind_label()
        ));
    } else {
        run.restores(last, &full_after, results)?;
    }
    streamer.stop()?;
    if pgagent_tests::util::keep_temp_dirs() {
        eprintln!("keeping {}", work.keep().display());
    }
    Ok(())
}

impl Run<'_> {
    fn client(&self, off: bool) -> Client<'_> {
        Client {
            bin: &self.settings.pgagent_bin,
            pg: self.pg,
            store: if off { &self.off } else { &self.store },
            staging: self.work.join("oneshot"),
        }
    }

    /// `pgagent backup --fast` (with `backup.incremental = off` when `off`), timed, and its
    /// figures from its manifest.
    fn take(&self, off: bool) -> anyhow::Result<Measured> {
        let began = Instant::now();
        let (info, printed) = self.client(off).backup_printed()?;
        let root = self.store.root.as_deref().context("not a file:// store")?;
        let m = Measured::read(root, &info.id, began.elapsed(), &printed)?;
        eprintln!(
            "  {}{} {}: {:.1} s, server {} bytes, files {} bytes, stored {} bytes",
            m.id,
            if off { " (incremental off)" } else { "" },
            m.kind_label(),
            m.wall.as_secs_f64(),
            m.server_bytes,
            m.raw_bytes,
            m.stored_bytes
        );
        Ok(m)
    }

    /// `pgagent restore` of the chain's last backup, then of the full backup taken after
    /// it, each into an empty directory; skipped, with a note, when this `pgagent` cannot
    /// rebuild a chain.
    fn restores(
        &self,
        last: &Measured,
        full: &Measured,
        results: &mut Results,
    ) -> anyhow::Result<()> {
        let client = self.client(false);
        if !restores_chains(&client.restore_help()?) {
            results.notes.push(format!(
                "Restore at depth {CHAIN_DEPTH} not measured on PostgreSQL {}: this pgagent \
                 restores one backup as stored and cannot rebuild an incremental chain yet \
                 (`pgagent restore --help` has no `--raw`).",
                self.server
            ));
            return Ok(());
        }
        for (m, what) in [
            (
                last,
                format!(
                    "incremental at depth {CHAIN_DEPTH} ({} backups)",
                    CHAIN_DEPTH + 1
                ),
            ),
            (full, "full backup of the same cluster".to_owned()),
        ] {
            let pgdata = self.work.join(format!("restore-{}", m.id));
            eprintln!("restore {}: {what}", m.id);
            let began = Instant::now();
            client.restore(&m.id, &pgdata)?;
            let wall = began.elapsed();
            let restored = dir_bytes(&pgdata);
            let left = incremental_files(&pgdata);
            if left > 0 {
                anyhow::bail!(
                    "the restore of {} left {left} INCREMENTAL files in {}",
                    m.id,
                    pgdata.display()
                );
            }
            eprintln!("  {restored} bytes in {:.1} s", wall.as_secs_f64());
            std::fs::remove_dir_all(&pgdata)?;
            results.restores.push(Restore {
                server: self.server.clone(),
                what,
                wall,
                restored,
            });
        }
        Ok(())
    }
}

/// `bin args…`'s standard output, or an empty string.
fn sys_output(bin: &Path, args: &[&str]) -> String {
    std::process::Command::new(bin)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
