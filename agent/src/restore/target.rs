//! Where a recovery stops: `--target-time`, `--target-xid`, `--target-name`, `--target-lsn`
//! or the end of the WAL, as recovery settings (PostgreSQL docs, "Recovery Target", 20.5.5),
//! and whether a backup that ended at a given time can reach it.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, FixedOffset, NaiveDateTime, SubsecRound, Utc};
use pgagent_protocol::Lsn;
use pgagent_storage::manifest::BackupManifest;

use super::autoconf::quote;

/// A `--target-time` every form of which PostgreSQL reads the same way.
const EXAMPLE: &str = "2026-11-30 05:37:48.984061+00";

/// Date and time layouts `--target-time` accepts, each followed by a zone (`%#z`: `Z`,
/// `+00`, `+05:30`, `-0800`); `%.f` takes any number of fractional digits, or none.
const LAYOUTS: [&str; 4] = [
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
];

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the WAL in the store, on the latest timeline.
    Latest,
    /// `recovery_target_time`: the value written for PostgreSQL (UTC, microseconds,
    /// `2026-11-30 05:37:48.984061+00`) and the same instant.
    Time(String, SystemTime),
    /// `recovery_target_xid`.
    Xid(String),
    /// `recovery_target_name` (a restore point).
    Name(String),
    /// `recovery_target_lsn`.
    Lsn(Lsn),
}

impl RecoveryTarget {
    /// How a restore or a drill names this target: `time …`, `xid …`, `the end of the WAL
    /// in the store`.
    pub fn describe(&self) -> String {
        match self {
            RecoveryTarget::Latest => "the end of the WAL in the store".into(),
            RecoveryTarget::Time(s, _) => format!("time {s}"),
            RecoveryTarget::Xid(x) => format!("xid {x}"),
            RecoveryTarget::Name(n) => format!("restore point {n:?}"),
            RecoveryTarget::Lsn(l) => format!("LSN {l}"),
        }
    }

    /// Parses `--target-time`: a timestamp with an explicit zone, as `recovery_target_time`
    /// reads one (PostgreSQL docs, "Date/Time Input", 8.5.1): a space or `T` between date
    /// and time, optional seconds and fractional seconds, then `Z`, `UTC`, `+00`, `+05:30`,
    /// `-0800` or `+0530` (a space before the zone is allowed). `select now()` output is
    /// accepted as printed. Fractions finer than PostgreSQL's microsecond are rounded to it,
    /// as PostgreSQL does.
    ///
    /// Errors: no zone (the instant would depend on the server's `TimeZone`), or not a
    /// timestamp; the message shows an accepted form.
    pub fn time(text: &str) -> anyhow::Result<RecoveryTarget> {
        let at = parse_time(text)?;
        Ok(RecoveryTarget::Time(
            at.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            SystemTime::from(at),
        ))
    }

    /// Whether a recovery from `m` can stop at this target: the backup must have ended
    /// before it (a recovery cannot stop before the backup's stop LSN).
    pub(super) fn reachable_from(&self, m: &BackupManifest) -> bool {
        match self {
            RecoveryTarget::Time(_, t) => m
                .finished_at
                .as_deref()
                .and_then(latest_instant)
                .is_some_and(|f| f <= *t),
            RecoveryTarget::Lsn(l) => m.stop().ok().flatten().is_some_and(|(s, _)| s <= *l),
            RecoveryTarget::Latest | RecoveryTarget::Xid(_) | RecoveryTarget::Name(_) => true,
        }
    }

    /// The recovery settings for this target (without `restore_command`), as
    /// `postgresql.auto.conf` lines.
    pub fn settings(&self, action: &str) -> Vec<String> {
        let mut lines = vec!["recovery_target_timeline = 'latest'".to_string()];
        let target = match self {
            RecoveryTarget::Latest => None,
            RecoveryTarget::Time(t, _) => Some(format!("recovery_target_time = {}", quote(t))),
            RecoveryTarget::Xid(x) => Some(format!("recovery_target_xid = {}", quote(x))),
            RecoveryTarget::Name(n) => Some(format!("recovery_target_name = {}", quote(n))),
            RecoveryTarget::Lsn(l) => Some(format!("recovery_target_lsn = '{l}'")),
        };
        if let Some(t) = target {
            lines.push(t);
            lines.push(format!("recovery_target_action = {}", quote(action)));
        }
        lines
    }
}

/// The instant `text` names, in UTC, rounded to microseconds (see [`RecoveryTarget::time`]).
fn parse_time(text: &str) -> anyhow::Result<DateTime<Utc>> {
    let trimmed = text.trim();
    // `UTC` is the one zone name accepted; `%#z` reads `Z` and numeric offsets.
    let zoned = match trimmed
        .len()
        .checked_sub(3)
        .map(|i| trimmed.split_at_checked(i))
    {
        Some(Some((head, zone))) if zone.eq_ignore_ascii_case("utc") => {
            format!("{}Z", head.trim_end())
        }
        _ => trimmed.to_string(),
    };
    for layout in LAYOUTS {
        if let Ok(at) = DateTime::<FixedOffset>::parse_from_str(&zoned, &format!("{layout}%#z")) {
            return Ok(at.with_timezone(&Utc).round_subsecs(6));
        }
    }
    if LAYOUTS
        .iter()
        .any(|l| NaiveDateTime::parse_from_str(trimmed, l).is_ok())
    {
        anyhow::bail!(
            "--target-time {text:?} has no time zone, so the server's TimeZone setting would decide \
             which instant it is; add one, e.g. {EXAMPLE} or 2026-11-30T05:37:48Z"
        );
    }
    anyhow::bail!(
        "--target-time {text:?} is not a timestamp with a time zone; use e.g. {EXAMPLE} \
         (as select now() prints it) or 2026-11-30T05:37:48Z"
    )
}

/// The latest instant an RFC 3339 time recorded by a backup can stand for: a time written to
/// the second (as before fractions were recorded) may be up to a second later than it says.
/// `None` when `text` is not RFC 3339.
pub(super) fn latest_instant(text: &str) -> Option<SystemTime> {
    let at = humantime::parse_rfc3339(text).ok()?;
    let to_the_second = !text.contains('.');
    Some(match to_the_second {
        true => at + Duration::from_secs(1) - Duration::from_nanos(1),
        false => at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(text: &str) -> String {
        match RecoveryTarget::time(text).unwrap() {
            RecoveryTarget::Time(w, _) => w,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn postgres_timestamps_with_a_zone_are_accepted() {
        for (given, expected) in [
            // `select now()` output, as printed with TimeZone = UTC.
            (
                "2026-11-30 05:37:48.984061+00",
                "2026-11-30 05:37:48.984061+00",
            ),
            ("2026-11-30T05:37:48Z", "2026-11-30 05:37:48.000000+00"),
            ("2026-11-30T05:37:48z", "2026-11-30 05:37:48.000000+00"),
            ("2026-11-30 05:37:48.5Z", "2026-11-30 05:37:48.500000+00"),
            ("2026-11-30 11:07:48+05:30", "2026-11-30 05:37:48.000000+00"),
            ("2026-11-30 11:07:48+0530", "2026-11-30 05:37:48.000000+00"),
            (
                "2026-11-29 21:37:48.000001-0800",
                "2026-11-30 05:37:48.000001+00",
            ),
            ("2026-11-29 21:37:48-08", "2026-11-30 05:37:48.000000+00"),
            ("2026-11-30 05:37:48 +00", "2026-11-30 05:37:48.000000+00"),
            ("2026-11-30 05:37:48 UTC", "2026-11-30 05:37:48.000000+00"),
            ("2026-11-30 05:37+00", "2026-11-30 05:37:00.000000+00"),
            ("  2026-11-30T05:37:48Z ", "2026-11-30 05:37:48.000000+00"),
            // Finer than a microsecond: rounded, as PostgreSQL rounds its input.
            (
                "2026-11-30 05:37:48.9999996Z",
                "2026-11-30 05:37:49.000000+00",
            ),
        ] {
            assert_eq!(written(given), expected, "{given}");
        }
    }

    #[test]
    fn the_instant_keeps_microseconds() {
        let RecoveryTarget::Time(_, t) =
            RecoveryTarget::time("2026-11-30 05:37:48.984061+00").unwrap()
        else {
            unreachable!()
        };
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(since.subsec_micros(), 984_061);
        assert_eq!(
            t,
            humantime::parse_rfc3339("2026-11-30T05:37:48.984061Z").unwrap()
        );
    }

    #[test]
    fn a_time_without_a_zone_or_a_bad_one_is_refused_with_an_example() {
        for text in ["2026-11-30 05:37:48", "2026-11-30T05:37:48.984061"] {
            let e = RecoveryTarget::time(text).unwrap_err().to_string();
            assert!(
                e.contains("no time zone") && e.contains(EXAMPLE),
                "{text}: {e}"
            );
        }
        for text in [
            "yesterday",
            "",
            "2026-11-30",
            "2026-13-30 05:37:48Z",
            "2026-11-30 05:37:48 CET",
            "2026-11-30 05:37:48+5",
            "1764481068",
            "ééé",
            "2026-11-30 05:37:48 ü",
        ] {
            let e = RecoveryTarget::time(text).unwrap_err().to_string();
            assert!(e.contains(EXAMPLE), "{text}: {e}");
        }
    }

    #[test]
    fn target_settings() {
        let t = RecoveryTarget::time("2026-11-21T10:54:32Z").unwrap();
        assert_eq!(
            t.settings("promote"),
            [
                "recovery_target_timeline = 'latest'",
                "recovery_target_time = '2026-11-21 10:54:32.000000+00'",
                "recovery_target_action = 'promote'"
            ]
        );
        assert_eq!(RecoveryTarget::Latest.settings("promote").len(), 1);
        let n = RecoveryTarget::Name("it's".into()).settings("pause");
        assert_eq!(n[1], "recovery_target_name = 'it''s'");
    }

    #[test]
    fn a_backup_reaches_targets_after_it_ended_to_the_microsecond() {
        let at = |t: &str| RecoveryTarget::time(t).unwrap();
        let ended = |finished: &str| BackupManifest {
            status: pgagent_storage::manifest::BackupStatus::Complete,
            start_lsn: "0/2000028".into(),
            start_timeline: 1,
            stop_lsn: Some("0/2000100".into()),
            stop_timeline: Some(1),
            started_at: "2026-11-30T05:37:40Z".into(),
            finished_at: Some(finished.into()),
            ..BackupManifest::announced("b")
        };
        let precise = ended("2026-11-30T05:37:48.500000Z");
        assert!(at("2026-11-30 05:37:48.500000+00").reachable_from(&precise));
        assert!(at("2026-11-30 05:37:48.600000+00").reachable_from(&precise));
        assert!(!at("2026-11-30 05:37:48.499999+00").reachable_from(&precise));
        // Recorded to the second: it may have ended as late as the end of that second.
        let coarse = ended("2026-11-30T05:37:48Z");
        assert!(!at("2026-11-30 05:37:48.300000+00").reachable_from(&coarse));
        assert!(at("2026-11-30 05:37:49+00").reachable_from(&coarse));
        assert!(!at("2026-11-30 05:37:49+00").reachable_from(&ended("not a time")));
    }
}
