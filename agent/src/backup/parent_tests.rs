use std::time::{Duration, SystemTime};

use pgagent_protocol::{HistoryEntry, Lsn, TimelineHistory, TimelineId};
use pgagent_storage::manifest::{
    BackupKind, BackupManifest, BackupStatus, EntryKind, FileEntry, INCREMENTAL_FORMAT_VERSION,
};

use super::*;

fn server() -> ServerFacts {
    ServerFacts {
        version_num: 170_010,
        summarize_wal: true,
        summary_keep: Some(Duration::from_secs(10 * 86_400)),
        data_checksums: true,
        block_size: 8192,
        segment_blocks: 131_072,
        timeline: TimelineId(1),
        history: TimelineHistory::default(),
    }
}

/// 2026-12-06T03:00:00Z.
fn now() -> SystemTime {
    humantime::parse_rfc3339("2026-12-06T03:00:00Z").unwrap()
}

fn full(id: &str, started: &str) -> BackupManifest {
    BackupManifest {
        status: BackupStatus::Complete,
        pg_version_num: 170_010,
        start_lsn: "0/2000028".into(),
        start_timeline: 1,
        stop_lsn: Some("0/2000100".into()),
        stop_timeline: Some(1),
        started_at: started.into(),
        block_size: Some(8192),
        segment_blocks: Some(131_072),
        data_checksums: Some(true),
        pg_manifest: Some(FileEntry {
            path: "backup_manifest".into(),
            kind: EntryKind::File,
            mode: 0o600,
            size: 1,
            mtime: 0,
            chunks: vec!["ab".repeat(32)],
            target: None,
        }),
        ..BackupManifest::announced(id)
    }
}

fn reason(c: Choice) -> FallbackReason {
    match c {
        Choice::Full(Some((r, why))) => {
            assert!(!why.is_empty());
            r
        }
        other => panic!("not a fallback: {other:?}"),
    }
}

#[test]
fn the_newest_complete_backup_is_the_parent() {
    let p = full("20261205T030000Z", "2026-12-05T03:00:00Z");
    let c = choose(IncrementalMode::Auto, 6, &server(), Some(&p), now());
    assert_eq!(c, Choice::Incremental(Box::new(p.clone())));
    assert_eq!(
        choose(IncrementalMode::Off, 6, &server(), Some(&p), now()),
        Choice::Full(None)
    );
}

#[test]
fn each_reason_for_a_full_backup() {
    let p = full("20261205T030000Z", "2026-12-05T03:00:00Z");
    let s = server();
    let with = |s: ServerFacts, p: Option<&BackupManifest>| {
        reason(choose(IncrementalMode::Auto, 6, &s, p, now()))
    };
    assert_eq!(
        with(
            ServerFacts {
                version_num: 160_008,
                ..s.clone()
            },
            Some(&p)
        ),
        FallbackReason::ServerTooOld
    );
    for buggy in [170_000, 170_007, 180_000, 180_001] {
        assert_eq!(
            with(
                ServerFacts {
                    version_num: buggy,
                    ..s.clone()
                },
                Some(&p)
            ),
            FallbackReason::KnownBug,
            "{buggy}"
        );
    }
    assert_eq!(
        with(
            ServerFacts {
                summarize_wal: false,
                ..s.clone()
            },
            Some(&p)
        ),
        FallbackReason::SummarizeWalOff
    );
    assert_eq!(with(s.clone(), None), FallbackReason::NoParent);
    let deep = BackupManifest {
        format_version: INCREMENTAL_FORMAT_VERSION,
        kind: BackupKind::Incremental,
        parent: Some("x".into()),
        root: Some("y".into()),
        depth: 6,
        ..p.clone()
    };
    assert_eq!(with(s.clone(), Some(&deep)), FallbackReason::ChainCap);
    assert!(matches!(
        choose(IncrementalMode::Auto, 7, &s, Some(&deep), now()),
        Choice::Incremental(_)
    ));

    // Each way a parent does not qualify.
    let unqualified = [
        BackupManifest {
            status: BackupStatus::Running,
            ..p.clone()
        },
        BackupManifest {
            pg_version_num: 180_002,
            ..p.clone()
        },
        BackupManifest {
            pg_manifest: None,
            ..p.clone()
        },
        BackupManifest {
            block_size: None,
            ..p.clone()
        },
        BackupManifest {
            segment_blocks: Some(6),
            ..p.clone()
        },
        BackupManifest {
            data_checksums: Some(false),
            ..p.clone()
        },
        // Older than the summaries kept (10 days) less the margin (1 day).
        full("20261127T030000Z", "2026-11-27T02:59:00Z"),
        // Another timeline, not in the server's history.
        BackupManifest {
            stop_timeline: Some(2),
            ..p.clone()
        },
    ];
    for bad in unqualified {
        assert_eq!(
            with(s.clone(), Some(&bad)),
            FallbackReason::NoParent,
            "{bad:?}"
        );
    }
    // Nine days old is young enough; with summaries kept forever, any age is.
    let nine = full("20261127T030000Z", "2026-11-27T03:00:01Z");
    assert!(matches!(
        choose(IncrementalMode::Auto, 6, &s, Some(&nine), now()),
        Choice::Incremental(_)
    ));
    let old = full("20250101T030000Z", "2025-01-01T03:00:00Z");
    let forever = ServerFacts {
        summary_keep: None,
        ..s.clone()
    };
    assert!(matches!(
        choose(IncrementalMode::Auto, 6, &forever, Some(&old), now()),
        Choice::Incremental(_)
    ));
}

#[test]
fn a_parent_on_an_ancestor_timeline_must_stop_before_the_switch() {
    let promoted = ServerFacts {
        timeline: TimelineId(2),
        history: TimelineHistory {
            entries: vec![HistoryEntry {
                parent: TimelineId(1),
                switch_point: Lsn(0x300_0000),
                reason: "no recovery target specified".into(),
            }],
        },
        ..server()
    };
    let before = full("20261205T030000Z", "2026-12-05T03:00:00Z");
    assert!(matches!(
        choose(IncrementalMode::Auto, 6, &promoted, Some(&before), now()),
        Choice::Incremental(_)
    ));
    let past = BackupManifest {
        stop_lsn: Some("0/3000100".into()),
        ..before.clone()
    };
    assert_eq!(
        reason(choose(
            IncrementalMode::Auto,
            6,
            &promoted,
            Some(&past),
            now()
        )),
        FallbackReason::NoParent
    );
}

#[test]
fn keep_times_as_show_prints_them() {
    let d = |s| parse_keep_time(s).unwrap();
    assert_eq!(d("10d"), Some(Duration::from_secs(864_000)));
    assert_eq!(d("90min"), Some(Duration::from_secs(5400)));
    assert_eq!(d("2h"), Some(Duration::from_secs(7200)));
    assert_eq!(d("600"), Some(Duration::from_secs(36_000)));
    assert_eq!(d("0"), None);
    assert!(parse_keep_time("ten days").is_err());
    assert!(parse_keep_time("3 fortnights").is_err());
    assert_eq!(FallbackReason::ALL.len(), 6);
    assert_eq!(FallbackReason::KnownBug.as_str(), "known_bug");
}
