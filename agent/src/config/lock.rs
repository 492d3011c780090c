//! `store.lock` and `store.lock_days`: S3 Object Lock on everything a store is written, and
//! how long, by default, retention can need an object.
//!
//! The default `lock_days` covers the longest time `pgagent prune` keeps what a backup
//! needs, plus a margin:
//!
//! ```text
//! span     = max(keep_backups × interval, keep_days)  (+ max_chain × interval with incremental backups:
//!                                                       a kept backup keeps its whole chain)
//! lock_days = ⌈(span + 7 days) × 8/7⌉
//! ```
//!
//! `interval` is the longest gap between two runs of the store's backup schedule. The WAL a
//! kept backup needs is written after the backup starts, so it is locked at least as long
//! as the backup's chunks. The 7 days are the margin: a backup or two that failed, and the
//! time to notice. The 8/7 is the renewal window ([`LockPolicy::renew_window`]): a chunk
//! older backups share is extended only when less than 7/8 of `lock_days` remains, so each
//! backup's chunks are guaranteed 7/8 of `lock_days` from its start.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use pgagent_storage::{LockMode, LockPolicy};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `store.lock` as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockSetting {
    /// Objects are written without a lock (the bucket's default retention, if any, applies).
    #[default]
    Off,
    /// `GOVERNANCE` mode: principals allowed to bypass governance retention can still
    /// remove versions.
    Governance,
    /// `COMPLIANCE` mode: nobody can remove a version before its date.
    Compliance,
}

impl LockSetting {
    /// The S3 mode, `None` for `off`.
    pub fn mode(self) -> Option<LockMode> {
        match self {
            LockSetting::Off => None,
            LockSetting::Governance => Some(LockMode::Governance),
            LockSetting::Compliance => Some(LockMode::Compliance),
        }
    }
}

/// The margin `lock_days` adds to what retention needs.
pub const LOCK_MARGIN: Duration = Duration::from_secs(7 * 86_400);

/// What one store's retention keeps, for the default `lock_days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSpan<'a> {
    /// `keep_backups` of the store.
    pub keep_backups: usize,
    /// `backup.keep_days` (0: none).
    pub keep_days: u64,
    /// The store's backup schedule (cron, UTC); empty: none.
    pub schedule: &'a str,
    /// `backup.max_chain` when incremental backups are on, else 0.
    pub max_chain: u32,
}

/// The default `lock_days` for `r` (see the module docs).
///
/// Errors: the schedule is empty or fires less than twice (the interval is unknown: set
/// `lock_days`).
pub fn default_lock_days(r: &RetentionSpan<'_>) -> Result<u32, ConfigError> {
    let unknown = || {
        ConfigError(
            "store.lock is on and store.lock_days is not set, and without a backup schedule \
             that repeats the time retention keeps a backup is unknown: set store.lock_days"
                .into(),
        )
    };
    let cron = crate::schedule::parse("schedule", r.schedule)
        .map_err(|e| ConfigError(e.0))?
        .ok_or_else(unknown)?;
    // A fixed start keeps the default the same whenever the configuration is read.
    let from = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date");
    let interval = crate::schedule::longest_gap(&cron, from, 800).ok_or_else(unknown)?;
    let backups = r.keep_backups as u32 + r.max_chain;
    let span = (interval * backups).max(Duration::from_secs(r.keep_days * 86_400));
    let need = (span + LOCK_MARGIN).as_secs_f64() / 86_400.0;
    Ok((need * 8.0 / 7.0).ceil() as u32)
}

/// The lock policy of a store: `None` with `lock = off`; `lock_days` as given, else
/// [`default_lock_days`].
///
/// Errors: `lock_days` = 0 or given with `lock = off`, a `file://` store with a lock, and
/// those of [`default_lock_days`].
pub fn policy(
    setting: LockSetting,
    lock_days: Option<u32>,
    is_s3: bool,
    retention: &RetentionSpan<'_>,
) -> Result<Option<LockPolicy>, ConfigError> {
    let Some(mode) = setting.mode() else {
        if let Some(d) = lock_days {
            return Err(ConfigError(format!(
                "store.lock_days = {d} is set but store.lock is off: set store.lock = \
                 \"governance\" or \"compliance\", or remove lock_days"
            )));
        }
        return Ok(None);
    };
    if !is_s3 {
        return Err(ConfigError(
            "store.lock needs an S3 bucket with Object Lock; a file:// store has none \
             (see docs/security.md for what protects a local store)"
                .into(),
        ));
    }
    let days = match lock_days {
        Some(0) => return Err(ConfigError("store.lock_days must be at least 1".into())),
        Some(d) => d,
        None => default_lock_days(retention)?,
    };
    Ok(Some(LockPolicy { mode, days }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daily(keep_backups: usize, max_chain: u32) -> RetentionSpan<'static> {
        RetentionSpan {
            keep_backups,
            keep_days: 0,
            schedule: "0 3 * * *",
            max_chain,
        }
    }

    #[test]
    fn the_default_covers_retention_the_margin_and_the_renewal_window() {
        // 7 daily backups: 7 + 7 days, × 8/7 = 16.
        assert_eq!(default_lock_days(&daily(7, 0)).unwrap(), 16);
        // With chains of up to 6 incrementals a kept backup may hang on a full one 13 days old.
        assert_eq!(default_lock_days(&daily(7, 6)).unwrap(), 23);
        // keep_days wins when it is longer.
        let r = RetentionSpan {
            keep_days: 30,
            ..daily(7, 0)
        };
        assert_eq!(default_lock_days(&r).unwrap(), 43);
        // Weekly backups, 4 kept: 28 + 7 days.
        let weekly = RetentionSpan {
            schedule: "0 3 * * 0",
            ..daily(4, 0)
        };
        assert_eq!(default_lock_days(&weekly).unwrap(), 40);
        // The guarantee (7/8 of it) covers the span and the margin.
        for r in [daily(7, 0), daily(7, 6), weekly] {
            let days = default_lock_days(&r).unwrap();
            let p = LockPolicy {
                mode: LockMode::Compliance,
                days,
            };
            let span_days = (r.keep_backups as u64 + u64::from(r.max_chain))
                * if r.schedule.ends_with('0') { 7 } else { 1 };
            assert!(
                (p.period() - p.renew_window()).as_secs() >= (span_days + 7) * 86_400,
                "{r:?}"
            );
        }
    }

    #[test]
    fn a_lock_without_a_schedule_needs_lock_days() {
        let r = RetentionSpan {
            schedule: "",
            ..daily(7, 0)
        };
        let e = default_lock_days(&r).unwrap_err();
        assert!(e.0.contains("set store.lock_days"), "{e}");
        let p = policy(LockSetting::Compliance, Some(30), true, &r).unwrap();
        assert_eq!(
            p,
            Some(LockPolicy {
                mode: LockMode::Compliance,
                days: 30
            })
        );
    }

    #[test]
    fn lock_settings_that_cannot_work_are_refused() {
        let r = daily(7, 0);
        assert_eq!(policy(LockSetting::Off, None, true, &r).unwrap(), None);
        let e = policy(LockSetting::Off, Some(3), true, &r).unwrap_err();
        assert!(e.0.contains("store.lock is off"), "{e}");
        let e = policy(LockSetting::Governance, None, false, &r).unwrap_err();
        assert!(e.0.contains("file:// store"), "{e}");
        let e = policy(LockSetting::Governance, Some(0), true, &r).unwrap_err();
        assert!(e.0.contains("at least 1"), "{e}");
        assert_eq!(
            policy(LockSetting::Governance, None, true, &r).unwrap(),
            Some(LockPolicy {
                mode: LockMode::Governance,
                days: 16
            })
        );
    }
}
