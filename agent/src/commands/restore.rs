//! `pgagent restore --pgdata DIR …`: restores through [`crate::restore`] and prints which
//! tier served and what recovery is set up to do. Starting PostgreSQL is left to the caller.

use crate::config::Config;
use crate::restore::{restore, RestoreRequest};

/// `pgagent restore`: restores per `req` and prints which tier served.
///
/// Errors: as [`restore`].
pub async fn run(cfg: &Config, req: &RestoreRequest) -> anyhow::Result<()> {
    let served = restore(cfg, req).await?;
    if req.raw {
        println!(
            "wrote {} into {} as stored, with no recovery settings (an incremental backup is \
             input for pg_combinebackup, not a data directory to start)",
            served.source,
            req.pgdata.display()
        );
        return Ok(());
    }
    if let Some(why) = &served.passed_over {
        println!("tier snapshot not used: {why}");
    }
    for line in &served.removed_settings {
        println!("removed a recovery setting the restored files carried: {line}");
    }
    println!(
        "tier {}: restored {} into {}; recovery to {} is set up: start PostgreSQL",
        served.tier,
        served.source,
        req.pgdata.display(),
        req.target.describe()
    );
    for line in &served.stores {
        println!("{line}");
    }
    let s3 = cfg.stores.iter().any(|s| s.url.starts_with("s3://"));
    if !req.restore_command.contains(" --config ") && s3 {
        println!(
            "note: restore_command names no configuration file: PostgreSQL's environment must \
             hold the store credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), or run \
             pgagent restore with --config FILE"
        );
    }
    Ok(())
}
