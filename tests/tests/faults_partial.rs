//! After `kill -9`, the restarted agent receives the segment being filled again from its
//! start. The `.partial` the bucket holds of it must never be replaced by a shorter one
//! (DESIGN.md: "the bucket never goes backwards"), or the slot, confirmed from the longer
//! one, would be ahead of the bucket.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgagent_storage::envelope;
use pgagent_tests::{wait_until, Garage, PgOptions, PgServer};

/// Length of the raw WAL in `key`, if it exists.
async fn partial_len(store: &dyn pgagent_storage::ObjectStore, key: &str) -> Option<u64> {
    match store.get(key).await {
        Ok(body) => Some(envelope::open(&body).unwrap().len() as u64),
        Err(e) if e.is_not_found() => None,
        Err(e) => panic!("{key}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_never_replaces_a_partial_with_a_shorter_one() {
    let garage = Garage::start().expect("start Garage");
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::s3(garage.store_url("shrink"), garage.s3_env());
    let store = rig.store().await;
    pg.psql("CREATE TABLE t (id int, pad text)").unwrap();
    let mut agent = rig.spawn(&pg);
    let start = lsn(&pg.switch_wal().unwrap());
    rig.wait_uploaded(&agent, start, Duration::from_secs(60));
    let begin = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());

    // Fill most of a segment, and let its .partial land.
    pg.psql("INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 10000) g")
        .unwrap();
    let end = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    let segno = end.segment_number(seg());
    assert_eq!(
        segno,
        begin.segment_number(seg()),
        "the writes crossed a segment"
    );
    let key = format!(
        "wal/{}.partial",
        pgagent_protocol::segment_file_name(pgagent_protocol::TimelineId(1), segno, seg())
    );
    let held = end.0 - segno.start_lsn(seg()).0;
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            slot_restart_lsn(&pg).is_some_and(|r| r >= end)
        }),
        "the slot was not confirmed up to the .partial"
    );
    let before = partial_len(store.as_ref(), &key).await.expect(".partial");
    assert!(before >= held, "{before} < {held}");

    agent.kill9();
    let mut agent = rig.spawn(&pg);
    // Watch the object and the slot while the restarted agent receives the segment again.
    let began = Instant::now();
    let mut rounds = 0;
    while began.elapsed() < Duration::from_secs(6) {
        let restart = slot_restart_lsn(&pg).unwrap();
        let len = partial_len(store.as_ref(), &key).await;
        if let Some(len) = len {
            assert!(
                len >= before,
                "the bucket's {key} went from {before} to {len} bytes after a restart"
            );
            assert!(
                restart <= segno.start_lsn(seg()) + len,
                "restart_lsn {restart} is past the bucket's {key} ({len} bytes)"
            );
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(rounds > 50, "{rounds} rounds");

    // The restarted agent goes on uploading what is new.
    pg.psql("INSERT INTO t VALUES (0, 'after')").unwrap();
    let later = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    rig.wait_uploaded(&agent, later, Duration::from_secs(60));
    let after = partial_len(store.as_ref(), &key).await.expect(".partial");
    assert!(after >= later.0 - segno.start_lsn(seg()).0, "{after}");
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let objects = wal_objects(store.as_ref()).await;
    assert_identical_to_server(&objects, &pg);
}
