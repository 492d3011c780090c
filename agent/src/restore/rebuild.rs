//! Restoring an incremental backup: the data directory rebuilt from its chain, as
//! pg_combinebackup rebuilds it (`src/bin/pg_combinebackup/pg_combinebackup.c`).
//!
//! In two steps, so that a broken chain writes nothing:
//!
//! 1. [`prepare`] (no local write): the plan ([`super::combine::plan_chain`]), a check that
//!    every chunk of every stored file the plan may read is in the store
//!    (`restore/present.rs`), the newest backup's server manifest read for its WAL ranges, and
//!    its `backup_label` without the `INCREMENTAL FROM` lines (`backup_label.c`).
//! 2. [`write_chain`]: directories, then files (`concurrency` at a time, see
//!    `restore/rebuild_file.rs`), then `backup_label` and a new `backup_manifest`
//!    ([`crate::pg_manifest`]) listing every file with its CRC-32C, then the tablespace
//!    links. The directory must be empty (as for a fresh restore); if anything fails,
//!    what was written is removed again, as pg_combinebackup removes its output
//!    directory.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use pgagent_protocol::backup_label::without_incremental_lines;

use super::chain::Chain;
use super::combine::{plan_chain, ChainPlan};
use super::places::{create_new_file, make_dir, Mode, Places, TablespaceDir};
use super::present::{check_present, Needer};
use super::rebuild_file::{fetch_chunk, finish_file, write_output, Stored};
use crate::pg_manifest::{render, wal_ranges, ManifestFile, WalRange};
use crate::progress::Progress;
use crate::store::Bucket;

/// A chain ready to be written: everything checked that can be checked before writing.
#[derive(Debug)]
pub struct Prepared {
    /// The chain, oldest first.
    pub chain: Chain,
    /// Which stored files make each output file.
    pub plan: ChainPlan,
    /// The newest backup's `backup_label` without its `INCREMENTAL FROM` lines.
    pub label: String,
    /// The newest backup's WAL ranges, from its server manifest.
    pub wal: Vec<WalRange>,
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// Bytes the output files will about have (the sizes of their bottom whole files for
    /// the rebuilt ones): for progress only.
    pub estimate: u64,
}

/// Step 1 (see the module docs) for `chain`, read from `bucket` with at most
/// `concurrency` requests at a time.
///
/// Errors: as [`plan_chain`]; a chunk missing from the store; the newest backup has no server
/// manifest, or one without WAL ranges; a system identifier that is not a number; an
/// empty `backup_label`. Each names the backup (and the file).
pub async fn prepare(
    bucket: &Bucket,
    chain: Chain,
    concurrency: usize,
) -> anyhow::Result<Prepared> {
    let plan = plan_chain(&chain.members)?;
    let newest = chain.newest();
    let server_manifest = newest.pg_manifest.as_ref().with_context(|| {
        format!(
            "backup {} has no backup_manifest from the server: its WAL ranges are unknown",
            newest.id
        )
    })?;
    let mut needed: BTreeMap<String, Needer> = BTreeMap::new();
    let mut need = |id: &str, entry: &pgagent_storage::manifest::FileEntry| {
        for hash in &entry.chunks {
            needed
                .entry(hash.clone())
                .or_insert_with(|| (id.to_string(), entry.path.clone()));
        }
    };
    let mut estimate = 0;
    for file in &plan.files {
        for s in &file.sources {
            let m = &chain.members[s.backup];
            need(&m.id, &m.files[s.entry]);
        }
        let bottom = file.sources.last().expect("a file has a source");
        estimate += chain.members[bottom.backup].files[bottom.entry].size;
    }
    need(&newest.id, server_manifest);
    check_present(bucket.store.as_ref(), &needed, concurrency).await?;
    verify_incremental_chunks(bucket, &chain, &plan, concurrency).await?;

    let text = read_small(bucket, newest, server_manifest).await?;
    let wal = wal_ranges(&text)
        .with_context(|| format!("backup {}: the server's backup_manifest", newest.id))?;
    let label = without_incremental_lines(&newest.backup_label);
    if label.is_empty() {
        anyhow::bail!("backup {} has no backup_label", newest.id);
    }
    let system_identifier = newest.system_identifier.parse().with_context(|| {
        format!(
            "backup {}: system identifier {:?}",
            newest.id, newest.system_identifier
        )
    })?;
    Ok(Prepared {
        chain,
        plan,
        label,
        wal,
        system_identifier,
        estimate,
    })
}

/// Reads and verifies every chunk of every `INCREMENTAL.` file the plan uses, before
/// anything is written: these hold the only copy of the blocks changed since their parent,
/// and a damaged one must stop the restore with PGDATA untouched. They are small (changed
/// blocks only), so reading them twice costs little; the whole files of the chain are
/// verified as they are written, as in a restore of a full backup.
///
/// Errors: the first chunk that cannot be read or is not what its name says, naming the
/// backup and the file.
async fn verify_incremental_chunks(
    bucket: &Bucket,
    chain: &Chain,
    plan: &ChainPlan,
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    let mut wanted = Vec::new();
    for s in plan
        .files
        .iter()
        .flat_map(|f| &f.sources)
        .filter(|s| s.incremental)
    {
        let m = &chain.members[s.backup];
        let entry = &m.files[s.entry];
        for (idx, hash) in entry.chunks.iter().enumerate() {
            if seen.insert(hash.as_str()) {
                let stored = Stored {
                    backup: &m.id,
                    entry,
                    chunk_size: m.chunk_size,
                };
                wanted.push((stored, idx as u64));
            }
        }
    }
    let store = bucket.store.as_ref();
    futures::stream::iter(wanted)
        .map(|(stored, idx)| fetch_chunk(store, bucket.cipher(), stored, idx))
        .buffer_unordered(concurrency.max(1))
        .try_for_each(|_| async { Ok(()) })
        .await
}

/// The whole content of a small stored file (a server manifest), verified.
async fn read_small(
    bucket: &Bucket,
    m: &pgagent_storage::manifest::BackupManifest,
    entry: &pgagent_storage::manifest::FileEntry,
) -> anyhow::Result<Vec<u8>> {
    let s = Stored {
        backup: &m.id,
        entry,
        chunk_size: m.chunk_size,
    };
    let mut out = Vec::with_capacity(entry.size as usize);
    for idx in 0..entry.chunks.len() as u64 {
        out.extend_from_slice(&fetch_chunk(bucket.store.as_ref(), bucket.cipher(), s, idx).await?);
    }
    Ok(out)
}

/// What [`write_chain`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainWritten {
    /// Regular files written, `backup_label` and `backup_manifest` included.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Files rebuilt from incremental files.
    pub rebuilt: u64,
}

/// Step 2 (see the module docs): writes `prepared` into `pgdata` (which must exist and
/// hold nothing the restore would write) and each tablespace's directory
/// (`tablespace_dir(oid, location)`, missing or empty), reading `concurrency` files at a
/// time.
///
/// Errors: a chunk missing, damaged or of the wrong length, an incremental file whose
/// header does not parse (each naming the backup and the file); local I/O errors. On any
/// error, what was written is removed (entries of `pgdata` that were not there before,
/// everything in the tablespace directories), so the directory is left as it was.
pub async fn write_chain(
    bucket: &Bucket,
    prepared: &Prepared,
    pgdata: &Path,
    tablespace_dir: &TablespaceDir,
    concurrency: usize,
    progress: &Progress,
) -> anyhow::Result<ChainWritten> {
    let before: HashSet<OsString> = fs::read_dir(pgdata)
        .with_context(|| format!("read {}", pgdata.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    let newest = prepared.chain.newest();
    let places = Places::new(newest, pgdata, tablespace_dir, Mode::Fresh)?;
    let written = write_all(bucket, prepared, &places, concurrency, progress).await;
    if written.is_err() {
        remove_written(pgdata, &before, &places.tablespaces);
    }
    written
}

async fn write_all(
    bucket: &Bucket,
    prepared: &Prepared,
    places: &Places<'_>,
    concurrency: usize,
    progress: &Progress,
) -> anyhow::Result<ChainWritten> {
    let members = &prepared.chain.members;
    let newest = prepared.chain.newest();
    for &i in &prepared.plan.dirs {
        let entry = &newest.files[i];
        make_dir(&places.resolve(&entry.path), entry.mode)?;
    }
    let (store, cipher) = (bucket.store.as_ref(), bucket.cipher());
    let mut listed: Vec<(usize, ManifestFile)> =
        futures::stream::iter(prepared.plan.files.iter().map(|file| async move {
            let out =
                write_output(store, cipher, members, file, places.resolve(&file.path)).await?;
            progress.add(out.len);
            let entry = &newest.files[file.newest];
            anyhow::Ok((
                file.newest,
                ManifestFile {
                    path: file.path.clone(),
                    size: out.len,
                    mtime: entry.mtime,
                    crc32c: out.crc32c,
                },
            ))
        }))
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    let mut written = ChainWritten {
        files: listed.len() as u64,
        bytes: listed.iter().map(|(_, f)| f.size).sum(),
        rebuilt: prepared.plan.files.iter().filter(|f| !f.is_copy()).count() as u64,
    };

    let (mode, mtime) = match prepared.plan.label {
        Some(i) => (newest.files[i].mode, newest.files[i].mtime),
        None => (0o600, now()),
    };
    let label = prepared.label.as_bytes();
    write_new(&places.pgdata.join("backup_label"), label, mode, mtime)?;
    listed.push((
        prepared.plan.label.unwrap_or(usize::MAX),
        ManifestFile {
            path: "backup_label".into(),
            size: label.len() as u64,
            mtime,
            crc32c: crc32c::crc32c(label),
        },
    ));
    listed.sort_by_key(|(i, _)| *i);
    // PostgreSQL's manifests leave WAL out; pg_verifybackup does not look in pg_wal.
    let files: Vec<ManifestFile> = listed
        .into_iter()
        .map(|(_, f)| f)
        .filter(|f| !f.path.starts_with("pg_wal/"))
        .collect();
    let manifest = render(prepared.system_identifier, &files, &prepared.wal);
    write_new(
        &places.pgdata.join("backup_manifest"),
        manifest.as_bytes(),
        0o600,
        now(),
    )?;
    written.files += 2;
    written.bytes += (label.len() + manifest.len()) as u64;
    places.link_tablespaces()?;
    Ok(written)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Creates `path` (`O_EXCL | O_NOFOLLOW`) holding `bytes`, with `mode` and `mtime`, fsynced.
fn write_new(path: &Path, bytes: &[u8], mode: u32, mtime: i64) -> anyhow::Result<()> {
    let mut f = create_new_file(path)?;
    f.write_all(bytes)
        .and_then(|()| finish_file(&f, mode, mtime))
        .with_context(|| format!("write {}", path.display()))
}

/// Removes what a failed chain restore wrote: the entries of `pgdata` not in `before`,
/// and everything in the tablespace directories (empty when it began). Failures are
/// logged: the restore's own error is the one to report.
fn remove_written(pgdata: &Path, before: &HashSet<OsString>, tablespaces: &[(u32, PathBuf)]) {
    let remove = |path: &Path| {
        let result = match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(path),
            Ok(_) => fs::remove_file(path),
            Err(_) => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!("remove {} after the failed restore: {e}", path.display());
        }
    };
    let entries = |dir: &Path| -> Vec<(OsString, PathBuf)> {
        fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| (e.file_name(), e.path())).collect())
            .unwrap_or_default()
    };
    for (name, path) in entries(pgdata) {
        if !before.contains(&name) {
            remove(&path);
        }
    }
    for (_, dir) in tablespaces {
        for (_, path) in entries(dir) {
            remove(&path);
        }
    }
}

#[cfg(test)]
#[path = "rebuild_tests.rs"]
mod tests;
