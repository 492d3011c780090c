//! Incremental base backups (PostgreSQL 17+): `pgagent backup` takes one against the newest
//! complete backup when the server allows it, reads only the changed blocks, records the
//! chain, and falls back to a full backup, saying why, when it cannot.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::recovery::*;
use common::*;
use pgagent_storage::manifest::{BackupKind, BackupManifest};
use pgagent_storage::{envelope, ObjectStore};
use pgagent_tests::{run_pgagent, wait_until, PgOptions, PgServer};

/// A PostgreSQL `major` server with WAL summaries on.
fn summarizing(major: u32) -> PgServer {
    PgServer::start(PgOptions {
        major: Some(major),
        extra_conf: vec!["summarize_wal = on".into()],
        ..PgOptions::default()
    })
    .expect("start PostgreSQL")
}

/// The manifest of backup `id`, read from the store directly.
async fn manifest(store: &Arc<dyn ObjectStore>, id: &str) -> BackupManifest {
    let key = format!("backups/{id}/manifest.json");
    let body = store.get(&key).await.unwrap();
    serde_json::from_slice(&envelope::open(&body).unwrap()).unwrap()
}

/// The backup id a summary line of `pgagent backup` starts with (`20261206T165508Z
/// complete …`); log lines start with a timestamp instead.
fn backup_id_of(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    let id = words.next()?;
    let status = words.next()?;
    (id.len() == 16 && id.ends_with('Z') && matches!(status, "complete" | "running")).then_some(id)
}

/// `pgagent backup --fast`; returns the new backup's id and what it printed.
fn backup(env: &[(&'static str, String)]) -> (String, String) {
    let out = run_pgagent(&["backup", "--fast"], env);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    let id = printed
        .lines()
        .find_map(|l| backup_id_of(l))
        .unwrap_or_else(|| panic!("no backup id in {printed}"))
        .to_string();
    (id, printed)
}

async fn incremental_reads_only_changed_blocks(major: u32) {
    let rig = Rig::fs();
    let pg = summarizing(major);
    let agent = rig.spawn_caught_up(&pg);
    pg.pgbench_init(3).unwrap();
    let env = rig.env(&pg);
    let (full_id, _) = backup(&env);

    // 1 % of the rows, one range, then a checkpoint.
    pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 3000")
        .unwrap();
    pg.psql("CHECKPOINT").unwrap();
    let (inc_id, printed) = backup(&env);
    assert!(!printed.contains("not incremental"), "{printed}");

    let store = rig.store().await;
    let full = manifest(&store, &full_id).await;
    let inc = manifest(&store, &inc_id).await;
    assert_eq!(full.kind, BackupKind::Full);
    assert_eq!(
        (
            inc.kind,
            inc.parent.as_deref(),
            inc.root.as_deref(),
            inc.depth
        ),
        (
            BackupKind::Incremental,
            Some(full_id.as_str()),
            Some(full_id.as_str()),
            1
        )
    );
    assert_eq!(inc.format_version, 2);
    let incremental_files = inc
        .files
        .iter()
        .filter(|f| {
            f.path
                .rsplit('/')
                .next()
                .unwrap()
                .starts_with("INCREMENTAL.")
        })
        .count();
    assert!(
        incremental_files > 100,
        "{incremental_files} INCREMENTAL files"
    );
    assert!(
        inc.backup_label.contains("INCREMENTAL FROM LSN: "),
        "{}",
        inc.backup_label
    );
    let (f, i) = (full.stats.server_bytes, inc.stats.server_bytes);
    assert!(f > 40 << 20, "the full backup read {f} bytes");
    assert!(
        i * 10 <= f,
        "the incremental read {i} bytes of the full's {f}"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_17_an_incremental_backup_reads_only_changed_blocks() {
    incremental_reads_only_changed_blocks(17).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_18_an_incremental_backup_reads_only_changed_blocks() {
    incremental_reads_only_changed_blocks(18).await;
}

/// `pgagent backup` with `extra` settings; asserts it fell back to a full backup for
/// `reason` and returns the backup's id.
async fn full_because(
    rig: &Rig,
    env: &[(&'static str, String)],
    extra: &[(&'static str, String)],
    reason: &str,
) -> String {
    let mut env = env.to_vec();
    env.extend(extra.iter().cloned());
    let (id, printed) = backup(&env);
    if !printed.contains(&format!("full, not incremental ({reason})")) {
        let out = run_pgagent(&["list", "backups"], &env);
        panic!(
            "expected a full backup ({reason}):\n{printed}\nbackups:\n{}",
            text(&out)
        );
    }
    let m = manifest(&rig.store().await, &id).await;
    assert_eq!((m.kind, m.depth, m.parent), (BackupKind::Full, 0, None));
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn each_fallback_gives_a_full_backup_with_its_reason() {
    let rig = Rig::fs();
    let pg = summarizing(17);
    let agent = rig.spawn_caught_up(&pg);
    pg.psql(
        "CREATE TABLE t AS SELECT g AS id, repeat('x', 200) AS v FROM generate_series(1, 20000) g",
    )
    .unwrap();
    let env = rig.env(&pg);
    let change = || {
        pg.psql("UPDATE t SET v = 'y' WHERE id % 100 = 0; CHECKPOINT")
            .unwrap();
    };

    // No complete backup yet.
    full_because(&rig, &env, &[], "no_parent").await;
    // The chain is at its cap.
    change();
    let (inc, printed) = backup(&env);
    assert!(!printed.contains("not incremental"), "{printed}");
    change();
    let cap = [("PGAGENT_BACKUP_MAX_CHAIN", "1".to_string())];
    full_because(&rig, &env, &cap, "chain_cap").await;
    assert_eq!(manifest(&rig.store().await, &inc).await.depth, 1);

    // The server's summaries are gone: it refuses, and the backup is taken full.
    change();
    // Once the summarizer has caught up (it summarizes up to the last checkpoint's redo
    // point) it never writes those ranges again.
    let now = pg
        .psql("SELECT redo_lsn FROM pg_control_checkpoint()")
        .unwrap();
    assert!(wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || pg
            .psql(&format!(
                "SELECT summarized_lsn >= '{now}'::pg_lsn FROM pg_get_wal_summarizer_state()"
            ))
            .is_ok_and(|r| r == "t")
    ));
    let mut removed = 0;
    for entry in std::fs::read_dir(pg.data_dir().join("pg_wal/summaries")).unwrap() {
        // The summarizer renames its temporary files meanwhile.
        removed += usize::from(std::fs::remove_file(entry.unwrap().path()).is_ok());
    }
    assert!(removed > 0, "no WAL summary to remove");
    full_because(&rig, &env, &[], "server_refused").await;

    // summarize_wal turned off (a reload reaches new sessions a moment later).
    let set_summarize = |value: &str| {
        pg.psql(&format!("ALTER SYSTEM SET summarize_wal = {value}"))
            .unwrap();
        pg.psql("SELECT pg_reload_conf()").unwrap();
        assert!(wait_until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || pg.psql("SHOW summarize_wal").is_ok_and(|v| v == value)
        ));
    };
    set_summarize("off");
    change();
    full_because(&rig, &env, &[], "summarize_wal_off").await;

    // Asked for full backups only: no fallback to report.
    set_summarize("on");
    let off = [("PGAGENT_BACKUP_INCREMENTAL", "off".to_string())];
    let mut env_off = env.clone();
    env_off.extend(off);
    let (id, printed) = backup(&env_off);
    assert!(!printed.contains("not incremental"), "{printed}");
    assert_eq!(
        manifest(&rig.store().await, &id).await.kind,
        BackupKind::Full
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_before_17_takes_full_backups_and_says_why() {
    let rig = Rig::fs();
    let pg = PgServer::start(PgOptions {
        major: Some(16),
        ..PgOptions::default()
    })
    .expect("start PostgreSQL 16");
    let agent = rig.spawn_caught_up(&pg);
    let env = rig.env(&pg);
    full_because(&rig, &env, &[], "server_too_old").await;
    full_because(&rig, &env, &[], "server_too_old").await;
    drop(agent);
}

/// Restores backup `id` (its whole chain) from the store alone onto an empty directory,
/// recovers to the end of the WAL with a PostgreSQL `major`, and returns the state of `t`.
fn restore_state(rig: &Rig, id: &str, major: u32) -> String {
    let fetch = fetch_config(&rig.store_url, &[]);
    let mut restored = PgServer::without_cluster(PgOptions {
        major: Some(major),
        ..PgOptions::default()
    })
    .unwrap();
    let out = run_restore(&fetch.config, &restored.data_dir(), &["--backup", id]);
    assert!(out.status.success(), "{}", text(&out));
    restored.start_server().unwrap();
    wait_promoted(&restored, Duration::from_secs(120));
    state(&restored)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_backup_after_a_promotion_restores_on_timeline_2() {
    let rig = Rig::fs();
    let mut pg = summarizing(17);
    let mut agent = rig.spawn_caught_up(&pg);
    create_table_t(&pg);
    load(&pg, "before", 5000);
    let env = rig.env(&pg);
    let (full, _) = backup(&env);

    promote_to_next_timeline(&mut pg);
    load(&pg, "after", 5000);
    pg.psql("UPDATE t SET v = v || '2' WHERE id % 10 = 0; CHECKPOINT")
        .unwrap();
    let (inc, printed) = backup(&env);
    assert!(!printed.contains("not incremental"), "{printed}");
    let m = manifest(&rig.store().await, &inc).await;
    assert_eq!(
        (m.parent.as_deref(), m.start_timeline),
        (Some(full.as_str()), 2)
    );
    load(&pg, "later", 100);
    let expected = state(&pg);
    let end = lsn(&pg.switch_wal().unwrap());
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    pg.stop().unwrap();
    assert_eq!(restore_state(&rig, &inc, 17), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_incremental_backups_that_restore() {
    let primary = summarizing(17);
    create_table_t(&primary);
    load(&primary, "before", 5000);
    let mut standby = PgServer::without_cluster(PgOptions {
        major: Some(17),
        extra_conf: vec!["summarize_wal = on".into()],
        ..PgOptions::default()
    })
    .unwrap();
    primary
        .base_backup_over_protocol(&standby.data_dir(), false)
        .unwrap();
    std::fs::write(standby.data_dir().join("standby.signal"), b"").unwrap();
    std::fs::write(
        standby.data_dir().join("postgresql.auto.conf"),
        format!("primary_conninfo = '{}'\n", primary.conninfo("pgagent")),
    )
    .unwrap();
    standby.start_server().unwrap();
    let caught_up = || {
        let target = primary.current_wal_lsn().unwrap();
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            standby
                .psql(&format!(
                    "SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
                ))
                .is_ok_and(|r| r == "t")
        })
    };
    assert!(caught_up(), "{}", standby.log_tail());

    let rig = Rig::fs();
    let mut agent = rig.spawn(&standby);
    let replayed = || lsn(&standby.psql("SELECT pg_last_wal_replay_lsn()").unwrap());
    rig.wait_uploaded(&agent, replayed(), Duration::from_secs(60));
    let env = rig.env(&standby);
    // A backup on a standby cannot end the WAL segment it stops in (only the primary
    // can); it completes once the primary switches to the next one.
    let backup_on_standby = |env: &[(&'static str, String)]| {
        std::thread::scope(|s| {
            let taken = s.spawn(|| backup(env));
            while !taken.is_finished() {
                std::thread::sleep(Duration::from_millis(500));
                primary.psql("SELECT txid_current()").unwrap();
                primary.switch_wal().unwrap();
            }
            taken.join().unwrap()
        })
    };
    let (full, _) = backup_on_standby(&env);
    load(&primary, "after", 5000);
    primary
        .psql("UPDATE t SET v = v || 's' WHERE id % 10 = 0; CHECKPOINT")
        .unwrap();
    assert!(caught_up());
    standby.psql("CHECKPOINT").unwrap();
    let (inc, printed) = backup_on_standby(&env);
    assert!(!printed.contains("not incremental"), "{printed}");
    assert_eq!(
        manifest(&rig.store().await, &inc).await.parent.as_deref(),
        Some(full.as_str())
    );
    let expected = state(&primary);
    primary.switch_wal().unwrap();
    assert!(caught_up());
    rig.wait_uploaded(&agent, replayed(), Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    assert_eq!(restore_state(&rig, &inc, 17), expected);
}

/// Writes `m` over its manifest in the store, sealed as pgagent seals it.
async fn put_manifest(store: &Arc<dyn ObjectStore>, m: &BackupManifest) {
    let key = format!("backups/{}/manifest.json", m.id);
    let body = envelope::seal(&serde_json::to_vec(m).unwrap(), 3).body;
    store.put(&key, body).await.unwrap();
}

/// `pgagent restore --backup id` must fail before writing anything, saying `words`.
fn refused(rig: &Rig, id: &str, words: &[&str]) {
    let fetch = fetch_config(&rig.store_url, &[]);
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("pgdata");
    let out = run_restore(&fetch.config, &pgdata, &["--backup", id]);
    let printed = text(&out);
    assert!(!out.status.success(), "{printed}");
    for w in words {
        assert!(printed.contains(w), "{w:?} not in: {printed}");
    }
    let written = std::fs::read_dir(&pgdata).map_or(0, |d| d.count());
    assert_eq!(written, 0, "the restore wrote into PGDATA: {printed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_chain_is_refused_before_anything_is_written() {
    let rig = Rig::fs();
    let pg = summarizing(17);
    let mut agent = rig.spawn_caught_up(&pg);
    create_table_t(&pg);
    load(&pg, "before", 20000);
    let env = rig.env(&pg);
    let (full_id, _) = backup(&env);
    // Two rows, two blocks: the table comes as an INCREMENTAL file (a file with most of
    // its blocks changed comes whole).
    pg.psql("UPDATE t SET v = v || 'x' WHERE id IN (1, 19000); CHECKPOINT")
        .unwrap();
    let (inc_id, _) = backup(&env);
    let end = lsn(&pg.switch_wal().unwrap());
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let store = rig.store().await;
    let full = manifest(&store, &full_id).await;
    let inc = manifest(&store, &inc_id).await;
    // The INCREMENTAL file of table t, and the chunk that holds its changed blocks.
    let relfile = pg
        .psql("SELECT pg_relation_filepath('t')")
        .unwrap()
        .replace("base/", "");
    let file = inc
        .files
        .iter()
        .find(|f| {
            f.path.ends_with(&format!(
                "/INCREMENTAL.{}",
                relfile.rsplit('/').next().unwrap()
            ))
        })
        .unwrap_or_else(|| panic!("no INCREMENTAL file for {relfile}"))
        .clone();
    assert!(!file.chunks.is_empty());
    let chunk_key = |h: &str| format!("chunks/{}/{h}", &h[..2]);
    let key = chunk_key(&file.chunks[0]);
    let original = store.get(&key).await.unwrap();

    // A corrupt chunk: another chunk's body under its name.
    let other = chunk_key(
        &full
            .files
            .iter()
            .find(|f| !f.chunks.is_empty() && f.chunks[0] != file.chunks[0])
            .unwrap()
            .chunks[0],
    );
    store
        .put(&key, store.get(&other).await.unwrap())
        .await
        .unwrap();
    refused(&rig, &inc_id, &[&inc_id, &file.path]);
    // A missing chunk.
    store.delete(&key).await.unwrap();
    refused(&rig, &inc_id, &[&inc_id, &file.path]);
    store.put(&key, original).await.unwrap();

    // A broken LSN link: the incremental says it follows another start than its parent's.
    let mut broken = inc.clone();
    broken.backup_label = broken
        .backup_label
        .replace("INCREMENTAL FROM LSN: ", "INCREMENTAL FROM LSN: 1")
        .to_string();
    put_manifest(&store, &broken).await;
    refused(&rig, &inc_id, &[&inc_id]);
    put_manifest(&store, &inc).await;

    // The parent's manifest gone.
    store
        .delete(&format!("backups/{full_id}/manifest.json"))
        .await
        .unwrap();
    refused(&rig, &inc_id, &[&inc_id, &full_id]);
    put_manifest(&store, &full).await;
    drop(pg);
}
