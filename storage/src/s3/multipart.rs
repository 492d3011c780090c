//! Multipart upload of one large body.
//!
//! The body is cut into parts of `part_size` bytes (the last one smaller), uploaded with at
//! most `upload_concurrency` in flight, then completed in part-number order. Any failure
//! aborts the upload so no invisible parts keep costing storage (a bucket lifecycle rule for
//! incomplete uploads is still advisable: an abort can fail too). A conditional put sends
//! `If-None-Match: *` on the completion request, where S3 evaluates it.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{map_sdk, S3Store};
use crate::error::{Op, StoreError};

/// Byte ranges `[start, end)` of the parts of a body of `len` bytes.
pub(crate) fn part_ranges(len: u64, part_size: u64) -> Vec<(u64, u64)> {
    assert!(part_size > 0, "part size must be positive");
    (0..len.div_ceil(part_size))
        .map(|i| (i * part_size, ((i + 1) * part_size).min(len)))
        .collect()
}

/// Uploads `body` to `key` as a multipart upload; under a lock policy the upload carries
/// the lock headers and every part its `Content-MD5`.
pub(crate) async fn upload(
    store: &S3Store,
    key: &str,
    body: Bytes,
    if_absent: bool,
) -> Result<(), StoreError> {
    let full = store.full_key(key);
    let lock = store.write_lock();
    let created = store
        .client
        .create_multipart_upload()
        .bucket(&store.loc.bucket)
        .key(&full)
        .set_object_lock_mode(lock.as_ref().map(|l| l.mode.clone()))
        .set_object_lock_retain_until_date(lock.as_ref().map(|l| l.until))
        .send()
        .await
        .map_err(|e| map_sdk(key, Op::Put, e))?;
    let Some(upload_id) = created.upload_id().map(str::to_string) else {
        return Err(StoreError::Other {
            key: key.to_string(),
            op: Op::Put,
            detail: "CreateMultipartUpload returned no upload id".to_string(),
            source: None,
        });
    };
    let md5 = lock.is_some();
    let result =
        upload_parts_and_complete(store, key, &full, &upload_id, body, if_absent, md5).await;
    if let Err(err) = &result {
        let abort = store
            .client
            .abort_multipart_upload()
            .bucket(&store.loc.bucket)
            .key(&full)
            .upload_id(&upload_id)
            .send()
            .await;
        if let Err(abort_err) = abort {
            tracing::warn!(
                key,
                upload_id,
                error = %map_sdk(key, Op::Put, abort_err),
                cause = %err,
                "could not abort a failed multipart upload; its parts stay until a lifecycle rule removes them"
            );
        }
    }
    result
}

async fn upload_parts_and_complete(
    store: &S3Store,
    key: &str,
    full: &str,
    upload_id: &str,
    body: Bytes,
    if_absent: bool,
    md5: bool,
) -> Result<(), StoreError> {
    let ranges = part_ranges(body.len() as u64, store.part_size);
    let uploads = ranges.into_iter().enumerate().map(|(i, (start, end))| {
        let part = body.slice(start as usize..end as usize);
        let number = i as i32 + 1;
        async move {
            let out = store
                .client
                .upload_part()
                .bucket(&store.loc.bucket)
                .key(full)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(part.len() as i64)
                .set_content_md5(md5.then(|| super::lock::content_md5(&part)))
                .body(ByteStream::from(part))
                .send()
                .await
                .map_err(|e| map_sdk(key, Op::Put, e))?;
            Ok::<_, StoreError>(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build(),
            )
        }
    });
    let mut parts: Vec<CompletedPart> = futures::stream::iter(uploads)
        .buffer_unordered(store.upload_concurrency)
        .try_collect()
        .await?;
    parts.sort_by_key(|p| p.part_number());
    let mut req = store
        .client
        .complete_multipart_upload()
        .bucket(&store.loc.bucket)
        .key(full)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        );
    if if_absent {
        req = req.if_none_match("*");
    }
    req.send()
        .await
        .map(|_| ())
        .map_err(|e| map_sdk(key, Op::Put, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_body_exactly() {
        assert_eq!(part_ranges(0, 8), Vec::<(u64, u64)>::new());
        assert_eq!(part_ranges(8, 8), vec![(0, 8)]);
        assert_eq!(part_ranges(9, 8), vec![(0, 8), (8, 9)]);
        let mib = 1 << 20;
        let r = part_ranges(40 * mib + 48, 8 * mib);
        assert_eq!(r.len(), 6);
        assert!(r[..5].iter().all(|(s, e)| e - s == 8 * mib));
        assert_eq!(r[5], (40 * mib, 40 * mib + 48));
    }
}
