use super::*;

fn file(path: &str, size: u64, chunks: usize) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind: EntryKind::File,
        mode: 0o600,
        size,
        mtime: 1_700_000_000,
        chunks: vec!["ab".repeat(32); chunks],
        target: None,
    }
}

fn manifest(files: Vec<FileEntry>) -> BackupManifest {
    BackupManifest {
        status: BackupStatus::Complete,
        system_identifier: "7000000000000000001".into(),
        pg_version_num: 150004,
        label: "pgagent".into(),
        start_lsn: "0/2000028".into(),
        start_timeline: 1,
        stop_lsn: Some("0/2000100".into()),
        stop_timeline: Some(1),
        started_at: "2026-11-21T03:00:00Z".into(),
        finished_at: Some("2026-11-21T03:00:10Z".into()),
        chunk_size: 1 << 20,
        backup_label: "START WAL LOCATION: 0/2000028\n".into(),
        tablespaces: vec![TablespaceEntry {
            oid: 16390,
            location: "/srv/ts1".into(),
        }],
        files,
        ..BackupManifest::announced("20261121T030000Z")
    }
}

#[test]
fn a_sound_manifest_round_trips_and_passes() {
    let dir = FileEntry {
        path: "base".into(),
        kind: EntryKind::Dir,
        mode: 0o700,
        size: 0,
        mtime: 0,
        chunks: vec![],
        target: None,
    };
    let link = FileEntry {
        path: "pg_tblspc/16390".into(),
        kind: EntryKind::Symlink,
        mode: 0o777,
        size: 0,
        mtime: 0,
        chunks: vec![],
        target: Some("/srv/ts1".into()),
    };
    let m = manifest(vec![
        dir,
        file("base/1/1259", (1 << 20) + 1, 2),
        file("PG_VERSION", 3, 1),
        file("empty", 0, 0),
        link,
    ]);
    m.check().unwrap();
    let text = serde_json::to_string_pretty(&m).unwrap();
    let back: BackupManifest = serde_json::from_str(&text).unwrap();
    assert_eq!(back, m);
    assert_eq!(m.start().unwrap(), (Lsn(0x200_0028), TimelineId(1)));
    assert_eq!(m.stop().unwrap(), Some((Lsn(0x200_0100), TimelineId(1))));
}

#[test]
fn an_incremental_manifest_names_its_chain_and_old_ones_read_as_full() {
    let full = manifest(vec![file("PG_VERSION", 3, 1)]);
    // A manifest written before incremental backups existed.
    let mut old = serde_json::to_value(&full).unwrap();
    for key in ["kind", "depth"] {
        old.as_object_mut().unwrap().remove(key);
    }
    old["stats"].as_object_mut().unwrap().remove("server_bytes");
    let old: BackupManifest = serde_json::from_value(old).unwrap();
    assert_eq!(
        (old.kind, old.depth, old.parent.clone()),
        (BackupKind::Full, 0, None)
    );
    old.check().unwrap();

    let inc = BackupManifest {
        format_version: INCREMENTAL_FORMAT_VERSION,
        kind: BackupKind::Incremental,
        parent: Some("20261120T030000Z".into()),
        root: Some("20261119T030000Z".into()),
        depth: 2,
        block_size: Some(8192),
        segment_blocks: Some(131_072),
        ..full.clone()
    };
    inc.check().unwrap();
    let back: BackupManifest = serde_json::from_str(&serde_json::to_string(&inc).unwrap()).unwrap();
    assert_eq!(back, inc);
    // Written as version 1 it would pass for a full backup with an old reader.
    for bad in [
        BackupManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            ..inc.clone()
        },
        BackupManifest {
            parent: None,
            ..inc.clone()
        },
        BackupManifest {
            depth: 0,
            ..inc.clone()
        },
        BackupManifest {
            block_size: None,
            ..inc.clone()
        },
        BackupManifest {
            parent: Some("x".into()),
            ..full.clone()
        },
    ] {
        assert!(
            matches!(bad.check(), Err(ManifestError::Format(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn hostile_paths_are_refused() {
    for path in [
        "",
        "/etc/passwd",
        "../x",
        "base/../../x",
        "base//1",
        "./PG_VERSION",
        "base/.",
        "a\0b",
        "a\nb",
    ] {
        let err = manifest(vec![file(path, 1, 1)]).check().unwrap_err();
        assert!(
            matches!(err, ManifestError::HostilePath(_)),
            "{path:?}: {err}"
        );
    }
}

#[test]
fn symlinks_only_to_listed_tablespaces() {
    let link = |path: &str, target: &str| FileEntry {
        path: path.into(),
        kind: EntryKind::Symlink,
        mode: 0o777,
        size: 0,
        mtime: 0,
        chunks: vec![],
        target: Some(target.into()),
    };
    for (path, target) in [
        ("pg_tblspc/16390", "/etc"),
        ("pg_tblspc/99", "/srv/ts1"),
        ("base/1/x", "/srv/ts1"),
        ("pg_wal", "/tmp"),
    ] {
        let err = manifest(vec![link(path, target)]).check().unwrap_err();
        assert!(matches!(err, ManifestError::HostileSymlink { .. }), "{err}");
    }
}

#[test]
fn bad_chunks_duplicates_and_counts_are_refused() {
    let mut f = file("a", 10, 1);
    f.chunks = vec!["AB".repeat(32)];
    assert!(matches!(
        manifest(vec![f]).check(),
        Err(ManifestError::BadChunk { .. })
    ));
    assert!(matches!(
        manifest(vec![file("a", 1, 1), file("a", 1, 1)]).check(),
        Err(ManifestError::Duplicate(_))
    ));
    assert!(matches!(
        manifest(vec![file("a", (1 << 20) + 1, 1)]).check(),
        Err(ManifestError::Inconsistent(..))
    ));
    let mut m = manifest(vec![]);
    m.format_version = 9;
    assert!(matches!(m.check(), Err(ManifestError::Format(_))));
    let mut m = manifest(vec![]);
    m.start_lsn = "zz".into();
    assert!(matches!(m.check(), Err(ManifestError::Format(_))));
}
