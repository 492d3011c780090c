//! Cron schedules (`backup.schedule` and each store's `schedule`, `zfs.snapshot_schedule`):
//! parsing and the loop that runs a job at each time, once for all the schedules due then.
//! The jobs themselves are started by the daemon (`daemon::schedules`).
//!
//! Five fields (minute hour day-of-month month day-of-week, UTC) or six with seconds first;
//! an empty schedule disables it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use tokio_util::sync::CancellationToken;

/// A schedule that does not parse: the key, the value and why, as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(pub String);

/// Parses the schedule of configuration key `key`; `None` when it is empty.
///
/// Errors: [`ScheduleError`] naming the key.
pub fn parse(key: &str, schedule: &str) -> Result<Option<Cron>, ScheduleError> {
    if schedule.trim().is_empty() {
        return Ok(None);
    }
    Cron::new(schedule)
        .with_seconds_optional()
        .parse()
        .map(Some)
        .map_err(|e| ScheduleError(format!("{key} = {schedule:?}: {e}")))
}

/// The first time after `now` the schedule fires.
pub fn next_after(cron: &Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&now, false).ok()
}

/// The longest time between two consecutive fires of `cron` among its next `fires` times
/// after `from`: the interval a retention of "N backups" spans at most, N times over.
/// `None` when it fires fewer than twice.
pub fn longest_gap(cron: &Cron, from: DateTime<Utc>, fires: usize) -> Option<Duration> {
    let mut prev = next_after(cron, from)?;
    let mut longest: Option<Duration> = None;
    for _ in 1..fires {
        let Some(next) = next_after(cron, prev) else {
            break;
        };
        let gap = (next - prev).to_std().unwrap_or_default();
        longest = Some(longest.map_or(gap, |l| l.max(gap)));
        prev = next;
    }
    longest
}

/// The next time after `now` at which any of `crons` fires, with the indices (in `crons`)
/// of every schedule that fires at that time; `None` when none fires again.
pub fn next_due(crons: &[Cron], now: DateTime<Utc>) -> Option<(DateTime<Utc>, Vec<usize>)> {
    let times: Vec<Option<DateTime<Utc>>> = crons.iter().map(|c| next_after(c, now)).collect();
    let first = times.iter().flatten().min().copied()?;
    let due = times
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == Some(first))
        .map(|(i, _)| i)
        .collect();
    Some((first, due))
}

/// Runs `job` at each time of `cron` (UTC) until `shutdown`; `what` names the job in
/// logs. A job still running at its next time delays that run; it is not stacked.
pub async fn every<F, Fut>(cron: Cron, what: &str, shutdown: CancellationToken, mut job: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    every_due(vec![cron], what, shutdown, |_| job()).await;
}

/// Runs `job` at each time any of `crons` fires (UTC) until `shutdown`, once for all the
/// schedules that fire at that time, passing their indices in `crons` ([`next_due`]);
/// `what` names the job in logs. A job still running at its next time delays that run; it
/// is not stacked.
pub async fn every_due<F, Fut>(
    crons: Vec<Cron>,
    what: &str,
    shutdown: CancellationToken,
    mut job: F,
) where
    F: FnMut(Vec<usize>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let now = Utc::now();
        let Some((next, due)) = next_due(&crons, now) else {
            tracing::warn!("the schedule of {what} never fires again");
            return;
        };
        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
        tracing::debug!(%next, "next scheduled {what}");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = job(due) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn five_and_six_fields_and_empty() {
        let daily = parse("k", "0 3 * * *").unwrap().unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap();
        assert_eq!(
            next_after(&daily, now),
            Some(Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap())
        );
        let often = parse("k", "*/5 * * * * *").unwrap().unwrap();
        assert_eq!(
            next_after(&often, now),
            Some(Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 5).unwrap())
        );
        assert!(parse("k", "").unwrap().is_none());
        assert!(parse("k", "61 * * * *").is_err());
        assert!(parse("k", "every day").is_err());
    }

    /// Daily at 03:00 and weekly on Sunday at 03:00: on a Sunday both are due at once (one
    /// backup for both), on other days the daily one alone.
    #[test]
    fn schedules_due_at_the_same_time_come_together() {
        let daily = parse("k", "0 3 * * *").unwrap().unwrap();
        let weekly = parse("k", "0 3 * * 0").unwrap().unwrap();
        let monthly = parse("k", "30 4 1 * *").unwrap().unwrap();
        let crons = [daily, weekly, monthly];
        // Saturday 2026-11-21 10:00: Sunday 03:00 is next, for the daily and the weekly.
        let sat = Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap();
        let sun = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
        assert_eq!(next_due(&crons, sat), Some((sun, vec![0, 1])));
        let mon = Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap();
        assert_eq!(next_due(&crons, sun), Some((mon, vec![0])));
        // The monthly one, at a time of its own.
        let nov30 = Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0).unwrap();
        let dec1 = Utc.with_ymd_and_hms(2026, 12, 1, 3, 0, 0).unwrap();
        assert_eq!(next_due(&crons, nov30), Some((dec1, vec![0])));
        let dec1_later = Utc.with_ymd_and_hms(2026, 12, 1, 4, 30, 0).unwrap();
        assert_eq!(next_due(&crons, dec1), Some((dec1_later, vec![2])));
        assert_eq!(next_due(&[], sat), None);
    }
}
