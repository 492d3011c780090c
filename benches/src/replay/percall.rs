//! The cost of one `restore_command` call on a segment that is ready locally: for pgagent a
//! segment its restore-mode server has prefetched, for pgBackRest (synchronous) and `cp` a
//! local repository or directory.
//!
//! Each call runs as PostgreSQL runs it (`sh -c '<command> <file> <dest>'`, as the
//! PostgreSQL OS user) and is timed from spawn to exit. As PostgreSQL does before each call
//! (`RestoreArchivedFile` in `src/backend/access/transam/xlogarchive.c` unlinks
//! `RECOVERYXLOG` first), the destination is removed beforehand: replacing a file that has
//! data would make ext4 start writing the new one back at close or rename
//! (`auto_da_alloc`), which PostgreSQL never triggers. Calls are 200 ms apart, so that the
//! fetch server's prefetch of the next segment (one per request, as during a replay) is not
//! running at the moment of the next call.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgagent_tests::{Garage, OsUser};

use super::agent::{FetchConfig, FetchTuning};
use super::logscan::{fetch_summary, FetchSummary};
use super::prepare::PREFIX;
use super::sys::{command_as, path_str, shell_quote, user_dir};
use super::{Prepared, Settings};
use crate::walcache::is_segment_name;

/// Pause between two timed calls.
const PAUSE: Duration = Duration::from_millis(200);
/// Idle timeout of the fetch server started here.
const IDLE: Duration = Duration::from_secs(3);

/// Timed calls of one command.
#[derive(Debug, Clone, PartialEq)]
pub struct CallTimes {
    /// What was called.
    pub label: String,
    /// Wall time of each call.
    pub samples: Vec<Duration>,
}

impl CallTimes {
    /// Median (nearest rank).
    pub fn median(&self) -> Duration {
        percentile(&self.samples, 0.5)
    }

    /// 95th percentile (nearest rank: with 12 calls, the largest).
    pub fn p95(&self) -> Duration {
        percentile(&self.samples, 0.95)
    }

    /// Fastest call.
    pub fn min(&self) -> Duration {
        self.samples.iter().copied().min().unwrap_or_default()
    }
}

/// The nearest-rank `q` quantile (0 < q ≤ 1) of `samples`: the smallest sample with at least
/// `q` of all samples at or below it. Zero for no samples.
pub fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// What [`measure`] found.
#[derive(Debug, Clone)]
pub struct PerCall {
    /// One row per command.
    pub rows: Vec<CallTimes>,
    /// The first `pgagent fetch` call, which starts the server and reads from the bucket.
    pub pgagent_first: Duration,
    /// The fetch server's own account of the calls.
    pub pgagent_summary: Option<FetchSummary>,
}

/// Times `settings.calls` calls of `pgagent fetch`, `pgbackrest archive-get` (when there is a
/// repository) and `cp` on the same segments (the 2nd to the `calls + 1`-th of the archive),
/// and as a reference `sh -c true`, the part of every call that is not the command's own.
///
/// Errors: a call fails, or the fetch server prefetches nothing within 60 s.
pub fn measure(p: &Prepared, settings: &Settings, garage: &Garage) -> anyhow::Result<PerCall> {
    let user = p.user.as_ref();
    if p.files.len() <= settings.calls {
        bail!(
            "{} files are too few for {} calls",
            p.files.len(),
            settings.calls
        );
    }
    let dir = p.work.path().join("percall");
    let dest = dir.join("dest");
    user_dir(&dest, user)?;
    let out = dest.join("x");
    let names = &p.files[1..=settings.calls];

    let to = shell_quote(path_str(&out)?);

    let config = FetchConfig::write(
        &dir.join("pgagent"),
        garage,
        &garage.store_url(PREFIX),
        FetchTuning::idle(IDLE),
        user,
    )?;
    let fetch = config.command(&settings.pgagent_bin)?;
    let pgagent_first = time_one(&format!("{fetch} {} {to}", p.files[0]), user)?;
    wait_prefetched(&config, settings.calls)?;
    let mut rows = vec![CallTimes {
        label: "pgagent fetch (restore-mode server, prefetched segment)".to_owned(),
        samples: time_calls(|n| format!("{fetch} {n} {to}"), names, &out, user)?,
    }];
    let pgagent_summary = wait_summary(&config, IDLE * 5);

    if let Ok(pgbr) = &p.pgbackrest {
        let conf = pgbr.case_config(&dir.join("pgbackrest"), &p.base, false)?;
        let get = pgbr.archive_get_command(&conf)?;
        rows.push(CallTimes {
            label: "pgbackrest archive-get (synchronous, local posix repo)".to_owned(),
            samples: time_calls(|n| format!("{get} {n} {to}"), names, &out, user)?,
        });
    }
    let archive = path_str(&p.archive)?;
    rows.push(CallTimes {
        label: "cp (local directory)".to_owned(),
        samples: time_calls(
            |n| format!("cp {} {to}", shell_quote(&format!("{archive}/{n}"))),
            names,
            &out,
            user,
        )?,
    });
    rows.push(CallTimes {
        label: "(reference) `sh -c true`: spawning the shell alone".to_owned(),
        samples: time_calls(|_| "true".to_owned(), names, &out, user)?,
    });
    Ok(PerCall {
        rows,
        pgagent_first,
        pgagent_summary,
    })
}

/// Times `command(name)` for each of `names`, [`PAUSE`] apart, removing `dest` before each.
fn time_calls(
    command: impl Fn(&str) -> String,
    names: &[String],
    dest: &Path,
    user: Option<&OsUser>,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(names.len());
    for name in names {
        match fs::remove_file(dest) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("remove {}", dest.display()))
            }
            _ => {}
        }
        std::thread::sleep(PAUSE);
        samples.push(time_one(&command(name), user)?);
    }
    Ok(samples)
}

/// Runs `sh -c <line>` as `user` and returns its wall time, spawn to exit.
fn time_one(line: &str, user: Option<&OsUser>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = command_as(user, "sh")
        .args(["-c", line])
        .output()
        .context("spawn sh")?;
    let wall = started.elapsed();
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(wall)
}

/// Waits until the fetch server's prefetch cache holds `count` segments.
fn wait_prefetched(config: &FetchConfig, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready: usize = config
            .cache_dirs()
            .iter()
            .map(|d| {
                fs::read_dir(d)
                    .map(|es| {
                        es.filter_map(Result::ok)
                            .filter(|e| e.file_name().to_str().is_some_and(is_segment_name))
                            .count()
                    })
                    .unwrap_or(0)
            })
            .sum();
        if ready >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the fetch server prefetched {ready} of {count} segments in 60 s\n{}",
                config.server_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to `limit` for the fetch servers of `config` to log their summary.
pub fn wait_summary(config: &FetchConfig, limit: Duration) -> Option<FetchSummary> {
    let deadline = Instant::now() + limit;
    loop {
        let summary = fetch_summary(&config.server_logs());
        if summary.is_some() || Instant::now() > deadline {
            return summary;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = ms(&[9, 1, 5, 3, 7, 2, 4, 6, 8, 10, 11, 12]);
        assert_eq!(percentile(&s, 0.5), Duration::from_millis(6));
        assert_eq!(percentile(&s, 0.95), Duration::from_millis(12));
        assert_eq!(percentile(&ms(&[4]), 0.5), Duration::from_millis(4));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        let t = CallTimes {
            label: "x".into(),
            samples: ms(&[3, 1, 2]),
        };
        assert_eq!(
            (t.median(), t.p95(), t.min()),
            (
                Duration::from_millis(2),
                Duration::from_millis(3),
                Duration::from_millis(1)
            )
        );
    }
}
