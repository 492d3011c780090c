//! Bad input gets a clear one-line error naming the fix, the right exit code, and writes
//! nothing to the wrong place.

mod common;

use std::time::Duration;

use common::*;
use pgagent_tests::{run_pgagent, AgentProcess, PgOptions, PgServer};

fn run_once(rig: &Rig, pg: &PgServer, extra: &[(&'static str, String)]) -> (i32, String) {
    let mut env = rig.env(pg);
    env.extend(extra.iter().cloned());
    let mut agent = AgentProcess::spawn(&["run"], &env);
    let status = agent
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("pgagent run kept running:\n{}", agent.output_text()));
    (status.code().unwrap_or(-1), agent.stderr_text())
}

fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .find(|l| l.starts_with("pgagent: "))
        .unwrap_or_else(|| panic!("no error line in\n{s}"))
}

#[test]
fn wrong_password_names_the_fix() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::fs();
    let conninfo = pg
        .conninfo("pgagent")
        .replace("password=secret", "password=Wr0ngPassw0rd");
    let (code, err) = run_once(&rig, &pg, &[("PGAGENT_POSTGRES_CONNINFO", conninfo)]);
    assert_eq!(code, 1, "{err}");
    let line = last_line(&err);
    assert!(line.contains("password"), "{line}");
    assert!(
        !err.contains("Wr0ngPassw0rd"),
        "the password must not be echoed: {err}"
    );
    assert!(
        !rig.dir.path().join("store").join("cluster.json").exists(),
        "nothing stored"
    );
}

#[test]
fn missing_replication_right_names_the_fix() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::fs();
    let (code, err) = run_once(
        &rig,
        &pg,
        &[("PGAGENT_POSTGRES_CONNINFO", pg.conninfo("norepl"))],
    );
    assert_eq!(code, 1, "{err}");
    assert!(last_line(&err).contains("ALTER ROLE"), "{err}");
}

#[test]
fn wal_level_minimal_names_the_fix() {
    let pg = PgServer::start(PgOptions {
        wal_level: "minimal".into(),
        extra_conf: vec!["max_wal_senders = 0".into()],
        ..Default::default()
    })
    .unwrap();
    let rig = Rig::fs();
    let (code, err) = run_once(&rig, &pg, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(last_line(&err).contains("wal_level = replica"), "{err}");
}

#[test]
fn unreachable_bucket_is_a_clear_error() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let port = pgagent_tests::free_port().unwrap();
    let rig = Rig::s3(
        format!("s3://nobucket/x?endpoint=http://127.0.0.1:{port}&region=garage&path_style=true"),
        vec![
            ("AWS_ACCESS_KEY_ID", "GKtest".into()),
            ("AWS_SECRET_ACCESS_KEY", "secret".into()),
        ],
    );
    let (code, err) = run_once(&rig, &pg, &[("PGAGENT_STORE_REQUEST_TIMEOUT", "2s".into())]);
    assert_eq!(code, 1, "{err}");
    let line = last_line(&err);
    assert!(
        line.contains(&format!("127.0.0.1:{port}")) || line.contains("nobucket"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_holding_another_cluster_is_refused_with_exit_3() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::fs();
    let store = rig.store().await;
    let foreign = serde_json::json!({
        "format_version": 1,
        "system_identifier": "1234567890",
        "pg_version_num": 150000,
        "wal_segment_size": 16777216u64,
        "created_at": "2026-01-01T00:00:00Z"
    });
    store
        .put("cluster.json", serde_json::to_vec(&foreign).unwrap().into())
        .await
        .unwrap();
    let (code, err) = run_once(&rig, &pg, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(last_line(&err).contains("1234567890"), "{err}");
    assert!(
        store.list("wal/").await.unwrap().is_empty(),
        "no WAL written into a foreign prefix"
    );
    let slot = pg
        .psql("SELECT count(*) FROM pg_replication_slots")
        .unwrap();
    assert_eq!(slot.trim(), "0", "no slot created for a refused run");
}

#[test]
fn unusable_staging_directory_is_a_clear_error() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::fs();
    // A file where the directory should be: fails even for root, unlike a chmod.
    let blocker = rig.dir.path().join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let staging = blocker.join("staging");
    let (code, err) = run_once(
        &rig,
        &pg,
        &[("PGAGENT_STAGING_DIR", staging.display().to_string())],
    );
    assert_eq!(code, 1, "{err}");
    let line = last_line(&err);
    assert!(
        line.contains("staging directory") && line.contains("fix:"),
        "{line}"
    );
}

#[test]
fn unknown_config_key_is_a_usage_error() {
    let out = run_pgagent(
        &["status"],
        &[("PGAGENT_STORE_ULR", "file:///tmp/x".into())],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ulr"));
}

#[test]
fn a_bucket_without_write_rights_names_the_fix() {
    let garage = pgagent_tests::Garage::start().unwrap();
    let (id, secret) = garage.create_key_without_write(garage.bucket()).unwrap();
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::s3(
        garage.store_url("ro"),
        vec![
            ("AWS_ACCESS_KEY_ID", id),
            ("AWS_SECRET_ACCESS_KEY", secret.clone()),
        ],
    );
    let (code, err) = run_once(&rig, &pg, &[]);
    assert_eq!(code, 1, "{err}");
    let line = last_line(&err);
    assert!(
        line.to_lowercase().contains("denied") || line.contains("permission"),
        "{line}"
    );
    assert!(!err.contains(&secret), "the secret must not be logged");
}
