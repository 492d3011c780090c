//! Base backups into the bucket and the DR drill: `pgagent backup`, `pgagent list backups`,
//! and `pgagent restore --target-time` onto an empty directory with nothing but the bucket,
//! checked by `pg_verifybackup` and by the data PostgreSQL recovers.

mod common;

use std::process::Command;
use std::time::Duration;

use common::recovery::*;
use common::*;
use pgagent_tests::{run_pgagent, Garage, OsUser, PgOptions, PgServer};

/// `pg_verifybackup --no-parse-wal` on a restored directory, as the PostgreSQL OS user. A
/// manifest of version 2 (PostgreSQL 17+) is only checked by a `pg_verifybackup` of 17+; with
/// an older packaged one the check is skipped, and says so.
fn assert_verifybackup(pg: &PgServer) {
    let manifest = std::fs::read_to_string(pg.data_dir().join("backup_manifest")).unwrap();
    if !manifest.starts_with("{ \"PostgreSQL-Backup-Manifest-Version\": 1,")
        && pg.client_major().unwrap() < 17
    {
        eprintln!(
            "pg_verifybackup {} reads manifest version 1 only: not run",
            pg.client_major().unwrap()
        );
        return;
    }
    let mut verify = Command::new(pg.bin_dir().join("pg_verifybackup"));
    verify.args(["--no-parse-wal"]).arg(pg.data_dir());
    if let Some(user) = OsUser::for_postgres().unwrap() {
        use std::os::unix::process::CommandExt;
        verify.uid(user.uid).gid(user.gid);
    }
    let out = verify.output().unwrap();
    assert!(out.status.success(), "pg_verifybackup: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn dr_drill_restores_a_point_in_time_from_the_bucket_alone() {
    let garage = Garage::start().expect("start Garage");
    let rig = Rig::s3(garage.store_url("dr"), garage.s3_env());
    let mut primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent = rig.spawn_caught_up(&primary);
    primary.pgbench_init(3).unwrap();
    create_table_t(&primary);
    load(&primary, "before", 1000);

    // A base backup while the agent streams: complete once its WAL is in the bucket.
    let env = rig.env(&primary);
    let out = run_pgagent(&["backup", "--fast"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let out = run_pgagent(&["list", "backups", "--json"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["status"], "complete", "{listed}");
    assert!(
        listed[0]["size_bytes"].as_u64().unwrap() > 30 << 20,
        "{listed}"
    );
    let (from, to) = (
        listed[0]["reachable_from"].as_str().unwrap_or_default(),
        listed[0]["reachable_to"].as_str().unwrap_or_default(),
    );
    assert!(!from.is_empty() && from <= to, "{listed}");

    // More load; the state at time T; more load after it.
    load(&primary, "at-t", 1000);
    primary.pgbench(&["-t", "200", "-c", "2"]).unwrap();
    let at_t = state(&primary);
    std::thread::sleep(Duration::from_millis(1200));
    let t = primary
        .psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    load(&primary, "after", 1000);
    primary
        .psql("UPDATE t SET v = v || 'x' WHERE id % 3 = 0")
        .unwrap();
    let final_state = state(&primary);
    assert_ne!(final_state, at_t);
    let switch = lsn(&primary.switch_wal().unwrap());
    let boundary = switch.segment_number(seg()).end_lsn(seg());
    rig.wait_uploaded(&agent, boundary, Duration::from_secs(120));

    // Bare hardware: the server, its data directory and the staging directory are gone.
    assert!(agent.terminate().success(), "{}", agent.output_text());
    primary.stop().unwrap();
    drop(primary);
    std::fs::remove_dir_all(rig.staging()).unwrap();

    let fetch = fetch_config(&rig.store_url, &garage.s3_env());
    let mut restored = PgServer::without_cluster(PgOptions::default()).unwrap();
    let pgdata = restored.data_dir();
    let out = run_restore(&fetch.config, &pgdata, &["--target-time", t.trim()]);
    assert!(out.status.success(), "{}", text(&out));
    let conf = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains("restore_command = '") && conf.contains("fetch %f %p"),
        "{conf}"
    );
    assert!(pgdata.join("recovery.signal").exists());

    // PostgreSQL's own check of the restored files against its backup_manifest.
    assert_verifybackup(&restored);

    // Recovery through restore_command stops at T with the data of T.
    restored.start_server().unwrap();
    let log = wait_promoted(&restored, Duration::from_secs(120));
    assert!(log.contains("recovery stopping before commit"), "{log}");
    assert_eq!(state(&restored), at_t, "{}", restored.log_tail());

    // A non-empty data directory is refused (exit 3) and left as it is.
    restored.stop().unwrap();
    let out = run_restore(&fetch.config, &pgdata, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(pgdata.join("PG_VERSION").exists());

    // --delta over the used directory: matching files stay, the rest is rewritten or
    // removed, and recovery to the end of the WAL gives the primary's last state.
    let out = run_restore(&fetch.config, &pgdata, &["--delta"]);
    assert!(out.status.success(), "{}", text(&out));
    let unchanged: u64 = text(&out)
        .split(" unchanged")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(unchanged > 100, "{}", text(&out));
    // postgresql.conf is the backup's again: this server's own settings go back in.
    restored
        .append_conf(&[
            &format!("port = {}", restored.port()),
            &format!(
                "unix_socket_directories = '{}'",
                restored.socket_dir().display()
            ),
        ])
        .unwrap();
    restored.start_server().unwrap();
    wait_promoted(&restored, Duration::from_secs(120));
    assert_eq!(state(&restored), final_state, "{}", restored.log_tail());
}

/// The manifest of backup `id` in a file:// store at `store_dir`.
fn read_manifest(store_dir: &std::path::Path, id: &str) -> serde_json::Value {
    let body = std::fs::read(store_dir.join(format!("backups/{id}/manifest.json"))).unwrap();
    serde_json::from_slice(&pgagent_storage::envelope::open(&body).unwrap()).unwrap()
}

/// A second backup after updating 1 % of a table's rows stores a small fraction of the
/// first; a damaged or missing chunk stops a restore with its name, and nothing is written
/// outside the data directory.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_backup_stores_only_changes_and_damage_is_named() {
    let rig = Rig::fs();
    let primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent = rig.spawn(&primary);
    primary.pgbench_init(10).unwrap();
    primary.psql("CHECKPOINT").unwrap();
    let env = rig.env(&primary);
    let backup = |env: &[(&'static str, String)]| {
        let out = run_pgagent(&["backup", "--fast"], env);
        assert!(out.status.success(), "{}", text(&out));
        let out = run_pgagent(&["list", "backups", "--json"], env);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().unwrap().last().unwrap().clone()
    };
    let first = backup(&env);
    // 1 % of pgbench_accounts (1,000,000 rows at scale 10), a contiguous range.
    primary
        .psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 10000")
        .unwrap();
    primary.psql("CHECKPOINT").unwrap();
    let second = backup(&env);
    let (s1, s2) = (
        first["stored_bytes"].as_u64().unwrap(),
        second["stored_bytes"].as_u64().unwrap(),
    );
    let share = s2 as f64 / s1 as f64;
    eprintln!(
        "first backup stored {s1} bytes, second {s2} ({:.1} %), dedup ratio {}",
        share * 100.0,
        second["dedup_ratio"]
    );
    assert!(
        share < 0.10,
        "second backup stored {:.1} % of the first",
        share * 100.0
    );
    assert!(agent.terminate().success(), "{}", agent.output_text());

    let store_dir = rig.dir.path().join("store");
    let id = second["id"].as_str().unwrap();
    let manifest = read_manifest(&store_dir, id);
    let chunk_of = |path: &str| -> String {
        manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .unwrap()["chunks"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    let victim = chunk_of("global/pg_control");
    let other = chunk_of("PG_VERSION");
    let chunk_path = |h: &str| store_dir.join(format!("chunks/{}/{h}", &h[..2]));
    let restore_into = |dir: &std::path::Path| {
        run_pgagent(
            &["restore", "--pgdata", dir.to_str().unwrap(), "--backup", id],
            &[("PGAGENT_STORE_URL", rig.store_url.clone())],
        )
    };
    let scratch = tempfile::tempdir().unwrap();

    // A chunk whose content is not what its name says.
    let saved = std::fs::read(chunk_path(&victim)).unwrap();
    std::fs::copy(chunk_path(&other), chunk_path(&victim)).unwrap();
    let out = restore_into(&scratch.path().join("a"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&victim), "{}", text(&out));
    let store_env = [("PGAGENT_STORE_URL", rig.store_url.clone())];
    let out = run_pgagent(&["verify"], &store_env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&victim) && text(&out).contains("global/pg_control"),
        "{}",
        text(&out)
    );

    // A missing chunk.
    std::fs::remove_file(chunk_path(&victim)).unwrap();
    let out = restore_into(&scratch.path().join("b"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&victim), "{}", text(&out));

    // Repaired: verify finds nothing, the restore goes through, and only into its directory.
    std::fs::write(chunk_path(&victim), saved).unwrap();
    let out = run_pgagent(&["verify", "--wal"], &store_env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("WAL continuous"), "{}", text(&out));
    let out = restore_into(&scratch.path().join("c"));
    assert!(out.status.success(), "{}", text(&out));
    let mut names: Vec<String> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
}

/// A table in a tablespace comes back: its files go to the tablespace's location (empty
/// again after the loss), `pg_tblspc/<oid>` points there, pg_verifybackup passes.
#[tokio::test(flavor = "multi_thread")]
async fn a_tablespace_comes_back_at_its_location() {
    let rig = Rig::fs();
    let mut primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent = rig.spawn(&primary);
    let space = tempfile::tempdir().unwrap();
    let location = space.path().join("ts1");
    std::fs::create_dir(&location).unwrap();
    if let Some(user) = OsUser::for_postgres().unwrap() {
        std::os::unix::fs::chown(space.path(), Some(user.uid), Some(user.gid)).unwrap();
        std::os::unix::fs::chown(&location, Some(user.uid), Some(user.gid)).unwrap();
    }
    primary
        .psql(&format!(
            "CREATE TABLESPACE ts1 LOCATION '{}'",
            location.display()
        ))
        .unwrap();
    primary
        .psql("CREATE TABLE t (id int PRIMARY KEY, v text) TABLESPACE ts1")
        .unwrap();
    load(&primary, "in-ts1", 5000);
    let expected = state(&primary);
    let env = rig.env(&primary);
    let out = run_pgagent(&["backup", "--fast"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let end = lsn(&primary.switch_wal().unwrap());
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    primary.stop().unwrap();
    drop(primary);
    std::fs::remove_dir_all(&location).unwrap();

    let fetch = fetch_config(&rig.store_url, &[]);
    let mut restored = PgServer::without_cluster(PgOptions::default()).unwrap();
    let pgdata = restored.data_dir();
    let out = run_restore(&fetch.config, &pgdata, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let tablespaces: Vec<_> = std::fs::read_dir(pgdata.join("pg_tblspc"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(tablespaces.len(), 1);
    assert_eq!(std::fs::read_link(&tablespaces[0]).unwrap(), location);
    assert_verifybackup(&restored);
    restored.start_server().unwrap();
    wait_promoted(&restored, Duration::from_secs(120));
    assert_eq!(state(&restored), expected, "{}", restored.log_tail());
}

/// `pgagent run` takes base backups on `backup.schedule` and reports the last one in its
/// metrics.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_takes_backups_on_its_schedule() {
    let rig = Rig::fs();
    let primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let metrics = pgagent_tests::free_addr().unwrap();
    let mut agent = rig.spawn_with(
        &primary,
        &[
            ("PGAGENT_BACKUP_SCHEDULE", "*/4 * * * * *".to_string()),
            ("PGAGENT_METRICS_LISTEN", metrics.to_string()),
        ],
    );
    let env = rig.env(&primary);
    let complete =
        pgagent_tests::wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
            let out = run_pgagent(&["list", "backups", "--json"], &env);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .is_some_and(|a| a.iter().any(|b| b["status"] == "complete"))
        });
    assert!(
        complete,
        "no scheduled backup completed\n{}",
        agent.output_text()
    );
    let last =
        pgagent_tests::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            scrape(metrics, "pgagent_backup_last_success_timestamp_seconds") > 0.0
        });
    assert!(last, "{}", agent.output_text());
    assert!(scrape(metrics, "pgagent_backup_duration_seconds") > 0.0);
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

/// The number of files under `dir` (objects of a file:// store).
fn count_files(dir: &std::path::Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p)
            } else {
                vec![p]
            }
        })
        .collect()
}

/// `pgagent prune` keeps the newest backup, deletes the older ones, the chunks only they
/// used and the WAL before the kept backup; `--dry-run` deletes nothing; verify still passes.
#[tokio::test(flavor = "multi_thread")]
async fn prune_keeps_what_the_newest_backup_needs() {
    let rig = Rig::fs();
    let primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent = rig.spawn(&primary);
    primary.pgbench_init(2).unwrap();
    let env = rig.env(&primary);
    let mut ids = Vec::new();
    for round in 0..3 {
        primary.pgbench(&["-t", "300", "-c", "2"]).unwrap();
        primary
            .psql(&format!(
                "CREATE TABLE r{round} AS SELECT g FROM generate_series(1, 200000) g"
            ))
            .unwrap();
        primary.switch_wal().unwrap();
        let out = run_pgagent(&["backup", "--fast"], &env);
        assert!(out.status.success(), "{}", text(&out));
        let out = run_pgagent(&["list", "backups", "--json"], &env);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(
            v.as_array().unwrap().last().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        std::thread::sleep(Duration::from_millis(1100)); // distinct ids (one per second)
    }
    let end = lsn(&primary.switch_wal().unwrap());
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());

    let store = rig.dir.path().join("store");
    let before = (
        count_files(&store.join("chunks")),
        count_files(&store.join("wal")),
    );
    let mut prune_env = vec![("PGAGENT_STORE_URL", rig.store_url.clone())];
    prune_env.push(("PGAGENT_BACKUP_KEEP_BACKUPS", "1".to_string()));
    let out = run_pgagent(&["prune", "--dry-run"], &prune_env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("would delete backup {}", ids[0])),
        "{}",
        text(&out)
    );
    assert_eq!(
        (
            count_files(&store.join("chunks")),
            count_files(&store.join("wal"))
        ),
        before
    );

    let out = run_pgagent(&["prune"], &prune_env);
    assert!(out.status.success(), "{}", text(&out));
    let out = run_pgagent(&["list", "backups", "--json"], &prune_env);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let left: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [ids[2].as_str()]);
    let after = (
        count_files(&store.join("chunks")),
        count_files(&store.join("wal")),
    );
    assert!(
        after.0 < before.0 && after.1 < before.1,
        "{before:?} -> {after:?}"
    );
    let out = run_pgagent(&["verify"], &prune_env);
    assert!(out.status.success(), "{}", text(&out));
}

/// A second backup on the same machine while one runs is refused with a message naming the
/// lock, and nothing is written to the store for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_concurrent_backup_is_refused() {
    let rig = Rig::fs();
    let primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent = rig.spawn_caught_up(&primary);
    let env = rig.env(&primary);
    // The running backup's lock, held as `pgagent backup` holds it.
    std::fs::create_dir_all(rig.staging()).unwrap();
    let lock = std::fs::File::create(rig.staging().join("backup.lock")).unwrap();
    lock.try_lock().unwrap();
    let out = run_pgagent(&["backup", "--fast"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("another base backup is running"),
        "{}",
        text(&out)
    );
    let out = run_pgagent(&["list", "backups", "--json"], &env);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0, "{v}");
    drop(lock);
    let out = run_pgagent(&["backup", "--fast"], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

/// `pgagent backup --wait` with no `pgagent run` streaming the server: the backup's files
/// are stored, and while it waits for the WAL up to its stop LSN it says so at once and
/// again every 30 s, naming the segment it waits for and that `pgagent run` must be
/// streaming this server.
#[tokio::test(flavor = "multi_thread")]
async fn backup_wait_without_a_daemon_says_what_it_waits_for() {
    let rig = Rig::fs();
    let pg = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut backup =
        pgagent_tests::AgentProcess::spawn(&["backup", "--fast", "--wait"], &rig.env(&pg));
    let started = std::time::Instant::now();
    let said = |n: usize| {
        let err = backup.stderr_text();
        err.matches("must be streaming this server").count() >= n
    };
    let twice =
        pgagent_tests::wait_until(Duration::from_secs(50), Duration::from_millis(250), || {
            said(2)
        });
    let took = started.elapsed();
    let err = backup.stderr_text();
    assert!(
        twice,
        "not said twice within 50 s:\n{}",
        backup.output_text()
    );
    println!("said twice after {:.1} s", took.as_secs_f64());
    assert!(
        took >= Duration::from_secs(30),
        "said too often: {took:?}\n{err}"
    );
    let line = err
        .lines()
        .find(|l| l.contains("must be streaming this server"))
        .unwrap();
    for part in [
        "waiting for WAL segment 0000000100000000000000",
        "stop LSN",
        "pgagent run",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
    assert!(backup.is_running(), "{}", backup.output_text());
    backup.kill9();
}
