//! Point-in-time recovery from an S3 store written by `pgagent run`: a `pg_basebackup -X none`
//! copy recovers through `restore_command = 'pgagent fetch %f %p'` to a restore point, a
//! transaction id, an LSN, a time and the end of the WAL, and each time holds exactly what the
//! primary had at that point (PostgreSQL docs, "Recovery Target" settings, section 20.5.5).

mod common;

use std::time::{Duration, Instant};

use common::recovery::*;
use common::*;
use pgagent_tests::{Garage, PgOptions, PgServer};

#[tokio::test(flavor = "multi_thread")]
async fn recovery_to_each_target_through_restore_command() {
    let started = Instant::now();
    let garage = Garage::start().expect("start Garage");
    let rig = Rig::s3(garage.store_url("pitr"), garage.s3_env());
    let mut primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent = rig.spawn_caught_up(&primary);

    let base = base_backup_copy(&primary);

    // A: everything committed before the restore point.
    create_table_t(&primary);
    load(&primary, "a", 1000);
    primary
        .psql("SELECT pg_create_restore_point('rp1')")
        .unwrap();
    let state_a = state(&primary);

    // B: up to and including the commit of transaction X.
    load(&primary, "b", 1000);
    let xid = primary
        .psql("INSERT INTO t SELECT max(id) + 1, 'x' FROM t RETURNING txid_current()")
        .unwrap();
    let xid: u64 = xid.trim().parse().unwrap();
    let state_b = state(&primary);
    load(&primary, "b2", 500);
    primary
        .psql("UPDATE t SET v = v || 'u' WHERE id % 7 = 0")
        .unwrap();

    // C: every record before the insert position right after a commit; the next write to `t`
    // starts with a heap record, so the record that ends the replay changes nothing visible.
    load(&primary, "c", 1000);
    let target_lsn = primary.psql("SELECT pg_current_wal_insert_lsn()").unwrap();
    let state_c = state(&primary);

    // D: every commit up to T; the next change to `t` commits more than a second later.
    load(&primary, "d", 1000);
    primary.psql("DELETE FROM t WHERE id % 5 = 0").unwrap();
    let state_d = state(&primary);
    primary.psql("SELECT pg_sleep(1.1)").unwrap();
    let target_time = primary.psql("SELECT clock_timestamp()").unwrap();
    primary.psql("SELECT pg_sleep(1.1)").unwrap();

    // E: the end of the WAL.
    load(&primary, "e", 1000);
    primary
        .psql("UPDATE t SET v = v || 'e' WHERE id % 3 = 0")
        .unwrap();
    let state_e = state(&primary);

    let states = [&state_a, &state_b, &state_c, &state_d, &state_e];
    for (i, a) in states.iter().enumerate() {
        for b in &states[i + 1..] {
            assert_ne!(a, b, "two capture points hold the same data: {states:?}");
        }
    }

    let switch = lsn(&primary.switch_wal().unwrap());
    let boundary = switch.segment_number(seg()).end_lsn(seg());
    rig.wait_uploaded(&agent, boundary, Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    primary.stop().unwrap();
    let loaded = started.elapsed();

    let fetch = fetch_config(&rig.store_url, &garage.s3_env());
    let restore_command = fetch.restore_command.clone();

    let cases = [
        (
            Some("recovery_target_name = 'rp1'".to_owned()),
            &state_a,
            "recovery stopping at restore point \"rp1\"".to_owned(),
        ),
        (
            Some(format!("recovery_target_xid = '{xid}'")),
            &state_b,
            format!("recovery stopping after commit of transaction {xid},"),
        ),
        (
            Some(format!("recovery_target_lsn = '{target_lsn}'")),
            &state_c,
            "recovery stopping after WAL location (LSN)".to_owned(),
        ),
        (
            Some(format!("recovery_target_time = '{target_time}'")),
            &state_d,
            "recovery stopping before commit of transaction".to_owned(),
        ),
        (None, &state_e, String::new()),
    ];
    for (target, expected, stop_message) in cases {
        let mut extra = vec!["recovery_target_action = 'promote'"];
        extra.extend(target.as_deref());
        let (pg, log) = recover(&base.data_dir(), &restore_command, &extra);
        assert_eq!(
            &state(&pg),
            expected,
            "recovery to {target:?} holds other data\n{}",
            pg.log_tail()
        );
        if target.is_some() {
            assert!(
                log.contains(&stop_message),
                "{stop_message:?} not in\n{log}"
            );
        } else {
            assert!(!log.contains("recovery stopping"), "{log}");
        }
    }
    eprintln!(
        "load and upload {loaded:?}, five recoveries {:?}",
        started.elapsed() - loaded
    );
}
