//! Fault scenario: a restore of a cluster that was itself restored.
//!
//! A base backup of a restored cluster carries the recovery settings of that restore in its
//! `postgresql.auto.conf` (`recovery_target_time`, `restore_command`). PostgreSQL reads them
//! like any other, so a second restore that left them in place would stop at the first
//! restore's target and promote without what was written since (DESIGN.md, "Invariants": a
//! restore writes one clean set of recovery settings).
//!
//! Primary P streams into the store; backup B1; restore B1 to time T1 (given as
//! `select clock_timestamp()` prints it) and promote: R1, on timeline 2. A second agent
//! streams R1 into the same prefix, as a restored primary's would; backup B2 of R1; more
//! writes, time T2, more writes. Then B2 is restored to the end of the WAL and to T2, and
//! each time the table holds what R1 held at that point.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::recovery::*;
use common::*;
use pgagent_tests::{run_pgagent, Garage, PgOptions, PgServer};

/// `pgagent --config <config> restore --pgdata <pgdata> <extra…>`; asserts success and
/// returns the output.
fn restore(config: &Path, pgdata: &Path, extra: &[&str]) -> String {
    let out = run_restore(config, pgdata, extra);
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

/// Takes a base backup of `pg` with the agent environment `env`; asserts it completed.
fn backup(env: &[(&'static str, String)]) {
    let out = run_pgagent(&["backup", "--fast"], env);
    assert!(out.status.success(), "{}", text(&out));
}

/// Switches WAL on `pg` and waits until the agent has uploaded up to the next segment.
fn flush(rig: &Rig, agent: &pgagent_tests::AgentProcess, pg: &PgServer) {
    let switch = lsn(&pg.switch_wal().unwrap());
    let boundary = switch.segment_number(seg()).end_lsn(seg());
    rig.wait_uploaded(agent, boundary, Duration::from_secs(120));
}

/// The recovery settings lines (`recovery_target*`, `restore_command`) of a data
/// directory's `postgresql.auto.conf`.
fn recovery_lines(pgdata: &Path) -> Vec<String> {
    std::fs::read_to_string(pgdata.join("postgresql.auto.conf"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("recovery_target") || l.starts_with("restore_command"))
        .map(str::to_string)
        .collect()
}

/// A server over a data directory restored with `extra` options, started and promoted.
fn restored(config: &Path, extra: &[&str]) -> (PgServer, String, String) {
    let mut pg = PgServer::without_cluster(PgOptions::default()).unwrap();
    let out = restore(config, &pg.data_dir(), extra);
    pg.start_server().unwrap();
    let log = wait_promoted(&pg, Duration::from_secs(120));
    (pg, out, log)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_of_a_restored_cluster_reaches_the_new_target() {
    let started = Instant::now();
    let garage = Garage::start().expect("start Garage");
    let rig1 = Rig::s3(garage.store_url("again"), garage.s3_env());
    let fetch = fetch_config(&rig1.store_url, &garage.s3_env());

    // P, backup B1, the state at T1, more writes after it.
    let mut primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent1 = rig1.spawn_caught_up(&primary);
    create_table_t(&primary);
    load(&primary, "one", 1000);
    backup(&rig1.env(&primary));
    load(&primary, "two", 1000);
    let state_t1 = state(&primary);
    // As PostgreSQL prints it: `2026-11-30 05:37:48.984061+00`.
    let t1 = primary.psql("SELECT clock_timestamp()").unwrap();
    load(&primary, "three", 1000);
    assert_ne!(state(&primary), state_t1);
    flush(&rig1, &agent1, &primary);
    assert!(agent1.terminate().success(), "{}", agent1.output_text());
    primary.stop().unwrap();
    drop(primary);

    // R1: B1 restored to T1, promoted; its own agent streams it into the same prefix.
    let (r1, _, log) = restored(&fetch.config, &["--target-time", t1.trim()]);
    assert!(log.contains("recovery stopping before commit"), "{log}");
    assert_eq!(state(&r1), state_t1, "{}", r1.log_tail());
    let rig2 = Rig::s3(garage.store_url("again"), garage.s3_env());
    let mut agent2 = rig2.spawn_caught_up(&r1);

    // B2 of R1 carries R1's recovery settings; then writes up to T2 and after it.
    backup(&rig2.env(&r1));
    load(&r1, "four", 1000);
    r1.psql("UPDATE t SET v = v || 'u' WHERE id % 7 = 0")
        .unwrap();
    let state_t2 = state(&r1);
    let t2 = r1.psql("SELECT clock_timestamp()").unwrap();
    load(&r1, "five", 1000);
    r1.psql("DELETE FROM t WHERE id % 5 = 0").unwrap();
    let state_end = state(&r1);
    assert_ne!(state_end, state_t2);
    flush(&rig2, &agent2, &r1);
    assert!(agent2.terminate().success(), "{}", agent2.output_text());
    drop(r1);

    // B2 to the end of the WAL: T1, carried in by B2, must not stop it.
    let (latest, out, log) = restored(&fetch.config, &[]);
    assert_eq!(state(&latest), state_end, "{}", latest.log_tail());
    assert!(
        out.contains("removed a recovery setting the restored files carried: postgresql.auto.conf: recovery_target_time = "),
        "{out}"
    );
    let lines = recovery_lines(&latest.data_dir());
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("restore_command = "), "{lines:?}");
    assert_eq!(lines[1], "recovery_target_timeline = 'latest'");
    assert!(!log.contains("recovery stopping"), "{log}");
    drop(latest);

    // B2 to T2: one target, the new one.
    let (at_t2, _, log) = restored(&fetch.config, &["--target-time", t2.trim()]);
    let targets: Vec<_> = recovery_lines(&at_t2.data_dir())
        .into_iter()
        .filter(|l| l.starts_with("recovery_target_time ="))
        .collect();
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert!(log.contains("recovery stopping before commit"), "{log}");
    assert_eq!(state(&at_t2), state_t2, "{}", at_t2.log_tail());
    eprintln!("wall time {:?}", started.elapsed());
}
