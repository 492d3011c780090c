//! `pgagent restore --pgdata DIR …`: a data directory from the bucket, set up to recover to
//! a target through `restore_command = 'pgagent fetch %f %p'`.
//!
//! Chooses the newest complete backup that can reach the target, writes its files
//! ([`crate::backup::materialize`]), then `recovery.signal` and the recovery settings in
//! `postgresql.auto.conf` (PostgreSQL docs, "Recovery Target" 20.5.5, and
//! "Archive Recovery" 20.5.4). Starting PostgreSQL is left to the caller.

mod autoconf;
mod pgdata;
pub mod snapshot;
mod target;

use std::path::PathBuf;

use anyhow::{bail, Context};
use pgagent_storage::cluster::read_cluster;
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::manifest::{BackupManifest, BackupStatus};

use crate::backup::materialize::{materialize, Mode};
pub use crate::cli::RestoreFrom;
use crate::config::Config;
use crate::retry::Policy;
use crate::retrying_store::RetryingReads;
use crate::store::catalog;
use pgdata::{give_to_owner, prepare_pgdata, write_recovery_settings};
pub use target::RecoveryTarget;

/// What `pgagent restore` was asked.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The data directory to create or fill.
    pub pgdata: PathBuf,
    /// A backup id, or `None` for the newest that can reach the target.
    pub backup: Option<String>,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// `recovery_target_action`: `promote`, `pause` or `shutdown`.
    pub action: String,
    /// Empty a non-empty data directory first.
    pub force: bool,
    /// Keep files that already match the backup, rewrite the others, remove the rest.
    pub delta: bool,
    /// The `restore_command` to write.
    pub restore_command: String,
    /// Which tiers may serve.
    pub from: RestoreFrom,
    /// Owner (uid, gid) of the restored files when run as root; `None`: the owner of the
    /// data directory's parent.
    pub owner: Option<(u32, u32)>,
}

/// A file a bucket restore keeps in the data directory while it writes, so an interrupted
/// restore is never taken for a cluster (preseed refuses a directory holding it).
pub const RESTORING_FILE: &str = "pgagent.restoring";

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
}

/// `pgagent restore`: restores per `req` and prints which tier served.
///
/// Errors: as [`restore`].
pub async fn run(cfg: &Config, req: &RestoreRequest) -> anyhow::Result<()> {
    let served = restore(cfg, req).await?;
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
        describe(&req.target)
    );
    if !req.restore_command.contains(" --config ") && cfg.raw.store.url.starts_with("s3://") {
        println!(
            "note: restore_command names no configuration file: PostgreSQL's environment must \
             hold the store credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), or run \
             pgagent restore with --config FILE"
        );
    }
    Ok(())
}

/// Restores per `req` from the first tier that can serve: a local snapshot (unless
/// `--from bucket`), then the bucket (unless `--from snapshot`).
///
/// Errors: [`crate::exit::Refused`] (exit 3) for a non-empty data directory without `--force` or a
/// running server in it; no snapshot (with `--from snapshot`) or backup can reach the
/// target; store, `zfs`, verification or I/O errors.
pub async fn restore(cfg: &Config, req: &RestoreRequest) -> anyhow::Result<Served> {
    // The snapshot tier only asks which cluster the store holds, and must not wait for a
    // store that is away: one attempt. The bucket tier waits for it (`fetch.timeout`).
    let opened = match open_store(cfg, req.from == RestoreFrom::Bucket).await {
        // A passphrase that opens nothing, or a store whose encryption the configuration
        // does not match, would stop recovery at its first `pgagent fetch`: say so now,
        // whichever tier would have served.
        Err(e) if crate::exit::code_for(&e) == crate::exit::USAGE => return Err(e),
        opened => opened,
    };
    let mut passed_over = None;
    if req.from != RestoreFrom::Bucket {
        let system_identifier = opened
            .as_ref()
            .ok()
            .and_then(|o| o.cluster.system_identifier.parse().ok());
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
    let (source, removed_settings) = from_bucket(cfg, req, &opened).await?;
    Ok(Served {
        source,
        tier: "bucket",
        passed_over,
        removed_settings,
        clone_dataset: None,
    })
}

/// The store of `cfg` and the cluster it holds. Reads through the returned store retry
/// transient errors for up to `fetch.timeout` ([`RetryingReads`]): a restore reads thousands
/// of objects, and one that fails once must not end it. `cluster.json` is read that way when
/// `patient`, else with one attempt.
///
/// Errors: the store cannot be opened or read, or holds no `cluster.json`; as
/// [`crate::store::read_cipher`].
async fn open_store(cfg: &Config, patient: bool) -> anyhow::Result<crate::store::Opened> {
    let raw = crate::store::open(cfg).await?;
    let store = RetryingReads::wrap(
        raw.clone(),
        Policy::CHUNK,
        cfg.raw.fetch.timeout,
        "fetch.timeout",
    );
    let reader = if patient { &store } else { &raw };
    let cluster = read_cluster(reader.as_ref()).await?.with_context(|| {
        format!(
            "{} holds no cluster.json: not a pgagent store",
            store.describe()
        )
    })?;
    let seg = pgagent_protocol::WalSegmentSize::new(cluster.wal_segment_size)
        .map_err(|e| anyhow::anyhow!("cluster.json: {e}"))?;
    let cipher = crate::store::read_cipher(reader.as_ref(), cfg).await?;
    Ok(crate::store::Opened {
        store,
        cluster,
        seg,
        cipher,
    })
}

/// The bucket tier: the newest complete base backup that can reach the target. Returns what
/// was restored and the recovery settings taken out of effect.
async fn from_bucket(
    cfg: &Config,
    req: &RestoreRequest,
    opened: &crate::store::Opened,
) -> anyhow::Result<(String, Vec<String>)> {
    let crate::store::Opened { store, cluster, .. } = opened;
    let bucket = opened.bucket();
    let manifest = choose_backup(store.as_ref(), bucket.cipher(), req).await?;
    prepare_pgdata(&req.pgdata, req.force && !req.delta, req.delta)?;
    // Until the end, the directory says it is not a cluster yet (see preseed).
    let restoring = req.pgdata.join(RESTORING_FILE);
    std::fs::write(&restoring, b"").with_context(|| format!("write {}", restoring.display()))?;
    tracing::info!(
        backup = manifest.id,
        system_identifier = cluster.system_identifier,
        "restoring {} files ({}) into {}",
        manifest.stats.files,
        bytesize::ByteSize(manifest.stats.raw_bytes),
        req.pgdata.display()
    );
    let original = |_oid: u32, location: &str| PathBuf::from(location);
    let progress = crate::progress::Progress::new(
        &format!("restore {}", manifest.id),
        manifest.stats.raw_bytes,
    );
    let written = materialize(
        &bucket,
        &manifest,
        &req.pgdata,
        &original,
        cfg.raw.store.upload_concurrency,
        if req.delta { Mode::Delta } else { Mode::Fresh },
        &progress,
    )
    .await
    .with_context(|| {
        format!(
            "restore backup {} into {}",
            manifest.id,
            req.pgdata.display()
        )
    })?;
    progress.finish();
    let removed = write_recovery_settings(&req.pgdata, &format!("backup {}", manifest.id), req)?;
    let tablespaces: Vec<PathBuf> = manifest
        .tablespaces
        .iter()
        .map(|t| PathBuf::from(&t.location))
        .collect();
    give_to_owner(&req.pgdata, &tablespaces, req.owner)?;
    match std::fs::remove_file(&restoring) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("remove {}", restoring.display()))
        }
        _ => {}
    }
    let source = format!(
        "backup {} ({} files written, {}; {} unchanged, {} removed)",
        manifest.id,
        written.files,
        bytesize::ByteSize(written.bytes),
        written.unchanged,
        written.removed
    );
    Ok((source, removed))
}

pub(crate) fn describe(t: &RecoveryTarget) -> String {
    match t {
        RecoveryTarget::Latest => "the end of the WAL in the store".into(),
        RecoveryTarget::Time(s, _) => format!("time {s}"),
        RecoveryTarget::Xid(x) => format!("xid {x}"),
        RecoveryTarget::Name(n) => format!("restore point {n:?}"),
        RecoveryTarget::Lsn(l) => format!("LSN {l}"),
    }
}

async fn choose_backup(
    store: &dyn pgagent_storage::ObjectStore,
    cipher: Option<&ObjectCipher>,
    req: &RestoreRequest,
) -> anyhow::Result<BackupManifest> {
    if let Some(id) = req.backup.as_deref().filter(|i| *i != "latest") {
        let m = catalog::get_manifest(store, cipher, id)
            .await?
            .with_context(|| format!("no backup {id} in {}", store.describe()))?;
        if m.status != BackupStatus::Complete {
            bail!("backup {id} is not complete (its WAL never reached the store)");
        }
        if !req.target.reachable_from(&m) {
            bail!(
                "backup {id} ended after the target {}",
                describe(&req.target)
            );
        }
        return Ok(m);
    }
    let ids = catalog::backup_ids(store).await?;
    for id in ids.iter().rev() {
        let Some(m) = catalog::get_manifest(store, cipher, id).await? else {
            continue;
        };
        if m.status == BackupStatus::Complete && req.target.reachable_from(&m) {
            return Ok(m);
        }
    }
    bail!(
        "no complete backup in {} can reach {} ({} backups listed)",
        store.describe(),
        describe(&req.target),
        ids.len()
    )
}
