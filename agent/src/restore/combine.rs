//! What a data directory rebuilt from a chain of incremental backups is made of: a pure
//! plan, with no I/O, of where every byte of every file comes from.
//!
//! The rules are pg_combinebackup's (PostgreSQL 17+): `src/bin/pg_combinebackup/
//! pg_combinebackup.c` (`process_directory_recursively`: which files are rebuilt, which are
//! copied) and `src/bin/pg_combinebackup/reconstruct.c`
//! (`reconstruct_from_incremental_file`: which backup each block comes from).
//!
//! The chain is given oldest first: index 0 is the full backup, the last index the newest
//! backup, whose file list is the restored directory's. For each file of the newest backup:
//!
//! - a whole file is copied from it;
//! - `INCREMENTAL.<name>` in a directory that holds relation files (under `base/`, in
//!   `global`, under `pg_tblspc/`) becomes `<name>`, rebuilt block by block
//!   ([`plan_blocks`]); the backups before the newest are consulted newest first, and each
//!   must hold `<name>` whole (which ends the walk) or `INCREMENTAL.<name>`; an incremental
//!   file in the full backup is an error, as is a backup holding neither;
//! - an `INCREMENTAL.` name anywhere else is an ordinary file, copied;
//! - `backup_label` is not copied: the restore writes the newest label without its
//!   `INCREMENTAL FROM` lines; PostgreSQL's `backup_manifest` is written anew too.
//!
//! Files that only older backups hold were dropped before the newest backup: they are not
//! restored.

use std::collections::{HashMap, HashSet};

use anyhow::bail;
use pgagent_protocol::incremental::{self, IncrementalHeader};
use pgagent_storage::manifest::{BackupManifest, EntryKind};

/// A stored file read for an output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The backup holding it: its index in the chain (0 = the full backup).
    pub backup: usize,
    /// Its index in that backup's [`BackupManifest::files`].
    pub entry: usize,
    /// Whether it is an `INCREMENTAL.<name>` file (else a whole file).
    pub incremental: bool,
}

/// One regular file of the restored directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// Its path in the restored directory, as manifests write paths (`base/5/16384`).
    pub path: String,
    /// Index in the newest backup's files of the entry it stands for (its mode and
    /// modification time are the output's).
    pub newest: usize,
    /// The stored files to read, newest first. A copied file has one whole source; a
    /// rebuilt one starts with the newest backup's incremental file and ends with a whole
    /// file.
    pub sources: Vec<Source>,
}

impl OutputFile {
    /// Whether the file is copied whole from the newest backup.
    pub fn is_copy(&self) -> bool {
        !self.sources[0].incremental
    }
}

/// Everything a chain restore writes, before any header is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainPlan {
    /// Indices of the newest backup's directories, parents first.
    pub dirs: Vec<usize>,
    /// Regular files, in the newest backup's order.
    pub files: Vec<OutputFile>,
    /// Index of the newest backup's `backup_label` entry (its mode and time), if listed.
    pub label: Option<usize>,
}

/// Whether a directory (manifest form, no trailing `/`) can hold incremental files, as
/// pg_combinebackup decides (`is_incremental_dir`): under `base/`, `global` itself, and
/// under `pg_tblspc/`.
pub fn is_incremental_dir(dir: &str) -> bool {
    dir.starts_with("base/") || dir == "global" || dir.starts_with("pg_tblspc/")
}

/// The path of the file an incremental file stands for, when `path` names one in a
/// directory that can hold them ([`is_incremental_dir`]).
pub fn rebuilt_path(path: &str) -> Option<String> {
    let (dir, _) = path.rsplit_once('/')?;
    if !is_incremental_dir(dir) {
        return None;
    }
    incremental::full_path(path)
}

/// Plans the restore of `chain` (oldest first, the full backup at index 0): which stored
/// files make each file of the newest backup (see the module docs).
///
/// Errors: the chain is empty; two entries of the newest backup give one output path; a
/// backup before the newest holds neither `<name>` nor `INCREMENTAL.<name>` for a file
/// being rebuilt; the full backup holds `INCREMENTAL.<name>` ("full backup contains
/// unexpected incremental file"). Each names the backup and the file.
pub fn plan_chain(chain: &[BackupManifest]) -> anyhow::Result<ChainPlan> {
    let Some((newest, older)) = chain.split_last() else {
        bail!("no backup to restore");
    };
    let index: Vec<HashMap<&str, usize>> = older
        .iter()
        .map(|m| {
            m.files
                .iter()
                .enumerate()
                .filter(|(_, e)| e.kind == EntryKind::File)
                .map(|(i, e)| (e.path.as_str(), i))
                .collect()
        })
        .collect();
    let top = chain.len() - 1;
    let mut plan = ChainPlan::default();
    let mut outputs = HashSet::new();
    for (i, entry) in newest.files.iter().enumerate() {
        match entry.kind {
            EntryKind::Dir => {
                plan.dirs.push(i);
                continue;
            }
            // Only tablespace links pass the manifest check; the restore makes them.
            EntryKind::Symlink => continue,
            EntryKind::File => {}
        }
        if entry.path == "backup_label" {
            plan.label = Some(i);
            continue;
        }
        let first = Source {
            backup: top,
            entry: i,
            incremental: false,
        };
        let file = match rebuilt_path(&entry.path) {
            None => OutputFile {
                path: entry.path.clone(),
                newest: i,
                sources: vec![first],
            },
            Some(path) => {
                let mut sources = vec![Source {
                    incremental: true,
                    ..first
                }];
                walk_older(chain, &index, &entry.path, &path, &mut sources)?;
                OutputFile {
                    path,
                    newest: i,
                    sources,
                }
            }
        };
        if !outputs.insert(file.path.clone()) {
            bail!(
                "backup {}: {} and another entry both give {}",
                newest.id,
                entry.path,
                file.path
            );
        }
        plan.files.push(file);
    }
    Ok(plan)
}

/// Appends to `sources` the stored files that the backups before the newest hold for
/// `path` (rebuilt from the newest backup's `incremental`), newest first, down to the
/// first whole one.
fn walk_older(
    chain: &[BackupManifest],
    index: &[HashMap<&str, usize>],
    incremental: &str,
    path: &str,
    sources: &mut Vec<Source>,
) -> anyhow::Result<()> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let incremental_name = format!("{dir}/{}{name}", incremental::INCREMENTAL_PREFIX);
    for backup in (0..index.len()).rev() {
        let m = &chain[backup];
        if let Some(&entry) = index[backup].get(path) {
            sources.push(Source {
                backup,
                entry,
                incremental: false,
            });
            return Ok(());
        }
        let Some(&entry) = index[backup].get(incremental_name.as_str()) else {
            bail!(
                "backup {} holds neither {path} nor {incremental_name}, which {incremental} of backup {} is built on",
                m.id,
                chain[chain.len() - 1].id
            );
        };
        if backup == 0 {
            bail!(
                "full backup {} contains unexpected incremental file {incremental_name}",
                m.id
            );
        }
        sources.push(Source {
            backup,
            entry,
            incremental: true,
        });
    }
    // Reached only when the newest backup is the only one: an incremental file with
    // nothing under it.
    bail!(
        "backup {}: {incremental} has no older backup to be rebuilt from",
        chain[chain.len() - 1].id
    )
}

/// What a source of a rebuilt file holds, once its header is read.
#[derive(Debug, Clone, Copy)]
pub enum Shape<'a> {
    /// A whole file of `size` bytes.
    Whole {
        /// Bytes.
        size: u64,
    },
    /// An incremental file and its header.
    Incremental(&'a IncrementalHeader),
}

/// A piece of an output file, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// `len` bytes of source `source` (an index into [`OutputFile::sources`]) from byte
    /// `offset` of that stored file.
    Stored {
        /// Index into the output file's sources.
        source: usize,
        /// Byte offset in the stored file.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `len` zero bytes: blocks no backup holds (extended, never written to WAL).
    Zeros {
        /// Bytes.
        len: u64,
    },
}

/// How one rebuilt file is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPlan {
    /// The pieces, in file order.
    pub runs: Vec<Run>,
    /// The output's length in bytes.
    pub len: u64,
    /// The source copied whole, when no block of a newer backup is needed and its length
    /// is exactly the output's (reconstruct.c's full-copy case).
    pub full_copy: Option<usize>,
}

/// Where each block of a rebuilt file comes from (`reconstruct_from_incremental_file`).
/// `newest` is the header of the newest backup's incremental file (source 0); `older`
/// what sources 1, 2, … hold, newest first. Blocks are `block_size` bytes.
///
/// - The output has [`IncrementalHeader::reconstructed_blocks`] blocks.
/// - A block the newest file holds comes from it.
/// - Walking the older sources, an incremental file gives each block it holds that is
///   below the newest file's truncation length and not yet given; a whole file gives every
///   block still missing below both the truncation length and its own length in whole
///   blocks, and ends the walk.
/// - Blocks still missing are zeros.
/// - When neither the newest file nor an older incremental file gives any block and the
///   whole file is exactly `truncation length × block_size` bytes, it is copied as it is.
pub fn plan_blocks(block_size: u32, newest: &IncrementalHeader, older: &[Shape]) -> BlockPlan {
    let bs = u64::from(block_size);
    let blocks = newest.reconstructed_blocks() as usize;
    let truncation = newest.truncation_block_length as usize;
    let mut map: Vec<Option<(usize, u64)>> = vec![None; blocks];
    let mut full_copy_possible = newest.blocks.is_empty();
    for (i, &b) in newest.blocks.iter().enumerate() {
        map[b as usize] = Some((0, newest.block_offset(i, block_size)));
    }
    for (k, shape) in older.iter().enumerate() {
        let source = k + 1;
        match shape {
            Shape::Whole { size } => {
                let own = (size / bs).min(truncation as u64) as usize;
                for (b, slot) in map.iter_mut().enumerate().take(own) {
                    if slot.is_none() {
                        *slot = Some((source, b as u64 * bs));
                    }
                }
                if full_copy_possible && *size == truncation as u64 * bs {
                    let runs = match *size {
                        0 => Vec::new(),
                        len => vec![Run::Stored {
                            source,
                            offset: 0,
                            len,
                        }],
                    };
                    return BlockPlan {
                        runs,
                        len: *size,
                        full_copy: Some(source),
                    };
                }
                break;
            }
            Shape::Incremental(h) => {
                for (i, &b) in h.blocks.iter().enumerate() {
                    let b = b as usize;
                    if b < truncation && map[b].is_none() {
                        map[b] = Some((source, h.block_offset(i, block_size)));
                        full_copy_possible = false;
                    }
                }
            }
        }
    }
    BlockPlan {
        runs: runs_of(&map, bs),
        len: blocks as u64 * bs,
        full_copy: None,
    }
}

/// Block sources merged into runs: neighbouring blocks read from one source at
/// consecutive offsets, or zero, make one run.
fn runs_of(map: &[Option<(usize, u64)>], bs: u64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for slot in map {
        let next = match *slot {
            Some((source, offset)) => Run::Stored {
                source,
                offset,
                len: bs,
            },
            None => Run::Zeros { len: bs },
        };
        match (runs.last_mut(), next) {
            (Some(Run::Zeros { len }), Run::Zeros { .. }) => *len += bs,
            (
                Some(Run::Stored {
                    source: s,
                    offset: o,
                    len,
                }),
                Run::Stored { source, offset, .. },
            ) if *s == source && *o + *len == offset => *len += bs,
            _ => runs.push(next),
        }
    }
    runs
}

#[cfg(test)]
#[path = "combine_tests.rs"]
mod tests;
