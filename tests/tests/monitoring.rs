//! Monitoring while streaming: `/metrics` moves as WAL moves, the RPO gauge and `/readyz`
//! follow the bucket going away and coming back, the failure hook fires once per incident
//! and the recovery hook once, and the node_exporter textfile is written; store requests are
//! counted and `pgagent status` reports them per hour.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use pgagent_tests::{free_addr, wait_until, Garage, PgOptions, PgServer, Proxy, ProxyMode};

fn hook_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_rpo_readiness_and_hooks_follow_an_outage() {
    let garage = Garage::start().expect("start Garage");
    let proxy = Proxy::start(garage.s3_addr());
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::s3(
        garage.store_url_via("mon", &proxy.http_endpoint()),
        garage.s3_env(),
    );
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks.log");
    let textfile = dir.path().join("textfile");
    std::fs::create_dir(&textfile).unwrap();
    let addr = free_addr().unwrap();
    let hook = |kind: &str| {
        format!(
            "echo \"{kind} $PGAGENT_EVENT $PGAGENT_EVENT_REASON rpo=$PGAGENT_RPO_SECONDS\" >> {}",
            hooks.display()
        )
    };
    let mut agent = rig.spawn_with(
        &pg,
        &[
            ("PGAGENT_METRICS_LISTEN", addr.to_string()),
            ("PGAGENT_METRICS_MAX_RPO_SECONDS", "3".into()),
            (
                "PGAGENT_METRICS_TEXTFILE_DIR",
                textfile.display().to_string(),
            ),
            ("PGAGENT_ALERTS_ON_FAILURE", hook("on_failure")),
            ("PGAGENT_ALERTS_ON_RECOVERY", hook("on_recovery")),
            ("PGAGENT_ALERTS_GRACE", "1s".into()),
            ("PGAGENT_STORE_REQUEST_TIMEOUT", "2s".into()),
        ],
    );
    let ready = || http_get(addr, "/readyz");
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            std::net::TcpStream::connect(addr).is_ok() && ready().starts_with("HTTP/1.0 200")
        }),
        "{}",
        agent.output_text()
    );
    assert!(http_get(addr, "/healthz").starts_with("HTTP/1.0 200"));

    // WAL moves, and so do the positions.
    let received = scrape(addr, "pgagent_wal_received_lsn");
    let uploaded = scrape(addr, "pgagent_wal_uploaded_lsn");
    pg.pgbench_init(1).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            scrape(addr, "pgagent_wal_received_lsn") > received + 1e6
                && scrape(addr, "pgagent_wal_uploaded_lsn") > uploaded + 1e6
        }),
        "{}",
        http_get(addr, "/metrics")
    );
    let text = std::fs::read_to_string(textfile.join("pgagent.prom")).unwrap();
    assert!(text.contains("pgagent_wal_received_lsn "), "{text}");
    assert!(hook_lines(&hooks).is_empty(), "{:?}", hook_lines(&hooks));

    // The bucket goes away while commits keep coming: the RPO rises, readiness drops, the
    // failure hook fires once.
    let writing = AtomicBool::new(true);
    std::thread::scope(|s| {
        s.spawn(|| {
            pg.psql("CREATE TABLE beat (t timestamptz)").unwrap();
            while writing.load(Ordering::Relaxed) {
                pg.psql("INSERT INTO beat VALUES (now())").unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        proxy.set_mode(ProxyMode::Refuse);
        let risen = wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
            scrape(addr, "pgagent_rpo_seconds") > 4.0
        });
        assert!(risen, "{}", http_get(addr, "/metrics"));
        let not_ready = ready();
        assert!(not_ready.starts_with("HTTP/1.0 503"), "{not_ready}");
        assert!(not_ready.contains("RPO"), "{not_ready}");
        assert!(
            wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
                !hook_lines(&hooks).is_empty()
            }),
            "{}",
            agent.output_text()
        );
        std::thread::sleep(Duration::from_secs(4));
        let lines = hook_lines(&hooks);
        assert_eq!(lines.len(), 1, "once per incident: {lines:?}");
        assert!(lines[0].starts_with("on_failure failure rpo"), "{lines:?}");

        // It comes back: the RPO falls, readiness returns, the recovery hook fires once.
        proxy.set_mode(ProxyMode::Pass);
        let fallen = wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
            scrape(addr, "pgagent_rpo_seconds") < 3.0
        });
        assert!(fallen, "{}", http_get(addr, "/metrics"));
        assert!(
            wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
                ready().starts_with("HTTP/1.0 200") && hook_lines(&hooks).len() >= 2
            }),
            "{:?}\n{}",
            hook_lines(&hooks),
            agent.output_text()
        );
        std::thread::sleep(Duration::from_secs(3));
        writing.store(false, Ordering::Relaxed);
    });
    let lines = hook_lines(&hooks);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].starts_with("on_recovery recovery rpo"),
        "{lines:?}"
    );
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

/// `pgagent status` shows the last backup from the store, and a restarted daemon's backup
/// gauge starts from it instead of zero.
#[tokio::test(flavor = "multi_thread")]
async fn status_and_gauges_know_the_last_backup() {
    let rig = Rig::fs();
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let mut agent = rig.spawn_caught_up(&pg);
    let env = rig.env(&pg);
    let out = pgagent_tests::run_pgagent(&["backup", "--fast"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let out = pgagent_tests::run_pgagent(&["status", "--json"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["last_backup"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(id.len(), 16, "{v}");
    assert!(v["last_snapshot"].is_null(), "{v}");
    for key in [
        "received_lsn",
        "uploaded_lsn",
        "upload_lag_bytes",
        "rpo_seconds",
        "staging_bytes",
        "timeline",
    ] {
        assert!(!v[key].is_null(), "{key}: {v}");
    }
    let out = pgagent_tests::run_pgagent(&["status"], &env);
    assert!(
        text(&out).contains(&format!("last backup       {id}")),
        "{}",
        text(&out)
    );
    assert!(agent.terminate().success(), "{}", agent.output_text());

    let addr = free_addr().unwrap();
    let mut agent = rig.spawn_with(&pg, &[("PGAGENT_METRICS_LISTEN", addr.to_string())]);
    let known = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        std::net::TcpStream::connect(addr).is_ok()
            && scrape(addr, "pgagent_backup_last_success_timestamp_seconds") > 1.7e9
    });
    assert!(known, "{}", http_get(addr, "/metrics"));
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

/// The WAL objects in the bucket under `prefix`, listed with a plain `ListObjectsV2` (not
/// through the agent's store code).
async fn wal_keys_in_bucket(garage: &Garage, prefix: &str) -> usize {
    let pgagent_storage::StoreUrl::S3(loc) =
        pgagent_storage::StoreUrl::parse(&garage.store_url(prefix)).unwrap()
    else {
        unreachable!("an s3:// URL")
    };
    let opts = pgagent_storage::StoreOptions {
        access_key_id: Some(garage.access_key_id().to_string()),
        secret_access_key: Some(garage.secret_access_key().to_string()),
        ..Default::default()
    };
    let s3 = pgagent_storage::s3::S3Store::open(loc, &opts)
        .await
        .unwrap();
    let page = s3
        .client()
        .list_objects_v2()
        .bucket(garage.bucket())
        .prefix(format!("{prefix}/wal/"))
        .send()
        .await
        .unwrap();
    assert_ne!(page.is_truncated(), Some(true), "more than one page of WAL");
    page.contents().len()
}

/// The daemon counts its store requests: `/metrics` shows at least one PUT per WAL object
/// in the bucket, and `pgagent status` gives requests per hour by operation and bytes
/// uploaded per WAL byte over the time it has run.
#[tokio::test(flavor = "multi_thread")]
async fn store_requests_are_counted_and_reported_per_hour() {
    let garage = Garage::start().expect("start Garage");
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::s3(garage.store_url("requests"), garage.s3_env());
    let addr = free_addr().unwrap();
    let mut agent = rig.spawn_with(&pg, &[("PGAGENT_METRICS_LISTEN", addr.to_string())]);
    let caught_up = lsn(&pg.current_wal_lsn().unwrap());
    rig.wait_uploaded(&agent, caught_up, Duration::from_secs(30));

    // Some WAL while the daemon measures: two complete segments and a partial one.
    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS m FROM generate_series(1, 20000) g")
        .unwrap();
    pg.switch_wal().unwrap();
    pg.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        .unwrap();
    pg.switch_wal().unwrap();
    pg.psql("INSERT INTO t VALUES (0, 'last')").unwrap();
    let end = lsn(&pg.current_wal_lsn().unwrap());
    rig.wait_uploaded(&agent, end, Duration::from_secs(30));
    let measured = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        rig.status().is_some_and(|s| {
            s["usage"]["wal_bytes"].as_u64() > Some(0)
                && s["usage"]["stored_per_wal_byte"].as_f64() > Some(0.0)
        })
    });
    assert!(measured, "{:?}\n{}", rig.status(), agent.output_text());

    // Listed first, scraped second: every object listed was PUT before the scrape.
    let objects = wal_keys_in_bucket(&garage, "requests").await;
    assert!(objects >= 3, "{objects} WAL objects");
    let puts = scrape(addr, "pgagent_store_requests_total{op=\"put\"}");
    assert!(
        puts >= objects as f64,
        "{puts} PUTs counted for {objects} WAL objects\n{}",
        http_get(addr, "/metrics")
    );
    for op in ["get", "list", "delete", "head"] {
        let name = format!("pgagent_store_requests_total{{op=\"{op}\"}}");
        assert!(scrape(addr, &name) >= 0.0);
    }

    let env = rig.env(&pg);
    let out = pgagent_tests::run_pgagent(&["status", "--json"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let u = &v["usage"];
    let window = u["window_seconds"].as_f64().unwrap_or_default();
    assert!(window > 0.0 && window < 120.0, "{u}");
    assert!(u["requests_per_hour"].as_f64() > Some(0.0), "{u}");
    assert!(u["requests"]["put"].as_u64() > Some(0), "{u}");
    assert!(
        u["requests_per_hour_by_op"]["put"].as_f64() > Some(0.0),
        "{u}"
    );
    for ratio in ["stored_per_wal_byte", "raw_per_wal_byte"] {
        let r = u[ratio].as_f64().unwrap_or_default();
        assert!(r > 0.0 && r.is_finite(), "{ratio}: {u}");
    }
    let out = pgagent_tests::run_pgagent(&["status"], &env);
    let human = text(&out);
    assert!(human.contains("/h over the last"), "{human}");
    assert!(human.contains("raw) per WAL byte over the last"), "{human}");
    assert!(agent.terminate().success(), "{}", agent.output_text());
}
