//! After `kill -9`, the restarted agent receives the segment being filled again from its
//! start. The run of deltas the bucket holds of it must never shrink (DESIGN.md: "the bucket
//! never goes backwards"), or the slot, confirmed from the longer run, would be ahead of the
//! bucket; and the restarted agent goes on from the end of that run instead of uploading
//! the segment's WAL again from its start.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgagent_protocol::{SegNo, TimelineId};
use pgagent_storage::deltas::{assemble, deltas_prefix, Delta, Piece};
use pgagent_tests::{wait_until, Garage, PgOptions, PgServer};

/// The deltas the bucket holds of `segno` (timeline 1), read by name, and the end of their
/// run from the segment start (offsets in bytes).
async fn deltas_of(store: &dyn pgagent_storage::ObjectStore, segno: SegNo) -> (Vec<Delta>, u64) {
    let prefix = deltas_prefix(TimelineId(1), segno, seg());
    let deltas: Vec<Delta> = store
        .list(&prefix)
        .await
        .unwrap()
        .iter()
        .map(|m| Delta::parse_key(&m.key, seg()).unwrap_or_else(|| panic!("{}", m.key)))
        .collect();
    let pieces: Vec<Piece> = deltas.iter().map(|d| Piece::delta(d, seg())).collect();
    (deltas, assemble(&pieces).end)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_continues_the_run_of_deltas_and_never_shrinks_it() {
    let garage = Garage::start().expect("start Garage");
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::s3(garage.store_url("shrink"), garage.s3_env());
    let store = rig.store().await;
    pg.psql("CREATE TABLE t (id int, pad text)").unwrap();
    let mut agent = rig.spawn(&pg);
    let start = lsn(&pg.switch_wal().unwrap());
    rig.wait_uploaded(&agent, start, Duration::from_secs(60));
    let begin = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());

    // Fill most of a segment, and let its deltas land.
    pg.psql("INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 10000) g")
        .unwrap();
    let end = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    let segno = end.segment_number(seg());
    assert_eq!(
        segno,
        begin.segment_number(seg()),
        "the writes crossed a segment"
    );
    let held = end.0 - segno.start_lsn(seg()).0;
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            slot_restart_lsn(&pg).is_some_and(|r| r >= end)
        }),
        "the slot was not confirmed up to the deltas"
    );
    let (_, before) = deltas_of(store.as_ref(), segno).await;
    assert!(before >= held, "{before} < {held}");

    agent.kill9();
    let mut agent = rig.spawn(&pg);
    // Watch the object and the slot while the restarted agent receives the segment again.
    let began = Instant::now();
    let mut rounds = 0;
    while began.elapsed() < Duration::from_secs(6) {
        let restart = slot_restart_lsn(&pg).unwrap();
        let (_, len) = deltas_of(store.as_ref(), segno).await;
        assert!(
            len >= before,
            "the run of deltas of {segno:?} went from {before} to {len} bytes after a restart"
        );
        assert!(
            restart <= segno.start_lsn(seg()) + len,
            "restart_lsn {restart} is past the run of deltas ({len} bytes)"
        );
        rounds += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(rounds > 50, "{rounds} rounds");

    // The restarted agent goes on uploading what is new.
    pg.psql("INSERT INTO t VALUES (0, 'after')").unwrap();
    let later = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    rig.wait_uploaded(&agent, later, Duration::from_secs(60));
    let (deltas, after) = deltas_of(store.as_ref(), segno).await;
    assert!(after >= later.0 - segno.start_lsn(seg()).0, "{after}");
    let from_start = deltas.iter().filter(|d| d.start == 0).count();
    assert_eq!(
        from_start, 1,
        "the restarted agent uploaded the segment again from its start: {deltas:?}"
    );
    assert!(
        deltas.iter().any(|d| d.start == before),
        "no delta continues the run at {before}: {deltas:?}"
    );
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let objects = wal_objects(store.as_ref()).await;
    assert_identical_to_server(&objects, &pg);
}
