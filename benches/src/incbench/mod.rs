//! Incremental base backups on PostgreSQL 17 and 18: what `pgagent backup` reads from the
//! server and stores when `BASE_BACKUP ( INCREMENTAL )` sends only the blocks changed since
//! the parent, against full backups deduplicated by chunk (`backup.incremental = off`), and
//! what restoring a six-deep chain costs against restoring one full backup.
//!
//! For each major, one primary with `summarize_wal = on`, filled by `pgbench -i`, a
//! `file://` store and a `pgagent run` streaming into it (a backup is complete only once
//! its WAL is in the store). The figures of every backup come from its manifest in the
//! store (`kind`, `depth`, `stats.server_bytes`, `stats.new_stored_bytes`).
//!
//! | step | change before it | backups |
//! | --- | --- | --- |
//! | full | `pgbench -i`, `CHECKPOINT` | the first backup (full: no parent) |
//! | range | 1 % of `pgbench_accounts`, one `aid` range | incremental, then full with incremental off |
//! | scattered | 1 % of the rows, every 100th `aid` | incremental, then full with incremental off |
//! | chain | six 0.1 % ranges, one before each backup | six incremental backups (depth 1 to 6), then one full |
//!
//! Each incremental backup's parent is the full one taken just before its change, so it
//! reads the blocks that change touched and nothing else. The chain's last backup and the
//! full one after it are then restored into empty directories.

pub mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use pgagent_storage::manifest::{BackupKind, BackupManifest};
use pgagent_tests::PgServer;

use crate::backupbench::dedup::ACCOUNTS_PER_SCALE;

/// The share of `pgbench_accounts` the range and scattered changes update, percent.
pub const CHANGED_PCT: f64 = 1.0;

/// The share each step of the chain updates, percent.
pub const CHAIN_STEP_PCT: f64 = 0.1;

/// Depth of the chain whose restore is timed.
pub const CHAIN_DEPTH: u32 = 6;

/// Benchmark settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Target database size, bytes (`BENCH_DB_GIB`, GiB, default 1.5: pgbench scale 102).
    pub db_bytes: u64,
    /// PostgreSQL majors to run (`BENCH_PG_MAJORS`, default `17,18`).
    pub majors: Vec<u32>,
    /// `pgagent` binary (`PGAGENT_BIN`, default `target/release/pgagent`).
    pub pgagent_bin: PathBuf,
}

impl Settings {
    /// Reads the settings from the environment.
    ///
    /// Errors on a malformed value or a missing `pgagent` binary.
    pub fn from_env() -> anyhow::Result<Settings> {
        let gib = crate::env_var("BENCH_DB_GIB").unwrap_or_else(|| "1.5".to_owned());
        let majors = crate::env_var("BENCH_PG_MAJORS").unwrap_or_else(|| "17,18".to_owned());
        let bin = crate::pgagent_bin()?;
        Ok(Settings {
            db_bytes: crate::catchup::parse_gib(&gib).context("BENCH_DB_GIB")?,
            majors: parse_majors(&majors).context("BENCH_PG_MAJORS")?,
            pgagent_bin: bin
                .canonicalize()
                .with_context(|| format!("resolve {}", bin.display()))?,
        })
    }
}

/// `"17,18"` to `[17, 18]`: majors 17 and later (incremental backups need 17), each once,
/// in the order given.
pub fn parse_majors(text: &str) -> anyhow::Result<Vec<u32>> {
    let mut majors = Vec::new();
    for part in text.split([',', ' ']).filter(|p| !p.is_empty()) {
        let major: u32 = part
            .parse()
            .with_context(|| format!("{part:?} is not a PostgreSQL major"))?;
        if major < 17 {
            anyhow::bail!("PostgreSQL {major} has no incremental backups: use 17 or later");
        }
        if !majors.contains(&major) {
            majors.push(major);
        }
    }
    if majors.is_empty() {
        anyhow::bail!("no PostgreSQL major given");
    }
    Ok(majors)
}

/// One change to `pgbench_accounts`, as the `WHERE` clause that selects the rows it updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What the results table calls it.
    pub label: String,
    /// `WHERE` clause of the `UPDATE`.
    pub rows: String,
}

impl Change {
    /// `pct` % of the accounts at `scale` as one `aid` range from the first.
    pub fn range(scale: u32, pct: f64) -> Change {
        let n = crate::backupbench::dedup::accounts_to_update(scale, pct);
        Change {
            label: format!("{pct} % of rows, one `aid` range"),
            rows: format!("aid <= {n}"),
        }
    }

    /// `pct` % of the accounts, every `100 / pct`-th `aid`: spread over the whole table.
    pub fn scattered(pct: f64) -> Change {
        let every = (100.0 / pct).round().max(1.0) as u64;
        Change {
            label: format!("{pct} % of rows, every {every}th `aid`"),
            rows: format!("aid % {every} = 0"),
        }
    }

    /// Step `step` (1-based) of the chain: the `step`-th tenth of the table, its first
    /// [`CHAIN_STEP_PCT`] %, so that no two steps and neither of the 1 % changes share rows.
    pub fn chain_step(scale: u32, step: u32) -> Change {
        let accounts = u64::from(scale) * ACCOUNTS_PER_SCALE;
        let first = accounts / 10 * u64::from(step) + 1;
        let n = crate::backupbench::dedup::accounts_to_update(scale, CHAIN_STEP_PCT).max(1);
        Change {
            label: format!("{CHAIN_STEP_PCT} % of rows, chain step {step}"),
            rows: format!("aid BETWEEN {first} AND {}", first + n - 1),
        }
    }

    /// `UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE <rows>`, then `CHECKPOINT`
    /// so the changed pages are on disk; returns the rows the clause selects.
    pub fn apply(&self, pg: &PgServer) -> anyhow::Result<u64> {
        pg.psql(&format!(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE {}",
            self.rows
        ))?;
        pg.psql("CHECKPOINT")?;
        pg.psql(&format!(
            "SELECT count(*) FROM pgbench_accounts WHERE {}",
            self.rows
        ))?
        .parse()
        .context("count of updated rows")
    }
}

/// One `pgagent backup` as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    /// Backup id.
    pub id: String,
    /// Wall time of `pgagent backup --fast` (it waits for the WAL up to its stop LSN).
    pub wall: Duration,
    /// Full or incremental.
    pub kind: BackupKind,
    /// Backups before it in its chain (0 for a full backup).
    pub depth: u32,
    /// Archive bytes the server sent.
    pub server_bytes: u64,
    /// Bytes of the files the backup holds, as sent (`INCREMENTAL.*` files as they are).
    pub raw_bytes: u64,
    /// Stored (compressed) bytes of the chunks it added to the store.
    pub stored_bytes: u64,
    /// Why it is full when it could have been incremental, as `pgagent backup` said.
    pub fallback: Option<String>,
}

impl Measured {
    /// The figures of backup `id` from its manifest in the `file://` store at `root`.
    pub fn read(root: &Path, id: &str, wall: Duration, printed: &str) -> anyhow::Result<Measured> {
        let m = read_manifest(root, id)?;
        Ok(Measured {
            id: id.to_owned(),
            wall,
            kind: m.kind,
            depth: m.depth,
            server_bytes: m.stats.server_bytes,
            raw_bytes: m.stats.raw_bytes,
            stored_bytes: m.stats.new_stored_bytes,
            fallback: fallback_reason(printed).map(str::to_owned),
        })
    }

    /// `full` or `incremental (depth N)`.
    pub fn kind_label(&self) -> String {
        match self.kind {
            BackupKind::Full => "full".to_owned(),
            BackupKind::Incremental => format!("incremental (depth {})", self.depth),
        }
    }
}

/// `backups/<id>/manifest.json` of the plaintext `file://` store at `root`.
///
/// Errors: missing, damaged or not a manifest.
pub fn read_manifest(root: &Path, id: &str) -> anyhow::Result<BackupManifest> {
    let path = root.join(pgagent_storage::layout::backup_manifest_key(id));
    let body = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let json = pgagent_storage::envelope::open(&body)
        .with_context(|| format!("open {}", path.display()))?;
    serde_json::from_slice(&json).with_context(|| format!("parse {}", path.display()))
}

/// What follows `full, not incremental ` in `pgagent backup`'s output: the reason a backup
/// fell back to full, e.g. `(no_parent): …`.
pub fn fallback_reason(printed: &str) -> Option<&str> {
    printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("full, not incremental "))
}

/// Whether `pgagent restore --help` offers `--raw`, which came with restoring an
/// incremental chain (before it, a restore of an incremental backup is not a cluster).
pub fn restores_chains(restore_help: &str) -> bool {
    restore_help
        .split(|c: char| c.is_whitespace() || c == ',')
        .any(|w| w == "--raw")
}

/// The first line of `text` that reports an error (`ERROR`, `error:`), else its first
/// non-empty line: what a skipped peer says about itself.
pub fn first_error_line(text: &str) -> &str {
    let lines = || text.lines().map(str::trim).filter(|l| !l.is_empty());
    lines()
        .find(|l| l.contains("ERROR") || l.to_lowercase().starts_with("error"))
        .or_else(|| lines().next())
        .unwrap_or("")
}

/// Files under `dir` whose name starts with `INCREMENTAL.`: none in a restored cluster.
pub fn incremental_files(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => incremental_files(&e.path()),
            Ok(t) if t.is_file() => {
                u64::from(e.file_name().to_string_lossy().starts_with("INCREMENTAL."))
            }
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_majors() {
        assert_eq!(parse_majors("17,18").unwrap(), [17, 18]);
        assert_eq!(parse_majors(" 18, 17 ,18").unwrap(), [18, 17]);
        assert!(parse_majors("16").is_err());
        assert!(parse_majors("x").is_err());
        assert!(parse_majors(",").is_err());
    }

    #[test]
    fn changes_select_their_rows() {
        assert_eq!(Change::range(100, 1.0).rows, "aid <= 100000");
        assert_eq!(Change::scattered(1.0).rows, "aid % 100 = 0");
        // Scale 100: 10 000 000 accounts; step 1 is the first 10 000 of the second tenth.
        assert_eq!(
            Change::chain_step(100, 1).rows,
            "aid BETWEEN 1000001 AND 1010000"
        );
        assert_eq!(
            Change::chain_step(100, 6).rows,
            "aid BETWEEN 6000001 AND 6010000"
        );
        assert_eq!(Change::chain_step(1, 2).rows, "aid BETWEEN 20001 AND 20100");
    }

    #[test]
    fn finds_the_fallback_reason() {
        let printed = "20260101T000000Z  complete  0/2000028 .. 0/2000100  timeline 1\n\
                       full, not incremental (no_parent): no complete backup in the store\n";
        assert_eq!(
            fallback_reason(printed),
            Some("(no_parent): no complete backup in the store")
        );
        assert_eq!(fallback_reason("20260101T000000Z  complete"), None);
    }

    #[test]
    fn sees_whether_restore_rebuilds_chains() {
        assert!(restores_chains(
            "Options:\n      --raw  Write one backup as stored\n"
        ));
        assert!(restores_chains("  --delta, --raw"));
        assert!(!restores_chains("  --rawness\n  --delta"));
    }

    #[test]
    fn picks_the_error_line() {
        let out = "pgbackrest stanza-create failed\nWARN: x\nERROR: [028]: unsupported version\n";
        assert_eq!(first_error_line(out), "ERROR: [028]: unsupported version");
        assert_eq!(first_error_line("\n  only this\n"), "only this");
        assert_eq!(first_error_line(""), "");
    }

    #[test]
    fn counts_incremental_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("base/5")).unwrap();
        std::fs::write(dir.path().join("base/5/INCREMENTAL.16384"), b"x").unwrap();
        std::fs::write(dir.path().join("base/5/16385"), b"x").unwrap();
        std::fs::write(dir.path().join("PG_VERSION"), b"17").unwrap();
        assert_eq!(incremental_files(dir.path()), 1);
        assert_eq!(incremental_files(&dir.path().join("missing")), 0);
    }
}
