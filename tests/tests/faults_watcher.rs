//! The bucket watcher is not blind: each of its checks is made to fire here on purpose.
//!
//! - With `confirm = "staging"` the agent confirms WAL that is only in staging (DESIGN.md
//!   "The streaming pipeline" (2)); with the bucket cut off, the slot passes the bucket and
//!   the watcher must report it.
//! - A `.partial` whose bytes differ from the server's `pg_wal` and an object that does not
//!   open, put into the bucket behind the agent's back, must be reported too.

mod common;

use std::time::{Duration, Instant};

use common::faults::*;
use common::open_store;
use pgagent_storage::envelope;
use pgagent_tests::watcher::ViolationKind;
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

    s.proxy.set_mode(ProxyMode::Refuse);
    s.pg.pgbench(&["-n", "-t", "500", "-c", "2"]).unwrap();
    let seen = |w: &pgagent_tests::watcher::Watcher| {
        let r = w.snapshot();
        let has = |f: fn(&ViolationKind) -> bool| r.violations.iter().any(|v| f(&v.kind));
        (
            has(|k| matches!(k, ViolationKind::SlotAhead { .. })),
            has(|k| matches!(k, ViolationKind::Content { key, .. } if key.ends_with("01.partial"))),
            has(|k| matches!(k, ViolationKind::Unreadable { key, .. } if key.ends_with("01"))),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen(&watcher) != (true, true, true) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    s.proxy.set_mode(ProxyMode::Pass);
    agent.kill9();
    let report = watcher.stop();
    println!("[{}] watcher: {report}", s.name);
    for v in &report.violations {
        println!("[{}]   {v}", s.name);
    }
    let kinds = |f: fn(&ViolationKind) -> bool| report.violations.iter().any(|v| f(&v.kind));
    s.check(kinds(|k| matches!(k, ViolationKind::SlotAhead { .. })), || {
        "no slot-past-the-bucket violation although the agent confirmed from staging with the bucket cut off".into()
    });
    s.check(
        kinds(|k| matches!(k, ViolationKind::Content { key, .. } if key.ends_with("01.partial"))),
        || "the .partial with a flipped byte was not reported".into(),
    );
    s.check(
        kinds(|k| matches!(k, ViolationKind::Unreadable { key, .. } if key.ends_with("01"))),
        || "the object that does not open was not reported".into(),
    );
    s.conclude();
}
