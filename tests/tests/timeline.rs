//! Timelines and synchronous-standby mode.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgagent_protocol::{SegNo, WalFileName};
use pgagent_tests::{wait_until, PgOptions, PgServer};

/// The server the agent streams from is restarted as a standby and promoted: the agent
/// follows the switch to timeline 2, uploads `00000002.history`, keeps the old timeline's
/// last segment as `.partial`, and streams on.
#[tokio::test(flavor = "multi_thread")]
async fn follows_a_promotion_to_the_next_timeline() {
    let mut pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::fs();
    pg.pgbench_init(1).unwrap();
    let mut agent = rig.spawn(&pg);
    let before = lsn(&pg.switch_wal().unwrap());
    rig.wait_uploaded(
        &agent,
        before.segment_number(seg()).start_lsn(seg()),
        Duration::from_secs(60),
    );

    common::recovery::promote_to_next_timeline(&mut pg);
    pg.pgbench(&["-T", "2", "-c", "2"]).unwrap();
    let end = lsn(&pg.switch_wal().unwrap());
    let target = end.segment_number(seg()).start_lsn(seg()) + SEG;
    pg.psql("SELECT txid_current()").unwrap();
    assert!(
        wait_until(Duration::from_secs(90), Duration::from_millis(200), || {
            rig.status().is_some_and(|s| s["timeline"] == 2)
                && rig.status_lsn("uploaded_lsn").is_some_and(|l| l >= target)
        }),
        "agent did not follow timeline 2 up to {target}: {:?}\n{}",
        rig.status(),
        agent.output_text()
    );
    assert!(agent.terminate().success(), "{}", agent.output_text());

    let objects = wal_objects(rig.store().await.as_ref()).await;
    let history = objects
        .get("00000002.history")
        .expect("history file uploaded");
    let history = String::from_utf8(history.clone()).unwrap();
    assert!(history.starts_with("1\t"), "{history}");
    let mut tli2 = Vec::new();
    let mut tli1_partial = false;
    for (name, raw) in &objects {
        if stored_piece(name, raw).is_some() {
            tli1_partial |= name.starts_with("00000001");
            continue;
        }
        if let Some(WalFileName::Segment { tli, segno }) = WalFileName::parse(name, seg()) {
            if tli.0 == 2 {
                tli2.push(segno);
            }
        }
    }
    assert!(!tli2.is_empty(), "no complete segment on timeline 2");
    assert!(
        tli1_partial,
        "the old timeline's last segment is kept as deltas: {:?}",
        objects.keys()
    );
    for w in tli2.windows(2) {
        assert_eq!(w[1], w[0].next(), "gap on timeline 2");
    }
    assert!(assert_identical_to_server(&objects, &pg) >= 2);
}

/// Listed in `synchronous_standby_names`, the agent in synchronous mode confirms a commit
/// only once its WAL is in the bucket, and does so without waiting for `partial_interval`.
#[tokio::test(flavor = "multi_thread")]
async fn synchronous_mode_puts_committed_wal_in_the_bucket_before_commit_returns() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    // Set after start-up: with it in place, the harness's own set-up would wait for a standby.
    pg.append_conf(&["synchronous_standby_names = 'pgagent'"])
        .unwrap();
    pg.reload().unwrap();
    let rig = Rig::fs();
    let mut agent = rig.spawn_with(
        &pg,
        &[
            ("PGAGENT_WAL_SYNCHRONOUS", "true".into()),
            ("PGAGENT_WAL_PARTIAL_INTERVAL", "30s".into()),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            pg.psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pgagent'")
                .is_ok_and(|s| s.trim() == "sync")
        }),
        "the agent is not a synchronous standby\n{}",
        agent.output_text()
    );
    pg.psql("CREATE TABLE sync_t (v int)").unwrap();
    let store = rig.store().await;
    for i in 0..5 {
        let t = Instant::now();
        let inserted = pg
            .psql(&format!(
                "INSERT INTO sync_t VALUES ({i}) RETURNING pg_current_wal_insert_lsn()"
            ))
            .unwrap();
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "commit waited {took:?}: partial_interval, not the upload, paced it"
        );
        let objects = wal_objects(store.as_ref()).await;
        let first = inserted_segment(&objects);
        let frontier = bucket_frontier(&objects, first);
        assert!(
            frontier >= lsn(&inserted),
            "commit {i} returned but the bucket holds WAL only up to {frontier} (< {inserted})"
        );
    }
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

fn inserted_segment(objects: &std::collections::BTreeMap<String, Vec<u8>>) -> SegNo {
    objects
        .iter()
        .filter_map(|(n, raw)| match WalFileName::parse(n, seg()) {
            Some(WalFileName::Segment { segno, .. }) => Some(segno),
            _ => stored_piece(n, raw).map(|(segno, _)| segno),
        })
        .min()
        .expect("some WAL in the store")
}
