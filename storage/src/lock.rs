//! S3 Object Lock as pgagent uses it: the policy a store writes every object under, the
//! retention one object carries, and the point in time a store can be read as of.
//!
//! With a [`LockPolicy`], every `put` carries `x-amz-object-lock-mode` and
//! `x-amz-object-lock-retain-until-date` = the time of the request + `days` (S3 User Guide,
//! "Locking objects with Object Lock"; the bucket must have been created with Object Lock,
//! which turns on versioning). Until that date no version can be deleted or overwritten in
//! place: in `governance` mode only a principal with `s3:BypassGovernanceRetention` that sends
//! `x-amz-bypass-governance-retention: true` can, in `compliance` mode nobody can, the root
//! account included. A plain `DELETE` or a new `PUT` still succeeds, as a delete marker or a
//! newer version above the locked one: reading the store [`as of`][as_of] a time before them
//! finds the locked version again.
//!
//! [as_of]: crate::config::StoreOptions::as_of

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The Object Lock retention mode (`x-amz-object-lock-mode`); `governance`/`compliance` in
/// manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// `GOVERNANCE`: principals with `s3:BypassGovernanceRetention` may still remove a
    /// version, sending `x-amz-bypass-governance-retention: true`.
    Governance,
    /// `COMPLIANCE`: nobody may remove a version before its retain-until date, nor shorten
    /// it.
    Compliance,
}

impl LockMode {
    /// The header value: `GOVERNANCE` or `COMPLIANCE`.
    pub fn as_s3(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        })
    }
}

impl FromStr for LockMode {
    type Err = String;

    /// `governance` or `compliance`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Ok(LockMode::Governance),
            "compliance" => Ok(LockMode::Compliance),
            other => Err(format!(
                "unknown object lock mode {other:?}; use governance or compliance"
            )),
        }
    }
}

/// How a store locks what it writes: every object in `mode`, until `days` days after it was
/// written; [`LockPolicy::renew_window`] says when a backup extends an older chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPolicy {
    /// The retention mode.
    pub mode: LockMode,
    /// Days each object stays locked after its write, at least 1.
    pub days: u32,
}

impl LockPolicy {
    /// The length of the lock, `days` × 86 400 seconds.
    pub fn period(&self) -> Duration {
        Duration::from_secs(u64::from(self.days) * 86_400)
    }

    /// The retain-until date of an object written at `now`: `now + days`, in whole seconds
    /// rounded up (the header carries seconds).
    pub fn retain_until(&self, now: SystemTime) -> SystemTime {
        round_up_to_second(now + self.period())
    }

    /// The renewal window: an eighth of the period. A backup extends each chunk it reuses
    /// whose lock ends less than `period - renew_window` after the backup started, to a
    /// full period, so every backup's chunks stay locked at least
    /// [`LockPolicy::guaranteed`] past its start and a chunk shared by daily backups is
    /// extended about every `days / 8` days, not by every backup.
    pub fn renew_window(&self) -> Duration {
        self.period() / 8
    }

    /// What a backup started at `start` is guaranteed: every object it depends on is locked
    /// at least until `start + period - renew_window`.
    pub fn guaranteed(&self, start: SystemTime) -> SystemTime {
        start + self.period() - self.renew_window()
    }
}

/// The Object Lock retention one object version carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Its mode.
    pub mode: LockMode,
    /// Its retain-until date.
    pub until: SystemTime,
}

impl Retention {
    /// Whether the version may not be removed at `now`.
    pub fn holds_at(&self, now: SystemTime) -> bool {
        self.until > now
    }
}

/// What a backup's manifest says of its locks (`lock` in `manifest.json`): every object the
/// backup depends on — its chunks and, for an incremental backup, its ancestors' chunks and
/// manifests — carries a lock in `mode` until `until` or later. Written only once that
/// holds; a later backup that reuses a chunk extends its lock only when no claim covers
/// what it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockClaim {
    /// The mode of those locks.
    pub mode: LockMode,
    /// RFC 3339 UTC, whole seconds.
    pub until: String,
}

impl LockClaim {
    /// `until` as a time; `None` if it does not parse (then the claim is worth nothing).
    pub fn until(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.until).ok()
    }

    /// Whether the claim holds a lock of `needed` mode: a compliance lock also holds a
    /// governance need, a governance lock does not hold a compliance need.
    pub fn covers_mode(&self, needed: LockMode) -> bool {
        self.mode == needed || self.mode == LockMode::Compliance
    }
}

/// `t` rounded up to a whole second.
pub fn round_up_to_second(t: SystemTime) -> SystemTime {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn modes_parse_in_any_case_and_print_as_configured() {
        assert_eq!("Compliance".parse::<LockMode>(), Ok(LockMode::Compliance));
        assert_eq!("governance".parse::<LockMode>(), Ok(LockMode::Governance));
        assert!("legal"
            .parse::<LockMode>()
            .unwrap_err()
            .contains("governance"));
        assert_eq!(LockMode::Compliance.as_s3(), "COMPLIANCE");
        assert_eq!(LockMode::Governance.to_string(), "governance");
    }

    #[test]
    fn an_object_is_locked_for_whole_days_from_its_write_in_whole_seconds() {
        let p = LockPolicy {
            mode: LockMode::Governance,
            days: 16,
        };
        let now = at("2026-12-06T10:00:00.250Z");
        assert_eq!(p.retain_until(now), at("2026-12-22T10:00:01Z"));
        assert_eq!(p.renew_window(), Duration::from_secs(2 * 86_400));
        assert_eq!(
            p.guaranteed(at("2026-12-06T10:00:00Z")),
            at("2026-12-20T10:00:00Z")
        );
        let r = Retention {
            mode: p.mode,
            until: p.retain_until(now),
        };
        assert!(r.holds_at(at("2026-12-22T10:00:00Z")));
        assert!(!r.holds_at(at("2026-12-22T10:00:01Z")));
    }
}
