//! The store conformance suite against a real S3-compatible server.
//!
//! Runs when `PGAGENT_TEST_S3_URL` (e.g.
//! `s3://bucket/prefix?endpoint=http://127.0.0.1:3900&region=garage&path_style=true`),
//! `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` are set; otherwise it says so and passes.
//! `PGAGENT_TEST_S3_LIST_KEYS` overrides the number of keys listed (above 1000 exercises
//! pagination).

use pgagent_storage::conformance::{self, SuiteOptions};
use pgagent_storage::{open, StoreOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_conforms() {
    let vars = (
        std::env::var("PGAGENT_TEST_S3_URL"),
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    );
    let (Ok(url), Ok(key_id), Ok(secret)) = vars else {
        println!(
            "s3 conformance not run: set PGAGENT_TEST_S3_URL, AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY to run it against a server"
        );
        return;
    };
    let opts = StoreOptions {
        part_size: 8 << 20,
        upload_concurrency: 4,
        access_key_id: Some(key_id),
        secret_access_key: Some(secret),
        ..StoreOptions::default()
    };
    let store = open(&url, &opts).await.expect("open s3 store");
    println!("running the conformance suite on {}", store.describe());
    let list_keys = std::env::var("PGAGENT_TEST_S3_LIST_KEYS")
        .ok()
        .map(|v| v.parse().expect("PGAGENT_TEST_S3_LIST_KEYS is a number"))
        .unwrap_or(30);
    conformance::run_all_with(
        store,
        &SuiteOptions {
            list_keys,
            ..SuiteOptions::default()
        },
    )
    .await;
}

/// Errors from a real server map to the documented kinds: a wrong secret is a permission
/// error, a missing bucket is a configuration error (never NotFound, which would end a
/// recovery early), an unreachable endpoint is transient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_are_typed() {
    let (Ok(url), Ok(key_id)) = (
        std::env::var("PGAGENT_TEST_S3_URL"),
        std::env::var("AWS_ACCESS_KEY_ID"),
    ) else {
        println!("s3 error mapping not checked: PGAGENT_TEST_S3_URL is not set");
        return;
    };
    let pgagent_storage::StoreUrl::S3(loc) = pgagent_storage::StoreUrl::parse(&url).unwrap() else {
        panic!("PGAGENT_TEST_S3_URL must be an s3:// URL");
    };

    let wrong_secret = StoreOptions {
        access_key_id: Some(key_id.clone()),
        secret_access_key: Some("0".repeat(64)),
        ..StoreOptions::default()
    };
    let store = open(&url, &wrong_secret).await.expect("open");
    let e = store.get("wal/000000010000000000000001").await.unwrap_err();
    assert!(e.is_permission(), "wrong secret gave {e}");
    println!("wrong secret: {e}");

    let good = StoreOptions {
        access_key_id: Some(key_id),
        secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
        request_timeout: std::time::Duration::from_secs(5),
        ..StoreOptions::default()
    };
    let missing = pgagent_storage::S3Location {
        bucket: format!("{}-does-not-exist", loc.bucket),
        ..loc.clone()
    };
    let store = open(&missing.to_string(), &good).await.expect("open");
    let e = store.get("wal/000000010000000000000001").await.unwrap_err();
    assert!(
        !e.is_not_found() && !e.is_transient(),
        "missing bucket gave {e}"
    );
    println!("missing bucket: {e}");

    let unreachable = pgagent_storage::S3Location {
        endpoint: Some("http://127.0.0.1:9".to_string()),
        ..loc
    };
    let store = open(&unreachable.to_string(), &good).await.expect("open");
    let e = store.head("cluster.json").await.unwrap_err();
    assert!(e.is_transient(), "unreachable endpoint gave {e}");
    println!("unreachable endpoint: {e}");
}
