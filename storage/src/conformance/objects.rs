//! Conformance cases for the plain object operations.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::pattern;
use crate::error::ErrorKind;
use crate::object_store::{ObjectStore, PutOutcome};

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

/// `put` then `get` returns the same bytes; `head` reports the size.
pub async fn put_get_round_trip(store: &dyn ObjectStore) {
    let d = store.describe();
    let body = Bytes::from(pattern(70_000, 1));
    store.put("a/b/c", body.clone()).await.expect("put");
    let got = store.get("a/b/c").await.expect("get after put");
    assert!(got == body, "{d}: get returned different bytes than put");
    let meta = store
        .head("a/b/c")
        .await
        .expect("head")
        .expect("head after put");
    assert_eq!(meta.key, "a/b/c", "{d}: head key");
    assert_eq!(meta.size, 70_000, "{d}: head size in bytes");
}

/// `put` replaces an existing object.
pub async fn overwrite(store: &dyn ObjectStore) {
    let d = store.describe();
    store.put("k", b(b"first version")).await.expect("put");
    store.put("k", b(b"second")).await.expect("overwrite");
    assert_eq!(
        store.get("k").await.expect("get"),
        b(b"second"),
        "{d}: overwrite"
    );
    assert_eq!(
        store.head("k").await.expect("head").expect("present").size,
        6,
        "{d}"
    );
}

/// A zero-length object exists and reads back empty.
pub async fn empty_object(store: &dyn ObjectStore) {
    let d = store.describe();
    store.put("e", Bytes::new()).await.expect("put empty");
    assert!(store.get("e").await.expect("get empty").is_empty(), "{d}");
    let meta = store
        .head("e")
        .await
        .expect("head")
        .expect("empty object present");
    assert_eq!(meta.size, 0, "{d}: empty object size");
    let r = store
        .get_range("e", 0, 10)
        .await
        .expect("get_range of empty object");
    assert!(r.is_empty(), "{d}: range of an empty object");
}

/// Missing objects: `get`/`get_range` fail with NotFound naming the key, `head` is `None`.
pub async fn get_missing(store: &dyn ObjectStore) {
    let d = store.describe();
    let e = store
        .get("nope/x")
        .await
        .expect_err("get of a missing key must fail");
    assert!(e.is_not_found(), "{d}: get of missing key gave {e}");
    assert!(!e.is_transient(), "{d}: NotFound must not be transient");
    assert_eq!(e.key(), Some("nope/x"), "{d}: error names the key");
    let e = store
        .get_range("nope/x", 0, 10)
        .await
        .expect_err("get_range of missing");
    assert!(e.is_not_found(), "{d}: get_range of missing key gave {e}");
    let e = store
        .get_range("nope/x", 0, 0)
        .await
        .expect_err("empty get_range of missing");
    assert!(
        e.is_not_found(),
        "{d}: empty get_range of missing key gave {e}"
    );
    assert_eq!(
        store.head("nope/x").await.expect("head"),
        None,
        "{d}: head of missing"
    );
    // A "directory" that only exists as a prefix of other keys is not an object.
    store.put("dir/child", b(b"x")).await.expect("put");
    assert!(
        store.get("dir").await.expect_err("get dir").is_not_found(),
        "{d}"
    );
    assert_eq!(store.head("dir").await.expect("head dir"), None, "{d}");
}

/// Keys with characters that need URL encoding or signing care round-trip and list back.
pub async fn special_keys(store: &dyn ObjectStore) {
    let d = store.describe();
    let keys = [
        "sp/a b+c=d%e~f",
        "sp/semi;colon,comma&amp@at",
        "sp/ünïcode-é",
        "sp/000000010000000A000000FF.partial",
    ];
    for (i, k) in keys.iter().enumerate() {
        store
            .put(k, Bytes::from(vec![i as u8; 3]))
            .await
            .expect("put special key");
    }
    for (i, k) in keys.iter().enumerate() {
        let got = store
            .get(k)
            .await
            .unwrap_or_else(|e| panic!("{d}: get {k:?}: {e}"));
        assert_eq!(got.as_ref(), [i as u8; 3], "{d}: {k:?}");
    }
    let listed: Vec<String> = store
        .list("sp/")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    let mut expected: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected, "{d}: special keys listed back");
}

/// Invalid keys are refused before reaching the store.
pub async fn invalid_keys(store: &dyn ObjectStore) {
    let d = store.describe();
    for k in ["", "/abs", "a//b", "a/../b", "a/", "a\0b"] {
        let e = store
            .put(k, b(b"x"))
            .await
            .expect_err("invalid key accepted");
        assert_eq!(e.kind(), ErrorKind::InvalidKey, "{d}: put {k:?} gave {e}");
        let e = store.get(k).await.expect_err("invalid key accepted");
        assert_eq!(e.kind(), ErrorKind::InvalidKey, "{d}: get {k:?} gave {e}");
    }
    let e = store
        .list("a//")
        .await
        .expect_err("invalid prefix accepted");
    assert_eq!(e.kind(), ErrorKind::InvalidKey, "{d}: list gave {e}");
}

/// `put_if_absent`: `Created` on a new key, then `Exists` without changing the object.
///
/// Stores whose [`ObjectStore::enforces_conditional_put`] is `false` may instead overwrite
/// (and report `Created`); then the object must hold the second body, never a mix.
pub async fn put_if_absent(store: &dyn ObjectStore) {
    let d = store.describe();
    let first = store
        .put_if_absent("p", b(b"first"))
        .await
        .expect("put_if_absent new");
    assert_eq!(
        first,
        PutOutcome::Created,
        "{d}: put_if_absent on a new key"
    );
    let second = store
        .put_if_absent("p", b(b"second"))
        .await
        .expect("put_if_absent again");
    let now = store.get("p").await.expect("get");
    match second {
        PutOutcome::Exists => assert_eq!(now, b(b"first"), "{d}: Exists but object changed"),
        PutOutcome::Created if !store.enforces_conditional_put() => {
            tracing::warn!(store = %d, "store ignores If-None-Match: conditional put overwrote");
            assert_eq!(now, b(b"second"), "{d}: overwrite left a mixed object");
        }
        PutOutcome::Created => panic!(
            "{d}: put_if_absent overwrote an existing object although the store claims to \
             enforce conditional puts"
        ),
    }
}

/// `get_range` returns the requested bytes, fewer at the end, none past the end.
pub async fn get_range(store: &dyn ObjectStore) {
    let d = store.describe();
    let body = pattern(100, 7);
    store
        .put("r", Bytes::from(body.clone()))
        .await
        .expect("put");
    let cases: [(u64, u64, &[u8]); 6] = [
        (0, 10, &body[..10]),
        (37, 20, &body[37..57]),
        (95, 10, &body[95..]),
        (0, 1000, &body[..]),
        (100, 10, &[]),
        (150, 10, &[]),
    ];
    for (start, len, want) in cases {
        let got = store
            .get_range("r", start, len)
            .await
            .unwrap_or_else(|e| panic!("{d}: get_range({start}, {len}): {e}"));
        assert_eq!(got.as_ref(), want, "{d}: get_range({start}, {len})");
    }
    let got = store
        .get_range("r", 10, 0)
        .await
        .expect("zero-length range");
    assert!(got.is_empty(), "{d}: zero-length range");
}

/// `delete` removes an object and succeeds on a missing one.
pub async fn delete_idempotent(store: &dyn ObjectStore) {
    let d = store.describe();
    store
        .delete("never-existed")
        .await
        .expect("delete of a missing key must succeed");
    store.put("x/y", b(b"1")).await.expect("put");
    store.delete("x/y").await.expect("delete");
    assert!(
        store
            .get("x/y")
            .await
            .expect_err("get after delete")
            .is_not_found(),
        "{d}"
    );
    assert_eq!(
        store.head("x/y").await.expect("head"),
        None,
        "{d}: head after delete"
    );
    store
        .delete("x/y")
        .await
        .expect("second delete must succeed");
    assert!(
        store.list("x/").await.expect("list").is_empty(),
        "{d}: listed after delete"
    );
}

/// `list` is a plain string-prefix match, complete (paginated) and sorted by key.
pub async fn list_prefixes(store: &dyn ObjectStore, n: usize) {
    let d = store.describe();
    assert!(
        store.list("").await.expect("list empty").is_empty(),
        "{d}: fresh prefix not empty"
    );
    // Written in reverse to catch backends that return insertion order.
    let keys: Vec<String> = (0..n).rev().map(|i| format!("ls/k{i:05}")).collect();
    futures::stream::iter(keys.iter())
        .map(|k| store.put(k, Bytes::from(k.clone().into_bytes())))
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .expect("put for list");
    store.put("ls/other/x", b(b"o")).await.expect("put");
    store.put("lsx/y", b(b"y")).await.expect("put");

    let listed = store.list("ls/k").await.expect("list ls/k");
    let mut want = keys.clone();
    want.sort();
    let got: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(got.len(), n, "{d}: list returned {} of {n} keys", got.len());
    assert!(
        got.iter().eq(want.iter()),
        "{d}: list not sorted or not complete"
    );
    for m in &listed {
        assert_eq!(m.size, m.key.len() as u64, "{d}: size of {}", m.key);
    }
    assert_eq!(
        store.list("ls/").await.expect("list ls/").len(),
        n + 1,
        "{d}: list ls/"
    );
    let all = store.list("ls").await.expect("list ls");
    assert_eq!(
        all.len(),
        n + 2,
        "{d}: 'ls' must also match 'lsx/y' (string prefix)"
    );
    assert_eq!(
        all.last().map(|m| m.key.as_str()),
        Some("lsx/y"),
        "{d}: order"
    );
    assert!(
        store.list("ls/none").await.expect("list").is_empty(),
        "{d}: no match"
    );
    assert!(
        store.list("zz/").await.expect("list").is_empty(),
        "{d}: missing prefix"
    );
}

/// `list_after` returns the first keys after a given one under a prefix, in order, never the
/// key itself nor keys outside the prefix.
pub async fn list_after(store: &dyn ObjectStore) {
    let d = store.describe();
    for k in ["la/c", "la/a", "la/b", "la/b.x", "lax", "la0"] {
        store.put(k, b(b"1")).await.expect("put for list_after");
    }
    let keys =
        |v: Vec<crate::object_store::ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    let after = |prefix: &'static str, after: &'static str, limit: usize| async move {
        keys(
            store
                .list_after(prefix, after, limit)
                .await
                .expect("list_after"),
        )
    };
    assert_eq!(after("la/", "la/a", 1).await, ["la/b"], "{d}: the next key");
    assert_eq!(
        after("la/", "la/a", 10).await,
        ["la/b", "la/b.x", "la/c"],
        "{d}: every later key, in order"
    );
    assert_eq!(
        after("la/", "la/b0", 10).await,
        ["la/c"],
        "{d}: after a missing key"
    );
    assert_eq!(after("la/", "la/", 2).await, ["la/a", "la/b"], "{d}: limit");
    assert!(
        after("la/", "la/c", 10).await.is_empty(),
        "{d}: nothing after the last key"
    );
    assert!(after("la/", "la/b", 0).await.is_empty(), "{d}: limit 0");
    assert_eq!(
        after("la", "la/c", 10).await,
        ["la0", "lax"],
        "{d}: string prefix"
    );
}
