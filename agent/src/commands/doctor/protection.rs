//! Doctor's bucket protection checks: what keeps the history in the store from someone
//! holding this host's credentials (ransomware on the database host, a leaked key).
//!
//! [`check`] is the I/O edge: for an S3 store it asks the bucket
//! ([`S3Store::protection`]: versioning, Object Lock, and probes of what the credentials can
//! destroy); [`assess`] turns what was found, and the configured `store.lock`, into
//! findings, without I/O. The store is one of four cases:
//!
//! | case | what a writer with these credentials can do |
//! | --- | --- |
//! | per-object lock | nothing to a version before its retain-until date (in governance mode: unless it may bypass governance retention) |
//! | versioned, no lock | delete versions, if it holds `s3:DeleteObjectVersion` |
//! | no versioning | overwrite or delete every backup |
//! | a local directory | whatever the host's permissions let it |
//!
//! See `docs/doctor-bucket.md` for the findings and their fixes.

use pgagent_storage::s3::protection::{
    BucketProtection, DefaultRetention, ObjectLock, Probe, Versioning,
};
use pgagent_storage::s3::S3Store;
use pgagent_storage::{LockMode, LockPolicy, ObjectStore, StoreUrl};

use super::{Level, Report};
use crate::config::Config;

/// One line of doctor's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How it came out.
    pub level: Level,
    /// What it is about: `bucket versioning`, `object lock`, `bucket rights`, `protection`.
    pub subject: &'static str,
    /// What was found, and the fix when there is one.
    pub message: String,
}

fn finding(level: Level, subject: &'static str, message: impl Into<String>) -> Finding {
    Finding {
        level,
        subject,
        message: message.into(),
    }
}

/// What protects the store: a local directory, or a bucket and what was found there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// `file://`.
    Local,
    /// `s3://`.
    Bucket(BucketProtection),
}

/// Asks the store's bucket what protects it and adds the findings to `r`. `store` is the
/// store the other checks opened: its [`ObjectStore::lock_policy`] is the configured
/// `store.lock`.
pub async fn check(cfg: &Config, store: &dyn ObjectStore, r: &mut Report) {
    let spec = cfg.store();
    let place = match StoreUrl::parse(&spec.url) {
        Ok(StoreUrl::File { .. }) => Place::Local,
        // A client of its own for bucket-level requests the store trait does not have; these
        // few requests of a one-shot command are not counted in pgagent_store_requests_total.
        Ok(StoreUrl::S3(loc)) => match S3Store::open(loc, &spec.options()).await {
            Ok(s3) => Place::Bucket(s3.protection().await),
            Err(e) => {
                r.add(Level::Fail, "protection", e.to_string());
                return;
            }
        },
        Err(e) => {
            r.add(Level::Fail, "protection", e.to_string());
            return;
        }
    };
    for f in assess(store.lock_policy(), &place) {
        r.add(f.level, f.subject, f.message);
    }
}

/// The findings for `place` when the store writes under `configured` (`store.lock`).
pub fn assess(configured: Option<LockPolicy>, place: &Place) -> Vec<Finding> {
    let b = match place {
        Place::Local => return local(configured),
        Place::Bucket(b) => b,
    };
    let mut out = vec![
        finding(
            Level::Ok,
            "bucket versioning",
            versioning_text(&b.versioning),
        ),
        lock_finding(configured, &b.lock),
        finding(Level::Ok, "bucket rights", rights_text(b)),
    ];
    out.push(case_finding(configured, b));
    out
}

fn local(configured: Option<LockPolicy>) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(p) = configured {
        out.push(finding(
            Level::Fail,
            "object lock",
            format!(
                "store.lock = {} but a local directory cannot lock what is written; fix: \
                 store.lock = \"off\", or a store in an S3 bucket with Object Lock",
                p.mode
            ),
        ));
    }
    out.push(finding(
        Level::Ok,
        "protection",
        "a local directory: nothing but the host's permissions protects it",
    ));
    out
}

fn versioning_text(v: &Versioning) -> String {
    match v {
        Versioning::Enabled => {
            "enabled: overwrites and deletes keep the versions before them".into()
        }
        Versioning::Suspended => {
            "suspended: new writes replace the version before them, as without versioning".into()
        }
        Versioning::Never => "never enabled".into(),
        Versioning::Unreported(why) => format!("not reported by the service ({why})"),
    }
}

/// `1 day`, `7 days`.
fn days(n: u32) -> String {
    if n == 1 {
        "1 day".into()
    } else {
        format!("{n} days")
    }
}

fn default_text(d: &DefaultRetention) -> String {
    format!("default retention {} {}", d.mode, days(d.days))
}

/// The `object lock` line: what the bucket has, failed when `store.lock` asks for a lock
/// the bucket cannot give, warned when the bucket locks by default behind the store's back.
fn lock_finding(configured: Option<LockPolicy>, lock: &ObjectLock) -> Finding {
    let have = match lock {
        ObjectLock::Enabled { default: Some(d) } => format!("enabled, {}", default_text(d)),
        ObjectLock::Enabled { default: None } => "enabled, no default retention".into(),
        ObjectLock::Absent => "not enabled".into(),
        ObjectLock::Unreported(why) => format!("not reported by the service ({why})"),
    };
    match (configured, lock) {
        (Some(p), ObjectLock::Absent | ObjectLock::Unreported(_)) => finding(
            Level::Fail,
            "object lock",
            format!(
                "{have}, but store.lock = {}: the service refuses every write carrying a lock, \
                 so nothing would be stored; fix: move the store to a bucket created with \
                 Object Lock (or enable it on this bucket, where the service allows: aws s3api \
                 put-object-lock-configuration), or set store.lock = \"off\"",
                p.mode
            ),
        ),
        (None, ObjectLock::Enabled { default: Some(d) }) => finding(
            Level::Warn,
            "object lock",
            format!(
                "{have}, but store.lock is off: S3 refuses a write to such a bucket without \
                 Content-MD5, which pgagent sends only under store.lock; fix: store.lock = \
                 \"{}\" and store.lock_days = {}",
                d.mode, d.days
            ),
        ),
        _ => finding(Level::Ok, "object lock", have),
    }
}

fn probe_text(p: &Probe) -> String {
    match p {
        Probe::Allowed => "allowed".into(),
        Probe::Denied(why) => format!("denied ({why})"),
        Probe::Failed(why) => format!("failed ({why})"),
        Probe::Skipped(why) => format!("not tried: {why}"),
    }
}

fn rights_text(b: &BucketProtection) -> String {
    let r = &b.rights;
    let mut s = format!(
        "put {}; delete {}; delete a version (s3:DeleteObjectVersion) {}; bypass governance \
         retention (s3:BypassGovernanceRetention) {}",
        probe_text(&r.put),
        probe_text(&r.delete),
        probe_text(&r.delete_version),
        probe_text(&r.bypass_governance)
    );
    for note in &b.notes {
        s.push_str("; ");
        s.push_str(note);
    }
    s
}

/// The lock objects get: the configured one when the bucket can give it, else the bucket's
/// default retention.
fn effective_lock(configured: Option<LockPolicy>, lock: &ObjectLock) -> Option<(LockMode, u32)> {
    let ObjectLock::Enabled { default } = lock else {
        return None;
    };
    configured
        .map(|p| (p.mode, p.days))
        .or(default.map(|d| (d.mode, d.days)))
}

const DESTROY: &str = "a writer with these credentials could destroy history";

/// The `protection` line: which case the store is, and whether this host could destroy
/// its history.
fn case_finding(configured: Option<LockPolicy>, b: &BucketProtection) -> Finding {
    let bypass = &b.rights.bypass_governance;
    if let Some((mode, n)) = effective_lock(configured, &b.lock) {
        let case = format!("per-object lock (objects locked {} in {mode})", days(n));
        return match (mode, bypass) {
            (LockMode::Compliance, _) => finding(Level::Ok, "protection", case),
            (LockMode::Governance, Probe::Denied(_)) => finding(
                Level::Ok,
                "protection",
                format!("{case}; these credentials cannot bypass governance retention"),
            ),
            (LockMode::Governance, Probe::Allowed) => finding(
                Level::Warn,
                "protection",
                format!(
                    "{case}, but these credentials may bypass governance retention, so the \
                     lock does not hold against this host: {DESTROY}; fix: compliance mode \
                     (store.lock = \"compliance\"), or credentials without \
                     s3:BypassGovernanceRetention"
                ),
            ),
            (LockMode::Governance, other) => finding(
                Level::Warn,
                "protection",
                format!(
                    "{case}; whether these credentials may bypass governance retention is \
                     unknown (bypass {}); compliance mode holds whatever they may",
                    probe_text(other)
                ),
            ),
        };
    }
    let versioned = b.lock.is_enabled() || b.versioning == Versioning::Enabled;
    if versioned {
        let case = "versioned, no lock: a writer can delete versions";
        let unlocked = if b.lock.is_enabled() {
            " (the bucket has Object Lock, but no default retention and no store.lock \
             locks anything)"
        } else {
            ""
        };
        return match &b.rights.delete_version {
            Probe::Denied(_) => finding(
                Level::Ok,
                "protection",
                format!(
                    "{case}{unlocked}; these credentials may not \
                     (s3:DeleteObjectVersion denied), so older versions outlive them"
                ),
            ),
            Probe::Allowed => finding(
                Level::Warn,
                "protection",
                format!(
                    "{case}{unlocked}; {DESTROY} (s3:DeleteObjectVersion allowed); fix: \
                     Object Lock with store.lock, or credentials without \
                     s3:DeleteObjectVersion"
                ),
            ),
            other => finding(
                Level::Warn,
                "protection",
                format!(
                    "{case}{unlocked}; whether these credentials may is unknown (delete a \
                     version {}); fix: Object Lock with store.lock",
                    probe_text(other)
                ),
            ),
        };
    }
    let why = match (&b.versioning, &b.lock) {
        (Versioning::Suspended, _) => " (versioning suspended)",
        (Versioning::Unreported(_), _) | (_, ObjectLock::Unreported(_)) => {
            " (the service reports no versioning or lock support)"
        }
        _ => "",
    };
    finding(
        Level::Warn,
        "protection",
        format!(
            "no versioning{why}: a writer can overwrite or delete every backup; {DESTROY}; \
             fix: a bucket with Object Lock and store.lock (or at least versioning)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgagent_storage::s3::protection::Rights;

    fn all(p: Probe) -> Rights {
        Rights {
            put: p.clone(),
            delete: p.clone(),
            delete_version: p.clone(),
            bypass_governance: p,
        }
    }

    fn bucket(versioning: Versioning, lock: ObjectLock, rights: Rights) -> Place {
        Place::Bucket(BucketProtection {
            versioning,
            lock,
            rights,
            notes: Vec::new(),
        })
    }

    fn locked(default: Option<(LockMode, u32)>) -> ObjectLock {
        ObjectLock::Enabled {
            default: default.map(|(mode, days)| DefaultRetention { mode, days }),
        }
    }

    fn policy(mode: LockMode, days: u32) -> Option<LockPolicy> {
        Some(LockPolicy { mode, days })
    }

    fn denied() -> Probe {
        Probe::Denied("HTTP 403 AccessDenied".into())
    }

    /// The one finding about `subject`.
    fn about(findings: &[Finding], subject: &str) -> (Level, String) {
        let f: Vec<_> = findings.iter().filter(|f| f.subject == subject).collect();
        assert_eq!(f.len(), 1, "{subject}: {findings:#?}");
        (f[0].level, f[0].message.clone())
    }

    #[test]
    fn a_local_directory_is_protected_by_the_host_alone() {
        let f = assess(None, &Place::Local);
        assert_eq!(
            f,
            [finding(
                Level::Ok,
                "protection",
                "a local directory: nothing but the host's permissions protects it"
            )]
        );
        let f = assess(policy(LockMode::Compliance, 7), &Place::Local);
        assert_eq!(about(&f, "object lock").0, Level::Fail);
    }

    #[test]
    fn no_versioning_lets_a_writer_destroy_every_backup() {
        for versioning in [Versioning::Never, Versioning::Suspended] {
            let f = assess(
                None,
                &bucket(versioning.clone(), ObjectLock::Absent, all(Probe::Allowed)),
            );
            let (level, msg) = about(&f, "protection");
            assert_eq!(level, Level::Warn, "{versioning:?}");
            assert!(
                msg.starts_with("no versioning")
                    && msg.contains("a writer can overwrite or delete every backup")
                    && msg.contains(DESTROY),
                "{msg}"
            );
            assert_eq!(about(&f, "object lock"), (Level::Ok, "not enabled".into()));
        }
    }

    /// Garage and R2 answer GetObjectLockConfiguration with NotImplemented: no lock support
    /// reported, no crash, the store's writes fail only if a lock is configured.
    #[test]
    fn a_service_that_reports_no_lock_support_is_a_bucket_without_versioning() {
        let garage = bucket(
            Versioning::Never,
            ObjectLock::Unreported("HTTP 501 NotImplemented".into()),
            Rights {
                delete_version: Probe::Skipped("the bucket keeps no versions".into()),
                bypass_governance: Probe::Skipped("the bucket has no Object Lock".into()),
                ..all(Probe::Allowed)
            },
        );
        let f = assess(None, &garage);
        let (level, msg) = about(&f, "protection");
        assert_eq!(level, Level::Warn);
        assert!(
            msg.contains("the service reports no versioning or lock support"),
            "{msg}"
        );
        let (level, msg) = about(&f, "object lock");
        assert_eq!(level, Level::Ok);
        assert!(
            msg.contains("not reported by the service (HTTP 501"),
            "{msg}"
        );

        let f = assess(policy(LockMode::Governance, 3), &garage);
        let (level, msg) = about(&f, "object lock");
        assert_eq!(level, Level::Fail);
        assert!(msg.contains("store.lock = governance"), "{msg}");
    }

    #[test]
    fn versions_without_a_lock_hold_only_against_credentials_that_cannot_delete_them() {
        let f = assess(
            None,
            &bucket(Versioning::Enabled, ObjectLock::Absent, all(Probe::Allowed)),
        );
        let (level, msg) = about(&f, "protection");
        assert_eq!(level, Level::Warn);
        assert!(
            msg.starts_with("versioned, no lock: a writer can delete versions")
                && msg.contains(DESTROY)
                && msg.contains("s3:DeleteObjectVersion allowed"),
            "{msg}"
        );
        let rights = Rights {
            delete_version: denied(),
            ..all(Probe::Allowed)
        };
        let f = assess(
            None,
            &bucket(Versioning::Enabled, ObjectLock::Absent, rights),
        );
        let (level, msg) = about(&f, "protection");
        assert_eq!(level, Level::Ok);
        assert!(msg.contains("s3:DeleteObjectVersion denied"), "{msg}");
        // Object Lock without a default and without store.lock locks nothing.
        let f = assess(
            None,
            &bucket(Versioning::Enabled, locked(None), all(Probe::Allowed)),
        );
        let (level, msg) = about(&f, "protection");
        assert_eq!(level, Level::Warn);
        assert!(
            msg.contains("no default retention and no store.lock"),
            "{msg}"
        );
    }

    #[test]
    fn a_compliance_lock_holds_whatever_the_credentials() {
        let f = assess(
            policy(LockMode::Compliance, 30),
            &bucket(Versioning::Enabled, locked(None), all(Probe::Allowed)),
        );
        assert_eq!(
            about(&f, "protection"),
            (
                Level::Ok,
                "per-object lock (objects locked 30 days in compliance)".into()
            )
        );
        assert_eq!(
            about(&f, "object lock"),
            (Level::Ok, "enabled, no default retention".into())
        );
        assert!(f.iter().all(|f| f.level == Level::Ok), "{f:#?}");
        let f = assess(
            policy(LockMode::Compliance, 1),
            &bucket(Versioning::Enabled, locked(None), all(Probe::Allowed)),
        );
        assert!(about(&f, "protection").1.contains("locked 1 day in"));
    }

    #[test]
    fn a_governance_lock_holds_only_against_credentials_that_cannot_bypass_it() {
        let b = bucket(
            Versioning::Enabled,
            locked(Some((LockMode::Governance, 14))),
            all(Probe::Allowed),
        );
        let f = assess(policy(LockMode::Governance, 14), &b);
        let (level, msg) = about(&f, "protection");
        assert_eq!(level, Level::Warn);
        assert!(
            msg.starts_with("per-object lock (objects locked 14 days in governance)")
                && msg.contains("may bypass governance retention")
                && msg.contains("compliance"),
            "{msg}"
        );
        let rights = Rights {
            bypass_governance: denied(),
            ..all(Probe::Allowed)
        };
        let f = assess(
            policy(LockMode::Governance, 14),
            &bucket(Versioning::Enabled, locked(None), rights),
        );
        let (level, msg) = about(&f, "protection");
        assert_eq!(level, Level::Ok);
        assert!(msg.contains("cannot bypass"), "{msg}");
    }

    /// The bucket's default retention locks what pgagent writes even with store.lock off,
    /// but S3 then wants Content-MD5 on every write: warned, with the settings to use.
    #[test]
    fn a_default_retention_without_store_lock_is_warned_with_the_settings_to_use() {
        let f = assess(
            None,
            &bucket(
                Versioning::Enabled,
                locked(Some((LockMode::Compliance, 10))),
                all(Probe::Allowed),
            ),
        );
        let (level, msg) = about(&f, "object lock");
        assert_eq!(level, Level::Warn);
        assert!(
            msg.contains("Content-MD5")
                && msg.contains("store.lock = \"compliance\" and store.lock_days = 10"),
            "{msg}"
        );
        assert_eq!(
            about(&f, "protection"),
            (
                Level::Ok,
                "per-object lock (objects locked 10 days in compliance)".into()
            )
        );
    }

    #[test]
    fn store_lock_on_a_bucket_without_object_lock_fails_with_the_fix() {
        for versioning in [Versioning::Never, Versioning::Enabled] {
            let f = assess(
                policy(LockMode::Compliance, 7),
                &bucket(versioning, ObjectLock::Absent, all(Probe::Allowed)),
            );
            let (level, msg) = about(&f, "object lock");
            assert_eq!(level, Level::Fail);
            assert!(
                msg.starts_with("not enabled, but store.lock = compliance")
                    && msg.contains("refuses every write")
                    && msg.contains("fix: "),
                "{msg}"
            );
            // The case is what the bucket is, not what was asked for.
            assert!(!about(&f, "protection").1.starts_with("per-object lock"));
        }
    }

    #[test]
    fn the_rights_line_names_each_probe_and_what_the_probes_left() {
        let Place::Bucket(mut b) = bucket(
            Versioning::Enabled,
            locked(None),
            Rights {
                bypass_governance: denied(),
                delete_version: Probe::Skipped("no delete marker".into()),
                ..all(Probe::Allowed)
            },
        ) else {
            unreachable!()
        };
        b.notes
            .push("the probe version doctor/x (v1) stays until 2026-01-01T00:01:00Z".into());
        let f = assess(None, &Place::Bucket(b));
        let (level, msg) = about(&f, "bucket rights");
        assert_eq!(level, Level::Ok);
        assert_eq!(
            msg,
            "put allowed; delete allowed; delete a version (s3:DeleteObjectVersion) not \
             tried: no delete marker; bypass governance retention \
             (s3:BypassGovernanceRetention) denied (HTTP 403 AccessDenied); the probe version \
             doctor/x (v1) stays until 2026-01-01T00:01:00Z"
        );
    }
}
