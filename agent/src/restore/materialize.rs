//! Writing a base backup from the store into a data directory.
//!
//! The manifest is checked first ([`BackupManifest::check`]): nothing is written for a
//! manifest with a path that could leave the data directory. Directories are created in
//! manifest order, files are assembled from their chunks — each chunk's envelope verified
//! and its hash compared with the name the manifest gives it — several files at a time, and
//! created with `O_EXCL | O_NOFOLLOW`, so an existing file or a planted symlink is never
//! written through. Files of tablespace `oid` (`pg_tblspc/<oid>/…`) go to the tablespace's
//! directory, which must be missing or empty, and `pg_tblspc/<oid>` becomes a symlink to it,
//! as PostgreSQL expects (PostgreSQL docs, "Tablespaces"). In delta mode the directories
//! may hold files already; what the backup does not hold is removed first, in a tablespace
//! only inside the backup's own version directory (see `restore/delta.rs`).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::layout::chunk_key;
use pgagent_storage::manifest::{BackupManifest, EntryKind, FileEntry};
use pgagent_storage::{envelope, ObjectStore};

use super::places::{create_new_file, make_dir, Places};
use crate::progress::Progress;
use crate::store::Bucket;

pub use super::places::{Mode, TablespaceDir};

/// Chunks of one file downloaded ahead of the one being written.
const CHUNKS_AHEAD: usize = 4;

/// What was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Regular files written.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Files already identical on disk (delta mode), left as they were.
    pub unchanged: u64,
    /// Entries removed because the backup does not hold them (delta mode).
    pub removed: u64,
}

/// Writes every entry of `manifest` (and PostgreSQL's `backup_manifest`) into `pgdata`,
/// which must exist, from the chunks of `bucket` (opened with its cipher); `concurrency`
/// files are assembled at a time.
///
/// Errors: the manifest fails its check, a chunk is missing or fails verification (the
/// message names the chunk and the file), a tablespace directory is not empty, or any
/// local I/O error. What was written so far stays (the caller reports it; a retry needs
/// `--force` on a non-empty directory).
pub async fn materialize(
    bucket: &Bucket,
    manifest: &BackupManifest,
    pgdata: &Path,
    tablespace_dir: &TablespaceDir,
    concurrency: usize,
    mode: Mode,
    progress: &Progress,
) -> anyhow::Result<Written> {
    manifest.check()?;
    let places = Places::new(manifest, pgdata, tablespace_dir, mode)?;
    let removed = match mode {
        Mode::Delta => super::delta::remove_unwanted(manifest, &places)?,
        Mode::Fresh => 0,
    };
    let mut files = Vec::new();
    for entry in manifest.entries() {
        let target = places.resolve(&entry.path);
        match entry.kind {
            EntryKind::Dir => make_dir(&target, entry.mode)?,
            EntryKind::File => files.push((entry.clone(), target)),
            // Only tablespace links pass the check; they are made below, to the
            // directory chosen for the tablespace.
            EntryKind::Symlink => {}
        }
    }
    let start = Written {
        removed,
        ..Written::default()
    };
    let (store, cipher) = (&bucket.store, bucket.cipher());
    let written = futures::stream::iter(files.into_iter().map(|(entry, target)| {
        let store = store.clone();
        let chunk_size = manifest.chunk_size;
        async move {
            if mode == Mode::Delta && already_there(&entry, &target, chunk_size).await? {
                progress.add(entry.size);
                return anyhow::Ok(None);
            }
            write_file(store.as_ref(), cipher, &entry, &target, mode == Mode::Delta).await?;
            progress.add(entry.size);
            Ok(Some(entry.size))
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .try_fold(start, |mut w, size| async move {
        match size {
            Some(size) => {
                w.files += 1;
                w.bytes += size;
            }
            None => w.unchanged += 1,
        }
        Ok(w)
    })
    .await?;
    places.link_tablespaces()?;
    Ok(written)
}

/// Whether `target` is a regular file (not a symlink) whose chunks hash as `entry` says;
/// then only its mode and modification time are set.
async fn already_there(entry: &FileEntry, target: &Path, chunk_size: u64) -> anyhow::Result<bool> {
    let (entry, target) = (entry.clone(), target.to_path_buf());
    tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
        let Ok(meta) = fs::symlink_metadata(&target) else {
            return Ok(false);
        };
        if !meta.is_file() || meta.len() != entry.size {
            return Ok(false);
        }
        let mut f = File::open(&target)?;
        let mut buf = vec![0u8; chunk_size as usize];
        for hash in &entry.chunks {
            let got = read_up_to(&mut f, &mut buf)?;
            if blake3::hash(&buf[..got]).to_hex().as_str() != hash {
                return Ok(false);
            }
        }
        f.set_permissions(fs::Permissions::from_mode(entry.mode & 0o7777))?;
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(entry.mtime.max(0) as u64);
        f.set_modified(mtime)?;
        Ok(true)
    })
    .await?
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match std::io::Read::read(f, &mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Assembles one file from its chunks. With `replace`, an existing file (or symlink) there
/// is removed first, never followed; without, anything there is an error.
async fn write_file(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    entry: &FileEntry,
    target: &Path,
    replace: bool,
) -> anyhow::Result<()> {
    if replace && fs::symlink_metadata(target).is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(target).with_context(|| format!("remove {}", target.display()))?;
    }
    let file = create_new_file(target)?;
    let mut file = Some(file);
    let mut written = 0u64;
    // The next chunks of a large file download while the current one is written (in
    // order); a file of one chunk costs one request as before.
    let mut bodies = futures::stream::iter(entry.chunks.iter().map(|hash| async move {
        let key = chunk_key(hash);
        store
            .get(&key)
            .await
            .map(|body| (hash.clone(), key, body))
            .with_context(|| format!("{}: chunk {hash}", entry.path))
    }))
    .buffered(CHUNKS_AHEAD);
    while let Some(next) = bodies.next().await {
        let (expected, key, body) = next?;
        let mut f = file.take().expect("returned after each chunk");
        let path = entry.path.clone();
        let cipher = cipher.cloned();
        let (f, n) = tokio::task::spawn_blocking(move || -> anyhow::Result<(File, u64)> {
            let header = envelope::Header::parse(&body).map_err(|e| e.with_key(&key))?;
            if header.hash.to_hex().as_str() != expected {
                bail!(
                    "{path}: chunk {key} holds content of hash {}, not {expected}",
                    header.hash.to_hex()
                );
            }
            let n = envelope::open_into_for(&body, cipher.as_ref(), &key, &mut f)
                .map_err(|e| anyhow::anyhow!("{path}: {}", e.with_key(&key)))?;
            Ok((f, n))
        })
        .await??;
        written += n;
        file = Some(f);
    }
    let mut f = file.expect("present");
    f.flush()?;
    if written != entry.size {
        bail!(
            "{}: chunks hold {written} bytes, the manifest says {}",
            entry.path,
            entry.size
        );
    }
    f.set_permissions(fs::Permissions::from_mode(entry.mode & 0o7777))?;
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(entry.mtime.max(0) as u64);
    f.set_modified(mtime)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // scratch stores: their requests need no counting
mod tests {
    use super::*;
    use crate::backup::archive::walk_archive;
    use crate::backup::chunks::{upload_chunks, ChunkStats, StoreSink};
    use pgagent_storage::manifest::BackupStatus;
    use std::collections::HashSet;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::Mutex;

    async fn fs_store(dir: &Path) -> Arc<dyn ObjectStore> {
        let url = format!("file://{}", dir.display());
        pgagent_storage::open(&url, &Default::default())
            .await
            .unwrap()
    }

    /// A tar with a directory, a 2.5-chunk file and a small one, stored as chunks of 1000
    /// bytes; returns the manifest.
    async fn stored_backup(store: Arc<dyn ObjectStore>) -> BackupManifest {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o700);
        h.set_size(0);
        b.append_data(&mut h, "base/", std::io::empty()).unwrap();
        let big: Vec<u8> = (0..2500u32).map(|i| (i % 241) as u8).collect();
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o640);
        h.set_size(big.len() as u64);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, "base/1259", &big[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o600);
        h.set_size(3);
        b.append_data(&mut h, "PG_VERSION", &b"15\n"[..]).unwrap();
        let tar = b.into_inner().unwrap();

        let stats = Arc::new(Mutex::new(ChunkStats::default()));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let up = tokio::spawn(upload_chunks(store, None, rx, 2, 1, stats.clone()));
        let walked = tokio::task::spawn_blocking(move || {
            let mut sink = StoreSink::new(None, HashSet::new(), tx, stats);
            walk_archive(&tar[..], "", 1000, &mut sink).unwrap()
        })
        .await
        .unwrap();
        up.await.unwrap().unwrap();
        BackupManifest {
            status: BackupStatus::Complete,
            pg_version_num: 150000,
            start_lsn: "0/2000028".into(),
            start_timeline: 1,
            chunk_size: 1000,
            files: walked.entries,
            ..BackupManifest::announced("t")
        }
    }

    fn original(_oid: u32, location: &str) -> PathBuf {
        PathBuf::from(location)
    }

    async fn fresh(
        store: Arc<dyn ObjectStore>,
        manifest: &BackupManifest,
        pgdata: &Path,
    ) -> anyhow::Result<Written> {
        let progress = Progress::new("test", 0);
        materialize(
            &Bucket {
                store,
                cipher: None,
            },
            manifest,
            pgdata,
            &original,
            1,
            Mode::Fresh,
            &progress,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_backup_comes_back_byte_for_byte_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let store = fs_store(&dir.path().join("store")).await;
        let manifest = stored_backup(store.clone()).await;
        let pgdata = dir.path().join("pgdata");
        fs::create_dir(&pgdata).unwrap();
        let w = materialize(
            &Bucket {
                store: store.clone(),
                cipher: None,
            },
            &manifest,
            &pgdata,
            &original,
            4,
            Mode::Fresh,
            &Progress::new("test", 0),
        )
        .await
        .unwrap();
        assert_eq!(
            w,
            Written {
                files: 2,
                bytes: 2503,
                ..Written::default()
            }
        );
        let big = fs::read(pgdata.join("base/1259")).unwrap();
        assert_eq!(
            big,
            (0..2500u32).map(|i| (i % 241) as u8).collect::<Vec<_>>()
        );
        let meta = fs::metadata(pgdata.join("base/1259")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(
            meta.modified().unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000)
        );
        assert_eq!(fs::read(pgdata.join("PG_VERSION")).unwrap(), b"15\n");

        // Delta: a damaged file is rewritten, a stray file and a planted link removed, an
        // intact file left alone.
        fs::write(pgdata.join("PG_VERSION"), b"16\n").unwrap();
        fs::write(pgdata.join("base/stray"), b"x").unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), pgdata.join("link")).unwrap();
        let w = materialize(
            &Bucket {
                store,
                cipher: None,
            },
            &manifest,
            &pgdata,
            &original,
            4,
            Mode::Delta,
            &Progress::new("test", 0),
        )
        .await
        .unwrap();
        assert_eq!((w.files, w.unchanged, w.removed), (1, 1, 2), "{w:?}");
        assert_eq!(fs::read(pgdata.join("PG_VERSION")).unwrap(), b"15\n");
        assert!(!pgdata.join("base/stray").exists());
        assert!(fs::symlink_metadata(pgdata.join("link")).is_err());
        assert!(outside.path().exists());
        assert_eq!(fs::read(pgdata.join("base/1259")).unwrap(), big);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn damaged_or_missing_chunks_and_planted_links_stop_the_restore() {
        let dir = tempfile::tempdir().unwrap();
        let store = fs_store(&dir.path().join("store")).await;
        let manifest = stored_backup(store.clone()).await;
        let victim = manifest.files[1].chunks[1].clone();

        // Read as a restore reads, retrying transient errors for a minute: a damaged or
        // missing chunk is no transient error, it fails at once.
        let patient = crate::retrying_store::RetryingReads::wrap(
            store.clone(),
            crate::retry::Policy::CHUNK,
            Duration::from_secs(60),
            "fetch.timeout",
        );
        let started = std::time::Instant::now();

        // A chunk whose content does not match its name.
        let other = manifest.files[2].chunks[0].clone();
        let body = store.get(&chunk_key(&other)).await.unwrap();
        store.put(&chunk_key(&victim), body).await.unwrap();
        let pgdata = dir.path().join("a");
        fs::create_dir(&pgdata).unwrap();
        let err = fresh(patient.clone(), &manifest, &pgdata)
            .await
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains(&victim) && err.contains("base/1259"), "{err}");

        // A missing chunk.
        store.delete(&chunk_key(&victim)).await.unwrap();
        let pgdata = dir.path().join("b");
        fs::create_dir(&pgdata).unwrap();
        let err = fresh(patient, &manifest, &pgdata).await.unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains(&victim) && err.contains("base/1259"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));

        // A symlink planted where a file goes is not written through.
        let pgdata = dir.path().join("c");
        fs::create_dir(&pgdata).unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, pgdata.join("PG_VERSION")).unwrap();
        assert!(materialize(
            &Bucket {
                store: store.clone(),
                cipher: None,
            },
            &manifest,
            &pgdata,
            &original,
            1,
            Mode::Fresh,
            &Progress::new("test", 0)
        )
        .await
        .is_err());
        assert_eq!(fs::read(&outside).unwrap(), b"keep");

        // A hostile manifest writes nothing at all.
        let mut hostile = manifest.clone();
        hostile.files[2].path = "../escaped".into();
        let pgdata = dir.path().join("d");
        fs::create_dir(&pgdata).unwrap();
        assert!(fresh(store, &hostile, &pgdata).await.is_err());
        assert_eq!(fs::read_dir(&pgdata).unwrap().count(), 0);
        assert!(!dir.path().join("escaped").exists());
    }
}
