//! Faults under the CloudNativePG plugin, against a real PostgreSQL and S3 server, under a
//! pgbench load: the instance sidecar killed mid-stream (kill -9) and started again, then
//! the bucket unreachable for a while. PostgreSQL keeps every segment whose `WAL.Archive`
//! failed and tries again; the sidecar resumes from staging and the slot. At the end the
//! bucket holds the server's WAL with no gap, byte for byte, and a bucket-only recovery
//! through the restore hook gives exactly the server's data.

mod common;

use std::time::Duration;

use common::cnpg::*;
use common::recovery::wait_promoted;
use pgagent_tests::load::Load;
use pgagent_tests::{Garage, PgOptions, PgServer, Proxy, ProxyMode};

const STATE_SQL: &str = "SELECT (SELECT count(*) FROM pgbench_history) || ':' || \
                         (SELECT sum(abalance) FROM pgbench_accounts)";

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_sidecar_and_a_bucket_outage_lose_nothing() {
    let garage = Garage::start().expect("start Garage");
    let s3 = garage.s3_env();
    let proxy = Proxy::start(garage.s3_addr());
    let url = garage.store_url("cnpg-faults");
    let url_via_proxy = garage.store_url_via("cnpg-faults", &proxy.http_endpoint());
    let pod = common::cnpg::pod("pg-1", "pg-1");
    let pg = PgServer::start(PgOptions {
        extra_conf: vec!["archive_mode = on".into(), pod.archive_command()],
        ..Default::default()
    })
    .expect("start PostgreSQL");
    let env = pod.env(&pg, &url_via_proxy, &s3);
    let mut sidecar = pod.start("instance", &env);
    pod.scrape().await;
    wait("streaming", 30, || slot_active(&pg));
    pg.pgbench_init(1).unwrap();
    let backup = pgagent_cnpgi::backup::backup_client::BackupClient::new(
        pgagent_tests::cnpg::unix_channel(&pod.socket()),
    )
    .backup(pgagent_cnpgi::backup::BackupRequest {
        cluster_definition: pod.cluster(),
        backup_definition: br#"{"metadata":{"name":"base"}}"#.to_vec(),
        parameters: Default::default(),
    })
    .await;
    assert!(backup.is_ok(), "{backup:?}\n{}", sidecar.output_text());

    let load = Load::start(&pg, &["-c", "2", "-R", "150"]).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.psql("SELECT pg_switch_wal()").unwrap();

    // kill -9 mid-stream: archive calls fail while it is away; then it starts again.
    sidecar.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.psql("SELECT pg_switch_wal()").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sidecar = pod.start("instance", &env);
    pod.scrape().await;
    wait("streaming again", 30, || slot_active(&pg));

    // The bucket away for 5 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_mode(ProxyMode::Refuse);
    pg.psql("SELECT pg_switch_wal()").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.set_mode(ProxyMode::Pass);
    tokio::time::sleep(Duration::from_secs(2)).await;

    load.stop(&pg).unwrap();
    let expected = pg.psql(STATE_SQL).unwrap();
    let last = pg.psql("SELECT pg_walfile_name(pg_switch_wal())").unwrap();
    wait("archived to the last segment", 120, || {
        archiver(&pg).2 >= last
    });
    let (_, failed, _) = archiver(&pg);
    assert!(
        failed > 0,
        "no archive call failed: the faults did not happen"
    );

    // From outside: no gap, the server's bytes.
    let store = common::open_store(&url, &s3).await;
    let objects = common::wal_objects(store.as_ref()).await;
    common::assert_no_gap(&objects);
    let compared = common::assert_identical_to_server(&objects, &pg);
    assert!(compared >= 4, "{compared} segments compared");

    // A bucket-only recovery through the restore hook gives the server's data.
    let job_pod = common::cnpg::pod("pg-restored-1-full-recovery", "");
    let mut target = PgServer::without_cluster(PgOptions::default()).unwrap();
    let mut job = job_pod.start("restore", &job_env(&job_pod, &pg, &target, &url, &s3));
    restore_through_hook(
        &job_pod,
        &target,
        recovery_cluster(&url, &garage.store_url("cnpg-faults-restored"), None),
    )
    .await;
    target.start_server().expect("start the restored server");
    wait_promoted(&target, Duration::from_secs(120));
    assert_eq!(
        target.psql(STATE_SQL).unwrap(),
        expected,
        "the restored data differs"
    );

    assert!(job.terminate().success(), "{}", job.output_text());
    assert!(sidecar.terminate().success(), "{}", sidecar.output_text());
}
