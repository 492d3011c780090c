//! The bucket going away and coming back; the offsite lag of a trickle of writes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgagent_protocol::Lsn;
use pgagent_tests::{wait_until, Garage, PgOptions, PgServer, Proxy, ProxyMode};

/// With the store cut off, the slot's restart_lsn never passes what the store holds; when
/// the store returns, everything lands and the slot moves on.
#[tokio::test(flavor = "multi_thread")]
async fn slot_never_passes_the_bucket_while_it_is_cut_off() {
    let garage = Garage::start().expect("start Garage");
    let proxy = Proxy::start(garage.s3_addr());
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::s3(
        garage.store_url_via("cut", &proxy.http_endpoint()),
        garage.s3_env(),
    );
    let direct = open_store(&garage.store_url("cut"), &garage.s3_env()).await;
    pg.pgbench_init(1).unwrap();
    let mut agent = rig.spawn_with(
        &pg,
        &[
            ("PGAGENT_STORE_REQUEST_TIMEOUT", "3s".into()),
            ("PGAGENT_STAGING_QUOTA", "40MiB".into()),
        ],
    );
    let start = lsn(&pg.switch_wal().unwrap());
    rig.wait_uploaded(
        &agent,
        start.segment_number(seg()).start_lsn(seg()),
        Duration::from_secs(60),
    );
    let first = wal_objects(direct.as_ref()).await;
    let first_seg = complete_segments(&first)[0];

    proxy.set_mode(ProxyMode::Refuse);
    // More WAL than the staging quota: receiving must pause, not drop or overflow.
    pg.pgbench_init(4).unwrap();
    let cut_end = lsn(&pg.switch_wal().unwrap());
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut checks = 0;
    while Instant::now() < deadline {
        let objects = wal_objects(direct.as_ref()).await;
        let frontier = bucket_frontier(&objects, first_seg);
        let restart = slot_restart_lsn(&pg).expect("slot");
        assert!(
            restart <= frontier,
            "restart_lsn {restart} passed the store's frontier {frontier} while the store was cut off"
        );
        checks += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(checks >= 5);
    let frontier_cut = bucket_frontier(&wal_objects(direct.as_ref()).await, first_seg);
    assert!(frontier_cut < cut_end, "the cut should have held WAL back");
    let status = rig.status().unwrap();
    assert!(status["upload_lag_bytes"].as_u64().unwrap() > 0, "{status}");
    assert!(
        status["last_error"].is_string(),
        "the error is shown: {status}"
    );

    proxy.set_mode(ProxyMode::Pass);
    let target = cut_end.segment_number(seg()).start_lsn(seg());
    rig.wait_uploaded(&agent, target, Duration::from_secs(120));
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            slot_restart_lsn(&pg).is_some_and(|r| r >= target)
        }),
        "the slot did not move on once the store was back"
    );
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let objects = wal_objects(direct.as_ref()).await;
    assert_no_gap(&objects);
    assert!(assert_identical_to_server(&objects, &pg) >= 2);
}

/// With a trickle of writes, the `.partial` in the bucket trails the server's flush position
/// by at most about two `partial_interval`s.
#[tokio::test(flavor = "multi_thread")]
async fn offsite_lag_of_a_trickle_is_about_two_partial_intervals() {
    let garage = Garage::start().expect("start Garage");
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::s3(garage.store_url("lag"), garage.s3_env());
    pg.psql("CREATE TABLE trickle (id serial, at timestamptz default now())")
        .unwrap();
    let interval = Duration::from_secs(1);
    let mut agent = rig.spawn_with(&pg, &[("PGAGENT_WAL_PARTIAL_INTERVAL", "1s".into())]);
    let start = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    rig.wait_uploaded(&agent, start, Duration::from_secs(60));
    let store = rig.store().await;
    let first = start.segment_number(seg());

    // Samples of (when, server flush position).
    let mut server: Vec<(Instant, Lsn)> = Vec::new();
    let mut worst = Duration::ZERO;
    let began = Instant::now();
    let mut checked = 0;
    while began.elapsed() < Duration::from_secs(12) {
        pg.psql("INSERT INTO trickle DEFAULT VALUES").unwrap();
        server.push((
            Instant::now(),
            lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap()),
        ));
        let frontier = bucket_frontier(&wal_objects(store.as_ref()).await, first);
        let now = Instant::now();
        // The lag is the age of the newest server position the bucket does not yet cover.
        if let Some((at, _)) = server.iter().find(|(_, l)| *l > frontier) {
            worst = worst.max(now - *at);
        }
        checked += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(checked > 20);
    assert!(
        worst <= interval * 2 + Duration::from_millis(500),
        "the bucket trailed the server by {worst:?} (partial_interval {interval:?})"
    );
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

/// A stop during a bucket outage is prompt (`wal.stop_timeout`), confirms nothing it could
/// not upload, and the next start uploads what staging kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_an_outage_is_prompt_and_loses_nothing() {
    let garage = Garage::start().expect("start Garage");
    let proxy = Proxy::start(garage.s3_addr());
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::s3(
        garage.store_url_via("stop", &proxy.http_endpoint()),
        garage.s3_env(),
    );
    let direct = open_store(&garage.store_url("stop"), &garage.s3_env()).await;
    let env = [
        ("PGAGENT_STORE_REQUEST_TIMEOUT", "2s".into()),
        ("PGAGENT_WAL_STOP_TIMEOUT", "3s".into()),
    ];
    let mut agent = rig.spawn_with(&pg, &env);
    let start = lsn(&pg.switch_wal().unwrap());
    rig.wait_uploaded(&agent, start, Duration::from_secs(60));

    proxy.set_mode(ProxyMode::Refuse);
    pg.pgbench_init(1).unwrap();
    let cut_end = lsn(&pg.switch_wal().unwrap());
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            rig.status_lsn("received_lsn").is_some_and(|l| l >= cut_end)
        }),
        "the agent stopped receiving while the bucket was away"
    );
    let asked = Instant::now();
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "a stop during an outage took {took:?} (wal.stop_timeout = 3s)"
    );
    let restart = slot_restart_lsn(&pg).expect("slot");
    let frontier = bucket_frontier(
        &wal_objects(direct.as_ref()).await,
        start.segment_number(seg()),
    );
    assert!(
        restart <= frontier,
        "restart_lsn {restart} passed the store's frontier {frontier}"
    );
    let staged = std::fs::read_dir(rig.staging().join("wal"))
        .unwrap()
        .count();
    assert!(staged > 0, "staging kept nothing of what was not uploaded");

    proxy.set_mode(ProxyMode::Pass);
    let mut agent = rig.spawn_with(&pg, &env);
    rig.wait_uploaded(&agent, cut_end, Duration::from_secs(120));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let objects = wal_objects(direct.as_ref()).await;
    assert_no_gap(&objects);
    assert!(assert_identical_to_server(&objects, &pg) >= 2);
}
