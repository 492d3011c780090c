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
