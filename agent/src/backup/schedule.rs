//! Base backups on a schedule inside `pgagent run` (`backup.schedule`, cron syntax).
//!
//! Five fields (minute hour day-of-month month day-of-week, UTC) or six with seconds first;
//! an empty schedule disables it. A scheduled backup that fails is logged and counted; the
//! next one is taken at its time. A backup started by hand (`pgagent backup`) while a
//! scheduled one runs is refused by the backup lock, and the other way round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use croner::Cron;
use tokio_util::sync::CancellationToken;

use super::take::{take_backup, BackupRequest};
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;

/// Parses the schedule of configuration key `key`; `None` when it is empty.
///
/// Errors: [`ConfigError`] naming the key.
pub fn parse(key: &str, schedule: &str) -> Result<Option<Cron>, ConfigError> {
    if schedule.trim().is_empty() {
        return Ok(None);
    }
    Cron::new(schedule)
        .with_seconds_optional()
        .parse()
        .map(Some)
        .map_err(|e| ConfigError(format!("{key} = {schedule:?}: {e}")))
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

/// Takes a backup at each time of the schedule until `shutdown`.
pub async fn run(cfg: Config, cron: Cron, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    every(cron, "base backup", shutdown, || async {
        let started = Instant::now();
        let req = BackupRequest {
            fast: false,
            wal_wait: Some(cfg.raw.backup.wal_timeout),
        };
        match take_backup(&cfg, &req).await {
            Ok(m) if m.status == pgagent_storage::manifest::BackupStatus::Complete => {
                metrics
                    .backup_duration_seconds
                    .set(started.elapsed().as_secs_f64());
                metrics
                    .backup_last_success_timestamp_seconds
                    .set(Utc::now().timestamp() as f64);
                let s = m.stats;
                if s.chunks > 0 {
                    metrics
                        .backup_dedup_ratio
                        .set(1.0 - s.new_chunks as f64 / s.chunks as f64);
                }
            }
            Ok(m) => tracing::warn!(
                id = m.id,
                "scheduled base backup not complete: its WAL did not reach the store"
            ),
            Err(e) => tracing::error!("scheduled base backup failed: {e:#}"),
        }
    })
    .await;
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
