//! Store URLs and options, and [`open`](crate::open::open), which turns them into a backend.
//!
//! Parsing is pure ([`StoreUrl::parse`]); [`open`](crate::open::open) then builds the backend (which, for S3,
//! resolves credentials and region).
//!
//! ```text
//! file:///var/lib/pgagent/store
//! s3://bucket/prefix?endpoint=https://acc.r2.cloudflarestorage.com&region=auto&path_style=true
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::error::StoreError;
use crate::lock::LockPolicy;

/// Smallest multipart part S3 accepts (except the last part), in bytes.
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// Largest multipart part S3 accepts, in bytes.
pub const MAX_PART_SIZE: u64 = 5 << 30;

/// Settings of a store beyond its URL.
///
/// `Debug` shows whether secrets are set, never their values.
#[derive(Clone)]
pub struct StoreOptions {
    /// Parallel part uploads of one multipart object (S3). Default 8; use ~4 on R2.
    pub upload_concurrency: usize,
    /// Objects larger than this many bytes are uploaded in parts of this size (S3); between
    /// 5 MiB and 5 GiB. Default 16 MiB.
    pub part_size: u64,
    /// S3 access key id; when `None` the standard AWS chain is used (environment,
    /// profile, SSO, web identity, ECS/EC2 metadata).
    pub access_key_id: Option<String>,
    /// S3 secret access key, together with `access_key_id`.
    pub secret_access_key: Option<String>,
    /// S3 session token for temporary credentials.
    pub session_token: Option<String>,
    /// Timeout of one HTTP attempt, including reading the response body. Default 60 s.
    pub request_timeout: Duration,
    /// S3 Object Lock: every object written carries this lock. `None`: objects are written
    /// without one (the bucket's default retention, if it has one, still applies).
    pub lock: Option<LockPolicy>,
    /// Read the store as it was at this time: each read finds the version of each object
    /// that was current then (a versioned S3 bucket), past later overwrites and delete
    /// markers. Such a store refuses every write.
    pub as_of: Option<SystemTime>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            upload_concurrency: 8,
            part_size: 16 << 20,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            request_timeout: Duration::from_secs(60),
            lock: None,
            as_of: None,
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("StoreOptions")
            .field("upload_concurrency", &self.upload_concurrency)
            .field("part_size", &self.part_size)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redact(&self.secret_access_key))
            .field("session_token", &redact(&self.session_token))
            .field("request_timeout", &self.request_timeout)
            .field("lock", &self.lock)
            .field("as_of", &self.as_of)
            .finish()
    }
}

impl StoreOptions {
    /// Checks ranges: `upload_concurrency` ≥ 1, `part_size` within S3's limits, a non-zero
    /// `request_timeout`, and a secret key given together with its key id.
    ///
    /// Errors: [`StoreError::Config`].
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.upload_concurrency == 0 {
            return Err(StoreError::config("upload_concurrency must be at least 1"));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(StoreError::config(format!(
                "part_size {} bytes is outside S3's limits (5 MiB to 5 GiB)",
                self.part_size
            )));
        }
        if self.request_timeout.is_zero() {
            return Err(StoreError::config("request_timeout must be above zero"));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(StoreError::config(
                "access_key_id and secret_access_key must be given together",
            ));
        }
        if self.lock.is_some_and(|l| l.days == 0) {
            return Err(StoreError::config("lock_days must be at least 1"));
        }
        if self.lock.is_some() && self.as_of.is_some() {
            return Err(StoreError::config(
                "a store read as of a past time is read-only: it takes no object lock",
            ));
        }
        Ok(())
    }
}

/// Where an S3 store lives, parsed from `s3://bucket/prefix?…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Service endpoint (`endpoint=`), e.g. `http://127.0.0.1:3900`; `None` means AWS S3.
    pub endpoint: Option<String>,
    /// Signing region (`region=`); `None` means `AWS_REGION`/profile, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`path_style=true`), needed by most non-AWS services.
    pub path_style: bool,
    /// Whether the service is known to honour `If-None-Match: *` (`conditional_put=`);
    /// defaults to `true` for AWS S3 and `false` with a custom endpoint.
    pub conditional_put: bool,
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)?;
        let mut sep = '?';
        if let Some(e) = &self.endpoint {
            write!(f, "{sep}endpoint={e}")?;
            sep = '&';
        }
        if let Some(r) = &self.region {
            write!(f, "{sep}region={r}")?;
            sep = '&';
        }
        if self.path_style {
            write!(f, "{sep}path_style=true")?;
            sep = '&';
        }
        if self.conditional_put != self.endpoint.is_none() {
            write!(f, "{sep}conditional_put={}", self.conditional_put)?;
        }
        Ok(())
    }
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `file:///abs/path`: a directory on a local file system.
    File {
        /// Root directory (absolute).
        root: PathBuf,
    },
    /// `s3://bucket/prefix?endpoint=…&region=…&path_style=…&conditional_put=…`.
    S3(S3Location),
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::File { root } => write!(f, "file://{}", root.display()),
            StoreUrl::S3(loc) => loc.fmt(f),
        }
    }
}

impl StoreUrl {
    /// Parses a store URL. Credentials embedded in the URL are refused (they would end up in
    /// logs and process lists); unknown query parameters are refused (a typo must not
    /// silently select AWS).
    ///
    /// Errors: [`StoreError::InvalidUrl`], whose message never contains the URL's password.
    pub fn parse(input: &str) -> Result<StoreUrl, StoreError> {
        let u = ::url::Url::parse(input).map_err(|e| bad(input, format!("{e}")))?;
        let shown = redacted(&u);
        if !u.username().is_empty() || u.password().is_some() {
            return Err(bad(
                &shown,
                "credentials in the URL are not accepted; use AWS_ACCESS_KEY_ID/\
                 AWS_SECRET_ACCESS_KEY or the store settings",
            ));
        }
        match u.scheme() {
            "file" => parse_file(&u, &shown),
            "s3" => {
                // The URL parser resolves `.` and `..` segments; a prefix must be spelled
                // out, not computed.
                let raw_path = input.split(['?', '#']).next().unwrap_or("");
                if raw_path.split('/').skip(3).any(|seg| {
                    let seg = seg.to_ascii_lowercase().replace("%2e", ".");
                    seg == "." || seg == ".."
                }) {
                    return Err(bad(&shown, "'.' and '..' are not allowed in the prefix"));
                }
                parse_s3(&u, &shown).map(StoreUrl::S3)
            }
            other => Err(bad(
                &shown,
                format!("unsupported scheme {other:?}; use file:// or s3://"),
            )),
        }
    }
}

fn parse_file(u: &::url::Url, shown: &str) -> Result<StoreUrl, StoreError> {
    if !matches!(u.host_str(), None | Some("") | Some("localhost")) {
        return Err(bad(
            shown,
            "file URLs take an absolute path: file:///var/lib/pgagent/store",
        ));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(bad(shown, "file URLs take no query or fragment"));
    }
    let root = u
        .to_file_path()
        .map_err(|()| bad(shown, "not an absolute local path"))?;
    Ok(StoreUrl::File { root })
}

fn parse_s3(u: &::url::Url, shown: &str) -> Result<S3Location, StoreError> {
    let bucket = u.host_str().unwrap_or("").to_string();
    if bucket.is_empty() {
        return Err(bad(shown, "missing bucket: s3://bucket/prefix"));
    }
    if u.port().is_some() {
        return Err(bad(
            shown,
            "a port belongs in the endpoint parameter: s3://bucket/prefix?endpoint=http://host:port",
        ));
    }
    let prefix = u.path().trim_matches('/').to_string();
    if !prefix.is_empty() {
        crate::layout::validate_key(&prefix).map_err(|e| bad(shown, format!("prefix: {e}")))?;
    }
    let mut loc = S3Location {
        bucket,
        prefix,
        endpoint: None,
        region: None,
        path_style: false,
        conditional_put: true,
    };
    let mut conditional = None;
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "endpoint" => {
                let e = ::url::Url::parse(&v).map_err(|e| bad(shown, format!("endpoint: {e}")))?;
                if !matches!(e.scheme(), "http" | "https") {
                    return Err(bad(shown, "endpoint must be an http:// or https:// URL"));
                }
                loc.endpoint = Some(v.trim_end_matches('/').to_string());
            }
            "region" => loc.region = Some(v.into_owned()),
            "path_style" | "force_path_style" => loc.path_style = parse_bool(shown, &k, &v)?,
            "conditional_put" => conditional = Some(parse_bool(shown, &k, &v)?),
            other => {
                return Err(bad(
                    shown,
                    format!(
                        "unknown parameter {other:?}; known: endpoint, region, path_style, \
                         conditional_put"
                    ),
                ))
            }
        }
    }
    loc.conditional_put = conditional.unwrap_or(loc.endpoint.is_none());
    Ok(loc)
}

fn parse_bool(shown: &str, k: &str, v: &str) -> Result<bool, StoreError> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(bad(shown, format!("{k} must be true or false, not {v:?}"))),
    }
}

/// The URL with any password replaced, safe to print.
fn redacted(u: &::url::Url) -> String {
    let mut u = u.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("REDACTED"));
    }
    u.to_string()
}

fn bad(url: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(u: &str) -> S3Location {
        match StoreUrl::parse(u).unwrap() {
            StoreUrl::S3(l) => l,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_urls() {
        assert_eq!(
            StoreUrl::parse("file:///var/lib/pgagent/store").unwrap(),
            StoreUrl::File {
                root: "/var/lib/pgagent/store".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("file:///tmp/with%20space").unwrap(),
            StoreUrl::File {
                root: "/tmp/with space".into()
            }
        );
        for u in [
            "file://host/x",
            "file:///x?a=b",
            "relative/path",
            "/abs/path",
        ] {
            assert!(StoreUrl::parse(u).is_err(), "{u}");
        }
    }

    #[test]
    fn s3_urls() {
        let l = s3("s3://b/pg/main?endpoint=http://127.0.0.1:3900&region=garage&path_style=true");
        assert_eq!(l.bucket, "b");
        assert_eq!(l.prefix, "pg/main");
        assert_eq!(l.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(l.region.as_deref(), Some("garage"));
        assert!(l.path_style);
        assert!(!l.conditional_put);
        assert_eq!(
            l.to_string(),
            "s3://b/pg/main?endpoint=http://127.0.0.1:3900&region=garage&path_style=true"
        );

        let l = s3("s3://bucket");
        assert_eq!((l.prefix.as_str(), l.path_style), ("", false));
        assert!(l.conditional_put && l.endpoint.is_none() && l.region.is_none());
        let l = s3("s3://bucket/p/?endpoint=https://x.example/&conditional_put=true");
        assert_eq!(l.prefix, "p");
        assert_eq!(l.endpoint.as_deref(), Some("https://x.example"));
        assert!(l.conditional_put);
        assert_eq!(
            l.to_string(),
            "s3://bucket/p?endpoint=https://x.example&conditional_put=true"
        );
        assert_eq!(StoreUrl::parse(&l.to_string()).unwrap(), StoreUrl::S3(l));
    }

    #[test]
    fn bad_s3_urls() {
        for u in [
            "s3:///prefix",
            "s3://b/p?endpont=http://x",
            "s3://b/p?path_style=maybe",
            "s3://b/p?endpoint=ftp://x",
            "s3://b:9000/p",
            "s3://b/a//b",
            "s3://b/a/../b",
            "s3://b/a/%2E%2E/b",
            "s3://b/./b",
            "gs://b/p",
        ] {
            assert!(StoreUrl::parse(u).is_err(), "{u}");
        }
    }

    #[test]
    fn secrets_never_shown() {
        let e = StoreUrl::parse("s3://AKIAEXAMPLE:sup3rs3cret@bucket/p").unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains("sup3rs3cret"), "{msg}");
        assert!(msg.contains("credentials in the URL"), "{msg}");

        let opts = StoreOptions {
            access_key_id: Some("GKexample".into()),
            secret_access_key: Some("sup3rs3cret".into()),
            session_token: Some("t0ken".into()),
            ..StoreOptions::default()
        };
        let dbg = format!("{opts:?}");
        assert!(
            !dbg.contains("sup3rs3cret") && !dbg.contains("t0ken"),
            "{dbg}"
        );
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn options_are_checked() {
        StoreOptions::default().validate().unwrap();
        let mut o = StoreOptions {
            upload_concurrency: 0,
            ..StoreOptions::default()
        };
        assert!(o.validate().is_err());
        o.upload_concurrency = 1;
        o.part_size = 1 << 20;
        assert!(o.validate().is_err());
        o.part_size = MIN_PART_SIZE;
        o.access_key_id = Some("k".into());
        assert!(o.validate().is_err());
    }
}
