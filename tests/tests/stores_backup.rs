//! Base backups and retention with several stores (`[[stores]]`): the server read once for
//! every store, byte-identical chunks and a complete manifest in each, each store restoring
//! alone; a store that is down leaves the others their backup, with the outcome its role
//! says; per-store `keep_backups`; a pin keeps the WAL another store still copies.
//!
//! Until `pgagent run` streams to several stores, each store's WAL comes from an agent of
//! its own (one slot each): a backup completes in a store once that store holds its WAL,
//! whoever put it there.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::recovery::*;
use common::*;
use pgagent_storage::layout::{backup_manifest_key, CHUNK_PREFIX};
use pgagent_storage::manifest::{BackupManifest, BackupStatus};
use pgagent_storage::{envelope, ObjectStore};
use pgagent_tests::{run_pgagent, Garage, PgOptions, PgServer, Proxy, ProxyMode};

/// A server that logs each replication command, so its `BASE_BACKUP`s can be counted.
fn logged_server() -> PgServer {
    PgServer::start(PgOptions {
        extra_conf: vec!["log_replication_commands = on".into()],
        ..PgOptions::default()
    })
    .expect("start PostgreSQL")
}

/// How many `BASE_BACKUP` commands the server received.
fn base_backups_read(pg: &PgServer) -> usize {
    std::fs::read_to_string(pg.log_file())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("received replication command: BASE_BACKUP"))
        .count()
}

/// A configuration file of `stores` (`[[stores]]` entries as TOML) for `pg`, with `extra`
/// TOML before them.
fn stores_config(dir: &Path, pg: &PgServer, extra: &str, stores: &str) -> std::path::PathBuf {
    let file = dir.join(format!("stores-{}.toml", rand_suffix()));
    let toml = format!(
        "[postgres]\nconninfo = \"{}\"\n\n[staging]\ndir = \"{}\"\n\n[metrics]\nlisten = \"\"\n\n\
         [backup]\nschedule = \"\"\nwal_timeout = \"90s\"\n{extra}\n{stores}",
        pg.conninfo("pgagent"),
        dir.join("backup-staging").display()
    );
    std::fs::write(&file, toml).unwrap();
    file
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn backup(config: &Path) -> std::process::Output {
    run_pgagent(
        &["--config", config.to_str().unwrap(), "backup", "--fast"],
        &[("PGAGENT_LOG", "info".into())],
    )
}

/// Every chunk object of `store`, key → body.
async fn chunks(store: &dyn ObjectStore) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for o in store.list(CHUNK_PREFIX).await.unwrap() {
        out.insert(o.key.clone(), store.get(&o.key).await.unwrap().to_vec());
    }
    out
}

/// The manifests of `store`, id → manifest.
async fn manifests(store: &dyn ObjectStore) -> BTreeMap<String, BackupManifest> {
    let mut out = BTreeMap::new();
    for o in store.list("backups/").await.unwrap() {
        let body = store.get(&o.key).await.unwrap();
        let json = envelope::open_for(&body, None, &o.key).unwrap();
        let m: BackupManifest = serde_json::from_slice(&json).unwrap();
        assert_eq!(o.key, backup_manifest_key(&m.id));
        out.insert(m.id.clone(), m);
    }
    out
}

fn complete(ms: &BTreeMap<String, BackupManifest>) -> Vec<String> {
    ms.values()
        .filter(|m| m.status == BackupStatus::Complete)
        .map(|m| m.id.clone())
        .collect()
}

/// Restores the newest backup of the one store `url` names into a new data directory,
/// starts it and returns its state once promoted.
fn restore_alone(url: &str, env: &[(&'static str, String)]) -> String {
    let fetch = fetch_config(url, env);
    let mut restored = PgServer::without_cluster(PgOptions::default()).unwrap();
    let out = run_restore(&fetch.config, &restored.data_dir(), &[]);
    assert!(out.status.success(), "restore from {url}: {}", text(&out));
    restored.start_server().unwrap();
    wait_promoted(&restored, Duration::from_secs(120));
    let s = state(&restored);
    restored.stop().unwrap();
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn one_read_of_the_server_fills_two_stores_and_each_restores_alone() {
    let garage = Garage::start().expect("start Garage");
    let proxy = Proxy::start(garage.s3_addr());
    let mut primary = logged_server();

    // The WAL: the NAS (file://) from one agent, R2 (Garage) from another on its own slot.
    let nas = Rig::fs();
    let mut r2 = Rig::s3(garage.store_url("two-stores"), garage.s3_env());
    r2.extra_env
        .push(("PGAGENT_POSTGRES_SLOT", "pgagent_r2".into()));
    let mut nas_agent = nas.spawn_caught_up(&primary);
    let mut r2_agent = r2.spawn_caught_up(&primary);
    create_table_t(&primary);
    load(&primary, "before", 2000);

    // The backup reaches R2 through the proxy, so that R2 can be made to fail.
    let r2_via_proxy = garage.store_url_via("two-stores", &proxy.http_endpoint());
    let creds = format!(
        "\n[store]\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        garage.access_key_id(),
        garage.secret_access_key()
    );
    let entries = |r2_role: &str, nas_role: &str| {
        format!(
            "[[stores]]\nname = \"nas\"\nurl = \"{}\"\nrole = \"{nas_role}\"\n\n\
             [[stores]]\nname = \"r2\"\nurl = \"{r2_via_proxy}\"\nrole = \"{r2_role}\"\n",
            nas.store_url
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let config = stores_config(dir.path(), &primary, &creds, &entries("async", "required"));

    let begun = std::time::Instant::now();
    let out = backup(&config);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("backup into two stores: {:?}", begun.elapsed());
    assert_eq!(base_backups_read(&primary), 1, "the server is read once");
    let out_text = text(&out);
    assert!(
        out_text.contains("store nas (required): ") && out_text.contains("store r2 (async): "),
        "{out_text}"
    );

    let nas_store = nas.store().await;
    let r2_store = r2.store().await;
    let nas_chunks = chunks(nas_store.as_ref()).await;
    let r2_chunks = chunks(r2_store.as_ref()).await;
    assert!(!nas_chunks.is_empty());
    assert_eq!(
        nas_chunks.keys().collect::<Vec<_>>(),
        r2_chunks.keys().collect::<Vec<_>>(),
        "the same chunks in both stores"
    );
    assert!(nas_chunks == r2_chunks, "byte-identical chunks");
    let (nas_ms, r2_ms) = (
        manifests(nas_store.as_ref()).await,
        manifests(r2_store.as_ref()).await,
    );
    assert_eq!(complete(&nas_ms).len(), 1, "{nas_ms:?}");
    assert_eq!(
        complete(&nas_ms),
        complete(&r2_ms),
        "the same backup, complete in both"
    );
    let first = complete(&nas_ms).remove(0);

    // R2 down during the next backup: the NAS still gets it complete. R2 is async: exit 0.
    proxy.set_mode(ProxyMode::Refuse);
    load(&primary, "while r2 is down", 500);
    let out = backup(&config);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("store r2 (async): "), "{}", text(&out));
    assert!(text(&out).contains("failed"), "{}", text(&out));
    let nas_ms = manifests(nas_store.as_ref()).await;
    assert_eq!(complete(&nas_ms).len(), 2, "{nas_ms:?}");
    assert_eq!(
        complete(&manifests(r2_store.as_ref()).await),
        std::slice::from_ref(&first)
    );

    // The same outage with R2 required: the NAS gets the backup complete, the command exits
    // 1 naming R2.
    let required_r2 = stores_config(dir.path(), &primary, &creds, &entries("required", "async"));
    let out = backup(&required_r2);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("not complete in every required store (complete in nas): store r2"),
        "{}",
        text(&out)
    );
    assert_eq!(complete(&manifests(nas_store.as_ref()).await).len(), 3);
    assert_eq!(base_backups_read(&primary), 3, "one read per backup");
    proxy.set_mode(ProxyMode::Pass);

    // Each store alone restores the server's data.
    load(&primary, "after", 500);
    let expected = state(&primary);
    let switch = lsn(&primary.switch_wal().unwrap());
    let end = switch.segment_number(seg()).end_lsn(seg());
    nas.wait_uploaded(&nas_agent, end, Duration::from_secs(60));
    r2.wait_uploaded(&r2_agent, end, Duration::from_secs(60));
    assert!(
        nas_agent.terminate().success(),
        "{}",
        nas_agent.output_text()
    );
    assert!(r2_agent.terminate().success(), "{}", r2_agent.output_text());
    primary.stop().unwrap();
    assert_eq!(
        restore_alone(&nas.store_url, &[]),
        expected,
        "from the NAS alone"
    );
    assert_eq!(
        restore_alone(&r2.store_url, &garage.s3_env()),
        expected,
        "from R2 alone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_keeps_each_stores_backups_and_the_wal_a_pin_holds() {
    let mut primary = logged_server();
    let near = Rig::fs();
    let mut far = Rig::fs();
    far.extra_env
        .push(("PGAGENT_POSTGRES_SLOT", "pgagent_far".into()));
    let mut near_agent = near.spawn_caught_up(&primary);
    let mut far_agent = far.spawn_caught_up(&primary);
    create_table_t(&primary);
    let dir = tempfile::tempdir().unwrap();
    let config = stores_config(
        dir.path(),
        &primary,
        "",
        &format!(
            "[[stores]]\nname = \"near\"\nurl = \"{}\"\nkeep_backups = 1\n\n\
             [[stores]]\nname = \"far\"\nurl = \"{}\"\nrole = \"async\"\nkeep_backups = 2\n",
            near.store_url, far.store_url
        ),
    );
    for round in 0..3 {
        load(&primary, &format!("round {round}"), 500);
        let out = backup(&config);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(base_backups_read(&primary), 3);
    let near_store: Arc<dyn ObjectStore> = near.store().await;
    let far_store: Arc<dyn ObjectStore> = far.store().await;
    let ids = complete(&manifests(near_store.as_ref()).await);
    assert_eq!(
        ids.len(),
        3,
        "{:?}",
        manifests(near_store.as_ref())
            .await
            .values()
            .map(|m| (m.id.clone(), m.status))
            .collect::<Vec<_>>()
    );
    assert_eq!(complete(&manifests(far_store.as_ref()).await), ids);
    let first_start = manifests(near_store.as_ref()).await[&ids[0]]
        .start()
        .unwrap();
    let first_segment = pgagent_storage::layout::segment_key(
        first_start.1,
        first_start.0.segment_number(seg()),
        seg(),
    );

    // `far` copies WAL from `near` from the first backup's start on: a pin in `near`.
    let pin = pgagent_storage::pin::WalPin::new(
        "far",
        first_start.0,
        first_start.1,
        "2026-11-21T10:00:00Z",
    );
    pgagent_storage::pin::put_pin(near_store.as_ref(), &pin)
        .await
        .unwrap();

    // `prune --store far` prunes `far` alone: two backups kept there, three still in `near`.
    let cfg = config.to_str().unwrap();
    let out = run_pgagent(&["--config", cfg, "prune", "--store", "far"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(complete(&manifests(far_store.as_ref()).await), ids[1..]);
    assert_eq!(complete(&manifests(near_store.as_ref()).await), ids);
    assert!(
        far_store.head(&first_segment).await.unwrap().is_none(),
        "far keeps no WAL before its oldest kept backup"
    );

    // `prune` prunes both: `near` keeps one backup, and the WAL the pin holds.
    let out = run_pgagent(&["--config", cfg, "prune"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("store near (keep_backups 1):"), "{t}");
    assert!(t.contains("store far (keep_backups 2):"), "{t}");
    assert!(
        t.contains(&format!(
            "kept the WAL from {} on: store far still copies it from here",
            first_start.0
        )),
        "{t}"
    );
    assert_eq!(complete(&manifests(near_store.as_ref()).await), ids[2..]);
    assert_eq!(complete(&manifests(far_store.as_ref()).await), ids[1..]);
    assert!(
        near_store.head(&first_segment).await.unwrap().is_some(),
        "the pin keeps {first_segment} in near"
    );

    // The pin gone, the next prune lets that WAL go.
    near_store.delete(&pin.key()).await.unwrap();
    let out = run_pgagent(&["--config", cfg, "prune", "--store", "near"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(near_store.head(&first_segment).await.unwrap().is_none());

    assert!(
        near_agent.terminate().success(),
        "{}",
        near_agent.output_text()
    );
    assert!(
        far_agent.terminate().success(),
        "{}",
        far_agent.output_text()
    );
    primary.stop().unwrap();
}
