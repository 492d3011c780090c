//! Point-in-time recovery from an incremental backup (PostgreSQL 17): `pgagent restore
//! --backup <incremental>` with each kind of target (restore point, transaction, LSN, time,
//! the end of the WAL) rebuilds the chain and recovers to exactly the state at the target.

mod common;

use std::time::Duration;

use common::recovery::*;
use common::*;
use pgagent_tests::{run_pgagent, PgOptions, PgServer};

#[tokio::test(flavor = "multi_thread")]
async fn each_recovery_target_from_an_incremental_backup() {
    let rig = Rig::fs();
    let mut primary = PgServer::start(PgOptions {
        major: Some(17),
        extra_conf: vec!["summarize_wal = on".into()],
        ..PgOptions::default()
    })
    .expect("start PostgreSQL 17");
    let mut agent = rig.spawn_caught_up(&primary);
    let env = rig.env(&primary);
    create_table_t(&primary);
    load(&primary, "base", 20000);
    let out = run_pgagent(&["backup", "--fast"], &env);
    assert!(out.status.success(), "{}", text(&out));
    primary
        .psql("UPDATE t SET v = v || 'i' WHERE id % 1000 = 0; CHECKPOINT")
        .unwrap();
    let out = run_pgagent(&["backup", "--fast"], &env);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains("not incremental"), "{printed}");
    let inc = printed
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let id = w.next()?;
            (id.len() == 16 && w.next() == Some("complete")).then(|| id.to_string())
        })
        .unwrap_or_else(|| panic!("no backup id in {printed}"));

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
    let end = lsn(&primary.switch_wal().unwrap());
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    primary.stop().unwrap();

    let fetch = fetch_config(&rig.store_url, &[]);
    let cases: [(&[&str], &String); 5] = [
        (&["--target-name", "rp1"], &state_a),
        (&["--target-xid", xid.as_str()], &state_b),
        (&["--target-lsn", target_lsn.as_str()], &state_c),
        (&["--target-time", target_time.as_str()], &state_d),
        (&["--target", "latest"], &state_e),
    ];
    for (target, expected) in cases {
        let mut restored = PgServer::without_cluster(PgOptions {
            major: Some(17),
            ..PgOptions::default()
        })
        .unwrap();
        let mut args = vec!["--backup", inc.as_str()];
        args.extend_from_slice(target);
        let out = run_restore(&fetch.config, &restored.data_dir(), &args);
        assert!(out.status.success(), "{target:?}: {}", text(&out));
        assert!(
            text(&out).contains("incremental, depth 1"),
            "{}",
            text(&out)
        );
        restored.start_server().unwrap();
        wait_promoted(&restored, Duration::from_secs(120));
        assert_eq!(
            &state(&restored),
            expected,
            "{target:?}\n{}",
            restored.log_tail()
        );
        restored.stop().unwrap();
    }
}
