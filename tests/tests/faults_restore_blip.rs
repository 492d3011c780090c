//! Fault scenario: the bucket goes away for a few seconds in the middle of a restore.
//!
//! `pgagent restore` reads thousands of objects; the S3 client's own attempts cover a
//! glitch, not a few seconds of refused connections, nor a connection closed in the middle of
//! a body. Each read is retried with backoff up to `fetch.timeout`, as `pgagent fetch` does
//! (DESIGN.md, "Invariants": a recovery never ends early because of a transient store
//! error), so the restore finishes and the server recovers the source's data.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::recovery::*;
use common::*;
use pgagent_tests::{run_pgagent, wait_until, AgentProcess, Garage, PgOptions, PgServer};
use pgagent_tests::{Proxy, ProxyMode};

/// How long the proxy refuses every connection to the store.
const BLIP: Duration = Duration::from_secs(3);
/// Bytes the restore has written when the blip starts.
const BLIP_AT: u64 = 8 << 20;

/// Bytes of the regular files under `dir` (not following symlinks).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// The checksum of the pgbench accounts and of table `t`.
fn data(pg: &PgServer) -> String {
    let accounts = pg
        .psql(
            "SELECT count(*), md5(string_agg(aid::text || ':' || abalance, ',' ORDER BY aid)) \
             FROM pgbench_accounts",
        )
        .unwrap();
    format!("{accounts} {}", state(pg))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_rides_out_a_store_that_refuses_connections_for_a_while() {
    let started = Instant::now();
    let garage = Garage::start().expect("start Garage");
    let proxy = Proxy::start(garage.s3_addr());
    let rig = Rig::s3(garage.store_url("blip"), garage.s3_env());

    // A backup of some 80 MB, and the WAL after it.
    let mut primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent = rig.spawn_caught_up(&primary);
    primary.pgbench_init(5).unwrap();
    create_table_t(&primary);
    load(&primary, "before", 1000);
    let out = run_pgagent(&["backup", "--fast"], &rig.env(&primary));
    assert!(out.status.success(), "{}", text(&out));
    primary.pgbench(&["-t", "200", "-c", "2"]).unwrap();
    load(&primary, "after", 1000);
    let expected = data(&primary);
    let switch = lsn(&primary.switch_wal().unwrap());
    let boundary = switch.segment_number(seg()).end_lsn(seg());
    rig.wait_uploaded(&agent, boundary, Duration::from_secs(120));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    primary.stop().unwrap();
    drop(primary);

    // The restore reads the store through the proxy, which refuses every connection (and
    // closes the open ones) for BLIP once the restore is under way.
    let via = fetch_config(
        &garage.store_url_via("blip", &proxy.http_endpoint()),
        &garage.s3_env(),
    );
    let mut restored = PgServer::without_cluster(PgOptions::default()).unwrap();
    let pgdata = restored.data_dir();
    let mut run = AgentProcess::spawn(
        &[
            "--config",
            via.config.to_str().unwrap(),
            "restore",
            "--pgdata",
            pgdata.to_str().unwrap(),
        ],
        &[],
    );
    let under_way = wait_until(Duration::from_secs(60), Duration::from_millis(10), || {
        bytes_under(&pgdata) >= BLIP_AT || !run.is_running()
    });
    assert!(
        under_way && run.is_running(),
        "the restore was not under way: {}",
        run.output_text()
    );
    proxy.set_mode(ProxyMode::Refuse);
    std::thread::sleep(BLIP);
    let during = bytes_under(&pgdata);
    proxy.set_mode(ProxyMode::Pass);
    let status = run.wait_timeout(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "restore: {status:?}\n{}",
        run.output_text()
    );
    let output = run.output_text();
    assert!(
        output.contains("retrying until fetch.timeout"),
        "the blip met no read of the restore:\n{output}"
    );
    assert!(
        bytes_under(&pgdata) > during,
        "nothing was written after the blip:\n{output}"
    );

    // Recovery through the fetch server gives back the source's data.
    restored.start_server().unwrap();
    wait_promoted(&restored, Duration::from_secs(120));
    assert_eq!(data(&restored), expected, "{}", restored.log_tail());
    eprintln!("wall time {:?}", started.elapsed());
}
