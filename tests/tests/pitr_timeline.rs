//! Recovery across a timeline switch, all through `restore_command = 'pgagent fetch %f %p'`
//! against an S3 store: a standby restored from the bucket promotes to timeline 2, a second
//! `pgagent run` streams it into the same prefix, and a later recovery follows the switch
//! through `00000002.history` (PostgreSQL docs, "Timelines", section 26.3.5, and
//! `recovery_target_timeline`, section 20.5.5).

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use pgagent_protocol::SegNo;
use pgagent_tests::{wait_until, Garage, OsUser, PgOptions, PgServer};

/// Row count and checksum of table `t`, in one transaction.
const STATE_SQL: &str =
    "SELECT count(*), md5(coalesce(string_agg(id::text || v, ',' ORDER BY id), '')) FROM t";

fn state(pg: &PgServer) -> String {
    pg.psql(STATE_SQL).unwrap()
}

/// `n` more rows after the highest id, tagged with `tag`.
fn load(pg: &PgServer, tag: &str, n: u32) {
    pg.psql(&format!(
        "INSERT INTO t SELECT m + g, '{tag}' || g FROM generate_series(1, {n}) g, \
         (SELECT coalesce(max(id), 0) m FROM t) s"
    ))
    .unwrap();
}

/// Takes `pg_basebackup -X none -c fast` of `primary` into `dest` as the PostgreSQL OS user.
fn base_backup(primary: &PgServer, dest: &Path) {
    let mut cmd = Command::new(primary.bin_dir().join("pg_basebackup"));
    cmd.arg("-D").arg(dest).args([
        "-X",
        "none",
        "-c",
        "fast",
        "-d",
        &primary.conninfo("pgagent"),
    ]);
    if let Some(user) = OsUser::for_postgres().unwrap() {
        cmd.uid(user.uid).gid(user.gid);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (up to 120 s) until the agent reports WAL uploaded up to the segment boundary after
/// `switch` (the end LSN of `pg_switch_wal()`, `X/X`).
fn wait_switch_uploaded(rig: &Rig, agent: &pgagent_tests::AgentProcess, switch: &str) {
    let switch = lsn(switch);
    let boundary = SegNo(switch.segment_number(seg()).0 + 1).start_lsn(seg());
    rig.wait_uploaded(agent, boundary, Duration::from_secs(120));
}

/// Copies the base backup into a fresh cluster directory, configures recovery with
/// `restore_command` and `extra` settings, starts it and waits until it has promoted at the
/// end of the WAL. Returns the server and its log.
fn recover(base: &Path, restore_command: &str, extra: &[&str]) -> (PgServer, String) {
    let mut pg = PgServer::without_cluster(PgOptions::default()).unwrap();
    let cp = Command::new("cp")
        .arg("-a")
        .arg(base)
        .arg(pg.data_dir())
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::write(pg.data_dir().join("recovery.signal"), "").unwrap();
    let mut lines = vec![restore_command];
    lines.extend_from_slice(extra);
    pg.append_conf(&lines).unwrap();
    pg.start_server().unwrap();
    let promoted = wait_until(Duration::from_secs(120), Duration::from_millis(200), || {
        pg.psql("SELECT pg_is_in_recovery()")
            .is_ok_and(|s| s.trim() == "f")
    });
    assert!(
        promoted,
        "recovery with {extra:?} did not finish\n{}",
        pg.log_tail()
    );
    let log = std::fs::read_to_string(pg.log_file()).unwrap();
    assert!(
        log.contains("restored log file \"") && log.contains("from archive"),
        "{extra:?}: no segment came through restore_command\n{log}"
    );
    (pg, log)
}

fn timeline(pg: &PgServer) -> String {
    pg.psql("SELECT timeline_id FROM pg_control_checkpoint()")
        .unwrap()
}

/// Timeline 1 ends with `pg_switch_wal()`: timeline 2 begins on a segment boundary.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_follows_a_promotion_on_a_segment_boundary() {
    promote_and_recover_past_the_switch(false).await;
}

/// Timeline 1 ends inside a segment stored only as `.partial`: the standby's first segment
/// on timeline 2 starts with a copy of timeline 1's records, and recovery past the switch
/// reads that segment from the new timeline.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_follows_a_promotion_inside_a_segment() {
    promote_and_recover_past_the_switch(true).await;
}

/// The scenario of both tests; `mid_segment` chooses where timeline 1 ends in the store.
async fn promote_and_recover_past_the_switch(mid_segment: bool) {
    let garage = Garage::start().expect("start Garage");

    // 1. Primary P on timeline 1, streamed into the store; base backup B; load 1.
    let rig1 = Rig::s3(garage.store_url("tl"), garage.s3_env());
    let mut primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent1 = rig1.spawn(&primary);
    let first = lsn(&primary.current_wal_lsn().unwrap());
    rig1.wait_uploaded(&agent1, first, Duration::from_secs(60));

    let base = PgServer::without_cluster(PgOptions::default()).unwrap();
    base_backup(&primary, &base.data_dir());

    primary
        .psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    load(&primary, "one", 2000);
    let state_1 = state(&primary);
    if mid_segment {
        let end = lsn(&primary.current_wal_lsn().unwrap());
        rig1.wait_uploaded(&agent1, end, Duration::from_secs(60));
    } else {
        let switch = primary.switch_wal().unwrap();
        wait_switch_uploaded(&rig1, &agent1, &switch);
    }
    assert!(agent1.terminate().success(), "{}", agent1.output_text());
    primary.stop().unwrap();
    drop(primary);

    // PostgreSQL runs restore_command as its own OS user with the server's environment: the
    // settings, S3 credentials included, come from a file that user can read.
    let conf_dir = tempfile::tempdir().unwrap();
    let chmod = Command::new("chmod")
        .arg("a+rX")
        .arg(conf_dir.path())
        .status()
        .unwrap();
    assert!(chmod.success());
    let config = conf_dir.path().join("fetch.toml");
    let env = garage.s3_env();
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\n\
             [fetch]\ntimeout = \"30s\"\n",
            garage.store_url("tl"),
            get("AWS_ACCESS_KEY_ID"),
            get("AWS_SECRET_ACCESS_KEY"),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let bin: PathBuf = pgagent_tests::pgagent_bin().canonicalize().unwrap();
    let restore_command = format!(
        "restore_command = '{} --config {} fetch %f %p'",
        bin.display(),
        config.display()
    );

    // 2. Standby S restored from the bucket, promoted at the end of the WAL: timeline 2.
    let (standby, log) = recover(&base.data_dir(), &restore_command, &[]);
    assert!(
        log.contains("selected new timeline ID: 2"),
        "the standby did not switch to timeline 2\n{log}"
    );
    assert_eq!(state(&standby), state_1, "{}", standby.log_tail());
    let promoted = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        timeline(&standby).trim() == "2"
    });
    assert!(
        promoted,
        "checkpoint timeline {}\n{}",
        timeline(&standby),
        standby.log_tail()
    );

    // 3. A second agent streams S into the same prefix; load 2 on timeline 2.
    let rig2 = Rig::s3(garage.store_url("tl"), garage.s3_env());
    let mut agent2 = rig2.spawn(&standby);
    load(&standby, "two", 2000);
    standby
        .psql("UPDATE t SET v = v || 'u' WHERE id % 7 = 0")
        .unwrap();
    let state_2 = state(&standby);
    assert_ne!(state_1, state_2);
    let switch = standby.switch_wal().unwrap();
    wait_switch_uploaded(&rig2, &agent2, &switch);
    assert!(
        rig2.status().is_some_and(|s| s["timeline"] == 2),
        "status {:?}\n{}",
        rig2.status(),
        agent2.output_text()
    );
    let keys: Vec<String> = rig2
        .store()
        .await
        .list("wal/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert!(
        keys.iter().any(|k| k == "wal/00000002.history"),
        "no history file in the store: {keys:?}\n{}",
        agent2.output_text()
    );
    assert!(agent2.terminate().success(), "{}", agent2.output_text());
    drop(standby);

    // 4. Another copy of B follows the switch through the history file: state 2.
    let (latest, log) = recover(
        &base.data_dir(),
        &restore_command,
        &["recovery_target_timeline = 'latest'"],
    );
    assert!(
        log.contains("restored log file \"00000002.history\" from archive"),
        "the history file did not come through restore_command\n{log}"
    );
    assert_eq!(
        state(&latest),
        state_2,
        "recovery to the latest timeline holds other data\n{}",
        latest.log_tail()
    );
    drop(latest);

    // 5. Pinned to timeline 1, recovery does not follow the switch: state 1.
    let (pinned, log) = recover(
        &base.data_dir(),
        &restore_command,
        &["recovery_target_timeline = '1'"],
    );
    assert_eq!(
        state(&pinned),
        state_1,
        "recovery on timeline 1 holds other data\n{log}"
    );
}
