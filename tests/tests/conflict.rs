//! A segment name already in the store with other content (a diverged history, a mixed-up
//! prefix) is an alarm: never overwritten, counted, shown, and not confirmed to the server.

mod common;

use std::time::Duration;

use common::*;
use pgagent_protocol::{segment_file_name, TimelineId};
use pgagent_storage::envelope;
use pgagent_tests::{wait_until, PgOptions, PgServer};

#[tokio::test(flavor = "multi_thread")]
async fn a_conflicting_segment_is_never_overwritten_nor_confirmed() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::fs();
    let addr = pgagent_tests::free_addr().unwrap();
    let mut agent = rig.spawn_with(&pg, &[("PGAGENT_METRICS_LISTEN", addr.to_string())]);
    let start = lsn(&pg.switch_wal().unwrap());
    let current = start.segment_number(seg());
    rig.wait_uploaded(&agent, current.start_lsn(seg()), Duration::from_secs(60));

    // Plant different content under the name of the segment after the current one.
    let victim = current.next();
    let name = segment_file_name(TimelineId(1), victim, seg());
    let planted = envelope::seal(b"not this cluster's WAL", 3);
    let store = rig.store().await;
    store
        .put(&format!("wal/{name}"), planted.body.clone())
        .await
        .unwrap();

    pg.psql("CREATE TABLE c AS SELECT generate_series(1, 1000) g")
        .unwrap();
    pg.switch_wal().unwrap(); // completes `current`
    pg.psql("INSERT INTO c SELECT generate_series(1, 1000)")
        .unwrap();
    pg.switch_wal().unwrap(); // completes `victim`
    pg.psql("INSERT INTO c SELECT generate_series(1, 1000)")
        .unwrap();

    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            rig.status().is_some_and(|s| {
                s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("conflict") || e.contains("differ"))
            })
        }),
        "the conflict is not shown in status: {:?}\n{}",
        rig.status(),
        agent.output_text()
    );
    let metrics = http_get(addr, "/metrics");
    assert!(metrics.contains("pgagent_conflicts_total 1"), "{metrics}");
    // The segment before the conflict landed; nothing at or past it is confirmed.
    let restart = slot_restart_lsn(&pg).unwrap();
    assert!(
        restart <= victim.start_lsn(seg()),
        "restart_lsn {restart} passed the conflicting segment"
    );
    let flushed = rig.status_lsn("flushed_lsn").unwrap();
    assert!(flushed <= victim.start_lsn(seg()), "flushed {flushed}");
    let kept = store.get(&format!("wal/{name}")).await.unwrap();
    assert_eq!(kept, planted.body, "the existing object was overwritten");
    assert!(
        agent.output_text().contains("never overwritten"),
        "{}",
        agent.output_text()
    );
    // A clean stop does not wait on the conflict: the segment stays in staging for the next
    // start, and the slot still holds its WAL on the server.
    let status = agent.terminate();
    assert!(status.success(), "{status:?}\n{}", agent.output_text());
    assert!(
        staging_path(&rig, &name).exists(),
        "the conflicting segment stays in staging"
    );
    let restart = slot_restart_lsn(&pg).unwrap();
    assert!(
        restart <= victim.start_lsn(seg()),
        "restart_lsn {restart} after stop"
    );
}
