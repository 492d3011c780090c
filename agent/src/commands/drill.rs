//! `pgagent drill` and `pgagent list drills` (the drill itself is [`crate::drill`]).

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::drill::{self, DrillRequest};
use crate::store::drills;

/// `pgagent drill`: runs a drill, records its report in the store, prints it (text, or
/// JSON with `json`).
///
/// The first SIGTERM/SIGINT cuts the drill short: its server is stopped and its scratch
/// directory removed before the process exits (status 1), as when `pgagent run` stops
/// during a scheduled drill; a second signal exits at once (the next drill then cleans up).
///
/// Errors: a check failed (exit 1, after the report); the drill could not start (a
/// `drill.dir` inside PGDATA: exit 3); a signal cut it short.
pub async fn run(cfg: &Config, req: &DrillRequest, json: bool) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    super::signals::stop_on_signals(
        stop.clone(),
        super::signals::Messages {
            first: "stopping the drill: its server is stopped and its scratch directory \
                    removed (signal again to stop at once)",
            second: "second signal: stopping now; the next drill removes what this one leaves",
        },
    );
    let report = drill::run_and_record(cfg, req, &stop).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", drill::report::text(&report));
    }
    if report.passed {
        Ok(())
    } else {
        let failed: Vec<&str> = report.failed().map(|c| c.name.as_str()).collect();
        anyhow::bail!("drill {} failed: {}", report.id, failed.join(", "))
    }
}

/// `pgagent list drills`: every recorded drill, oldest first.
///
/// Errors: the store cannot be read.
pub async fn list(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let store = crate::store::open(cfg).await?;
    let cipher = crate::store::read_cipher(store.as_ref(), cfg).await?;
    let records = drills::records(store.as_ref(), cipher.as_ref()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    println!(
        "{:<20}  {:<6}  {:<8}  {:>8}  {:<22}  FAILED CHECKS",
        "ID", "RESULT", "TIER", "RTO (s)", "REACHED"
    );
    for r in &records {
        let failed: Vec<&str> = r.failed().map(|c| c.name.as_str()).collect();
        println!(
            "{:<20}  {:<6}  {:<8}  {:>8}  {:<22}  {}",
            r.id,
            if r.passed { "passed" } else { "FAILED" },
            r.tier.as_deref().unwrap_or("-"),
            r.rto_seconds()
                .map_or_else(|| "-".into(), |s| format!("{s:.1}")),
            r.reached.as_ref().map_or("-", |x| x.lsn.as_str()),
            if failed.is_empty() {
                "-".to_string()
            } else {
                failed.join(", ")
            }
        );
    }
    Ok(())
}
