//! `pgagent fetch` serves a segment's partial content (DESIGN.md, "fetch"): whatever part of
//! a segment was confirmed to the server is served, even when later WAL of its timeline
//! landed first (uploads are not ordered). Only a `.partial` holding WAL past the point where
//! a later timeline forked off its timeline is withheld: replaying it would replay a branch
//! the cluster left. Such a request is answered 1 (not found), through the fetch server and
//! without one, while a `.partial` is still served when a later timeline starts exactly
//! where it ends.
//!
//! The segment being filled is held as deltas (or, in stores written before deltas, as one
//! `.partial` object, which deltas may continue): fetch serves the run of WAL they hold from
//! the segment start up to the first hole, zero-padded, and never WAL past a hole.

mod common;

use std::path::Path;
use std::process::Output;

use bytes::Bytes;
use common::*;
use pgagent_protocol::{segment_file_name, SegNo, TimelineId};
use pgagent_storage::deltas::Delta;
use pgagent_storage::{envelope, ObjectStore};
use pgagent_tests::{run_pgagent, Garage};

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

    // A .partial behind newer WAL of its timeline is a prefix of that segment's WAL (its
    // complete object never landed): served, zero-padded.
    let behind = name(2, 4);
    let out = fetch(env, &behind, &dest);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{how}: {behind}: {}",
        text(&out)
    );
    let got = std::fs::read(&dest).unwrap();
    let partial = raw(&format!("{behind}.partial"), 3 << 20);
    assert!(got[..partial.len()] == partial[..], "{how}");
    assert!(got[partial.len()..].iter().all(|&b| b == 0), "{how}");
    std::fs::remove_file(&dest).unwrap();

    // The old primary's .partial holding WAL past the switch point: not found, nothing
    // written.
    let (forked, why) = (name(1, 3), "timeline 2 forked off timeline 1 at 0/3200000");
    let out = fetch(env, &forked, &dest);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{how}: {forked}: {}",
        text(&out)
    );
    assert!(!dest.exists(), "{how}: {forked}");
    if how == "standalone" {
        assert!(text(&out).contains(why), "{forked}: {}", text(&out));
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
fn a_partial_is_served_unless_a_later_timeline_forked_off_before_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let url = store(dir.path());
    for (how, env) in fetch_envs(dir.path(), &url) {
        check(&env, dir.path(), how);
    }
}

/// The environments of `pgagent fetch` from the store at `url`: through a restore-mode
/// fetch server (the usual path), and standalone (no server can start: the staging
/// directory and the runtime directories are not directories, so fetch reads the store
/// itself).
fn fetch_envs(dir: &Path, url: &str) -> [(&'static str, Vec<(&'static str, String)>); 2] {
    let staging = dir.join("staging");
    std::fs::create_dir(&staging).unwrap();
    let blocked = dir.join("not-a-dir");
    std::fs::write(&blocked, "").unwrap();
    [
        (
            "fetch server",
            vec![
                ("PGAGENT_STORE_URL", url.to_string()),
                ("PGAGENT_STAGING_DIR", staging.display().to_string()),
                ("PGAGENT_FETCH_TIMEOUT", "10s".to_string()),
                ("PGAGENT_FETCH_IDLE_TIMEOUT", "2s".to_string()),
            ],
        ),
        (
            "standalone",
            vec![
                ("PGAGENT_STORE_URL", url.to_string()),
                ("PGAGENT_STAGING_DIR", blocked.display().to_string()),
                ("XDG_RUNTIME_DIR", blocked.display().to_string()),
                ("TMPDIR", blocked.display().to_string()),
                ("PGAGENT_FETCH_TIMEOUT", "10s".to_string()),
            ],
        ),
    ]
}

/// Seals `wal[start..end)` as the delta `[start, end)` of segment `(tli, segno)`.
async fn put_delta(
    store: &dyn ObjectStore,
    (tli, segno): (u32, u64),
    start: u64,
    end: u64,
    wal: &[u8],
) -> String {
    let d = Delta {
        tli: TimelineId(tli),
        segno: SegNo(segno),
        start,
        end,
    };
    let key = d.key(seg());
    let body = envelope::seal(&wal[start as usize..end as usize], 1).body;
    store.put(&key, body).await.unwrap();
    key
}

/// The WAL of segment `(tli, segno)` in the stores of [`plant_deltas`].
fn seg_wal(tli: u32, segno: u64) -> Vec<u8> {
    raw(&name(tli, segno), SEG)
}

/// Segments held as deltas, each the newest WAL of its timeline unless said otherwise (no
/// history file follows any of them), segment 2 of timeline:
/// 1. four consecutive deltas, up to 0x9000;
/// 2. deltas up to 0x6000, then a hole (0x6000-0x8000 never landed), then 0x8000-0xA000;
/// 3. overlaps, as after a restart: 0-0x4000 and the 0x4000-0x8000 a killed process had in
///    flight, which landed after the restarted agent wrote 0x4000-0x6000 and 0x6000-0xA000;
/// 4. a `.partial` of a store written before deltas, holding 0-0x5000, then deltas
///    continuing it: 0x5000-0x7000 and 0x6000-0x9000;
/// 5. 0-0x1000, then 0x1000-0x2000 with a flipped byte in its payload;
/// 6. 0-0x1000, followed by segment 3 of timeline 6 held only as 20 deltas (up to 0x14000):
///    segment 2's complete object never landed, segment 3's deltas did;
/// 7. the whole segment in two deltas (the agent stopped before the complete object landed),
///    followed by a delta of segment 3 of timeline 7;
/// 8. 0-0x2000 and 0x1000-0x3000, which holds other bytes in 0x1000-0x2000.
async fn plant_deltas(store: &dyn ObjectStore) {
    store
        .put("cluster.json", cluster_json("7000000000000000006").into())
        .await
        .unwrap();
    let plan: [(u32, &[(u64, u64)]); 4] = [
        (
            1,
            &[
                (0, 0x1000),
                (0x1000, 0x5000),
                (0x5000, 0x8000),
                (0x8000, 0x9000),
            ],
        ),
        (2, &[(0, 0x3000), (0x3000, 0x6000), (0x8000, 0xA000)]),
        (
            3,
            &[
                (0, 0x4000),
                (0x4000, 0x6000),
                (0x6000, 0xA000),
                (0x4000, 0x8000),
            ],
        ),
        (4, &[(0x5000, 0x7000), (0x6000, 0x9000)]),
    ];
    for (tli, ranges) in plan {
        let wal = seg_wal(tli, 2);
        for &(start, end) in ranges {
            put_delta(store, (tli, 2), start, end, &wal).await;
        }
    }
    let legacy = seg_wal(4, 2);
    store
        .put(
            &format!("wal/{}.partial", name(4, 2)),
            envelope::seal(&legacy[..0x5000], 1).body,
        )
        .await
        .unwrap();
    let wal = seg_wal(5, 2);
    put_delta(store, (5, 2), 0, 0x1000, &wal).await;
    let key = put_delta(store, (5, 2), 0x1000, 0x2000, &wal).await;
    let mut body = store.get(&key).await.unwrap().to_vec();
    let last = body.len() - 1;
    body[last] ^= 0x55;
    store.put(&key, body.into()).await.unwrap();
    put_delta(store, (6, 2), 0, 0x1000, &seg_wal(6, 2)).await;
    let next = seg_wal(6, 3);
    for i in 0..20 {
        put_delta(store, (6, 3), i * 0x1000, (i + 1) * 0x1000, &next).await;
    }
    let wal = seg_wal(7, 2);
    put_delta(store, (7, 2), 0, SEG / 2, &wal).await;
    put_delta(store, (7, 2), SEG / 2, SEG, &wal).await;
    put_delta(store, (7, 3), 0, 0x1000, &seg_wal(7, 3)).await;
    let wal = seg_wal(8, 2);
    put_delta(store, (8, 2), 0, 0x2000, &wal).await;
    let mut other = wal.clone();
    other[0x1800] ^= 0xFF;
    put_delta(store, (8, 2), 0x1000, 0x3000, &other).await;
}

/// Fetches `file` into `dest` and checks it is the first `end` bytes of `wal`, zero-padded
/// to the segment size.
fn fetch_assembled(env: &[(&str, String)], file: &str, dest: &Path, wal: &[u8], end: usize) {
    let out = fetch(env, file, dest);
    assert_eq!(out.status.code(), Some(0), "{file}: {}", text(&out));
    let got = std::fs::read(dest).unwrap();
    assert_eq!(got.len() as u64, SEG, "{file}");
    assert!(got[..end] == wal[..end], "{file}: the WAL differs");
    assert!(
        got[end..].iter().all(|&b| b == 0),
        "{file}: not zeros after {end:#x}"
    );
    std::fs::remove_file(dest).unwrap();
}

fn check_deltas(env: &[(&str, String)], dir: &Path, how: &str) {
    let dest = dir.join("RECOVERYXLOG");
    let served = |tli: u32, end: usize| {
        fetch_assembled(env, &name(tli, 2), &dest, &seg_wal(tli, 2), end);
    };
    served(1, 0x9000);
    served(2, 0x6000);
    served(3, 0xA000);
    served(4, 0x9000);
    // An explicit request for the .partial uses the same assembly.
    let file = format!("{}.partial", name(1, 2));
    fetch_assembled(env, &file, &dest, &seg_wal(1, 2), 0x9000);

    // The info line says a partial segment was served, from how many pieces.
    let out = fetch(env, &name(4, 2), &dest);
    assert_eq!(out.status.code(), Some(0), "{how}: {}", text(&out));
    assert!(
        text(&out).contains("served the partial segment") && text(&out).contains("from 3 pieces"),
        "{how}: {}",
        text(&out)
    );
    std::fs::remove_file(&dest).unwrap();

    // A corrupt delta: 255 naming it, nothing at %p.
    let out = fetch(env, &name(5, 2), &dest);
    assert_eq!(out.status.code(), Some(255), "{how}: {}", text(&out));
    assert!(
        text(&out).contains(&format!("{}.partial.d/00001000-00002000", name(5, 2))),
        "{how}: {}",
        text(&out)
    );
    assert!(!dest.exists(), "{how}");

    // A segment whose next segment's deltas landed before its complete object (uploads are
    // not ordered; the host died in between): its run from offset 0 holds every byte of it
    // confirmed to the server, and is served, zero-padded; the hole after it ends recovery
    // there. The next one is served too.
    fetch_assembled(env, &name(6, 2), &dest, &seg_wal(6, 2), 0x1000);
    fetch_assembled(env, &name(6, 3), &dest, &seg_wal(6, 3), 0x14000);
    // Unless its deltas cover it whole: then they are the segment.
    fetch_assembled(env, &name(7, 2), &dest, &seg_wal(7, 2), SEG as usize);

    // Two deltas that cover the same bytes with different contents, each intact on its own:
    // corruption, 255 naming both, nothing at %p.
    let out = fetch(env, &name(8, 2), &dest);
    assert_eq!(out.status.code(), Some(255), "{how}: {}", text(&out));
    for range in ["00000000-00002000", "00001000-00003000"] {
        assert!(
            text(&out).contains(&format!("{}.partial.d/{range}", name(8, 2))),
            "{how}: {}",
            text(&out)
        );
    }
    assert!(!dest.exists(), "{how}");

    // Absent everywhere: 1.
    let out = fetch(env, &name(1, 7), &dest);
    assert_eq!(out.status.code(), Some(1), "{how}: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_segment_held_as_deltas_is_served_assembled_up_to_its_first_hole() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("store").display());
    plant_deltas(open_store(&url, &[]).await.as_ref()).await;
    for (how, env) in fetch_envs(dir.path(), &url) {
        check_deltas(&env, dir.path(), how);
    }

    // The same store on an S3 server, through a fetch server.
    let garage = Garage::start().expect("start Garage");
    let s3_url = garage.store_url("deltas");
    plant_deltas(open_store(&s3_url, &garage.s3_env()).await.as_ref()).await;
    let s3_staging = dir.path().join("s3-staging");
    std::fs::create_dir(&s3_staging).unwrap();
    let mut env = garage.s3_env();
    env.extend([
        ("PGAGENT_STORE_URL", s3_url),
        ("PGAGENT_STAGING_DIR", s3_staging.display().to_string()),
        ("PGAGENT_FETCH_TIMEOUT", "10s".to_string()),
        ("PGAGENT_FETCH_IDLE_TIMEOUT", "2s".to_string()),
    ]);
    check_deltas(&env, dir.path(), "S3 fetch server");
}
