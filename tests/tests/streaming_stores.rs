//! Streaming to two stores at once (`[[stores]]`): a `file://` store as the required one
//! (a NAS near the database) and the S3 server behind a fault-injecting proxy as the async
//! one (R2 far away). Every store is read directly, not through pgagent, and compared with
//! the server's `pg_wal` and its slot.

mod common;

use std::time::{Duration, Instant};

use common::two_stores::*;
use common::*;
use pgagent_tests::{wait_until, PgServer, ProxyMode};

#[tokio::test(flavor = "multi_thread")]
async fn an_async_store_down_never_holds_flush_and_catches_up_byte_for_byte() {
    let t = TwoStores::new("down", "max_lag = { time = \"20s\" }\n");
    let pg = PgServer::start(Default::default()).unwrap();
    // Staging far smaller than the outage's WAL: the async store does not keep it there,
    // it copies from nas.
    let quota = ("PGAGENT_STAGING_QUOTA", "48MiB".to_string());
    let mut agent = t.spawn_with(&pg, &[quota]);
    let first = t.both_hold_some_segments(&pg, &agent);

    // R2 goes away. More segments than its queue and uploads in flight can hold.
    t.proxy.set_mode(ProxyMode::Refuse);
    let cut_at = Instant::now();
    let target = segment_end(switch_segments(&pg, 14));
    let nas = t.nas().await;
    let mut samples = 0;
    let moved = loop {
        // The slot never passes what the required store holds...
        let restart = slot_restart_lsn(&pg).expect("slot");
        let frontier = bucket_frontier(&live_objects(nas.as_ref()).await, first);
        assert!(
            restart <= frontier,
            "restart_lsn {restart} passed the nas store's end {frontier}"
        );
        samples += 1;
        // The required store's RPO stays at about two partial intervals (0.5 s each; 5 s
        // leaves room for a loaded machine).
        let rpo = scrape(t.metrics, "pgagent_store_rpo_seconds{store=\"nas\"}");
        assert!(rpo <= 5.0, "nas RPO {rpo} s while r2 was down");
        // ...and follows it, whatever R2 does (sampled for 3 s at least).
        if restart >= target && cut_at.elapsed() > Duration::from_secs(3) {
            break true;
        }
        if cut_at.elapsed() > Duration::from_secs(90) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        moved,
        "flush did not follow the required store while r2 was down\n{}",
        agent.output_text()
    );
    assert!(samples >= 2, "{samples} samples");
    let r2_end = t.store_uploaded("r2").unwrap();
    assert!(r2_end < target, "r2 was down, yet reports {r2_end}");
    let down = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        http_get(t.metrics, "/readyz").contains("store_down:r2")
    });
    assert!(down, "{}", http_get(t.metrics, "/readyz"));
    assert!(http_get(t.metrics, "/readyz").contains(" 503 "));
    assert_eq!(scrape(t.metrics, "pgagent_store_up{store=\"nas\"}"), 1.0);
    let outage = cut_at.elapsed();

    // R2 returns: it catches up, copying what it skipped from nas.
    t.proxy.set_mode(ProxyMode::Pass);
    let back = Instant::now();
    let caught_up = wait_until(Duration::from_secs(120), Duration::from_millis(200), || {
        t.store_uploaded("r2").is_some_and(|l| l >= target)
    });
    assert!(
        caught_up,
        "{:?}\n{}",
        t.store_status("r2"),
        agent.output_text()
    );
    let catch_up = back.elapsed();
    eprintln!("r2 down {outage:?}, caught up {catch_up:?} after it returned");
    assert!(
        catch_up <= outage,
        "r2 took {catch_up:?} to catch up after an outage of {outage:?}"
    );
    assert_eq!(
        scrape(t.metrics, "pgagent_staging_full"),
        0.0,
        "receiving paused"
    );
    assert!(
        scrape(t.metrics, "pgagent_store_copies_total{store=\"r2\"}") > 0.0,
        "the backlog path did not run"
    );
    let ready = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        http_get(t.metrics, "/readyz").contains(" 200 ")
    });
    assert!(ready, "{}", http_get(t.metrics, "/readyz"));
    assert_r2_mirrors_nas(&t, "down", &pg, first).await;
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

/// A required store down: sampled every 100 ms, the slot never passes what it holds
/// (read directly); when it returns it catches up, and no object it held was rewritten
/// with other bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_required_store_down_holds_the_slot_at_its_end() {
    let t = TwoStores::with_roles("req", "role = \"async\"\n", "");
    let pg = PgServer::start(Default::default()).unwrap();
    let mut agent = t.spawn(&pg);
    let first = t.both_hold_some_segments(&pg, &agent);
    let r2 = t.r2("req").await;
    let held_before = stored_bodies(r2.as_ref()).await;

    t.proxy.set_mode(ProxyMode::Refuse);
    let target = segment_end(switch_segments(&pg, 6));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut samples = 0;
    while Instant::now() < deadline {
        let restart = slot_restart_lsn(&pg).expect("slot");
        let end = bucket_frontier(&live_objects(r2.as_ref()).await, first);
        assert!(
            restart <= end,
            "restart_lsn {restart} passed the required store's end {end}"
        );
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(samples >= 20, "{samples} samples");
    assert!(
        slot_restart_lsn(&pg).unwrap() < target,
        "flush passed a required store that is down"
    );
    // The async nas store took the WAL meanwhile.
    let nas_ahead = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        t.store_uploaded("nas").is_some_and(|l| l >= target)
    });
    assert!(nas_ahead, "{:?}", t.store_status("nas"));

    t.proxy.set_mode(ProxyMode::Pass);
    let released = wait_until(Duration::from_secs(120), Duration::from_millis(200), || {
        slot_restart_lsn(&pg).is_some_and(|l| l >= target)
    });
    assert!(released, "{}", agent.output_text());
    let after = stored_bodies(r2.as_ref()).await;
    for (key, body) in &held_before {
        if let Some(now) = after.get(key) {
            assert!(now == body, "{key} was rewritten with other bytes");
        }
    }
    let opened = wal_objects(r2.as_ref()).await;
    assert!(assert_identical_to_server(&opened, &pg) >= 3);
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn hold_keeps_flush_within_max_lag_of_the_async_store() {
    let max_lag = 2 * seg().bytes();
    let t = TwoStores::new(
        "hold",
        "max_lag = { bytes = \"32MiB\" }\non_lag_exceeded = \"hold\"\n",
    );
    let pg = PgServer::start(Default::default()).unwrap();
    let mut agent = t.spawn(&pg);
    let first = t.both_hold_some_segments(&pg, &agent);

    t.proxy.set_mode(ProxyMode::Refuse);
    let target = segment_end(switch_segments(&pg, 8));
    let r2 = t.r2("hold").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut samples = 0;
    while Instant::now() < deadline {
        let restart = slot_restart_lsn(&pg).expect("slot");
        let r2_end = bucket_frontier(&live_objects(r2.as_ref()).await, first);
        assert!(
            restart.0 <= r2_end.0 + max_lag,
            "restart_lsn {restart} is more than max_lag past r2's end {r2_end}"
        );
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(samples >= 10);
    assert!(slot_restart_lsn(&pg).unwrap() < target, "hold did not hold");
    let body = http_get(t.metrics, "/readyz");
    assert!(body.contains(" 503 "), "{body}");
    assert!(
        body.contains("store_down:r2") || body.contains("store_lag:r2"),
        "{body}"
    );

    t.proxy.set_mode(ProxyMode::Pass);
    let released = wait_until(Duration::from_secs(120), Duration::from_millis(200), || {
        slot_restart_lsn(&pg).is_some_and(|l| l >= target)
    });
    assert!(released, "{}", agent.output_text());
    let caught_up = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        t.store_uploaded("r2").is_some_and(|l| l >= target)
    });
    assert!(caught_up, "{:?}", t.store_status("r2"));
    assert_r2_mirrors_nas(&t, "hold", &pg, first).await;
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_the_async_store_lags_loses_nothing_in_it() {
    let t = TwoStores::new("kill", "");
    let pg = PgServer::start(Default::default()).unwrap();
    let mut agent = t.spawn(&pg);
    let first = t.both_hold_some_segments(&pg, &agent);

    // R2 away, segments skipped for it (copied later), then the agent is killed: what R2
    // lacks is known only from its listing and its pin in nas.
    t.proxy.set_mode(ProxyMode::Refuse);
    let target = segment_end(switch_segments(&pg, 14));
    let confirmed = wait_until(Duration::from_secs(90), Duration::from_millis(200), || {
        slot_restart_lsn(&pg).is_some_and(|l| l >= target)
    });
    assert!(confirmed, "{}", agent.output_text());
    // The pin says where r2's WAL ends, at most that far.
    let pinned = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        t.dir.path().join("nas/pins/r2.json").exists()
    });
    assert!(pinned, "no pin for r2 in nas");
    agent.kill9();
    t.proxy.set_mode(ProxyMode::Pass);

    let mut agent = t.spawn(&pg);
    let caught_up = wait_until(Duration::from_secs(180), Duration::from_millis(500), || {
        t.store_uploaded("r2").is_some_and(|l| l >= target)
    });
    assert!(
        caught_up,
        "{:?}\n{}",
        t.store_status("r2"),
        agent.output_text()
    );
    assert_r2_mirrors_nas(&t, "kill", &pg, first).await;
    assert_no_gap(&wal_objects(t.r2("kill").await.as_ref()).await);
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

/// What a trickle of commits costs each store: `partial_interval` 1 s to nas and 10 s to
/// r2. Each delta is one PUT; over 30 s of a commit every 200 ms, nas gets about 30 and
/// r2 about 3 (per hour: 3,600 and 360, plus one PUT per complete segment each).
#[tokio::test(flavor = "multi_thread")]
async fn each_store_gets_deltas_at_its_own_partial_interval() {
    let t = TwoStores::new("cost", "");
    let pg = PgServer::start(Default::default()).unwrap();
    let mut agent = t.spawn_with(
        &pg,
        &[
            ("PGAGENT_WAL_PARTIAL_INTERVAL", "1s".into()),
            ("PGAGENT_STORES_R2_PARTIAL_INTERVAL", "10s".into()),
        ],
    );
    pg.psql("CREATE TABLE trickle (i int)").unwrap();
    lsn(&pg.switch_wal().unwrap());
    let (nas, r2) = (t.nas().await, t.r2("cost").await);
    let deltas = |keys: Vec<String>| -> Vec<String> {
        keys.into_iter()
            .filter(|k| k.contains(".partial.d/"))
            .collect()
    };
    let mut seen: [std::collections::BTreeSet<String>; 2] = Default::default();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(30) {
        pg.psql(&format!("INSERT INTO trickle VALUES ({i})"))
            .unwrap();
        i += 1;
        if i % 10 == 0 {
            for (set, store) in seen.iter_mut().zip([&nas, &r2]) {
                let keys = store.list("wal/").await.unwrap();
                set.extend(deltas(keys.into_iter().map(|m| m.key).collect()));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    for (set, store) in seen.iter_mut().zip([&nas, &r2]) {
        let keys = store.list("wal/").await.unwrap();
        set.extend(deltas(keys.into_iter().map(|m| m.key).collect()));
    }
    let (near, far) = (seen[0].len(), seen[1].len());
    eprintln!("30 s of trickle: {near} deltas to nas (1 s), {far} to r2 (10 s)");
    assert!((20..=40).contains(&near), "nas got {near} deltas");
    assert!((2..=6).contains(&far), "r2 got {far} deltas");
    assert!(agent.terminate().success(), "{}", agent.output_text());
}
