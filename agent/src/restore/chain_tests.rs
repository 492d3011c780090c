use super::*;
use pgagent_storage::manifest::INCREMENTAL_FORMAT_VERSION;

/// A backup starting at `start` (MiB of WAL) and stopping 1 MiB later; incremental from
/// `parent` when given.
pub(crate) fn member(
    id: &str,
    start: u64,
    parent: Option<(&BackupManifest, &str)>,
) -> BackupManifest {
    let lsn = |mib: u64| format!("0/{:X}", mib << 20);
    let mut label = format!(
        "START WAL LOCATION: {} (file 00000001000000000000000{})\nCHECKPOINT LOCATION: {}\nSTART TIMELINE: 1\n",
        lsn(start),
        start % 10,
        lsn(start)
    );
    let mut m = BackupManifest {
        status: BackupStatus::Complete,
        system_identifier: "7000000000000000001".into(),
        pg_version_num: 170002,
        start_lsn: lsn(start),
        start_timeline: 1,
        stop_lsn: Some(lsn(start + 1)),
        stop_timeline: Some(1),
        chunk_size: 1000,
        block_size: Some(8192),
        segment_blocks: Some(131_072),
        ..BackupManifest::announced(id)
    };
    if let Some((p, root)) = parent {
        label.push_str(&format!(
            "INCREMENTAL FROM LSN: {}\nINCREMENTAL FROM TLI: 1\n",
            p.start_lsn
        ));
        m.format_version = INCREMENTAL_FORMAT_VERSION;
        m.kind = BackupKind::Incremental;
        m.parent = Some(p.id.clone());
        m.root = Some(root.into());
        m.depth = p.depth + 1;
    }
    m.backup_label = label;
    m
}

/// full (WAL 1–2 MiB) ← inc1 (4–5) ← inc2 (8–9).
pub(crate) fn three() -> Vec<BackupManifest> {
    let full = member("full", 1, None);
    let inc1 = member("inc1", 4, Some((&full, "full")));
    let inc2 = member("inc2", 8, Some((&inc1, "full")));
    vec![full, inc1, inc2]
}

fn refused(members: &[BackupManifest], expect: &str) {
    let err = format!("{:#}", check_links(members).unwrap_err());
    assert!(err.contains(expect), "{err}\nexpected: {expect}");
}

#[test]
fn a_sound_chain_passes_and_reads_oldest_first() {
    let members = three();
    check_links(&members).unwrap();
    check_links(&members[..1]).unwrap();
    let chain = Chain { members };
    assert_eq!(chain.describe(), "full ← inc1 ← inc2");
    assert_eq!(chain.newest().id, "inc2");
}

#[test]
fn broken_links_are_refused_naming_the_backup() {
    let mut m = three();
    m[1].backup_label = m[1].backup_label.replace(
        "INCREMENTAL FROM LSN: 0/100000",
        "INCREMENTAL FROM LSN: 0/100028",
    );
    refused(
        &m,
        "backup inc1 is incremental from LSN 0/100028, but its parent full starts at LSN 0/100000",
    );

    let mut m = three();
    m[2].backup_label = m[2]
        .backup_label
        .replace("INCREMENTAL FROM TLI: 1", "INCREMENTAL FROM TLI: 2");
    refused(
        &m,
        "backup inc2 is incremental from timeline 2, but its parent inc1 starts on timeline 1",
    );

    let mut m = three();
    m[2].backup_label = m[1].backup_label.replace("INCREMENTAL FROM", "X");
    refused(
        &m,
        "backup inc2 is incremental but its backup_label has no INCREMENTAL FROM lines",
    );

    // A child that starts before its parent stopped.
    let mut m = three();
    m[0].stop_lsn = Some("0/900000".into());
    refused(
        &m,
        "backup inc1 starts at LSN 0/400000, before its parent full stopped at 0/900000",
    );

    let mut m = three();
    m[2].system_identifier = "42".into();
    refused(&m, "backup inc2 is of system 42");

    let mut m = three();
    m[1].pg_version_num = 180000;
    refused(&m, "backup inc1 is of PostgreSQL 18");

    let mut m = three();
    m[2].block_size = Some(16384);
    refused(
        &m,
        "backup inc2 has block size 16384, its parent inc1 has 8192",
    );

    let mut m = three();
    m[2].root = Some("other".into());
    refused(&m, "backup inc2 names root Some(\"other\")");

    let mut m = three();
    m[2].depth = 5;
    refused(&m, "backup inc2 says depth 5");

    let mut m = three();
    m[2].parent = Some("full".into());
    refused(&m, "backup inc2 names parent Some(\"full\"), not inc1");

    // An incremental backup at the bottom, a full one above it.
    let m = three();
    refused(
        &m[1..],
        "backup inc1 is at the bottom of the chain but is incremental",
    );
    let m = [member("full", 1, None), member("x", 4, None)];
    refused(
        &m,
        "backup x is full but only the first backup of a chain may be",
    );

    let mut m = three();
    m[0].backup_label
        .push_str("INCREMENTAL FROM LSN: 0/1\nINCREMENTAL FROM TLI: 1\n");
    refused(
        &m,
        "backup full is full but its backup_label has INCREMENTAL FROM lines",
    );
}

#[tokio::test]
#[allow(clippy::disallowed_methods)] // a scratch store: its requests need no counting
async fn loading_follows_parents_and_refuses_missing_or_running_ones() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = pgagent_storage::open(&url, &Default::default())
        .await
        .unwrap();
    let members = three();
    for m in &members {
        catalog::put_manifest(store.as_ref(), None, m)
            .await
            .unwrap();
    }
    let chain = load_chain(store.as_ref(), None, members[2].clone())
        .await
        .unwrap();
    assert_eq!(chain.describe(), "full ← inc1 ← inc2");

    let mut running = members[0].clone();
    running.status = BackupStatus::Running;
    catalog::put_manifest(store.as_ref(), None, &running)
        .await
        .unwrap();
    let err = format!(
        "{:#}",
        load_chain(store.as_ref(), None, members[2].clone())
            .await
            .unwrap_err()
    );
    assert!(
        err.contains("backup full, parent of backup inc1, is not complete"),
        "{err}"
    );

    store
        .delete(&pgagent_storage::layout::backup_manifest_key("inc1"))
        .await
        .unwrap();
    let err = format!(
        "{:#}",
        load_chain(store.as_ref(), None, members[2].clone())
            .await
            .unwrap_err()
    );
    assert!(
        err.contains("backup inc1, parent of backup inc2, has no manifest"),
        "{err}"
    );
}
