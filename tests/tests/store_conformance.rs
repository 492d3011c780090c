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

/// A `CountedStore` on the S3 backend counts HTTP requests as the provider bills them: each
/// list page, each request of a multipart upload, the HEAD behind an empty range read, each
/// attempt of the SDK's own retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_request_is_counted_on_s3() {
    use std::sync::Arc;

    use bytes::Bytes;
    use pgagent_storage::{CountedStore, RequestCounts, RequestOp, RequestTotals};
    use pgagent_tests::{Proxy, ProxyMode};

    let garage = Garage::start().expect("start Garage");
    let proxy = Proxy::start(garage.s3_addr());
    let opts = StoreOptions {
        part_size: pgagent_storage::config::MIN_PART_SIZE,
        access_key_id: Some(garage.access_key_id().to_string()),
        secret_access_key: Some(garage.secret_access_key().to_string()),
        ..StoreOptions::default()
    };
    let url = garage.store_url_via("counted", &proxy.http_endpoint());
    let backend = pgagent_storage::open(&url, &opts).await.unwrap();
    let counts = Arc::new(RequestCounts::new());
    let store = CountedStore::wrap(backend, counts.clone());
    let expect = |put, get, list, delete, head| {
        RequestTotals::from_fn(|op| match op {
            RequestOp::Put => put,
            RequestOp::Get => get,
            RequestOp::List => list,
            RequestOp::Delete => delete,
            RequestOp::Head => head,
        })
    };

    // 1,001 small objects: one PUT each; listing them takes two pages.
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..1001 {
        let store = store.clone();
        puts.spawn(async move {
            let key = format!("many/{i:04}");
            store.put(&key, Bytes::from_static(b"x")).await
        });
        if puts.len() >= 16 {
            puts.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(put) = puts.join_next().await {
        put.unwrap().unwrap();
    }
    assert_eq!(store.list("many/").await.unwrap().len(), 1001);
    assert_eq!(counts.totals(), expect(1001, 0, 2, 0, 0));

    // 11 MiB in 5 MiB parts: create, three parts, complete.
    let big = Bytes::from(vec![7u8; 11 << 20]);
    store.put("big", big).await.unwrap();
    assert_eq!(counts.get(RequestOp::Put), 1001 + 5);

    // A bounded listing is one page; an empty range read is a HEAD; a miss is still a request.
    assert_eq!(
        store
            .list_after("many/", "many/0990", 5)
            .await
            .unwrap()
            .len(),
        5
    );
    assert!(store.get_range("big", 0, 0).await.unwrap().is_empty());
    assert!(store.head("absent").await.unwrap().is_none());
    assert_eq!(store.get_range("big", 0, 4).await.unwrap().len(), 4);
    store.delete("big").await.unwrap();
    assert_eq!(counts.totals(), expect(1006, 1, 3, 1, 2));

    // The bucket looks down: the SDK's three attempts are three requests.
    proxy.set_mode(ProxyMode::Refuse);
    let e = store.get("many/0001").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(counts.totals(), expect(1006, 4, 3, 1, 2));
}
