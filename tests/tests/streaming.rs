//! `pgagent run` end to end: a real PostgreSQL, real stores (file:// and Garage over HTTP).
//!
//! The invariant under test (DESIGN.md): every WAL byte the server sent before a clean stop is
//! in the store, byte-identical to the server's own `pg_wal`, whatever happened on the way
//! (agent killed, server restarted).

mod common;

use std::time::Duration;

use common::*;
use pgagent_tests::{run_pgagent, wait_until, Garage, PgOptions, PgServer};

fn pg() -> PgServer {
    PgServer::start(PgOptions::default()).expect("start PostgreSQL")
}

/// Load, switch, clean stop; then the store must match the server.
async fn load_switch_stop_compare(rig: &Rig, pg: &PgServer) {
    pg.pgbench_init(2).unwrap();
    let mut agent = rig.spawn(pg);
    pg.pgbench(&["-T", "4", "-c", "2"]).unwrap();
    let switch = lsn(&pg.switch_wal().unwrap());
    // Everything before the switch is in complete segments once the segment closes.
    let target = switch.segment_number(seg()).start_lsn(seg()) + SEG;
    // A little WAL past the switch, flushed when the statement returns: a commit record
    // alone (`txid_current()`) is not flushed at commit but up to `wal_writer_delay` later
    // (RecordTransactionCommit, src/backend/access/transam/xact.c), and the server sends only
    // flushed WAL.
    pg.psql("CREATE TABLE past_the_switch AS SELECT 1 AS one")
        .unwrap();
    // The invariant speaks of WAL sent before the stop: the server's flush position now,
    // once the agent has received it. Read after the stop, it could include WAL flushed
    // since (that commit record, the background writer's running-transactions record).
    let flushed = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    assert!(
        flushed > target,
        "WAL past the switch ({flushed}, switch segment ends at {target})"
    );
    rig.wait_uploaded(&agent, target, Duration::from_secs(60));
    rig.wait_received(&agent, flushed, Duration::from_secs(60));
    let status = agent.terminate();
    assert!(
        status.success(),
        "clean stop failed: {status:?}\n{}",
        agent.output_text()
    );
    assert!(
        agent.output_text().contains("stopped cleanly"),
        "{}",
        agent.output_text()
    );

    let objects = wal_objects(rig.store().await.as_ref()).await;
    assert_no_gap(&objects);
    let compared = assert_identical_to_server(&objects, pg);
    assert!(
        compared >= 2,
        "expected several complete segments, compared {compared}"
    );
    let first = complete_segments(&objects)[0];
    let frontier = bucket_frontier(&objects, first);
    assert!(
        frontier >= flushed,
        "after a clean stop the store must hold all WAL the server had flushed and sent \
         before it ({flushed}), it ends at {frontier}\n{}",
        agent.output_text()
    );
    // The agent's last word: everything it received (up to its stop) is in the bucket.
    let received = rig.status_lsn("received_lsn").expect("final status");
    assert!(
        frontier >= received,
        "received {received} before the stop, the store ends at {frontier}"
    );
    // The slot never claims more than the store holds.
    let restart = slot_restart_lsn(pg).expect("slot exists");
    assert!(restart <= bucket_frontier(&objects, first));
}

#[tokio::test(flavor = "multi_thread")]
async fn fs_store_holds_every_byte_the_server_sent() {
    let pg = pg();
    let rig = Rig::fs();
    load_switch_stop_compare(&rig, &pg).await;

    // `list wal` and `status` read what is there.
    let env = rig.env(&pg);
    let out = run_pgagent(&["list", "wal", "--json"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ranges = listed[0]["ranges"]
        .as_array()
        .expect("ranges of timeline 1");
    assert_eq!(ranges.len(), 1, "one run, no gap: {listed}");
    let objects = wal_objects(rig.store().await.as_ref()).await;
    assert_eq!(
        ranges[0]["segments"].as_u64().unwrap() as usize,
        complete_segments(&objects).len()
    );
    let out = run_pgagent(&["status", "--json"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["stopped"], true,
        "the daemon stopped cleanly: {status}"
    );
    assert_eq!(status["flushed_lsn"], status["uploaded_lsn"], "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_the_stream() {
    let pg = pg();
    let rig = Rig::fs();
    let addr = pgagent_tests::free_addr().unwrap();
    let mut agent = rig.spawn_with(&pg, &[("PGAGENT_METRICS_LISTEN", addr.to_string())]);
    let start = lsn(&pg.switch_wal().unwrap());
    rig.wait_uploaded(
        &agent,
        start.segment_number(seg()).start_lsn(seg()),
        Duration::from_secs(60),
    );
    let before = scrape(addr, "pgagent_wal_uploaded_lsn");
    pg.pgbench_init(1).unwrap();
    let end = lsn(&pg.switch_wal().unwrap());
    rig.wait_uploaded(
        &agent,
        end.segment_number(seg()).start_lsn(seg()),
        Duration::from_secs(60),
    );
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            scrape(addr, "pgagent_wal_uploaded_lsn")
                >= end.segment_number(seg()).start_lsn(seg()).0 as f64
        }
    ));
    assert!(scrape(addr, "pgagent_wal_uploaded_lsn") > before);
    assert!(scrape(addr, "pgagent_uploads_total{kind=\"segment\"}") >= 1.0);
    assert_eq!(scrape(addr, "pgagent_up"), 1.0);
    let raw = scrape(addr, "pgagent_upload_bytes_total{stage=\"raw\"}");
    let stored = scrape(addr, "pgagent_upload_bytes_total{stage=\"stored\"}");
    assert!(
        stored > 0.0 && stored < raw,
        "compression: raw {raw} stored {stored}"
    );
    assert!(agent.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_holds_every_byte_the_server_sent() {
    let garage = Garage::start().expect("start Garage");
    let pg = pg();
    let rig = Rig::s3(garage.store_url("clusters/a"), garage.s3_env());
    load_switch_stop_compare(&rig, &pg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_under_load_then_restart_leaves_no_gap_and_no_conflict() {
    let pg = pg();
    let rig = Rig::fs();
    pg.pgbench_init(2).unwrap();
    let mut agent = rig.spawn(&pg);
    let (first_run, mut agent) = std::thread::scope(|scope| {
        let load = scope.spawn(|| pg.pgbench(&["-T", "6", "-c", "2"]));
        assert!(wait_until(
            Duration::from_secs(20),
            Duration::from_millis(100),
            || { rig.status_lsn("uploaded_lsn").is_some_and(|l| l.0 > 0) }
        ));
        std::thread::sleep(Duration::from_secs(2));
        agent.kill9();
        let first_run = agent.output_text();
        let agent = rig.spawn(&pg);
        load.join().unwrap().expect("pgbench under a killed agent");
        (first_run, agent)
    });
    let switch = lsn(&pg.switch_wal().unwrap());
    let target = switch.segment_number(seg()).start_lsn(seg()) + SEG;
    rig.wait_uploaded(&agent, target, Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let log = format!("{first_run}\n{}", agent.output_text());
    assert!(
        !log.contains("conflict"),
        "a restart must not conflict:\n{log}"
    );

    let objects = wal_objects(rig.store().await.as_ref()).await;
    assert_no_gap(&objects);
    assert!(assert_identical_to_server(&objects, &pg) >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_restart_under_load_is_followed_by_a_reconnect() {
    let mut pg = pg();
    let rig = Rig::fs();
    pg.pgbench_init(1).unwrap();
    let mut agent = rig.spawn(&pg);
    pg.pgbench(&["-T", "2", "-c", "2"]).unwrap();
    pg.restart().unwrap();
    pg.pgbench(&["-T", "2", "-c", "2"]).unwrap();
    let switch = lsn(&pg.switch_wal().unwrap());
    let target = switch.segment_number(seg()).start_lsn(seg()) + SEG;
    rig.wait_uploaded(&agent, target, Duration::from_secs(90));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    assert!(
        agent.output_text().contains("reconnect")
            || agent.output_text().contains("connection lost"),
        "the agent should have noticed the restart:\n{}",
        agent.output_text()
    );
    let objects = wal_objects(rig.store().await.as_ref()).await;
    assert_no_gap(&objects);
    assert!(assert_identical_to_server(&objects, &pg) >= 1);
}
