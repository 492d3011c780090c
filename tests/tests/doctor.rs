//! `pgagent doctor` against a real PostgreSQL and Garage: what passes, and what fails with
//! the fix named. (The staging dataset checks are in `zfs.rs`.)

mod common;

use common::*;
use pgagent_tests::{run_pgagent, Garage, PgOptions, PgServer};

/// Doctor against Garage: all rights and the clock pass with the bucket's owner key; a
/// read-only key and a role without REPLICATION are failures that name the fix.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_missing_rights() {
    let garage = Garage::start().expect("start Garage");
    let rig = Rig::s3(garage.store_url("doctor"), garage.s3_env());
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let env = rig.env(&pg);
    let out = run_pgagent(&["doctor"], &env);
    assert!(out.status.success(), "{}", text(&out));
    for ok in [
        "bucket put",
        "bucket get",
        "bucket list",
        "bucket delete",
        "clock",
        "wal_level",
    ] {
        assert!(
            text(&out).contains(&format!("ok    {ok}: ")),
            "{ok}: {}",
            text(&out)
        );
    }

    let (id, secret) = garage.create_key_without_write(garage.bucket()).unwrap();
    let mut read_only = env.clone();
    read_only.retain(|(k, _)| !k.starts_with("AWS_"));
    read_only.extend([
        ("AWS_ACCESS_KEY_ID", id),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", garage.region().to_string()),
    ]);
    let out = run_pgagent(&["doctor"], &read_only);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("FAIL  bucket put"), "{}", text(&out));
    assert!(text(&out).contains("PutObject"), "{}", text(&out));

    let mut norepl = env.clone();
    norepl.retain(|(k, _)| *k != "PGAGENT_POSTGRES_CONNINFO");
    norepl.push(("PGAGENT_POSTGRES_CONNINFO", pg.conninfo("norepl")));
    let out = run_pgagent(&["doctor"], &norepl);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("FAIL  postgres"), "{}", text(&out));
    assert!(text(&out).contains("REPLICATION"), "{}", text(&out));
}
