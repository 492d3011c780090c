//! The fetch server behind `restore_command = 'pgagent fetch %f %p'`: recovery served from
//! the prefetch cache, a store outage in the middle of recovery (waited out, or recovery
//! aborted with 255 after `fetch.timeout`, never promoted early), one server for concurrent
//! first calls, `pgagent` found through `PATH`, and the daemon's own server answering from
//! staging while the bucket is unreachable.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use common::recovery::*;
use common::*;
use pgagent_protocol::{segment_file_name, SegNo, TimelineId};
use pgagent_storage::cluster::ClusterInfo;
use pgagent_storage::envelope;
use pgagent_tests::{
    free_addr, run_pgagent, wait_until, Garage, PgOptions, PgServer, Proxy, ProxyMode,
};

/// Primary streamed by an agent into `rig`, a base backup taken, then about `mib` MiB of WAL
/// (a wide table `w`) between small loads of `t`. Returns the primary, the base backup's
/// holder, and the final state of `t`; everything is in the store and the agent stopped.
fn primary_with_wal(rig: &Rig, mib: u32) -> (PgServer, PgServer, String) {
    let primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent = rig.spawn_caught_up(&primary);
    let base = base_backup_copy(&primary);
    create_table_t(&primary);
    load(&primary, "before", 1000);
    primary
        .psql(&format!(
            "CREATE TABLE w AS SELECT g, repeat(md5(g::text), 30) v FROM generate_series(1, {}) g",
            mib * 1000
        ))
        .unwrap();
    load(&primary, "after", 1000);
    let expected = state(&primary);
    let switch = lsn(&primary.switch_wal().unwrap());
    let boundary = switch.segment_number(seg()).end_lsn(seg());
    rig.wait_uploaded(&agent, boundary, Duration::from_secs(180));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    (primary, base, expected)
}

/// Recovery of ~10 segments from Garage: every segment after the first comes from the
/// prefetch cache, and the result equals the primary.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_is_served_from_the_prefetch_cache() {
    let garage = Garage::start().expect("start Garage");
    let rig = Rig::s3(garage.store_url("prefetch"), garage.s3_env());
    let (_primary, base, expected) = primary_with_wal(&rig, 150);

    let fetch = fetch_config(&rig.store_url, &garage.s3_env());
    let (restored, log) = recover(&base.data_dir(), &fetch.restore_command, &[]);
    assert_eq!(state(&restored), expected, "{}", restored.log_tail());
    let segments = log.matches("restored log file \"").count() as u64;
    assert!(segments >= 8, "only {segments} segments restored\n{log}");
    let summary = fetch.wait_server_summary(Duration::from_secs(30));
    // On demand: the first segment, the last one (only a .partial, never prefetched: it may
    // still grow) and the probes past the end (absent).
    assert!(
        summary.misses <= 4 && summary.hits + 2 >= segments && summary.served == segments,
        "{summary:?} for {segments} restored files\n{}",
        fetch.server_log()
    );
}

/// The store goes away in the middle of recovery, past what was prefetched: recovery waits
/// for it (no promotion, no "not found") and completes with the primary's data when it comes
/// back.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_mid_recovery_is_waited_out() {
    let garage = Garage::start().expect("start Garage");
    let rig = Rig::s3(garage.store_url("outage"), garage.s3_env());
    let (_primary, base, expected) = primary_with_wal(&rig, 150);

    let proxy = Proxy::start(garage.s3_addr());
    let via = garage.store_url_via("outage", &proxy.http_endpoint());
    let fetch = fetch_config_with(
        &via,
        &garage.s3_env(),
        &[("prefetch", "2"), ("timeout", "\"120s\"")],
    );
    let restoring = start_recovery(&base.data_dir(), &fetch.restore_command, &[]);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            restored_count(&restoring) >= 3
        }),
        "{}",
        restoring.log_tail()
    );
    proxy.set_mode(ProxyMode::Refuse);
    let stalled_at = {
        std::thread::sleep(Duration::from_secs(2));
        restored_count(&restoring)
    };
    std::thread::sleep(Duration::from_secs(6));
    let log = std::fs::read_to_string(restoring.log_file()).unwrap();
    assert_eq!(
        restored_count(&restoring),
        stalled_at,
        "recovery went on without the store\n{log}"
    );
    assert!(
        !log.contains("selected new timeline ID") && !log.contains("archive recovery complete"),
        "recovery ended while the store was unreachable\n{log}"
    );
    assert!(restoring.is_running(), "{log}");

    proxy.set_mode(ProxyMode::Pass);
    let log = wait_promoted(&restoring, Duration::from_secs(120));
    assert!(log.contains("selected new timeline ID: 2"), "{log}");
    assert_eq!(state(&restoring), expected, "{}", restoring.log_tail());
    let server_log = fetch.server_log();
    assert!(
        server_log.contains("retrying until fetch.timeout"),
        "the outage was not logged\n{server_log}"
    );
}

/// The store stays away past `fetch.timeout`: `pgagent fetch` exits 255, PostgreSQL stops
/// with FATAL instead of ending recovery, and no new timeline is created.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_past_the_timeout_aborts_recovery() {
    let garage = Garage::start().expect("start Garage");
    let rig = Rig::s3(garage.store_url("abort"), garage.s3_env());
    let (_primary, base, _expected) = primary_with_wal(&rig, 100);

    let proxy = Proxy::start(garage.s3_addr());
    let via = garage.store_url_via("abort", &proxy.http_endpoint());
    let fetch = fetch_config_with(
        &via,
        &garage.s3_env(),
        &[("prefetch", "1"), ("timeout", "\"3s\"")],
    );
    let restoring = start_recovery(&base.data_dir(), &fetch.restore_command, &[]);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            restored_count(&restoring) >= 2
        }),
        "{}",
        restoring.log_tail()
    );
    proxy.set_mode(ProxyMode::Refuse);
    let mut restoring = restoring;
    assert_recovery_aborted(&mut restoring, true);
    let _ = restoring.stop();
}

fn seg_name(n: u64) -> String {
    segment_file_name(TimelineId(1), SegNo(n), seg())
}

/// A file:// store holding `count` segments (from segment 1) of known content.
fn store_with_segments(dir: &Path, count: u64) -> Vec<Vec<u8>> {
    let store = dir.join("store");
    std::fs::create_dir_all(store.join("wal")).unwrap();
    let info = ClusterInfo {
        format_version: pgagent_storage::cluster::STORE_FORMAT_VERSION,
        system_identifier: "7000000000000000002".into(),
        pg_version_num: 150000,
        wal_segment_size: seg().bytes(),
        created_at: "2024-01-01T00:00:00Z".into(),
        encryption: None,
    };
    std::fs::write(
        store.join("cluster.json"),
        serde_json::to_vec(&info).unwrap(),
    )
    .unwrap();
    (1..=count)
        .map(|n| {
            let raw: Vec<u8> = (0..seg().bytes()).map(|i| ((i * n) % 253) as u8).collect();
            let sealed: Bytes = envelope::seal(&raw, 1).body;
            std::fs::write(store.join("wal").join(seg_name(n)), &sealed).unwrap();
            raw
        })
        .collect()
}

/// `pgagent fetch` run by the shell with `pgagent` found through `PATH`, as in
/// `restore_command = 'pgagent fetch %f %p'`.
fn fetch_via_path(env: &[(&str, String)], file: &str, dest: &Path) -> Output {
    let bin_dir = pgagent_tests::pgagent_bin()
        .canonicalize()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "PATH={}:/usr/bin:/bin exec pgagent fetch {file} {}",
            bin_dir.display(),
            dest.display()
        ))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

/// Concurrent first calls through `PATH` start exactly one restore-mode server; every call
/// delivers the right bytes; a later call is answered from the prefetch cache. The server,
/// which has no metrics endpoint, logs the store requests it sent when it stops.
#[test]
fn concurrent_first_calls_start_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let raws = store_with_segments(dir.path(), 6);
    let staging = dir.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let env = vec![
        (
            "PGAGENT_STORE_URL",
            format!("file://{}", dir.path().join("store").display()),
        ),
        ("PGAGENT_STAGING_DIR", staging.display().to_string()),
        ("PGAGENT_FETCH_IDLE_TIMEOUT", "3s".to_string()),
        ("PGAGENT_FETCH_PREFETCH", "4".to_string()),
    ];
    let out = tempfile::tempdir().unwrap();
    let calls: Vec<_> = (1..=3u64)
        .map(|n| {
            let env = env.clone();
            let dest = out.path().join(format!("x{n}"));
            std::thread::spawn(move || (n, fetch_via_path(&env, &seg_name(n), &dest)))
        })
        .collect();
    for call in calls {
        let (n, o) = call.join().unwrap();
        assert!(
            o.status.success(),
            "{n}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(std::fs::read(out.path().join(format!("x{n}"))).unwrap() == raws[n as usize - 1]);
    }
    // Segment 4 was prefetched after 3 was asked for.
    let dest = out.path().join("x4");
    let o = fetch_via_path(&env, &seg_name(4), &dest);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&dest).unwrap() == raws[3]);
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let log_path = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a fetch server log in the staging directory");
    let stopped = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("fetch server stopped"))
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(stopped, "{log}");
    assert_eq!(log.matches("listening on").count(), 1, "{log}");
    assert!(log.contains("served=4"), "{log}");
    assert!(!log.contains("prefetch_hits=0"), "{log}");
    // Reads only, at least one GET per segment delivered.
    let sent = log.split("store_requests=").nth(1).unwrap_or_default();
    let gets = sent
        .strip_prefix("put 0, get ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(gets >= Some(4), "{log}");
    // Stopped cleanly: no socket and no cache left.
    let left: Vec<_> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sock") || n.ends_with(".cache"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `pgagent run` hosts the fetch server: with the bucket unreachable, a segment still in
/// staging is delivered from there, identical to the server's, and the daemon's metrics
/// count the request.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_serves_staged_wal_while_the_bucket_is_away() {
    let garage = Garage::start().expect("start Garage");
    let proxy = Proxy::start(garage.s3_addr());
    let via = garage.store_url_via("daemon", &proxy.http_endpoint());
    let rig = Rig::s3(via.clone(), garage.s3_env());
    let primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let metrics = free_addr().unwrap();
    let mut agent = rig.spawn_with(&primary, &[("PGAGENT_METRICS_LISTEN", metrics.to_string())]);
    let first = lsn(&primary.current_wal_lsn().unwrap());
    rig.wait_uploaded(&agent, first, Duration::from_secs(60));

    let mut env = garage.s3_env();
    env.push(("PGAGENT_STORE_URL", via));
    env.push(("PGAGENT_STAGING_DIR", rig.staging().display().to_string()));
    env.push(("PGAGENT_FETCH_TIMEOUT", "5s".to_string()));
    let out = tempfile::tempdir().unwrap();
    // A first request while the bucket is there: the server opens its store connection.
    let o = run_pgagent(
        &[
            "fetch",
            "00000009.history",
            out.path().join("h").to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    proxy.set_mode(ProxyMode::Refuse);
    primary
        .psql("CREATE TABLE x AS SELECT g FROM generate_series(1, 20000) g")
        .unwrap();
    let switch = lsn(&primary.switch_wal().unwrap());
    let name = seg_name(switch.segment_number(seg()).0);
    let staged = rig.staging().join("wal").join(&name);
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            staged.exists()
        }),
        "{name} never completed in staging\n{}",
        agent.output_text()
    );
    let dest = out.path().join("RECOVERYXLOG");
    let o = run_pgagent(&["fetch", &name, dest.to_str().unwrap()], &env);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(std::fs::read(&dest).unwrap() == primary.wal_file(&name).unwrap());
    // No restore-mode server was needed: the daemon answered.
    let restore_logs = std::fs::read_dir(rig.staging())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count();
    assert_eq!(restore_logs, 0);
    assert_eq!(scrape(metrics, "pgagent_fetch_seconds_count"), 2.0);

    proxy.set_mode(ProxyMode::Pass);
    assert!(agent.terminate().success(), "{}", agent.output_text());
}
