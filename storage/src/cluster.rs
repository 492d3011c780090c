//! `cluster.json`: the identity of the one cluster a store prefix belongs to.
//!
//! Written once, as plain JSON (not enveloped) so an operator can read it with any S3 tool.
//! An agent whose server reports another system identifier (`IDENTIFY_SYSTEM`, from
//! `pg_control`'s `system_identifier`) or another WAL segment size refuses to write into the
//! prefix: WAL of two clusters must never mix, and segment names only mean something for one
//! segment size.
//!
//! An encrypted store says so in `cluster.json` ([`ClusterInfo::encryption`]); a file without
//! the field (every store written before encryption existed) is plaintext. A store is all
//! one or the other: [`check_encryption`] refuses a cipher for a plaintext store and no
//! cipher for an encrypted one, and tells a master key of another store from this one's.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::crypto::ObjectCipher;
use crate::error::StoreError;
use crate::layout::CLUSTER_KEY;
use crate::object_store::ObjectStore;

/// Store format version this build writes for a plaintext store.
pub const STORE_FORMAT_VERSION: u32 = 1;
/// Store format version of an encrypted store: builds from before encryption refuse it
/// ([`StoreError::IncompatibleFormat`]) instead of taking it for plaintext and writing
/// plaintext objects into it.
pub const ENCRYPTED_STORE_FORMAT_VERSION: u32 = 2;
/// Highest store format version this build reads; a store with a higher one is refused.
pub const MAX_STORE_FORMAT_VERSION: u32 = ENCRYPTED_STORE_FORMAT_VERSION;

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
    /// Present when the store is encrypted; absent (old files, plaintext stores) means
    /// plaintext. Not written when absent, so plaintext stores keep their old shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
}

impl ClusterInfo {
    /// Whether the store is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }
}

/// The envelope encryption this build writes (XChaCha20-Poly1305 payloads, keyed blake3
/// hashes, keys derived from the master key; see [`crate::envelope`]).
pub const ENCRYPTION_SCHEME: &str = "xchacha20poly1305-blake3-v1";

/// How an encrypted store is encrypted (the `encryption` object of `cluster.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// [`ENCRYPTION_SCHEME`].
    pub scheme: String,
    /// [`ObjectCipher::key_check`] of the store's master key (reveals nothing about it).
    pub key_check: String,
    /// Id of the key file (`keys/<id>`) the store was claimed with: unlocking tries it
    /// first. A hint only (not authenticated, and the key may have been removed since);
    /// absent in files written before it existed, and not compared by
    /// [`check_encryption_info`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl EncryptionInfo {
    /// What `cluster.json` records for a store sealed with `cipher` (naming no key file).
    pub fn of(cipher: &ObjectCipher) -> EncryptionInfo {
        EncryptionInfo {
            scheme: ENCRYPTION_SCHEME.to_string(),
            key_check: cipher.key_check(),
            key_id: None,
        }
    }

    /// What `cluster.json` records for a store sealed with `cipher`, claimed with the key
    /// file `key_id`.
    pub fn named(cipher: &ObjectCipher, key_id: &str) -> EncryptionInfo {
        EncryptionInfo {
            key_id: Some(key_id.to_string()),
            ..EncryptionInfo::of(cipher)
        }
    }
}

/// Reads `cluster.json`, or `None` if the store has none yet.
///
/// Errors: [`StoreError::Corrupt`] if it is not valid JSON of this shape, or declares
/// encryption below [`ENCRYPTED_STORE_FORMAT_VERSION`];
/// [`StoreError::IncompatibleFormat`] if it was written by a newer format; store errors.
pub async fn read_cluster(store: &dyn ObjectStore) -> Result<Option<ClusterInfo>, StoreError> {
    let body = match store.get(CLUSTER_KEY).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let info: ClusterInfo = serde_json::from_slice(&body)
        .map_err(|e| StoreError::corrupt(CLUSTER_KEY, format!("not valid cluster JSON: {e}")))?;
    if info.format_version > MAX_STORE_FORMAT_VERSION {
        return Err(StoreError::IncompatibleFormat {
            key: CLUSTER_KEY.to_string(),
            found: info.format_version,
            supported: MAX_STORE_FORMAT_VERSION,
        });
    }
    if info.encryption.is_some() && info.format_version < ENCRYPTED_STORE_FORMAT_VERSION {
        return Err(StoreError::corrupt(
            CLUSTER_KEY,
            format!(
                "format version {} with an encryption object (an encrypted store is version \
                 {ENCRYPTED_STORE_FORMAT_VERSION} or later)",
                info.format_version
            ),
        ));
    }
    Ok(Some(info))
}

/// Reads `cluster.json` right after this process wrote it (or saw it written).
///
/// Errors: as [`read_cluster`]; a missing object is [`StoreError::Transient`] (a store
/// whose reads lag its writes), to be retried.
pub(crate) async fn read_back(store: &dyn ObjectStore) -> Result<ClusterInfo, StoreError> {
    read_cluster(store)
        .await?
        .ok_or_else(|| StoreError::Transient {
            key: CLUSTER_KEY.to_string(),
            op: crate::error::Op::Get,
            detail: "not readable right after it was written".to_string(),
            source: None,
        })
}

/// Writes `info` as `cluster.json` if the store has none (`put_if_absent`: on a store that
/// ignores the condition, a writer that agreed on the same value may overwrite it with the
/// same bytes, see [`crate::agreement`]). When `info.encryption` is set, the version
/// written is at least [`ENCRYPTED_STORE_FORMAT_VERSION`], whatever the caller put there.
///
/// Errors: store errors.
pub(crate) async fn put_cluster(
    store: &dyn ObjectStore,
    info: &ClusterInfo,
) -> Result<(), StoreError> {
    let mut info = info.clone();
    if info.encryption.is_some() {
        info.format_version = info.format_version.max(ENCRYPTED_STORE_FORMAT_VERSION);
    }
    let mut body = serde_json::to_vec_pretty(&info).expect("ClusterInfo serializes");
    body.push(b'\n');
    store.put_if_absent(CLUSTER_KEY, Bytes::from(body)).await?;
    Ok(())
}

/// Claims the store for `info` without the agreement of [`crate::keyring::access::claim`]
/// (only for a store no other writer races on: tests), or checks that it already belongs
/// to it; returns what the store holds.
///
/// Errors: [`StoreError::ForeignCluster`] if the stored system identifier or WAL segment size
/// differs from `info`; the errors of [`check_encryption_info`] when the stored encryption
/// differs from `info.encryption`; the errors of [`read_cluster`]; store errors.
#[cfg(test)]
pub(crate) async fn ensure_cluster(
    store: &dyn ObjectStore,
    info: &ClusterInfo,
) -> Result<ClusterInfo, StoreError> {
    let stored = match read_cluster(store).await? {
        Some(stored) => stored,
        None => {
            put_cluster(store, info).await?;
            read_back(store).await?
        }
    };
    check_same_cluster(&stored, info)?;
    check_encryption_info(&stored, info.encryption.as_ref())?;
    Ok(stored)
}

/// Checks that a reader or writer holding `cipher` (or none) matches the store described by
/// `stored`: what every command checks after reading `cluster.json`.
///
/// Errors: as [`check_encryption_info`].
pub fn check_encryption(
    stored: &ClusterInfo,
    cipher: Option<&ObjectCipher>,
) -> Result<(), StoreError> {
    check_encryption_info(stored, cipher.map(EncryptionInfo::of).as_ref())
}

/// Compares the store's encryption with `ours` (`None`: no passphrase configured).
///
/// Errors: [`StoreError::Encrypted`] (the store is encrypted, `ours` is `None`);
/// [`StoreError::NotEncrypted`] (the store is plaintext, `ours` is set);
/// [`StoreError::IncompatibleFormat`] for a scheme this build does not know;
/// [`StoreError::ForeignCluster`] when the key checks differ (the unlocked master key is
/// another store's).
pub fn check_encryption_info(
    stored: &ClusterInfo,
    ours: Option<&EncryptionInfo>,
) -> Result<(), StoreError> {
    let key = CLUSTER_KEY.to_string();
    match (&stored.encryption, ours) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(StoreError::Encrypted { key }),
        (None, Some(_)) => Err(StoreError::NotEncrypted { key }),
        (Some(s), Some(_)) if s.scheme != ENCRYPTION_SCHEME => Err(StoreError::config(format!(
            "cluster.json: encryption scheme {:?} is unknown to this build (it reads \
             {ENCRYPTION_SCHEME}); upgrade pgagent",
            s.scheme
        ))),
        (Some(s), Some(o)) if s.key_check != o.key_check => Err(StoreError::ForeignCluster {
            expected: format!("master key check {}", o.key_check),
            found: format!("master key check {}", s.key_check),
            detail: "the unlocked master key is not this store's (keys/ holds another \
                     store's key)"
                .to_string(),
        }),
        (Some(_), Some(_)) => Ok(()),
    }
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
            encryption: None,
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

    #[test]
    fn files_without_the_encryption_field_are_plaintext() {
        let old = br#"{"format_version":1,"system_identifier":"7","pg_version_num":150004,
            "wal_segment_size":16777216,"created_at":"2024-05-01T03:00:00Z"}"#;
        let parsed: ClusterInfo = serde_json::from_slice(old).unwrap();
        assert!(!parsed.is_encrypted());
        check_encryption(&parsed, None).unwrap();
        let cipher = crate::crypto::MasterKey::generate().cipher();
        let e = check_encryption(&parsed, Some(&cipher)).unwrap_err();
        assert!(e.is_not_encrypted(), "{e}");
    }

    #[test]
    fn encrypted_shape_and_checks() {
        let cipher = crate::crypto::MasterKey::generate().cipher();
        let mut enc = info("1");
        enc.format_version = ENCRYPTED_STORE_FORMAT_VERSION;
        enc.encryption = Some(EncryptionInfo::of(&cipher));
        let v = serde_json::to_value(&enc).unwrap();
        assert_eq!(v["encryption"]["scheme"], ENCRYPTION_SCHEME);
        assert_eq!(v["encryption"]["key_check"], cipher.key_check());
        assert_eq!(v["format_version"], 2);
        check_encryption(&enc, Some(&cipher)).unwrap();
        let e = check_encryption(&enc, None).unwrap_err();
        assert!(e.is_encrypted() && e.key() == Some(CLUSTER_KEY), "{e}");
        let other = crate::crypto::MasterKey::generate().cipher();
        let e = check_encryption(&enc, Some(&other)).unwrap_err();
        assert!(e.is_foreign_cluster(), "{e}");
        assert!(e.to_string().contains("master key"), "{e}");
        let mut unknown = enc.clone();
        unknown.encryption.as_mut().unwrap().scheme = "rot13".into();
        let e = check_encryption(&unknown, Some(&cipher)).unwrap_err();
        assert!(e.to_string().contains("upgrade pgagent"), "{e}");
    }

    #[tokio::test]
    async fn an_encrypted_claim_is_written_as_format_2_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::fs::FsStore::open(dir.path().to_path_buf())
            .await
            .unwrap();
        let cipher = crate::crypto::MasterKey::generate().cipher();
        let mut ours = info("1");
        ours.encryption = Some(EncryptionInfo::of(&cipher));
        let stored = ensure_cluster(&store, &ours).await.unwrap();
        assert_eq!(stored.format_version, ENCRYPTED_STORE_FORMAT_VERSION);
        assert_eq!(stored.encryption, ours.encryption);
        // Claiming again, and a plaintext claim refused.
        ensure_cluster(&store, &ours).await.unwrap();
        let e = ensure_cluster(&store, &info("1")).await.unwrap_err();
        assert!(e.is_encrypted(), "{e}");
        // A version-1 file that says it is encrypted would fool older builds: corrupt.
        let mut bad = stored.clone();
        bad.format_version = 1;
        store
            .put(CLUSTER_KEY, serde_json::to_vec(&bad).unwrap().into())
            .await
            .unwrap();
        assert!(read_cluster(&store).await.unwrap_err().is_corrupt());
        // A plaintext claim stays format 1 and keeps its old shape.
        let dir = tempfile::tempdir().unwrap();
        let plain = crate::fs::FsStore::open(dir.path().to_path_buf())
            .await
            .unwrap();
        ensure_cluster(&plain, &info("1")).await.unwrap();
        let body = plain.get(CLUSTER_KEY).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::to_value(info("1")).unwrap());
        assert!(v.get("encryption").is_none());
    }
}
