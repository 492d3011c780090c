//! Base backup and restore: `pgagent backup` (file:// store and Garage) against
//! `pg_basebackup -Ft` (gzip, client-side zstd) and `pgbackrest backup` (zstd level 3), each
//! restored into an empty directory; then the share of a second `pgagent backup` that is
//! new after 1 % of `pgbench_accounts` changed.
//!
//! ```text
//! cargo build --release -p pgagent
//! cargo run --release -p pgagent-benches --bin backup
//! ```
//!
//! Environment: `BENCH_DB_GIB` (database size, default 2), `BENCH_CASES` (`abcde`),
//! `PGAGENT_BIN` (default `target/release/pgagent`), and the harness's
//! `PGAGENT_TEST_PG_BIN`, `PGAGENT_TEST_GARAGE`, `PGAGENT_TEST_KEEP=1`.
//! Prints progress on stderr and the results as markdown on stdout.

use std::path::Path;
use std::time::{Duration, Instant};

use pgagent_benches::backupbench::dedup::update_range;
use pgagent_benches::backupbench::peers::{pg_basebackup, untar, BackRest, TarCompression};
use pgagent_benches::backupbench::pgagent::{BackupInfo, Client, Store};
use pgagent_benches::backupbench::report::{percent, table, Row};
use pgagent_benches::backupbench::{load_pgbench, pgbench_scale, Case, Settings};
use pgagent_benches::replay::agent::Streamer;
use pgagent_benches::replay::pgbackrest::{dir_bytes, locate_or_install};
use pgagent_benches::replay::prepare::server_conf;
use pgagent_benches::replay::sys::{self, shared_tempdir};
use pgagent_tests::{Garage, OsUser, PgOptions, PgServer};

/// Share of `pgbench_accounts` the deduplication step updates, percent.
const CHANGED_PCT: f64 = 1.0;

/// Everything a case needs.
struct Bench<'a> {
    settings: &'a Settings,
    pg: &'a PgServer,
    user: Option<&'a OsUser>,
    work: &'a Path,
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    sys::scrub_pgagent_env();
    let user = sys::pg_user()?;
    let work = shared_tempdir("pgagent-bench-backup-")?;
    let pg = PgServer::start(PgOptions {
        extra_conf: server_conf(),
        ..PgOptions::default()
    })?;
    let scale = pgbench_scale(settings.db_bytes);
    let db_bytes = load_pgbench(&pg, scale)?;
    let b = Bench {
        settings: &settings,
        pg: &pg,
        user: user.as_ref(),
        work: work.path(),
    };

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let file_store = Store::file(&work.path().join("store"));
    let mut file_daemon = None;
    let mut first = None;
    if settings.cases.contains(&Case::PgagentFile) {
        let daemon = Streamer::start(
            &settings.pgagent_bin,
            &pg,
            &file_store.url,
            &file_store.env,
            &b.work.join("run"),
        )?;
        let (row, info) = b.pgagent_case(Case::PgagentFile, &file_store, "file")?;
        rows.push(row);
        first = Some(info);
        file_daemon = Some(daemon);
    }
    for (case, compression) in [
        (Case::TarGzip, TarCompression::Gzip),
        (Case::TarZstd, TarCompression::Zstd),
    ] {
        if settings.cases.contains(&case) {
            rows.push(b.tar_case(case, compression)?);
        }
    }
    let backrest = if settings.cases.contains(&Case::PgBackRest) {
        match locate_or_install() {
            Ok(bin) => {
                let br = BackRest::create(bin, &b.work.join("pgbackrest"), &pg, b.user)?;
                rows.push(b.backrest_case(&br)?);
                Some(br)
            }
            Err(why) => {
                notes.push(format!("pgBackRest skipped: {why}"));
                None
            }
        }
    } else {
        None
    };

    let mut dedup = None;
    if let (Some(first), Some(_)) = (&first, &file_daemon) {
        eprintln!("dedup: updating {CHANGED_PCT} % of pgbench_accounts");
        let changed = update_range(&pg, scale, CHANGED_PCT)?;
        let client = b.client(&file_store, "file");
        let on_disk = file_store.backup_bytes().unwrap_or(0);
        let began = Instant::now();
        let second = client.backup()?;
        let took = began.elapsed();
        let grew = file_store.backup_bytes().unwrap_or(0) - on_disk;
        eprintln!(
            "  second backup {} in {:.1} s: stored_bytes {}, store grew {grew} bytes",
            second.id,
            took.as_secs_f64(),
            second.stored_bytes
        );
        let diff = match &backrest {
            Some(br) => {
                eprintln!("  pgbackrest backup --type=diff");
                let began = Instant::now();
                let bytes = br.backup("diff")?;
                Some((bytes, began.elapsed()))
            }
            None => None,
        };
        dedup = Some((changed, first.clone(), second, took, grew, diff));
    }
    if let Some(daemon) = file_daemon {
        daemon.stop()?;
    }
    if settings.cases.contains(&Case::PgagentS3) {
        match Garage::start() {
            Ok(garage) => {
                let store = Store {
                    url: garage.store_url("backup"),
                    env: garage.s3_env(),
                    root: None,
                };
                let daemon = Streamer::start(
                    &settings.pgagent_bin,
                    &pg,
                    &store.url,
                    &store.env,
                    &b.work.join("run-s3"),
                )?;
                let (row, _) = b.pgagent_case(Case::PgagentS3, &store, "s3")?;
                rows.push(row);
                daemon.stop()?;
            }
            Err(e) => notes.push(format!("Garage case skipped: {e:#}")),
        }
    }

    println!(
        "## Base backup and restore of a {} MiB cluster\n",
        db_bytes >> 20
    );
    println!(
        "Machine: {}; pgbench scale {scale}; PostgreSQL {}.\n",
        pgagent_benches::machine(),
        pg.psql("SHOW server_version")?
    );
    println!("{}", table(&rows, db_bytes));
    if let Some((changed, first, second, took, grew, diff)) = dedup {
        println!(
            "After `UPDATE` of {changed} `pgbench_accounts` rows ({CHANGED_PCT} %, one `aid` range) \
             and `CHECKPOINT`:\n"
        );
        println!("| backup | wall (s) | new bytes stored (MiB) | % of the first full |\n| --- | ---: | ---: | ---: |");
        println!(
            "| second `pgagent backup` (stored_bytes; store grew {:.1} MiB) | {:.1} | {:.1} | {:.1} % |",
            grew as f64 / 1048576.0,
            took.as_secs_f64(),
            second.stored_bytes as f64 / 1048576.0,
            percent(second.stored_bytes, first.stored_bytes)
        );
        if let Some((bytes, t)) = diff {
            let full = rows
                .iter()
                .find(|r| r.label == Case::PgBackRest.label())
                .map_or(0, |r| r.stored);
            println!(
                "| `pgbackrest backup --type=diff` (repository grew) | {:.1} | {:.1} | {:.1} % |",
                t.as_secs_f64(),
                bytes as f64 / 1048576.0,
                percent(bytes, full)
            );
        }
        println!(
            "\nFirst pgagent backup: {} bytes of files, {} stored; second: {} bytes of files.\n",
            first.size_bytes, first.stored_bytes, second.size_bytes
        );
    }
    for n in notes {
        println!("{n}\n");
    }
    if pgagent_tests::util::keep_temp_dirs() {
        eprintln!("keeping {}", work.keep().display());
    }
    Ok(())
}

impl Bench<'_> {
    fn client<'a>(&'a self, store: &'a Store, name: &str) -> Client<'a> {
        Client {
            bin: &self.settings.pgagent_bin,
            pg: self.pg,
            store,
            staging: self.work.join(format!("oneshot-{name}")),
        }
    }

    /// `pgagent backup --fast`, then `pgagent restore` of it into an empty directory.
    fn pgagent_case(
        &self,
        case: Case,
        store: &Store,
        name: &str,
    ) -> anyhow::Result<(Row, BackupInfo)> {
        eprintln!("{}", case.label());
        let client = self.client(store, name);
        let began = Instant::now();
        let info = client.backup()?;
        let backup = began.elapsed();
        let (stored, stored_by) = match store.backup_bytes() {
            Some(bytes) => (bytes, "on disk"),
            None => (info.stored_bytes, "list backups"),
        };
        eprintln!(
            "  {} in {:.1} s: size_bytes {}, stored_bytes {}, {stored} bytes {stored_by}",
            info.id,
            backup.as_secs_f64(),
            info.size_bytes,
            info.stored_bytes
        );
        let pgdata = self.work.join(format!("restore-{name}"));
        let began = Instant::now();
        client.restore(&info.id, &pgdata)?;
        let restore = began.elapsed();
        let restored = dir_bytes(&pgdata);
        eprintln!(
            "  restored {restored} bytes in {:.1} s",
            restore.as_secs_f64()
        );
        std::fs::remove_dir_all(&pgdata)?;
        Ok((
            Row {
                label: case.label().to_owned(),
                backup,
                stored,
                stored_by,
                restore: Some(restore),
                restored,
            },
            info,
        ))
    }

    /// `pg_basebackup -Ft`, then `tar -x` into an empty directory.
    fn tar_case(&self, case: Case, compression: TarCompression) -> anyhow::Result<Row> {
        eprintln!("{}", case.label());
        let dest = self.work.join(format!("tar-{}", case.letter()));
        let began = Instant::now();
        let stored = pg_basebackup(self.pg, &dest, compression, self.user)?;
        let backup = began.elapsed();
        let pgdata = self.work.join(format!("restore-{}", case.letter()));
        let (restore, restored) =
            timed_restore(&pgdata, || untar(&dest, compression, &pgdata, self.user))?;
        eprintln!(
            "  {stored} bytes in {:.1} s; restored {restored} bytes in {:.1} s",
            backup.as_secs_f64(),
            restore.as_secs_f64()
        );
        std::fs::remove_dir_all(&dest)?;
        Ok(Row {
            label: case.label().to_owned(),
            backup,
            stored,
            stored_by: "on disk",
            restore: Some(restore),
            restored,
        })
    }

    /// `pgbackrest backup --type=full`, then `pgbackrest restore` into an empty directory.
    fn backrest_case(&self, br: &BackRest) -> anyhow::Result<Row> {
        eprintln!("{}", Case::PgBackRest.label());
        let began = Instant::now();
        let stored = br.backup("full")?;
        let backup = began.elapsed();
        let pgdata = self.work.join("restore-e");
        let (restore, restored) = timed_restore(&pgdata, || br.restore(&pgdata))?;
        eprintln!(
            "  {stored} bytes in {:.1} s; restored {restored} bytes in {:.1} s",
            backup.as_secs_f64(),
            restore.as_secs_f64()
        );
        Ok(Row {
            label: Case::PgBackRest.label().to_owned(),
            backup,
            stored,
            stored_by: "on disk",
            restore: Some(restore),
            restored,
        })
    }
}

/// Runs `restore` into `pgdata`, timed; returns the time and the restored bytes, and
/// removes the directory.
fn timed_restore(
    pgdata: &Path,
    restore: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(Duration, u64)> {
    let began = Instant::now();
    restore()?;
    let took = began.elapsed();
    let bytes = dir_bytes(pgdata);
    std::fs::remove_dir_all(pgdata)?;
    Ok((took, bytes))
}
