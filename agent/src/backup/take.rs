//! `pgagent backup`: one base backup, from `BASE_BACKUP` to a complete manifest in each
//! store.
//!
//! 1. Connect, open and claim every store for this cluster ([`super::targets::claim_all`]:
//!    a store that cannot be reached drops out, one of another cluster stops everything),
//!    take the local backup lock.
//! 2. `BASE_BACKUP` (no WAL: the stream covers it, DESIGN.md "Base backups"), read once
//!    whatever the number of stores. Once it has started, the backup announces itself in
//!    each store with a `running` manifest, waits for any prune there that may not have
//!    seen it, and only then lists the chunks in that store ([`super::guard`]: the order
//!    keeps a concurrent prune from deleting a chunk the backup will not upload again).
//! 3. Each archive is walked on a blocking thread ([`super::archive`]) while the stream is
//!    read, its chunks deduplicated against each store's listing, sealed once and uploaded
//!    in parallel to every store lacking them ([`super::chunks::fan_out_chunks`]). A store
//!    that fails drops out; the others go on.
//! 4. In each store the manifest is written with its files (its own counts of new chunks),
//!    still `running`, then — once every WAL segment from the start to the stop LSN is in
//!    that store — as `complete` ([`super::wal`]). A backup running longer than
//!    [`BACKUP_LIMIT`] gives up: prune takes a manifest that old for a dead backup's.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use futures::future::join_all;
use pgagent_protocol::basebackup::{BaseBackupOptions, BaseBackupStream};
use pgagent_protocol::{Lsn, TimelineId, WalSegmentSize};
use pgagent_storage::manifest::{
    BackupManifest, BackupStats, BackupStatus, EntryKind, FileEntry, TablespaceEntry,
};

use super::chunks::known_chunks;
use super::guard::{self, BACKUP_LIMIT};
use super::start::{start, unused_id, BackupLock, Started};
use super::stored::{store_files, Files, StoreStats};
use super::targets::{claim_all, in_order, BackupOutcome, StoreOutcome, Target};
use super::wal::wait_for_wal;
use crate::config::{Config, StoreSpec};
use crate::server::{self, ServerInfo};
use crate::store::{catalog, Bucket};
use crate::times::rfc3339;

/// How a backup is taken.
#[derive(Debug, Clone, Default)]
pub struct BackupRequest {
    /// Immediate checkpoint instead of a spread one.
    pub fast: bool,
    /// How long to wait for the WAL up to the stop LSN to reach each store; `None`:
    /// forever.
    pub wal_wait: Option<Duration>,
    /// The names of the stores the backup goes to; empty: every configured store.
    pub stores: Vec<String>,
}

/// Takes one base backup into the stores of `req` (the server read once) and returns what
/// became of it in each: the manifest there (complete, or running if the WAL did not reach
/// that store in time), or why it did not reach that store.
///
/// Errors (no store got the backup): connection or archive errors; another backup running
/// on this machine; no store reachable; [`crate::exit::Refused`] when a store holds
/// another cluster; a store name `req` names that is not configured.
pub async fn take_backup(cfg: &Config, req: &BackupRequest) -> anyhow::Result<BackupOutcome> {
    let specs: Vec<StoreSpec> = cfg
        .select_stores(&req.stores)?
        .into_iter()
        .cloned()
        .collect();
    let conn = server::conn_config(cfg, "pgagent backup")?;
    let (client, server) = server::connect(&conn).await?;
    let (targets, mut outcomes) = claim_all(cfg, &specs, &server).await?;
    if targets.is_empty() {
        bail!("no store can take the backup: {}", reasons(&outcomes));
    }
    for o in &outcomes {
        if let Err(e) = &o.result {
            tracing::warn!(store = o.name, "the backup goes without this store: {e:#}");
        }
    }
    let _lock = BackupLock::take(cfg.staging_dir())?;

    let (id, started) = unused_id(&targets).await?;
    let begun = Instant::now();
    let chunk_size = cfg.raw.backup.chunk_size.as_u64();

    let mut opts = BaseBackupOptions::new(format!("pgagent {id}"));
    opts.fast_checkpoint = req.fast;
    // The server measures each tablespace first, so progress has a total.
    opts.progress = true;
    let Started {
        mut stream,
        lineage,
        facts,
        fallback,
    } = start(cfg, &conn, client, &server, &targets, opts.clone()).await?;
    let total: u64 = stream
        .tablespaces()
        .iter()
        .filter_map(|t| t.size_kib)
        .sum::<u64>()
        * 1024;
    let progress = crate::progress::Progress::new(&format!("backup {id}"), total);
    let mut announced = announced(&server, &stream, &id, &opts.label, started, chunk_size);
    lineage.apply(&mut announced);
    announced.block_size = Some(facts.block_size);
    announced.segment_blocks = Some(facts.segment_blocks);
    announced.data_checksums = Some(facts.data_checksums);
    let (targets, failed) = announce_all(targets, &announced).await;
    outcomes.extend(failed);
    if targets.is_empty() {
        bail!(
            "backup {id}: no store took the backup: {}",
            reasons(&outcomes)
        );
    }
    let cipher = targets[0].bucket.cipher.clone();
    tracing::info!(
        id,
        kind = lineage.kind.as_str(),
        parent = lineage.parent.as_deref().unwrap_or(""),
        depth = lineage.depth,
        stores = targets.len(),
        known_chunks = targets.iter().map(|t| t.known.len()).min().unwrap_or(0),
        "base backup starting"
    );

    let stored = store_files(
        &mut stream,
        &conn,
        cfg,
        &cipher,
        targets,
        chunk_size,
        &progress,
    )
    .await
    .map_err(|e| e.context(format!("base backup {id}")))?;
    let (start_lsn, start_tli) = (stream.start_lsn(), stream.start_timeline());
    let (stop_lsn, stop_tli) = stream
        .end()
        .ok_or_else(|| anyhow::anyhow!("the server sent no end position"))?;
    let (files, targets) = stored.finish(chunk_size).await?;
    let stop = (stop_lsn, stop_tli);
    let wal = WalWait {
        id: &id,
        start: (start_lsn, start_tli),
        stop,
        seg: server.seg,
        wait: {
            let left = BACKUP_LIMIT.saturating_sub(begun.elapsed());
            Some(req.wal_wait.map_or(left, |w| w.min(left)))
        },
        begun,
    };
    let finished = join_all(targets.into_iter().map(|(target, stats)| {
        let manifest = files_manifest(announced.clone(), &files, &stats, stop);
        let wal = &wal;
        async move {
            let spec = target.spec.clone();
            let result = match stats.result {
                Ok(()) => finish_in(&target, manifest, wal).await,
                Err(e) => Err(e),
            };
            StoreOutcome {
                name: spec.name.clone(),
                required: spec.is_required(),
                result,
            }
        }
    }))
    .await;
    outcomes.extend(finished);
    Ok(BackupOutcome {
        id,
        stores: in_order(&specs, outcomes),
        fallback,
    })
}

/// `store: why; store: why`, for a backup that reached no store.
fn reasons(outcomes: &[StoreOutcome]) -> String {
    outcomes
        .iter()
        .filter_map(|o| {
            o.result
                .as_ref()
                .err()
                .map(|e| format!("{}: {e:#}", o.name))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the WAL wait of each store needs.
struct WalWait<'a> {
    id: &'a str,
    start: (Lsn, TimelineId),
    stop: (Lsn, TimelineId),
    seg: WalSegmentSize,
    wait: Option<Duration>,
    begun: Instant,
}

/// Step 4 in one store: the manifest with its files (`running`), then, once the WAL up to
/// the stop LSN is there, `complete`.
async fn finish_in(
    target: &Target,
    mut manifest: BackupManifest,
    wal: &WalWait<'_>,
) -> anyhow::Result<BackupManifest> {
    let (id, name) = (wal.id, target.spec.name.as_str());
    let store = target.bucket.store.as_ref();
    manifest.check().context("the backup's own manifest")?;
    if store.lock_policy().is_some() {
        let started = humantime::parse_rfc3339(&manifest.started_at)
            .with_context(|| format!("the start time {:?}", manifest.started_at))?;
        let concurrency = target.spec.upload_concurrency;
        let done = super::lock::secure(
            &target.bucket,
            &mut manifest,
            &target.known,
            started,
            concurrency,
        )
        .await
        .context("keeping what the backup depends on locked")?;
        tracing::info!(
            id,
            store = name,
            checked = done.checked,
            extended = done.extended,
            until = manifest.lock.as_ref().map_or("", |l| l.until.as_str()),
            "locks of the reused chunks checked"
        );
    }
    within_limit(id, wal.begun)?;
    catalog::put_manifest(store, target.bucket.cipher(), &manifest).await?;
    tracing::info!(
        id,
        store = name,
        start = %wal.start.0,
        stop = %wal.stop.0,
        files = manifest.stats.files,
        bytes = manifest.stats.raw_bytes,
        new_chunks = manifest.stats.new_chunks,
        stored = manifest.stats.new_stored_bytes,
        "files stored; waiting for the WAL up to the stop LSN"
    );
    if wait_for_wal((id, name), store, wal.start, wal.stop, wal.seg, wal.wait).await? {
        within_limit(id, wal.begun)?;
        manifest.status = BackupStatus::Complete;
        catalog::put_manifest(store, target.bucket.cipher(), &manifest).await?;
        tracing::info!(id, store = name, "base backup complete");
    } else {
        tracing::warn!(
            id,
            store = name,
            "the WAL up to {} is not in the store yet: the backup stays 'running' there              (is pgagent run streaming this server into it?); pgagent prune completes it              once the WAL arrives",
            wal.stop.0
        );
    }
    Ok(manifest)
}

/// Step 2: the `running` manifest that announces the backup, once `BASE_BACKUP` has
/// started.
fn announced(
    server: &ServerInfo,
    stream: &BaseBackupStream,
    id: &str,
    label: &str,
    started: SystemTime,
    chunk_size: u64,
) -> BackupManifest {
    let tablespaces: Vec<TablespaceEntry> = stream
        .tablespaces()
        .iter()
        .filter_map(|t| {
            Some(TablespaceEntry {
                oid: t.oid?,
                location: t.location.clone()?,
            })
        })
        .collect();
    BackupManifest {
        system_identifier: server.system_id.to_string(),
        pg_version_num: server.version_num,
        label: label.to_string(),
        start_lsn: stream.start_lsn().to_string(),
        start_timeline: stream.start_timeline().0,
        started_at: rfc3339(started),
        chunk_size,
        tablespaces,
        ..BackupManifest::announced(id)
    }
}

/// Step 2 in every store at once: writes the announcement (before the chunks it will not
/// upload again are listed: [`super::guard`]), waits for any prune that may not have seen
/// it, then lists the chunks the store holds into [`Target::known`]. Returns the stores
/// that took it, and the outcomes of those that failed.
async fn announce_all(
    targets: Vec<Target>,
    announced: &BackupManifest,
) -> (Vec<Target>, Vec<StoreOutcome>) {
    let done = join_all(targets.into_iter().map(|mut t| async move {
        let r = async {
            catalog::put_manifest(t.bucket.store.as_ref(), t.bucket.cipher(), announced).await?;
            t.known = known_after_prunes(&t.bucket).await?;
            parent_still_there(&t.bucket, announced).await?;
            anyhow::Ok(())
        }
        .await;
        (t, r)
    }))
    .await;
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (t, r) in done {
        match r {
            Ok(()) => ok.push(t),
            Err(e) => {
                tracing::warn!(
                    store = t.spec.name,
                    "the backup goes without this store: {e:#}"
                );
                failed.push(StoreOutcome::failed(&t.spec, e));
            }
        }
    }
    (ok, failed)
}

/// An incremental backup's parent, read again once the announcement is in place and any
/// prune that may not have seen it is done ([`known_after_prunes`]): the same argument as
/// for chunks ([`super::guard`]) makes a prune that deleted the parent's manifest finish
/// before this read, and one that reads the manifests later sees the `running`
/// announcement, which names the parent, and keeps it.
///
/// Errors: the parent is gone or no longer complete in this store.
async fn parent_still_there(bucket: &Bucket, announced: &BackupManifest) -> anyhow::Result<()> {
    let Some(parent) = &announced.parent else {
        return Ok(());
    };
    match catalog::get_manifest(bucket.store.as_ref(), bucket.cipher(), parent).await? {
        Some(m) if m.status == BackupStatus::Complete => Ok(()),
        _ => bail!(
            "backup {parent}, the parent of this incremental backup, was pruned while it \
             started; take the backup again (it will be full or against the newest backup)"
        ),
    }
}

/// Waits for any prune that may not have seen the announced backup, then lists the
/// chunks already in the store.
async fn known_after_prunes(bucket: &Bucket) -> anyhow::Result<HashSet<String>> {
    let store = bucket.store.as_ref();
    guard::wait_for_prunes(store, guard::PRUNE_LEASE + guard::DELETE_SETTLE).await?;
    known_chunks(store)
        .await
        .map_err(|e| anyhow::anyhow!("list chunks: {e}"))
}

/// Step 4: the announced manifest with the stop position, the files and one store's
/// counts (still `running`).
fn files_manifest(
    announced: BackupManifest,
    files: &Files,
    store: &StoreStats,
    (stop_lsn, stop_tli): (Lsn, TimelineId),
) -> BackupManifest {
    let regular: Vec<&FileEntry> = files
        .walked
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .collect();
    let mut manifest = announced;
    manifest.stop_lsn = Some(stop_lsn.to_string());
    manifest.stop_timeline = Some(stop_tli.0);
    // To the microsecond: a recovery target time is compared with it (a backup that ended
    // after the target cannot reach it).
    manifest.finished_at = Some(humantime::format_rfc3339_micros(SystemTime::now()).to_string());
    manifest.backup_label = files.walked.backup_label.clone().unwrap_or_default();
    manifest.tablespace_map = files.walked.tablespace_map.clone();
    manifest.pg_manifest = files.pg_manifest.clone();
    manifest.stats = BackupStats {
        files: regular.len() as u64,
        raw_bytes: regular.iter().map(|f| f.size).sum(),
        chunks: files.chunks,
        new_chunks: store.new_chunks,
        new_stored_bytes: store.new_stored_bytes,
        server_bytes: files.server_bytes,
    };
    manifest.files = files.walked.entries.clone();
    manifest
}

/// Fails once the backup has run for [`BACKUP_LIMIT`]: past [`guard::RUNNING_GRACE`], prune
/// drops its `running` manifest and may delete the chunks it uploaded.
fn within_limit(id: &str, begun: Instant) -> anyhow::Result<()> {
    if begun.elapsed() < BACKUP_LIMIT {
        return Ok(());
    }
    bail!(
        "backup {id} ran for more than {}: pgagent prune takes a backup running that long \
         for a dead one and may delete its chunks, so it is abandoned; take it again",
        humantime::format_duration(BACKUP_LIMIT)
    )
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a scratch store: its requests need no counting
mod tests {
    use super::*;
    use pgagent_storage::manifest::{BackupKind, INCREMENTAL_FORMAT_VERSION};

    #[tokio::test]
    async fn an_incremental_backup_stops_when_its_parent_was_pruned_as_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let bucket = Bucket {
            store: pgagent_storage::open(&url, &Default::default())
                .await
                .unwrap(),
            cipher: None,
        };
        let full = BackupManifest {
            status: BackupStatus::Complete,
            ..BackupManifest::announced("20261201T030000Z")
        };
        let child = BackupManifest {
            format_version: INCREMENTAL_FORMAT_VERSION,
            kind: BackupKind::Incremental,
            parent: Some(full.id.clone()),
            root: Some(full.id.clone()),
            depth: 1,
            ..BackupManifest::announced("20261202T030000Z")
        };
        // A full backup has no parent to lose.
        parent_still_there(&bucket, &full).await.unwrap();
        let err = parent_still_there(&bucket, &child).await.unwrap_err();
        assert!(err.to_string().contains("was pruned"), "{err}");
        catalog::put_manifest(bucket.store.as_ref(), None, &full)
            .await
            .unwrap();
        parent_still_there(&bucket, &child).await.unwrap();
        // A parent that is only running is no parent.
        let running = BackupManifest {
            status: BackupStatus::Running,
            ..full.clone()
        };
        catalog::put_manifest(bucket.store.as_ref(), None, &running)
            .await
            .unwrap();
        assert!(parent_still_there(&bucket, &child).await.is_err());
    }
}
