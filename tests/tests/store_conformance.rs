//! The `ObjectStore` conformance suite on the S3 backend against a real Garage over HTTP
//! (the `fs` backend runs it in `storage/tests/fs_conformance.rs`).

use pgagent_storage::conformance::{self, SuiteOptions};
use pgagent_storage::StoreOptions;
use pgagent_tests::Garage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_conforms_on_garage() {
    let garage = Garage::start().expect("start Garage");
    let opts = StoreOptions {
        part_size: 8 << 20,
        upload_concurrency: 4,
        access_key_id: Some(garage.access_key_id().to_string()),
        secret_access_key: Some(garage.secret_access_key().to_string()),
        ..StoreOptions::default()
    };
    let store = pgagent_storage::open(&garage.store_url("conformance"), &opts)
        .await
        .expect("open the Garage store");
    assert!(
        !store.enforces_conditional_put(),
        "a custom endpoint is not trusted to honour If-None-Match"
    );
    // 1,100 keys: listing must paginate (S3 pages hold 1,000).
    conformance::run_all_with(
        store,
        &SuiteOptions {
            list_keys: 1100,
            ..SuiteOptions::default()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_write_rights_gets_a_permission_error() {
    let garage = Garage::start().expect("start Garage");
    let (id, secret) = garage.create_key_without_write(garage.bucket()).unwrap();
    let opts = StoreOptions {
        access_key_id: Some(id),
        secret_access_key: Some(secret),
        ..StoreOptions::default()
    };
    let store = pgagent_storage::open(&garage.store_url("ro"), &opts)
        .await
        .unwrap();
    let err = store
        .put("wal/x", bytes::Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(err.is_permission(), "{err}");
    assert!(!err.is_transient(), "{err}");
}
