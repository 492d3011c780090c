//! What streaming costs under a light, steady load: bytes compressed and uploaded per byte of
//! WAL, PUT requests per minute, and the offsite RPO of lone commits.
//!
//! A scratch PostgreSQL cluster is streamed by the release `pgagent run` (its defaults, so
//! `wal.partial_interval = 1s`) into a Garage bucket. After `pgbench -i`, a checkpoint, a
//! short unthrottled pgbench (so that the window writes no full-page images), a segment
//! switch and more unthrottled pgbench up to the middle of the new segment (so that the
//! window starts where a segment is on average), and once the bucket holds everything, a
//! rate-limited pgbench (`-R 20 -c 1 -T 60` by default) runs; the window ends when the bucket
//! holds all of its WAL. Over the window:
//!
//! | figure | from |
//! | --- | --- |
//! | WAL written | `pg_current_wal_lsn()` at the end minus at the start |
//! | raw bytes compressed | growth of `pgagent_upload_bytes_total{stage="raw"}` |
//! | stored bytes uploaded | growth of `pgagent_upload_bytes_total{stage="stored"}` |
//! | PUT requests | growth of `pgagent_store_requests_total{op="put"}`, or of the sum of `pgagent_uploads_total` where the daemon does not export the former |
//!
//! Then a trickle of single-row commits, a few seconds apart and at evenly spread points of
//! the daemon's upload cycle, measures how long each waits until the server sees the daemon's
//! flush position pass it ([`trickle`]). Settings come from the environment
//! ([`Settings::from_env`]).

pub mod metrics;
pub mod report;
pub mod scenario;
pub mod trickle;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

/// Benchmark settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Length of the pgbench load (`BENCH_LOAD_SECONDS`, 10–600, default 60).
    pub load: Duration,
    /// pgbench's rate limit, transactions per second (`BENCH_RATE`, 1–10000, default 20).
    pub rate: u32,
    /// `pgbench -i` scale (`BENCH_SCALE`, 1–100, default 1).
    pub scale: u32,
    /// Unthrottled pgbench run after the checkpoint that precedes the window
    /// (`BENCH_WARMUP_SECONDS`, 0–300, default 20), so that the window's transactions find
    /// their pages already logged since the checkpoint and write no full-page images: the
    /// steady state between two checkpoints. 0 starts the window right after the checkpoint.
    pub warmup: Duration,
    /// Where in its segment the window starts, bytes (`BENCH_WINDOW_OFFSET_MIB`, 0–15,
    /// default 8): after the warm-up, `pg_switch_wal()` and unthrottled pgbench until the
    /// insert position is this far into the new segment. How much a whole-prefix `.partial`
    /// upload compresses grows with it; 8 MiB is its average over the life of a segment.
    pub window_offset: u64,
    /// Commits in the trickle (`BENCH_TRICKLE`, 0–50, default 10).
    pub trickle: usize,
    /// `wal.partial_interval` given to the daemon (`BENCH_PARTIAL_INTERVAL_SECONDS`, 1–600),
    /// `None` for pgagent's default (1 s).
    pub partial_interval: Option<Duration>,
    /// `pgagent` binary (`PGAGENT_BIN`, default `target/release/pgagent`).
    pub pgagent_bin: PathBuf,
}

/// pgagent's default `wal.partial_interval` (agent/src/config/sections.rs).
pub const DEFAULT_PARTIAL_INTERVAL: Duration = Duration::from_secs(1);

/// Least time between two commits of the trickle.
pub const TRICKLE_GAP: Duration = Duration::from_secs(3);

impl Settings {
    /// Reads the settings from the environment.
    ///
    /// Errors on a malformed or out-of-range value, or a missing `pgagent` binary.
    pub fn from_env() -> anyhow::Result<Settings> {
        let var = crate::env_var;
        let load = var("BENCH_LOAD_SECONDS").unwrap_or_else(|| "60".to_owned());
        let rate = var("BENCH_RATE").unwrap_or_else(|| "20".to_owned());
        let scale = var("BENCH_SCALE").unwrap_or_else(|| "1".to_owned());
        let warmup = var("BENCH_WARMUP_SECONDS").unwrap_or_else(|| "20".to_owned());
        let offset = var("BENCH_WINDOW_OFFSET_MIB").unwrap_or_else(|| "8".to_owned());
        let trickle = var("BENCH_TRICKLE").unwrap_or_else(|| "10".to_owned());
        let partial_interval = var("BENCH_PARTIAL_INTERVAL_SECONDS")
            .map(|v| parse_in::<u64>(&v, 1, 600).context("BENCH_PARTIAL_INTERVAL_SECONDS"))
            .transpose()?
            .map(Duration::from_secs);
        Ok(Settings {
            load: Duration::from_secs(parse_in(&load, 10, 600).context("BENCH_LOAD_SECONDS")?),
            rate: parse_in(&rate, 1, 10_000).context("BENCH_RATE")?,
            scale: parse_in(&scale, 1, 100).context("BENCH_SCALE")?,
            warmup: Duration::from_secs(parse_in(&warmup, 0, 300).context("BENCH_WARMUP_SECONDS")?),
            window_offset: parse_in::<u64>(&offset, 0, 15).context("BENCH_WINDOW_OFFSET_MIB")?
                << 20,
            trickle: parse_in(&trickle, 0, 50).context("BENCH_TRICKLE")?,
            partial_interval,
            pgagent_bin: crate::pgagent_bin()?,
        })
    }

    /// The partial interval the daemon runs with.
    pub fn effective_partial_interval(&self) -> Duration {
        self.partial_interval.unwrap_or(DEFAULT_PARTIAL_INTERVAL)
    }

    /// Time between two commits of the trickle: at least [`TRICKLE_GAP`] and the partial
    /// interval (each commit is waited for on its own), plus an `interval / count` step, so
    /// that the commits fall at evenly spread points of the daemon's upload cycle instead of
    /// all at the same one (3 s is a multiple of the default 1 s interval).
    pub fn trickle_gap(&self) -> Duration {
        let interval = self.effective_partial_interval();
        TRICKLE_GAP.max(interval) + interval / self.trickle.max(1) as u32
    }
}

/// A whole number in `low..=high`.
pub fn parse_in<T>(text: &str, low: T, high: T) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let value: T = text
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a whole number"))?;
    if value < low || value > high {
        bail!("{value} is out of range {low}..={high}");
    }
    Ok(value)
}

/// "number of transactions actually processed: N" (or "N/M" with `-t`) from pgbench's
/// summary.
pub fn transactions_processed(pgbench_output: &str) -> Option<u64> {
    pgbench_output.lines().find_map(|l| {
        l.trim()
            .strip_prefix("number of transactions actually processed:")?
            .split_whitespace()
            .next()?
            .split('/')
            .next()?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bounded_numbers() {
        assert_eq!(parse_in::<u32>(" 20 ", 1, 100).unwrap(), 20);
        assert!(parse_in::<u32>("0", 1, 100).is_err());
        assert!(parse_in::<u32>("101", 1, 100).is_err());
        assert!(parse_in::<u32>("1.5", 1, 100).is_err());
        assert!(parse_in::<usize>("-1", 0, 50).is_err());
    }

    #[test]
    fn trickle_commits_step_through_the_upload_cycle() {
        let settings = |interval: Option<u64>, trickle| Settings {
            load: Duration::from_secs(60),
            rate: 20,
            scale: 1,
            warmup: Duration::from_secs(20),
            window_offset: 8 << 20,
            trickle,
            partial_interval: interval.map(Duration::from_secs),
            pgagent_bin: PathBuf::new(),
        };
        let ms = Duration::from_millis;
        assert_eq!(settings(None, 10).trickle_gap(), ms(3100));
        assert_eq!(settings(Some(10), 10).trickle_gap(), ms(11_000));
        assert_eq!(settings(Some(1), 4).trickle_gap(), ms(3250));
        assert_eq!(settings(None, 0).trickle_gap(), ms(4000));
        // The phases of ten commits in a 1 s cycle are ten distinct tenths.
        let gap = settings(None, 10).trickle_gap().as_millis();
        let mut phases: Vec<u128> = (0..10).map(|i| (i * gap) % 1000).collect();
        phases.sort();
        phases.dedup();
        assert_eq!(phases.len(), 10);
    }

    #[test]
    fn reads_pgbench_summary() {
        let out = "transaction type: <builtin: TPC-B (sort of)>\n\
                   number of transactions actually processed: 1187\n\
                   number of failed transactions: 0 (0.000%)\n";
        assert_eq!(transactions_processed(out), Some(1187));
        let limited = "number of transactions actually processed: 1203/1210\n";
        assert_eq!(transactions_processed(limited), Some(1203));
        assert_eq!(transactions_processed(""), None);
    }
}
