//! Set-up shared by the drill tests: a streamed store, the drill's environment, and
//! reading its JSON report.

use std::time::Duration;

use pgagent_protocol::Lsn;
use pgagent_tests::{run_pgagent, PgOptions, PgServer};

use super::recovery::{create_table_t, load};
use super::{lsn, text, Rig};

/// A server streamed into `rig`'s store with one base backup and `segments` more complete
/// segments written after it (each with rows of table `t`); the agent is stopped once the
/// bucket holds everything. Returns the server and its flush position at the end.
pub fn streamed(rig: &Rig, segments: u32) -> (PgServer, Lsn) {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    create_table_t(&pg);
    load(&pg, "base", 500);
    let mut agent = rig.spawn_caught_up(&pg);
    let out = run_pgagent(&["backup", "--fast"], &rig.env(&pg));
    assert!(out.status.success(), "pgagent backup: {}", text(&out));
    for i in 0..segments {
        load(&pg, &format!("after {i}"), 200);
        pg.switch_wal().unwrap();
    }
    load(&pg, "last", 50);
    let end = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    (pg, end)
}

/// The environment of a drill of `rig`'s store: the agent's, `pg`'s binaries, and a
/// `drill.dir` in the rig's directory.
pub fn drill_env(rig: &Rig, pg: &PgServer) -> Vec<(&'static str, String)> {
    let mut env = rig.env(pg);
    env.push((
        "PGAGENT_DRILL_PG_BIN_DIR",
        pg.bin_dir().display().to_string(),
    ));
    env.push((
        "PGAGENT_DRILL_DIR",
        rig.dir.path().join("drill").display().to_string(),
    ));
    env
}

/// `pgagent drill --json` for `rig`'s store with the server's binaries and `extra`
/// settings; returns the exit code and the report.
pub fn drill(
    rig: &Rig,
    pg: &PgServer,
    extra: &[(&'static str, String)],
) -> (Option<i32>, serde_json::Value, String) {
    let mut env = drill_env(rig, pg);
    env.extend(extra.iter().cloned());
    let out = run_pgagent(&["drill", "--json"], &env);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), report, text(&out))
}

/// The names of the failed checks of a report.
pub fn failed(report: &serde_json::Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| c["passed"] == false)
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}
