//! Drill records in the store: `drills/<id>.json`, the [`DrillReport`] of each drill,
//! sealed like every object (encrypted in an encrypted store).

use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::drill::DrillReport;
use pgagent_storage::layout::{drill_key, DRILL_PREFIX};
use pgagent_storage::ObjectStore;

use super::records::{json_keys, put_json, read_json, read_json_all};

/// Writes the record of drill `r.id`.
///
/// Errors: the store's.
pub async fn put_record(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    r: &DrillReport,
) -> anyhow::Result<()> {
    put_json(store, cipher, &drill_key(&r.id), r).await
}

/// Every drill record, oldest first; one that cannot be read is logged and skipped.
///
/// Errors: the listing or a read fails.
pub async fn records(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
) -> anyhow::Result<Vec<DrillReport>> {
    let mut out = Vec::new();
    for r in read_json_all::<DrillReport>(store, cipher, DRILL_PREFIX).await? {
        match r {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("skipping drill record: {e}"),
        }
    }
    Ok(out)
}

/// The newest drill record and the end time of the newest that passed, reading from the
/// newest back only until a passed one is found (usually one or two reads, however many
/// drills the store holds): what `status` and the daemon's start need.
///
/// Errors: the listing or a read fails.
pub async fn newest(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
) -> anyhow::Result<(Option<DrillReport>, Option<String>)> {
    let mut newest = None;
    for key in json_keys(store, DRILL_PREFIX).await?.iter().rev() {
        let r: DrillReport = match read_json(store, cipher, key).await? {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("skipping drill record: {e}");
                continue;
            }
        };
        let passed = r.passed.then(|| r.finished_at.clone());
        if newest.is_none() {
            newest = Some(r);
        }
        if passed.is_some() {
            return Ok((newest, passed));
        }
    }
    Ok((newest, None))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a scratch store: its requests need no counting
mod tests {
    use super::*;

    fn report(id: &str, passed: bool) -> DrillReport {
        let mut r = DrillReport::new(id, String::new(), "latest".into(), String::new());
        r.passed = passed;
        r.finished_at = format!("end of {id}");
        r
    }

    #[tokio::test]
    async fn the_newest_and_the_newest_passed_drill() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = pgagent_storage::open(&url, &Default::default())
            .await
            .unwrap();
        assert_eq!(newest(store.as_ref(), None).await.unwrap(), (None, None));
        for (id, passed) in [
            ("20261101T000000.000Z", true),
            ("20261102T000000.000Z", true),
        ] {
            put_record(store.as_ref(), None, &report(id, passed))
                .await
                .unwrap();
        }
        put_record(store.as_ref(), None, &report("20261103T000000.000Z", false))
            .await
            .unwrap();
        let (last, passed) = newest(store.as_ref(), None).await.unwrap();
        assert_eq!(last.unwrap().id, "20261103T000000.000Z");
        assert_eq!(passed.as_deref(), Some("end of 20261102T000000.000Z"));
        assert_eq!(records(store.as_ref(), None).await.unwrap().len(), 3);
    }
}
