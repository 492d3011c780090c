use super::*;
use crate::fs::FsStore;
use crate::layer::{Call, Layer, Layered, Reply};

/// Every call fails as a store that cannot be reached.
#[derive(Debug)]
struct Unreachable;

#[async_trait]
impl Layer for Unreachable {
    async fn around(&self, _: &dyn ObjectStore, call: Call<'_>) -> Result<Reply, StoreError> {
        Err(StoreError::Transient {
            key: call.key().to_string(),
            op: call.op(),
            detail: "connection refused".into(),
            source: None,
        })
    }
}

async fn fs(dir: &tempfile::TempDir, name: &str) -> Arc<dyn ObjectStore> {
    Arc::new(FsStore::open(dir.path().join(name)).await.unwrap())
}

fn set(stores: &[(&str, &Arc<dyn ObjectStore>)]) -> ReadSet {
    ReadSet::new(
        stores
            .iter()
            .map(|(n, s)| (n.to_string(), Arc::clone(s)))
            .collect(),
    )
    .unwrap()
}

const SEG: &str = "wal/000000010000000000000003";

#[tokio::test]
async fn an_object_is_read_from_the_first_store_that_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let (near, far) = (fs(&dir, "near").await, fs(&dir, "far").await);
    far.put(SEG, Bytes::from_static(b"far copy")).await.unwrap();
    let both = set(&[("near", &near), ("far", &far)]);
    assert_eq!(both.get(SEG).await.unwrap(), "far copy");
    near.put(SEG, Bytes::from_static(b"near copy"))
        .await
        .unwrap();
    assert_eq!(both.get(SEG).await.unwrap(), "near copy");
    assert_eq!(both.get_range(SEG, 5, 4).await.unwrap(), "copy");
    assert_eq!(both.head(SEG).await.unwrap().unwrap().size, 9);
    let served = both.served();
    assert_eq!((served[0].objects, served[0].bytes), (2, 13), "{served:?}");
    assert_eq!((served[1].objects, served[1].bytes), (1, 8), "{served:?}");
}

#[tokio::test]
async fn absent_only_when_every_store_says_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let (near, far) = (fs(&dir, "near").await, fs(&dir, "far").await);
    let down: Arc<dyn ObjectStore> = Arc::new(Layered::new(fs(&dir, "down").await, Unreachable));
    let both = set(&[("near", &near), ("far", &far)]);
    assert!(both.get(SEG).await.unwrap_err().is_not_found());
    assert!(both.get_range(SEG, 0, 8).await.unwrap_err().is_not_found());
    assert!(both.head(SEG).await.unwrap().is_none());

    // A store that cannot answer leaves it open, wherever it stands: the answer is its
    // error (to be retried), never "absent".
    for order in [["down", "near"], ["near", "down"]] {
        let pick = |n: &str| if n == "down" { &down } else { &near };
        let s = set(&[(order[0], pick(order[0])), (order[1], pick(order[1]))]);
        let e = s.get(SEG).await.unwrap_err();
        assert!(e.is_transient(), "{order:?}: {e}");
        assert!(s.head(SEG).await.unwrap_err().is_transient(), "{order:?}");
    }
    // ... unless another store has the object.
    near.put(SEG, Bytes::from_static(b"near copy"))
        .await
        .unwrap();
    let s = set(&[("down", &down), ("near", &near)]);
    assert_eq!(s.get(SEG).await.unwrap(), "near copy");
}

#[tokio::test]
async fn a_listing_is_the_union_and_needs_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let (near, far) = (fs(&dir, "near").await, fs(&dir, "far").await);
    for (store, keys) in [(&near, ["wal/a", "wal/c"]), (&far, ["wal/b", "wal/c"])] {
        for k in keys {
            store.put(k, Bytes::from_static(b"x")).await.unwrap();
        }
    }
    let both = set(&[("near", &near), ("far", &far)]);
    let keys = |v: Vec<ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(both.list("wal/").await.unwrap()),
        ["wal/a", "wal/b", "wal/c"]
    );
    assert_eq!(
        keys(both.list_after("wal/", "wal/a", 1).await.unwrap()),
        ["wal/b"]
    );
    assert_eq!(
        keys(both.list_after("wal/", "wal/a", 5).await.unwrap()),
        ["wal/b", "wal/c"]
    );

    let down: Arc<dyn ObjectStore> = Arc::new(Layered::new(fs(&dir, "down").await, Unreachable));
    let s = set(&[("near", &near), ("down", &down)]);
    assert!(s.list("wal/").await.unwrap_err().is_transient());
    assert!(s
        .list_after("wal/", "", 10)
        .await
        .unwrap_err()
        .is_transient());
}

#[tokio::test]
async fn the_set_takes_no_writes_and_names_its_stores() {
    let dir = tempfile::tempdir().unwrap();
    let near = fs(&dir, "near").await;
    let one = set(&[("near", &near)]);
    assert!(one.put(SEG, Bytes::new()).await.is_err());
    assert!(one.put_if_absent(SEG, Bytes::new()).await.is_err());
    assert!(one.delete(SEG).await.is_err());
    assert!(near.head(SEG).await.unwrap().is_none());
    assert!(
        one.describe().contains("near (file://"),
        "{}",
        one.describe()
    );
    assert!(ReadSet::new(vec![]).is_err());
    let twice = vec![
        ("a".to_string(), near.clone()),
        ("a".to_string(), near.clone()),
    ];
    assert!(ReadSet::new(twice).is_err());
}
