//! Alert hooks: `alerts.on_failure` runs once when an incident starts, `alerts.on_recovery`
//! once when it ends, each with the event in environment variables.
//!
//! An incident is any of: not connected to PostgreSQL, RPO above `metrics.max_rpo_seconds`,
//! staging at its quota or its disk full, a gap in the bucket's WAL. It starts once a problem has lasted `alerts.grace` and ends when
//! none is left. Failure hooks are rate-limited: a new incident within `alerts.min_interval`
//! of the last reported one is logged, not reported (nor is its recovery). [`Incidents`] is
//! the pure state machine; [`run_hook`] the process at the edge.

use std::time::{Duration, Instant};

use pgagent_storage::drill::DrillReport;

use crate::statusfile::DaemonStatus;

/// Why the daemon is unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    /// The replication connection is down.
    Disconnected,
    /// Received WAL has waited longer than the RPO bound for the store.
    RpoHigh,
    /// Staging reached its quota, or its disk is full; the slot holds WAL on the server.
    StagingFull,
    /// WAL is missing from the bucket and gone from the server.
    WalGap,
}

impl Problem {
    /// The name in `PGAGENT_EVENT_REASON`.
    pub fn name(self) -> &'static str {
        match self {
            Problem::Disconnected => "disconnected",
            Problem::RpoHigh => "rpo",
            Problem::StagingFull => "staging_full",
            Problem::WalGap => "wal_gap",
        }
    }
}

/// The problems in a published status.
pub fn problems(s: &DaemonStatus, max_rpo_seconds: f64) -> Vec<Problem> {
    let mut p = Vec::new();
    if !s.connected {
        p.push(Problem::Disconnected);
    }
    if s.rpo_seconds > max_rpo_seconds {
        p.push(Problem::RpoHigh);
    }
    if s.staging_full {
        p.push(Problem::StagingFull);
    }
    if s.wal_gap.is_some() {
        p.push(Problem::WalGap);
    }
    p
}

/// What a hook is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// An incident started.
    Failure,
    /// The reported incident ended.
    Recovery,
}

/// One event for a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Failure or recovery.
    pub kind: EventKind,
    /// The problems (for a recovery: those of the incident).
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Healthy,
    Failing {
        since: Instant,
        /// The failure hook ran for this incident.
        reported: bool,
        /// Rate-limited: this incident is never reported.
        suppressed: bool,
        seen: Vec<Problem>,
    },
}

/// Incident tracking over successive observations.
#[derive(Debug)]
pub struct Incidents {
    grace: Duration,
    min_interval: Duration,
    state: State,
    last_reported: Option<Instant>,
}

impl Incidents {
    /// A tracker: problems must last `grace` to be an incident; failure reports are at
    /// least `min_interval` apart.
    pub fn new(grace: Duration, min_interval: Duration) -> Incidents {
        Incidents {
            grace,
            min_interval,
            state: State::Healthy,
            last_reported: None,
        }
    }

    /// Takes the problems seen at `now` and returns the event to report, if any.
    pub fn observe(&mut self, problems: &[Problem], now: Instant) -> Option<Event> {
        match &mut self.state {
            State::Healthy if problems.is_empty() => None,
            State::Healthy => {
                self.state = State::Failing {
                    since: now,
                    reported: false,
                    suppressed: false,
                    seen: problems.to_vec(),
                };
                self.observe_failing(now)
            }
            State::Failing { reported, seen, .. } if problems.is_empty() => {
                let event = reported.then(|| Event {
                    kind: EventKind::Recovery,
                    problems: seen.clone(),
                });
                self.state = State::Healthy;
                event
            }
            State::Failing { seen, .. } => {
                for p in problems {
                    if !seen.contains(p) {
                        seen.push(*p);
                    }
                }
                seen.sort();
                self.observe_failing(now)
            }
        }
    }

    fn observe_failing(&mut self, now: Instant) -> Option<Event> {
        let State::Failing {
            since,
            reported,
            suppressed,
            seen,
        } = &mut self.state
        else {
            return None;
        };
        if *reported || *suppressed || now.duration_since(*since) < self.grace {
            return None;
        }
        if self
            .last_reported
            .is_some_and(|t| now.duration_since(t) < self.min_interval)
        {
            // Rate-limited: this incident stays unreported (and so does its recovery).
            tracing::warn!(problems = ?seen, "incident not reported: within alerts.min_interval of the last one");
            *suppressed = true;
            return None;
        }
        *reported = true;
        self.last_reported = Some(now);
        Some(Event {
            kind: EventKind::Failure,
            problems: seen.clone(),
        })
    }
}

/// The environment a hook runs with: `PGAGENT_EVENT` (`failure`/`recovery`),
/// `PGAGENT_EVENT_REASON` (comma-separated problems), `PGAGENT_EVENT_MESSAGE`, the lags
/// (`PGAGENT_RPO_SECONDS`, `PGAGENT_UPLOAD_LAG_BYTES`), positions and the last error.
pub fn hook_env(e: &Event, s: &DaemonStatus) -> Vec<(&'static str, String)> {
    let kind = match e.kind {
        EventKind::Failure => "failure",
        EventKind::Recovery => "recovery",
    };
    let reasons: Vec<&str> = e.problems.iter().map(|p| p.name()).collect();
    let message = match e.kind {
        EventKind::Failure => format!(
            "pgagent: {} (RPO {:.0} s, {} bytes not in the store){}",
            reasons.join(", "),
            s.rpo_seconds,
            s.upload_lag_bytes,
            s.last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        ),
        EventKind::Recovery => format!(
            "pgagent: recovered from {} (RPO {:.0} s)",
            reasons.join(", "),
            s.rpo_seconds
        ),
    };
    vec![
        ("PGAGENT_EVENT", kind.to_string()),
        ("PGAGENT_EVENT_REASON", reasons.join(",")),
        ("PGAGENT_EVENT_MESSAGE", message),
        ("PGAGENT_RPO_SECONDS", format!("{:.1}", s.rpo_seconds)),
        ("PGAGENT_UPLOAD_LAG_BYTES", s.upload_lag_bytes.to_string()),
        ("PGAGENT_RECEIVED_LSN", s.received_lsn.clone()),
        ("PGAGENT_UPLOADED_LSN", s.uploaded_lsn.clone()),
        (
            "PGAGENT_LAST_ERROR",
            s.last_error.clone().unwrap_or_default(),
        ),
        ("PGAGENT_SYSTEM_IDENTIFIER", s.system_identifier.clone()),
    ]
}

/// The environment of `alerts.on_failure` for a failed drill: `PGAGENT_EVENT=failure`,
/// `PGAGENT_EVENT_REASON=drill`, `PGAGENT_EVENT_MESSAGE` naming the failed checks,
/// `PGAGENT_DRILL_ID`, and `PGAGENT_DRILL_FAILED_CHECKS` (comma-separated).
pub fn drill_hook_env(r: &DrillReport) -> Vec<(&'static str, String)> {
    let failed: Vec<String> = r
        .failed()
        .map(|c| {
            format!(
                "{}: {}",
                c.name,
                c.detail.lines().next().unwrap_or_default()
            )
        })
        .collect();
    let names: Vec<&str> = r.failed().map(|c| c.name.as_str()).collect();
    vec![
        ("PGAGENT_EVENT", "failure".to_string()),
        ("PGAGENT_EVENT_REASON", "drill".to_string()),
        (
            "PGAGENT_EVENT_MESSAGE",
            format!("pgagent: drill {} failed: {}", r.id, failed.join("; ")),
        ),
        ("PGAGENT_DRILL_ID", r.id.clone()),
        ("PGAGENT_DRILL_FAILED_CHECKS", names.join(",")),
    ]
}

/// Runs `command` with `sh -c` and `env`, killing it after `timeout`; logs the outcome.
pub async fn run_hook(command: String, env: Vec<(&'static str, String)>, timeout: Duration) {
    let mut cmd = crate::child::async_command("/bin/sh");
    cmd.arg("-c")
        .arg(&command)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("alert hook {command:?}: cannot start: {e}");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => tracing::info!("alert hook {command:?} ran"),
        Ok(Ok(out)) => tracing::error!(
            "alert hook {command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(Err(e)) => tracing::error!("alert hook {command:?}: {e}"),
        Err(_) => tracing::error!(
            "alert hook {command:?} killed after {} s (alerts.hook_timeout)",
            timeout.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// A hook that writes its environment to a file sees the event, never the passphrase
    /// the agent was given in its own environment.
    #[tokio::test]
    async fn a_hook_does_not_see_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        // Only this test sets it; safe in edition 2021.
        std::env::set_var(crate::child::PASSPHRASE_ENV, "hook must not see this");
        run_hook(
            format!("env > {}", file.display()),
            vec![("PGAGENT_EVENT", "failure".to_string())],
            Duration::from_secs(10),
        )
        .await;
        std::env::remove_var(crate::child::PASSPHRASE_ENV);
        let env = std::fs::read_to_string(&file).unwrap();
        assert!(env.contains("PGAGENT_EVENT=failure"), "{env}");
        assert!(!env.contains("hook must not see this"), "{env}");
        assert!(!env.contains(crate::child::PASSPHRASE_ENV), "{env}");
    }

    #[test]
    fn one_failure_and_one_recovery_per_incident() {
        let mut inc = Incidents::new(3 * S, 60 * S);
        let t0 = Instant::now();
        assert_eq!(inc.observe(&[], t0), None);
        assert_eq!(
            inc.observe(&[Problem::RpoHigh], t0 + S),
            None,
            "within grace"
        );
        let e = inc.observe(&[Problem::RpoHigh], t0 + 4 * S).unwrap();
        assert_eq!(e.kind, EventKind::Failure);
        assert_eq!(
            inc.observe(&[Problem::RpoHigh, Problem::Disconnected], t0 + 5 * S),
            None
        );
        let r = inc.observe(&[], t0 + 9 * S).unwrap();
        assert_eq!(r.kind, EventKind::Recovery);
        assert_eq!(r.problems, [Problem::Disconnected, Problem::RpoHigh]);
        assert_eq!(inc.observe(&[], t0 + 10 * S), None);
    }

    #[test]
    fn blips_and_flapping_are_quiet() {
        let mut inc = Incidents::new(3 * S, 60 * S);
        let t0 = Instant::now();
        assert_eq!(inc.observe(&[Problem::Disconnected], t0), None);
        assert_eq!(
            inc.observe(&[], t0 + S),
            None,
            "a blip shorter than grace is no incident"
        );
        inc.observe(&[Problem::Disconnected], t0 + 2 * S);
        assert!(inc.observe(&[Problem::Disconnected], t0 + 6 * S).is_some());
        assert!(inc.observe(&[], t0 + 7 * S).is_some());
        // A second incident within min_interval: neither it nor its recovery is reported.
        inc.observe(&[Problem::Disconnected], t0 + 8 * S);
        assert_eq!(inc.observe(&[Problem::Disconnected], t0 + 20 * S), None);
        assert_eq!(inc.observe(&[], t0 + 21 * S), None);
        // After min_interval, incidents are reported again.
        inc.observe(&[Problem::StagingFull], t0 + 70 * S);
        assert!(inc.observe(&[Problem::StagingFull], t0 + 74 * S).is_some());
    }

    #[test]
    fn the_environment_carries_the_event() {
        let s = DaemonStatus {
            connected: true,
            rpo_seconds: 42.0,
            upload_lag_bytes: 1024,
            last_error: Some("store unreachable".into()),
            ..Default::default()
        };
        let e = Event {
            kind: EventKind::Failure,
            problems: vec![Problem::RpoHigh],
        };
        let env = hook_env(&e, &s);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        assert_eq!(get("PGAGENT_EVENT"), "failure");
        assert_eq!(get("PGAGENT_EVENT_REASON"), "rpo");
        assert!(get("PGAGENT_EVENT_MESSAGE").contains("store unreachable"));
        assert_eq!(get("PGAGENT_UPLOAD_LAG_BYTES"), "1024");
        assert_eq!(problems(&s, 30.0), [Problem::RpoHigh]);
        assert!(problems(&s, 60.0).is_empty());
    }
}
