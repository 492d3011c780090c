//! Cron schedules (`backup.schedule`, `zfs.snapshot_schedule`): parsing and the loop that
//! runs a job at each time. The jobs themselves are started by the daemon
//! (`daemon::schedules`).
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

/// Runs `job` at each time of `cron` (UTC) until `shutdown`; `what` names the job in
/// logs. A job still running at its next time delays that run; it is not stacked.
pub async fn every<F, Fut>(cron: Cron, what: &str, shutdown: CancellationToken, mut job: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let now = Utc::now();
        let Some(next) = next_after(&cron, now) else {
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
            () = job() => {}
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
}
