//! Logs: JSON lines with `--log-format json`, and no secret in any output — not the
//! PostgreSQL password, not the S3 secret key — even at debug level and on error paths.

mod common;

use std::time::Duration;

use common::*;
use pgagent_tests::{run_pgagent, AgentProcess, Garage, PgOptions, PgServer};

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_is_ever_logged() {
    let garage = Garage::start().expect("start Garage");
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let password = format!("pw-{}", std::process::id() * 7919);
    pg.psql(&format!(
        "CREATE ROLE logtest LOGIN REPLICATION PASSWORD '{password}'"
    ))
    .unwrap();
    let secret = garage.secret_access_key().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgagent.toml");
    std::fs::write(
        &config,
        format!(
            "[postgres]\nconninfo = \"host=127.0.0.1 port={} user=logtest password={password} sslmode=disable\"\n\
             [staging]\ndir = \"{}\"\n[store]\nurl = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{secret}\"\n\
             [backup]\nschedule = \"\"\n[metrics]\nlisten = \"\"\n",
            pg.port(),
            dir.path().join("staging").display(),
            garage.store_url("logs"),
            garage.access_key_id(),
        ),
    )
    .unwrap();
    let env = vec![
        ("PGAGENT_LOG", "debug".to_string()),
        ("AWS_REGION", garage.region().to_string()),
        // `backup` below runs while no agent streams: it gives up waiting for its WAL.
        ("PGAGENT_BACKUP_WAL_TIMEOUT", "3s".to_string()),
    ];
    let cfg = config.to_str().unwrap();
    let mut agent = AgentProcess::spawn(&["--config", cfg, "--log-format", "json", "run"], &env);
    let streaming =
        pgagent_tests::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            agent.stderr_text().contains("streaming")
        });
    assert!(streaming, "{}", agent.output_text());
    pg.pgbench_init(1).unwrap();
    pg.switch_wal().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let mut outputs = vec![("run", agent.output_text())];
    for line in agent.stderr_text().lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
    }

    // Commands, and the error paths that print connection settings and store requests.
    for args in [
        &["list", "wal"][..],
        &["status"],
        &["doctor"],
        &["backup", "--fast"],
    ] {
        let mut all = vec!["--config", cfg];
        all.extend_from_slice(args);
        outputs.push((args[0], text(&run_pgagent(&all, &env))));
    }
    let bad = std::fs::read_to_string(&config)
        .unwrap()
        .replace("port=", "port=1 port_was=")
        .replace("sslmode=disable", "sslmode=disable connect_timeout=2");
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(
        &bad_config,
        bad.replace(
            &format!("{}\"", garage.store_url("logs")),
            "s3://nope/x?endpoint=http://127.0.0.1:1&region=garage\"",
        ),
    )
    .unwrap();
    for args in [&["doctor"][..], &["run"]] {
        let mut all = vec!["--config", bad_config.to_str().unwrap()];
        all.extend_from_slice(args);
        outputs.push((args[0], text(&run_pgagent(&all, &env))));
    }
    for (what, out) in &outputs {
        assert!(
            !out.contains(&password),
            "{what} printed the PostgreSQL password:\n{out}"
        );
        assert!(
            !out.contains(&secret),
            "{what} printed the S3 secret key:\n{out}"
        );
    }
    assert!(
        outputs
            .iter()
            .any(|(w, o)| *w == "doctor" && o.contains("FAIL")),
        "{outputs:?}"
    );
}
