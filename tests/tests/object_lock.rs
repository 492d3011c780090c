//! Object lock end to end (README "Object lock", docs/security.md), on an S3 server that
//! implements it (moto): every object pgagent writes carries a lock that covers its need,
//! a later backup extends the locks of the chunks it shares, prune deletes nothing locked
//! and leaves the newest backup restorable, and an attacker with the agent's credentials
//! cannot erase the bucket: a restore `--as-of` a time before the attack gives the
//! server's exact state.
//!
//! Every check of the bucket reads it directly, through the S3 API of the test's own client
//! (versions, retention headers), not through pgagent.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use common::recovery::{create_table_t, fetch_config, load, run_restore, state, wait_promoted};
use common::*;
use pgagent_storage::layout::{backup_manifest_key, chunk_key};
use pgagent_storage::manifest::BackupManifest;
use pgagent_storage::LockMode;
use pgagent_tests::moto::{Moto, ObjectVersion, Protection};
use pgagent_tests::{run_pgagent, PgOptions, PgServer};

const BUCKET: &str = "locked";
const PREFIX: &str = "db1";
const DAY: Duration = Duration::from_secs(86_400);

/// A streaming agent on a server, into a bucket created with Object Lock, locking in
/// compliance mode for `lock_days`.
struct Locked {
    moto: Moto,
    rig: Rig,
    pg: PgServer,
}

impl Locked {
    async fn start() -> Locked {
        let moto = Moto::start().expect("start moto");
        moto.create_bucket(BUCKET, Protection::ObjectLock { default: None })
            .await
            .unwrap();
        let rig = Rig::s3(moto.store_url(BUCKET, PREFIX), moto.s3_env());
        let pg = PgServer::start(PgOptions::default()).unwrap();
        create_table_t(&pg);
        load(&pg, "a", 20_000);
        Locked { moto, rig, pg }
    }

    /// The environment of a command on the store, locking for `days` days.
    fn env(&self, days: u32) -> Vec<(&'static str, String)> {
        let mut env = self.rig.env(&self.pg);
        env.push(("PGAGENT_STORE_LOCK", "compliance".into()));
        env.push(("PGAGENT_STORE_LOCK_DAYS", days.to_string()));
        env
    }

    /// `pgagent backup --fast`, locking for `days`; returns the backup's manifest.
    async fn backup(&self, days: u32) -> BackupManifest {
        let out = run_pgagent(&["backup", "--fast"], &self.env(days));
        assert!(out.status.success(), "pgagent backup: {}", text(&out));
        let store = self.rig.store().await;
        let listed = store.list("backups/").await.unwrap();
        let id = listed
            .iter()
            .filter_map(|m| {
                m.key
                    .strip_prefix("backups/")?
                    .strip_suffix("/manifest.json")
            })
            .max()
            .expect("a backup")
            .to_string();
        read_manifest(&self.rig, &id).await
    }

    /// Every version and delete marker under the store's prefix.
    async fn versions(&self) -> Vec<ObjectVersion> {
        self.moto
            .versions(BUCKET, &format!("{PREFIX}/"))
            .await
            .unwrap()
    }
}

async fn read_manifest(rig: &Rig, id: &str) -> BackupManifest {
    let store = rig.store().await;
    let body = store.get(&backup_manifest_key(id)).await.unwrap();
    let json = pgagent_storage::envelope::open(&body).unwrap();
    serde_json::from_slice(&json).unwrap()
}

fn chunks(m: &BackupManifest) -> HashSet<String> {
    m.files
        .iter()
        .chain(m.pg_manifest.iter())
        .flat_map(|f| f.chunks.iter().cloned())
        .collect()
}

fn started(m: &BackupManifest) -> SystemTime {
    humantime::parse_rfc3339(&m.started_at).unwrap()
}

/// The current version of each key (with the prefix), by key without the prefix.
fn current(versions: &[ObjectVersion]) -> HashMap<String, &ObjectVersion> {
    versions
        .iter()
        .filter(|v| v.is_latest && !v.delete_marker)
        .map(|v| {
            (
                v.key
                    .strip_prefix(&format!("{PREFIX}/"))
                    .unwrap()
                    .to_string(),
                v,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_object_is_locked_for_its_need_and_prune_deletes_nothing_locked() {
    let l = Locked::start().await;
    // The daemon locks what it streams.
    let mut agent = l.rig.spawn_with(
        &l.pg,
        &[
            ("PGAGENT_STORE_LOCK", "compliance".into()),
            ("PGAGENT_STORE_LOCK_DAYS", "1".into()),
        ],
    );
    let first = l.backup(1).await;
    load(&l.pg, "b", 2_000);
    // The second backup needs 7/8 of 2 days: the chunks it shares with the first (locked
    // for one day) must be extended.
    let second = l.backup(2).await;
    load(&l.pg, "c", 2_000);
    let end = lsn(&l.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    l.rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    let expected = state(&l.pg);
    assert!(agent.terminate().success(), "{}", agent.output_text());

    // Every version in the bucket carries a compliance lock of at least a day from its
    // write (S3 keeps whole seconds).
    let versions = l.versions().await;
    let objects: Vec<&ObjectVersion> = versions.iter().filter(|v| !v.delete_marker).collect();
    assert!(objects.len() > 20, "{objects:?}");
    for v in &objects {
        assert_eq!(v.lock_mode, Some(LockMode::Compliance), "{v:?}");
        let until = v
            .retain_until
            .unwrap_or_else(|| panic!("{} has no lock", v.key));
        assert!(
            until + Duration::from_secs(2) >= v.last_modified + DAY,
            "{} is locked until {until:?}, written {:?}",
            v.key,
            v.last_modified
        );
    }
    for prefix in ["wal/", "chunks/", "backups/", "cluster.json"] {
        assert!(
            objects
                .iter()
                .any(|v| v.key.starts_with(&format!("{PREFIX}/{prefix}"))),
            "nothing under {prefix}"
        );
    }

    // The chunks of the second backup are locked at least 7/8 of 2 days past its start;
    // those it shares with the first were extended (they were written locked for one day).
    let now = current(&versions);
    let need = started(&second) + DAY * 2 - DAY / 4;
    let shared: Vec<String> = chunks(&second)
        .intersection(&chunks(&first))
        .cloned()
        .collect();
    assert!(!shared.is_empty(), "the second backup reuses chunks");
    for c in chunks(&second) {
        let v = now[&chunk_key(&c)];
        assert!(v.retain_until.unwrap() >= need, "{c}: {v:?} < {need:?}");
    }
    let claim = second.lock.as_ref().expect("the manifest records its lock");
    assert!(
        humantime::parse_rfc3339(&claim.until).unwrap() >= need,
        "{claim:?}"
    );
    let only_first: Vec<String> = chunks(&first)
        .difference(&chunks(&second))
        .cloned()
        .collect();
    for c in &only_first {
        let v = now[&chunk_key(c)];
        assert!(
            v.retain_until.unwrap() < started(&second) + DAY + Duration::from_secs(60),
            "{c} was extended although no later backup uses it: {v:?}"
        );
    }

    // Verify reads every object's lock: the second backup's horizon.
    let out = run_pgagent(&["verify"], &l.env(2));
    let report = text(&out);
    println!("{report}");
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains(&format!("backup {}: restorable at least until", second.id)),
        "{report}"
    );

    // Prune keeping one backup: the first is past retention, but its manifest is locked:
    // it stays whole. No version is removed and no delete marker hides anything but prune's
    // own marker.
    let mut env = l.env(2);
    env.push(("PGAGENT_BACKUP_KEEP_BACKUPS", "1".into()));
    let out = run_pgagent(&["prune"], &env);
    let report = text(&out);
    println!("{report}");
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains(&format!(
            "backup {} is past retention but its manifest is locked",
            first.id
        )),
        "{report}"
    );
    let after = l.versions().await;
    let ids = |vs: &[ObjectVersion]| -> HashSet<String> {
        vs.iter()
            .filter(|v| !v.delete_marker)
            .map(|v| v.version_id.clone())
            .collect()
    };
    assert!(
        ids(&versions).is_subset(&ids(&after)),
        "prune removed a version"
    );
    let hidden: Vec<&ObjectVersion> = after
        .iter()
        .filter(|v| v.delete_marker && !v.key.starts_with(&format!("{PREFIX}/prune/")))
        .collect();
    assert!(hidden.is_empty(), "prune hid objects: {hidden:?}");

    // The newest backup restores from the bucket alone, to the server's exact state.
    let fetch = fetch_config(&l.rig.store_url, &l.rig.extra_env);
    let restored = PgServer::without_cluster(PgOptions::default()).unwrap();
    let out = run_restore(&fetch.config, &restored.data_dir(), &["--target", "latest"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut restored = restored;
    restored.start_server().unwrap();
    wait_promoted(&restored, Duration::from_secs(120));
    assert_eq!(state(&restored), expected);
}

/// The attacker holds the agent's credentials (moto checks no rights: they may do anything
/// the bucket allows). Under a compliance lock every version delete is refused, bypass
/// header or not; overwrites and plain deletes land as newer versions and delete markers,
/// and break a restore of the bucket as it is now. A restore `--as-of` a time before the
/// attack reads past them, and so does its recovery: the server's exact state comes back.
#[tokio::test(flavor = "multi_thread")]
async fn an_attacker_with_the_agents_credentials_cannot_erase_a_locked_bucket() {
    let l = Locked::start().await;
    let mut agent = l.rig.spawn_with(
        &l.pg,
        &[
            ("PGAGENT_STORE_LOCK", "compliance".into()),
            ("PGAGENT_STORE_LOCK_DAYS", "1".into()),
        ],
    );
    l.backup(1).await;
    load(&l.pg, "b", 5_000);
    let end = lsn(&l.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    l.rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    let expected = state(&l.pg);
    assert!(agent.terminate().success(), "{}", agent.output_text());
    // S3 times are whole seconds: the last write, a second, the time, a second, the attack.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before_attack = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let versions = l.versions().await;
    let locked = versions.iter().filter(|v| !v.delete_marker).count();
    for bypass in [false, true] {
        let refused = l
            .moto
            .delete_every_version(BUCKET, &format!("{PREFIX}/"), bypass)
            .await
            .unwrap();
        assert_eq!(
            refused, locked,
            "bypass {bypass}: a locked version was deleted"
        );
    }
    let client = l.moto.client();
    let mut overwritten = 0;
    let mut hidden = 0;
    for (i, (key, _)) in current(&versions).iter().enumerate() {
        let full = format!("{PREFIX}/{key}");
        if key == "cluster.json" || (key.starts_with("wal/") && i % 2 == 0) {
            client
                .delete_object()
                .bucket(BUCKET)
                .key(&full)
                .send()
                .await
                .unwrap();
            hidden += 1;
        } else if ["wal/", "chunks/", "backups/"]
            .iter()
            .any(|p| key.starts_with(p))
        {
            client
                .put_object()
                .bucket(BUCKET)
                .key(&full)
                .body(b"encrypted by the attacker".to_vec().into())
                .send()
                .await
                .unwrap();
            overwritten += 1;
        }
    }
    assert!(overwritten > 10 && hidden > 1, "{overwritten} {hidden}");

    // The bucket as it is now does not restore.
    let fetch = fetch_config(&l.rig.store_url, &l.rig.extra_env);
    let broken = PgServer::without_cluster(PgOptions::default()).unwrap();
    let out = run_restore(&fetch.config, &broken.data_dir(), &["--target", "latest"]);
    assert!(
        !out.status.success(),
        "a restore of the attacked bucket: {}",
        text(&out)
    );

    // Verify and restore as of the time before the attack read the locked versions.
    let out = run_pgagent(
        &[
            "--config",
            fetch.config.to_str().unwrap(),
            "verify",
            "--as-of",
            &before_attack,
        ],
        &[],
    );
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("restorable at least until"), "{report}");
    let mut restored = PgServer::without_cluster(PgOptions::default()).unwrap();
    let out = run_restore(
        &fetch.config,
        &restored.data_dir(),
        &["--target", "latest", "--as-of", &before_attack],
    );
    assert!(out.status.success(), "{}", text(&out));
    let auto = std::fs::read_to_string(restored.data_dir().join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!("--as-of {before_attack} fetch %f %p")),
        "recovery must read the same versions: {auto}"
    );
    restored.start_server().unwrap();
    wait_promoted(&restored, Duration::from_secs(120));
    assert_eq!(state(&restored), expected, "the state before the attack");
}
