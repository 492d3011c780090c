//! Step 3 of a base backup ([`super::take`]): each archive of the stream walked on a
//! blocking thread while it is read ([`super::archive`]), its chunks deduplicated against
//! what each store holds, sealed once and uploaded to every store lacking them
//! ([`super::chunks::fan_out_chunks`]), and PostgreSQL's `backup_manifest` cut into chunks
//! as one more file at the end.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{bail, Context};
use bytes::Bytes;
use pgagent_protocol::basebackup::{BaseBackupEvent, BaseBackupStream};
use pgagent_protocol::ConnConfig;
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::manifest::{EntryKind, FileEntry};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::archive::{walk_archive, ArchiveError, ChannelReader, ChunkSink, Walked};
use super::chunks::{fan_out_chunks, ChunkStats, ChunkTarget, StoreSink};
use super::targets::{held_by_all, Target};
use crate::config::Config;
use crate::server;

/// What step 3 stored: the walked archives, PostgreSQL's `backup_manifest` (not yet cut
/// into chunks), and the chunk uploaders still running, with each store's counts.
pub(super) struct Stored {
    walked: Walked,
    pg_manifest: Vec<u8>,
    /// Archive and manifest bytes the server sent.
    server_bytes: u64,
    sink: Option<StoreSink>,
    uploader: JoinHandle<Vec<anyhow::Result<()>>>,
    /// The sink's counts: chunks referenced.
    stats: Arc<Mutex<ChunkStats>>,
    targets: Vec<(Target, Arc<Mutex<ChunkStats>>)>,
}

/// Step 3: walks each archive of the stream on a blocking thread while it is read, its
/// chunks deduplicated against what each of `targets` holds, sealed once with `cipher`
/// and uploaded to every store lacking them. On an error the uploaders are waited for, and
/// what stopped them is added to it.
pub(super) async fn store_files(
    stream: &mut BaseBackupStream,
    conn: &ConnConfig,
    cfg: &Config,
    cipher: &Option<ObjectCipher>,
    targets: Vec<Target>,
    chunk_size: u64,
    progress: &crate::progress::Progress,
) -> anyhow::Result<Stored> {
    let stats = Arc::new(Mutex::new(ChunkStats::default()));
    let held = held_by_all(&targets);
    let mut chunk_targets = Vec::with_capacity(targets.len());
    let mut with_stats = Vec::with_capacity(targets.len());
    for mut t in targets {
        let target_stats = Arc::new(Mutex::new(ChunkStats::default()));
        chunk_targets.push(ChunkTarget {
            store: t.bucket.store.clone(),
            // A locking store keeps its listing: the chunks that were in it are the ones
            // whose locks the backup may have to extend (`super::lock`).
            known: match t.bucket.store.lock_policy() {
                Some(_) => t.known.clone(),
                None => std::mem::take(&mut t.known),
            },
            concurrency: t.spec.upload_concurrency,
            stats: target_stats.clone(),
        });
        with_stats.push((t, target_stats));
    }
    let queue = with_stats
        .iter()
        .map(|(t, _)| t.spec.upload_concurrency)
        .max()
        .unwrap_or(1);
    let (chunk_tx, chunk_rx) = mpsc::channel(queue * 2);
    let uploader = tokio::spawn(fan_out_chunks(
        cipher.clone(),
        chunk_rx,
        cfg.raw.wal.compression_level,
        chunk_targets,
    ));
    let mut sink = Some(StoreSink::new(
        cipher.clone(),
        held,
        chunk_tx,
        stats.clone(),
    ));
    let mut walker: Option<Walker> = None;
    let mut walked = Walked::default();
    let mut pg_manifest = Vec::new();
    let mut server_bytes = 0u64;
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
                BaseBackupEvent::ArchiveData(data) => {
                    server_bytes += data.len() as u64;
                    match &walker {
                        Some(w) if w.tx.send(data).await.is_ok() => {}
                        Some(_) => {
                            let w = walker.take().expect("matched");
                            w.finish(&mut walked).await?;
                            bail!("the archive walker stopped");
                        }
                        None => bail!("archive data before any archive"),
                    }
                }
                BaseBackupEvent::ManifestData(data) => {
                    server_bytes += data.len() as u64;
                    pg_manifest.extend_from_slice(&data)
                }
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
        return Err(with_store_errors(e, uploader, &with_stats).await);
    }
    Ok(Stored {
        walked,
        pg_manifest,
        server_bytes,
        sink,
        uploader,
        stats,
        targets: with_stats,
    })
}

/// `e`, with what stopped each store's uploads, once they have all ended.
async fn with_store_errors(
    e: anyhow::Error,
    uploader: JoinHandle<Vec<anyhow::Result<()>>>,
    targets: &[(Target, Arc<Mutex<ChunkStats>>)],
) -> anyhow::Error {
    let Ok(results) = uploader.await else {
        return e;
    };
    let failures: Vec<String> = targets
        .iter()
        .zip(results)
        .filter_map(|((t, _), r)| r.err().map(|e| format!("store {}: {e:#}", t.spec.name)))
        .collect();
    if failures.is_empty() {
        e
    } else {
        e.context(failures.join("; "))
    }
}

/// What the files of a backup came to.
pub(super) struct Files {
    pub(super) walked: Walked,
    pub(super) pg_manifest: Option<FileEntry>,
    /// Chunks referenced (with repeats).
    pub(super) chunks: u64,
    /// Archive and manifest bytes the server sent.
    pub(super) server_bytes: u64,
}

/// What one store's chunk uploads came to.
pub(super) struct StoreStats {
    /// Chunks uploaded there.
    pub(super) new_chunks: u64,
    /// Their stored bytes.
    pub(super) new_stored_bytes: u64,
    /// Whether every chunk reached the store.
    pub(super) result: anyhow::Result<()>,
}

impl Stored {
    /// Step 3, end: cuts PostgreSQL's `backup_manifest` into chunks as one more file, and
    /// waits for the uploaders; returns each store with what its uploads came to.
    pub(super) async fn finish(
        mut self,
        chunk_size: u64,
    ) -> anyhow::Result<(Files, Vec<(Target, StoreStats)>)> {
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
            let chunks = match entry {
                Ok(c) => c,
                Err(e) => return Err(with_store_errors(e, self.uploader, &self.targets).await),
            };
            Some(FileEntry {
                path: "backup_manifest".into(),
                kind: EntryKind::File,
                mode: 0o600,
                size,
                mtime,
                chunks,
                target: None,
            })
        };
        drop(self.sink);
        let results = self.uploader.await?;
        let chunks = self.stats.lock().unwrap_or_else(|e| e.into_inner()).chunks;
        let targets = self
            .targets
            .into_iter()
            .zip(results)
            .map(|((t, stats), result)| {
                let s = stats.lock().unwrap_or_else(|e| e.into_inner());
                let result = result.map_err(|e| e.context("the backup's chunks"));
                let counts = StoreStats {
                    new_chunks: s.new_chunks,
                    new_stored_bytes: s.new_stored_bytes,
                    result,
                };
                drop(s);
                (t, counts)
            })
            .collect();
        Ok((
            Files {
                walked: self.walked,
                pg_manifest: pg_manifest_entry,
                chunks,
                server_bytes: self.server_bytes,
            },
            targets,
        ))
    }
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

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
