//! The S3 backend (`s3://bucket/prefix?endpoint=…&region=…&path_style=true`).
//!
//! Built on aws-sdk-s3 and tuned for S3-compatible services as well as AWS:
//!
//! - request checksums only when an operation requires them, response checksums validated
//!   only when required: no `aws-chunked` bodies or trailing checksums, which Cloudflare R2,
//!   Garage and older MinIO reject or mishandle. Integrity comes from the envelope's blake3.
//! - the SDK's standard retry (3 attempts) absorbs brief glitches; callers add their own
//!   backoff above it for longer outages.
//! - bodies above `part_size` are uploaded as multipart with bounded parallelism.
//! - HTTPS uses rustls with the ring provider, the same TLS stack as the replication client.
//! - every HTTP request sent (each list page, multipart part and retry attempt) is reported
//!   to [`crate::requests::CountedStore`], which counts requests as the provider bills them.
//!
//! - with a lock policy, every write carries its Object Lock headers and `Content-MD5`
//!   (`s3/lock.rs`); with `as_of`, reads go to the versions current then and writes are
//!   refused (`s3/versions.rs`).
//!
//! Keys are stored as `<prefix>/<key>` in the bucket.

mod counting;
mod errors;
mod lock;
mod multipart;
pub mod protection;
mod versions;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use bytes::Bytes;

use crate::config::{S3Location, StoreOptions};
use crate::error::{Op, StoreError};
use crate::layout::{validate_key, validate_prefix};
use crate::lock::{LockPolicy, Retention};
use crate::object_store::{ObjectMeta, ObjectStore, PutOutcome};
use versions::AsOf;

pub(crate) use errors::map_sdk;
pub use protection::BucketProtection;

/// Region used when neither the URL nor the AWS environment/profile names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// A store in an S3 bucket, below a key prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    loc: S3Location,
    /// `prefix/`, or empty.
    key_prefix: String,
    part_size: u64,
    upload_concurrency: usize,
    request_timeout: Duration,
    /// Every write carries this lock.
    lock: Option<LockPolicy>,
    /// Reads see the bucket as of this time; writes are refused.
    as_of: Option<Arc<AsOf>>,
}

impl S3Store {
    /// Builds the client: region from the URL, else `AWS_REGION`/profile, else
    /// [`DEFAULT_REGION`]; credentials from `opts`, else the standard AWS chain. Sends no
    /// request.
    ///
    /// Errors: [`StoreError::Config`] if `opts` fails [`StoreOptions::validate`].
    pub async fn open(loc: S3Location, opts: &StoreOptions) -> Result<S3Store, StoreError> {
        opts.validate()?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10).min(opts.request_timeout))
                    .operation_attempt_timeout(opts.request_timeout)
                    .build(),
            );
        // Without a region in the URL, the loader's default chain (environment, profile,
        // instance metadata) runs with the HTTP client above; DEFAULT_REGION is the fallback.
        if let Some(region) = &loc.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let (Some(id), Some(secret)) = (&opts.access_key_id, &opts.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                opts.session_token.clone(),
                None,
                "pgagent-store-options",
            ));
        }
        let sdk = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(loc.path_style)
            .interceptor(counting::CountRequests)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if sdk.region().is_none() {
            conf = conf.region(Region::new(DEFAULT_REGION));
        }
        if let Some(endpoint) = &loc.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        let key_prefix = if loc.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", loc.prefix)
        };
        Ok(S3Store {
            client: Client::from_conf(conf.build()),
            loc,
            key_prefix,
            part_size: opts.part_size,
            upload_concurrency: opts.upload_concurrency,
            request_timeout: opts.request_timeout,
            lock: opts.lock,
            as_of: opts.as_of.map(|t| Arc::new(AsOf::new(t))),
        })
    }

    /// The parsed location.
    pub fn location(&self) -> &S3Location {
        &self.loc
    }

    /// The underlying SDK client, for callers that need an operation this trait lacks.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `ListObjectsV2` pages under `prefix` (after `after`, when given) until `limit` keys
    /// or the end, sorted by key. MaxKeys above 1000 is cut to 1000 by S3, so a larger limit
    /// takes more pages.
    async fn list_pages(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        while out.len() < limit {
            let want = i32::try_from((limit - out.len()).min(1000)).unwrap_or(1000);
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.loc.bucket)
                .prefix(self.full_key(prefix))
                .set_start_after(after.map(|a| self.full_key(a)))
                .max_keys(want)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| map_sdk(prefix, Op::List, e))?;
            for obj in page.contents() {
                let Some(key) = obj.key().and_then(|k| k.strip_prefix(&self.key_prefix)) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: key.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    last_modified: to_system_time(obj.last_modified()),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    /// The error of a write to a store read as of a past time.
    fn refuse_write(&self, key: &str, op: Op) -> Result<(), StoreError> {
        match &self.as_of {
            None => Ok(()),
            Some(a) => Err(StoreError::Config {
                detail: format!(
                    "{key}: {op:?} refused: the store is read as of {} and takes no writes",
                    humantime::format_rfc3339_seconds(a.at)
                ),
            }),
        }
    }

    async fn put_object(&self, key: &str, body: Bytes, if_absent: bool) -> Result<(), StoreError> {
        self.refuse_write(key, Op::Put)?;
        if body.len() as u64 > self.part_size {
            return multipart::upload(self, key, body, if_absent).await;
        }
        let lock = self.write_lock();
        let md5 = lock.as_ref().map(|_| lock::content_md5(&body));
        let mut req = self
            .client
            .put_object()
            .bucket(&self.loc.bucket)
            .key(self.full_key(key))
            .content_length(body.len() as i64)
            .set_content_md5(md5)
            .set_object_lock_mode(lock.as_ref().map(|l| l.mode.clone()))
            .set_object_lock_retain_until_date(lock.map(|l| l.until))
            .body(ByteStream::from(body));
        if if_absent {
            req = req.if_none_match("*");
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| map_sdk(key, Op::Put, e))
    }

    /// The version id reads of `key` ask for: `None` without `as_of`.
    ///
    /// Errors: [`StoreError::NotFound`] when `key` was absent at the `as_of` time.
    async fn read_version(&self, key: &str) -> Result<Option<String>, StoreError> {
        let Some(as_of) = &self.as_of else {
            return Ok(None);
        };
        match self.version_of(as_of, key).await? {
            Some(v) => Ok(Some(v.id)),
            None => Err(StoreError::not_found(key)),
        }
    }

    /// GETs `key`, optionally a `Range`; `Ok(None)` on HTTP 416 (range starts past the end).
    async fn get_object(
        &self,
        key: &str,
        range: Option<String>,
    ) -> Result<Option<Bytes>, StoreError> {
        let version = self.read_version(key).await?;
        let sent = self
            .client
            .get_object()
            .bucket(&self.loc.bucket)
            .key(self.full_key(key))
            .set_version_id(version)
            .set_range(range)
            .send()
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) if matches!(errors::fault_of(&e), errors::Fault::Status(416, ..)) => {
                return Ok(None)
            }
            Err(e) => return Err(map_sdk(key, Op::Get, e)),
        };
        // The SDK's attempt timeout ends when headers arrive; bound the body read too.
        match tokio::time::timeout(self.request_timeout, resp.body.collect()).await {
            Ok(Ok(agg)) => Ok(Some(agg.into_bytes())),
            Ok(Err(e)) => Err(StoreError::Transient {
                key: key.to_string(),
                op: Op::Get,
                detail: format!("reading the response body: {e}"),
                source: Some(Box::new(e)),
            }),
            Err(_) => Err(StoreError::Transient {
                key: key.to_string(),
                op: Op::Get,
                detail: format!("response body not read within {:?}", self.request_timeout),
                source: None,
            }),
        }
    }
}

fn to_system_time(t: Option<&aws_smithy_types::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        validate_key(key)?;
        self.put_object(key, body, false).await
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        validate_key(key)?;
        match self.put_object(key, body, true).await {
            Ok(()) => Ok(PutOutcome::Created),
            Err(StoreError::AlreadyExists { .. }) => Ok(PutOutcome::Exists),
            Err(e) => Err(e),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        // 416 cannot happen without a Range header; treat it as an empty body regardless.
        Ok(self.get_object(key, None).await?.unwrap_or_default())
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        if len == 0 {
            // An empty range cannot be expressed in a Range header; keep the NotFound contract.
            return match self.head(key).await? {
                Some(_) => Ok(Bytes::new()),
                None => Err(StoreError::not_found(key)),
            };
        }
        let end = start.saturating_add(len - 1);
        // 416 means the object exists and `start` is at or past its end.
        let range = Some(format!("bytes={start}-{end}"));
        Ok(self.get_object(key, range).await?.unwrap_or_default())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        validate_key(key)?;
        if let Some(as_of) = &self.as_of {
            return Ok(self.version_of(as_of, key).await?.map(|v| ObjectMeta {
                key: key.to_string(),
                size: v.size,
                last_modified: Some(v.last_modified),
            }));
        }
        let r = self
            .client
            .head_object()
            .bucket(&self.loc.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        match r {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                last_modified: to_system_time(out.last_modified()),
            })),
            Err(e) => match map_sdk(key, Op::Head, e) {
                StoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(prefix)?;
        if let Some(as_of) = &self.as_of {
            return self.list_as_of(as_of, prefix, None, usize::MAX).await;
        }
        self.list_pages(prefix, None, usize::MAX).await
    }

    async fn list_after(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(prefix)?;
        validate_prefix(after)?;
        if let Some(as_of) = &self.as_of {
            return self.list_as_of(as_of, prefix, Some(after), limit).await;
        }
        let mut out = self.list_pages(prefix, Some(after), limit).await?;
        out.retain(|m| m.key.as_str() > after);
        out.truncate(limit);
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        self.refuse_write(key, Op::Delete)?;
        let r = self
            .client
            .delete_object()
            .bucket(&self.loc.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) => match map_sdk(key, Op::Delete, e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn retention(&self, key: &str) -> Result<Option<Retention>, StoreError> {
        validate_key(key)?;
        let version = self.read_version(key).await?;
        lock::retention(self, key, version).await
    }

    async fn extend_retention(&self, key: &str, until: SystemTime) -> Result<(), StoreError> {
        validate_key(key)?;
        self.refuse_write(key, Op::Put)?;
        lock::extend(self, key, until).await
    }

    fn lock_policy(&self) -> Option<LockPolicy> {
        self.lock
    }

    fn enforces_conditional_put(&self) -> bool {
        self.loc.conditional_put
    }

    fn describe(&self) -> String {
        self.loc.to_string()
    }
}
