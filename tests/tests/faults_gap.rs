//! Continuity at start: the agent back without its staging directory after it had confirmed
//! WAL from staging (`wal.confirm = "staging"`) that never reached the bucket. The slot's
//! `restart_lsn` is then ahead of the bucket's WAL: the agent streams what is in between from
//! the server while the server still has it, and otherwise reports the gap instead of
//! jumping it in silence.

mod common;

use std::time::Duration;

use common::*;
use pgagent_protocol::Lsn;
use pgagent_tests::{
    free_port, wait_until, AgentProcess, Garage, PgOptions, PgServer, Proxy, ProxyMode,
};

/// Streams with `confirm = "staging"` while the bucket is cut off, so the slot moves past
/// the bucket; then kills the agent and removes its staging directory. Returns the end of
/// the bucket's WAL and the server's position at the kill.
async fn confirm_from_staging_then_lose_it(
    pg: &PgServer,
    rig: &Rig,
    proxy: &Proxy,
    env: &[(&'static str, String)],
) -> (Lsn, Lsn) {
    let mut agent = rig.spawn_with(pg, env);
    let start = lsn(&pg.switch_wal().unwrap());
    rig.wait_uploaded(&agent, start, Duration::from_secs(60));
    let bucket_end = start;

    proxy.set_mode(ProxyMode::Refuse);
    pg.psql("CREATE TABLE t (id int, pad text)").unwrap();
    for _ in 0..4 {
        pg.psql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
            .unwrap();
        pg.switch_wal().unwrap();
    }
    let end = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            slot_restart_lsn(pg).is_some_and(|r| r >= end.segment_number(seg()).start_lsn(seg()))
        }),
        "the slot did not follow staging (confirm = staging)"
    );
    kill_and_lose_staging(&mut agent, rig);
    (bucket_end, end)
}

fn kill_and_lose_staging(agent: &mut AgentProcess, rig: &Rig) {
    agent.kill9();
    std::fs::remove_dir_all(rig.staging()).unwrap();
}

fn env() -> Vec<(&'static str, String)> {
    vec![
        ("PGAGENT_WAL_CONFIRM", "staging".into()),
        ("PGAGENT_STORE_REQUEST_TIMEOUT", "2s".into()),
    ]
}

/// The server still has the WAL between the bucket's end and the slot: the agent streams it
/// from there, and the bucket ends up with every segment.
#[tokio::test(flavor = "multi_thread")]
async fn wal_the_bucket_lacks_is_streamed_again_while_the_server_has_it() {
    let garage = Garage::start().expect("start Garage");
    let proxy = Proxy::start(garage.s3_addr());
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::s3(
        garage.store_url_via("refill", &proxy.http_endpoint()),
        garage.s3_env(),
    );
    let direct = open_store(&garage.store_url("refill"), &garage.s3_env()).await;
    let (_, end) = confirm_from_staging_then_lose_it(&pg, &rig, &proxy, &env()).await;

    proxy.set_mode(ProxyMode::Pass);
    let mut agent = rig.spawn_with(&pg, &env());
    let target = end.segment_number(seg()).start_lsn(seg());
    rig.wait_uploaded(&agent, target, Duration::from_secs(120));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let objects = wal_objects(direct.as_ref()).await;
    assert_no_gap(&objects);
    assert!(assert_identical_to_server(&objects, &pg) >= 4);
    assert!(
        rig.status().unwrap()["wal_gap"].is_null(),
        "{}",
        rig.status().unwrap()
    );
}

/// The server no longer has that WAL: the gap is reported in `status`, `/readyz` and
/// `pgagent_wal_gap_bytes`, and streaming goes on from the slot.
#[tokio::test(flavor = "multi_thread")]
async fn a_gap_the_server_cannot_fill_is_reported_not_jumped_in_silence() {
    let garage = Garage::start().expect("start Garage");
    let proxy = Proxy::start(garage.s3_addr());
    let pg = PgServer::start(PgOptions {
        wal_keep_size: "0".to_owned(),
        ..PgOptions::default()
    })
    .unwrap();
    let rig = Rig::s3(
        garage.store_url_via("gap", &proxy.http_endpoint()),
        garage.s3_env(),
    );
    let (bucket_end, end) = confirm_from_staging_then_lose_it(&pg, &rig, &proxy, &env()).await;
    // With nothing keeping it, a checkpoint removes the WAL below the slot.
    pg.psql("CHECKPOINT").unwrap();
    let first_missing = pgagent_protocol::segment_file_name(
        pgagent_protocol::TimelineId(1),
        bucket_end.segment_number(seg()),
        seg(),
    );
    assert!(
        pg.wal_file(&first_missing).is_none(),
        "{first_missing} is still in pg_wal: the test needs it gone"
    );

    proxy.set_mode(ProxyMode::Pass);
    let port = free_port().unwrap();
    let mut with_metrics = env();
    with_metrics.push(("PGAGENT_METRICS_LISTEN", format!("127.0.0.1:{port}")));
    let mut agent = rig.spawn_with(&pg, &with_metrics);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            rig.status().is_some_and(|s| s["wal_gap"].is_string())
        }),
        "no gap reported\n{}",
        agent.output_text()
    );
    let status = rig.status().unwrap();
    let gap = status["wal_gap"].as_str().unwrap().to_string();
    let (from, to) = gap.split_once('-').expect("from-to");
    let (from, to) = (lsn(from), lsn(to));
    assert!(
        bucket_end <= from && from < to && to <= end,
        "gap {gap}: the bucket ended at {bucket_end}, the server at {end}"
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let ready = http_get(addr, "/readyz");
    assert!(
        ready.contains("503") && ready.contains("missing from the store"),
        "{ready}"
    );
    assert!(scrape(addr, "pgagent_wal_gap_bytes") > 0.0);
    let out = agent.output_text();
    assert!(out.contains("WAL GAP"), "{out}");
    // Streaming goes on past the gap.
    let after = lsn(&pg.switch_wal().unwrap());
    rig.wait_uploaded(&agent, after.max(end), Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());
}
