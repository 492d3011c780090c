use super::*;
use pgagent_protocol::incremental::header_len;
use pgagent_storage::manifest::{BackupKind, FileEntry};

const BS: u32 = 8192;
const B: u64 = BS as u64;

fn header(truncation: u32, blocks: &[u32]) -> IncrementalHeader {
    IncrementalHeader {
        truncation_block_length: truncation,
        blocks: blocks.to_vec(),
        header_len: header_len(blocks.len() as u32, BS),
    }
}

fn stored(source: usize, offset: u64, blocks: u64) -> Run {
    Run::Stored {
        source,
        offset,
        len: blocks * B,
    }
}

fn zeros(blocks: u64) -> Run {
    Run::Zeros { len: blocks * B }
}

#[test]
fn the_newest_block_wins_then_older_incrementals_then_the_whole_file() {
    let newest = header(4, &[1]);
    let middle = header(4, &[1, 2]);
    let plan = plan_blocks(
        BS,
        &newest,
        &[Shape::Incremental(&middle), Shape::Whole { size: 4 * B }],
    );
    assert_eq!(
        plan.runs,
        vec![
            stored(2, 0, 1),
            stored(0, B, 1),
            // Block 2 is the second block the middle file holds.
            stored(1, middle.header_len + B, 1),
            stored(2, 3 * B, 1),
        ]
    );
    assert_eq!((plan.len, plan.full_copy), (4 * B, None));
}

#[test]
fn blocks_no_backup_holds_are_zeros() {
    let plan = plan_blocks(BS, &header(4, &[]), &[Shape::Whole { size: 2 * B }]);
    assert_eq!(plan.runs, vec![stored(1, 0, 2), zeros(2)]);
    assert_eq!(plan.len, 4 * B);
    assert_eq!(plan.full_copy, None);
}

#[test]
fn blocks_at_or_past_the_truncation_length_never_come_from_older_backups() {
    // The relation was cut to 2 blocks: block 3 of the middle backup and blocks 2..4 of
    // the full one are gone.
    let middle = header(4, &[1, 3]);
    let plan = plan_blocks(
        BS,
        &header(2, &[]),
        &[Shape::Incremental(&middle), Shape::Whole { size: 4 * B }],
    );
    assert_eq!(
        plan.runs,
        vec![stored(2, 0, 1), stored(1, middle.header_len, 1)]
    );
    assert_eq!(plan.len, 2 * B);
}

#[test]
fn a_file_extended_past_its_truncation_length() {
    // Cut to 2 blocks, then extended to 6: blocks 2..5 are new; only block 5 was written.
    let newest = header(2, &[5]);
    let plan = plan_blocks(BS, &newest, &[Shape::Whole { size: 4 * B }]);
    assert_eq!(
        plan.runs,
        vec![stored(1, 0, 2), zeros(3), stored(0, newest.header_len, 1)]
    );
    assert_eq!(plan.len, 6 * B);
}

#[test]
fn the_full_copy_shortcut_needs_no_newer_block_and_the_exact_length() {
    // An older incremental file's block past the truncation length is not needed.
    let older = header(9, &[7]);
    let plan = plan_blocks(
        BS,
        &header(3, &[]),
        &[Shape::Incremental(&older), Shape::Whole { size: 3 * B }],
    );
    assert_eq!(plan.full_copy, Some(2));
    assert_eq!(plan.runs, vec![stored(2, 0, 3)]);
    assert_eq!(plan.len, 3 * B);

    // Longer than the truncation length: rebuilt, cut short.
    let plan = plan_blocks(BS, &header(3, &[]), &[Shape::Whole { size: 4 * B }]);
    assert_eq!(plan.full_copy, None);
    assert_eq!(plan.runs, vec![stored(1, 0, 3)]);
    // A block from the newest file rules the shortcut out.
    let plan = plan_blocks(BS, &header(3, &[0]), &[Shape::Whole { size: 3 * B }]);
    assert_eq!(plan.full_copy, None);
    // An empty file copied as it is: nothing to read.
    let plan = plan_blocks(BS, &header(0, &[]), &[Shape::Whole { size: 0 }]);
    assert_eq!((plan.full_copy, plan.runs.len(), plan.len), (Some(1), 0, 0));
}

fn entry(path: &str, kind: EntryKind) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind,
        mode: 0o600,
        size: 0,
        mtime: 0,
        chunks: vec![],
        target: None,
    }
}

fn backup(id: &str, files: &[&str]) -> BackupManifest {
    BackupManifest {
        kind: if id == "full" {
            BackupKind::Full
        } else {
            BackupKind::Incremental
        },
        files: files
            .iter()
            .map(|p| match p.strip_suffix('/') {
                Some(dir) => entry(dir, EntryKind::Dir),
                None => entry(p, EntryKind::File),
            })
            .collect(),
        ..BackupManifest::announced(id)
    }
}

fn src(backup: usize, entry: usize, incremental: bool) -> Source {
    Source {
        backup,
        entry,
        incremental,
    }
}

#[test]
fn a_chain_plan_rebuilds_incremental_files_and_copies_the_rest() {
    let chain = [
        backup(
            "full",
            &[
                "base/",
                "base/5/",
                "base/5/16384",
                "base/5/16390",
                "PG_VERSION",
            ],
        ),
        backup(
            "inc1",
            &[
                "base/",
                "base/5/",
                "base/5/INCREMENTAL.16384",
                "base/5/16390",
            ],
        ),
        backup(
            "inc2",
            &[
                "base/",
                "base/5/",
                "backup_label",
                "base/5/INCREMENTAL.16384",
                "PG_VERSION",
                "INCREMENTAL.conf",
                "pg_xact/INCREMENTAL.0000",
            ],
        ),
    ];
    let plan = plan_chain(&chain).unwrap();
    assert_eq!(plan.dirs, vec![0, 1]);
    assert_eq!(plan.label, Some(2));
    let paths: Vec<&str> = plan.files.iter().map(|f| f.path.as_str()).collect();
    // base/5/16390, dropped before the newest backup, is not restored; INCREMENTAL.
    // names outside relation directories are ordinary files.
    assert_eq!(
        paths,
        [
            "base/5/16384",
            "PG_VERSION",
            "INCREMENTAL.conf",
            "pg_xact/INCREMENTAL.0000"
        ]
    );
    assert_eq!(
        plan.files[0].sources,
        vec![src(2, 3, true), src(1, 2, true), src(0, 2, false)]
    );
    assert_eq!(plan.files[0].newest, 3);
    assert!(!plan.files[0].is_copy());
    assert_eq!(plan.files[1].sources, vec![src(2, 4, false)]);
    assert!(plan.files[1].is_copy());
}

#[test]
fn a_whole_file_in_the_middle_of_the_chain_ends_the_walk() {
    let chain = [
        backup("full", &["base/5/INCREMENTAL.1"]),
        backup("inc1", &["base/5/1"]),
        backup("inc2", &["base/5/INCREMENTAL.1"]),
    ];
    // The full backup's (broken) incremental file is never consulted.
    let plan = plan_chain(&chain).unwrap();
    assert_eq!(
        plan.files[0].sources,
        vec![src(2, 0, true), src(1, 0, false)]
    );
    // Rebuilt from the whole file alone.
    let newest = header(2, &[1]);
    let plan = plan_blocks(BS, &newest, &[Shape::Whole { size: 2 * B }]);
    assert_eq!(
        plan.runs,
        vec![stored(1, 0, 1), stored(0, newest.header_len, 1)]
    );
}

#[test]
fn an_incremental_file_at_the_bottom_of_the_chain_or_a_gap_is_an_error() {
    let chain = [
        backup("full", &["base/5/INCREMENTAL.1"]),
        backup("inc1", &["base/5/INCREMENTAL.1"]),
    ];
    let err = plan_chain(&chain).unwrap_err().to_string();
    assert!(
        err.contains("full backup full contains unexpected incremental file base/5/INCREMENTAL.1"),
        "{err}"
    );

    let chain = [
        backup("full", &["base/5/1"]),
        backup("inc1", &[]),
        backup("inc2", &["base/5/INCREMENTAL.1"]),
    ];
    let err = plan_chain(&chain).unwrap_err().to_string();
    assert!(
        err.contains("backup inc1 holds neither base/5/1 nor base/5/INCREMENTAL.1"),
        "{err}"
    );

    let chain = [backup("inc1", &["base/5/INCREMENTAL.1", "base/5/1"])];
    assert!(plan_chain(&chain).is_err());
    let chain = [
        backup("full", &["base/5/1"]),
        backup("inc1", &["base/5/INCREMENTAL.1", "base/5/1"]),
    ];
    let err = plan_chain(&chain).unwrap_err().to_string();
    assert!(err.contains("both give base/5/1"), "{err}");
}

#[test]
fn incremental_directories_are_pg_combinebackups() {
    for dir in [
        "base/1",
        "base/16384",
        "global",
        "pg_tblspc/16390/PG_17_1/5",
    ] {
        assert!(is_incremental_dir(dir), "{dir}");
    }
    for dir in ["base", "pg_xact", "global/x", "pg_wal", ""] {
        assert!(!is_incremental_dir(dir), "{dir}");
    }
    assert_eq!(
        rebuilt_path("global/INCREMENTAL.1262").as_deref(),
        Some("global/1262")
    );
    assert_eq!(rebuilt_path("INCREMENTAL.1262"), None);
}
