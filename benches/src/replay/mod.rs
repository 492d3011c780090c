//! End-to-end replay of archived WAL through `restore_command`.
//!
//! One base backup (`pg_basebackup -X none -c fast`) and the WAL written after it (pgbench,
//! about `BENCH_WAL_GIB` GiB) are prepared once ([`prepare()`]); every case then copies the base
//! backup into a fresh data directory, starts PostgreSQL in archive recovery
//! (`recovery.signal`, no recovery target: PostgreSQL replays until `restore_command` finds
//! no further segment, then promotes; PostgreSQL docs, section 26.3.4 "Recovering Using a
//! Continuous Archive Backup") and is timed until the server has promoted:
//!
//! | case | `restore_command` |
//! | --- | --- |
//! | `cp` (the floor) | `cp <archive>/%f "%p"` from a local directory |
//! | pgagent, +0 ms | `pgagent fetch %f %p`, Garage on loopback |
//! | pgagent, +20 ms | the same through a [`pgagent_tests::Proxy`] adding ~20 ms per request |
//! | pgagent, +100 ms | the same adding ~100 ms per request |
//! | pgBackRest | `pgbackrest archive-get %f "%p"`, asynchronous, local posix repository |
//! | pgagent, +100 ms, wide | as +100 ms with `fetch.prefetch = 48` |
//!
//! Every case must restore every segment of the archive and end redo at the same LSN
//! ([`recovery::check_replay`]). [`percall`] separately times single `restore_command` calls
//! on a segment already prefetched. Settings come from the environment
//! ([`Settings::from_env`]).

pub mod agent;
pub mod cases;
pub mod latency;
pub mod logscan;
pub mod percall;
pub mod pgbackrest;
pub mod prepare;
pub mod recovery;
pub mod report;
pub mod sys;

pub use prepare::{prepare, Prepared};

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::catchup::{parse_gib, parse_runs};

/// The cases, by their letter in `BENCH_CASES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// `cp` from a local directory: the floor.
    Cp,
    /// `pgagent fetch` from Garage, no added latency.
    Pgagent,
    /// `pgagent fetch` from Garage through the proxy, ~20 ms added per request.
    Pgagent20,
    /// `pgagent fetch` from Garage through the proxy, ~100 ms added per request.
    Pgagent100,
    /// `pgbackrest archive-get`, asynchronous, from a local posix repository.
    PgBackRest,
    /// As [`Case::Pgagent100`] with a prefetch window three times the default.
    Pgagent100Wide,
}

impl Case {
    /// All cases in the order they run.
    pub const ALL: [Case; 6] = [
        Case::Cp,
        Case::Pgagent,
        Case::Pgagent20,
        Case::Pgagent100,
        Case::PgBackRest,
        Case::Pgagent100Wide,
    ];

    /// Letter in `BENCH_CASES`.
    pub fn letter(self) -> char {
        match self {
            Case::Cp => 'a',
            Case::Pgagent => 'b',
            Case::Pgagent20 => 'c',
            Case::Pgagent100 => 'd',
            Case::PgBackRest => 'e',
            Case::Pgagent100Wide => 'f',
        }
    }

    /// Label in the results table.
    pub fn label(self) -> &'static str {
        match self {
            Case::Cp => "cp (local directory)",
            Case::Pgagent => "pgagent fetch (Garage, +0 ms)",
            Case::Pgagent20 => "pgagent fetch (Garage via proxy, +20 ms per request)",
            Case::Pgagent100 => "pgagent fetch (Garage via proxy, +100 ms per request)",
            Case::PgBackRest => "pgbackrest archive-get (async, local posix repo)",
            Case::Pgagent100Wide => {
                "pgagent fetch (Garage via proxy, +100 ms per request, fetch.prefetch = 48)"
            }
        }
    }

    /// The proxy delay of a pgagent case: `None` for a direct connection to Garage.
    ///
    /// [`pgagent_tests::ProxyMode::Delay`] holds every forwarded chunk (at most 64 KiB) for
    /// the delay in each direction, so a request whose request and response each fit in one
    /// chunk gains twice the delay: 10 ms per chunk for "+20 ms", 50 ms for "+100 ms".
    /// A larger response gains the delay once more per further 64 KiB chunk.
    pub fn proxy_delay(self) -> Option<Duration> {
        match self {
            Case::Pgagent20 => Some(Duration::from_millis(10)),
            Case::Pgagent100 | Case::Pgagent100Wide => Some(Duration::from_millis(50)),
            _ => None,
        }
    }

    /// `fetch.prefetch` of a pgagent case, `None` for pgagent's default (16).
    pub fn prefetch(self) -> Option<usize> {
        (self == Case::Pgagent100Wide).then_some(48)
    }

    /// Whether the case uses `pgagent fetch`.
    pub fn is_pgagent(self) -> bool {
        matches!(
            self,
            Case::Pgagent | Case::Pgagent20 | Case::Pgagent100 | Case::Pgagent100Wide
        )
    }
}

/// Benchmark settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// WAL to generate after the base backup, bytes (`BENCH_WAL_GIB`, GiB, default 1).
    pub wal_bytes: u64,
    /// Runs of each case (`BENCH_RUNS`, 1–5, default 1); the table reports the fastest.
    pub runs: usize,
    /// Cases to run (`BENCH_CASES`, letters `a`–`f`, default `abcdef`).
    pub cases: Vec<Case>,
    /// Timed calls per `restore_command` in the per-call measurement (`BENCH_CALLS`,
    /// 3–15, default 12; at most `fetch.prefetch - 1` so every call finds its segment
    /// prefetched).
    pub calls: usize,
    /// `pgagent` binary (`PGAGENT_BIN`, default `target/release/pgagent`).
    pub pgagent_bin: PathBuf,
}

impl Settings {
    /// Reads the settings from the environment.
    ///
    /// Errors on a malformed value or a missing `pgagent` binary.
    pub fn from_env() -> anyhow::Result<Settings> {
        let var = crate::env_var;
        let gib = var("BENCH_WAL_GIB").unwrap_or_else(|| "1".to_owned());
        let runs = var("BENCH_RUNS").unwrap_or_else(|| "1".to_owned());
        let cases = var("BENCH_CASES").unwrap_or_else(|| "abcdef".to_owned());
        let calls = var("BENCH_CALLS").unwrap_or_else(|| "12".to_owned());
        let pgagent_bin = crate::pgagent_bin()?;
        Ok(Settings {
            wal_bytes: parse_gib(&gib).context("BENCH_WAL_GIB")?,
            runs: parse_runs(&runs).context("BENCH_RUNS")?,
            cases: parse_cases(&cases).context("BENCH_CASES")?,
            calls: parse_calls(&calls).context("BENCH_CALLS")?,
            pgagent_bin: pgagent_bin
                .canonicalize()
                .with_context(|| format!("resolve {}", pgagent_bin.display()))?,
        })
    }
}

/// Case letters (`a`–`f`) to cases, in [`Case::ALL`] order.
pub fn parse_cases(text: &str) -> anyhow::Result<Vec<Case>> {
    crate::select_cases(text, &Case::ALL, Case::letter, "a (cp), b (pgagent +0 ms), c (+20 ms), d (+100 ms), e (pgbackrest), f (+100 ms, prefetch 48)")
}

/// Timed calls per command: 3 to 15.
pub fn parse_calls(text: &str) -> anyhow::Result<usize> {
    let calls: usize = text
        .trim()
        .parse()
        .with_context(|| format!("{text:?} is not a count"))?;
    if !(3..=15).contains(&calls) {
        bail!("{calls} calls is out of range 3..=15");
    }
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cases_and_calls() {
        assert_eq!(parse_cases("abcdef").unwrap(), Case::ALL);
        assert_eq!(parse_cases("e, a").unwrap(), [Case::Cp, Case::PgBackRest]);
        assert!(parse_cases("g").is_err());
        assert!(parse_cases(" ").is_err());
        assert_eq!(parse_calls(" 12 ").unwrap(), 12);
        assert!(parse_calls("2").is_err());
        assert!(parse_calls("16").is_err());
        assert!(parse_calls("x").is_err());
    }

    #[test]
    fn letters_are_distinct_and_delays_match_the_labels() {
        let mut letters: Vec<char> = Case::ALL.iter().map(|c| c.letter()).collect();
        letters.dedup();
        assert_eq!(letters.len(), Case::ALL.len());
        assert_eq!(Case::Pgagent.proxy_delay(), None);
        assert_eq!(
            Case::Pgagent20.proxy_delay().map(|d| d * 2),
            Some(Duration::from_millis(20))
        );
        assert_eq!(
            Case::Pgagent100.proxy_delay().map(|d| d * 2),
            Some(Duration::from_millis(100))
        );
        assert!(Case::Pgagent100.is_pgagent() && !Case::PgBackRest.is_pgagent());
        assert_eq!(
            Case::Pgagent100Wide.proxy_delay(),
            Case::Pgagent100.proxy_delay()
        );
        assert_eq!(
            (Case::Pgagent100.prefetch(), Case::Pgagent100Wide.prefetch()),
            (None, Some(48))
        );
    }
}
