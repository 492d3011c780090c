//! The S3 backend's Object Lock, seen from outside the store on a real moto: what a store
//! with a lock policy writes is locked as the policy says, a lock is lengthened and never
//! shortened, and a store read as of a past time finds what was current then, past an
//! overwrite and a delete marker, and takes no writes.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pgagent_storage::config::MIN_PART_SIZE;
use pgagent_storage::{LockMode, LockPolicy, ObjectStore, PutOutcome, StoreOptions};
use pgagent_tests::moto::ObjectVersion;
use pgagent_tests::{Moto, Protection, Proxy};

const DAY: Duration = Duration::from_secs(86_400);

fn policy(mode: LockMode, days: u32) -> Option<LockPolicy> {
    Some(LockPolicy { mode, days })
}

async fn open(url: &str, opts: StoreOptions) -> std::sync::Arc<dyn ObjectStore> {
    pgagent_storage::open(url, &opts)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// The versions of objects (not delete markers) under `prefix`.
async fn objects(moto: &Moto, bucket: &str, prefix: &str) -> Vec<ObjectVersion> {
    let mut v = moto.versions(bucket, prefix).await.unwrap();
    v.retain(|v| !v.delete_marker);
    v
}

/// Whether `until` is `days` after a write made between `before` and `after`, in whole
/// seconds rounded up.
fn locked_for(until: SystemTime, days: u32, before: SystemTime, after: SystemTime) -> bool {
    let period = DAY * days;
    until >= before + period && until <= after + period + Duration::from_secs(1)
}

/// Every write of a store with a lock policy, plain or conditional, in either mode, carries
/// the policy's mode and a retain-until of the write time + `days`; `retention` reads the
/// same lock back; a store without a policy writes unlocked objects into the same bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_under_a_lock_policy_carries_mode_and_retain_until() {
    let moto = Moto::start().expect("start moto");
    let bucket = "locked";
    moto.create_bucket(bucket, Protection::ObjectLock { default: None })
        .await
        .unwrap();
    for (prefix, mode, days) in [
        ("gov", LockMode::Governance, 1),
        ("comp", LockMode::Compliance, 3),
    ] {
        let store = open(
            &moto.store_url(bucket, prefix),
            StoreOptions {
                lock: policy(mode, days),
                ..moto.store_options()
            },
        )
        .await;
        let before = SystemTime::now();
        store.put("a", Bytes::from_static(b"a")).await.unwrap();
        let created = store
            .put_if_absent("b", Bytes::from_static(b"b"))
            .await
            .unwrap();
        assert_eq!(created, PutOutcome::Created);
        let after = SystemTime::now();
        let found = objects(&moto, bucket, &format!("{prefix}/")).await;
        assert_eq!(found.len(), 2, "{found:#?}");
        for v in &found {
            assert_eq!(v.lock_mode, Some(mode), "{v:?}");
            let until = v.retain_until.expect("a retain-until date");
            assert!(locked_for(until, days, before, after), "{v:?}");
            let key = v.key.strip_prefix(&format!("{prefix}/")).unwrap();
            let r = store.retention(key).await.unwrap().expect("a retention");
            assert_eq!((r.mode, r.until), (mode, until), "{key}");
        }
    }
    let plain = open(&moto.store_url(bucket, "plain"), moto.store_options()).await;
    plain.put("a", Bytes::from_static(b"a")).await.unwrap();
    assert_eq!(plain.retention("a").await.unwrap(), None);
    let found = objects(&moto, bucket, "plain/").await;
    assert_eq!((found[0].lock_mode, found[0].retain_until), (None, None));
}

/// A body above the part size goes up as a multipart upload whose create request carries
/// the lock headers and whose every part carries Content-MD5 (counted on the wire: moto
/// 5.2 drops the lock headers of CreateMultipartUpload, so the completed object cannot
/// show them). The body reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_under_a_lock_policy_sends_its_lock_and_every_part_its_md5() {
    let moto = Moto::start().expect("start moto");
    let bucket = "locked";
    moto.create_bucket(bucket, Protection::ObjectLock { default: None })
        .await
        .unwrap();
    let proxy = Proxy::start(
        moto.endpoint()
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
    );
    let url = moto
        .store_url(bucket, "big")
        .replace(&moto.endpoint(), &proxy.http_endpoint());
    let store = open(
        &url,
        StoreOptions {
            part_size: MIN_PART_SIZE,
            upload_concurrency: 2,
            lock: policy(LockMode::Compliance, 2),
            ..moto.store_options()
        },
    )
    .await;
    let body: Bytes = (0..(2 * MIN_PART_SIZE + 1000) as usize)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    proxy.record_sent();
    store.put("chunk", body.clone()).await.unwrap();
    assert_eq!(
        proxy.sent_count(b"?uploads"),
        1,
        "one CreateMultipartUpload"
    );
    assert_eq!(
        proxy.sent_count(b"x-amz-object-lock-mode: COMPLIANCE\r\n"),
        1
    );
    assert_eq!(
        proxy.sent_count(b"x-amz-object-lock-retain-until-date: "),
        1
    );
    assert_eq!(proxy.sent_count(b"content-md5: "), 3, "each of three parts");
    assert_eq!(store.get("chunk").await.unwrap(), body);
    let found = objects(&moto, bucket, "big/").await;
    assert_eq!(found.len(), 1);
    if let Some(mode) = found[0].lock_mode {
        assert_eq!(mode, LockMode::Compliance, "{:?}", found[0]);
    }
}

/// `extend_retention` lengthens a lock to the date asked, rounded up to a second, and
/// leaves a longer lock alone, in both modes (moto itself would shorten a compliance lock
/// if asked, so the store must never ask); on a bucket with a default retention too, where
/// S3 wants a checksum on PutObjectRetention. A store without a policy refuses to extend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_retention_lengthens_a_lock_and_never_shortens_it() {
    let moto = Moto::start().expect("start moto");
    moto.create_bucket("locked", Protection::ObjectLock { default: None })
        .await
        .unwrap();
    moto.create_bucket(
        "defaulted",
        Protection::ObjectLock {
            default: Some((LockMode::Governance, 1)),
        },
    )
    .await
    .unwrap();
    for (bucket, mode) in [
        ("locked", LockMode::Governance),
        ("locked", LockMode::Compliance),
        ("defaulted", LockMode::Governance),
    ] {
        let prefix = mode.to_string();
        let store = open(
            &moto.store_url(bucket, &prefix),
            StoreOptions {
                lock: policy(mode, 1),
                ..moto.store_options()
            },
        )
        .await;
        store.put("k", Bytes::from_static(b"k")).await.unwrap();
        let first = store.retention("k").await.unwrap().unwrap().until;

        let longer = SystemTime::now() + 3 * DAY + Duration::from_millis(300);
        store.extend_retention("k", longer).await.unwrap();
        let r = store.retention("k").await.unwrap().unwrap();
        assert_eq!(r.mode, mode);
        assert_eq!(r.until, pgagent_storage::lock::round_up_to_second(longer));
        let outside = objects(&moto, bucket, &format!("{prefix}/")).await;
        assert_eq!(outside[0].retain_until, Some(r.until), "{bucket} {mode}");

        for shorter in [first, SystemTime::now() + 2 * DAY] {
            store.extend_retention("k", shorter).await.unwrap();
            let now = store.retention("k").await.unwrap().unwrap();
            assert_eq!(now.until, r.until, "{bucket} {mode}: shortened");
        }
    }
    let unlocked = open(&moto.store_url("locked", "none"), moto.store_options()).await;
    unlocked.put("k", Bytes::from_static(b"k")).await.unwrap();
    let e = unlocked
        .extend_retention("k", SystemTime::now() + DAY)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("store.lock"), "{e}");
}

/// An attacker with the writer's credentials overwrites one object and deletes another
/// (plain PUT and DELETE, which an Object Lock bucket allows: they add a version and a
/// delete marker above the locked ones). A store read as of a time before the attack gets
/// the old content, heads and lists both objects as they were, does not see an object
/// written after that time, and refuses every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_as_of_reads_past_an_overwrite_and_a_delete_marker_and_takes_no_writes() {
    let moto = Moto::start().expect("start moto");
    let bucket = "locked";
    moto.create_bucket(bucket, Protection::ObjectLock { default: None })
        .await
        .unwrap();
    let url = moto.store_url(bucket, "db");
    let writer = open(
        &url,
        StoreOptions {
            lock: policy(LockMode::Compliance, 1),
            ..moto.store_options()
        },
    )
    .await;
    writer
        .put("wal/1", Bytes::from_static(b"one"))
        .await
        .unwrap();
    writer
        .put("wal/2", Bytes::from_static(b"two"))
        .await
        .unwrap();
    // LastModified has whole seconds: the time read as of is a clear second after the
    // writes, and the attack a clear second after it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_attack = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let attacker = open(&url, moto.store_options()).await;
    attacker
        .put("wal/1", Bytes::from_static(b"ransom"))
        .await
        .unwrap();
    attacker.delete("wal/2").await.unwrap();
    attacker
        .put("wal/3", Bytes::from_static(b"new"))
        .await
        .unwrap();
    assert_eq!(writer.get("wal/1").await.unwrap(), "ransom");
    assert!(writer.head("wal/2").await.unwrap().is_none());

    let past = open(
        &url,
        StoreOptions {
            as_of: Some(before_attack),
            ..moto.store_options()
        },
    )
    .await;
    assert_eq!(past.get("wal/1").await.unwrap(), "one");
    assert_eq!(past.get("wal/2").await.unwrap(), "two");
    assert_eq!(past.get_range("wal/2", 1, 5).await.unwrap(), "wo");
    assert_eq!(past.head("wal/1").await.unwrap().unwrap().size, 3);
    assert!(past.get("wal/3").await.unwrap_err().is_not_found());
    assert!(past.head("wal/3").await.unwrap().is_none());
    let keys: Vec<String> = past
        .list("wal/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, ["wal/1", "wal/2"]);
    let after: Vec<String> = past
        .list_after("wal/", "wal/1", 5)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(after, ["wal/2"]);
    let r = past.retention("wal/1").await.unwrap().expect("locked");
    assert_eq!(r.mode, LockMode::Compliance);

    let body = Bytes::from_static(b"x");
    for refused in [
        past.put("wal/4", body.clone()).await,
        past.put_if_absent("wal/4", body).await.map(drop),
        past.delete("wal/1").await,
        past.extend_retention("wal/1", SystemTime::now() + DAY)
            .await,
    ] {
        let e = refused.unwrap_err();
        assert!(e.to_string().contains("takes no writes"), "{e}");
    }
    // Nothing was written by the past store: the attacker's state is what the bucket shows.
    assert_eq!(objects(&moto, bucket, "db/wal/4").await.len(), 0);
}
