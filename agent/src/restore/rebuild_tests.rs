//! A chain of a full backup and two incremental ones, made of synthetic blocks, restored
//! from a `file://` store and compared with bytes worked out here block by block; and the
//! ways a chain restore must fail before leaving anything in PGDATA.

#![allow(clippy::disallowed_methods)] // scratch stores: their requests need no counting

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use pgagent_protocol::incremental::INCREMENTAL_MAGIC;
use pgagent_storage::layout::{backup_manifest_key, chunk_key};
use pgagent_storage::manifest::{BackupManifest, EntryKind, FileEntry};
use pgagent_storage::{envelope, ObjectStore};
use sha2::{Digest, Sha256};

use super::super::chain::load_chain;
use super::*;
use crate::store::catalog;

/// Block size of the test cluster, bytes; chunks are smaller and not a multiple of it.
const BS: usize = 64;
const CHUNK: usize = 100;

/// Block `b` of a relation as backup `k` saw it: bytes no other block has.
fn blk(k: u8, rel: u8, b: u32) -> Vec<u8> {
    (0..BS)
        .map(|i| (k as usize * 89 + rel as usize * 53 + b as usize * 7 + i) as u8)
        .collect()
}

fn whole(k: u8, rel: u8, blocks: u32) -> Vec<u8> {
    (0..blocks).flat_map(|b| blk(k, rel, b)).collect()
}

/// An `INCREMENTAL.` file in the server's format (`basebackup_incremental.c`).
fn incremental(truncation: u32, blocks: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&INCREMENTAL_MAGIC.to_le_bytes());
    v.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    v.extend_from_slice(&truncation.to_le_bytes());
    for (b, _) in blocks {
        v.extend_from_slice(&b.to_le_bytes());
    }
    if !blocks.is_empty() {
        v.resize(v.len().div_ceil(BS) * BS, 0);
    }
    for (_, data) in blocks {
        v.extend_from_slice(data);
    }
    v
}

async fn put_file(store: &Arc<dyn ObjectStore>, path: &str, data: &[u8]) -> FileEntry {
    let mut chunks = Vec::new();
    for piece in data.chunks(CHUNK) {
        let sealed = envelope::seal(piece, 1);
        let hash = sealed.hash.to_hex().to_string();
        store.put(&chunk_key(&hash), sealed.body).await.unwrap();
        chunks.push(hash);
    }
    FileEntry {
        path: path.into(),
        kind: EntryKind::File,
        mode: 0o640,
        size: data.len() as u64,
        mtime: 1_700_000_000,
        chunks,
        target: None,
    }
}

fn dir(path: &str) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind: EntryKind::Dir,
        mode: 0o700,
        size: 0,
        mtime: 0,
        chunks: vec![],
        target: None,
    }
}

const SERVER_MANIFEST: &str = "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7000000000000000001,\n\"Files\": [\n],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/800000\", \"End-LSN\": \"0/900000\" }\n],\n\"Manifest-Checksum\": \"00\"}\n";

/// The chain full ← inc1 ← inc2 in `store`, every manifest stored; returns them.
async fn stored_chain(store: &Arc<dyn ObjectStore>) -> [BackupManifest; 3] {
    let mut ms = super::super::chain::tests::three();
    let files: [Vec<(&str, Vec<u8>)>; 3] = [
        vec![
            ("base/5/16384", whole(0, 1, 6)),
            ("base/5/16390", whole(0, 2, 2)),
            ("base/5/16500", whole(0, 3, 40)),
            ("PG_VERSION", b"17\n".to_vec()),
            ("global/pg_control", b"control 0".to_vec()),
        ],
        vec![
            (
                "base/5/INCREMENTAL.16384",
                incremental(6, &[(1, blk(1, 1, 1)), (4, blk(1, 1, 4))]),
            ),
            ("base/5/16390", whole(1, 2, 2)),
            // Created after the full backup: sent whole.
            ("base/5/16400", whole(1, 4, 3)),
            (
                "base/5/INCREMENTAL.16500",
                incremental(40, &[(35, blk(1, 3, 35))]),
            ),
            ("PG_VERSION", b"17\n".to_vec()),
            ("global/pg_control", b"control 1".to_vec()),
        ],
        vec![
            // Cut to 4 blocks, then block 6 written: 7 blocks, 4 and 5 zero.
            (
                "base/5/INCREMENTAL.16384",
                incremental(4, &[(1, blk(2, 1, 1)), (6, blk(2, 1, 6))]),
            ),
            // Unchanged since inc1: copied whole from it.
            ("base/5/INCREMENTAL.16400", incremental(3, &[])),
            // 30 blocks: a header of 192 bytes, over two chunks.
            (
                "base/5/INCREMENTAL.16500",
                incremental(40, &(0..30).map(|b| (b, blk(2, 3, b))).collect::<Vec<_>>()),
            ),
            ("PG_VERSION", b"17\n".to_vec()),
            ("global/pg_control", b"control 2".to_vec()),
        ],
    ];
    for (m, files) in ms.iter_mut().zip(files) {
        m.chunk_size = CHUNK as u64;
        m.block_size = Some(BS as u32);
        m.files = vec![dir("base"), dir("base/5"), dir("global")];
        let label = m.backup_label.clone();
        m.files
            .push(put_file(store, "backup_label", label.as_bytes()).await);
        for (path, data) in files {
            m.files.push(put_file(store, path, &data).await);
        }
        m.pg_manifest = Some(put_file(store, "backup_manifest", SERVER_MANIFEST.as_bytes()).await);
        m.check().unwrap();
        catalog::put_manifest(store.as_ref(), None, m)
            .await
            .unwrap();
    }
    ms.try_into().unwrap()
}

async fn fs_store(dir: &Path) -> Arc<dyn ObjectStore> {
    pgagent_storage::open(&format!("file://{}", dir.display()), &Default::default())
        .await
        .unwrap()
}

/// Loads, checks and writes the chain of `newest` into `pgdata`, as a restore does.
async fn restore_chain(
    store: &Arc<dyn ObjectStore>,
    newest: &BackupManifest,
    pgdata: &Path,
) -> anyhow::Result<ChainWritten> {
    let bucket = Bucket {
        store: store.clone(),
        cipher: None,
    };
    let chain = load_chain(store.as_ref(), None, newest.clone()).await?;
    let prepared = prepare(&bucket, chain, 3).await?;
    let original = |_oid: u32, location: &str| PathBuf::from(location);
    write_chain(
        &bucket,
        &prepared,
        pgdata,
        &original,
        3,
        &Progress::new("test", 0),
    )
    .await
}

fn empty_dir(root: &Path, name: &str) -> PathBuf {
    let p = root.join(name);
    fs::create_dir(&p).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_comes_back_as_pg_combinebackup_would_build_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = fs_store(&tmp.path().join("store")).await;
    let [_, _, inc2] = stored_chain(&store).await;
    let pgdata = empty_dir(tmp.path(), "pgdata");
    let w = restore_chain(&store, &inc2, &pgdata).await.unwrap();
    assert_eq!((w.files, w.rebuilt), (7, 3), "{w:?}");

    let zero = vec![0u8; BS];
    let expected_16384: Vec<u8> = [
        blk(0, 1, 0),
        blk(2, 1, 1),
        blk(0, 1, 2),
        blk(0, 1, 3),
        zero.clone(),
        zero,
        blk(2, 1, 6),
    ]
    .concat();
    let expected_16500: Vec<u8> = (0..40)
        .map(|b| {
            if b < 30 {
                blk(2, 3, b)
            } else if b == 35 {
                blk(1, 3, 35)
            } else {
                blk(0, 3, b)
            }
        })
        .collect::<Vec<_>>()
        .concat();
    let read = |p: &str| fs::read(pgdata.join(p)).unwrap();
    assert_eq!(read("base/5/16384"), expected_16384);
    assert_eq!(read("base/5/16400"), whole(1, 4, 3));
    assert_eq!(read("base/5/16500"), expected_16500);
    assert_eq!(read("global/pg_control"), b"control 2");
    assert_eq!(read("PG_VERSION"), b"17\n");
    // Dropped before the newest backup; no INCREMENTAL. file is left behind.
    assert!(!pgdata.join("base/5/16390").exists());
    let names: Vec<String> = fs::read_dir(pgdata.join("base/5"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("INCREMENTAL.")),
        "{names:?}"
    );
    let meta = fs::metadata(pgdata.join("base/5/16384")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(
        meta.modified().unwrap(),
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
    );

    let label = String::from_utf8(read("backup_label")).unwrap();
    assert!(
        label.starts_with("START WAL LOCATION: 0/800000 "),
        "{label}"
    );
    assert!(!label.contains("INCREMENTAL"), "{label}");

    // The manifest lists every file with its size and CRC-32C, and its checksum holds.
    let text = String::from_utf8(read("backup_manifest")).unwrap();
    let (body, _) = text.rsplit_once("\"Manifest-Checksum\"").unwrap();
    let sum: String = Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(text.ends_with(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n")));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["System-Identifier"], 7000000000000000001u64);
    assert_eq!(v["WAL-Ranges"][0]["Start-LSN"], "0/800000");
    let listed: Vec<&str> = v["Files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let path = f["Path"].as_str().unwrap();
            let data = read(path);
            assert_eq!(f["Size"], data.len() as u64, "{path}");
            assert_eq!(f["Checksum-Algorithm"], "CRC32C");
            let crc = crc32c::crc32c(&data).to_le_bytes();
            let hex: String = crc.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(f["Checksum"], hex, "{path}");
            path
        })
        .collect();
    assert_eq!(
        listed,
        [
            "backup_label",
            "base/5/16384",
            "base/5/16400",
            "base/5/16500",
            "PG_VERSION",
            "global/pg_control"
        ]
    );
}

/// Restores `newest` into a new empty directory: it must fail with a message holding
/// every one of `expect`, and leave the directory empty.
async fn fails_leaving_nothing(
    store: &Arc<dyn ObjectStore>,
    newest: &BackupManifest,
    root: &Path,
    name: &str,
    expect: &[&str],
) {
    let pgdata = empty_dir(root, name);
    let err = format!(
        "{:#}",
        restore_chain(store, newest, &pgdata).await.unwrap_err()
    );
    for e in expect {
        assert!(err.contains(e), "{name}: {err}\nexpected: {e}");
    }
    let left: Vec<_> = fs::read_dir(&pgdata).unwrap().collect();
    assert!(left.is_empty(), "{name}: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_chain_fails_naming_backup_and_file_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = fs_store(&tmp.path().join("store")).await;
    let [_full, inc1, inc2] = stored_chain(&store).await;
    let find =
        |m: &BackupManifest, path: &str| m.files.iter().find(|f| f.path == path).unwrap().clone();

    // A chunk of an INCREMENTAL file is damaged: found while writing; what was written
    // is removed.
    let victim = find(&inc2, "base/5/INCREMENTAL.16500");
    let key = chunk_key(victim.chunks.last().unwrap());
    let good = store.get(&key).await.unwrap();
    let other = store
        .get(&chunk_key(&find(&inc2, "PG_VERSION").chunks[0]))
        .await
        .unwrap();
    store.put(&key, other).await.unwrap();
    fails_leaving_nothing(
        &store,
        &inc2,
        tmp.path(),
        "corrupt",
        &[
            "backup inc2: base/5/INCREMENTAL.16500",
            "holds content of hash",
        ],
    )
    .await;
    store.put(&key, good).await.unwrap();

    // A chunk of an older INCREMENTAL file is missing: found before writing.
    let victim = find(&inc1, "base/5/INCREMENTAL.16384");
    let key = chunk_key(victim.chunks.last().unwrap());
    let good = store.get(&key).await.unwrap();
    store.delete(&key).await.unwrap();
    fails_leaving_nothing(
        &store,
        &inc2,
        tmp.path(),
        "missing",
        &["backup inc1: base/5/INCREMENTAL.16384: chunk", "is missing"],
    )
    .await;
    store.put(&key, good).await.unwrap();

    // The parent's label does not lead to the full backup's start.
    let mut broken = inc1.clone();
    broken.backup_label = broken.backup_label.replace(
        "INCREMENTAL FROM LSN: 0/100000",
        "INCREMENTAL FROM LSN: 0/180000",
    );
    catalog::put_manifest(store.as_ref(), None, &broken)
        .await
        .unwrap();
    fails_leaving_nothing(&store, &inc2, tmp.path(), "lsn", &[
        "backup inc1 is incremental from LSN 0/180000, but its parent full starts at LSN 0/100000",
    ])
    .await;

    // The parent's manifest is gone.
    store.delete(&backup_manifest_key("inc1")).await.unwrap();
    fails_leaving_nothing(
        &store,
        &inc2,
        tmp.path(),
        "parent",
        &["backup inc1, parent of backup inc2, has no manifest"],
    )
    .await;

    // Back in place, the chain restores.
    catalog::put_manifest(store.as_ref(), None, &inc1)
        .await
        .unwrap();
    let pgdata = empty_dir(tmp.path(), "again");
    restore_chain(&store, &inc2, &pgdata).await.unwrap();
}
