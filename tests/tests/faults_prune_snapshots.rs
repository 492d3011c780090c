//! `pgagent prune` keeps the WAL that the ZFS snapshots recorded in the store still need.
//! Snapshots follow their own retention (weekly ones outlive `backup.keep_backups` daily
//! backups), and restoring one replays WAL from its start LSN: prune keeps WAL back to the
//! oldest snapshot record's start as well as the oldest kept backup's. The store is built
//! object by object (no ZFS needed): prune reads records, manifests and WAL names only.

mod common;

use std::path::Path;

use bytes::Bytes;
use common::*;
use pgagent_protocol::{segment_file_name, SegNo, TimelineId};
use pgagent_storage::envelope;
use pgagent_storage::snapshot::{SnapshotRecord, SNAPSHOT_FORMAT_VERSION};
use pgagent_tests::run_pgagent;

fn put_sealed(path: &Path, raw: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let sealed: Bytes = envelope::seal(raw, 1).body;
    std::fs::write(path, &sealed).unwrap();
}

fn record(id: &str, start_lsn: &str) -> SnapshotRecord {
    SnapshotRecord {
        format: SNAPSHOT_FORMAT_VERSION,
        id: id.into(),
        system_identifier: 7000000000000000005,
        pg_version: 150000,
        snapshots: vec![format!("tank/pg@pgagent-{id}")],
        mountpoints: vec!["/var/lib/postgresql".into()],
        pgdata: "/var/lib/postgresql/15/main".into(),
        timeline: 1,
        start_lsn: start_lsn.into(),
        stop_lsn: start_lsn.into(),
        started_at: "2026-10-25T10:00:00Z".into(),
        finished_at: "2026-10-25T10:00:01Z".into(),
        backup_label: format!("START WAL LOCATION: {start_lsn}\n"),
        tablespace_map: None,
        host: "db1".into(),
    }
}

/// Segments 1-10 of timeline 1, a `.partial` of 11, and a `.backup` file in 2; backups
/// starting in segments 2 and 8; a snapshot record starting in segment 5.
fn store(dir: &Path) -> std::path::PathBuf {
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    write_cluster_json(&store, "7000000000000000005");
    for n in 1..=10 {
        put_sealed(&store.join("wal").join(seg_name(n)), b"wal");
    }
    put_sealed(
        &store.join("wal").join(format!("{}.partial", seg_name(11))),
        b"wal",
    );
    put_sealed(
        &store
            .join("wal")
            .join(format!("{}.00000028.backup", seg_name(2))),
        b"label",
    );
    for (id, start) in [
        ("20261101T030000Z", "0/2000028"),
        ("20261108T030000Z", "0/8000028"),
    ] {
        let json =
            serde_json::to_vec(&complete_manifest(id, start, "7000000000000000005")).unwrap();
        put_sealed(&store.join("backups").join(id).join("manifest.json"), &json);
    }
    let r = record("20261025T100000Z", "0/5000060");
    put_sealed(
        &store.join("snapshots/20261025T100000Z.json"),
        &serde_json::to_vec(&r).unwrap(),
    );
    store
}

fn seg_name(n: u64) -> String {
    segment_file_name(TimelineId(1), SegNo(n), seg())
}

fn wal_left(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn prune_keeps_the_wal_of_the_oldest_snapshot_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let env = vec![
        ("PGAGENT_STORE_URL", format!("file://{}", store.display())),
        ("PGAGENT_BACKUP_KEEP_BACKUPS", "1".to_string()),
    ];
    let out = run_pgagent(&["prune"], &env);
    assert!(out.status.success(), "{}", text(&out));
    // The older backup goes; the WAL before the snapshot's start segment (5) goes; the
    // snapshot's WAL stays although it is older than the kept backup's start (8).
    assert!(
        text(&out).contains("deleted backup 20261101T030000Z"),
        "{}",
        text(&out)
    );
    let mut want: Vec<String> = (5..=10).map(seg_name).collect();
    want.push(format!("{}.partial", seg_name(11)));
    assert_eq!(wal_left(&store), want, "{}", text(&out));

    // Once the record is gone (snapshot retention destroyed the snapshot), the WAL back to
    // the kept backup's start is all that stays.
    std::fs::remove_file(store.join("snapshots/20261025T100000Z.json")).unwrap();
    let out = run_pgagent(&["prune"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let mut want: Vec<String> = (8..=10).map(seg_name).collect();
    want.push(format!("{}.partial", seg_name(11)));
    assert_eq!(wal_left(&store), want, "{}", text(&out));
}

/// A record prune cannot read might be the oldest: prune stops before deleting anything
/// and says which record and what to do.
#[test]
fn a_damaged_snapshot_record_stops_prune_before_it_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let bad = store.join("snapshots/20261020T100000Z.json");
    std::fs::write(&bad, b"not an envelope").unwrap();
    let before = wal_left(&store);
    let env = vec![
        ("PGAGENT_STORE_URL", format!("file://{}", store.display())),
        ("PGAGENT_BACKUP_KEEP_BACKUPS", "1".to_string()),
    ];
    let out = run_pgagent(&["prune"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("snapshots/20261020T100000Z.json"),
        "{}",
        text(&out)
    );
    assert_eq!(wal_left(&store), before);
    assert!(store
        .join("backups/20261101T030000Z/manifest.json")
        .exists());
}
