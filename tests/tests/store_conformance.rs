//! The `ObjectStore` conformance suite on the S3 backend against a real Garage and a real
//! moto over HTTP (the `fs` backend runs it in `storage/tests/fs_conformance.rs`): on moto
//! once in a plain bucket, once in an Object Lock bucket with every object locked.

use std::time::{Duration, SystemTime};

use pgagent_storage::conformance::{self, SuiteOptions};
use pgagent_storage::{LockMode, LockPolicy, StoreOptions};
use pgagent_tests::{Garage, Moto, Protection};

/// The whole suite with 1,100 keys to list: listing must paginate (S3 pages hold 1,000).
async fn run_paginating(store: std::sync::Arc<dyn pgagent_storage::ObjectStore>) {
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
    run_paginating(store).await;
}

/// moto honours `If-None-Match: *` (single and multipart), so the store is told to trust it:
/// the suite then checks that a conditional put never overwrites.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_conforms_on_moto() {
    let moto = Moto::start().expect("start moto");
    moto.create_bucket("plain", Protection::Plain)
        .await
        .unwrap();
    let opts = StoreOptions {
        part_size: 8 << 20,
        upload_concurrency: 4,
        ..moto.store_options()
    };
    let url = format!(
        "{}&conditional_put=true",
        moto.store_url("plain", "conformance")
    );
    let store = pgagent_storage::open(&url, &opts).await.unwrap();
    assert!(store.enforces_conditional_put());
    run_paginating(store).await;
}

/// Under a compliance lock every write carries its lock (and Content-MD5, without which
/// S3 refuses it), every delete leaves a delete marker above a version nobody can remove,
/// and the store still keeps every contract of the suite. Seen from outside afterwards:
/// each object version the suite wrote is locked in compliance mode for a day, none can
/// be deleted, and the delete markers can. (moto 5.2 drops the lock headers of a multipart
/// upload, so the suite's one large object shows no lock there; `store_lock.rs` checks
/// what a multipart upload sends.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_conforms_on_moto_under_object_lock() {
    let moto = Moto::start().expect("start moto");
    let bucket = "locked";
    moto.create_bucket(bucket, Protection::ObjectLock { default: None })
        .await
        .unwrap();
    let part_size = 8 << 20;
    let opts = StoreOptions {
        part_size,
        upload_concurrency: 4,
        lock: Some(LockPolicy {
            mode: LockMode::Compliance,
            days: 1,
        }),
        ..moto.store_options()
    };
    let url = format!(
        "{}&conditional_put=true",
        moto.store_url(bucket, "conformance")
    );
    let store = pgagent_storage::open(&url, &opts).await.unwrap();
    let started = SystemTime::now();
    conformance::run_all(store).await;
    let ended = SystemTime::now();

    let versions = moto.versions(bucket, "conformance/").await.unwrap();
    let (multipart, locked): (Vec<_>, Vec<_>) = versions
        .iter()
        .filter(|v| !v.delete_marker)
        .partition(|v| v.size > part_size);
    let markers = versions.iter().filter(|v| v.delete_marker).count();
    assert!(locked.len() > 20, "{versions:#?}");
    assert!(!multipart.is_empty(), "the suite writes a large object");
    assert!(
        markers >= locked.len() / 2,
        "the suite deletes what it wrote"
    );
    let day = Duration::from_secs(86_400);
    for v in &locked {
        assert_eq!(v.lock_mode, Some(LockMode::Compliance), "{v:?}");
        let until = v.retain_until.expect("a retain-until date");
        assert!(
            until >= started + day && until <= ended + day + Duration::from_secs(1),
            "{v:?}"
        );
    }
    let refused = moto
        .delete_every_version(bucket, "conformance/", true)
        .await
        .unwrap();
    assert_eq!(
        refused,
        locked.len(),
        "only delete markers and unlocked versions go"
    );
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
