//! What a drill found ([`DrillReport`], plain data in `pgagent_storage::drill`): begun
//! from the request, printed by `pgagent drill` (text or `--json`) and recorded in the store
//! as `drills/<id>.json` (sealed like every object).

use std::fmt::Write as _;
use std::time::SystemTime;

pub use pgagent_storage::drill::{Check, DrillReport, Reached};

use super::request::DrillRequest;

/// An empty report of drill `id` started at `started_at`, asked by `req`.
pub fn begin(id: &str, started_at: SystemTime, req: &DrillRequest) -> DrillReport {
    DrillReport::new(
        id,
        crate::times::rfc3339(started_at),
        req.backup.clone().unwrap_or_else(|| "latest".into()),
        req.target.describe(),
    )
}

/// A drill id: its start time to the millisecond, `YYYYMMDDTHHMMSS.mmmZ`, sortable and
/// distinct for drills started one after the other (a drill lasts seconds).
pub fn drill_id(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y%m%dT%H%M%S%.3fZ")
        .to_string()
}

/// The human form `pgagent drill` prints.
pub fn text(r: &DrillReport) -> String {
    let mut out = String::new();
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(out, "drill {}: {verdict}", r.id);
    let _ = writeln!(
        out,
        "  restored   {} (tier {}) in {:.1} s",
        r.source.as_deref().unwrap_or("nothing"),
        r.tier.as_deref().unwrap_or("none"),
        r.restore_seconds
    );
    if let Some(secs) = r.replay_seconds {
        let _ = writeln!(out, "  replayed   to {} in {secs:.1} s", r.target);
    }
    if let Some(rto) = r.rto_seconds() {
        let _ = writeln!(out, "  RTO        {rto:.1} s (restore + replay)");
    }
    if let Some(at) = &r.reached {
        let _ = writeln!(
            out,
            "  reached    LSN {}{}",
            at.lsn,
            at.last_commit
                .as_deref()
                .map(|t| format!(", last commit {t}"))
                .unwrap_or_default()
        );
    }
    if let (Some(end), Some(b)) = (&r.store_end, r.behind_store_bytes) {
        let _ = writeln!(
            out,
            "  store      newest WAL ends at {end}: {b} bytes behind it"
        );
    }
    for line in &r.stores {
        let _ = writeln!(out, "  stores     {line}");
    }
    match (&r.live_lsn, r.behind_live_bytes) {
        (Some(live), Some(b)) => {
            let _ = writeln!(out, "  live       server at {live}: {b} bytes behind it");
        }
        _ => {
            let _ = writeln!(out, "  live       server not reachable: not compared");
        }
    }
    for c in &r.checks {
        let mark = if c.passed { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "  {mark} {:<11} {}", c.name, c.detail);
    }
    if let Some(dir) = &r.kept {
        let _ = writeln!(out, "  kept       {dir}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::{RecoveryTarget, RestoreFrom};

    fn report() -> DrillReport {
        let req = DrillRequest {
            backup: None,
            from: RestoreFrom::Bucket,
            target: RecoveryTarget::Latest,
            keep: false,
            restore_command: "pgagent fetch %f %p".into(),
        };
        begin("20261130T120000Z", SystemTime::UNIX_EPOCH, &req)
    }

    #[test]
    fn drill_ids_sort_by_time_to_the_millisecond() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_504_000_123);
        let id = drill_id(t);
        assert_eq!(id, "20251130T120000.123Z");
        let later = drill_id(t + std::time::Duration::from_millis(1));
        assert!(later > id);
    }

    #[test]
    fn the_text_names_each_failed_check_and_the_rto() {
        let mut r = report();
        r.pass("restore", "backup b1");
        r.fail("check_sql", "returned 0");
        r.restore_seconds = 2.0;
        r.replay_seconds = Some(3.5);
        let text = text(&r);
        assert!(text.contains("FAIL check_sql"), "{text}");
        assert!(text.contains("RTO        5.5 s"), "{text}");
    }
}
