//! One timed archive recovery: the base backup in a fresh data directory, `recovery.signal`,
//! a `restore_command`, no recovery target; timed from starting the postmaster until it has
//! promoted.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgagent_protocol::Lsn;
use pgagent_tests::{PgOptions, PgServer};

use super::logscan::{phases, recovery_completed, redo_done, restored_files, Phases};
use super::prepare::server_conf;
use crate::walcache::is_segment_name;

/// Longest a replay may take.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often `postmaster.pid` is read while waiting for promotion.
const POLL: Duration = Duration::from_millis(10);
/// Line of `postmaster.pid` holding the server status, from 1, and the status of a server
/// accepting connections (`LOCK_FILE_LINE_PM_STATUS`, `PM_STATUS_READY` in
/// `src/include/utils/pidfile.h`). With `hot_standby = off` the line reads `standby` from
/// the start of recovery and `ready` only once the server has promoted.
const PM_STATUS_LINE: usize = 8;
const PM_STATUS_READY: &str = "ready";

/// What one replay measured and logged.
#[derive(Debug, Clone)]
pub struct Replay {
    /// From spawning the postmaster until `postmaster.pid` said `ready` (recovery ended and
    /// the server promoted).
    pub wall: Duration,
    /// Every file `restore_command` delivered, in order (`restored log file` lines).
    pub restored: Vec<String>,
    /// Where redo ended.
    pub redo_done: Lsn,
    /// Where the time went, from the log's timestamps.
    pub phases: Option<Phases>,
}

impl Replay {
    /// The distinct segments restored, in the order first restored.
    pub fn segments(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = Vec::new();
        for name in self.restored.iter().filter(|n| is_segment_name(n)) {
            if !seen.contains(&name.as_str()) {
                seen.push(name);
            }
        }
        seen
    }
}

/// Recovers a copy of `base` with the `restore_command` that `restore_command(pgdata)` gives
/// for the new data directory (a shell command line, as PostgreSQL runs it with `sh -c`)
/// and times it. The cluster is stopped and removed afterwards.
///
/// Errors: the copy or the start fails, the server exits, recovery does not end within an
/// hour, or the log lacks `redo done at` / `archive recovery complete`; the error carries the
/// tail of the server log.
pub fn replay(
    base: &Path,
    restore_command: impl FnOnce(&Path) -> anyhow::Result<String>,
) -> anyhow::Result<Replay> {
    let mut extra_conf = server_conf();
    // No connections during recovery: `ready` in postmaster.pid then means promoted.
    extra_conf.push("hot_standby = off".to_owned());
    let mut pg = PgServer::without_cluster(PgOptions {
        extra_conf,
        ..PgOptions::default()
    })?;
    copy_base(base, &pg.data_dir())?;
    fs::write(pg.data_dir().join("recovery.signal"), "")?;
    pg.append_conf(&[&format!(
        "restore_command = {}",
        conf_string(&restore_command(&pg.data_dir())?)
    )])?;
    // Nothing left to write back from the copy while the clock runs.
    Command::new("sync").status().context("sync")?;

    let started = Instant::now();
    pg.start_server()?;
    wait_promoted(&pg, started)?;
    let wall = started.elapsed();
    if pg.psql("SELECT pg_is_in_recovery()")? != "f" {
        bail!(
            "postmaster.pid says ready but the server is in recovery\n{}",
            pg.log_tail()
        );
    }
    let log = fs::read_to_string(pg.log_file()).context("read the server log")?;
    pg.stop()?;
    if !recovery_completed(&log) {
        bail!(
            "no \"archive recovery complete\" in the server log\n{}",
            pg.log_tail()
        );
    }
    let redo_done = redo_done(&log)
        .with_context(|| format!("no \"redo done at\" in the server log\n{}", pg.log_tail()))?;
    Ok(Replay {
        wall,
        restored: restored_files(&log),
        redo_done,
        phases: phases(&log),
    })
}

/// Checks that a replay restored exactly `expected` (every file, in order, each counted once
/// however often PostgreSQL asked for it) and, when `redo_end` is known from an earlier
/// case, that redo ended at the same LSN.
pub fn check_replay(
    replay: &Replay,
    expected: &[String],
    redo_end: Option<Lsn>,
) -> anyhow::Result<()> {
    let got = replay.segments();
    if got != expected {
        let missing: Vec<&String> = expected
            .iter()
            .filter(|e| !got.contains(&e.as_str()))
            .collect();
        bail!(
            "restored {} of {} segments (missing {missing:?}; restored {got:?})",
            got.len(),
            expected.len()
        );
    }
    if let Some(end) = redo_end.filter(|&e| e != replay.redo_done) {
        bail!(
            "redo ended at {}, the first case's at {end}",
            replay.redo_done
        );
    }
    Ok(())
}

/// `cp -a <base> <data>`: the ownership (the PostgreSQL OS user) and modes are kept.
fn copy_base(base: &Path, data: &Path) -> anyhow::Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(base)
        .arg(data)
        .status()
        .context("run cp")?;
    if !status.success() {
        bail!(
            "cp -a {} {} failed: {status}",
            base.display(),
            data.display()
        );
    }
    Ok(())
}

/// Waits until `postmaster.pid` shows [`PM_STATUS_READY`].
fn wait_promoted(pg: &PgServer, started: Instant) -> anyhow::Result<()> {
    let pid_file = pg.data_dir().join("postmaster.pid");
    loop {
        match fs::read_to_string(&pid_file) {
            Ok(text) => {
                if pm_status(&text) == Some(PM_STATUS_READY) {
                    return Ok(());
                }
            }
            Err(_) => bail!("the server stopped during recovery\n{}", pg.log_tail()),
        }
        if started.elapsed() > REPLAY_TIMEOUT {
            bail!(
                "recovery still running after {REPLAY_TIMEOUT:?}\n{}",
                pg.log_tail()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The status line of `postmaster.pid`, if written yet.
fn pm_status(pid_file: &str) -> Option<&str> {
    pid_file.lines().nth(PM_STATUS_LINE - 1).map(str::trim)
}

/// A `postgresql.conf` string literal: single quotes, with `'` doubled (PostgreSQL docs,
/// section 20.1.2 "Parameter Interaction via the Configuration File").
pub fn conf_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay_of(restored: &[&str], redo: u64) -> Replay {
        Replay {
            wall: Duration::from_secs(1),
            restored: restored.iter().map(|s| s.to_string()).collect(),
            redo_done: Lsn(redo),
            phases: None,
        }
    }

    #[test]
    fn a_replay_must_restore_every_segment_once_in_order() {
        let expected = vec![
            "000000010000000000000002".to_owned(),
            "000000010000000000000003".to_owned(),
        ];
        let r = replay_of(
            &[
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000000000003",
                "00000002.history",
            ],
            0x3000100,
        );
        assert_eq!(
            r.segments(),
            ["000000010000000000000002", "000000010000000000000003"]
        );
        check_replay(&r, &expected, None).unwrap();
        check_replay(&r, &expected, Some(Lsn(0x3000100))).unwrap();
        assert!(check_replay(&r, &expected, Some(Lsn(0x3000000))).is_err());
        let short = replay_of(&["000000010000000000000002"], 0x3000100);
        let err = check_replay(&short, &expected, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("restored 1 of 2"), "{err}");
    }

    #[test]
    fn reads_the_postmaster_status_and_quotes_settings() {
        let pid = "123\n/data\n1700000000\n5432\n/run\n127.0.0.1\n  1 2\nready   \n";
        assert_eq!(pm_status(pid), Some("ready"));
        assert_eq!(pm_status("123\n/data\n"), None);
        assert_eq!(
            conf_string("cp '/a b'/%f \"%p\""),
            "'cp ''/a b''/%f \"%p\"'"
        );
    }
}
