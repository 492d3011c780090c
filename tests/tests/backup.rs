//! Base backups into the bucket and the DR drill: `pgagent backup`, `pgagent list backups`,
//! and `pgagent restore --target-time` onto an empty directory with nothing but the bucket,
//! checked by `pg_verifybackup` and by the data PostgreSQL recovers.

mod common;

use std::process::Command;
use std::time::Duration;

use common::recovery::*;
use common::*;
use pgagent_protocol::SegNo;
use pgagent_tests::{run_pgagent, Garage, OsUser, PgOptions, PgServer};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dr_drill_restores_a_point_in_time_from_the_bucket_alone() {
    let garage = Garage::start().expect("start Garage");
    let rig = Rig::s3(garage.store_url("dr"), garage.s3_env());
    let mut primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent = rig.spawn(&primary);
    let first = lsn(&primary.current_wal_lsn().unwrap());
    rig.wait_uploaded(&agent, first, Duration::from_secs(60));
    primary.pgbench_init(3).unwrap();
    primary
        .psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
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
    assert_ne!(state(&primary), at_t);
    let switch = lsn(&primary.switch_wal().unwrap());
    let boundary = SegNo(switch.segment_number(seg()).0 + 1).start_lsn(seg());
    rig.wait_uploaded(&agent, boundary, Duration::from_secs(120));

    // Bare hardware: the server, its data directory and the staging directory are gone.
    assert!(agent.terminate().success(), "{}", agent.output_text());
    primary.stop().unwrap();
    drop(primary);
    std::fs::remove_dir_all(rig.staging()).unwrap();

    let fetch = fetch_config(&rig.store_url, &garage.s3_env());
    let mut restored = PgServer::without_cluster(PgOptions::default()).unwrap();
    let pgdata = restored.data_dir();
    let out = run_pgagent(
        &[
            "--config",
            fetch.config.to_str().unwrap(),
            "restore",
            "--pgdata",
            pgdata.to_str().unwrap(),
            "--target-time",
            t.trim(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let conf = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains("restore_command = '") && conf.contains("fetch %f %p"),
        "{conf}"
    );
    assert!(pgdata.join("recovery.signal").exists());

    // PostgreSQL's own check of the restored files against its backup_manifest.
    let mut verify = Command::new(restored.bin_dir().join("pg_verifybackup"));
    verify.args(["--no-parse-wal"]).arg(&pgdata);
    if let Some(user) = OsUser::for_postgres().unwrap() {
        use std::os::unix::process::CommandExt;
        verify.uid(user.uid).gid(user.gid);
    }
    let out = verify.output().unwrap();
    assert!(out.status.success(), "pg_verifybackup: {}", text(&out));

    // Recovery through restore_command stops at T with the data of T.
    restored.start_server().unwrap();
    let log = wait_promoted(&restored, Duration::from_secs(120));
    assert!(log.contains("recovery stopping before commit"), "{log}");
    assert_eq!(state(&restored), at_t, "{}", restored.log_tail());

    // A non-empty data directory is refused (exit 3) and left as it is.
    restored.stop().unwrap();
    let out = run_pgagent(
        &[
            "--config",
            fetch.config.to_str().unwrap(),
            "restore",
            "--pgdata",
            pgdata.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(pgdata.join("PG_VERSION").exists());
}
