//! A failover through the CloudNativePG plugin, against real PostgreSQL servers and a real
//! S3 server: two instance pods, each with its sidecar. Streaming runs on the primary's
//! sidecar only; when the Cluster names the standby primary (after its promotion), the old
//! primary's sidecar stops and the new one's starts, on the new timeline, into the same
//! bucket; what the old primary's stream never stored of the old timeline (its sidecar
//! killed before the failover) the new one streams from where the bucket ends. The old
//! primary is then rewound with `pg_rewind --restore-target-wal` through the
//! sidecar in rewind mode: each file pg_rewind asks for is fetched, and nothing more (no
//! prefetch), and the rewound server follows the new primary.

mod common;

use std::time::Duration;

use common::cnpg::*;
use common::recovery::{base_backup_copy, create_table_t, load, state};
use pgagent_storage::envelope::{Header, MAX_HEADER_LEN};
use pgagent_tests::garage::BUCKET;
use pgagent_tests::{Garage, PgOptions, PgServer, Proxy};

const PREFIX: &str = "cnpg-failover";

#[tokio::test(flavor = "multi_thread")]
async fn promotion_moves_streaming_and_rewind_fetches_only_what_is_asked() {
    let garage = Garage::start().expect("start Garage");
    let s3 = garage.s3_env();
    let proxy = Proxy::start(garage.s3_addr());
    let url = garage.store_url(PREFIX);
    let url_via_proxy = garage.store_url_via(PREFIX, &proxy.http_endpoint());
    let store = common::open_store(&url, &s3).await;

    let pod1 = common::cnpg::pod("pg-1", "pg-1");
    let pod2 = common::cnpg::pod("pg-2", "pg-1");
    let mut pg1 = PgServer::start(PgOptions {
        extra_conf: vec![
            "archive_mode = on".into(),
            "wal_log_hints = on".into(),
            pod1.archive_command(),
        ],
        ..Default::default()
    })
    .expect("start the primary");
    // The old primary's sidecar reads the store through a proxy, to count its requests.
    // It streams before the standby is made: the base backup waits for its last segment to
    // be archived.
    let mut side1 = pod1.start("instance", &pod1.env(&pg1, &url_via_proxy, &s3));
    pod1.scrape().await;
    wait("the primary's sidecar streams", 30, || slot_active(&pg1));
    create_table_t(&pg1);
    load(&pg1, "first", 100);
    let mut pg2 = base_backup_copy(&pg1);
    std::fs::write(pg2.data_dir().join("standby.signal"), "").unwrap();
    pg2.append_conf(&[
        &pod2.archive_command(),
        &format!("primary_conninfo = '{}'", pg1.conninfo("trust_user")),
    ])
    .unwrap();
    pg2.start_server().expect("start the standby");

    let mut side2 = pod2.start("instance", &pod2.env(&pg2, &url, &s3));
    pod2.scrape().await;
    load(&pg1, "before-failover", 100);
    wait("the standby replays", 30, || state(&pg2) == state(&pg1));
    assert!(
        pg2.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap()
            == "0",
        "the standby's sidecar must not stream"
    );

    // A switchover names the new primary as target first: the old primary's sidecar stops
    // streaming. Then it dies (kill -9): what pg-1 writes now reaches the standby but
    // neither the stream nor the archive (every archive call fails).
    pod1.set_primary("pg-2");
    pod1.scrape().await;
    wait("the old primary's sidecar stops", 30, || !slot_active(&pg1));
    side1.kill9();
    for tag in ["unstreamed-1", "unstreamed-2"] {
        load(&pg1, tag, 100);
        pg1.psql("SELECT pg_switch_wal()").unwrap();
    }
    wait("the standby replays", 30, || state(&pg2) == state(&pg1));

    // Failover: pg-2 is promoted and the Cluster names it; pg-1 writes on for a moment
    // (the WAL pg_rewind will undo), then stops.
    pg2.psql("SELECT pg_promote(true, 60)").unwrap();
    pod2.set_primary("pg-2");
    load(&pg1, "diverged", 50);
    pg1.psql("SELECT pg_switch_wal()").unwrap();
    pg1.stop().unwrap();

    pod2.scrape().await;
    wait("the new primary's sidecar streams", 60, || {
        slot_active(&pg2)
    });
    load(&pg2, "after-failover", 100);
    let seg = pg2.psql("SELECT pg_walfile_name(pg_switch_wal())").unwrap();
    assert!(seg.starts_with("00000002"), "{seg}");
    let key = format!("wal/{seg}");
    let mut stored = None;
    for _ in 0..300 {
        if let Ok(head) = store.get_range(&key, 0, MAX_HEADER_LEN as u64).await {
            stored = Some(Header::parse(&head).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored =
        stored.unwrap_or_else(|| panic!("{key} never reached the bucket\n{}", side2.output_text()));
    assert_eq!(
        stored.hash,
        blake3::hash(&pg2.wal_file(&seg).unwrap()),
        "{key}"
    );
    assert!(
        store.head("wal/00000002.history").await.unwrap().is_some(),
        "no history file"
    );
    // Timeline 1 has no gap up to the segment it ended in: what the dead sidecar never
    // stored, the new primary's sidecar streamed from where the bucket ended (PostgreSQL
    // serves a past timeline's WAL to a walsender), before following the switch.
    let history = String::from_utf8(pg2.wal_file("00000002.history").unwrap()).unwrap();
    let switch = common::lsn(history.split_whitespace().nth(1).unwrap());
    let switch_seg = switch.segment_number(common::seg());
    let (tl1, _) = stored_segments(store.as_ref(), "wal/00000001", common::seg()).await;
    let tl1: Vec<u64> = tl1.iter().map(|s| s.0).collect();
    let first = *tl1.iter().min().unwrap();
    for segno in first..switch_seg.0 {
        assert!(
            tl1.contains(&segno),
            "timeline 1 segment {segno:X} missing: {tl1:X?}\n{}",
            side2.output_text()
        );
    }
    let side2_log = side2.output_text();
    let from_new_primary = tl1
        .iter()
        .filter(|s| {
            let name = pgagent_protocol::segment_file_name(
                pgagent_protocol::TimelineId(1),
                pgagent_protocol::SegNo(**s),
                common::seg(),
            );
            side2_log.contains(&format!("uploaded key=\"wal/{name}\""))
        })
        .count();
    assert!(
        from_new_primary > 0,
        "the new primary's sidecar stored no timeline 1 segment: the test made no gap ({tl1:X?}, switch {switch})\n{side2_log}"
    );

    // pg_rewind of the old primary, its WAL of timeline 1 taken out of pg_wal so that it
    // must ask for it: through the old primary's sidecar, in rewind mode.
    let pg_wal = pg1.data_dir().join("pg_wal");
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(&pg_wal).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name.len() == 24
            && name.starts_with("00000001")
            && store.head(&format!("wal/{name}")).await.unwrap().is_some()
        {
            std::fs::remove_file(pg_wal.join(&name)).unwrap();
            removed.push(name);
        }
    }
    assert!(!removed.is_empty(), "no segment to take out");
    pg1.append_conf(&[&format!(
        "restore_command = '{}'",
        pod1.restore_command(true)
    )])
    .unwrap();
    // The old primary's sidecar back, as a replica's: it serves restore_command only.
    let mut side1 = pod1.start("instance", &pod1.env(&pg1, &url_via_proxy, &s3));
    pod1.scrape().await;
    pod1.clear_calls();
    proxy.record_sent();
    let rewind = pg1
        .pg_command("pg_rewind")
        .arg("--target-pgdata")
        .arg(pg1.data_dir())
        .arg(format!(
            "--source-server=host={} port={} user=postgres dbname=postgres",
            pg2.socket_dir().display(),
            pg2.port()
        ))
        .arg("--restore-target-wal")
        .output()
        .unwrap();
    assert!(
        rewind.status.success(),
        "pg_rewind: {}",
        common::text(&rewind)
    );
    let asked: Vec<String> = pod1
        .calls()
        .into_iter()
        .filter(|c| c.0 == "restore")
        .map(|(_, file, _, code)| {
            assert_eq!(code, "Ok", "{file}");
            file
        })
        .collect();
    assert!(
        !asked.is_empty(),
        "pg_rewind asked for nothing: {}",
        common::text(&rewind)
    );
    let fetched: Vec<&String> = removed
        .iter()
        .filter(|name| {
            proxy.sent_count(format!("GET /{BUCKET}/{PREFIX}/wal/{name}").as_bytes()) > 0
        })
        .collect();
    let mut asked_sorted = asked.clone();
    asked_sorted.sort();
    let mut fetched_sorted: Vec<String> = fetched.into_iter().cloned().collect();
    fetched_sorted.sort();
    assert_eq!(
        fetched_sorted, asked_sorted,
        "rewind mode fetched other segments than asked"
    );

    // The rewound server follows the new primary. pg_rewind copied the source's
    // configuration files: the server's own port and socket directory come back.
    std::fs::write(pg1.data_dir().join("standby.signal"), "").unwrap();
    pg1.append_conf(&[
        &format!("primary_conninfo = '{}'", pg2.conninfo("trust_user")),
        &format!("port = {}", pg1.port()),
        &format!("unix_socket_directories = '{}'", pg1.socket_dir().display()),
    ])
    .unwrap();
    pg1.start_server().expect("start the rewound server");
    load(&pg2, "after-rewind", 10);
    wait("the rewound server follows", 60, || {
        pg1.psql("SELECT count(*) FROM t").ok() == pg2.psql("SELECT count(*) FROM t").ok()
    });
    assert_eq!(state(&pg1), state(&pg2));

    assert!(side1.terminate().success(), "{}", side1.output_text());
    assert!(side2.terminate().success(), "{}", side2.output_text());
}
