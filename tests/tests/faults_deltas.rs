//! The segment being filled reaches the bucket as deltas (`storage::deltas`): a recovery from
//! the bucket alone must reach the last streamed second from them, across `kill -9` between
//! two deltas and across a timeline switch in the middle of a segment.

mod common;

use std::time::Duration;

use common::faults::*;
use common::recovery::{create_table_t, fetch_config, load, run_restore, state, wait_promoted};
use common::*;
use pgagent_protocol::{segment_file_name, SegNo, TimelineId};
use pgagent_storage::deltas::{deltas_prefix, Delta};
use pgagent_storage::ObjectStore;
use pgagent_tests::load::Load;
use pgagent_tests::{run_pgagent, wait_until, PgOptions, PgServer};
use rand::Rng;

/// Kills of the agent.
const KILLS: usize = 8;

/// The deltas the bucket holds of segment `segno` of `tli`, by name.
async fn deltas(store: &dyn ObjectStore, tli: TimelineId, segno: SegNo) -> Vec<Delta> {
    store
        .list(&deltas_prefix(tli, segno, seg()))
        .await
        .unwrap()
        .iter()
        .filter_map(|m| Delta::parse_key(&m.key, seg()))
        .collect()
}

/// Whether the bucket holds segment `segno` of `tli` complete.
async fn complete(store: &dyn ObjectStore, tli: TimelineId, segno: SegNo) -> bool {
    let key = format!("wal/{}", segment_file_name(tli, segno, seg()));
    store.head(&key).await.unwrap().is_some()
}

/// A light load (pgbench at 20 transactions a second, one client: a segment takes minutes
/// to fill, so the newest WAL lives in deltas) while the agent is killed between deltas;
/// then a bucket-only recovery, whose last WAL comes from deltas only, must hold exactly
/// the server's data.
#[test]
fn kill9_between_deltas_then_recovery_reaches_the_last_streamed_second() {
    let mut s = Scenario::start("faults_deltas", PgOptions::default());
    let mut agent = s.spawn_caught_up(&[]);
    s.backup();
    let watcher = s.watch();
    let load = Load::start(&s.pg, &["-c", "1", "-R", "20"]).unwrap();
    let mut rng = rand::thread_rng();
    for _ in 0..KILLS {
        // One to three deltas between two kills.
        std::thread::sleep(Duration::from_millis(rng.gen_range(700..3000)));
        s.kill(agent);
        agent = s.spawn_agent(&[]);
    }
    std::thread::sleep(Duration::from_secs(3));
    load.stop(&s.pg).unwrap();
    // The last commits: one row at a time, each in the segment being filled.
    for i in 0..5 {
        s.pg.psql(&format!("INSERT INTO filler (pad) VALUES ('last {i}')"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, end) = s.finish(
        agent,
        watcher,
        Expect {
            min_rounds: 20,
            min_compared: 10,
        },
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(open_store(&s.direct_store_url(), &s.garage.s3_env()));
    let segno = end.segment_number(seg());
    let tli = TimelineId(1);
    let held = rt.block_on(deltas(store.as_ref(), tli, segno));
    let whole = rt.block_on(complete(store.as_ref(), tli, segno));
    s.check(!whole && held.len() >= 2, || {
        format!(
            "the recovery was meant to end in a segment held as deltas only: {segno:?} is \
             complete: {whole}, deltas: {held:?}"
        )
    });
    println!("[{}] {} deltas of the last segment", s.name, held.len());
    s.conclude();
}

/// The server is promoted in the middle of a segment: the old timeline's deltas of that
/// segment end at the switch point, the new timeline's deltas of the same segment start at
/// its beginning. A recovery from a file store alone follows the switch and holds every
/// row, the last ones from the new timeline's deltas.
#[tokio::test(flavor = "multi_thread")]
async fn a_timeline_switch_inside_a_segment_recovers_from_deltas() {
    let rig = Rig::fs();
    let mut pg = PgServer::start(PgOptions::default()).unwrap();
    create_table_t(&pg);
    load(&pg, "base", 1000);
    let mut agent = rig.spawn(&pg);
    let out = run_pgagent(&["backup", "--fast"], &rig.env(&pg));
    assert!(out.status.success(), "pgagent backup: {}", text(&out));
    load(&pg, "tli1", 200);
    let on_tli1 = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    rig.wait_uploaded(&agent, on_tli1, Duration::from_secs(60));

    pg.stop().unwrap();
    std::fs::write(pg.data_dir().join("standby.signal"), b"").unwrap();
    pg.start_server().unwrap();
    pg.psql("SELECT pg_promote(true, 60)").unwrap();
    load(&pg, "tli2", 200);
    let end = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    assert_eq!(
        end.segment_number(seg()),
        on_tli1.segment_number(seg()),
        "the switch and the writes after it were meant to stay in one segment"
    );
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            rig.status().is_some_and(|s| s["timeline"] == 2)
                && rig.status_lsn("uploaded_lsn").is_some_and(|l| l >= end)
        }),
        "the agent did not upload timeline 2 up to {end}: {:?}\n{}",
        rig.status(),
        agent.output_text()
    );
    let expected = state(&pg);
    assert!(agent.terminate().success(), "{}", agent.output_text());

    let store = rig.store().await;
    let segno = end.segment_number(seg());
    let old = deltas(store.as_ref(), TimelineId(1), segno).await;
    let new = deltas(store.as_ref(), TimelineId(2), segno).await;
    assert!(!old.is_empty() && !new.is_empty(), "{old:?} {new:?}");
    assert!(new.iter().any(|d| d.start == 0), "{new:?}");
    assert!(!complete(store.as_ref(), TimelineId(2), segno).await);
    assert_identical_to_server(&wal_objects(store.as_ref()).await, &pg);
    pg.stop().unwrap();
    drop(pg);

    let fetch = fetch_config(&rig.store_url, &[]);
    let mut restored = PgServer::without_cluster(PgOptions::default()).unwrap();
    let out = run_restore(&fetch.config, &restored.data_dir(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    restored.start_server().unwrap();
    wait_promoted(&restored, Duration::from_secs(120));
    assert_eq!(state(&restored), expected, "{}", restored.log_tail());
}
