//! Recovery across a timeline switch, all through `restore_command = 'pgagent fetch %f %p'`
//! against an S3 store: a standby restored from the bucket promotes to timeline 2, a second
//! `pgagent run` streams it into the same prefix, and a later recovery follows the switch
//! through `00000002.history` (PostgreSQL docs, "Timelines", section 26.3.5, and
//! `recovery_target_timeline`, section 20.5.5).

mod common;

use std::time::Duration;

use common::recovery::*;
use common::*;
use pgagent_tests::{wait_until, Garage, PgOptions, PgServer};

/// Waits (up to 120 s) until the agent reports WAL uploaded up to the segment boundary after
/// `switch` (the end LSN of `pg_switch_wal()`, `X/X`).
fn wait_switch_uploaded(rig: &Rig, agent: &pgagent_tests::AgentProcess, switch: &str) {
    let switch = lsn(switch);
    let boundary = switch.segment_number(seg()).end_lsn(seg());
    rig.wait_uploaded(agent, boundary, Duration::from_secs(120));
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
    let mut agent1 = rig1.spawn_caught_up(&primary);

    let base = base_backup_copy(&primary);

    create_table_t(&primary);
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

    let fetch = fetch_config(&garage.store_url("tl"), &garage.s3_env());
    let restore_command = fetch.restore_command.clone();

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

    // 4. Another copy of B follows the switch through the history file: state 2. A fresh
    // fetch server, so that its counts cover this recovery alone.
    let fetch_latest = fetch_config(&garage.store_url("tl"), &garage.s3_env());
    let (latest, log) = recover(
        &base.data_dir(),
        &fetch_latest.restore_command,
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
    // Prefetch followed the history file across the switch: after the first segment, each
    // segment of either timeline was prefetched before it was asked for (a segment asked for
    // again, and the probes past the end, are fetched on demand).
    let summary = fetch_latest.wait_server_summary(Duration::from_secs(30));
    let distinct: std::collections::BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.split("restored log file \"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .filter(|name| !name.ends_with(".history"))
        .collect();
    assert!(
        distinct.iter().any(|n| n.starts_with("00000002")),
        "{distinct:?}"
    );
    assert!(
        summary.hits + 1 >= distinct.len() as u64,
        "{summary:?} for {distinct:?}\n{}\n{log}",
        fetch_latest.server_log()
    );

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
