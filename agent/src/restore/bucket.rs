//! The bucket tier: the newest complete base backup that can reach the target, its files
//! written from their chunks ([`super::materialize`]; an incremental backup rebuilt from
//! its chain, [`super::rebuild`]), then the recovery settings.

use std::path::PathBuf;

use anyhow::{bail, Context};
use pgagent_storage::cluster::read_cluster;
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::manifest::{BackupKind, BackupManifest, BackupStatus};

use super::chain::load_chain;
use super::materialize::{materialize, Mode};
use super::pgdata::{give_to_owner, prepare_pgdata, write_recovery_settings};
use super::rebuild;
use super::request::{RestoreRequest, RESTORING_FILE};
use crate::config::{Config, ConfigError};
use crate::retry::Policy;
use crate::retrying_store::RetryingReads;
use crate::store::catalog;
use crate::store::read::{self, Reading};

/// The store of `cfg` and the cluster it holds, and, when it reads several stores as one,
/// those stores (for the report). Reads through the returned store retry transient errors
/// for up to `fetch.timeout` ([`RetryingReads`]): a restore reads thousands of objects, and
/// one that fails once must not end it. `cluster.json` is read that way when `patient`,
/// else with one attempt.
///
/// Errors: the store cannot be opened or read, or holds no `cluster.json`; as
/// [`crate::store::read_cipher`]; as [`crate::store::read::open_reading`].
pub(super) async fn open_store(
    cfg: &Config,
    patient: bool,
) -> anyhow::Result<(crate::store::Opened, Option<Reading>)> {
    let retrying =
        |raw| RetryingReads::wrap(raw, Policy::CHUNK, cfg.raw.fetch.timeout, "fetch.timeout");
    if crate::store::read::reads_a_set(cfg) {
        let patience = patient.then_some(cfg.raw.fetch.timeout);
        let reading = crate::store::read::open_reading(cfg, patience).await?;
        let mut opened = reading.opened.clone();
        opened.store = retrying(opened.store);
        return Ok((opened, Some(reading)));
    }
    let raw = crate::store::open(cfg).await?;
    let store = retrying(raw.clone());
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
    let opened = crate::store::Opened {
        store,
        cluster,
        seg,
        cipher,
    };
    Ok((opened, None))
}

/// The report of a restore that read several stores as one: what each served and, when
/// `--store` left stores out, where the WAL of the ones used ends against theirs.
pub(super) async fn stores_report(cfg: &Config, reading: &Reading) -> Vec<String> {
    let mut lines = vec![read::served_text(&reading.served())];
    if !cfg.left_out.is_empty() {
        let seg = reading.opened.seg;
        let end = read::wal_end(reading.opened.store.as_ref(), seg)
            .await
            .map_err(|e| format!("{e:#}"));
        let others = read::left_out_ends(cfg, seg).await;
        lines.push(read::wal_end_text(&reading.names(), &end, &others));
    }
    lines
}

/// The bucket tier: the newest complete base backup that can reach the target (an
/// incremental one rebuilt from its chain, see [`super::rebuild`]; with `--raw`, any
/// backup as it is stored). Returns what was restored and the recovery settings taken out
/// of effect.
///
/// A chain is loaded and checked, and the presence of every chunk it needs, before the
/// data directory is touched.
pub(super) async fn from_bucket(
    cfg: &Config,
    req: &RestoreRequest,
    opened: &crate::store::Opened,
) -> anyhow::Result<(String, Vec<String>)> {
    let crate::store::Opened { store, cluster, .. } = opened;
    let bucket = opened.bucket();
    let manifest = choose_backup(store.as_ref(), bucket.cipher(), req).await?;
    let prepared = if manifest.kind == BackupKind::Incremental && !req.raw {
        if req.delta {
            return Err(ConfigError(format!(
                "backup {} is incremental: --delta cannot restore it (yet); restore into an \
                 empty directory or with --force",
                manifest.id
            ))
            .into());
        }
        let id = manifest.id.clone();
        let chain = load_chain(store.as_ref(), bucket.cipher(), manifest.clone())
            .await
            .with_context(|| format!("restore backup {id}: its chain"))?;
        let prepared = rebuild::prepare(&bucket, chain, read_concurrency(cfg))
            .await
            .with_context(|| format!("restore backup {id}"))?;
        Some(prepared)
    } else {
        None
    };
    prepare_pgdata(&req.pgdata, req.force && !req.delta, req.delta)?;
    // Until the end, the directory says it is not a cluster yet (see preseed).
    let restoring = req.pgdata.join(RESTORING_FILE);
    std::fs::write(&restoring, b"").with_context(|| format!("write {}", restoring.display()))?;
    let what = match &prepared {
        Some(p) => format!(
            "backup {} (incremental, depth {}, chain: {})",
            manifest.id,
            manifest.depth,
            p.chain.describe()
        ),
        None if req.raw => format!(
            "backup {} as stored ({})",
            manifest.id,
            manifest.kind.as_str()
        ),
        None => format!("backup {}", manifest.id),
    };
    tracing::info!(
        backup = manifest.id,
        system_identifier = cluster.system_identifier,
        "restoring {what} into {}",
        req.pgdata.display()
    );
    let original = |_oid: u32, location: &str| PathBuf::from(location);
    let total = prepared
        .as_ref()
        .map_or(manifest.stats.raw_bytes, |p| p.estimate);
    let progress = crate::progress::Progress::new(&format!("restore {}", manifest.id), total);
    let failed = || format!("restore {what} into {}", req.pgdata.display());
    let done = match &prepared {
        Some(p) => {
            let w = rebuild::write_chain(
                &bucket,
                p,
                &req.pgdata,
                &original,
                read_concurrency(cfg),
                &progress,
            )
            .await
            .with_context(failed)?;
            format!(
                "{} files written ({} rebuilt from incremental files), {}",
                w.files,
                w.rebuilt,
                bytesize::ByteSize(w.bytes)
            )
        }
        None => {
            let w = materialize(
                &bucket,
                &manifest,
                &req.pgdata,
                &original,
                read_concurrency(cfg),
                if req.delta { Mode::Delta } else { Mode::Fresh },
                &progress,
            )
            .await
            .with_context(failed)?;
            format!(
                "{} files written, {}; {} unchanged, {} removed",
                w.files,
                bytesize::ByteSize(w.bytes),
                w.unchanged,
                w.removed
            )
        }
    };
    progress.finish();
    let removed = if req.raw {
        Vec::new()
    } else {
        write_recovery_settings(&req.pgdata, &format!("backup {}", manifest.id), req)?
    };
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
    let source = match what.strip_suffix(')') {
        Some(open) => format!("{open}; {done})"),
        None => format!("{what} ({done})"),
    };
    Ok((source, removed))
}

/// Chunks read at once: the first store's `upload_concurrency` (the one most chunks come
/// from).
fn read_concurrency(cfg: &Config) -> usize {
    cfg.stores.first().map_or(1, |s| s.upload_concurrency)
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
                req.target.describe()
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
        req.target.describe(),
        ids.len()
    )
}
