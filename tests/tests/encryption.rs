//! Client-side encryption end to end (docs/security.md), on a `file://` store and on
//! Garage: the bucket holds ciphertext only, a bucket-only restore with the passphrase
//! recovers the data, a wrong or missing passphrase stops every command (and recovery, with
//! 255 from `pgagent fetch`), a changed byte or an object copied under another name is
//! refused, and a rotated passphrase restores while the removed one does not.
//!
//! Every check of the bucket reads it directly, not through pgagent.

mod common;

use std::path::Path;
use std::time::Duration;

use common::recovery::{assert_recovery_aborted, fetch_config, run_restore, wait_promoted};
use common::*;
use pgagent_storage::cluster::read_cluster;
use pgagent_storage::crypto::{ObjectCipher, Passphrase};
use pgagent_storage::envelope::{self, Header, ENCRYPTED_HEADER_LEN, HEADER_LEN};
use pgagent_storage::keyring::access::reader_cipher;
use pgagent_storage::layout::{CLAIM_PREFIX, CLUSTER_KEY, KEY_PREFIX};
use pgagent_storage::ObjectStore;
use pgagent_tests::{run_pgagent, Garage, PgOptions, PgServer};

/// In every row of the table `secrets`: no object in the bucket may show it.
const MARKER: &str = "pgagent-test-marker-7f3a9c51e2b84d06";
const PASSPHRASE: &str = "the passphrase: correct horse battery staple";
const WRONG: &str = "not the passphrase";
const ROTATED: &str = "the rotated passphrase: tr0ub4dor&3";

const PASSPHRASE_ENV: &str = "PGAGENT_ENCRYPTION_PASSPHRASE";

fn with_passphrase(p: &str) -> (&'static str, String) {
    (PASSPHRASE_ENV, p.to_string())
}

/// Rows `from..to` of `secrets`, each holding the marker.
fn insert_secrets(pg: &PgServer, from: u32, to: u32) {
    pg.psql(&format!(
        "INSERT INTO secrets SELECT i, '{MARKER} ' || i || repeat(' padding', 20) \
         FROM generate_series({from}, {to} - 1) i"
    ))
    .unwrap();
}

/// What a recovered server must hold: the count and a digest of `secrets`.
fn secrets_state(pg: &PgServer) -> String {
    pg.psql("SELECT count(*) || ' ' || md5(string_agg(note, ',' ORDER BY id)) FROM secrets")
        .unwrap()
        .trim()
        .to_string()
}

/// Whether `body` shows the marker: as it is, or inside a zstd frame at the payload offset
/// of a plaintext or an encrypted envelope (how zstd would carry it).
fn shows_marker(body: &[u8]) -> bool {
    let marker = MARKER.as_bytes();
    let holds = |b: &[u8]| b.windows(marker.len()).any(|w| w == marker);
    holds(body)
        || [HEADER_LEN, ENCRYPTED_HEADER_LEN].iter().any(|&at| {
            body.get(at..)
                .and_then(|payload| zstd::decode_all(payload).ok())
                .is_some_and(|raw| holds(&raw))
        })
}

/// A server whose marked rows are in `rig`'s encrypted store: a base backup and the WAL
/// after it.
struct Encrypted {
    pg: PgServer,
    /// [`secrets_state`] of the server once the bucket held all its WAL.
    expected: String,
}

/// Starts a server with marked rows, streams them with a passphrase, takes a base backup,
/// writes more marked rows and waits until the bucket holds them; stops the agent.
fn encrypted_store(rig: &Rig) -> Encrypted {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    pg.psql("CREATE TABLE secrets (id int PRIMARY KEY, note text)")
        .unwrap();
    insert_secrets(&pg, 0, 2000);
    let mut agent = rig.spawn_with(&pg, &[with_passphrase(PASSPHRASE)]);
    let mut env = rig.env(&pg);
    env.push(with_passphrase(PASSPHRASE));
    let out = run_pgagent(&["backup", "--fast"], &env);
    assert!(out.status.success(), "pgagent backup: {}", text(&out));
    insert_secrets(&pg, 2000, 4000);
    let end = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    let expected = secrets_state(&pg);
    assert!(agent.terminate().success(), "{}", agent.output_text());
    Encrypted { pg, expected }
}

/// The store's cipher, unlocked by the test itself from `keys/`.
async fn cipher_of(store: &dyn ObjectStore, passphrase: &str) -> ObjectCipher {
    reader_cipher(
        store,
        Some(&Passphrase::new(passphrase).unwrap()),
        Default::default(),
    )
    .await
    .unwrap()
    .expect("an encrypted store")
}

/// Reads every object of the bucket: `cluster.json` says encrypted, every other object but
/// the key files is an encrypted envelope, and no object shows the marker. Returns the
/// number of objects checked.
async fn assert_ciphertext_only(store: &dyn ObjectStore) -> usize {
    // The check can fail: a plaintext envelope of a marked page shows it (inside zstd).
    let page = format!("{MARKER} {}", "x".repeat(8000));
    assert!(shows_marker(&envelope::seal(page.as_bytes(), 3).body));

    let cluster = read_cluster(store).await.unwrap().unwrap();
    assert!(cluster.is_encrypted(), "{cluster:?}");
    let listed = store.list("").await.unwrap();
    let mut enveloped = 0;
    for meta in &listed {
        let body = store.get(&meta.key).await.unwrap();
        assert!(!shows_marker(&body), "{} shows the marker", meta.key);
        // Plain JSON by design: the identity, the wrapped keys, and the entries by which
        // the first writers agreed on `cluster.json` (identity and key checks only).
        if meta.key == CLUSTER_KEY
            || meta.key.starts_with(KEY_PREFIX)
            || meta.key.starts_with(CLAIM_PREFIX)
        {
            continue;
        }
        let header = Header::parse(&body).unwrap_or_else(|e| panic!("{}: {e}", meta.key));
        assert!(header.is_encrypted(), "{} is not encrypted", meta.key);
        enveloped += 1;
    }
    for prefix in ["wal/", "chunks/", "backups/", "keys/"] {
        assert!(
            listed.iter().any(|m| m.key.starts_with(prefix)),
            "nothing under {prefix}: {listed:?}"
        );
    }
    enveloped
}

/// `pgagent restore --target latest` from the bucket alone with `passphrase` in the fetch
/// configuration, then recovery through `pgagent fetch`; returns the restored server's
/// `secrets` state.
fn restore_with(rig: &Rig, passphrase: &str) -> Result<String, String> {
    let fetch = fetch_config(&rig.store_url, &rig.extra_env);
    fetch.set_passphrase(passphrase);
    let mut restored = PgServer::without_cluster(PgOptions::default()).unwrap();
    let out = run_restore(&fetch.config, &restored.data_dir(), &["--target", "latest"]);
    if !out.status.success() {
        return Err(format!("exit {:?}: {}", out.status.code(), text(&out)));
    }
    restored.start_server().unwrap();
    wait_promoted(&restored, Duration::from_secs(120));
    let got = secrets_state(&restored);
    restored.stop().unwrap();
    Ok(got)
}

/// The whole check on one store.
async fn ciphertext_only_and_restores(rig: &Rig) -> Encrypted {
    let e = encrypted_store(rig);
    let store = rig.store().await;
    let checked = assert_ciphertext_only(store.as_ref()).await;
    println!("{checked} enveloped objects, all encrypted, none shows the marker");

    // The WAL in the bucket, opened with the store's key, is the server's.
    let cipher = cipher_of(store.as_ref(), PASSPHRASE).await;
    let objects = wal_objects_with(store.as_ref(), Some(&cipher)).await;
    assert!(assert_identical_to_server(&objects, &e.pg) > 0);

    let env = command_env(rig, Some(PASSPHRASE));
    for args in [
        &["verify", "--wal"][..],
        &["list", "backups"],
        &["list", "wal"],
    ] {
        let out = run_pgagent(args, &env);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let got = restore_with(rig, PASSPHRASE).expect("bucket-only restore");
    assert_eq!(
        got, e.expected,
        "the restored data differs from the server's"
    );
    e
}

/// The environment of a command reading `rig`'s store, with `passphrase` if any.
fn command_env(rig: &Rig, passphrase: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PGAGENT_STORE_URL", rig.store_url.clone()),
        ("PGAGENT_STAGING_DIR", rig.staging().display().to_string()),
        ("PGAGENT_METRICS_LISTEN", String::new()),
    ];
    env.extend(rig.extra_env.iter().cloned());
    env.extend(passphrase.map(with_passphrase));
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_store_holds_ciphertext_only_and_restores_with_its_passphrase() {
    let rig = Rig::fs();
    ciphertext_only_and_restores(&rig).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garage_bucket_holds_ciphertext_only_and_restores_with_its_passphrase() {
    let garage = Garage::start().expect("start Garage");
    let rig = Rig::s3(garage.store_url("encrypted"), garage.s3_env());
    ciphertext_only_and_restores(&rig).await;
}

/// A wrong passphrase, or none, stops every command with exit 2 and says why; `fetch` exits
/// 255; a recovery whose `restore_command` has the wrong passphrase stops with FATAL and
/// never promotes. A passphrase for a plaintext store is refused with the fix.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_or_missing_passphrase_stops_every_command_and_recovery() {
    let rig = Rig::fs();
    let e = encrypted_store(&rig);
    let pg_env = |p: Option<&str>| {
        let mut env = rig.env(&e.pg);
        env.extend(p.map(with_passphrase));
        env
    };
    let dest = rig.dir.path().join("RECOVERYXLOG");
    let commands: [&[&str]; 8] = [
        &["backup", "--fast"],
        &["list", "wal"],
        &["list", "backups"],
        &["list", "snapshots"],
        &["verify"],
        &["prune", "--dry-run"],
        &["key", "list"],
        &[
            "restore",
            "--pgdata",
            "/nonexistent/pgdata",
            "--target",
            "latest",
        ],
    ];
    for (passphrase, says) in [(Some(WRONG), "no key in keys/ opens"), (None, "encrypted")] {
        for args in commands {
            if passphrase.is_none() && args[0] == "key" {
                continue; // `key list` without a passphrase lists the keys, marking none
            }
            let out = run_pgagent(args, &pg_env(passphrase));
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
            assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
        }
        let mut agent = pgagent_tests::AgentProcess::spawn(&["run"], &pg_env(passphrase));
        let status = agent.wait_timeout(Duration::from_secs(30));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(2),
            "{}",
            agent.output_text()
        );
        assert!(
            agent.output_text().contains(says),
            "{}",
            agent.output_text()
        );
        let out = run_pgagent(
            &["fetch", "000000010000000000000001", dest.to_str().unwrap()],
            &command_env(&rig, passphrase),
        );
        assert_eq!(out.status.code(), Some(255), "fetch: {}", text(&out));
        assert!(!dest.exists());
    }

    // A recovery restored with the passphrase, whose restore_command then has a wrong one.
    let fetch = fetch_config(&rig.store_url, &rig.extra_env);
    fetch.set_passphrase(PASSPHRASE);
    let mut restoring = PgServer::without_cluster(PgOptions::default()).unwrap();
    let out = run_restore(
        &fetch.config,
        &restoring.data_dir(),
        &["--target", "latest"],
    );
    assert!(out.status.success(), "{}", text(&out));
    fetch.set_passphrase(WRONG);
    // The postmaster may exit before it accepts connections: that is the stop looked for.
    let started = restoring.start_server().is_ok();
    let log = assert_recovery_aborted(&mut restoring, started);
    assert!(
        log.contains("no key in keys/ opens"),
        "the server log does not say why: {log}\n{}",
        fetch.server_log()
    );

    // A plaintext store refuses a passphrase, and says how to start an encrypted one.
    let plain = Rig::fs();
    let mut agent = plain.spawn_caught_up(&e.pg);
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let mut env = plain.env(&e.pg);
    env.push(with_passphrase(PASSPHRASE));
    let out = run_pgagent(&["backup", "--fast"], &env);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("empty prefix"), "{}", text(&out));
    let store = plain.store().await;
    assert!(store.list(KEY_PREFIX).await.unwrap().is_empty());
}

/// Flips the byte at `at` (from the end when negative) of the object `key` in a file store.
fn flip_byte(store_dir: &Path, key: &str, at: isize) {
    let path = store_dir.join(key);
    let mut body = std::fs::read(&path).unwrap();
    let i = if at < 0 {
        body.len() - at.unsigned_abs()
    } else {
        at as usize
    };
    body[i] ^= 0x01;
    std::fs::write(&path, body).unwrap();
}

/// A byte changed in a segment, a chunk, a manifest, or in the header's hash, is refused
/// naming the object, by `verify`, `fetch` and `restore`; so is a segment's ciphertext
/// copied under another segment's name.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_byte_or_an_object_under_another_name_is_refused() {
    let rig = Rig::fs();
    let e = encrypted_store(&rig);
    // Three more complete segments.
    let mut agent = rig.spawn_with(&e.pg, &[with_passphrase(PASSPHRASE)]);
    for i in 0..3 {
        insert_secrets(&e.pg, 4000 + i * 100, 4100 + i * 100);
        e.pg.switch_wal().unwrap();
    }
    let end = lsn(&e.pg.current_wal_lsn().unwrap());
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let store_dir = rig.dir.path().join("store");
    let store = rig.store().await;
    let keys = |prefix: &'static str| {
        let store = store.clone();
        async move {
            let mut k: Vec<String> = store
                .list(prefix)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.key)
                .collect();
            k.sort();
            k
        }
    };
    let segments: Vec<String> = keys("wal/")
        .await
        .into_iter()
        .filter(|k| k.len() == "wal/".len() + 24)
        .collect();
    assert!(segments.len() >= 3, "{segments:?}");
    let chunks = keys("chunks/").await;
    let manifests: Vec<String> = keys("backups/")
        .await
        .into_iter()
        .filter(|k| k.ends_with("/manifest.json"))
        .collect();
    let env = command_env(&rig, Some(PASSPHRASE));

    // In the payload (the tag fails), in the header's hash, in a chunk, in a manifest.
    flip_byte(&store_dir, &segments[0], -100);
    flip_byte(&store_dir, &segments[1], 20);
    flip_byte(&store_dir, &chunks[0], -1);
    // Segment 2's ciphertext under segment 3's name: authentic bytes, the wrong name.
    let (a, b) = (&segments[segments.len() - 2], &segments[segments.len() - 1]);
    std::fs::copy(store_dir.join(a), store_dir.join(b)).unwrap();
    let out = run_pgagent(&["verify", "--wal"], &env);
    assert!(!out.status.success(), "{}", text(&out));
    for k in [&segments[0], &segments[1], &chunks[0], b] {
        assert!(
            text(&out)
                .lines()
                .any(|l| l.starts_with("PROBLEM") && l.contains(k.as_str())),
            "verify does not name {k}:\n{}",
            text(&out)
        );
    }
    for k in [&segments[0], b] {
        let file = k.trim_start_matches("wal/");
        let dest = rig.dir.path().join(file);
        let out = run_pgagent(&["fetch", file, dest.to_str().unwrap()], &env);
        assert_eq!(out.status.code(), Some(255), "fetch {file}: {}", text(&out));
        assert!(text(&out).contains(file), "{}", text(&out));
        assert!(!dest.exists());
    }

    flip_byte(&store_dir, &manifests[0], -1);
    let pgdata = rig.dir.path().join("restored");
    let mut restore_env = env.clone();
    restore_env.push(("PGAGENT_LOG", "warn".into()));
    let out = run_pgagent(
        &["restore", "--pgdata", pgdata.to_str().unwrap()],
        &restore_env,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&manifests[0]), "{}", text(&out));
    drop(e);
}

/// `key add` and `key remove` rotate the passphrase: a bucket-only restore works with the
/// new one and no longer with the removed one.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_passphrase_restores_and_the_removed_one_does_not() {
    let rig = Rig::fs();
    let e = encrypted_store(&rig);
    let out = run_pgagent(
        &["key", "add"],
        &[
            command_env(&rig, Some(PASSPHRASE)),
            vec![("PGAGENT_NEW_PASSPHRASE", ROTATED.to_string())],
        ]
        .concat(),
    );
    assert!(out.status.success(), "key add: {}", text(&out));
    let out = run_pgagent(
        &["key", "list", "--json"],
        &command_env(&rig, Some(PASSPHRASE)),
    );
    assert!(out.status.success(), "key list: {}", text(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let old = rows
        .iter()
        .find(|r| r["current"] == true)
        .and_then(|r| r["id"].as_str())
        .unwrap()
        .to_string();
    let out = run_pgagent(&["key", "remove", &old], &command_env(&rig, Some(ROTATED)));
    assert!(out.status.success(), "key remove: {}", text(&out));

    let got = restore_with(&rig, ROTATED).expect("restore with the new passphrase");
    assert_eq!(got, e.expected);
    let refused = restore_with(&rig, PASSPHRASE).expect_err("the removed passphrase");
    assert!(refused.contains("exit Some(2)"), "{refused}");
    assert!(refused.contains("no key in keys/ opens"), "{refused}");
}

/// A store that lost its `cluster.json` (deleted by hand, by a lifecycle rule) keeps its
/// master key: a writer with another passphrase is refused (exit 3) and writes nothing; the
/// agent started again with the passphrase writes `cluster.json` back with the same master
/// key and no second key file, and a bucket-only restore still reads the old backup.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_cluster_json_is_written_back_and_never_re_keys_the_store() {
    let rig = Rig::fs();
    let e = encrypted_store(&rig);
    let store = rig.store().await;
    let before = read_cluster(store.as_ref()).await.unwrap().unwrap();
    store.delete(CLUSTER_KEY).await.unwrap();

    let mut env = rig.env(&e.pg);
    env.push(with_passphrase(WRONG));
    let out = run_pgagent(&["backup", "--fast"], &env);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("cluster.json is missing"),
        "{}",
        text(&out)
    );
    assert!(read_cluster(store.as_ref()).await.unwrap().is_none());
    assert_eq!(store.list(KEY_PREFIX).await.unwrap().len(), 1);

    let mut agent = rig.spawn_with(&e.pg, &[with_passphrase(PASSPHRASE)]);
    insert_secrets(&e.pg, 4000, 4200);
    let end = lsn(&e.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    let expected = secrets_state(&e.pg);
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let after = read_cluster(store.as_ref()).await.unwrap().unwrap();
    assert_eq!(
        after.encryption.unwrap().key_check,
        before.encryption.unwrap().key_check,
        "the store was re-keyed"
    );
    assert_eq!(store.list(KEY_PREFIX).await.unwrap().len(), 1);
    let got = restore_with(&rig, PASSPHRASE).expect("bucket-only restore");
    assert_eq!(got, expected);
}
