//! End-to-end catch-up of a WAL backlog retained by replication slots.
//!
//! A cluster writes a backlog of real WAL (pgbench) while physical slots created with
//! `RESERVE_WAL` hold it in `pg_wal` (`pg_create_physical_replication_slot(name, true)`,
//! PostgreSQL docs, section 9.27.6). Each case then streams the same backlog through its own
//! slot, from the segment holding the slots' `restart_lsn` to the end LSN, and is timed until
//! everything up to the end LSN is durable:
//!
//! | case | durable when |
//! | --- | --- |
//! | `pg_receivewal -E <end>` (baseline, no compression) | it exits: it fsyncs every completed segment |
//! | `pgagent run` into a `file://` store | `status.json` shows `uploaded_lsn >= end` |
//! | `pgagent run` into a Garage S3 store | same |
//! | the two `pgagent run` cases again, on an encrypted store | same |
//!
//! Settings come from the environment ([`Settings::from_env`]).

mod backlog;
mod cases;

pub use backlog::{prepare, Backlog};
pub use cases::{run_pg_receivewal, run_pgagent, AgentTarget, PgagentRun};

use std::path::PathBuf;

use anyhow::{bail, Context};

/// The cases, by their letter in the slot names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// `pg_receivewal`, the baseline.
    PgReceivewal,
    /// `pgagent run` into a `file://` store.
    PgagentFile,
    /// `pgagent run` into a Garage S3 store.
    PgagentS3,
    /// `pgagent run` into an encrypted `file://` store (a passphrase configured).
    PgagentFileEncrypted,
    /// `pgagent run` into an encrypted Garage S3 store.
    PgagentS3Encrypted,
}

impl Case {
    /// All cases in the order they run.
    pub const ALL: [Case; 5] = [
        Case::PgReceivewal,
        Case::PgagentFile,
        Case::PgagentS3,
        Case::PgagentFileEncrypted,
        Case::PgagentS3Encrypted,
    ];

    /// Letter used in slot names and in `BENCH_CASES`.
    pub fn letter(self) -> char {
        match self {
            Case::PgReceivewal => 'a',
            Case::PgagentFile => 'b',
            Case::PgagentS3 => 'c',
            Case::PgagentFileEncrypted => 'd',
            Case::PgagentS3Encrypted => 'e',
        }
    }

    /// Label in the results table.
    pub fn label(self) -> &'static str {
        match self {
            Case::PgReceivewal => "pg_receivewal",
            Case::PgagentFile => "pgagent → file://",
            Case::PgagentS3 => "pgagent → S3 (Garage)",
            Case::PgagentFileEncrypted => "pgagent → file://, encrypted",
            Case::PgagentS3Encrypted => "pgagent → S3 (Garage), encrypted",
        }
    }

    /// Whether the case streams into a Garage bucket.
    pub fn is_s3(self) -> bool {
        matches!(self, Case::PgagentS3 | Case::PgagentS3Encrypted)
    }

    /// The passphrase of an encrypted case (`BENCH_PASSPHRASE`, else a fixed one).
    pub fn passphrase(self) -> Option<String> {
        matches!(self, Case::PgagentFileEncrypted | Case::PgagentS3Encrypted)
            .then(|| crate::bench_passphrase().unwrap_or_else(|| "catch-up bench".to_owned()))
    }

    /// The slot the case uses in run `run` (from 1): `bench_a`, `bench_b`, `bench_c` in the
    /// first run, `bench_a_2`… later, since each run consumes its slot's backlog.
    pub fn slot(self, run: usize) -> String {
        if run <= 1 {
            format!("bench_{}", self.letter())
        } else {
            format!("bench_{}_{run}", self.letter())
        }
    }
}

/// Benchmark settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Backlog to generate, bytes of WAL (`BENCH_WAL_GIB`, GiB, default 2).
    pub backlog_bytes: u64,
    /// Runs of each case (`BENCH_RUNS`, default 2); the table reports the fastest.
    pub runs: usize,
    /// Cases to run (`BENCH_CASES`, letters, default `abcde`).
    pub cases: Vec<Case>,
    /// `pgagent` binary (`PGAGENT_BIN`, default `target/release/pgagent`).
    pub pgagent_bin: PathBuf,
}

impl Settings {
    /// Reads the settings from the environment.
    ///
    /// Errors on a malformed value or a missing `pgagent` binary.
    pub fn from_env() -> anyhow::Result<Settings> {
        let var = crate::env_var;
        let gib = var("BENCH_WAL_GIB").unwrap_or_else(|| "2".to_owned());
        let runs = var("BENCH_RUNS").unwrap_or_else(|| "2".to_owned());
        let cases = var("BENCH_CASES").unwrap_or_else(|| "abcde".to_owned());
        let pgagent_bin = crate::pgagent_bin()?;
        Ok(Settings {
            backlog_bytes: parse_gib(&gib).context("BENCH_WAL_GIB")?,
            runs: parse_runs(&runs).context("BENCH_RUNS")?,
            cases: parse_cases(&cases).context("BENCH_CASES")?,
            pgagent_bin,
        })
    }
}

/// GiB (a positive decimal number, at most 64) to bytes.
pub fn parse_gib(text: &str) -> anyhow::Result<u64> {
    let gib: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("{text:?} is not a number of GiB"))?;
    if !(gib > 0.0 && gib <= 64.0) {
        bail!("{gib} GiB is out of range (0, 64]");
    }
    Ok((gib * f64::from(1u32 << 30)) as u64)
}

/// Runs per case: 1 to 5 (each run consumes a slot per case; the cluster has room for
/// `backlog::MAX_SLOTS`, five runs of the five cases).
pub fn parse_runs(text: &str) -> anyhow::Result<usize> {
    let runs: usize = text
        .trim()
        .parse()
        .with_context(|| format!("{text:?} is not a count"))?;
    if !(1..=5).contains(&runs) {
        bail!("{runs} runs is out of range 1..=5");
    }
    Ok(runs)
}

/// Case letters (`a`–`e`) to cases, in [`Case::ALL`] order.
pub fn parse_cases(text: &str) -> anyhow::Result<Vec<Case>> {
    crate::select_cases(
        text,
        &Case::ALL,
        Case::letter,
        "a (pg_receivewal), b (file://), c (S3), d (file://, encrypted), e (S3, encrypted)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backlog_size_in_gib() {
        assert_eq!(parse_gib("2").unwrap(), 2 << 30);
        assert_eq!(parse_gib(" 0.25 ").unwrap(), 256 << 20);
        assert!(parse_gib("0").is_err());
        assert!(parse_gib("-1").is_err());
        assert!(parse_gib("65").is_err());
        assert!(parse_gib("two").is_err());
    }

    #[test]
    fn parses_runs_and_cases() {
        assert_eq!(parse_runs("2").unwrap(), 2);
        assert!(parse_runs("0").is_err());
        assert!(parse_runs("6").is_err());
        assert_eq!(parse_cases("abcde").unwrap(), Case::ALL);
        assert_eq!(
            parse_cases("c,a").unwrap(),
            [Case::PgReceivewal, Case::PgagentS3]
        );
        assert!(parse_cases("f").is_err());
        assert!(parse_cases("").is_err());
    }

    #[test]
    fn slot_names_are_distinct_per_case_and_run() {
        assert_eq!(Case::PgReceivewal.slot(1), "bench_a");
        assert_eq!(Case::PgagentS3.slot(1), "bench_c");
        assert_eq!(Case::PgagentFile.slot(2), "bench_b_2");
        let mut all: Vec<String> = (1..=3).flat_map(|r| Case::ALL.map(|c| c.slot(r))).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 3 * Case::ALL.len());
    }
}
