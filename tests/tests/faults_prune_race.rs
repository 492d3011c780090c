//! `pgagent prune` while a `pgagent backup` starts. The backup skips every chunk it finds in
//! its listing of `chunks/`; prune deletes the chunks no manifest references. A prune that
//! decides after the backup listed the chunks but before it could see the backup would delete
//! chunks the backup counts on, and the backup would complete pointing at missing objects.
//!
//! The interleaving is made deterministic with a slow store for the backup: its requests go
//! through a proxy adding latency, while prune talks to the store directly, starting the
//! moment the backup logs that it listed the chunks.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use pgagent_storage::envelope;
use pgagent_storage::manifest::{BackupManifest, BackupStatus};
use pgagent_tests::{
    run_pgagent, wait_until, AgentProcess, Garage, PgOptions, PgServer, Proxy, ProxyMode,
};

fn backup_ids(env: &[(&'static str, String)]) -> Vec<String> {
    let out = run_pgagent(&["list", "backups", "--json"], env);
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

fn run_ok(args: &[&str], env: &[(&'static str, String)]) -> String {
    let out = run_pgagent(args, env);
    assert!(
        out.status.success(),
        "pgagent {}: {}",
        args.join(" "),
        text(&out)
    );
    text(&out)
}

/// Turns the manifest of `id` into that of a backup that died a long time ago after storing
/// its chunks: `running`, started in 2020, no files. Prune drops it, and its chunks with it.
async fn make_it_a_dead_backup(store: &dyn pgagent_storage::ObjectStore, id: &str) {
    let key = format!("backups/{id}/manifest.json");
    let raw = envelope::open(&store.get(&key).await.unwrap()).unwrap();
    let mut m: BackupManifest = serde_json::from_slice(&raw).unwrap();
    m.status = BackupStatus::Running;
    m.started_at = "2020-01-01T00:00:00Z".into();
    m.finished_at = None;
    m.stop_lsn = None;
    m.stop_timeline = None;
    m.files.clear();
    m.pg_manifest = None;
    let json = serde_json::to_vec(&m).unwrap();
    let sealed: Bytes = envelope::seal(&json, 3).body;
    store.put(&key, sealed).await.unwrap();
}

fn assert_verifybackup(pg: &PgServer, dir: &Path) {
    let out = Command::new(pg.bin_dir().join("pg_verifybackup"))
        .arg("--no-parse-wal")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_verifybackup: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prune_while_a_backup_starts_leaves_the_backup_whole() {
    let garage = Garage::start().expect("start Garage");
    let rig = Rig::s3(garage.store_url("race"), garage.s3_env());
    let pg = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent = rig.spawn_caught_up(&pg);
    let env = rig.env(&pg);

    // The backup prune keeps.
    run_ok(&["backup", "--fast"], &env);
    // Data only the next backup holds, frozen so that a later backup reads the same bytes.
    for sql in [
        "CREATE TABLE u AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 40000) g",
        "VACUUM FREEZE u",
        "CHECKPOINT",
    ] {
        pg.psql(sql).unwrap();
    }
    // A backup of it that died long ago: its chunks are referenced by nothing prune keeps.
    run_ok(&["backup", "--fast"], &env);
    let dead = backup_ids(&env).pop().unwrap();
    let store = rig.store().await;
    make_it_a_dead_backup(store.as_ref(), &dead).await;

    // A new backup on a slow store; prune runs as soon as it has listed the chunks.
    let proxy = Proxy::start(garage.s3_addr());
    proxy.set_mode(ProxyMode::Delay(Duration::from_secs(2)));
    let mut slow = env.clone();
    slow.retain(|(k, _)| *k != "PGAGENT_STORE_URL");
    slow.push((
        "PGAGENT_STORE_URL",
        garage.store_url_via("race", &proxy.http_endpoint()),
    ));
    let mut backup = AgentProcess::spawn(&["backup", "--fast"], &slow);
    let listed = wait_until(Duration::from_secs(180), Duration::from_millis(20), || {
        backup.output_text().contains("base backup starting")
    });
    assert!(listed, "{}", backup.output_text());
    let pruned = run_ok(&["prune"], &env);
    proxy.set_mode(ProxyMode::Pass);
    let status = backup
        .wait_timeout(Duration::from_secs(300))
        .expect("the backup finished");
    assert!(status.success(), "{}", backup.output_text());
    let id = backup_ids(&env).pop().unwrap();
    assert!(id > dead, "{id}");

    // Every chunk the new backup references is there.
    let verified = run_pgagent(&["verify", "--backup", &id], &env);
    assert!(verified.status.success(), "{}", text(&verified));
    // Prune dropped the dead backup, and saw the new one running: it deleted no chunk.
    assert!(
        pruned.contains(&format!("deleted backup {dead}")),
        "{pruned}"
    );
    assert!(pruned.contains("is running: chunks are left"), "{pruned}");

    // With nothing running, prune deletes what no backup uses, and the backup stays whole.
    run_ok(&["prune"], &env);
    run_ok(&["verify", "--backup", &id], &env);
    let restored = tempfile::tempdir().unwrap();
    let pgdata = restored.path().join("data");
    run_ok(
        &[
            "restore",
            "--pgdata",
            pgdata.to_str().unwrap(),
            "--backup",
            &id,
        ],
        &env,
    );
    assert_verifybackup(&pg, &pgdata);
    assert!(agent.terminate().success(), "{}", agent.output_text());
}
