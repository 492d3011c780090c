//! `pgagent drill` on a `file://` store: a healthy store passes and reports the point it
//! reached; a `check_sql` returning 0, a segment missing in the middle of the WAL, a
//! corrupt chunk and a backup whose WAL never completed each fail with the failing step
//! named; a `drill.dir` inside PGDATA is refused; scheduled drills set the metrics and run
//! the hook; an encrypted store drills; and from a clone of a ZFS snapshot (zfs-fuse) a
//! drill passes faster than from the bucket. Every drill starts a real PostgreSQL on what
//! it restored.

mod common;

use std::time::Duration;

use common::drill::{check, drill, drill_env, failed, streamed};
use common::recovery::{create_table_t, fetch_config, load};
use common::zfs::{add_zfs_section, flush_to_store, pgagent, primary_on_zfs};
use common::*;
use pgagent_protocol::{segment_file_name, Lsn, SegNo, TimelineId};
use pgagent_storage::envelope;
use pgagent_tests::{run_pgagent, PgOptions, PgServer, ZfsPool};

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_of_a_healthy_store_passes_and_reports_the_point_reached() {
    let rig = Rig::fs();
    let (pg, end) = streamed(&rig, 2);
    let (code, report, out) = drill(
        &rig,
        &pg,
        &[(
            "PGAGENT_DRILL_CHECK_SQL",
            "SELECT count(*) FROM t WHERE v LIKE 'last%'".into(),
        )],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(report["passed"], true, "{report:#}");
    assert!(failed(&report).is_empty(), "{report:#}");
    for name in [
        "restore",
        "recovery",
        "end of WAL",
        "connect",
        "databases",
        "tables",
        "amcheck",
    ] {
        assert_eq!(check(&report, name)["passed"], true, "{name}: {report:#}");
    }
    assert_eq!(check(&report, "check_sql")["detail"], "returned 50");
    assert_eq!(report["tier"], "bucket");
    // The point reached is the end of the WAL the server wrote: every commit replayed.
    let reached: Lsn = report["reached"]["lsn"].as_str().unwrap().parse().unwrap();
    assert!(
        reached >= end,
        "reached {reached}, the server wrote up to {end}"
    );
    assert!(report["reached"]["last_commit"].is_string(), "{report:#}");
    assert_eq!(report["reached"]["timeline"], 2, "promoted to timeline 2");
    assert_eq!(report["behind_live_bytes"], 0, "{report:#}");
    assert!(report["restore_seconds"].as_f64().unwrap() > 0.0);
    assert!(report["replay_seconds"].as_f64().unwrap() > 0.0);
    assert!(check(&report, "databases")["detail"]
        .as_str()
        .unwrap()
        .contains("postgres"));

    // Recorded in the store (read directly), and listed.
    let id = report["id"].as_str().unwrap();
    let store = rig.store().await;
    let body = store.get(&format!("drills/{id}.json")).await.unwrap();
    let recorded: serde_json::Value =
        serde_json::from_slice(&envelope::open(&body).unwrap()).unwrap();
    assert_eq!(recorded["passed"], true);
    assert_eq!(recorded["reached"], report["reached"]);
    let out = run_pgagent(&["list", "drills"], &rig.env(&pg));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(id) && text(&out).contains("passed"),
        "{}",
        text(&out)
    );
    // The text form says the same.
    let out = run_pgagent(&["drill"], &drill_env(&rig, &pg));
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{shown}");
    for line in [
        "PASSED",
        "restored   backup",
        "RTO",
        "reached    LSN",
        "ok   end of WAL",
    ] {
        assert!(shown.contains(line), "{line:?} missing from\n{shown}");
    }
    // Nothing is left in the scratch directory.
    let left: Vec<_> = std::fs::read_dir(rig.dir.path().join("drill"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_fails_naming_the_step_that_failed() {
    let rig = Rig::fs();
    let (pg, end) = streamed(&rig, 3);
    let store_dir = rig.dir.path().join("store");

    // A check_sql that counts nothing.
    let (code, report, out) = drill(
        &rig,
        &pg,
        &[(
            "PGAGENT_DRILL_CHECK_SQL",
            "SELECT count(*) FROM t WHERE v = 'never written'".into(),
        )],
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(failed(&report), ["check_sql"], "{report:#}");
    assert_eq!(
        check(&report, "check_sql")["detail"],
        "returned 0: not above 0"
    );
    assert!(out.contains("failed: check_sql"), "{out}");

    // A segment missing in the middle: PostgreSQL takes "not found" for the end of the
    // archive and promotes early; the drill sees it ended before the store's WAL does.
    let middle = segment_file_name(TimelineId(1), SegNo(end.segment_number(seg()).0 - 2), seg());
    let moved = rig.dir.path().join("moved-segment");
    std::fs::rename(store_dir.join("wal").join(&middle), &moved).unwrap();
    let (code, report, out) = drill(&rig, &pg, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(failed(&report), ["end of WAL"], "{report:#}");
    let behind = report["behind_store_bytes"].as_u64().unwrap();
    assert!(behind > SEG, "{report:#}");
    std::fs::rename(&moved, store_dir.join("wal").join(&middle)).unwrap();

    // A corrupt chunk: the restore stops, naming it.
    let chunk = std::fs::read_dir(store_dir.join("chunks"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let original = std::fs::read(&chunk).unwrap();
    let mut bad = original.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&chunk, &bad).unwrap();
    let (code, report, out) = drill(&rig, &pg, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(failed(&report), ["restore"], "{report:#}");
    let name = chunk.file_name().unwrap().to_str().unwrap();
    assert!(
        check(&report, "restore")["detail"]
            .as_str()
            .unwrap()
            .contains(name),
        "{report:#}"
    );
    std::fs::write(&chunk, &original).unwrap();

    // A backup whose WAL never reached the store stays "running": it cannot be drilled.
    let store = rig.store().await;
    let key = store
        .list("backups/")
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.key.ends_with("/manifest.json"))
        .unwrap()
        .key;
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&envelope::open(&store.get(&key).await.unwrap()).unwrap()).unwrap();
    manifest["status"] = "running".into();
    let json = serde_json::to_vec(&manifest).unwrap();
    store
        .put(&key, envelope::seal(&json, 3).body)
        .await
        .unwrap();
    let (code, report, out) = drill(&rig, &pg, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(failed(&report), ["restore"], "{report:#}");
    assert!(
        check(&report, "restore")["detail"]
            .as_str()
            .unwrap()
            .contains("no complete backup"),
        "{report:#}"
    );

    // Each failed drill is recorded as failed.
    let out = run_pgagent(&["list", "drills", "--json"], &rig.env(&pg));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 4, "{listed:#?}");
    assert!(listed.iter().all(|r| r["passed"] == false));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_directory_inside_pgdata_is_refused() {
    let rig = Rig::fs();
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let inside = pg.data_dir().join("drill");
    let (code, _, out) = drill(
        &rig,
        &pg,
        &[("PGAGENT_DRILL_DIR", inside.display().to_string())],
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("never touches PGDATA"), "{out}");
    assert!(!inside.exists());
}

/// `drill.schedule` in `pgagent run`: a passing drill sets the drill gauges and `status`
/// shows it; with a `check_sql` that fails, the gauges say so and `alerts.on_failure` runs
/// with the drill's failed checks.
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_drill_sets_the_metrics_and_a_failed_one_runs_the_hook() {
    let rig = Rig::fs();
    let (pg, _) = streamed(&rig, 1);
    let hooks = rig.dir.path().join("hooks.log");
    let scheduled = |check_sql: &str| {
        let addr = pgagent_tests::free_addr().unwrap();
        let mut env = drill_env(&rig, &pg);
        env.extend([
            ("PGAGENT_METRICS_LISTEN", addr.to_string()),
            ("PGAGENT_DRILL_SCHEDULE", "*/3 * * * * *".into()),
            ("PGAGENT_DRILL_CHECK_SQL", check_sql.into()),
            (
                "PGAGENT_ALERTS_ON_FAILURE",
                format!(
                    "echo \"$PGAGENT_EVENT $PGAGENT_EVENT_REASON $PGAGENT_DRILL_FAILED_CHECKS\" >> {0}; \
                     echo \"  $PGAGENT_EVENT_MESSAGE\" >> {0}",
                    hooks.display()
                ),
            ),
        ]);
        let agent = pgagent_tests::AgentProcess::spawn(&["run"], &env);
        (agent, addr)
    };
    let metric = |addr, name| std::panic::catch_unwind(|| scrape(addr, name)).unwrap_or(f64::NAN);

    let (mut agent, addr) = scheduled("SELECT count(*) FROM t");
    assert!(
        pgagent_tests::wait_until(Duration::from_secs(90), Duration::from_millis(500), || {
            metric(addr, "pgagent_drill_last_success_timestamp_seconds") > 0.0
        }),
        "no drill passed\n{}",
        agent.output_text()
    );
    assert_eq!(metric(addr, "pgagent_drill_checks_failed"), 0.0);
    assert!(metric(addr, "pgagent_drill_rto_seconds") > 0.0);
    assert!(metric(addr, "pgagent_drill_duration_seconds") > 0.0);
    // Stopped while drills run every 3 s: the one running stops its server and removes its
    // scratch directory before the daemon exits.
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let left: Vec<_> = std::fs::read_dir(rig.dir.path().join("drill"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "a drill outlived the daemon: {left:?}");
    let out = run_pgagent(&["status"], &rig.env(&pg));
    assert!(
        text(&out)
            .lines()
            .any(|l| l.starts_with("last drill") && l.contains("passed, RTO")),
        "{}",
        text(&out)
    );

    let (mut agent, addr) = scheduled("SELECT count(*) FROM t WHERE false");
    assert!(
        pgagent_tests::wait_until(Duration::from_secs(90), Duration::from_millis(500), || {
            metric(addr, "pgagent_drill_checks_failed") == 1.0
                && std::fs::read_to_string(&hooks).is_ok_and(|h| !h.is_empty())
        }),
        "no failed drill reported\n{}",
        agent.output_text()
    );
    // The passed drill of the first agent still counts, read from the store at start.
    assert!(metric(addr, "pgagent_drill_last_success_timestamp_seconds") > 0.0);
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let hook = std::fs::read_to_string(&hooks).unwrap();
    assert_eq!(
        hook.lines().find(|l| !l.starts_with("  ")),
        Some("failure drill check_sql"),
        "{hook}\n{}",
        agent.output_text()
    );
    let out = run_pgagent(&["status"], &rig.env(&pg));
    assert!(
        text(&out)
            .lines()
            .any(|l| l.starts_with("last drill") && l.contains("FAILED (check_sql)")),
        "{}",
        text(&out)
    );
}

/// A drill of an encrypted store: the restored server's `restore_command` gets the
/// passphrase from the drill's environment, and the record is encrypted like every object.
#[tokio::test(flavor = "multi_thread")]
async fn a_drill_of_an_encrypted_store_passes_and_its_record_is_encrypted() {
    let mut rig = Rig::fs();
    rig.extra_env.push((
        "PGAGENT_ENCRYPTION_PASSPHRASE",
        "drill passphrase".to_string(),
    ));
    let (pg, _) = streamed(&rig, 1);
    let (code, report, out) = drill(&rig, &pg, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(failed(&report).is_empty(), "{report:#}");
    let id = report["id"].as_str().unwrap();
    let store = rig.store().await;
    let body = store.get(&format!("drills/{id}.json")).await.unwrap();
    let header = envelope::Header::parse(&body).unwrap();
    assert!(header.is_encrypted(), "the drill record is plaintext");
}

/// `pgagent drill` from a clone of a local snapshot and from the bucket: both pass and
/// reach the end of the WAL; the clone restores faster, is destroyed afterwards, and the
/// live cluster and its snapshot stay as they were.
#[tokio::test(flavor = "multi_thread")]
async fn a_drill_from_a_snapshot_clone_is_faster_than_from_the_bucket() {
    let pool = ZfsPool::create(1024).expect("ZFS pool");
    let (dataset, _pgdata, primary) = primary_on_zfs(&pool);
    let rig = Rig::fs();
    let mut agent = rig.spawn_caught_up(&primary);
    primary.pgbench_init(10).unwrap();
    create_table_t(&primary);
    load(&primary, "before", 1000);
    let fetch = fetch_config(&rig.store_url, &[]);
    add_zfs_section(&fetch.config, &[format!("datasets = [\"{dataset}\"]")]);
    let mut env = rig.env(&primary);
    let out = pgagent(&fetch.config, &["backup", "--fast"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let out = pgagent(&fetch.config, &["snapshot"], &env);
    assert!(out.status.success(), "{}", text(&out));
    load(&primary, "after", 500);
    flush_to_store(&rig, &agent, &primary);
    assert!(agent.terminate().success(), "{}", agent.output_text());

    env.push((
        "PGAGENT_DRILL_PG_BIN_DIR",
        primary.bin_dir().display().to_string(),
    ));
    env.push((
        "PGAGENT_DRILL_DIR",
        pool.dir().join("drill").display().to_string(),
    ));
    let drill = |from: &str| {
        let out = pgagent(&fetch.config, &["drill", "--json", "--from", from], &env);
        assert!(out.status.success(), "drill --from {from}: {}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["passed"], true, "{report:#}");
        assert_eq!(report["tier"], from, "{report:#}");
        report
    };
    let cloned = drill("snapshot");
    let bucket = drill("bucket");
    let seconds = |r: &serde_json::Value| r["restore_seconds"].as_f64().unwrap();
    println!(
        "drill restore: snapshot clone {:.2} s, bucket {:.2} s",
        seconds(&cloned),
        seconds(&bucket)
    );
    assert!(
        seconds(&cloned) < seconds(&bucket),
        "the clone ({:.2} s) was not faster than the bucket ({:.2} s)",
        seconds(&cloned),
        seconds(&bucket)
    );
    assert_eq!(cloned["reached"]["lsn"], bucket["reached"]["lsn"]);
    let datasets = pool
        .zfs(&["list", "-H", "-o", "name", "-r", pool.name()])
        .unwrap();
    assert!(
        !datasets.contains("-restore-"),
        "the clone stayed: {datasets}"
    );
    assert!(primary.psql("SELECT 1").is_ok());
    assert!(pool
        .snapshots()
        .unwrap()
        .iter()
        .any(|s| s.contains("@pgagent-")));
}
