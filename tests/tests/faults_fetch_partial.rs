//! `pgagent fetch` serves a segment's `.partial` only when it is the newest WAL of its
//! timeline (DESIGN.md, "fetch"): a `.partial` left behind newer WAL of its timeline, or one
//! holding WAL past the point where a later timeline forked off its timeline, is not the
//! segment, and replaying it zero-padded would end recovery in the middle of the WAL or
//! replay a branch the cluster left. Such a request is answered 1 (not found), through the
//! fetch server and without one, while the newest segment's `.partial` is still served, also
//! when a later timeline starts exactly where it ends.

mod common;

use std::path::Path;
use std::process::Output;

use bytes::Bytes;
use common::*;
use pgagent_protocol::{segment_file_name, SegNo, TimelineId};
use pgagent_storage::envelope;
use pgagent_tests::run_pgagent;

fn name(tli: u32, segno: u64) -> String {
    segment_file_name(TimelineId(tli), SegNo(segno), seg())
}

/// Raw content of an object, distinct per name.
fn raw(name: &str, len: u64) -> Vec<u8> {
    let seed = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    (0..len).map(|i| ((i ^ seed) % 251) as u8).collect()
}

/// A file:// store of a cluster that failed over from timeline 1 to 2 at 0/3200000: timeline
/// 1 has segments 1-2 complete and the old primary's `.partial` of 3, holding WAL up to
/// 0/3300000, past the switch. Timeline 2 has 3 and 5 complete, a stale `.partial` of 4
/// (behind 5), and the `.partial` of 6 holding WAL up to 0/6300000, where timeline 3 begins
/// (a standby promoted at the end of the WAL in the store; nothing of timeline 3 uploaded
/// yet but its history file).
fn store(dir: &Path) -> String {
    let store = dir.join("store");
    std::fs::create_dir_all(store.join("wal")).unwrap();
    write_cluster_json(&store, "7000000000000000004");
    let put = |file: String, body: Vec<u8>| {
        let sealed: Bytes = envelope::seal(&body, 1).body;
        std::fs::write(store.join("wal").join(file), &sealed).unwrap();
    };
    for (tli, segno) in [(1, 1), (1, 2), (2, 3), (2, 5)] {
        put(name(tli, segno), raw(&name(tli, segno), SEG));
    }
    for (tli, segno) in [(1, 3), (2, 4), (2, 6)] {
        let file = format!("{}.partial", name(tli, segno));
        put(file.clone(), raw(&file, 3 << 20));
    }
    put(
        "00000002.history".into(),
        b"1\t0/3200000\tno recovery target specified\n".to_vec(),
    );
    put(
        "00000003.history".into(),
        b"1\t0/3200000\tno recovery target specified\n2\t0/6300000\tno recovery target specified\n"
            .to_vec(),
    );
    format!("file://{}", store.display())
}

fn fetch(env: &[(&str, String)], file: &str, dest: &Path) -> Output {
    run_pgagent(&["fetch", file, dest.to_str().unwrap()], env)
}

fn check(env: &[(&str, String)], dir: &Path, how: &str) {
    let dest = dir.join("RECOVERYXLOG");
    // The newest segment of timeline 2 exists only as .partial, whole WAL of timeline 2 up to
    // where timeline 3 begins: served, zero-padded.
    let newest = name(2, 6);
    let out = fetch(env, &newest, &dest);
    assert_eq!(out.status.code(), Some(0), "{how}: {}", text(&out));
    let standalone = text(&out).contains("fetching directly from the store");
    assert_eq!(standalone, how == "standalone", "{how}: {}", text(&out));
    let got = std::fs::read(&dest).unwrap();
    let partial = raw(&format!("{newest}.partial"), 3 << 20);
    assert_eq!(got.len() as u64, SEG, "{how}");
    assert!(got[..partial.len()] == partial[..], "{how}");
    assert!(got[partial.len()..].iter().all(|&b| b == 0), "{how}");
    std::fs::remove_file(&dest).unwrap();

    // A .partial behind newer WAL of its timeline, and the old primary's .partial holding
    // WAL past the switch point: not found, nothing written.
    for (stale, why) in [
        (
            name(2, 4),
            "later WAL of timeline 2 (000000020000000000000005)",
        ),
        (name(1, 3), "timeline 2 forked off timeline 1 at 0/3200000"),
    ] {
        let out = fetch(env, &stale, &dest);
        assert_eq!(out.status.code(), Some(1), "{how}: {stale}: {}", text(&out));
        assert!(!dest.exists(), "{how}: {stale}");
        if how == "standalone" {
            assert!(text(&out).contains(why), "{stale}: {}", text(&out));
        }
    }

    // Complete segments are served as always.
    let out = fetch(env, &name(1, 2), &dest);
    assert_eq!(out.status.code(), Some(0), "{how}: {}", text(&out));
    assert!(
        std::fs::read(&dest).unwrap() == raw(&name(1, 2), SEG),
        "{how}"
    );
    std::fs::remove_file(&dest).unwrap();
}

#[test]
fn a_partial_is_served_only_as_the_newest_wal_of_its_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let url = store(dir.path());
    let staging = dir.path().join("staging");
    std::fs::create_dir(&staging).unwrap();

    // Through a restore-mode fetch server (the usual path).
    let env = vec![
        ("PGAGENT_STORE_URL", url.clone()),
        ("PGAGENT_STAGING_DIR", staging.display().to_string()),
        ("PGAGENT_FETCH_TIMEOUT", "10s".to_string()),
        ("PGAGENT_FETCH_IDLE_TIMEOUT", "2s".to_string()),
    ];
    check(&env, dir.path(), "fetch server");

    // Standalone: no server can start (the staging directory and the runtime directories
    // are not directories), so fetch reads the store itself.
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, "").unwrap();
    let env = vec![
        ("PGAGENT_STORE_URL", url),
        ("PGAGENT_STAGING_DIR", blocked.display().to_string()),
        ("XDG_RUNTIME_DIR", blocked.display().to_string()),
        ("TMPDIR", blocked.display().to_string()),
        ("PGAGENT_FETCH_TIMEOUT", "10s".to_string()),
    ];
    check(&env, dir.path(), "standalone");
}
