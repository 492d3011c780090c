//! A moto S3 server for integration tests: versioning, Object Lock, retention and
//! `ListObjectVersions`, which Garage does not implement.
//!
//! [`Moto::start`] runs `moto_server` (from the venv `scripts/install-deps` makes under
//! `/opt/pgagent-test/moto`, or `$PGAGENT_MOTO_SERVER`) on a random loopback port, with its
//! log in a temporary directory. moto keeps everything in memory, accepts any credentials
//! and enforces no IAM policy: every right a probe asks about is granted.
//!
//! [`Moto::versions`] and [`Moto::delete_every_version`] look at a bucket from outside the
//! store, with their own aws-sdk-s3 client: what a store wrote, every version and delete
//! marker, and each version's lock as the service reports it.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::types::{
    BucketVersioningStatus, DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled,
    ObjectLockRetentionMode, ObjectLockRule, VersioningConfiguration,
};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use pgagent_storage::{LockMode, StoreOptions};
use tempfile::TempDir;

use crate::util::{free_port, keep_temp_dirs, log_tail};

/// Environment variable naming the `moto_server` program.
pub const MOTO_ENV: &str = "PGAGENT_MOTO_SERVER";
/// Where `scripts/install-deps` installs it.
pub const MOTO_DEFAULT: &str = "/opt/pgagent-test/moto/bin/moto_server";
/// The region the tests sign for.
pub const REGION: &str = "us-east-1";
/// moto accepts any credentials; the tests use these.
pub const ACCESS_KEY_ID: &str = "test";
/// Secret of [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "test";

/// How long to wait for the server to answer HTTP.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with a fresh port when the server exits during startup (the port was taken).
const START_ATTEMPTS: usize = 3;

/// How a test bucket protects what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// No versioning: an overwrite or a delete destroys the object.
    Plain,
    /// Versioning enabled: overwrites and deletes keep the older versions.
    Versioned,
    /// Created with Object Lock (which turns versioning on), with an optional default
    /// retention applied to every object written without lock headers.
    ObjectLock {
        /// Default retention: mode and days.
        default: Option<(LockMode, u32)>,
    },
}

/// One version or delete marker of one key, as `ListObjectVersions` and `HeadObject`
/// report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    /// The key in the bucket (with the store's prefix).
    pub key: String,
    /// `VersionId` (`null` for objects written before versioning).
    pub version_id: String,
    /// Whether this entry is a delete marker.
    pub delete_marker: bool,
    /// Whether this entry is the key's current one.
    pub is_latest: bool,
    /// `LastModified`.
    pub last_modified: SystemTime,
    /// Size in bytes (0 for a delete marker).
    pub size: u64,
    /// `x-amz-object-lock-mode` of this version (never for a delete marker).
    pub lock_mode: Option<LockMode>,
    /// `x-amz-object-lock-retain-until-date` of this version.
    pub retain_until: Option<SystemTime>,
}

/// A running `moto_server`. Dropping it kills the server and removes its directory unless
/// `PGAGENT_TEST_KEEP=1`.
#[derive(Debug)]
pub struct Moto {
    dir: Option<TempDir>,
    log: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
}

impl Moto {
    /// Starts the server and waits until it answers HTTP.
    ///
    /// Errors include the server log when the server does not answer within 30 s.
    pub fn start() -> anyhow::Result<Moto> {
        let bin = moto_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("pgagent-moto-")
            .tempdir()
            .context("create temporary directory for moto")?;
        let mut moto = Moto {
            log: dir.path().join("moto.log"),
            dir: Some(dir),
            bin,
            child: None,
            port: 0,
        };
        crate::util::start_retrying(
            &mut moto,
            "moto",
            START_ATTEMPTS,
            Moto::launch,
            Moto::exited,
        )?;
        Ok(moto)
    }

    /// S3 endpoint, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Store URL for `prefix` in `bucket`:
    /// `s3://<bucket>/<prefix>?endpoint=<endpoint>&region=us-east-1&path_style=true`.
    pub fn store_url(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint={}&region={REGION}&path_style=true",
            self.endpoint()
        )
    }

    /// Credentials as the AWS SDK environment expects them: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`; ready for [`crate::AgentProcess::spawn`].
    pub fn s3_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
        ]
    }

    /// Store options with this server's credentials, the rest default.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            access_key_id: Some(ACCESS_KEY_ID.to_owned()),
            secret_access_key: Some(SECRET_ACCESS_KEY.to_owned()),
            ..StoreOptions::default()
        }
    }

    /// A client of its own for this server, with the SDK's defaults (not the store's).
    pub fn client(&self) -> Client {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "pgagent-tests-moto",
            ))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .http_client(http)
            .build();
        Client::from_conf(conf)
    }

    /// Creates bucket `name` with `protection`. Object Lock can only be chosen when the
    /// bucket is created (`x-amz-bucket-object-lock-enabled`).
    pub async fn create_bucket(&self, name: &str, protection: Protection) -> anyhow::Result<()> {
        let client = self.client();
        let lock = matches!(protection, Protection::ObjectLock { .. });
        client
            .create_bucket()
            .bucket(name)
            .object_lock_enabled_for_bucket(lock)
            .send()
            .await
            .with_context(|| format!("create bucket {name}"))?;
        match protection {
            Protection::Plain => {}
            Protection::Versioned => {
                client
                    .put_bucket_versioning()
                    .bucket(name)
                    .versioning_configuration(
                        VersioningConfiguration::builder()
                            .status(BucketVersioningStatus::Enabled)
                            .build(),
                    )
                    .send()
                    .await
                    .with_context(|| format!("enable versioning on {name}"))?;
            }
            Protection::ObjectLock { default: None } => {}
            Protection::ObjectLock {
                default: Some((mode, days)),
            } => {
                let days = i32::try_from(days).context("default retention days")?;
                let rule = ObjectLockRule::builder()
                    .default_retention(
                        DefaultRetention::builder()
                            .mode(ObjectLockRetentionMode::from(mode.as_s3()))
                            .days(days)
                            .build(),
                    )
                    .build();
                client
                    .put_object_lock_configuration()
                    .bucket(name)
                    .object_lock_configuration(
                        ObjectLockConfiguration::builder()
                            .object_lock_enabled(ObjectLockEnabled::Enabled)
                            .rule(rule)
                            .build(),
                    )
                    .send()
                    .await
                    .with_context(|| format!("set the default retention of {name}"))?;
            }
        }
        Ok(())
    }

    /// Every version and delete marker of every key under `prefix` in `bucket`, in key
    /// order, newest first within a key; each object version with its lock (`HeadObject`
    /// with its `versionId`).
    pub async fn versions(&self, bucket: &str, prefix: &str) -> anyhow::Result<Vec<ObjectVersion>> {
        let client = self.client();
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = client
                .list_object_versions()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .with_context(|| format!("list the versions under {bucket}/{prefix}"))?;
            for v in page.versions() {
                out.push(ObjectVersion {
                    key: v.key().unwrap_or_default().to_owned(),
                    version_id: v.version_id().unwrap_or("null").to_owned(),
                    delete_marker: false,
                    is_latest: v.is_latest() == Some(true),
                    last_modified: time(v.last_modified())?,
                    size: v.size().unwrap_or(0).max(0) as u64,
                    lock_mode: None,
                    retain_until: None,
                });
            }
            for d in page.delete_markers() {
                out.push(ObjectVersion {
                    key: d.key().unwrap_or_default().to_owned(),
                    version_id: d.version_id().unwrap_or("null").to_owned(),
                    delete_marker: true,
                    is_latest: d.is_latest() == Some(true),
                    last_modified: time(d.last_modified())?,
                    size: 0,
                    lock_mode: None,
                    retain_until: None,
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
        }
        for v in out.iter_mut().filter(|v| !v.delete_marker) {
            let head = client
                .head_object()
                .bucket(bucket)
                .key(&v.key)
                .version_id(&v.version_id)
                .send()
                .await
                .with_context(|| format!("head {bucket}/{} version {}", v.key, v.version_id))?;
            v.lock_mode = head
                .object_lock_mode()
                .map(|m| m.as_str().parse().map_err(|e: String| anyhow!(e)))
                .transpose()?;
            v.retain_until = head
                .object_lock_retain_until_date()
                .map(|t| SystemTime::try_from(*t))
                .transpose()
                .context("retain-until date")?;
        }
        out.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(b.last_modified.cmp(&a.last_modified))
                .then(b.is_latest.cmp(&a.is_latest))
        });
        Ok(out)
    }

    /// Tries to delete every version and delete marker under `prefix` in `bucket`, one
    /// `DeleteObject` with its `versionId` each, sending
    /// `x-amz-bypass-governance-retention: true` when `bypass_governance`; returns how many
    /// deletes the service refused.
    pub async fn delete_every_version(
        &self,
        bucket: &str,
        prefix: &str,
        bypass_governance: bool,
    ) -> anyhow::Result<usize> {
        let client = self.client();
        let mut refused = 0;
        for v in self.versions(bucket, prefix).await? {
            // moto takes the header's presence as the bypass, whatever its value: send it
            // only when asked.
            let sent = client
                .delete_object()
                .bucket(bucket)
                .key(&v.key)
                .version_id(&v.version_id)
                .set_bypass_governance_retention(bypass_governance.then_some(true))
                .send()
                .await;
            if sent.is_err() {
                refused += 1;
            }
        }
        Ok(refused)
    }

    /// Server log file (stdout and stderr of `moto_server`).
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// The last 8 KiB of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 8192)
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Starts the server on a fresh port and waits until it answers.
    fn launch(&mut self) -> anyhow::Result<()> {
        self.port = free_port()?;
        let log = fs::File::create(&self.log).context("create moto.log")?;
        let child = Command::new(&self.bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        if let Some(mut old) = self.child.replace(child) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let started = Instant::now();
        loop {
            if answers_http(self.port) {
                return Ok(());
            }
            if self.exited() || started.elapsed() > READY_TIMEOUT {
                bail!(
                    "moto_server did not answer on port {}\nserver log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            if keep_temp_dirs() {
                eprintln!("keeping moto directory {}", dir.keep().display());
            }
        }
    }
}

/// The `moto_server` program: `$PGAGENT_MOTO_SERVER`, else [`MOTO_DEFAULT`].
pub fn moto_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(MOTO_ENV) {
        return Ok(PathBuf::from(path));
    }
    let bin = PathBuf::from(MOTO_DEFAULT);
    if bin.is_file() {
        Ok(bin)
    } else {
        bail!("no {MOTO_DEFAULT}: run scripts/install-deps as root or set {MOTO_ENV}")
    }
}

/// Whether an HTTP request to `127.0.0.1:port` gets a status line back.
fn answers_http(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

fn time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> anyhow::Result<SystemTime> {
    let t = t.ok_or_else(|| anyhow!("an entry without LastModified"))?;
    SystemTime::try_from(*t).context("LastModified")
}
