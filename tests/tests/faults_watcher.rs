//! The bucket watcher is not blind: each of its checks is made to fire here on purpose.
//!
//! - With `confirm = "staging"` the agent confirms WAL that is only in staging (DESIGN.md
//!   "The streaming pipeline" (2)); with the bucket cut off, the slot passes the bucket and
//!   the watcher must report it.
//! - A `.partial` whose bytes differ from the server's `pg_wal` and an object that does not
//!   open, put into the bucket behind the agent's back, must be reported too; so must a
//!   delta whose bytes differ from the server's at its offsets, a delta written again with
//!   other bytes, and the deltas of a segment reaching less far than they did.

mod common;

use std::time::{Duration, Instant};

use common::faults::*;
use common::{delta_key, open_store};
use pgagent_protocol::SegNo;
use pgagent_storage::envelope;
use pgagent_tests::watcher::{ViolationKind, Watcher};
use pgagent_tests::{PgOptions, ProxyMode};

#[test]
fn the_watcher_reports_a_slot_past_the_bucket_and_foreign_bytes() {
    let mut s = Scenario::start("faults_watcher", PgOptions::default());
    let mut agent = s.spawn_caught_up(&[("PGAGENT_WAL_CONFIRM", "staging".into())]);
    let watcher = s.watch();
    std::thread::sleep(Duration::from_secs(1));

    // Segment 1 is still in pg_wal and below where the agent started streaming (pgbench's
    // tables were loaded before), so the agent never writes these keys and the slot's walk,
    // which starts at the segment holding restart_lsn, never reaches them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open_store(&s.direct_store_url(), &s.garage.s3_env()).await;
        let server = s.pg.wal_file("000000010000000000000001").unwrap();
        let mut bytes = server[..4096].to_vec();
        bytes[100] ^= 0xff;
        store
            .put(
                "wal/000000010000000000000001.partial",
                envelope::seal(&bytes, 3).body,
            )
            .await
            .unwrap();
        store
            .put(
                "wal/000000010000000000000001",
                b"not an envelope".to_vec().into(),
            )
            .await
            .unwrap();
    });

    // Deltas of segment 1: one holding the server's bytes, then written again with other
    // bytes once the watcher read it; one with a flipped byte. Deltas of a segment far
    // ahead (no server file to compare), of which the last is then deleted: the segment's
    // pieces reach less far than they did.
    let delta = delta_key;
    let server = s.pg.wal_file("000000010000000000000001").unwrap();
    let (changed, flipped) = (delta(1, 0, 0x1000), delta(1, 0x1000, 0x2000));
    let ahead = [delta(0x50, 0, 0x1000), delta(0x50, 0x1000, 0x2000)];
    rt.block_on(async {
        let store = open_store(&s.direct_store_url(), &s.garage.s3_env()).await;
        let put = |key: String, raw: Vec<u8>| {
            let store = store.clone();
            async move { store.put(&key, envelope::seal(&raw, 3).body).await.unwrap() }
        };
        put(changed.clone(), server[..0x1000].to_vec()).await;
        let mut bytes = server[0x1000..0x2000].to_vec();
        bytes[10] ^= 0xff;
        put(flipped.clone(), bytes).await;
        for key in &ahead {
            put(key.clone(), vec![1; 0x1000]).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let read = |r: pgagent_tests::watcher::WatchReport| {
            r.deltas_compared >= 2 && r.partial_lens.get(&SegNo(0x50)) == Some(&0x2000)
        };
        while !read(watcher.snapshot()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut other = server[..0x1000].to_vec();
        other[0] ^= 0xff;
        put(changed.clone(), other).await;
        store.delete(&ahead[1]).await.unwrap();
    });

    s.proxy.set_mode(ProxyMode::Refuse);
    s.pg.pgbench(&["-n", "-t", "500", "-c", "2"]).unwrap();
    type Check = (&'static str, Box<dyn Fn(&ViolationKind) -> bool>);
    let checks: Vec<Check> = vec![
        (
            "no slot-past-the-bucket violation although the agent confirmed from staging with the bucket cut off",
            Box::new(|k| matches!(k, ViolationKind::SlotAhead { .. })),
        ),
        (
            "the .partial with a flipped byte was not reported",
            Box::new(|k| matches!(k, ViolationKind::Content { key, .. } if key.ends_with("01.partial"))),
        ),
        (
            "the object that does not open was not reported",
            Box::new(|k| matches!(k, ViolationKind::Unreadable { key, .. } if key.ends_with("01"))),
        ),
        (
            "the delta with a flipped byte was not reported",
            Box::new(move |k| matches!(k, ViolationKind::Content { key, .. } if *key == flipped)),
        ),
        (
            "the delta written again with other bytes was not reported",
            Box::new(move |k| matches!(k, ViolationKind::Changed { key } if *key == changed)),
        ),
        (
            "the deltas of a segment reaching less far than before were not reported",
            Box::new(|k| {
                matches!(k, ViolationKind::Backwards { key, before: 0x2000, now: 0x1000 } if key.ends_with("50.partial.d/"))
            }),
        ),
    ];
    let missing = |w: &Watcher| -> Vec<&'static str> {
        let r = w.snapshot();
        checks
            .iter()
            .filter(|(_, f)| !r.violations.iter().any(|v| f(&v.kind)))
            .map(|(why, _)| *why)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !missing(&watcher).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    s.proxy.set_mode(ProxyMode::Pass);
    agent.kill9();
    let report = watcher.stop();
    println!("[{}] watcher: {report}", s.name);
    for v in &report.violations {
        println!("[{}]   {v}", s.name);
    }
    for (why, f) in &checks {
        let seen = report.violations.iter().any(|v| f(&v.kind));
        s.check(seen, || why.to_string());
    }
    s.conclude();
}
