//! An encrypted cluster kept in several stores shares one master key: a new store gets the
//! cluster's key files and `cluster.json` from the store that holds it (`pgagent run`, and
//! `pgagent store add` ahead of it), and every store then holds the same objects.

mod common;

use std::time::{Duration, Instant};

use common::two_stores::*;
use common::*;
use pgagent_tests::{run_pgagent, wait_until, AgentProcess, PgServer};

/// An encrypted cluster's stores share one master key. `pgagent store add` gives a new
/// store the cluster's key files and `cluster.json`; `pgagent run` does the same by itself
/// for a new store it finds; a store holding stray objects is refused by both, untouched;
/// the new stores are then filled, byte for byte the first store's objects.
#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_cluster_gives_new_stores_its_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| dir.path().join(n));
    let pg = PgServer::start(Default::default()).unwrap();
    let env = |stores: &[&std::path::Path]| {
        let config = dir.path().join("pgagent.toml");
        let toml: String = stores
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let name = p.file_name().unwrap().to_str().unwrap();
                let role = if i == 0 { "required" } else { "async" };
                format!(
                    "[[stores]]\nname = \"{name}\"\nurl = \"file://{}\"\nrole = \"{role}\"\n\n",
                    p.display()
                )
            })
            .collect();
        std::fs::write(&config, toml).unwrap();
        let env = vec![
            ("PGAGENT_POSTGRES_CONNINFO", pg.conninfo("pgagent")),
            (
                "PGAGENT_STAGING_DIR",
                dir.path().join("staging").display().to_string(),
            ),
            ("PGAGENT_METRICS_LISTEN", String::new()),
            ("PGAGENT_WAL_PARTIAL_INTERVAL", "500ms".into()),
            ("PGAGENT_BACKUP_SCHEDULE", String::new()),
            (
                "PGAGENT_ENCRYPTION_PASSPHRASE",
                "a passphrase for every store".into(),
            ),
        ];
        (config.display().to_string(), env)
    };

    // One store: it gets the cluster's master key.
    let (config, vars) = env(&[&a]);
    let mut agent = AgentProcess::spawn(&["--config", &config, "run"], &vars);
    let target = segment_end(switch_segments(&pg, 2));
    let landed = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        slot_restart_lsn(&pg).is_some_and(|l| l >= target)
    });
    assert!(landed, "{}", agent.output_text());
    assert!(agent.terminate().success(), "{}", agent.output_text());

    // `store add b`: b gets a's key file and cluster.json; a second time finds it done.
    std::fs::create_dir(&b).unwrap();
    let (config, vars) = env(&[&a, &b]);
    let out = run_pgagent(&["--config", &config, "store", "add", "b"], &vars);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("copied cluster.json and 1 key file(s) from store a"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(a.join("cluster.json")).unwrap(),
        std::fs::read(b.join("cluster.json")).unwrap()
    );
    let out = run_pgagent(&["--config", &config, "store", "add", "b"], &vars);
    assert!(
        text(&out).contains("already holds cluster"),
        "{}",
        text(&out)
    );

    // A store holding something else is not new: refused by `store add` and by `run`.
    std::fs::create_dir_all(c.join("wal")).unwrap();
    std::fs::write(c.join("wal/stray"), b"x").unwrap();
    let (config, vars) = env(&[&a, &b, &c]);
    let out = run_pgagent(&["--config", &config, "store", "add", "c"], &vars);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("is not empty (wal/stray"),
        "{}",
        text(&out)
    );
    let mut refused = AgentProcess::spawn(&["--config", &config, "run"], &vars);
    let status = refused
        .wait_timeout(Duration::from_secs(60))
        .expect("a refused start exits");
    assert_eq!(status.code(), Some(3), "{}", refused.output_text());
    assert!(!c.join("cluster.json").exists(), "c was claimed");

    // `run` with a new store d beside a and b: d is given the cluster by itself, and both
    // are filled with a's objects.
    let (config, vars) = env(&[&a, &b, &d]);
    let mut agent = AgentProcess::spawn(&["--config", &config, "run"], &vars);
    let more = segment_end(switch_segments(&pg, 1));
    let a_store = open_store(&format!("file://{}", a.display()), &[]).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let filled = loop {
        let a_keys = stored_bodies(a_store.as_ref()).await;
        let mut all = slot_restart_lsn(&pg).is_some_and(|l| l >= more);
        for other in [&b, &d] {
            let store = open_store(&format!("file://{}", other.display()), &[]).await;
            let theirs = stored_bodies(store.as_ref()).await;
            all &= a_keys
                .iter()
                .filter(|(k, _)| !k.contains(".partial"))
                .all(|(k, v)| theirs.get(k) == Some(v));
        }
        if all {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        filled,
        "b and d did not get a's segments\n{}",
        agent.output_text()
    );
    assert_eq!(
        std::fs::read(a.join("cluster.json")).unwrap(),
        std::fs::read(d.join("cluster.json")).unwrap()
    );
    assert!(
        agent
            .output_text()
            .contains("a new store of this encrypted cluster"),
        "{}",
        agent.output_text()
    );
    assert!(agent.terminate().success(), "{}", agent.output_text());
}
