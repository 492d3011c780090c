//! Several stores read as one (`[[stores]]`): a restore reads each object from the first
//! store that has it and reports what each served; a store missing chunks is made up for by
//! the other; with the near store lost, `--store far` restores, drills and recovers from the
//! far one and says where its WAL ends; `verify` checks each store on its own; stores of
//! two clusters, or encrypted under two master keys, are refused (exit 3). The stores are
//! `file://` copies of one streamed store (fetch over a failing S3 store is in
//! `stores_fetch.rs`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::drill::drill_env;
use common::recovery::*;
use common::*;
use pgagent_tests::{run_pgagent, PgOptions, PgServer};

/// `pgagent --config <config> <args…>` with `env`.
fn pgagent(config: &Path, args: &[&str], env: &[(&'static str, String)]) -> Output {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    run_pgagent(&all, env)
}

/// `(bytes share in %, objects)` the report line gives store `name`: `… from near (99.6 %,
/// 120 objects, …)`.
fn share(out: &str, name: &str) -> (f64, u64) {
    let pattern = format!(" from {name} (");
    let at = out
        .find(&pattern)
        .unwrap_or_else(|| panic!("no share of {name} in {out}"))
        + pattern.len();
    let rest = &out[at..];
    let (pct, rest) = rest.split_once(" %, ").unwrap_or(("0", rest));
    let parsed = || -> Option<(f64, u64)> {
        Some((pct.parse().ok()?, rest.split(' ').next()?.parse().ok()?))
    };
    parsed().unwrap_or_else(|| panic!("no share of {name} in {out}"))
}

/// Every file under `dir`, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Starts `pgdata` (restored, with its recovery settings), waits for promotion and returns
/// its data.
fn recovered_state(pgdata_owner: &mut PgServer) -> String {
    pgdata_owner.start_server().unwrap();
    wait_promoted(pgdata_owner, Duration::from_secs(120));
    let s = state(pgdata_owner);
    pgdata_owner.stop().unwrap();
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn two_stores_restore_near_first_fall_back_per_object_and_restore_from_far_alone() {
    let rig = Rig::fs();
    let mut primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent = rig.spawn_caught_up(&primary);
    create_table_t(&primary);
    load(&primary, "before", 2000);
    let out = run_pgagent(&["backup", "--fast"], &rig.env(&primary));
    assert!(out.status.success(), "{}", text(&out));
    load(&primary, "after", 500);
    let expected = state(&primary);
    let switch = lsn(&primary.switch_wal().unwrap());
    rig.wait_uploaded(
        &agent,
        switch.segment_number(seg()).end_lsn(seg()),
        Duration::from_secs(60),
    );
    assert!(agent.terminate().success(), "{}", agent.output_text());
    primary.stop().unwrap();

    // The streamed store, copied twice: near (priority 1) and far.
    let store = rig.store_url.trim_start_matches("file://").to_string();
    let near = rig.dir.path().join("near");
    let far = rig.dir.path().join("far");
    for copy in [&near, &far] {
        let cp = std::process::Command::new("cp")
            .args(["-a", &store, copy.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(cp.success());
    }
    let fetch = fetch_config(&rig.store_url, &[]);
    let toml = std::fs::read_to_string(&fetch.config).unwrap().replace(
        &format!("[store]\nurl = \"{}\"\n", rig.store_url),
        &format!(
            "[[stores]]\nname = \"near\"\nurl = \"file://{}\"\nrestore_priority = 1\n\n\
             [[stores]]\nname = \"far\"\nurl = \"file://{}\"\nrole = \"async\"\n\
             restore_priority = 2\n",
            near.display(),
            far.display()
        ),
    );
    assert!(toml.contains("[[stores]]"), "{toml}");
    std::fs::write(&fetch.config, toml).unwrap();
    let config = fetch.config.clone();

    // verify: each store on its own.
    let out = pgagent(&config, &["verify"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("store near:")
            && said.contains("store far:")
            && said.contains("every store verified: near, far"),
        "{said}"
    );

    // A restore reads (nearly) everything from the near store.
    let a = PgServer::without_cluster(PgOptions::default()).unwrap();
    let out = run_restore(&config, &a.data_dir(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (near_pct, _) = share(&text(&out), "near");
    assert!(near_pct >= 99.0, "{}", text(&out));
    drop(a);

    // status: the newest backup of each store.
    let staging = rig.staging();
    let out = pgagent(
        &config,
        &["status", "--staging-dir", staging.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("near: last backup") && text(&out).contains("far: last backup"),
        "{}",
        text(&out)
    );

    // ~5 % of the near store's chunks gone: the far store serves them.
    let chunks = files(&near.join("chunks"));
    let gone: Vec<&PathBuf> = chunks.iter().step_by(20).collect();
    for c in &gone {
        std::fs::remove_file(c).unwrap();
    }
    let out = pgagent(&config, &["verify", "--store", "near"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("PROBLEM"), "{}", text(&out));
    let out = pgagent(&config, &["verify", "--store", "far"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let mut b = PgServer::without_cluster(PgOptions::default()).unwrap();
    let out = run_restore(&config, &b.data_dir(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("restore with chunks missing in near:\n{}", text(&out));
    let (_, from_far) = share(&text(&out), "far");
    assert!(
        from_far >= gone.len() as u64,
        "{} chunks deleted: {}",
        gone.len(),
        text(&out)
    );
    assert_eq!(
        recovered_state(&mut b),
        expected,
        "restored from both stores"
    );

    // The near store lost (emptied): reading both is refused, naming it and the way out.
    std::fs::remove_dir_all(&near).unwrap();
    std::fs::create_dir(&near).unwrap();
    let mut c = PgServer::without_cluster(PgOptions::default()).unwrap();
    let out = run_restore(&config, &c.data_dir(), &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("store near (") && text(&out).contains("--store far"),
        "{}",
        text(&out)
    );

    // `--store far`: restores, says where the WAL it holds ends, and recovery reads it too.
    let out = run_restore(&config, &c.data_dir(), &["--store", "far"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("restore --store far:\n{}", text(&out));
    let said = text(&out);
    assert!(said.contains("WAL in far ends at "), "{said}");
    assert!(said.contains("near (not used): holds no WAL"), "{said}");
    let (far_pct, _) = share(&said, "far");
    assert_eq!(far_pct, 100.0, "{said}");
    let conf = std::fs::read_to_string(c.data_dir().join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("--store far fetch %f %p"), "{conf}");
    assert_eq!(recovered_state(&mut c), expected, "restored from far alone");

    // `drill --store far` passes and reports the store it read.
    let mut env = drill_env(&rig, &primary);
    env.retain(|(k, _)| *k != "PGAGENT_STORE_URL" && *k != "PGAGENT_STAGING_DIR");
    let out = pgagent(&config, &["drill", "--store", "far", "--json"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("drill --store far:\n{report:#}");
    let stores = report["stores"].to_string();
    assert!(
        stores.contains("from far (100.0 %") && stores.contains("WAL in far ends at"),
        "{report:#}"
    );
    assert!(
        far.join("drills").read_dir().unwrap().count() == 1,
        "the drill is recorded in the store it read"
    );
}

/// Two stores whose `cluster.json` name different clusters: reading commands refuse them
/// (exit 3), and `pgagent fetch` stops recovery (255), never "not found".
#[test]
fn stores_of_different_clusters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    write_cluster_json(&a, "7000000000000000001");
    write_cluster_json(&b, "7000000000000000002");
    let config = dir.path().join("pgagent.toml");
    std::fs::write(
        &config,
        format!(
            "[staging]\ndir = \"{}\"\n\n[fetch]\ntimeout = \"2s\"\nidle_timeout = \"1s\"\n\n\
             [[stores]]\nname = \"a\"\nurl = \"file://{}\"\n\n\
             [[stores]]\nname = \"b\"\nurl = \"file://{}\"\nrole = \"async\"\n",
            dir.path().join("staging").display(),
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    for args in [&["list", "wal"][..], &["verify"]] {
        let out = pgagent(&config, args, &[]);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("stores a and b hold different clusters"),
            "{}",
            text(&out)
        );
    }
    let dest = dir.path().join("RECOVERYXLOG");
    let out = pgagent(
        &config,
        &["fetch", "000000010000000000000001", dest.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    // One of them alone reads.
    let out = pgagent(&config, &["list", "wal", "--store", "b"], &[]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Two encrypted stores of one cluster must open to one master key: a store claimed on its
/// own (its own master key, under the same passphrase) is refused with exit 3, naming both
/// key checks; a copy of the first store (the same key) reads with it.
#[tokio::test(flavor = "multi_thread")]
async fn encrypted_stores_must_share_one_master_key() {
    use pgagent_storage::cluster::ClusterInfo;
    use pgagent_storage::crypto::{KdfParams, Passphrase};
    use pgagent_storage::keyring::access::claim;
    use pgagent_storage::keyring::keys::{KeyOrigin, UnlockLimits};

    let dir = tempfile::tempdir().unwrap();
    let pass = "correct horse battery staple";
    let ours = ClusterInfo {
        format_version: 1,
        system_identifier: "7000000000000000001".into(),
        pg_version_num: 170000,
        wal_segment_size: SEG,
        created_at: "2026-01-01T00:00:00Z".into(),
        encryption: None,
    };
    let origin = KeyOrigin {
        hostname: "test".into(),
        username: "test".into(),
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
        let store = open_store(&format!("file://{}", d.display()), &[]).await;
        claim(
            store.as_ref(),
            &ours,
            Some(&Passphrase::new(pass).unwrap()),
            KdfParams::DEFAULT,
            &origin,
            UnlockLimits::default(),
        )
        .await
        .unwrap();
    }
    let passfile = dir.path().join("passphrase");
    std::fs::write(&passfile, pass).unwrap();
    let config = dir.path().join("pgagent.toml");
    let write_config = |second: &Path| {
        std::fs::write(
            &config,
            format!(
                "[staging]\ndir = \"{}\"\n\n[encryption]\npassphrase_file = \"{}\"\n\n\
                 [[stores]]\nname = \"a\"\nurl = \"file://{}\"\n\n\
                 [[stores]]\nname = \"b\"\nurl = \"file://{}\"\nrole = \"async\"\n",
                dir.path().join("staging").display(),
                passfile.display(),
                a.display(),
                second.display()
            ),
        )
        .unwrap();
    };
    write_config(&b);
    let out = pgagent(&config, &["list", "wal"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("stores a and b do not open to the same master key"),
        "{}",
        text(&out)
    );

    let copy = dir.path().join("copy");
    let cp = std::process::Command::new("cp")
        .args(["-a", a.to_str().unwrap(), copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(cp.success());
    write_config(&copy);
    let out = pgagent(&config, &["list", "wal"], &[]);
    assert!(out.status.success(), "{}", text(&out));
}
