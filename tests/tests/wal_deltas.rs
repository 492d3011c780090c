//! `pgagent list wal`, `verify --wal` and `prune` on a store whose segment being filled is
//! held as deltas (`wal/<segment>.partial.d/<start>-<end>`, README "Store layout"), built
//! object by object with the store API: a delta is a segment's WAL only as far as the run
//! from its start reaches without a hole; a delta must hold as many bytes as its name says;
//! the deltas (and `.partial`) of a segment stored complete are left for prune, which also
//! deletes those of segments before the WAL retention floor.

mod common;

use common::*;
use pgagent_protocol::{segment_file_name, SegNo, TimelineId};
use pgagent_storage::{envelope, ObjectStore};
use pgagent_tests::run_pgagent;

const SYSTEM_ID: &str = "7000000000000000007";

fn seg_name(n: u64) -> String {
    segment_file_name(TimelineId(1), SegNo(n), seg())
}

async fn put(store: &dyn ObjectStore, key: &str, raw: &[u8]) {
    store
        .put(key, envelope::seal(raw, 1).body)
        .await
        .unwrap_or_else(|e| panic!("{key}: {e}"));
}

/// A backup starting in segment 3; segments 1-3 complete, with the leftover deltas of 1
/// and 3 (and 3's `.partial` from before deltas); segment 4 being filled: deltas
/// 0-0x1000, 0x1000-0x3000, then past a hole 0x4000-0x5000.
async fn plant(store: &dyn ObjectStore) {
    store
        .put("cluster.json", cluster_json(SYSTEM_ID).into())
        .await
        .unwrap();
    let manifest = complete_manifest("20261101T030000Z", "0/3000028", SYSTEM_ID);
    put(
        store,
        "backups/20261101T030000Z/manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .await;
    let wal = vec![7u8; SEG as usize];
    for n in 1..=3 {
        put(store, &format!("wal/{}", seg_name(n)), &wal).await;
    }
    for (n, ranges) in [
        (1, &[(0, 0x1000), (0x1000, 0x2000), (0x2000, 0x3000)][..]),
        (3, &[(0, 0x1000), (0x1000, 0x2000), (0x2000, 0x3000)][..]),
        (4, &[(0, 0x1000), (0x1000, 0x3000), (0x4000, 0x5000)][..]),
    ] {
        for &(start, end) in ranges {
            put(
                store,
                &delta_key(n, start, end),
                &wal[start as usize..end as usize],
            )
            .await;
        }
    }
    put(
        store,
        &format!("wal/{}.partial", seg_name(3)),
        &wal[..0x1800],
    )
    .await;
}

fn run(env: &[(&str, String)], args: &[&str]) -> (Option<i32>, String) {
    let out = run_pgagent(args, env);
    (out.status.code(), text(&out))
}

async fn wal_keys(store: &dyn ObjectStore) -> Vec<String> {
    let listed = store.list("wal/").await.unwrap();
    listed.into_iter().map(|m| m.key).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn list_verify_and_prune_read_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("store").display());
    let store = open_store(&url, &[]).await;
    plant(store.as_ref()).await;
    let env = vec![
        ("PGAGENT_STORE_URL", url.clone()),
        ("PGAGENT_BACKUP_KEEP_BACKUPS", "1".to_string()),
    ];

    // list: segment 4 is partial to its run's end, with a note for the hole; the deltas of
    // complete segments are a count, never lines of their own.
    let (code, out) = run(&env, &["list", "wal"]);
    assert_eq!(code, Some(0), "{out}");
    let partial = format!("{}  partial: WAL up to 0/4003000", seg_name(4));
    assert!(out.contains(&partial), "{out}");
    assert!(out.contains("past a hole at 0/4003000"), "{out}");
    assert!(out.contains("  7 deltas and .partial objects of segments stored complete"));
    assert!(
        !out.contains(".partial.d/") && !out.contains("GAP"),
        "{out}"
    );
    let (code, json) = run(&env, &["list", "wal", "--json"]);
    assert_eq!(code, Some(0), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["ranges"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["partials"][0]["bytes"], 0x3000, "{v}");
    assert_eq!(v[0]["partials"][0]["beyond_hole"], true, "{v}");

    // verify --wal: a delta holding fewer bytes than its name says is a problem naming it.
    let short = delta_key(4, 0x5000, 0x6000);
    put(store.as_ref(), &short, &[7u8; 0x800]).await;
    let (code, out) = run(&env, &["verify", "--wal"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "PROBLEM {short}: holds 2048 bytes, its name says 4096"
        )),
        "{out}"
    );
    store.delete(&short).await.unwrap();
    // Without it: continuous to the run's end, and the hole in the newest segment noted.
    let (code, out) = run(&env, &["verify", "--wal"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "WAL continuous from {} to {} (WAL up to 0/4003000)",
            seg_name(3),
            seg_name(4)
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "NOTE {}: the newest WAL of timeline 1",
            seg_name(4)
        )),
        "{out}"
    );
    assert!(out.contains("WAL: 13 objects checked"), "{out}");

    // prune --dry-run counts; prune deletes segments 1 and 2 and 1's deltas (before the
    // backup's segment) and the pieces of complete segment 3; segment 4's deltas stay.
    let before = wal_keys(store.as_ref()).await;
    let (code, out) = run(&env, &["prune", "--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("would delete 5 WAL objects before 0/3000000"),
        "{out}"
    );
    assert!(
        out.contains("would delete 4 deltas and .partial objects of segments stored complete"),
        "{out}"
    );
    assert!(!out.contains(".partial.d/"), "{out}");
    assert_eq!(
        wal_keys(store.as_ref()).await,
        before,
        "a dry run deletes nothing"
    );
    let (code, out) = run(&env, &["prune"]);
    assert_eq!(code, Some(0), "{out}");
    let mut want = vec![format!("wal/{}", seg_name(3))];
    want.extend([
        delta_key(4, 0, 0x1000),
        delta_key(4, 0x1000, 0x3000),
        delta_key(4, 0x4000, 0x5000),
    ]);
    assert_eq!(wal_keys(store.as_ref()).await, want, "{out}");
    let (code, out) = run(&env, &["list", "wal"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&partial) && !out.contains("stored complete"),
        "{out}"
    );
}
