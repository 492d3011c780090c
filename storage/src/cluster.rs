//! `cluster.json`: the identity of the one cluster a store prefix belongs to.
//!
//! Written once, as plain JSON (not enveloped) so an operator can read it with any S3 tool.
//! An agent whose server reports another system identifier (`IDENTIFY_SYSTEM`, from
//! `pg_control`'s `system_identifier`) or another WAL segment size refuses to write into the
//! prefix: WAL of two clusters must never mix, and segment names only mean something for one
//! segment size.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::layout::CLUSTER_KEY;
use crate::ObjectStore;

/// Store format version written by this build; a store with a higher one is refused.
pub const STORE_FORMAT_VERSION: u32 = 1;

/// Contents of `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Store format version ([`STORE_FORMAT_VERSION`]).
    pub format_version: u32,
    /// `system_identifier` of the cluster (a u64 written in decimal, as `IDENTIFY_SYSTEM`
    /// returns it), kept as a string because JSON numbers lose precision above 2^53.
    pub system_identifier: String,
    /// `server_version_num` of the server, e.g. `150004` (PostgreSQL 15.4).
    pub pg_version_num: u32,
    /// WAL segment size in bytes (`wal_segment_size`, 16 MiB unless changed at initdb).
    pub wal_segment_size: u64,
    /// When the store was first claimed, RFC 3339 UTC.
    pub created_at: String,
}

/// Reads `cluster.json`, or `None` if the store has none yet.
///
/// Errors: [`StoreError::Corrupt`] if it is not valid JSON of this shape;
/// [`StoreError::IncompatibleFormat`] if it was written by a newer format; store errors.
pub async fn read_cluster(store: &dyn ObjectStore) -> Result<Option<ClusterInfo>, StoreError> {
    let body = match store.get(CLUSTER_KEY).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let info: ClusterInfo = serde_json::from_slice(&body)
        .map_err(|e| StoreError::corrupt(CLUSTER_KEY, format!("not valid cluster JSON: {e}")))?;
    if info.format_version > STORE_FORMAT_VERSION {
        return Err(StoreError::IncompatibleFormat {
            key: CLUSTER_KEY.to_string(),
            found: info.format_version,
            supported: STORE_FORMAT_VERSION,
        });
    }
    Ok(Some(info))
}

/// Claims the store for the cluster described by `info`, or checks that it already belongs
/// to it; returns what the store holds.
///
/// If `cluster.json` is absent it is created with `put_if_absent` and read back, so of two
/// agents racing to claim an empty prefix, the loser sees the winner's identity (on services
/// that ignore `If-None-Match`, the read-back still shows whichever write landed last to
/// both, and the other agent is refused).
///
/// Errors: [`StoreError::ForeignCluster`] if the stored system identifier or WAL segment size
/// differs from `info`; the errors of [`read_cluster`]; store errors.
pub async fn ensure_cluster(
    store: &dyn ObjectStore,
    info: &ClusterInfo,
) -> Result<ClusterInfo, StoreError> {
    let stored = match read_cluster(store).await? {
        Some(stored) => stored,
        None => {
            let mut body = serde_json::to_vec_pretty(info).expect("ClusterInfo serializes");
            body.push(b'\n');
            store.put_if_absent(CLUSTER_KEY, Bytes::from(body)).await?;
            read_cluster(store)
                .await?
                .ok_or_else(|| StoreError::Transient {
                    key: CLUSTER_KEY.to_string(),
                    op: crate::Op::Get,
                    detail: "not readable right after it was written".to_string(),
                    source: None,
                })?
        }
    };
    check_same_cluster(&stored, info)?;
    Ok(stored)
}

/// Compares the identity fields of `stored` (from the store) and `ours` (from the server).
///
/// Errors: [`StoreError::ForeignCluster`].
pub fn check_same_cluster(stored: &ClusterInfo, ours: &ClusterInfo) -> Result<(), StoreError> {
    if stored.system_identifier != ours.system_identifier {
        return Err(StoreError::ForeignCluster {
            expected: ours.system_identifier.clone(),
            found: stored.system_identifier.clone(),
            detail: "system identifier differs".to_string(),
        });
    }
    if stored.wal_segment_size != ours.wal_segment_size {
        return Err(StoreError::ForeignCluster {
            expected: format!("{} bytes", ours.wal_segment_size),
            found: format!("{} bytes", stored.wal_segment_size),
            detail: "WAL segment size differs".to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(sysid: &str) -> ClusterInfo {
        ClusterInfo {
            format_version: 1,
            system_identifier: sysid.into(),
            pg_version_num: 150004,
            wal_segment_size: 16 << 20,
            created_at: "2024-05-01T03:00:00Z".into(),
        }
    }

    #[test]
    fn json_shape_is_stable() {
        let v = serde_json::to_value(info("7312345678901234567")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "format_version": 1,
                "system_identifier": "7312345678901234567",
                "pg_version_num": 150004,
                "wal_segment_size": 16777216,
                "created_at": "2024-05-01T03:00:00Z"
            })
        );
    }

    #[test]
    fn identity_checks() {
        check_same_cluster(&info("1"), &info("1")).unwrap();
        let e = check_same_cluster(&info("1"), &info("2")).unwrap_err();
        assert!(e.is_foreign_cluster());
        assert!(
            e.to_string().contains("store has 1, this server is 2"),
            "{e}"
        );
        let mut other = info("1");
        other.wal_segment_size = 64 << 20;
        assert!(check_same_cluster(&info("1"), &other)
            .unwrap_err()
            .is_foreign_cluster());
        // A different server version of the same cluster (minor upgrade) is fine.
        other = info("1");
        other.pg_version_num = 150007;
        check_same_cluster(&info("1"), &other).unwrap();
    }
}
