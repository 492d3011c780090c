//! ZFS on a real (file-backed, zfs-fuse) pool: consistent snapshots under load restored to
//! a point in time, snapshot retention, a rollback after a bad change, the preseed that
//! cannot be fooled by a layered mount or a stale marker, and doctor's staging checks.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::recovery::*;
use common::zfs::*;
use common::*;
use pgagent_tests::{run_pgagent, Garage, PgOptions, PgServer, ZfsPool};

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_under_load_restores_to_a_target_time() {
    let pool = ZfsPool::create(1024).expect("ZFS pool");
    let (dataset, _pgdata, primary) = primary_on_zfs(&pool);
    let garage = Garage::start().expect("start Garage");
    let rig = Rig::s3(garage.store_url("zfs"), garage.s3_env());
    let mut agent = rig.spawn_caught_up(&primary);
    primary.pgbench_init(2).unwrap();
    create_table_t(&primary);
    load(&primary, "before", 1000);

    let fetch = fetch_config(&rig.store_url, &garage.s3_env());
    add_zfs_section(&fetch.config, &[format!("datasets = [\"{dataset}\"]")]);
    let env = rig.env(&primary);

    // The snapshot is taken while pgbench writes.
    let snap = std::thread::scope(|s| {
        let bench = s.spawn(|| primary.pgbench(&["-T", "6", "-c", "2"]).unwrap());
        std::thread::sleep(Duration::from_secs(2));
        let out = pgagent(&fetch.config, &["snapshot"], &env);
        bench.join().unwrap();
        out
    });
    assert!(snap.status.success(), "{}", text(&snap));
    let id = text(&snap)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    let name = format!("{dataset}@pgagent-{id}");
    assert!(pool.snapshots().unwrap().contains(&name), "{}", text(&snap));
    // The record is on the snapshot and in the store.
    let label = pool
        .zfs(&["get", "-H", "-o", "value", "pgagent:record", &name])
        .unwrap();
    assert!(label.contains("START WAL LOCATION"), "{label}");
    let out = pgagent(&fetch.config, &["list", "snapshots", "--json"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed[0]["local"], true, "{listed}");
    assert_eq!(listed[0]["in_store"], true, "{listed}");

    // A target after the snapshot: the state at T, then more changes.
    load(&primary, "at-t", 500);
    let at_t = state(&primary);
    std::thread::sleep(Duration::from_millis(1200));
    let t = utc_now(&primary);
    std::thread::sleep(Duration::from_millis(1200));
    load(&primary, "after", 500);
    primary.psql("DELETE FROM t WHERE id % 2 = 0").unwrap();
    assert_ne!(state(&primary), at_t);
    flush_to_store(&rig, &agent, &primary);

    // Restore (tier auto: the local snapshot serves, as a clone), recovering with WAL from
    // the bucket.
    let restored_pgdata = pool.dir().join("restored").join("data");
    let out = pgagent(
        &fetch.config,
        &[
            "restore",
            "--target-time",
            &t,
            "--pgdata",
            restored_pgdata.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("tier snapshot: restored snapshot {id}")),
        "{}",
        text(&out)
    );
    assert!(restored_pgdata.join("backup_label").exists());
    assert!(!restored_pgdata.join("postmaster.pid").exists());
    let mut restored = server_for(&restored_pgdata);
    restored.start_server().unwrap();
    let log = wait_promoted(&restored, Duration::from_secs(120));
    assert!(log.contains("recovery stopping before"), "{log}");
    assert_eq!(state(&restored), at_t, "{}", restored.log_tail());
    restored.stop().unwrap();

    // The original cluster and its snapshot are untouched by the clone.
    assert!(primary.psql("SELECT 1").is_ok());
    assert!(pool.snapshots().unwrap().contains(&name));
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_right_snapshots_and_rollback_undoes_a_bad_change() {
    let pool = ZfsPool::create(768).expect("ZFS pool");
    let (dataset, pgdata, mut primary) = primary_on_zfs(&pool);
    let garage = Garage::start().expect("start Garage");
    let rig = Rig::s3(garage.store_url("rollback"), garage.s3_env());
    let mut agent = rig.spawn_caught_up(&primary);
    create_table_t(&primary);
    load(&primary, "first", 300);
    let fetch = fetch_config(&rig.store_url, &garage.s3_env());
    add_zfs_section(
        &fetch.config,
        &[
            format!("datasets = [\"{dataset}\"]"),
            "keep_hourly = 1".into(),
            "keep_daily = 0".into(),
            "keep_weekly = 0".into(),
            "restore_mode = \"rollback\"".into(),
        ],
    );
    let env = rig.env(&primary);
    // A snapshot somebody else made is never pgagent's to destroy.
    pool.zfs(&["snapshot", &format!("{dataset}@manual")])
        .unwrap();

    // Three snapshots a second apart; keeping the newest of the last hour keeps one.
    let mut taken = Vec::new();
    for i in 0..3 {
        load(&primary, &format!("s{i}"), 100);
        let out = pgagent(&fetch.config, &["snapshot"], &env);
        assert!(out.status.success(), "{}", text(&out));
        taken.push(
            text(&out)
                .split_whitespace()
                .nth(1)
                .unwrap()
                .trim_end_matches(':')
                .to_string(),
        );
        std::thread::sleep(Duration::from_millis(1100));
    }
    let snaps = pool.snapshots().unwrap();
    let newest = format!("{dataset}@pgagent-{}", taken[2]);
    assert!(snaps.contains(&newest), "{snaps:?}");
    assert!(snaps.contains(&format!("{dataset}@manual")), "{snaps:?}");
    let ours = snaps.iter().filter(|s| s.contains("@pgagent-")).count();
    assert_eq!(ours, 1, "one hour, one kept: {snaps:?}");
    let out = pgagent(&fetch.config, &["list", "snapshots", "--json"], &env);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "records of destroyed snapshots go: {listed}"
    );

    // The bad change, after a good state at T.
    load(&primary, "good", 200);
    let good = state(&primary);
    std::thread::sleep(Duration::from_millis(1200));
    let t = utc_now(&primary);
    std::thread::sleep(Duration::from_millis(1200));
    primary.psql("DELETE FROM t").unwrap();
    flush_to_store(&rig, &agent, &primary);
    assert!(agent.terminate().success(), "{}", agent.output_text());

    // A rollback is refused while the server runs, and without --force.
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--from",
            "snapshot",
            "--target-time",
            &t,
            "--pgdata",
        ];
        args.push(pgdata.to_str().unwrap());
        args.extend_from_slice(extra);
        pgagent(&fetch.config, &args, &[])
    };
    let out = restore(&["--force"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("stop it first"), "{}", text(&out));
    primary.stop().unwrap();
    let out = restore(&[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("pass --force"), "{}", text(&out));
    assert!(pgdata.join("PG_VERSION").exists(), "nothing was touched");

    let out = restore(&["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("rolled back in place"),
        "{}",
        text(&out)
    );
    primary.start_server().unwrap();
    wait_promoted(&primary, Duration::from_secs(120));
    assert_eq!(state(&primary), good, "{}", primary.log_tail());
    assert!(pool
        .snapshots()
        .unwrap()
        .contains(&format!("{dataset}@manual")));
}

/// Every file under `root`: path → (mode, uid, size, mtime, content).
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, u32, u64, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p, (m.mode(), m.uid(), m.size(), m.mtime(), content));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn preseed_is_not_fooled_by_a_layered_mount_or_a_stale_marker() {
    let pool = ZfsPool::create(768).expect("ZFS pool");
    let ids = postgres_ids();
    let garage = Garage::start().expect("start Garage");
    let rig = Rig::s3(garage.store_url("seed"), garage.s3_env());

    // The cluster being protected, with a base backup and its WAL in the bucket.
    let source = PgServer::start(PgOptions::default()).unwrap();
    let mut agent = rig.spawn_caught_up(&source);
    create_table_t(&source);
    load(&source, "kept", 2000);
    let env = rig.env(&source);
    let out = run_pgagent(&["backup", "--fast"], &env);
    assert!(out.status.success(), "{}", text(&out));
    load(&source, "after-backup", 300);
    let expected = state(&source);
    flush_to_store(&rig, &agent, &source);
    let fetch = fetch_config(&rig.store_url, &garage.s3_env());

    // The seed's failure: an old dataset with a stale cluster and the marker that once
    // said "already restored", hidden under a new dataset where PGDATA was wiped.
    let place = pool.dir().join("pg");
    let (old, old_mnt) = dataset_for_postgres(&pool, "old", ids);
    std::fs::create_dir(old_mnt.join("data")).unwrap();
    std::fs::write(old_mnt.join("data/PG_VERSION"), "15\n").unwrap();
    std::fs::write(
        old_mnt.join(".data.pgagent-preseed.json"),
        "{\"stale\":true}",
    )
    .unwrap();
    let (new, new_mnt) = dataset_for_postgres(&pool, "new", ids);
    std::fs::create_dir(new_mnt.join("data")).unwrap();
    std::fs::create_dir(&place).unwrap();
    std::os::unix::fs::chown(&place, Some(ids.0), Some(ids.1)).unwrap();
    pgagent_tests::zfs::run(
        "mount",
        &["--bind", old_mnt.to_str().unwrap(), place.to_str().unwrap()],
    )
    .unwrap();
    pgagent_tests::zfs::run(
        "mount",
        &["--bind", new_mnt.to_str().unwrap(), place.to_str().unwrap()],
    )
    .unwrap();
    let pgdata = place.join("data");
    let preseed = |pgdata: &Path| {
        pgagent(
            &fetch.config,
            &[
                "preseed",
                "--pgdata",
                pgdata.to_str().unwrap(),
                "--user",
                &ids.0.to_string(),
            ],
            &[],
        )
    };
    let out = preseed(&pgdata);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{old} (fuse.zfs) under {new} (fuse.zfs)")),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_dir(&pgdata).unwrap().count(),
        0,
        "nothing written"
    );

    // Two datasets that claim one mountpoint are refused too, even with one unmounted.
    pgagent_tests::zfs::run("umount", &[place.to_str().unwrap()]).unwrap();
    pgagent_tests::zfs::run("umount", &[place.to_str().unwrap()]).unwrap();
    pool.zfs_when_idle(&["umount", &new]).unwrap();
    pool.zfs(&["set", &format!("mountpoint={}", place.display()), &new])
        .unwrap();
    if pool
        .zfs(&["get", "-H", "-o", "value", "mounted", &new])
        .unwrap()
        .trim()
        != "yes"
    {
        pool.zfs_when_idle(&["mount", &new]).unwrap();
    }
    pool.zfs(&[
        "create",
        "-o",
        "canmount=noauto",
        "-o",
        &format!("mountpoint={}", place.display()),
        &format!("{}/other", pool.name()),
    ])
    .unwrap();
    let out = preseed(&pgdata);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("all have mountpoint="),
        "{}",
        text(&out)
    );

    // Fixed layout; a stale marker beside PGDATA on the visible dataset decides nothing:
    // the empty PGDATA is restored from the bucket.
    pool.destroy(&format!("{}/other", pool.name())).unwrap();
    std::fs::write(place.join(".data.pgagent-preseed.json"), "{\"stale\":true}").unwrap();
    let out = preseed(&pgdata);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("tier bucket"), "{}", text(&out));
    assert!(
        text(&out).contains("tier snapshot not used"),
        "{}",
        text(&out)
    );
    let marker = std::fs::read_to_string(place.join(".data.pgagent-preseed.json")).unwrap();
    assert!(marker.contains("\"tier\": \"bucket\""), "{marker}");
    let mut restored = server_for(&pgdata);
    restored.start_server().unwrap();
    wait_promoted(&restored, Duration::from_secs(120));
    assert_eq!(state(&restored), expected, "{}", restored.log_tail());
    restored.stop().unwrap();

    // On a valid cluster preseed changes nothing, byte for byte.
    let before = tree(&pgdata);
    let out = preseed(&pgdata);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing to do"), "{}", text(&out));
    assert_eq!(tree(&pgdata), before);

    // A mode PostgreSQL rejects, and a non-empty directory without a cluster: refused.
    std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = preseed(&pgdata);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("chmod 0700"), "{}", text(&out));
    let junk = place.join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("notes.txt"), "x").unwrap();
    let out = preseed(&junk);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("holds no valid cluster"),
        "{}",
        text(&out)
    );
    assert!(junk.join("notes.txt").exists());
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_staging_and_create_staging_makes_it_right() {
    let pool = ZfsPool::create(256).expect("ZFS pool");
    let rig = Rig::fs();
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let staging = pool.dir().join("staging");
    let dataset = format!("{}/staging", pool.name());
    let mut env = rig.env(&pg);
    env.retain(|(k, _)| *k != "PGAGENT_STAGING_DIR");
    env.push(("PGAGENT_STAGING_DIR", staging.display().to_string()));
    env.push(("PGAGENT_ZFS_STAGING_DATASET", dataset.clone()));

    // A dataset with ZFS defaults: doctor names each property to fix, as warnings.
    pool.create_dataset("staging", Some(&staging)).unwrap();
    let out = run_pgagent(&["doctor"], &env);
    assert!(out.status.success(), "{}", text(&out));
    for fix in [
        format!("zfs set atime=off {dataset}"),
        format!("zfs set logbias=throughput {dataset}"),
    ] {
        assert!(text(&out).contains(&fix), "{}", text(&out));
    }
    assert!(
        text(&out).contains("ok    postgres: replication connection"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("ok    bucket delete"), "{}", text(&out));
    assert!(text(&out).contains("ok    clock"), "{}", text(&out));

    // zfs.create_staging: `pgagent run` creates the dataset with the right properties.
    pool.destroy(&dataset).unwrap();
    let _ = std::fs::remove_dir_all(&staging);
    env.push(("PGAGENT_ZFS_CREATE_STAGING", "true".into()));
    let mut agent = pgagent_tests::AgentProcess::spawn(&["run"], &env);
    assert!(
        pgagent_tests::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            pool.zfs(&["get", "-H", "-o", "value", "logbias", &dataset])
                .is_ok_and(|v| v.trim() == "throughput")
        }),
        "{}",
        agent.output_text()
    );
    let props = pool
        .zfs(&[
            "get",
            "-H",
            "-o",
            "property,value",
            "recordsize,atime,compression,mountpoint",
            &dataset,
        ])
        .unwrap();
    for want in ["recordsize\t128K", "atime\toff", "compression\toff"] {
        assert!(props.contains(want), "{props}");
    }
    assert!(props.contains(&staging.display().to_string()), "{props}");
    assert!(agent.terminate().success(), "{}", agent.output_text());
    let out = run_pgagent(&["doctor"], &env);
    assert!(
        text(&out).contains("ok    staging dataset"),
        "{}",
        text(&out)
    );

    // Failures: a dataset that does not exist, a wrong password.
    let mut bad = env.clone();
    bad.push((
        "PGAGENT_ZFS_DATASETS",
        format!("[\"{}/missing\"]", pool.name()),
    ));
    bad.retain(|(k, _)| *k != "PGAGENT_POSTGRES_CONNINFO");
    bad.push((
        "PGAGENT_POSTGRES_CONNINFO",
        pg.conninfo("pgagent")
            .replace("password=secret", "password=wrong"),
    ));
    let out = run_pgagent(&["doctor"], &bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("FAIL  postgres"), "{}", text(&out));
    assert!(text(&out).contains("FAIL  zfs dataset"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn run_takes_scheduled_snapshots_and_keeps_retention() {
    let pool = ZfsPool::create(512).expect("ZFS pool");
    let (dataset, _pgdata, primary) = primary_on_zfs(&pool);
    let rig = Rig::fs();
    let metrics = pgagent_tests::free_addr().unwrap();
    let mut agent = rig.spawn_with(
        &primary,
        &[
            ("PGAGENT_ZFS_DATASETS", format!("[\"{dataset}\"]")),
            ("PGAGENT_ZFS_SNAPSHOT_SCHEDULE", "*/2 * * * * *".into()),
            ("PGAGENT_ZFS_KEEP_HOURLY", "1".into()),
            ("PGAGENT_ZFS_KEEP_DAILY", "0".into()),
            ("PGAGENT_ZFS_KEEP_WEEKLY", "0".into()),
            ("PGAGENT_METRICS_LISTEN", metrics.to_string()),
        ],
    );
    let ours = || {
        pool.snapshots()
            .unwrap()
            .into_iter()
            .filter(|s| s.contains("@pgagent-"))
            .collect::<Vec<_>>()
    };
    let first =
        pgagent_tests::wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
            std::net::TcpStream::connect(metrics).is_ok()
                && scrape(metrics, "pgagent_snapshot_last_success_timestamp_seconds") > 0.0
        });
    assert!(first, "{}", agent.output_text());
    let seen_first = ours();
    assert_eq!(seen_first.len(), 1, "{seen_first:?}");
    // Later snapshots replace it: one hour, one kept.
    let replaced =
        pgagent_tests::wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
            let now = ours();
            now.len() == 1 && now != seen_first
        });
    assert!(replaced, "{:?}\n{}", ours(), agent.output_text());
    assert!(agent.terminate().success(), "{}", agent.output_text());
}
