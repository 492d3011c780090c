//! Starting a base backup: full or incremental, and the stream that delivers it.
//!
//! The facts the choice needs are read from the server on the replication connection
//! (`SHOW` works there), the newest complete backup every target store holds is read from
//! the stores, and [`super::parent::choose`] decides. An incremental backup uploads the
//! parent's `backup_manifest` exactly as stored (`UPLOAD_MANIFEST`) and asks `BASE_BACKUP`
//! for `INCREMENTAL` on the same connection. When the server refuses either, the backup is
//! taken full instead ([`FallbackReason::ServerRefused`]): a missed incremental costs
//! server reads, a missed backup costs recoverability.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use pgagent_protocol::basebackup::{BaseBackupOptions, BaseBackupStream};
use pgagent_protocol::wire::command::parse_byte_size;
use pgagent_protocol::{ConnConfig, ReplicationClient, TimelineHistory};
use pgagent_storage::manifest::{BackupKind, BackupManifest, BackupStatus};

use super::parent::{choose, parse_keep_time, Choice, FallbackReason, ServerFacts};
use super::targets::Target;
use crate::config::Config;
use crate::server::{self, ServerInfo};
use crate::store::catalog;
use crate::store::chain::Chains;

/// Where a backup stands in its chain, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lineage {
    /// Full or incremental.
    pub kind: BackupKind,
    /// The backup it was taken against (incremental only).
    pub parent: Option<String>,
    /// The full backup its chain starts from (incremental only).
    pub root: Option<String>,
    /// 0 for a full backup, the parent's depth + 1 for an incremental one.
    pub depth: u32,
}

impl Lineage {
    /// The lineage of a backup taken against `parent`.
    fn child_of(parent: &BackupManifest) -> Lineage {
        Lineage {
            kind: BackupKind::Incremental,
            parent: Some(parent.id.clone()),
            root: Some(parent.root.clone().unwrap_or_else(|| parent.id.clone())),
            depth: parent.depth + 1,
        }
    }

    /// Writes the lineage (and the manifest format version it needs) into `m`.
    pub fn apply(&self, m: &mut BackupManifest) {
        m.format_version = BackupManifest::format_version_for(self.kind);
        m.kind = self.kind;
        m.parent = self.parent.clone();
        m.root = self.root.clone();
        m.depth = self.depth;
    }
}

/// A backup under way: its stream, its place in a chain, the server's block geometry, and
/// why it is full when it could have been incremental.
pub struct Started {
    /// The archives, as the server sends them.
    pub stream: BaseBackupStream,
    /// Full, or incremental against a parent.
    pub lineage: Lineage,
    /// The server's facts (geometry and checksum state go into the manifest).
    pub facts: ServerFacts,
    /// Why the backup is full although incremental backups are on.
    pub fallback: Option<(FallbackReason, String)>,
}

/// Starts `BASE_BACKUP` with `opts` on `client`: incremental against the newest complete
/// backup of `targets` when [`choose`] says so, else full.
///
/// Errors: the server cannot be read, the parent's `backup_manifest` cannot be read from
/// the store, or the (full) backup cannot start.
pub async fn start(
    cfg: &Config,
    conn: &ConnConfig,
    mut client: ReplicationClient,
    server: &ServerInfo,
    targets: &[Target],
    mut opts: BaseBackupOptions,
) -> anyhow::Result<Started> {
    let facts = read_facts(&mut client, server).await?;
    let newest = newest_complete(targets).await?;
    let backup = &cfg.raw.backup;
    let choice = choose(
        backup.incremental,
        backup.max_chain,
        &facts,
        newest.as_ref(),
        SystemTime::now(),
    );
    let wrap = |e: pgagent_protocol::Error| anyhow::anyhow!(server::explain(conn, &e));
    let mut fallback = match choice {
        Choice::Full(reason) => reason,
        Choice::Incremental(parent) => {
            let refused = |what: &str, e: pgagent_protocol::Error| {
                (
                    FallbackReason::ServerRefused,
                    format!(
                        "the server refused {what} against backup {}: {e}",
                        parent.id
                    ),
                )
            };
            match parent_manifest(targets, &parent).await {
                Err(e) => Some((
                    FallbackReason::NoParent,
                    format!(
                        "the backup_manifest of backup {} cannot be read: {e:#}",
                        parent.id
                    ),
                )),
                Ok(bytes) => match client.upload_manifest(&bytes).await {
                    Err(e) if e.code().is_some() => Some(refused("UPLOAD_MANIFEST", e)),
                    Err(e) => return Err(wrap(e)),
                    Ok(()) => {
                        opts.incremental = true;
                        match client.base_backup(&opts).await {
                            Ok(stream) => {
                                return Ok(Started {
                                    stream,
                                    lineage: Lineage::child_of(&parent),
                                    facts,
                                    fallback: None,
                                })
                            }
                            Err(e) if e.code().is_some() => {
                                // The connection went with the failed command; a new one takes
                                // the full backup.
                                let refusal = refused("an incremental BASE_BACKUP", e);
                                client = server::connect(conn).await?.0;
                                Some(refusal)
                            }
                            Err(e) => return Err(wrap(e)),
                        }
                    }
                },
            }
        }
    };
    if let Some((reason, why)) = &fallback {
        crate::metrics::incremental_fallback(*reason);
        tracing::warn!(
            reason = reason.as_str(),
            "this base backup is full, not incremental: {why}"
        );
    }
    opts.incremental = false;
    let stream = client.base_backup(&opts).await.map_err(wrap)?;
    Ok(Started {
        stream,
        lineage: Lineage::default(),
        facts,
        fallback: fallback.take(),
    })
}

/// PostgreSQL's `backup_manifest` of `parent`, from the first target, exactly as the server
/// sent it (the server checks its checksum).
///
/// Errors: `parent` has none; its chunks cannot be read or verified.
async fn parent_manifest(targets: &[Target], parent: &BackupManifest) -> anyhow::Result<Vec<u8>> {
    let bucket = &targets.first().context("no store")?.bucket;
    let entry = parent.pg_manifest.as_ref().context("no backup_manifest")?;
    catalog::read_chunked(bucket.store.as_ref(), bucket.cipher(), entry).await
}

/// Reads what [`choose`] needs to know about the server.
///
/// Errors: a `SHOW` or `TIMELINE_HISTORY` fails, or prints what cannot be parsed.
async fn read_facts(
    client: &mut ReplicationClient,
    server: &ServerInfo,
) -> anyhow::Result<ServerFacts> {
    let show = |v: String, name: &str| -> anyhow::Result<u64> {
        parse_byte_size(&v).with_context(|| format!("SHOW {name} printed {v:?}"))
    };
    let block_size = show(client.show("block_size").await?, "block_size")?;
    let segment_size = show(client.show("segment_size").await?, "segment_size")?;
    let data_checksums = client.show("data_checksums").await? == "on";
    let (summarize_wal, summary_keep) = if server.version_num >= 170_000 {
        let keep = client.show("wal_summary_keep_time").await?;
        (
            client.show("summarize_wal").await? == "on",
            parse_keep_time(&keep).map_err(anyhow::Error::msg)?,
        )
    } else {
        (false, None)
    };
    let history = if server.timeline.0 > 1 {
        let bytes = server::fetch_history(client, server.timeline).await?;
        TimelineHistory::parse(&String::from_utf8_lossy(&bytes))
            .map_err(|e| anyhow::anyhow!("the history of timeline {}: {e}", server.timeline))?
    } else {
        TimelineHistory::default()
    };
    let block_size = u32::try_from(block_size).context("block_size")?;
    Ok(ServerFacts {
        version_num: server.version_num,
        summarize_wal,
        summary_keep,
        data_checksums,
        block_size,
        segment_blocks: u32::try_from(segment_size / u64::from(block_size.max(1)))
            .context("segment_size")?,
        timeline: server.timeline,
        history,
    })
}

/// The newest backup of the first target that can be restored (complete, its chain whole:
/// a parent with a broken chain would give a backup that cannot be restored either), if
/// every other target holds it complete too (a chain must be whole in every store it is
/// in); `None` otherwise.
///
/// Errors: a store's.
async fn newest_complete(targets: &[Target]) -> anyhow::Result<Option<BackupManifest>> {
    let Some(first) = targets.first() else {
        return Ok(None);
    };
    let store = first.bucket.store.as_ref();
    let mut manifests = Vec::new();
    for id in catalog::backup_ids(store).await? {
        if let Some(m) = catalog::get_manifest(store, first.bucket.cipher(), &id).await? {
            manifests.push(m);
        }
    }
    let chains = Chains::new(&manifests);
    let Some(newest) = manifests.iter().rev().find(|m| chains.restorable(m)) else {
        return Ok(None);
    };
    for t in &targets[1..] {
        let there =
            catalog::get_manifest(t.bucket.store.as_ref(), t.bucket.cipher(), &newest.id).await?;
        if !there.is_some_and(|o| o.status == BackupStatus::Complete) {
            tracing::info!(
                id = newest.id,
                store = t.spec.name,
                "the newest backup is not complete in every store: the next one is full"
            );
            return Ok(None);
        }
    }
    Ok(Some(newest.clone()))
}

/// A backup id no target store holds yet, and the time it names. Ids have a resolution
/// of one second (`catalog::new_id`); a backup taken in the same second as the previous
/// one (backups run one at a time per machine, [`BackupLock`]) waits for the next second
/// rather than write its manifest over the other's.
///
/// Errors: a store's, reading whether the id is taken.
pub async fn unused_id(targets: &[Target]) -> anyhow::Result<(String, SystemTime)> {
    loop {
        let now = SystemTime::now();
        let id = catalog::new_id(now);
        let key = pgagent_storage::layout::backup_manifest_key(&id);
        let mut taken = false;
        for t in targets {
            taken |= t.bucket.store.head(&key).await?.is_some();
        }
        if !taken {
            return Ok((id, now));
        }
        let into_second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        tokio::time::sleep(Duration::from_nanos(u64::from(1_000_000_000 - into_second))).await;
    }
}

/// `<staging>/backup.lock`, held (flock) while a backup runs on this machine.
pub struct BackupLock {
    _file: File,
}

impl BackupLock {
    /// Takes the lock.
    ///
    /// Errors: another backup holds it, or the file cannot be created.
    pub fn take(staging: &Path) -> anyhow::Result<BackupLock> {
        std::fs::create_dir_all(staging)
            .with_context(|| format!("create {}", staging.display()))?;
        let path = staging.join("backup.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(BackupLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another base backup is running on this machine ({} is locked); wait for it to finish",
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("lock {}", path.display()))
            }
        }
    }
}
