//! `pgagent backup`: one base backup, from `BASE_BACKUP` to a complete manifest.
//!
//! 1. Connect, check the store belongs to this cluster, take the local backup lock.
//! 2. `BASE_BACKUP` (no WAL: the stream covers it, DESIGN.md "Base backups"). Once it has
//!    started, the backup announces itself with a `running` manifest, waits for any prune
//!    that may not have seen it, and only then lists the chunks in the store
//!    ([`super::guard`]: the order keeps a concurrent prune from deleting a chunk the backup
//!    will not upload again).
//! 3. Each archive is walked on a blocking thread ([`super::archive`]) while the stream is
//!    read, its chunks deduplicated against that listing and uploaded in parallel
//!    ([`super::chunks`]).
//! 4. The manifest is written with its files, still `running`, then — once every WAL segment
//!    from the start to the stop LSN is in the store — as `complete`. A backup running longer
//!    than [`BACKUP_LIMIT`] gives up: prune takes a manifest that old for a dead backup's.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use bytes::Bytes;
use pgagent_protocol::basebackup::{BaseBackupEvent, BaseBackupOptions, BaseBackupStream};
use pgagent_protocol::{
    segment_file_name, ConnConfig, Lsn, ReplicationClient, TimelineId, WalSegmentSize,
};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::layout::wal_key;
use pgagent_storage::manifest::{
    BackupManifest, BackupStats, BackupStatus, EntryKind, FileEntry, TablespaceEntry,
};
use pgagent_storage::ObjectStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::archive::{walk_archive, ArchiveError, ChannelReader, ChunkSink, Walked};
use super::chunks::{known_chunks, upload_chunks, ChunkStats, StoreSink};
use super::guard::{self, BACKUP_LIMIT};
use crate::config::Config;
use crate::server::{self, ServerInfo};
use crate::store::{catalog, Bucket};
use crate::times::rfc3339;

/// How a backup is taken.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// Immediate checkpoint instead of a spread one.
    pub fast: bool,
    /// How long to wait for the WAL up to the stop LSN to reach the store; `None`: forever.
    pub wal_wait: Option<Duration>,
}

/// Takes one base backup into the store of `cfg` and returns its manifest (complete, or
/// running if the WAL did not arrive in time).
///
/// Errors: connection, store or archive errors; another backup running on this machine;
/// [`crate::exit::Refused`] when the store holds another cluster.
pub async fn take_backup(cfg: &Config, req: &BackupRequest) -> anyhow::Result<BackupManifest> {
    let (conn, client, server, store, cipher) = connect(cfg).await?;
    let _lock = BackupLock::take(cfg.staging_dir())?;

    let started = SystemTime::now();
    let begun = Instant::now();
    let id = catalog::new_id(started);
    let chunk_size = cfg.raw.backup.chunk_size.as_u64();

    let mut opts = BaseBackupOptions::new(format!("pgagent {id}"));
    opts.fast_checkpoint = req.fast;
    // The server measures each tablespace first, so progress has a total.
    opts.progress = true;
    let mut stream = client
        .base_backup(&opts)
        .await
        .map_err(|e| anyhow::anyhow!(server::explain(&conn, &e)))?;
    let total: u64 = stream
        .tablespaces()
        .iter()
        .filter_map(|t| t.size_kib)
        .sum::<u64>()
        * 1024;
    let progress = crate::progress::Progress::new(&format!("backup {id}"), total);
    let bucket = Bucket {
        store: store.clone(),
        cipher: cipher.clone(),
    };
    let announced = announce(
        &bucket,
        &server,
        &stream,
        &id,
        &opts.label,
        started,
        chunk_size,
    )
    .await?;
    let known = known_after_prunes(store.as_ref()).await?;
    tracing::info!(id, known_chunks = known.len(), "base backup starting");

    let stored = store_files(
        &mut stream,
        &conn,
        (&store, &cipher),
        cfg,
        known,
        chunk_size,
        &progress,
    )
    .await
    .map_err(|e| e.context(format!("base backup {id}")))?;
    let (start_lsn, start_tli) = (stream.start_lsn(), stream.start_timeline());
    let (stop_lsn, stop_tli) = stream
        .end()
        .ok_or_else(|| anyhow::anyhow!("the server sent no end position"))?;
    let stored = stored.finish(chunk_size).await?;
    let mut manifest = files_manifest(announced, stored, (stop_lsn, stop_tli));
    manifest.check().context("the backup's own manifest")?;
    within_limit(&id, begun)?;
    catalog::put_manifest(store.as_ref(), cipher.as_ref(), &manifest).await?;
    tracing::info!(
        id,
        start = %start_lsn,
        stop = %stop_lsn,
        files = manifest.stats.files,
        bytes = manifest.stats.raw_bytes,
        new_chunks = manifest.stats.new_chunks,
        stored = manifest.stats.new_stored_bytes,
        "files stored; waiting for the WAL up to the stop LSN"
    );
    let left = BACKUP_LIMIT.saturating_sub(begun.elapsed());
    let wal_wait = Some(req.wal_wait.map_or(left, |w| w.min(left)));
    if wait_for_wal(
        &id,
        store.as_ref(),
        (start_lsn, start_tli),
        (stop_lsn, stop_tli),
        server.seg,
        wal_wait,
    )
    .await?
    {
        within_limit(&id, begun)?;
        manifest.status = BackupStatus::Complete;
        catalog::put_manifest(store.as_ref(), cipher.as_ref(), &manifest).await?;
        tracing::info!(id, "base backup complete");
    } else {
        tracing::warn!(
            id,
            "the WAL up to {stop_lsn} is not in the store yet: the backup stays 'running' \
             (is pgagent run streaming this server?)"
        );
    }
    Ok(manifest)
}

/// Step 1: connects (application name `pgagent backup` unless set), opens the store and
/// claims it for the server's cluster; the last item is the store's cipher.
async fn connect(
    cfg: &Config,
) -> anyhow::Result<(
    ConnConfig,
    ReplicationClient,
    ServerInfo,
    Arc<dyn ObjectStore>,
    Option<ObjectCipher>,
)> {
    let conn = server::conn_config(cfg, "pgagent backup")?;
    let (client, server) = server::connect(&conn).await?;
    let store = crate::store::open(cfg).await?;
    let cipher = crate::store::claim_store(store.as_ref(), &server, cfg).await?;
    Ok((conn, client, server, store, cipher))
}

/// Step 2: once `BASE_BACKUP` has started, writes the `running` manifest that announces the
/// backup (before the chunks it will not upload again are listed: [`super::guard`]) and
/// returns it.
async fn announce(
    bucket: &Bucket,
    server: &ServerInfo,
    stream: &BaseBackupStream,
    id: &str,
    label: &str,
    started: SystemTime,
    chunk_size: u64,
) -> anyhow::Result<BackupManifest> {
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
    let announced = BackupManifest {
        system_identifier: server.system_id.to_string(),
        pg_version_num: server.version_num,
        label: label.to_string(),
        start_lsn: stream.start_lsn().to_string(),
        start_timeline: stream.start_timeline().0,
        started_at: rfc3339(started),
        chunk_size,
        tablespaces,
        ..BackupManifest::announced(id)
    };
    catalog::put_manifest(bucket.store.as_ref(), bucket.cipher(), &announced).await?;
    Ok(announced)
}

/// Step 3: waits for any prune that may not have seen the announced backup, then lists the
/// chunks already in the store.
async fn known_after_prunes(store: &dyn ObjectStore) -> anyhow::Result<HashSet<String>> {
    guard::wait_for_prunes(store, guard::PRUNE_LEASE + guard::DELETE_SETTLE).await?;
    known_chunks(store)
        .await
        .map_err(|e| anyhow::anyhow!("list chunks: {e}"))
}

/// What step 4 stored: the walked archives, PostgreSQL's `backup_manifest` (not yet cut
/// into chunks), and the chunk uploader still running.
struct Stored {
    walked: Walked,
    pg_manifest: Vec<u8>,
    sink: Option<StoreSink>,
    uploader: JoinHandle<anyhow::Result<()>>,
    stats: Arc<Mutex<ChunkStats>>,
}

/// Step 4: walks each archive of the stream on a blocking thread while it is read, its
/// chunks deduplicated against `known` and uploaded in parallel. On an error the uploader
/// is waited for before it is returned.
async fn store_files(
    stream: &mut BaseBackupStream,
    conn: &ConnConfig,
    (store, cipher): (&Arc<dyn ObjectStore>, &Option<ObjectCipher>),
    cfg: &Config,
    known: HashSet<String>,
    chunk_size: u64,
    progress: &crate::progress::Progress,
) -> anyhow::Result<Stored> {
    let stats = Arc::new(Mutex::new(ChunkStats::default()));
    let concurrency = cfg.store().upload_concurrency;
    let (chunk_tx, chunk_rx) = mpsc::channel(concurrency * 2);
    let uploader = tokio::spawn(upload_chunks(
        store.clone(),
        cipher.clone(),
        chunk_rx,
        concurrency,
        cfg.raw.wal.compression_level,
        stats.clone(),
    ));
    let mut sink = Some(StoreSink::new(
        cipher.clone(),
        known,
        chunk_tx,
        stats.clone(),
    ));
    let mut walker: Option<Walker> = None;
    let mut walked = Walked::default();
    let mut pg_manifest = Vec::new();
    let streamed: anyhow::Result<()> = async {
        while let Some(event) = stream
            .next()
            .await
            .map_err(|e| anyhow::anyhow!(server::explain(conn, &e)))?
        {
            match event {
                BaseBackupEvent::Archive { name, tablespace } => {
                    let s = match walker.take() {
                        Some(w) => w.finish(&mut walked).await?,
                        None => sink.take().context("no chunk sink")?,
                    };
                    let prefix = match tablespace.and_then(|t| t.oid) {
                        Some(oid) => format!("pg_tblspc/{oid}/"),
                        None => String::new(),
                    };
                    tracing::debug!(archive = name, "walking");
                    walker = Some(Walker::start(s, prefix, chunk_size));
                }
                BaseBackupEvent::ArchiveData(data) => match &walker {
                    Some(w) if w.tx.send(data).await.is_ok() => {}
                    Some(_) => {
                        let w = walker.take().expect("matched");
                        w.finish(&mut walked).await?;
                        bail!("the archive walker stopped");
                    }
                    None => bail!("archive data before any archive"),
                },
                BaseBackupEvent::ManifestData(data) => pg_manifest.extend_from_slice(&data),
                BaseBackupEvent::Progress(sent) => {
                    progress.add(sent.saturating_sub(progress.done()));
                }
            }
        }
        if let Some(w) = walker.take() {
            sink = Some(w.finish(&mut walked).await?);
        }
        Ok(())
    }
    .await;
    progress.finish();
    if let Err(e) = streamed {
        drop(sink);
        drop(walker);
        let _ = uploader.await;
        return Err(e);
    }
    Ok(Stored {
        walked,
        pg_manifest,
        sink,
        uploader,
        stats,
    })
}

/// What the files of a backup came to.
struct Files {
    walked: Walked,
    pg_manifest: Option<FileEntry>,
    /// Chunks referenced, chunks uploaded, bytes uploaded.
    chunks: (u64, u64, u64),
}

impl Stored {
    /// Step 5: cuts PostgreSQL's `backup_manifest` into chunks as one more file, and waits
    /// for the uploader to store every chunk.
    async fn finish(mut self, chunk_size: u64) -> anyhow::Result<Files> {
        let pg_manifest = std::mem::take(&mut self.pg_manifest);
        let pg_manifest_entry = if pg_manifest.is_empty() {
            None
        } else {
            let mtime = unix_seconds(SystemTime::now());
            let size = pg_manifest.len() as u64;
            let mut sink = self.sink.take().context("no chunk sink")?;
            let (entry, back) = tokio::task::spawn_blocking(move || {
                let chunks: anyhow::Result<Vec<String>> = pg_manifest
                    .chunks(chunk_size as usize)
                    .map(|c| sink.put(c.to_vec()))
                    .collect();
                (chunks, sink)
            })
            .await?;
            drop(back);
            Some(FileEntry {
                path: "backup_manifest".into(),
                kind: EntryKind::File,
                mode: 0o600,
                size,
                mtime,
                chunks: entry?,
                target: None,
            })
        };
        drop(self.sink);
        self.uploader.await??;
        let chunks = {
            let s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            (s.chunks, s.new_chunks, s.new_stored_bytes)
        };
        Ok(Files {
            walked: self.walked,
            pg_manifest: pg_manifest_entry,
            chunks,
        })
    }
}

/// Step 6: the announced manifest with the stop position, the files and their counts
/// (still `running`).
fn files_manifest(
    announced: BackupManifest,
    mut files: Files,
    (stop_lsn, stop_tli): (Lsn, TimelineId),
) -> BackupManifest {
    let (chunks, new_chunks, new_stored_bytes) = files.chunks;
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
    manifest.pg_manifest = files.pg_manifest;
    manifest.stats = BackupStats {
        files: regular.len() as u64,
        raw_bytes: regular.iter().map(|f| f.size).sum(),
        chunks,
        new_chunks,
        new_stored_bytes,
    };
    manifest.files = std::mem::take(&mut files.walked.entries);
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

/// One archive being walked on a blocking thread.
struct Walker {
    tx: mpsc::Sender<Bytes>,
    handle: JoinHandle<(Result<Walked, ArchiveError>, StoreSink)>,
}

impl Walker {
    fn start(mut sink: StoreSink, prefix: String, chunk_size: u64) -> Walker {
        let (tx, rx) = mpsc::channel(8);
        let handle = tokio::task::spawn_blocking(move || {
            let r = walk_archive(
                ChannelReader::new(rx),
                &prefix,
                chunk_size as usize,
                &mut sink,
            );
            (r, sink)
        });
        Walker { tx, handle }
    }

    /// Ends the archive and adds what it held to `into`; returns the sink.
    async fn finish(self, into: &mut Walked) -> anyhow::Result<StoreSink> {
        drop(self.tx);
        let (r, sink) = self.handle.await?;
        let w = r?;
        into.entries.extend(w.entries);
        into.backup_label = into.backup_label.take().or(w.backup_label);
        into.tablespace_map = into.tablespace_map.take().or(w.tablespace_map);
        Ok(sink)
    }
}

/// How often a backup waiting for its WAL says what it waits for.
pub const WAIT_REMINDER: Duration = Duration::from_secs(30);

/// Whether every segment holding WAL from `start` to `stop` is in the store as a complete
/// object; polls once a second until `wait` passes (`None`: forever).
///
/// Only `pgagent run` streaming the server puts that WAL in the store: while a segment is
/// missing, backup `id` says which, at once and every [`WAIT_REMINDER`], and that the
/// daemon must be streaming this server, so a wait with no daemon is not a silent one.
async fn wait_for_wal(
    id: &str,
    store: &dyn ObjectStore,
    start: (Lsn, TimelineId),
    stop: (Lsn, TimelineId),
    seg: WalSegmentSize,
    wait: Option<Duration>,
) -> anyhow::Result<bool> {
    if start.1 != stop.1 {
        bail!(
            "the timeline changed during the backup ({} to {}); take it again",
            start.1,
            stop.1
        );
    }
    let first = start.0.segment_number(seg);
    // The stop LSN is exclusive: a stop on a segment boundary needs nothing past it.
    let last = Lsn(stop.0 .0.saturating_sub(1))
        .segment_number(seg)
        .max(first);
    let begun = Instant::now();
    let deadline = wait.map(|w| begun + w);
    let mut say_at = begun;
    let mut next = first;
    loop {
        while next <= last {
            let key = wal_key(&segment_file_name(start.1, next, seg));
            match store.head(&key).await {
                Ok(Some(_)) => next = next.next(),
                Ok(None) => break,
                Err(e) if e.is_transient() => break,
                Err(e) => return Err(anyhow::anyhow!("{key}: {e}")),
            }
        }
        if next > last {
            return Ok(true);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(false);
        }
        if now >= say_at {
            let waited = Duration::from_secs(now.duration_since(begun).as_secs());
            let left = deadline.map_or_else(
                || "no limit".to_string(),
                |d| {
                    format!(
                        "{} left",
                        humantime::format_duration(Duration::from_secs(
                            d.saturating_duration_since(now).as_secs(),
                        ))
                    )
                },
            );
            let message = format!(
                "backup {id}: waiting for WAL segment {} ({} of {} up to the stop LSN {}) to \
                 reach the store; waited {}, {left}. Only `pgagent run` puts WAL in the store: \
                 it must be streaming this server into this store",
                segment_file_name(start.1, next, seg),
                next.0 - first.0 + 1,
                last.0 - first.0 + 1,
                stop.0,
                humantime::format_duration(waited),
            );
            if say_at == begun {
                tracing::info!("{message}");
            } else {
                tracing::warn!("{message}");
            }
            say_at += WAIT_REMINDER;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `<staging>/backup.lock`, held (flock) while a backup runs on this machine.
struct BackupLock {
    _file: File,
}

impl BackupLock {
    fn take(staging: &Path) -> anyhow::Result<BackupLock> {
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

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
