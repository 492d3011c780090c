//! Which snapshots to keep: the newest of each of the last `hourly` hours, `daily` days and
//! `weekly` weeks (UTC; weeks start on Monday) that have a snapshot, and always the newest
//! one. The periods overlap: a snapshot kept as an hourly one may also be the daily one.

use std::collections::BTreeSet;

/// How many periods of each kind keep a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Hours.
    pub hourly: usize,
    /// Days.
    pub daily: usize,
    /// Weeks.
    pub weekly: usize,
}

/// The ids to keep among `snapshots` (id, seconds since the Unix epoch).
pub fn keep(snapshots: &[(String, i64)], policy: Policy) -> BTreeSet<String> {
    let mut newest_first: Vec<&(String, i64)> = snapshots.iter().collect();
    newest_first.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut kept = BTreeSet::new();
    if let Some(first) = newest_first.first() {
        kept.insert(first.0.clone());
    }
    // A period number for each kind: hours and days since the epoch; weeks since the
    // Monday before it (1970-01-01 was a Thursday).
    type Period = fn(i64) -> i64;
    let periods: [(usize, Period); 3] = [
        (policy.hourly, |t| t.div_euclid(3600)),
        (policy.daily, |t| t.div_euclid(86_400)),
        (policy.weekly, |t| (t.div_euclid(86_400) + 3).div_euclid(7)),
    ];
    for (count, period) in periods {
        let mut seen = BTreeSet::new();
        for (id, t) in &newest_first {
            if seen.len() >= count {
                break;
            }
            if seen.insert(period(*t)) {
                kept.insert(id.clone());
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;
    const D: i64 = 86_400;
    // 2026-11-16 00:00:00 UTC, a Monday.
    const MONDAY: i64 = 1_794_787_200;

    fn snaps(times: &[i64]) -> Vec<(String, i64)> {
        times.iter().map(|t| (format!("s{t}"), *t)).collect()
    }

    #[test]
    fn newest_of_each_hour() {
        let s = snaps(&[
            MONDAY,
            MONDAY + 60,
            MONDAY + H,
            MONDAY + H + 60,
            MONDAY + 2 * H + 5,
        ]);
        let k = keep(
            &s,
            Policy {
                hourly: 2,
                daily: 0,
                weekly: 0,
            },
        );
        let want: BTreeSet<String> = [MONDAY + 2 * H + 5, MONDAY + H + 60]
            .iter()
            .map(|t| format!("s{t}"))
            .collect();
        assert_eq!(k, want);
    }

    #[test]
    fn days_and_weeks_overlap_hours() {
        // One snapshot every 6 hours for 15 days.
        let s = snaps(&(0..60).map(|i| MONDAY + i * 6 * H).collect::<Vec<_>>());
        let k = keep(
            &s,
            Policy {
                hourly: 4,
                daily: 3,
                weekly: 3,
            },
        );
        let newest = MONDAY + 59 * 6 * H;
        // 4 newest (each its own hour, all on Monday the 30th); days: +2, 18:00 of the 29th
        // and the 28th; weeks: this week's and last week's newest are kept already, +1 for the
        // week before (Sunday the 22nd, 18:00 = MONDAY + 6 D + 18 H).
        assert!(k.contains(&format!("s{newest}")));
        assert!(k.contains(&format!("s{}", MONDAY + 6 * D + 18 * H)));
        assert_eq!(k.len(), 4 + 2 + 1, "{k:?}");
    }

    #[test]
    fn the_newest_is_always_kept() {
        let s = snaps(&[MONDAY, MONDAY + D]);
        assert_eq!(
            keep(
                &s,
                Policy {
                    hourly: 0,
                    daily: 0,
                    weekly: 0
                }
            )
            .len(),
            1
        );
        assert!(keep(
            &[],
            Policy {
                hourly: 3,
                daily: 3,
                weekly: 3
            }
        )
        .is_empty());
    }
}
