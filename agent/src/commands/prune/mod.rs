//! `pgagent prune [--dry-run] [--store NAME]`: apply retention (`keep_backups` of each
//! store, `backup.keep_days`) to every configured store in turn, or to the one named.
//!
//! First, a backup whose files are stored but that waited for its WAL in vain (a store that
//! lagged) is marked complete once that WAL is in the store ([`complete_waiting`]).
//! A complete backup is kept if it is one of the newest `keep_backups` restorable ones or
//! younger than `keep_days` days (0: no age rule); the newest restorable backup is always
//! kept, and so is a running one started less than [`RUNNING_GRACE`] ago (older ones died).
//! Every kept backup keeps the backups it depends on (an incremental backup's parent, the
//! parent's parent… and its root), and a backup whose chain is broken counts for nothing
//! ([`plan`] says what happens to it). Then, in this order, so that no kept manifest
//! ever points at a missing object:
//! 1. the manifests of the other backups are deleted;
//! 2. chunks no manifest references are deleted, under a prune marker and only if no backup
//!    is running when the manifests are read again after the marker is written
//!    ([`crate::backup::guard`] explains why a backup starting meanwhile is safe);
//! 3. WAL segments (and their deltas and `.partial`s, `.backup` files) before the oldest
//!    segment a kept backup or a ZFS snapshot record in the store starts in ([`wal_floor`])
//!    are deleted, but none at or after the lowest `from_lsn` of the store's WAL pins
//!    (`pins/<store>.json`: another store still copies that WAL from this one,
//!    [`with_pin`]); history files stay (they are small and recovery reads them);
//! 4. the deltas and `.partial` objects of segments stored complete are deleted: the agent
//!    uploads the segment being filled as deltas and the segment once complete, and removes
//!    the deltas only when its credentials may delete; those pieces are read by nothing once
//!    the complete segment is in the store (a fetch that listed them and finds one gone
//!    looks again and finds the complete segment). This happens even when no restorable
//!    backup exists (then nothing else is deleted).
//!
//! Snapshots have their own retention (`zfs.keep_*`, applied where they are taken, which
//! deletes the record of each snapshot it destroys), and a weekly snapshot outlives
//! `keep_backups` daily backups: restoring it replays WAL from its start LSN, so every record
//! in the store holds WAL back. Everything is read before anything is deleted, and a record or
//! manifest that cannot be read stops prune.
//!
//! With `store.lock`, no delete is sent for a locked object (`prune/locks.rs`): a backup past
//! retention whose manifest is locked stays whole (it counts as kept: its chunks and WAL
//! stay too), and the chunks, WAL and pieces still locked are left, with how many and when
//! they become deletable printed. Everything a kept backup depends on was locked at least
//! as long as the backup by `pgagent backup` (`crate::backup::lock`), so no kept backup is
//! left with a dependency whose lock ends first.
//!
//! Only this command deletes: `pgagent run` and `pgagent backup` need no delete right.

mod locks;
mod retention;
mod wal;

use retention::younger;
pub use retention::{plan, Plan};
pub use wal::{wal_floor, wal_to_delete, with_pin};

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::layout::{backup_manifest_key, CHUNK_PREFIX, WAL_PREFIX};
use pgagent_storage::manifest::{BackupManifest, BackupStatus};
use pgagent_storage::pin::{self, read_pins};
use pgagent_storage::{ObjectMeta, ObjectStore};

use crate::backup::guard::PruneMarker;
pub use crate::backup::guard::RUNNING_GRACE;
use crate::backup::wal::complete_waiting;
use crate::config::Config;
use crate::store::catalog;
use crate::store::wal::WalIndex;

/// What may happen to the chunks, given every manifest in the store.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunks {
    /// A backup is running (started less than [`RUNNING_GRACE`] ago): no chunk is deleted,
    /// since it may reference any chunk it found in its listing.
    Keep {
        /// The running backup.
        running: String,
    },
    /// Chunks not in `referenced` (hashes) may be deleted.
    Sweep {
        /// Every chunk hash some manifest references.
        referenced: HashSet<String>,
    },
}

/// Decides about the chunks from `manifests`, all the manifests in the store, at `now`.
pub fn chunk_plan<'a>(
    manifests: impl IntoIterator<Item = &'a BackupManifest>,
    now: SystemTime,
) -> Chunks {
    let mut referenced = HashSet::new();
    for m in manifests {
        if m.status == BackupStatus::Running && younger(m, RUNNING_GRACE, now) {
            return Chunks::Keep {
                running: m.id.clone(),
            };
        }
        referenced.extend(m.chunk_hashes().map(str::to_string));
    }
    Chunks::Sweep { referenced }
}

/// The keys among `listed` (a listing of `chunks/`) whose hash is not in `referenced`.
pub fn unreferenced<'a>(listed: &'a [ObjectMeta], referenced: &HashSet<String>) -> Vec<&'a str> {
    listed
        .iter()
        .map(|o| o.key.as_str())
        .filter(|k| !referenced.contains(k.rsplit('/').next().unwrap_or_default()))
        .collect()
}

/// Every manifest in the store, oldest first.
///
/// Errors: the store cannot be read, or a manifest is damaged (deleting around it could
/// lose what it needs).
async fn manifests(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
) -> anyhow::Result<Vec<BackupManifest>> {
    let mut out = Vec::new();
    for id in catalog::backup_ids(store).await? {
        if let Some(m) = catalog::get_manifest(store, cipher, &id).await? {
            out.push(m);
        }
    }
    Ok(out)
}

/// Applies retention to every configured store in turn, each with its own `keep_backups`
/// (or, with `dry_run`, prints what it would delete); `--store NAME` leaves one.
///
/// Errors: a store that cannot be read, or a delete that fails (what was deleted before
/// stays deleted; a rerun finishes the job); the other stores are pruned all the same.
pub async fn run(cfg: &Config, dry_run: bool) -> anyhow::Result<()> {
    if let [_] = cfg.stores.as_slice() {
        return run_one(cfg, dry_run).await;
    }
    let mut failed = Vec::new();
    for spec in &cfg.stores {
        println!("store {} (keep_backups {}):", spec.name, spec.keep_backups);
        if let Err(e) = run_one(&cfg.with_store(spec), dry_run).await {
            println!("store {}: prune failed: {e:#}", spec.name);
            failed.push(format!("store {}: {e:#}", spec.name));
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("prune failed in {}", failed.join("; "));
    }
    Ok(())
}

/// Applies retention to the one store of `cfg`.
async fn run_one(cfg: &Config, dry_run: bool) -> anyhow::Result<()> {
    let opened = crate::store::open_cluster(cfg).await?;
    let crate::store::Opened {
        store, seg, cipher, ..
    } = opened.clone();
    if !dry_run {
        for id in complete_waiting(&opened.bucket(), seg).await? {
            println!("backup {id} is complete: its WAL has reached the store since");
        }
    }
    let pins = read_pins(store.as_ref()).await?;
    let lowest_pin = pin::lowest(&pins)?;
    let manifests_before = manifests(store.as_ref(), cipher.as_ref()).await?;
    let records =
        crate::store::snapshots::all_store_records(store.as_ref(), cipher.as_ref()).await?;
    let p = plan(
        &manifests_before,
        cfg.store().keep_backups,
        cfg.raw.backup.keep_days,
        SystemTime::now(),
    );
    let concurrency = cfg.store().upload_concurrency;
    let now = SystemTime::now();
    // A backup past retention whose manifest is still locked stays whole until it is not:
    // its manifest, its chunks and its WAL.
    let drop_keys: Vec<String> = p.drop.iter().map(|id| backup_manifest_key(id)).collect();
    let drops = locks::sort(
        store.as_ref(),
        &drop_keys,
        &HashMap::new(),
        now,
        concurrency,
    )
    .await?;
    let locked_backups: HashMap<&str, SystemTime> = p
        .drop
        .iter()
        .zip(&drop_keys)
        .filter_map(|(id, key)| {
            let until = drops.locked.iter().find(|(k, _)| k == key)?.1;
            Some((id.as_str(), until))
        })
        .collect();
    // …and so do the backups such a backup depends on, locked or not.
    let held = locks::held_for(&manifests_before, &locked_backups);
    let kept: Vec<&BackupManifest> = manifests_before
        .iter()
        .filter(|m| {
            let id = m.id.as_str();
            p.keep.contains(&m.id) || locked_backups.contains_key(id) || held.contains_key(id)
        })
        .collect();
    let wal_listing = store.list(WAL_PREFIX).await?;
    let wal_index = WalIndex::from_listing(&wal_listing, seg);
    let wal_meta: HashMap<&str, &ObjectMeta> =
        wal_listing.iter().map(|m| (m.key.as_str(), m)).collect();
    for (id, why) in &p.broken {
        println!("backup {id} cannot be restored ({why}): it does not count toward keep_backups");
    }
    for (id, why) in &p.needed {
        println!("kept backup {id}: {why}");
    }
    if p.restorable.is_empty() {
        println!("prune: no restorable backup: backups, chunks and WAL segments stay");
        let superseded = wal_index.superseded_pieces(seg);
        let superseded =
            locks::sort(store.as_ref(), &superseded, &wal_meta, now, concurrency).await?;
        return sweep_superseded(store.as_ref(), &superseded, dry_run, concurrency).await;
    }
    let verb = if dry_run { "would delete" } else { "deleted" };

    for id in &p.drop {
        if let Some(until) = locked_backups.get(id.as_str()) {
            println!(
                "backup {id} is past retention but its manifest is locked until {}: it stays \
                 whole (manifest, chunks, WAL) until then",
                humantime::format_rfc3339_seconds(*until)
            );
            continue;
        }
        if let Some(child) = held.get(id.as_str()) {
            println!("backup {id} stays: backup {child}, kept by its lock, depends on it");
            continue;
        }
        if !dry_run {
            store.delete(&backup_manifest_key(id)).await?;
        }
        println!("{verb} backup {id}");
    }

    if dry_run {
        match chunk_plan(kept.iter().copied(), SystemTime::now()) {
            Chunks::Keep { running } => {
                println!("backup {running} is running: chunks are left for the next prune")
            }
            Chunks::Sweep { referenced } => {
                // `kept` holds the locked backups a real run leaves, and their chunks.
                let listed = store.list(CHUNK_PREFIX).await?;
                let doomed =
                    unreferenced_sorted(store.as_ref(), &listed, &referenced, concurrency).await?;
                println!(
                    "{verb} {} chunks no kept backup needs",
                    doomed.deletable.len()
                );
                if let Some(t) = doomed.locked_text("chunks") {
                    println!("{t}");
                }
            }
        }
    } else {
        let marker = PruneMarker::write(store.as_ref()).await?;
        let key = marker.key().to_string();
        let swept = sweep_chunks(store.as_ref(), cipher.as_ref(), &marker, concurrency).await;
        if let Err(e) = marker.remove(store.as_ref()).await {
            tracing::warn!("prune marker {key} stays: {e}; a backup starting soon waits for it");
        }
        swept?;
    }

    let (oldest_start, needed_by) = with_pin(
        wal_floor(&kept, &records, seg).expect("a complete backup is kept"),
        lowest_pin,
        seg,
    );
    let (old, superseded) = wal_to_delete(&wal_index, oldest_start, seg);
    let old = locks::sort(store.as_ref(), &old, &wal_meta, now, concurrency).await?;
    let superseded = locks::sort(store.as_ref(), &superseded, &wal_meta, now, concurrency).await?;
    if !dry_run {
        delete_all(store.as_ref(), &old.deletable, concurrency).await?;
    }
    println!(
        "{verb} {} WAL objects before {} (the segment {needed_by} starts in); kept {} \
         backups ({} restorable) and {} snapshot records",
        old.deletable.len(),
        oldest_start.start_lsn(seg),
        kept.len(),
        p.restorable.len(),
        records.len()
    );
    for pin in &pins {
        println!(
            "kept the WAL from {} on: store {} still copies it from here (pin written {})",
            pin.from_lsn, pin.store, pin.written_at
        );
    }
    if let Some(t) = old.locked_text("WAL objects before it") {
        println!("{t}");
    }
    sweep_superseded(store.as_ref(), &superseded, dry_run, concurrency).await
}

/// Deletes (or with `dry_run` counts) the deltas and `.partial` objects of segments stored
/// complete: the agent uploads them while a segment fills and leaves them when its
/// credentials cannot delete (it needs no delete right); once the complete segment is in
/// the store they are read by nothing.
///
/// Errors: the store's; what was deleted stays deleted.
async fn sweep_superseded(
    store: &dyn ObjectStore,
    keys: &locks::Sorted,
    dry_run: bool,
    concurrency: usize,
) -> anyhow::Result<()> {
    if !dry_run {
        delete_all(store, &keys.deletable, concurrency).await?;
    }
    println!(
        "{} {} deltas and .partial objects of segments stored complete",
        if dry_run { "would delete" } else { "deleted" },
        keys.deletable.len()
    );
    if let Some(t) = keys.locked_text("of those pieces") {
        println!("{t}");
    }
    Ok(())
}

/// The chunks of `listed` (a listing of `chunks/`) whose hash is not in `referenced`,
/// sorted by their locks.
async fn unreferenced_sorted(
    store: &dyn ObjectStore,
    listed: &[ObjectMeta],
    referenced: &HashSet<String>,
    concurrency: usize,
) -> anyhow::Result<locks::Sorted> {
    let doomed: Vec<String> = unreferenced(listed, referenced)
        .into_iter()
        .map(str::to_string)
        .collect();
    let meta: HashMap<&str, &ObjectMeta> = listed.iter().map(|m| (m.key.as_str(), m)).collect();
    locks::sort(store, &doomed, &meta, SystemTime::now(), concurrency).await
}

/// Deletes `keys`, `concurrency` at a time.
///
/// Errors: the first delete that fails; the others already sent finish.
async fn delete_all(
    store: &dyn ObjectStore,
    keys: &[String],
    concurrency: usize,
) -> anyhow::Result<()> {
    futures::stream::iter(keys.iter().map(|k| async move {
        store
            .delete(k)
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("delete {k}")))
    }))
    .buffer_unordered(concurrency.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

/// Deletes the chunks no manifest references, holding `marker`: the manifests are read
/// again now that the marker is in the store, and nothing is deleted while a backup runs.
///
/// Errors: the store's; what was deleted stays deleted.
async fn sweep_chunks(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    marker: &PruneMarker,
    concurrency: usize,
) -> anyhow::Result<()> {
    let referenced = match chunk_plan(&manifests(store, cipher).await?, SystemTime::now()) {
        Chunks::Keep { running } => {
            println!("backup {running} is running: chunks are left for the next prune");
            return Ok(());
        }
        Chunks::Sweep { referenced } => referenced,
    };
    let listed = store.list(CHUNK_PREFIX).await?;
    let sorted = unreferenced_sorted(store, &listed, &referenced, concurrency).await?;
    if let Some(t) = sorted.locked_text("chunks no backup needs") {
        println!("{t}");
    }
    let doomed = &sorted.deletable;
    let mut deleted = 0usize;
    for key in doomed {
        if !marker.may_delete() {
            println!(
                "deleted {deleted} of {} chunks no backup needs; the next prune deletes the rest",
                doomed.len()
            );
            return Ok(());
        }
        store.delete(key).await?;
        deleted += 1;
    }
    println!("deleted {deleted} chunks no backup needs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chain::tests::with_chunks;

    pub(super) fn m(id: &str, started: &str, status: BackupStatus) -> BackupManifest {
        BackupManifest {
            status,
            system_identifier: "1".into(),
            pg_version_num: 150000,
            start_lsn: "0/2000028".into(),
            start_timeline: 1,
            started_at: started.into(),
            chunk_size: 1 << 20,
            ..BackupManifest::announced(id)
        }
    }

    pub(super) fn now() -> SystemTime {
        humantime::parse_rfc3339("2026-11-21T12:00:00Z").unwrap()
    }

    #[test]
    fn a_running_backup_keeps_every_chunk() {
        use BackupStatus::*;
        let list = [
            with_chunks(m("a", "2026-11-20T03:00:00Z", Complete), &["aa"]),
            m("b", "2026-11-21T11:00:00Z", Running),
        ];
        assert_eq!(
            chunk_plan(&list, now()),
            Chunks::Keep {
                running: "b".into()
            }
        );
        // A running manifest past RUNNING_GRACE is a dead backup's: it holds nothing back,
        // but what it lists stays referenced while its manifest exists.
        let list = [
            with_chunks(m("a", "2026-11-20T03:00:00Z", Complete), &["aa"]),
            with_chunks(m("old", "2026-11-19T03:00:00Z", Running), &["bb"]),
        ];
        assert_eq!(
            chunk_plan(&list, now()),
            Chunks::Sweep {
                referenced: HashSet::from(["aa".to_string(), "bb".to_string()])
            }
        );
    }

    #[test]
    fn only_chunks_no_manifest_references_are_swept() {
        let listed =
            crate::store::wal::listing_of(["chunks/aa/aa1", "chunks/bb/bb2", "chunks/cc/cc3"], 1);
        let referenced = HashSet::from(["bb2".to_string()]);
        assert_eq!(
            unreferenced(&listed, &referenced),
            ["chunks/aa/aa1", "chunks/cc/cc3"]
        );
    }
}
