//! Before a chain restore writes anything: is every chunk it may read in the store?
//!
//! A few chunks are asked for one by one (`HEAD`); past [`HEAD_AT_MOST`], listing the
//! fan-out directories (`chunks/ab/`) that hold them costs fewer requests (one per 1000
//! keys on S3) than a `HEAD` per chunk. Either way nothing is downloaded: the content of
//! each chunk is verified when it is read.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::bail;
use futures::{StreamExt, TryStreamExt};
use pgagent_storage::layout::chunk_key;
use pgagent_storage::ObjectStore;

/// Chunks asked for one by one at most; more are checked by listing.
pub const HEAD_AT_MOST: usize = 512;

/// Who needs a chunk: a backup id and a path in it.
pub type Needer = (String, String);

/// Checks that every chunk of `needed` (hash → one backup and file that reads it) is in
/// `store`, with at most `concurrency` requests at a time.
///
/// Errors: a request fails; a chunk is missing: the message names the first missing chunk
/// (in hash order), its backup and file, and how many others are missing.
pub async fn check_present(
    store: &dyn ObjectStore,
    needed: &BTreeMap<String, Needer>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let concurrency = concurrency.max(1);
    let missing: BTreeSet<&String> = if needed.len() <= HEAD_AT_MOST {
        futures::stream::iter(needed.keys())
            .map(|hash| async move {
                let key = chunk_key(hash);
                match store.head(&key).await {
                    Ok(found) => Ok((hash, found.is_some())),
                    Err(e) => Err(anyhow::anyhow!("look for {key}: {e}")),
                }
            })
            .buffer_unordered(concurrency)
            .try_filter_map(|(hash, found)| async move { Ok((!found).then_some(hash)) })
            .try_collect()
            .await?
    } else {
        let fans: BTreeSet<String> = needed
            .keys()
            .map(|h| {
                let key = chunk_key(h);
                let dir = key.rsplit_once('/').map_or("", |(d, _)| d);
                format!("{dir}/")
            })
            .collect();
        let listed: Vec<Vec<String>> = futures::stream::iter(fans)
            .map(|prefix| async move {
                store
                    .list(&prefix)
                    .await
                    .map(|objects| objects.into_iter().map(|o| o.key).collect())
                    .map_err(|e| anyhow::anyhow!("list {prefix}: {e}"))
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        let listed: HashSet<String> = listed.into_iter().flatten().collect();
        needed
            .keys()
            .filter(|h| !listed.contains(&chunk_key(h)))
            .collect()
    };
    if let Some(first) = missing.first() {
        let (backup, path) = &needed[*first];
        let others = match missing.len() - 1 {
            0 => String::new(),
            n => format!(" ({n} other chunks are missing too)"),
        };
        bail!(
            "backup {backup}: {path}: chunk {first} is missing from {}{others}",
            store.describe()
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a scratch store: its requests need no counting
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn missing_chunks_are_named_with_their_backup_and_file_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = pgagent_storage::open(&url, &Default::default())
            .await
            .unwrap();
        let hash = |i: usize| format!("{:064x}", i * 0x1111);
        let mut needed = BTreeMap::new();
        for i in 0..HEAD_AT_MOST + 10 {
            needed.insert(hash(i), ("b1".to_string(), format!("base/5/{i}")));
            if i != 7 && i != 9 {
                store
                    .put(&chunk_key(&hash(i)), Bytes::from_static(b"x"))
                    .await
                    .unwrap();
            }
        }
        // Listed (more than HEAD_AT_MOST), then asked one by one.
        let err = check_present(store.as_ref(), &needed, 4)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("backup b1: base/5/7: chunk {}", hash(7)))
                && err.contains("1 other chunks"),
            "{err}"
        );
        let few: BTreeMap<_, _> = needed.into_iter().take(10).collect();
        let err = check_present(store.as_ref(), &few, 4)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("base/5/7") && err.contains("1 other"), "{err}");
        let present: BTreeMap<_, _> = few.into_iter().take(5).collect();
        check_present(store.as_ref(), &present, 4).await.unwrap();
    }
}
