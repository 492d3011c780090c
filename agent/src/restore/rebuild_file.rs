//! One file of a chain restore: its sources' headers read, its blocks planned
//! ([`super::combine::plan_blocks`]), the chunks holding them fetched and verified, and the
//! output written with its CRC-32C computed on the way.
//!
//! Only the chunks that hold needed bytes are read, each once while it is in use: every
//! source keeps its last chunk, so blocks that alternate between sources do not fetch a
//! chunk again. The fetches run ahead of the writer ([`CHUNKS_AHEAD`]); the writer, on a
//! blocking thread, holds one chunk per source, never a whole file (a relation segment is
//! up to 1 GiB).

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use pgagent_protocol::incremental::{BlockGeometry, IncrementalError, IncrementalHeader};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::layout::chunk_key;
use pgagent_storage::manifest::{BackupManifest, FileEntry};
use pgagent_storage::{envelope, ObjectStore};

use super::combine::{plan_blocks, OutputFile, Run, Shape};

/// Chunks of one file fetched ahead of the one being written.
pub const CHUNKS_AHEAD: usize = 4;

/// Zeros written at a time for blocks no backup holds.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// A stored file of one backup of the chain.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    /// The backup's id (for messages).
    pub backup: &'a str,
    /// The file.
    pub entry: &'a FileEntry,
    /// The backup's chunk size, bytes.
    pub chunk_size: u64,
}

impl<'a> Stored<'a> {
    /// The stored file `entry` of `manifest`.
    pub fn of(manifest: &'a BackupManifest, entry: usize) -> Self {
        Stored {
            backup: &manifest.id,
            entry: &manifest.files[entry],
            chunk_size: manifest.chunk_size,
        }
    }
}

/// Reads and verifies chunk `idx` of `s`: the envelope, the content hash against the name
/// the manifest gives, and the length a chunk at that place must have.
///
/// Errors: the chunk is missing, damaged or of the wrong length; the message names the
/// backup, the file and the chunk.
pub async fn fetch_chunk(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    s: Stored<'_>,
    idx: u64,
) -> anyhow::Result<Bytes> {
    let what = || format!("backup {}: {}", s.backup, s.entry.path);
    let Some(hash) = s.entry.chunks.get(idx as usize) else {
        bail!("{}: no chunk {idx}", what());
    };
    let key = chunk_key(hash);
    let body = store
        .get(&key)
        .await
        .with_context(|| format!("{}: chunk {hash}", what()))?;
    let expected_len = s.chunk_size.min(s.entry.size - idx * s.chunk_size);
    let (hash, cipher) = (hash.clone(), cipher.cloned());
    let raw = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let header = envelope::Header::parse(&body).map_err(|e| e.with_key(&key))?;
        if header.hash.to_hex().as_str() != hash {
            bail!(
                "chunk {key} holds content of hash {}, not {hash}",
                header.hash.to_hex()
            );
        }
        let raw = envelope::open_for(&body, cipher.as_ref(), &key)?;
        if raw.len() as u64 != expected_len {
            bail!(
                "chunk {key} holds {} bytes, {expected_len} expected",
                raw.len()
            );
        }
        Ok(raw)
    })
    .await?
    .with_context(what)?;
    Ok(Bytes::from(raw))
}

/// The header of the incremental file `s`, read from as many of its first chunks as it
/// spans; with the last chunk read (index and bytes), which the writer keeps.
///
/// Errors: as [`fetch_chunk`]; a header that does not parse, or a file whose length is
/// not header plus blocks (naming the backup and the file).
pub async fn read_header(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    s: Stored<'_>,
    geometry: BlockGeometry,
) -> anyhow::Result<(IncrementalHeader, (u64, Bytes))> {
    let what = || format!("backup {}: {}", s.backup, s.entry.path);
    let mut head: Vec<u8> = Vec::new();
    for idx in 0..s.entry.chunks.len() as u64 {
        let chunk = fetch_chunk(store, cipher, s, idx).await?;
        let parsed = if idx == 0 {
            IncrementalHeader::parse(&chunk, geometry)
        } else {
            head.extend_from_slice(&chunk);
            IncrementalHeader::parse(&head, geometry)
        };
        match parsed {
            Ok(h) => {
                h.check_len(s.entry.size, geometry.block_size)
                    .with_context(what)?;
                return Ok((h, (idx, chunk)));
            }
            Err(IncrementalError::Incomplete { .. }) => {
                if idx == 0 {
                    head.extend_from_slice(&chunk);
                }
            }
            Err(e) => return Err(e).with_context(what),
        }
    }
    let need = match IncrementalHeader::parse(&head, geometry) {
        Err(IncrementalError::Incomplete { need }) => need,
        _ => 12,
    };
    Err(IncrementalError::Incomplete { need }).with_context(what)
}

/// One step of writing: zeros, or a slice of a source's chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Zeros(u64),
    Slice {
        source: usize,
        chunk: u64,
        start: usize,
        len: usize,
        /// The source's kept chunk is another one: this one must be fetched.
        fetch: bool,
    },
}

/// Walks `runs` as pieces, each within one chunk, tracking which chunk each source keeps
/// (`kept`, updated); the fetch schedule and the writer both walk this way, so they agree
/// on which chunk comes next.
fn walk(
    runs: &[Run],
    chunk_sizes: &[u64],
    kept: &mut [Option<u64>],
    mut visit: impl FnMut(Piece) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for run in runs {
        match *run {
            Run::Zeros { len } => visit(Piece::Zeros(len))?,
            Run::Stored {
                source,
                offset,
                len,
            } => {
                let cs = chunk_sizes[source];
                let (mut at, end) = (offset, offset + len);
                while at < end {
                    let chunk = at / cs;
                    let start = at - chunk * cs;
                    let len = (cs - start).min(end - at);
                    let fetch = kept[source] != Some(chunk);
                    kept[source] = Some(chunk);
                    visit(Piece::Slice {
                        source,
                        chunk,
                        start: start as usize,
                        len: len as usize,
                        fetch,
                    })?;
                    at += len;
                }
            }
        }
    }
    Ok(())
}

/// What was written for one output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Out {
    /// Bytes.
    pub len: u64,
    /// CRC-32C of the content.
    pub crc32c: u32,
}

/// Writes `file` of the chain `members` (oldest first) to `target`: created with
/// `O_EXCL | O_NOFOLLOW`, given the newest entry's mode and modification time, fsynced.
///
/// Errors: as [`fetch_chunk`] and [`read_header`]; local I/O errors, naming the target.
pub async fn write_output(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    members: &[BackupManifest],
    file: &OutputFile,
    target: PathBuf,
) -> anyhow::Result<Out> {
    let sources: Vec<Stored> = file
        .sources
        .iter()
        .map(|s| Stored::of(&members[s.backup], s.entry))
        .collect();
    let newest = &members[members.len() - 1];
    let mut kept: Vec<Option<(u64, Bytes)>> = vec![None; sources.len()];
    let (runs, len) = if file.is_copy() {
        let size = sources[0].entry.size;
        let runs = match size {
            0 => vec![],
            len => vec![Run::Stored {
                source: 0,
                offset: 0,
                len,
            }],
        };
        (runs, size)
    } else {
        let geometry = BlockGeometry {
            block_size: newest.block_size.context("no block size")?,
            segment_blocks: newest.segment_blocks.context("no segment size")?,
        };
        let mut headers = Vec::new();
        for (i, (s, src)) in sources.iter().zip(&file.sources).enumerate() {
            if src.incremental {
                let (h, last) = read_header(store, cipher, *s, geometry).await?;
                headers.push(Some(h));
                kept[i] = Some(last);
            } else {
                headers.push(None);
            }
        }
        let shapes: Vec<Shape> = sources[1..]
            .iter()
            .zip(&headers[1..])
            .map(|(s, h)| match h {
                Some(h) => Shape::Incremental(h),
                None => Shape::Whole { size: s.entry.size },
            })
            .collect();
        let newest_header = headers[0].as_ref().expect("source 0 is incremental");
        let plan = plan_blocks(geometry.block_size, newest_header, &shapes);
        (plan.runs, plan.len)
    };
    let chunk_sizes: Vec<u64> = sources.iter().map(|s| s.chunk_size).collect();
    let mut schedule = Vec::new();
    let mut kept_at: Vec<Option<u64>> = kept.iter().map(|k| k.as_ref().map(|k| k.0)).collect();
    walk(&runs, &chunk_sizes, &mut kept_at, |p| {
        if let Piece::Slice {
            source,
            chunk,
            fetch: true,
            ..
        } = p
        {
            schedule.push((source, chunk));
        }
        Ok(())
    })?;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<Bytes>>(2);
    let entry = newest.files[file.newest].clone();
    let writer = {
        let target = target.clone();
        tokio::task::spawn_blocking(move || {
            let next = || -> anyhow::Result<Bytes> {
                rx.blocking_recv()
                    .unwrap_or_else(|| Err(anyhow::anyhow!("the chunk reader stopped")))
            };
            write_runs(&target, &runs, &chunk_sizes, kept, next, &entry)
        })
    };
    let mut fetches = futures::stream::iter(
        schedule
            .into_iter()
            .map(|(source, chunk)| fetch_chunk(store, cipher, sources[source], chunk)),
    )
    .buffered(CHUNKS_AHEAD);
    while let Some(fetched) = fetches.next().await {
        let failed = fetched.is_err();
        if tx.send(fetched).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    let out = writer.await??;
    if out.len != len {
        bail!(
            "{}: wrote {} bytes, {len} planned",
            target.display(),
            out.len
        );
    }
    Ok(out)
}

/// The writer's side of [`write_output`], on a blocking thread: `next` gives the chunks
/// the walk needs, in order.
fn write_runs(
    target: &Path,
    runs: &[Run],
    chunk_sizes: &[u64],
    mut kept: Vec<Option<(u64, Bytes)>>,
    mut next: impl FnMut() -> anyhow::Result<Bytes>,
    entry: &FileEntry,
) -> anyhow::Result<Out> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(target)
        .with_context(|| format!("create {}", target.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut out = Out { len: 0, crc32c: 0 };
    let mut kept_at: Vec<Option<u64>> = kept.iter().map(|k| k.as_ref().map(|k| k.0)).collect();
    let io =
        |e: std::io::Error| anyhow::Error::new(e).context(format!("write {}", target.display()));
    walk(runs, chunk_sizes, &mut kept_at, |piece| {
        let bytes: &[u8] = match piece {
            Piece::Zeros(mut len) => {
                while len > 0 {
                    let n = len.min(ZEROS.len() as u64) as usize;
                    w.write_all(&ZEROS[..n]).map_err(io)?;
                    out.crc32c = crc32c::crc32c_append(out.crc32c, &ZEROS[..n]);
                    out.len += n as u64;
                    len -= n as u64;
                }
                return Ok(());
            }
            Piece::Slice {
                source,
                chunk,
                start,
                len,
                fetch,
            } => {
                if fetch {
                    kept[source] = Some((chunk, next()?));
                }
                let (_, bytes) = kept[source].as_ref().expect("fetched or kept");
                bytes.get(start..start + len).with_context(|| {
                    format!("{}: a chunk shorter than planned", target.display())
                })?
            }
        };
        w.write_all(bytes).map_err(io)?;
        out.crc32c = crc32c::crc32c_append(out.crc32c, bytes);
        out.len += bytes.len() as u64;
        Ok(())
    })?;
    let f = w.into_inner().map_err(|e| io(e.into_error()))?;
    finish_file(&f, entry.mode, entry.mtime)
        .with_context(|| format!("write {}", target.display()))?;
    Ok(out)
}

/// Mode, modification time (seconds since the epoch), fsync.
pub fn finish_file(f: &File, mode: u32, mtime: i64) -> std::io::Result<()> {
    f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64))?;
    f.sync_all()
}
