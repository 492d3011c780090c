//! Backups and recovery through the CloudNativePG plugin, against a real PostgreSQL and S3
//! server: `Backup` on the instance sidecar takes a pgagent base backup and returns what
//! CNPG records; the recovery job's `RestoreJobHooks.Restore` rebuilds PGDATA from the
//! bucket alone to a recovery target (a restore point) and answers CNPG's recovery settings;
//! the restored server replays through `WAL.Restore` (the stand-in as `restore_command`)
//! and holds exactly the data of that point. A recovery into a store holding another
//! system is refused before anything is written.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::cnpg::*;
use common::recovery::{create_table_t, load, state, wait_promoted};
use pgagent_cnpgi::backup::backup_client::BackupClient;
use pgagent_cnpgi::backup::BackupRequest;
use pgagent_cnpgi::wal::restore_job_hooks_client::RestoreJobHooksClient;
use pgagent_cnpgi::wal::RestoreRequest;
use pgagent_tests::cnpg::unix_channel;
use pgagent_tests::{wait_until, Garage, PgOptions, PgServer};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_and_a_recovery_to_a_restore_point_through_the_plugin() {
    let garage = Garage::start().expect("start Garage");
    let s3 = garage.s3_env();
    let source_url = garage.store_url("cnpg-source");
    let pod = common::cnpg::pod("pg-1", "pg-1");
    let pg = PgServer::start(PgOptions {
        extra_conf: vec!["archive_mode = on".into(), pod.archive_command()],
        ..Default::default()
    })
    .expect("start PostgreSQL");
    let mut sidecar = pod.start("instance", &pod.env(&pg, &source_url, &s3));
    pod.scrape().await;
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            slot_active(&pg)
        }),
        "no stream: {}",
        sidecar.output_text()
    );
    create_table_t(&pg);
    load(&pg, "before-backup", 200);

    // A Backup, as a CNPG Backup object with method: plugin asks it.
    let backup = BackupClient::new(unix_channel(&pod.socket()))
        .backup(BackupRequest {
            cluster_definition: pod.cluster(),
            backup_definition: br#"{"kind":"Backup","metadata":{"name":"nightly"}}"#.to_vec(),
            parameters: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("Backup: {e}\n{}", sidecar.output_text()))
        .into_inner();
    assert_eq!(backup.backup_name, "nightly");
    assert_eq!(backup.instance_id, "pg-1");
    assert!(backup.online);
    assert!(
        backup.started_at > 0 && backup.stopped_at >= backup.started_at,
        "{backup:?}"
    );
    assert_eq!(backup.begin_wal.len(), 24, "{backup:?}");
    assert_eq!(backup.end_wal.len(), 24, "{backup:?}");
    assert!(backup.begin_wal <= backup.end_wal, "{backup:?}");
    let label = String::from_utf8(backup.backup_label_file.clone()).unwrap();
    assert!(
        label.contains(&format!("(file {})", backup.begin_wal)),
        "{label}"
    );
    let store = common::open_store(&source_url, &s3).await;
    let manifest = format!("backups/{}/manifest.json", backup.backup_id);
    assert!(
        store.head(&manifest).await.unwrap().is_some(),
        "{manifest} not in the bucket"
    );

    load(&pg, "at-the-point", 100);
    pg.psql("SELECT pg_create_restore_point('before-mistake')")
        .unwrap();
    let at_point = state(&pg);
    load(&pg, "after-the-point", 100);
    let switched = common::lsn(&pg.psql("SELECT pg_switch_wal()").unwrap());
    let archived = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        let (_, _, last) = archiver(&pg);
        !last.is_empty()
            && common::lsn(
                &pg.psql(&format!("SELECT '{}'::pg_lsn", lsn_of_segment_end(&last)))
                    .unwrap(),
            ) >= switched
    });
    assert!(
        archived,
        "not archived past {switched}: {:?}",
        archiver(&pg)
    );

    // Refused: the recovered cluster's own store holds another system's WAL.
    let other_url = garage.store_url("cnpg-other");
    common::open_store(&other_url, &s3)
        .await
        .put(
            "cluster.json",
            Bytes::from(common::cluster_json("7000000000000000001")),
        )
        .await
        .unwrap();
    let job_pod = common::cnpg::pod("pg-restored-1-full-recovery", "");
    let mut target = PgServer::without_cluster(PgOptions::default()).unwrap();
    let mut job = job_pod.start(
        "restore",
        &job_env(&job_pod, &pg, &target, &source_url, &s3),
    );
    let refused = RestoreJobHooksClient::new(unix_channel(&job_pod.socket()))
        .restore(RestoreRequest {
            cluster_definition: recovery_cluster(
                &source_url,
                &other_url,
                Some(serde_json::json!({"targetName": "before-mistake"})),
            ),
            check_empty_wal_archive: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("7000000000000000001"),
        "{refused:?}"
    );
    assert!(
        !target.data_dir().exists(),
        "a refused restore wrote PGDATA"
    );

    // The recovery job: PGDATA from the bucket alone, to the restore point.
    let own_url = garage.store_url("cnpg-restored");
    let target_point = serde_json::json!({"targetName": "before-mistake"});
    let config = restore_through_hook(
        &job_pod,
        &target,
        recovery_cluster(&source_url, &own_url, Some(target_point)),
    )
    .await;
    assert!(
        config.contains("recovery_target_name = 'before-mistake'\n"),
        "{config}"
    );
    assert!(
        config.contains("recovery_target_action = 'promote'\n"),
        "{config}"
    );
    assert!(
        config.contains(&format!("restore_command = '{CNPG_RESTORE_COMMAND}'")),
        "{config}"
    );
    target.start_server().expect("start the restored server");
    wait_promoted(&target, Duration::from_secs(120));
    assert_eq!(
        state(&target),
        at_point,
        "the restored server is not at the restore point"
    );
    let restores: Vec<_> = job_pod
        .calls()
        .into_iter()
        .filter(|c| c.0 == "restore")
        .collect();
    assert!(restores.iter().any(|c| c.3 == "Ok"), "{restores:?}");
    assert!(
        restores.iter().all(|c| c.3 == "Ok" || c.3 == "NotFound"),
        "{restores:?}"
    );

    assert!(job.terminate().success(), "{}", job.output_text());
    assert!(sidecar.terminate().success(), "{}", sidecar.output_text());
}

/// The LSN just past the end of segment `name` (16 MiB segments).
fn lsn_of_segment_end(name: &str) -> String {
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    let end = (log << 32) + ((seg + 1) << 24);
    format!("{:X}/{:X}", end >> 32, end & 0xFFFF_FFFF)
}
