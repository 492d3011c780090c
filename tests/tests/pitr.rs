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

    create_table_t(&primary);
    let PitrPoints {
        state_a,
        xid,
        state_b,
        target_lsn,
        state_c,
        target_time,
        state_d,
        state_e,
    } = pitr_points(&primary);

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
