//! What protects a bucket's history from whoever holds the store's credentials: whether the
//! bucket keeps versions (`GetBucketVersioning`), whether it locks them
//! (`GetObjectLockConfiguration`), and what the credentials can destroy, found by trying it
//! on a probe object under `doctor/` ([`S3Store::protection`]).
//!
//! The probes, in order, on `doctor/protection-<pid>-<nanos>`:
//!
//! 1. `PutObject` with `Content-MD5` (which S3 wants on every write to an Object Lock
//!    bucket); in an Object Lock bucket with an explicit `GOVERNANCE` lock of
//!    [`PROBE_LOCK`], which overrides a default retention so the probe never stays locked
//!    for the bucket's default days.
//! 2. `DeleteObject` without a version (`s3:DeleteObject`): on a versioned bucket a delete
//!    marker, elsewhere the end of the object.
//! 3. `DeleteObject` of one version (`s3:DeleteObjectVersion`), on a versioned bucket only:
//!    the delete marker of step 2, which no lock protects; without Object Lock, the probe's
//!    version itself when step 2 was refused.
//! 4. In an Object Lock bucket, `DeleteObject` of the probe's locked version with
//!    `x-amz-bypass-governance-retention: true` (`s3:BypassGovernanceRetention`). When the
//!    bypass is refused, that version stays until its short lock ends; the next run removes
//!    it.
//!
//! Then, on a versioned bucket, every version and delete marker under `doctor/` is deleted
//! where the bucket allows it (earlier probes, and the markers and versions that `pgagent
//! doctor`'s own put/delete check leaves there); locked ones stay until their locks end.
//!
//! Services without versioning or Object Lock (Garage, R2) answer these bucket calls with an
//! error or `NotImplemented`: that is reported as [`Versioning::Unreported`] /
//! [`ObjectLock::Unreported`], not as a failure of the check.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{BucketVersioningStatus, ObjectLockEnabled, ObjectLockMode};
use aws_smithy_types::DateTime;
use bytes::Bytes;

use super::errors::{fault_of, Fault};
use super::S3Store;
use crate::lock::{round_up_to_second, LockMode};

/// How long the probe of step 4 is locked (in `GOVERNANCE` mode): long enough to be in
/// force when the bypass is tried, short enough that a refused bypass leaves it behind for
/// only a minute.
pub const PROBE_LOCK: Duration = Duration::from_secs(60);

/// Most entries under `doctor/` one run tries to delete.
const SWEEP_LIMIT: usize = 1000;

/// The bucket's versioning, as `GetBucketVersioning` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Versioning {
    /// Every overwrite and delete keeps the version before it.
    Enabled,
    /// Was enabled, now suspended: new writes replace the `null` version.
    Suspended,
    /// Never enabled.
    Never,
    /// The service did not say (an error, `NotImplemented`): why.
    Unreported(String),
}

/// A bucket's default retention, applied to objects written without lock headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRetention {
    /// Its mode.
    pub mode: LockMode,
    /// Its length in days (a period in years counts 365 days a year).
    pub days: u32,
}

/// The bucket's Object Lock, as `GetObjectLockConfiguration` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectLock {
    /// Object Lock is enabled (so is versioning), with or without a default retention.
    Enabled {
        /// The default retention, if any.
        default: Option<DefaultRetention>,
    },
    /// The bucket has no Object Lock configuration.
    Absent,
    /// The service did not say (an error, `NotImplemented`): why.
    Unreported(String),
}

impl ObjectLock {
    /// Whether Object Lock is known to be enabled.
    pub fn is_enabled(&self) -> bool {
        matches!(self, ObjectLock::Enabled { .. })
    }
}

/// How one probe came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The service did it.
    Allowed,
    /// The service refused it (HTTP 403): its answer.
    Denied(String),
    /// It failed otherwise (an error that is not a refusal): what happened.
    Failed(String),
    /// Not tried: why.
    Skipped(String),
}

/// What the store's credentials could do to the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    /// `PutObject`.
    pub put: Probe,
    /// `DeleteObject` without a version id.
    pub delete: Probe,
    /// `DeleteObject` of one version (`s3:DeleteObjectVersion`).
    pub delete_version: Probe,
    /// `DeleteObject` of a governance-locked version with the bypass header
    /// (`s3:BypassGovernanceRetention`).
    pub bypass_governance: Probe,
}

/// What [`S3Store::protection`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketProtection {
    /// The bucket's versioning.
    pub versioning: Versioning,
    /// The bucket's Object Lock.
    pub lock: ObjectLock,
    /// What the credentials could do.
    pub rights: Rights,
    /// What the probes left behind, and other remarks worth printing.
    pub notes: Vec<String>,
}

impl S3Store {
    /// Reads the bucket's versioning and Object Lock configuration and probes what the
    /// store's credentials can destroy (see the [module docs](self)). Never fails: what
    /// could not be found out is in the answer. A store read as of a past time probes
    /// nothing (it takes no writes).
    pub async fn protection(&self) -> BucketProtection {
        let versioning = self.versioning().await;
        let lock = self.object_lock().await;
        let mut notes = Vec::new();
        let rights = match &self.as_of {
            Some(_) => {
                let why = "the store is read as of a past time and takes no writes";
                Rights {
                    put: Probe::Skipped(why.into()),
                    delete: Probe::Skipped(why.into()),
                    delete_version: Probe::Skipped(why.into()),
                    bypass_governance: Probe::Skipped(why.into()),
                }
            }
            None => {
                let versioned = lock.is_enabled() || versioning == Versioning::Enabled;
                let rights = self.probe(versioned, lock.is_enabled(), &mut notes).await;
                if versioned {
                    self.sweep(&mut notes).await;
                }
                rights
            }
        };
        BucketProtection {
            versioning,
            lock,
            rights,
            notes,
        }
    }

    async fn versioning(&self) -> Versioning {
        let sent = self
            .client
            .get_bucket_versioning()
            .bucket(&self.loc.bucket)
            .send()
            .await;
        match sent {
            Ok(out) => match out.status() {
                None => Versioning::Never,
                Some(BucketVersioningStatus::Enabled) => Versioning::Enabled,
                Some(BucketVersioningStatus::Suspended) => Versioning::Suspended,
                Some(other) => Versioning::Unreported(format!("status {other:?}")),
            },
            Err(e) => Versioning::Unreported(answer(&e)),
        }
    }

    async fn object_lock(&self) -> ObjectLock {
        let sent = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.loc.bucket)
            .send()
            .await;
        let out = match sent {
            Ok(out) => out,
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => {
                return ObjectLock::Absent
            }
            Err(e) => return ObjectLock::Unreported(answer(&e)),
        };
        let Some(conf) = out.object_lock_configuration() else {
            return ObjectLock::Absent;
        };
        if conf.object_lock_enabled() != Some(&ObjectLockEnabled::Enabled) {
            return ObjectLock::Absent;
        }
        let default = conf
            .rule()
            .and_then(|r| r.default_retention())
            .and_then(|d| {
                let mode = d.mode()?.as_str().parse().ok()?;
                let days = d.days().unwrap_or(0).max(0) as u32
                    + d.years().unwrap_or(0).max(0) as u32 * 365;
                Some(DefaultRetention { mode, days })
            });
        ObjectLock::Enabled { default }
    }

    /// Steps 1 to 4 of the module docs.
    async fn probe(&self, versioned: bool, locked: bool, notes: &mut Vec<String>) -> Rights {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let key = self.full_key(&format!("doctor/protection-{}-{nanos}", std::process::id()));
        let body = Bytes::from(format!("pgagent doctor protection probe {nanos}"));
        let until = locked.then(|| round_up_to_second(SystemTime::now() + PROBE_LOCK));
        let put = self
            .client
            .put_object()
            .bucket(&self.loc.bucket)
            .key(&key)
            .content_length(body.len() as i64)
            .content_md5(super::lock::content_md5(&body))
            .set_object_lock_mode(until.map(|_| ObjectLockMode::Governance))
            .set_object_lock_retain_until_date(until.map(DateTime::from))
            .body(body.into())
            .send()
            .await;
        let version = match put {
            Ok(out) => out
                .version_id()
                .filter(|v| *v != "null")
                .map(str::to_string),
            Err(e) => {
                let why = "the probe could not be written";
                return Rights {
                    put: refused(&e),
                    delete: Probe::Skipped(why.into()),
                    delete_version: Probe::Skipped(why.into()),
                    bypass_governance: Probe::Skipped(why.into()),
                };
            }
        };
        let (delete, marker) = match self.delete_probe(&key, None, false).await {
            Ok(marker) => (Probe::Allowed, marker),
            Err(p) => (p, None),
        };
        let delete_version = if !versioned {
            Probe::Skipped("the bucket keeps no versions".into())
        } else if let Some(m) = &marker {
            self.delete_probe(&key, Some(m), false)
                .await
                .err()
                .unwrap_or(Probe::Allowed)
        } else if let (false, Some(v)) = (locked, &version) {
            self.delete_probe(&key, Some(v), false)
                .await
                .err()
                .unwrap_or(Probe::Allowed)
        } else {
            Probe::Skipped("no delete marker or unlocked version to try it on".into())
        };
        let mut bypass_governance = Probe::Skipped("the bucket has no Object Lock".into());
        if let (true, Some(v)) = (locked, &version) {
            bypass_governance = match self.delete_probe(&key, Some(v), true).await {
                Ok(_) => Probe::Allowed,
                Err(p) => {
                    if let Some(until) = until {
                        notes.push(format!(
                            "the probe version {key} ({v}) stays until its lock ends at {}",
                            humantime::format_rfc3339_seconds(until)
                        ));
                    }
                    p
                }
            };
        } else if locked {
            bypass_governance = Probe::Skipped("the probe got no version id".into());
        }
        if let (true, false, Some(v)) = (versioned, locked, &version) {
            // The probe's own version, when step 3 went to the delete marker.
            let _ = self.delete_probe(&key, Some(v), false).await;
        }
        Rights {
            put: Probe::Allowed,
            delete,
            delete_version,
            bypass_governance,
        }
    }

    /// `DeleteObject` of `key` (a full key), of `version` when given; `Ok` with the delete
    /// marker's version id when it made one.
    async fn delete_probe(
        &self,
        key: &str,
        version: Option<&str>,
        bypass: bool,
    ) -> Result<Option<String>, Probe> {
        self.client
            .delete_object()
            .bucket(&self.loc.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            // Some servers (moto) take the header's presence as the bypass: never send
            // `false`.
            .set_bypass_governance_retention(bypass.then_some(true))
            .send()
            .await
            .map(|out| {
                (out.delete_marker() == Some(true))
                    .then(|| out.version_id().map(str::to_string))
                    .flatten()
            })
            .map_err(|e| refused(&e))
    }

    /// Deletes every version and delete marker under `doctor/` the bucket lets go of.
    async fn sweep(&self, notes: &mut Vec<String>) {
        let prefix = self.full_key("doctor/");
        let page = self
            .client
            .list_object_versions()
            .bucket(&self.loc.bucket)
            .prefix(&prefix)
            .max_keys(SWEEP_LIMIT as i32)
            .send()
            .await;
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                notes.push(format!(
                    "old probe versions under {prefix} not removed: listing them failed ({})",
                    answer(&e)
                ));
                return;
            }
        };
        // Versions first: a key's delete markers go only once none of its versions is left,
        // so a locked probe never shows up again under doctor/.
        let mut kept_keys = std::collections::BTreeSet::new();
        let mut kept = 0;
        for v in page.versions().iter().take(SWEEP_LIMIT) {
            let (Some(key), Some(version)) = (v.key(), v.version_id()) else {
                continue;
            };
            if self.delete_probe(key, Some(version), false).await.is_err() {
                kept += 1;
                kept_keys.insert(key.to_string());
            }
        }
        for d in page.delete_markers().iter().take(SWEEP_LIMIT) {
            let (Some(key), Some(version)) = (d.key(), d.version_id()) else {
                continue;
            };
            if !kept_keys.contains(key) {
                let _ = self.delete_probe(key, Some(version), false).await;
            }
        }
        if kept > 0 {
            notes.push(format!(
                "{kept} probe versions under {prefix} stay until their locks end"
            ));
        }
    }
}

/// A refused request (HTTP 403) as [`Probe::Denied`], anything else as [`Probe::Failed`].
fn refused<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Probe {
    match fault_of(e) {
        Fault::Status(403, ..) => Probe::Denied(answer(e)),
        _ => Probe::Failed(answer(e)),
    }
}

/// The service's answer, short: `HTTP 501 NotImplemented: …`, or what kept the request
/// from an answer.
fn answer<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String {
    match fault_of(e) {
        Fault::Status(status, code, message) => {
            let mut s = format!("HTTP {status}");
            if let Some(c) = code {
                s.push_str(&format!(" {c}"));
            }
            if let Some(m) = message.filter(|m| !m.is_empty()) {
                s.push_str(&format!(": {m}"));
            }
            s
        }
        Fault::Network => "no answer from the service".into(),
        Fault::Local => "the request could not be sent".into(),
    }
}
