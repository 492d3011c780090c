//! Drill records: `drills/<id>.json` (DESIGN.md, "Store layout"), what one restore drill
//! found: the tier that served, the times, the point recovery reached, and each check.
//!
//! Plain data, like the snapshot record beside it: the agent's drill fills it in and
//! prints it, the agent's store reads and writes it, and neither needs the other for that.

use serde::{Deserialize, Serialize};

/// The report of one drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// Drill id: its start time, `YYYYMMDDTHHMMSS.mmmZ`.
    pub id: String,
    /// Start, RFC 3339 UTC.
    pub started_at: String,
    /// End, RFC 3339 UTC.
    pub finished_at: String,
    /// Every check passed.
    pub passed: bool,
    /// The backup asked for (`latest` when none was named).
    pub backup: String,
    /// The recovery target, as `pgagent restore` describes it.
    pub target: String,
    /// The tier that served: `snapshot` or `bucket`; `None` when the restore failed.
    pub tier: Option<String>,
    /// What was restored (`backup <id> (…)` or `snapshot <id> (…)`).
    pub source: Option<String>,
    /// Seconds from the start to a restored data directory.
    pub restore_seconds: f64,
    /// Seconds from starting the server to its promotion (or to the failure).
    pub replay_seconds: Option<f64>,
    /// Seconds of the whole drill.
    pub duration_seconds: f64,
    /// Where recovery ended, once the server promoted.
    pub reached: Option<Reached>,
    /// The end of the newest WAL in the store when the drill checked, and its timeline.
    pub store_end: Option<String>,
    /// Bytes of WAL in the store past the point reached.
    pub behind_store_bytes: Option<u64>,
    /// The live server's current WAL position, when it answered.
    pub live_lsn: Option<String>,
    /// Bytes of WAL the live server has past the point reached.
    pub behind_live_bytes: Option<u64>,
    /// The server binaries used.
    pub pg_bin_dir: Option<String>,
    /// Where the scratch directory was left (`--keep`).
    pub kept: Option<String>,
    /// With several stores read as one: what each served the restore (bytes, objects,
    /// requests) and, when `--store` left stores out, where the WAL of the ones used ends
    /// against the others; empty otherwise (and in records written before it existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<String>,
    /// Each check, in order.
    pub checks: Vec<Check>,
}

/// Where a drill's recovery ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reached {
    /// `pg_last_wal_replay_lsn()`: the end of the last WAL record replayed.
    pub lsn: String,
    /// `pg_last_xact_replay_timestamp()`: the commit time of the last transaction
    /// replayed, when there was one.
    pub last_commit: Option<String>,
    /// The timeline the server promoted to.
    pub timeline: Option<u32>,
}

/// One check and its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `restore`, `start`, `recovery`, `end of WAL`, `connect`, `databases`, `tables`,
    /// `amcheck`, `check_sql`.
    pub name: String,
    /// Whether it passed (a check that did not apply passes, saying why).
    pub passed: bool,
    /// What was found.
    pub detail: String,
}

impl DrillReport {
    /// An empty report of drill `id`, started at `started_at` (RFC 3339), of `backup`
    /// (`latest` when none was named) to `target` (as `pgagent restore` describes it).
    pub fn new(id: &str, started_at: String, backup: String, target: String) -> DrillReport {
        DrillReport {
            id: id.to_string(),
            started_at,
            finished_at: String::new(),
            passed: false,
            backup,
            target,
            tier: None,
            source: None,
            restore_seconds: 0.0,
            replay_seconds: None,
            duration_seconds: 0.0,
            reached: None,
            store_end: None,
            behind_store_bytes: None,
            live_lsn: None,
            behind_live_bytes: None,
            pg_bin_dir: None,
            kept: None,
            stores: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Records a passed check.
    pub fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, true, detail.into());
    }

    /// Records a failed check.
    pub fn fail(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, false, detail.into());
    }

    fn push(&mut self, name: &str, passed: bool, detail: String) {
        self.checks.push(Check {
            name: name.to_string(),
            passed,
            detail,
        });
    }

    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// Restore plus replay: how long the store took to give back a running server.
    pub fn rto_seconds(&self) -> Option<f64> {
        self.replay_seconds.map(|r| self.restore_seconds + r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_passes_only_with_every_check_and_round_trips() {
        let mut r = DrillReport::new(
            "20261130T120000.000Z",
            "2026-11-30T12:00:00Z".into(),
            "latest".into(),
            "the end of the WAL in the store".into(),
        );
        r.pass("restore", "backup b1");
        r.fail("check_sql", "returned 0");
        assert_eq!(
            r.failed().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["check_sql"]
        );
        r.restore_seconds = 2.0;
        assert_eq!(r.rto_seconds(), None);
        r.replay_seconds = Some(3.5);
        assert_eq!(r.rto_seconds(), Some(5.5));
        let back: DrillReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
