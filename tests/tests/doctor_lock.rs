//! `pgagent doctor`'s bucket protection checks against a real PostgreSQL and a real moto
//! (versioning, Object Lock, retention) or Garage (neither): which case the store is, what
//! these credentials could destroy, and the findings that name a fix. Each test runs the
//! real binary and reads its report line by line.

mod common;

use common::*;
use pgagent_storage::LockMode;
use pgagent_tests::{run_pgagent, Garage, Moto, PgOptions, PgServer, Protection};

/// Runs `pgagent doctor` on `url` (with `extra` environment); returns (exit code, report).
fn doctor(
    pg: &PgServer,
    url: String,
    s3_env: Vec<(&'static str, String)>,
    extra: &[(&'static str, &str)],
) -> (Option<i32>, String) {
    let rig = Rig::s3(url, s3_env);
    let mut env = rig.env(pg);
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let out = run_pgagent(&["doctor"], &env);
    (out.status.code(), text(&out))
}

/// Asserts that the report has a line starting with `start` (a level tag and a subject,
/// then as much of the message as matters).
#[track_caller]
fn has(report: &str, start: &str) {
    assert!(
        report.lines().any(|l| l.starts_with(start)),
        "no line starting with {start:?} in:\n{report}"
    );
}

/// Whatever doctor wrote under the store's `doctor/` is gone, versions and delete markers
/// included.
async fn no_probe_left(moto: &Moto, bucket: &str) {
    let left = moto.versions(bucket, "db/doctor/").await.unwrap();
    assert!(left.is_empty(), "{left:#?}");
}

/// Without versioning, whoever holds the writer's credentials can overwrite or delete
/// every backup: warned; the bucket answers "never enabled" and "no Object Lock".
#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_without_versioning_is_warned_as_destroyable() {
    let moto = Moto::start().expect("start moto");
    moto.create_bucket("plain", Protection::Plain)
        .await
        .unwrap();
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let (code, report) = doctor(&pg, moto.store_url("plain", "db"), moto.s3_env(), &[]);
    assert_eq!(code, Some(0), "{report}");
    has(&report, "ok    bucket put: ");
    has(&report, "ok    bucket versioning: never enabled");
    has(&report, "ok    object lock: not enabled");
    has(
        &report,
        "ok    bucket rights: put allowed; delete allowed; delete a version \
         (s3:DeleteObjectVersion) not tried: the bucket keeps no versions; bypass governance \
         retention (s3:BypassGovernanceRetention) not tried: the bucket has no Object Lock",
    );
    has(
        &report,
        "warn  protection: no versioning: a writer can overwrite or delete every backup; a \
         writer with these credentials could destroy history; fix: ",
    );
    no_probe_left(&moto, "plain").await;
}

/// With versioning alone, the writer's credentials may delete versions (moto grants every
/// right): warned. Doctor's probes, versions and delete markers alike, are cleaned up.
#[tokio::test(flavor = "multi_thread")]
async fn a_versioned_bucket_without_lock_is_warned_when_versions_can_be_deleted() {
    let moto = Moto::start().expect("start moto");
    moto.create_bucket("versioned", Protection::Versioned)
        .await
        .unwrap();
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let (code, report) = doctor(&pg, moto.store_url("versioned", "db"), moto.s3_env(), &[]);
    assert_eq!(code, Some(0), "{report}");
    has(&report, "ok    bucket versioning: enabled");
    has(&report, "ok    object lock: not enabled");
    has(
        &report,
        "ok    bucket rights: put allowed; delete allowed; delete a version \
         (s3:DeleteObjectVersion) allowed;",
    );
    has(
        &report,
        "warn  protection: versioned, no lock: a writer can delete versions; a writer with \
         these credentials could destroy history (s3:DeleteObjectVersion allowed); fix: ",
    );
    no_probe_left(&moto, "versioned").await;
}

/// An Object Lock bucket with a default retention: with store.lock off, the store's own
/// write (no Content-MD5) is refused, and doctor says why and which settings fix it. The
/// case follows the default retention: in governance mode, with credentials that may bypass
/// it, a warning; in compliance mode, protected.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_lock_bucket_with_a_default_retention_is_a_per_object_lock() {
    let moto = Moto::start().expect("start moto");
    moto.create_bucket(
        "governed",
        Protection::ObjectLock {
            default: Some((LockMode::Governance, 2)),
        },
    )
    .await
    .unwrap();
    moto.create_bucket(
        "complied",
        Protection::ObjectLock {
            default: Some((LockMode::Compliance, 1)),
        },
    )
    .await
    .unwrap();
    let pg = PgServer::start(PgOptions::default()).unwrap();

    let (code, report) = doctor(&pg, moto.store_url("governed", "db"), moto.s3_env(), &[]);
    assert_eq!(code, Some(1), "{report}");
    has(&report, "FAIL  bucket put: ");
    has(&report, "ok    bucket versioning: enabled");
    has(
        &report,
        "warn  object lock: enabled, default retention governance 2 days, but store.lock is \
         off: S3 refuses a write to such a bucket without Content-MD5, which pgagent sends \
         only under store.lock; fix: store.lock = \"governance\" and store.lock_days = 2",
    );
    has(
        &report,
        "ok    bucket rights: put allowed; delete allowed; delete a version \
         (s3:DeleteObjectVersion) allowed; bypass governance retention \
         (s3:BypassGovernanceRetention) allowed",
    );
    has(
        &report,
        "warn  protection: per-object lock (objects locked 2 days in governance), but these \
         credentials may bypass governance retention, so the lock does not hold against this \
         host: a writer with these credentials could destroy history; fix: compliance mode",
    );
    no_probe_left(&moto, "governed").await;

    let (code, report) = doctor(&pg, moto.store_url("complied", "db"), moto.s3_env(), &[]);
    assert_eq!(code, Some(1), "{report}");
    has(
        &report,
        "warn  object lock: enabled, default retention compliance 1 day, but store.lock is off",
    );
    has(
        &report,
        "ok    protection: per-object lock (objects locked 1 day in compliance)",
    );
    no_probe_left(&moto, "complied").await;
}

/// store.lock asks for a lock a bucket without Object Lock cannot give: every write would
/// be refused, so doctor fails and names the fix.
#[tokio::test(flavor = "multi_thread")]
async fn store_lock_on_a_bucket_without_object_lock_fails() {
    let moto = Moto::start().expect("start moto");
    moto.create_bucket("plain", Protection::Plain)
        .await
        .unwrap();
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let (code, report) = doctor(
        &pg,
        moto.store_url("plain", "db"),
        moto.s3_env(),
        &[
            ("PGAGENT_STORE_LOCK", "compliance"),
            ("PGAGENT_STORE_LOCK_DAYS", "1"),
        ],
    );
    assert_eq!(code, Some(1), "{report}");
    has(&report, "FAIL  bucket put: ");
    has(
        &report,
        "FAIL  object lock: not enabled, but store.lock = compliance: the service refuses \
         every write carrying a lock, so nothing would be stored; fix: ",
    );
    has(&report, "warn  protection: no versioning: ");
}

/// store.lock as the bucket's default retention: the store writes, the lock holds, no
/// warning about the lock; the probe doctor's put check wrote stays, locked, and is named.
#[tokio::test(flavor = "multi_thread")]
async fn store_lock_on_an_object_lock_bucket_passes() {
    let moto = Moto::start().expect("start moto");
    moto.create_bucket(
        "complied",
        Protection::ObjectLock {
            default: Some((LockMode::Compliance, 3)),
        },
    )
    .await
    .unwrap();
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let (code, report) = doctor(
        &pg,
        moto.store_url("complied", "db"),
        moto.s3_env(),
        &[
            ("PGAGENT_STORE_LOCK", "compliance"),
            ("PGAGENT_STORE_LOCK_DAYS", "3"),
        ],
    );
    assert_eq!(code, Some(0), "{report}");
    has(&report, "ok    bucket put: ");
    has(
        &report,
        "ok    object lock: enabled, default retention compliance 3 days",
    );
    has(
        &report,
        "ok    protection: per-object lock (objects locked 3 days in compliance)",
    );
    assert!(!report.contains("warn  object lock"), "{report}");
    assert!(
        report.contains("1 probe versions under db/doctor/ stay until their locks end"),
        "{report}"
    );
}

/// Garage has no versioning and answers GetObjectLockConfiguration with NotImplemented:
/// reported as no support from the service, a warning, not a failure.
#[tokio::test(flavor = "multi_thread")]
async fn garage_reports_no_versioning_or_lock_support() {
    let garage = Garage::start().expect("start Garage");
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let (code, report) = doctor(&pg, garage.store_url("db"), garage.s3_env(), &[]);
    assert_eq!(code, Some(0), "{report}");
    has(&report, "ok    bucket versioning: never enabled");
    has(
        &report,
        "ok    object lock: not reported by the service (HTTP 501 NotImplemented",
    );
    has(
        &report,
        "warn  protection: no versioning (the service reports no versioning or lock \
         support): a writer can overwrite or delete every backup",
    );
}

/// A `file://` store: nothing but the host's permissions protects it, said plainly.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_directory_is_named_as_such() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let rig = Rig::fs();
    let out = run_pgagent(&["doctor"], &rig.env(&pg));
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    has(
        &report,
        "ok    protection: a local directory: nothing but the host's permissions protects it",
    );
    assert!(!report.contains("bucket versioning"), "{report}");
}
