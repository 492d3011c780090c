//! The order of the tiers: a local snapshot first (unless `--from bucket`), then the
//! bucket (unless `--from snapshot`), and what the caller is told about the one that served.

use super::bucket::{from_bucket, open_store, stores_report};
use super::request::{RestoreFrom, RestoreRequest};
use super::snapshot;
use crate::config::Config;

/// Which tier served a restore, and why the ones before it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// `snapshot <id> (<how>)` or `backup <id>`.
    pub source: String,
    /// `snapshot` or `bucket`.
    pub tier: &'static str,
    /// Why the snapshot tier did not serve, when the bucket did.
    pub passed_over: Option<String>,
    /// Recovery settings the restored files carried (an earlier restore's target,
    /// `restore_command`), taken out of effect: `<file>: <line>`.
    pub removed_settings: Vec<String>,
    /// The dataset a snapshot was cloned into, when it was.
    pub clone_dataset: Option<String>,
    /// With several stores read as one, what each served and, when `--store` left stores
    /// out, where the WAL of the ones used ends: lines for the report (empty otherwise).
    pub stores: Vec<String>,
}

/// Restores per `req` from the first tier that can serve: a local snapshot (unless
/// `--from bucket` or `--raw`), then the bucket (unless `--from snapshot`).
///
/// Errors: [`crate::exit::Refused`] (exit 3) for a non-empty data directory without `--force` or a
/// running server in it; no snapshot (with `--from snapshot`) or backup can reach the
/// target; store, `zfs`, verification or I/O errors.
pub async fn restore(cfg: &Config, req: &RestoreRequest) -> anyhow::Result<Served> {
    // The snapshot tier only asks which cluster the store holds, and must not wait for a
    // store that is away: one attempt. The bucket tier waits for it (`fetch.timeout`).
    // `--raw` writes a backup as stored: only the bucket holds those.
    let bucket_only = req.from == RestoreFrom::Bucket || req.raw;
    let opened = match open_store(cfg, bucket_only).await {
        // A passphrase that opens nothing, or a store whose encryption the configuration
        // does not match, would stop recovery at its first `pgagent fetch`: say so now,
        // whichever tier would have served.
        Err(e) if crate::exit::code_for(&e) == crate::exit::USAGE => return Err(e),
        opened => opened,
    };
    let mut passed_over = None;
    if !bucket_only {
        let system_identifier = opened
            .as_ref()
            .ok()
            .and_then(|(o, _)| o.cluster.system_identifier.parse().ok());
        match snapshot::plan(cfg, req, system_identifier) {
            Ok(plan) => {
                if let Err(e) = &opened {
                    tracing::warn!("the store cannot be read now ({e:#}); recovery will need it for WAL past the snapshot");
                }
                let removed_settings = snapshot::execute(cfg, req, &plan)?;
                let how = match &plan.action {
                    snapshot::Action::Clone { dataset, .. } => format!("cloned to {dataset}"),
                    snapshot::Action::Rollback { .. } => "rolled back in place".to_string(),
                };
                let clone_dataset = match &plan.action {
                    snapshot::Action::Clone { dataset, .. } => Some(dataset.clone()),
                    snapshot::Action::Rollback { .. } => None,
                };
                return Ok(Served {
                    source: format!("snapshot {} ({how})", plan.record.id),
                    tier: "snapshot",
                    passed_over: None,
                    removed_settings,
                    clone_dataset,
                    stores: Vec::new(),
                });
            }
            Err(why) if req.from == RestoreFrom::Snapshot => {
                return Err(anyhow::anyhow!(
                    "no local snapshot can serve this restore: {why}"
                ))
            }
            Err(why) => {
                tracing::info!("tier snapshot not used: {why}");
                passed_over = Some(why);
            }
        }
    }
    let opened = match opened {
        Ok(opened) => opened,
        Err(e) => {
            tracing::info!("reading the store again, retrying for up to fetch.timeout: {e:#}");
            open_store(cfg, true).await?
        }
    };
    let (opened, reading) = opened;
    let (source, removed_settings) = from_bucket(cfg, req, &opened).await?;
    let stores = match &reading {
        Some(r) => stores_report(cfg, r).await,
        None => Vec::new(),
    };
    Ok(Served {
        source,
        tier: "bucket",
        passed_over,
        removed_settings,
        clone_dataset: None,
        stores,
    })
}
