//! End-to-end base backup and restore: `pgagent backup` against `pg_basebackup` (tar, gzip
//! or client-side zstd) and `pgbackrest backup` (zstd level 3), on one PostgreSQL primary
//! filled by `pgbench -i`.
//!
//! Every case takes a base backup of the same cluster after a `CHECKPOINT` (all with an
//! immediate checkpoint), is timed by wall clock, and reports the bytes it stored (files on
//! disk, or what `pgagent list backups --json` counts for an S3 store); its restore into an
//! empty directory is timed the same way:
//!
//! | case | backup | restore |
//! | --- | --- | --- |
//! | `a` | `pgagent backup --fast`, `file://` store | `pgagent restore --backup <id>` |
//! | `b` | `pgagent backup --fast`, Garage (S3 on loopback) | `pgagent restore --backup <id>` |
//! | `c` | `pg_basebackup -Ft -X none -c fast -z` | `tar -xzf base.tar.gz` |
//! | `d` | `pg_basebackup -Ft -X none -c fast --compress=client-zstd` | `tar --zstd -xf` |
//! | `e` | `pgbackrest backup --type=full`, posix repository | `pgbackrest restore` |
//!
//! Then the deduplication figure ([`dedup`]): 1 % of `pgbench_accounts` is updated (a
//! contiguous `aid` range), and a second `pgagent backup` stores only the chunks that
//! changed; a pgBackRest differential backup after the same change is the comparison.
//!
//! pgagent's backups need the WAL up to their stop LSN in the store, so a `pgagent run`
//! streams the primary into the same store while they run.

pub mod dedup;
pub mod peers;
pub mod pgagent;
pub mod report;

use std::path::PathBuf;

use anyhow::Context;

/// The cases, by their letter in `BENCH_CASES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// `pgagent backup` into a `file://` store.
    PgagentFile,
    /// `pgagent backup` into Garage.
    PgagentS3,
    /// `pg_basebackup` tar, gzip.
    TarGzip,
    /// `pg_basebackup` tar, client-side zstd.
    TarZstd,
    /// `pgbackrest backup`, full.
    PgBackRest,
}

impl Case {
    /// All cases in the order they run.
    pub const ALL: [Case; 5] = [
        Case::PgagentFile,
        Case::TarGzip,
        Case::TarZstd,
        Case::PgBackRest,
        Case::PgagentS3,
    ];

    /// Letter in `BENCH_CASES`.
    pub fn letter(self) -> char {
        match self {
            Case::PgagentFile => 'a',
            Case::PgagentS3 => 'b',
            Case::TarGzip => 'c',
            Case::TarZstd => 'd',
            Case::PgBackRest => 'e',
        }
    }

    /// Label in the results table.
    pub fn label(self) -> &'static str {
        match self {
            Case::PgagentFile => "pgagent backup (file:// store)",
            Case::PgagentS3 => "pgagent backup (Garage, S3 on loopback)",
            Case::TarGzip => "pg_basebackup -Ft -z (gzip)",
            Case::TarZstd => "pg_basebackup -Ft --compress=client-zstd",
            Case::PgBackRest => "pgbackrest backup --type=full (zst:3, process-max=2)",
        }
    }
}

/// Benchmark settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Target database size, bytes (`BENCH_DB_GIB`, GiB, default 2).
    pub db_bytes: u64,
    /// Cases to run (`BENCH_CASES`, letters `a`–`e`, default `abcde`).
    pub cases: Vec<Case>,
    /// `pgagent` binary (`PGAGENT_BIN`, default `target/release/pgagent`).
    pub pgagent_bin: PathBuf,
}

impl Settings {
    /// Reads the settings from the environment.
    ///
    /// Errors on a malformed value or a missing `pgagent` binary.
    pub fn from_env() -> anyhow::Result<Settings> {
        let gib = crate::env_var("BENCH_DB_GIB").unwrap_or_else(|| "2".to_owned());
        let cases = crate::env_var("BENCH_CASES").unwrap_or_else(|| "abcde".to_owned());
        let bin = crate::pgagent_bin()?;
        Ok(Settings {
            db_bytes: crate::catchup::parse_gib(&gib).context("BENCH_DB_GIB")?,
            cases: parse_cases(&cases).context("BENCH_CASES")?,
            pgagent_bin: bin
                .canonicalize()
                .with_context(|| format!("resolve {}", bin.display()))?,
        })
    }
}

/// Case letters (`a`–`e`) to cases, in [`Case::ALL`] order.
pub fn parse_cases(text: &str) -> anyhow::Result<Vec<Case>> {
    crate::select_cases(text, &Case::ALL, Case::letter, "a (pgagent, file), b (pgagent, Garage), c (pg_basebackup gzip), d (pg_basebackup zstd), e (pgbackrest)")
}

/// `pgbench -i -s <scale>` into `pg`, then a `CHECKPOINT`; returns the size of every
/// database afterwards, bytes (`pg_database_size`), and says both on stderr.
///
/// Errors: pgbench or psql fail.
pub fn load_pgbench(pg: &pgagent_tests::PgServer, scale: u32) -> anyhow::Result<u64> {
    eprintln!("pgbench -i -s {scale}");
    let began = std::time::Instant::now();
    pg.pgbench_init(scale)?;
    pg.psql("CHECKPOINT")?;
    let db_bytes: u64 = pg
        .psql("SELECT sum(pg_database_size(datname))::bigint FROM pg_database")?
        .parse()
        .context("pg_database_size")?;
    eprintln!(
        "  {} MiB in {:.0} s",
        db_bytes >> 20,
        began.elapsed().as_secs_f64()
    );
    Ok(db_bytes)
}

/// pgbench scale for a database of about `bytes`: one scale unit is 100 000
/// `pgbench_accounts` rows, about 15 MiB with their index.
pub fn pgbench_scale(bytes: u64) -> u32 {
    ((bytes as f64 / f64::from(15u32 << 20)).round() as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cases() {
        assert_eq!(parse_cases("abcde").unwrap(), Case::ALL);
        assert_eq!(
            parse_cases("e,a").unwrap(),
            [Case::PgagentFile, Case::PgBackRest]
        );
        assert!(parse_cases("f").is_err());
        assert!(parse_cases("").is_err());
    }

    #[test]
    fn sizes_the_pgbench_scale() {
        assert_eq!(pgbench_scale(2 << 30), 137);
        assert_eq!(pgbench_scale(1 << 30), 68);
        assert_eq!(pgbench_scale(0), 1);
    }
}
