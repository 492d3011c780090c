//! Object Lock on S3: the headers every write carries under a [`LockPolicy`], reading one
//! version's retention, and extending it (`PutObjectRetention`).
//!
//! S3 refuses a write with lock headers that lacks an integrity header ("Content-MD5 or
//! x-amz-sdk-checksum-algorithm is required", S3 API reference, PutObject, "Object Lock"):
//! every locked `PutObject` and `UploadPart` sends `Content-MD5`, which AWS, B2, MinIO and
//! moto all accept and which needs no `aws-chunked` body (see the module docs of
//! [`super`]).

use std::time::SystemTime;

use aws_sdk_s3::types::{ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode};
use aws_smithy_types::DateTime;
use md5::{Digest, Md5};

use super::{map_sdk, to_system_time, S3Store};
use crate::error::{Op, StoreError};
use crate::lock::{round_up_to_second, LockMode, Retention};

/// The lock headers of one write: the mode and the retain-until date of an object written
/// now.
#[derive(Debug, Clone)]
pub(crate) struct WriteLock {
    pub mode: ObjectLockMode,
    pub until: DateTime,
}

impl S3Store {
    /// The headers a write sent now carries, if the store locks what it writes.
    pub(crate) fn write_lock(&self) -> Option<WriteLock> {
        self.lock.map(|p| WriteLock {
            mode: ObjectLockMode::from(p.mode.as_s3()),
            until: DateTime::from(p.retain_until(SystemTime::now())),
        })
    }
}

/// The base64 MD5 of `body`, for `Content-MD5` (RFC 1864).
pub(crate) fn content_md5(body: &[u8]) -> String {
    aws_smithy_types::base64::encode(Md5::digest(body))
}

fn mode_of(m: &str) -> Option<LockMode> {
    m.parse().ok()
}

/// The retention of `key`'s version `version` (`None`: the current one), from `HeadObject`.
pub(crate) async fn retention(
    store: &S3Store,
    key: &str,
    version: Option<String>,
) -> Result<Option<Retention>, StoreError> {
    let out = store
        .client
        .head_object()
        .bucket(&store.loc.bucket)
        .key(store.full_key(key))
        .set_version_id(version)
        .send()
        .await
        .map_err(|e| map_sdk(key, Op::Head, e))?;
    let mode = out.object_lock_mode().and_then(|m| mode_of(m.as_str()));
    let until = to_system_time(out.object_lock_retain_until_date());
    Ok(match (mode, until) {
        (Some(mode), Some(until)) => Some(Retention { mode, until }),
        _ => None,
    })
}

/// Extends the lock of `key`'s current version to `until` unless it already lasts that
/// long.
pub(crate) async fn extend(
    store: &S3Store,
    key: &str,
    until: SystemTime,
) -> Result<(), StoreError> {
    let Some(policy) = store.lock else {
        return Err(StoreError::config(format!(
            "cannot extend the lock of {key}: the store is not configured with store.lock"
        )));
    };
    let until = round_up_to_second(until);
    if let Some(r) = retention(store, key, None).await? {
        if r.until >= until {
            return Ok(());
        }
    }
    let retention = ObjectLockRetention::builder()
        .mode(ObjectLockRetentionMode::from(policy.mode.as_s3()))
        .retain_until_date(DateTime::from(until))
        .build();
    store
        .client
        .put_object_retention()
        .bucket(&store.loc.bucket)
        .key(store.full_key(key))
        .retention(retention)
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| map_sdk(key, Op::Put, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_md5_is_rfc_1864_base64() {
        // RFC 1321's test vector "abc", base64 of the 16 bytes.
        assert_eq!(content_md5(b"abc"), "kAFQmDzST7DWlj99KOF/cg==");
    }
}
