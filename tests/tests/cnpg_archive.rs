//! The CloudNativePG instance sidecar as PostgreSQL's `archive_command`, through a stand-in
//! for CNPG's instance manager, against a real PostgreSQL and a real S3 server:
//!
//! - 1 000 segments archived (1 MiB segments), none lost or duplicated: every archived
//!   segment is in the bucket, byte for byte the server's, and each was PUT once (the
//!   stream's upload; `WAL.Archive` answered from it, never uploading it again);
//! - archiving paused while the stream runs on, then resumed: the backlog of segments the
//!   stream already stored is answered at once (the time of each call is printed; the
//!   figure is measured by `benches/cnpg`);
//! - the stream starts only once a request names this pod the primary;
//! - while streaming, a commit is in the bucket within seconds (RPO).

mod common;

use std::time::{Duration, Instant};

use common::cnpg::*;
use pgagent_protocol::{Lsn, SegNo, WalFileName, WalSegmentSize};
use pgagent_storage::deltas::{assemble, Delta, Piece};
use pgagent_storage::envelope::{Header, MAX_HEADER_LEN};
use pgagent_tests::garage::BUCKET;
use pgagent_tests::{wait_until, Garage, PgOptions, PgServer, Proxy};

const PREFIX: &str = "cnpg-archive";

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(1 << 20).unwrap()
}

/// `n` segments: a row and a switch each.
fn make_segments(pg: &PgServer, from: u32, n: u32) {
    pg.psql(&format!(
        "DO $$ BEGIN FOR i IN {from}..{} LOOP INSERT INTO t VALUES (i); PERFORM pg_switch_wal(); END LOOP; END $$",
        from + n - 1
    ))
    .unwrap();
}

fn set_archive_command(pg: &PgServer, command: &str) {
    pg.psql(&format!("ALTER SYSTEM SET archive_command = '{command}'"))
        .unwrap();
    pg.psql("SELECT pg_reload_conf()").unwrap();
}

/// The end of the WAL the bucket holds contiguously from the start of segment `first` of
/// timeline 1 (complete segments, then the deltas of the next), read from its keys.
async fn bucket_end(store: &dyn pgagent_storage::ObjectStore, first: SegNo) -> Lsn {
    let (complete, keys) = stored_segments(store, "wal/", seg()).await;
    let mut next = first;
    while complete.contains(&next) {
        next = next.next();
    }
    let pieces: Vec<Piece> = keys
        .iter()
        .filter_map(|k| Delta::parse_key(k, seg()))
        .filter(|d| d.segno == next)
        .map(|d| Piece::delta(&d, seg()))
        .collect();
    next.start_lsn(seg()) + assemble(&pieces).end
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_segments_are_archived_from_the_stream() {
    let garage = Garage::start().expect("start Garage");
    let proxy = Proxy::start(garage.s3_addr());
    let store_url = garage.store_url_via(PREFIX, &proxy.http_endpoint());
    let pod = common::cnpg::pod("pg-1", "pg-1");
    let pg = PgServer::start(PgOptions {
        initdb_args: vec!["--wal-segsize=1".into()],
        extra_conf: vec!["archive_mode = on".into()],
        ..Default::default()
    })
    .expect("start PostgreSQL");
    pg.psql("CREATE TABLE t (i int)").unwrap();
    let mut sidecar = pod.start("instance", &pod.env(&pg, &store_url, &garage.s3_env()));
    let store = common::open_store(&garage.store_url(PREFIX), &garage.s3_env()).await;

    let before_stream = common::lsn(&pg.psql("SELECT pg_current_wal_lsn()").unwrap());
    // Nothing streams until a request names this pod the primary.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!slot_active(&pg), "streaming before any request");
    let scraped = pod.scrape().await;
    assert!(
        scraped
            .iter()
            .any(|(n, _)| n == "pgagent_cnpg_staging_bytes"),
        "{scraped:?}"
    );
    let streaming = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        slot_active(&pg)
    });
    assert!(
        streaming,
        "no stream after a scrape naming the pod primary: {}",
        sidecar.output_text()
    );
    proxy.record_sent();

    // Phase A: archiving live, 500 segments.
    set_archive_command(
        &pg,
        pod.archive_command()
            .trim_start_matches("archive_command = '")
            .trim_end_matches('\''),
    );
    let mut rss_peak = 0;
    make_segments(&pg, 1, 500);
    let last_a = pg.psql("SELECT pg_walfile_name(pg_switch_wal())").unwrap();
    let archived = wait_until(Duration::from_secs(300), Duration::from_millis(200), || {
        rss_peak = rss_peak.max(rss_kib(sidecar.pid()));
        archiver(&pg).2 >= last_a
    });
    assert!(
        archived,
        "phase A not archived: {:?}\n{}",
        archiver(&pg),
        sidecar.output_text()
    );

    // Phase B: archiving paused, 500 segments streamed, then archiving resumed: each call
    // finds its segment already in the bucket.
    set_archive_command(&pg, "");
    // The archiver rereads its configuration between files: give it the time to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused_at = archiver(&pg).0;
    make_segments(&pg, 501, 500);
    let last_b = pg.psql("SELECT pg_walfile_name(pg_switch_wal())").unwrap();
    let end = common::lsn(&pg.psql("SELECT pg_current_wal_lsn()").unwrap());
    // The bucket's WAL starts where archiving or streaming began (what initdb wrote before
    // archive_mode was on is never archived), at the latest at the segment being written
    // when the sidecar started.
    let first_seg = first_segment(store.as_ref()).await;
    assert!(
        first_seg <= before_stream.segment_number(seg()),
        "the bucket starts at {first_seg:?}, after {before_stream}"
    );
    let mut end_in_bucket = Lsn(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        rss_peak = rss_peak.max(rss_kib(sidecar.pid()));
        end_in_bucket = bucket_end(store.as_ref(), first_seg).await;
        if end_in_bucket >= end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if end_in_bucket < end {
        let (_, keys) = stored_segments(store.as_ref(), "wal/", seg()).await;
        let keys = &keys[..keys.len().min(20)];
        panic!(
            "the stream did not store up to {end}: {end_in_bucket}; first keys {keys:?}\n{}",
            sidecar.output_text()
        );
    }
    assert_eq!(archiver(&pg).0, paused_at, "archiving was not paused");
    pod.clear_calls();
    set_archive_command(
        &pg,
        pod.archive_command()
            .trim_start_matches("archive_command = '")
            .trim_end_matches('\''),
    );
    let archived = wait_until(Duration::from_secs(300), Duration::from_millis(200), || {
        archiver(&pg).2 >= last_b
    });
    assert!(
        archived,
        "phase B not archived: {:?}\n{}",
        archiver(&pg),
        sidecar.output_text()
    );
    let (count, failed, _) = archiver(&pg);
    assert_eq!(
        failed,
        0,
        "an archive call failed:\n{}",
        sidecar.output_text()
    );
    assert!(count >= 1000, "{count} archived");
    let mut backlog: Vec<u64> = pod
        .calls()
        .iter()
        .filter(|(op, _, _, code)| op == "archive" && code == "Ok")
        .map(|(_, _, us, _)| *us)
        .collect();
    assert!(backlog.len() >= 500, "{} calls in phase B", backlog.len());
    let p50 = percentile(&mut backlog, 50.0);
    let p99 = percentile(&mut backlog, 99.0);
    println!("WAL.Archive of a streamed segment: p50 {p50} µs, p99 {p99} µs over {} calls; sidecar peak RSS {} KiB", backlog.len(), rss_peak);
    assert!(
        p99 < 100_000,
        "p99 {p99} µs: a streamed segment must be answered without an upload"
    );
    assert!(
        rss_peak <= 64 * 1024,
        "sidecar RSS {rss_peak} KiB while streaming, above 64 MiB"
    );

    // From outside: every archived segment is in the bucket, the server's bytes, PUT once.
    let names = segments_between(first_seg.0, &last_b);
    assert!(names.len() >= 1000, "{} segments", names.len());
    for name in &names {
        let key = format!("wal/{name}");
        let head = store
            .get_range(&key, 0, MAX_HEADER_LEN as u64)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let header = Header::parse(&head).unwrap();
        let server = pg
            .wal_file(name)
            .unwrap_or_else(|| panic!("{name} left pg_wal"));
        assert_eq!(header.raw_len, server.len() as u64, "{name}");
        assert_eq!(
            header.hash,
            blake3::hash(&server),
            "{name}: not the server's bytes"
        );
        let puts = proxy.sent_count(format!("PUT /{BUCKET}/{PREFIX}/{key}?").as_bytes())
            + proxy.sent_count(format!("PUT /{BUCKET}/{PREFIX}/{key} ").as_bytes());
        assert_eq!(puts, 1, "{key} was PUT {puts} times");
    }

    // RPO while streaming: a commit reaches the bucket within seconds.
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        pg.psql(&format!("INSERT INTO t VALUES ({})", 10_000 + i))
            .unwrap();
        let commit = common::lsn(&pg.psql("SELECT pg_current_wal_lsn()").unwrap());
        let t0 = Instant::now();
        while bucket_end(store.as_ref(), first_seg).await < commit {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "commit {commit} not in the bucket after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worst = worst.max(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("RPO while streaming: worst of 5 commits {worst:?}");
    assert!(worst <= Duration::from_secs(3), "RPO {worst:?}");
    assert!(sidecar.terminate().success(), "{}", sidecar.output_text());
}

/// The lowest complete segment in the bucket.
async fn first_segment(store: &dyn pgagent_storage::ObjectStore) -> SegNo {
    let (segments, _) = stored_segments(store, "wal/", seg()).await;
    *segments.first().expect("a segment in the bucket")
}

/// Names of the timeline-1 segments from `first` to `last` (inclusive), 1 MiB segments.
fn segments_between(first: u64, last: &str) -> Vec<String> {
    let Some(WalFileName::Segment { segno, .. }) = WalFileName::parse(last.trim(), seg()) else {
        panic!("{last:?} is not a segment name");
    };
    (first..=segno.0)
        .map(|s| {
            pgagent_protocol::segment_file_name(pgagent_protocol::TimelineId(1), SegNo(s), seg())
        })
        .collect()
}

/// Resident set of process `pid`, KiB (0 if gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
