//! Base backup manifests: `backups/<id>/manifest.json` (DESIGN.md, "Store layout").
//!
//! A manifest lists every entry of the backed-up data directory and its tablespaces — path,
//! kind, mode, size, modification time and, for regular files, the hashes of the
//! fixed-size chunks stored under `chunks/` — together with what a restore needs beside
//! the files: the start and stop LSN and timeline, the `backup_label` and `tablespace_map`
//! contents PostgreSQL returned, and PostgreSQL's own `backup_manifest` (stored as chunks
//! like any file, so `pg_verifybackup` can check a restored directory). A backup is only
//! usable once its status is [`BackupStatus::Complete`].
//!
//! An incremental backup (PostgreSQL 17+, [`BackupKind::Incremental`]) holds the server's
//! `INCREMENTAL.<relfile>` files exactly as received, chunked like any file, and names the
//! backup it was taken against ([`BackupManifest::parent`]); a restore rebuilds the data
//! directory from the chain down to its full backup ([`BackupManifest::root`]). Such
//! manifests are written as format version [`INCREMENTAL_FORMAT_VERSION`], so a reader that
//! only knows full backups refuses them instead of restoring blocks as files.
//!
//! Manifests come from the bucket, which a restore must not trust blindly:
//! [`BackupManifest::check`] refuses any path that could leave the target directory.

use std::collections::HashSet;

use pgagent_protocol::{Lsn, TimelineId};
use serde::{Deserialize, Serialize};

/// Version of the manifest format written for full backups.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Version of the manifest format written for incremental backups: version 1 plus
/// `kind`, `parent`, `root`, `depth` and the block geometry.
pub const INCREMENTAL_FORMAT_VERSION: u32 = 2;

/// Whether a backup holds whole files or only the blocks changed since its parent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    /// Every file whole (`BASE_BACKUP` without `INCREMENTAL`).
    #[default]
    Full,
    /// `BASE_BACKUP ( INCREMENTAL )` against [`BackupManifest::parent`]: relation segments
    /// as `INCREMENTAL.<name>` files.
    Incremental,
}

/// Whether a backup may be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    /// Files are stored, but the WAL from start to stop LSN is not all in the store yet.
    Running,
    /// Every file and every WAL segment from start to stop LSN is in the store.
    Complete,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file, stored as chunks.
    File,
    /// A directory.
    Dir,
    /// A symbolic link: only `pg_tblspc/<oid>`, pointing at a listed tablespace.
    Symlink,
}

/// One entry of the backed-up directory tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the data directory, `/`-separated (`base/5/1259`); files of
    /// tablespace `oid` are under `pg_tblspc/<oid>/`.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Permission bits (`0o600`, `0o700`).
    pub mode: u32,
    /// Size in bytes (0 for directories and symlinks).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Lowercase blake3 hex of each chunk, in order (files only); every chunk but the last
    /// holds exactly [`BackupManifest::chunk_size`] bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
    /// Target of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A tablespace of the backed-up cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceEntry {
    /// Its OID: the name of its link in `pg_tblspc/`.
    pub oid: u32,
    /// Its absolute location on the backed-up server.
    pub location: String,
}

/// Sizes of a backup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStats {
    /// Regular files.
    pub files: u64,
    /// Bytes of all files.
    pub raw_bytes: u64,
    /// Chunks referenced (with repeats).
    pub chunks: u64,
    /// Chunks this backup uploaded (not in the store before).
    pub new_chunks: u64,
    /// Stored (compressed) bytes of the chunks this backup uploaded.
    pub new_stored_bytes: u64,
    /// Archive bytes the server sent (tar headers and padding included): what the backup
    /// read from the server. Manifests written before this field was kept say 0.
    #[serde(default)]
    pub server_bytes: u64,
}

/// `backups/<id>/manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// [`MANIFEST_FORMAT_VERSION`].
    pub format_version: u32,
    /// Backup id, e.g. `20261121T030000Z` (sortable by start time).
    pub id: String,
    /// Running or complete.
    pub status: BackupStatus,
    /// Full, or incremental against [`Self::parent`].
    #[serde(default)]
    pub kind: BackupKind,
    /// Incremental backups: the id of the backup whose `backup_manifest` was uploaded
    /// (`UPLOAD_MANIFEST`), full or incremental itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Incremental backups: the id of the full backup the chain starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Backups between this one and its full backup, this one included: 0 for a full
    /// backup, 1 for one taken against a full backup.
    #[serde(default)]
    pub depth: u32,
    /// `BLCKSZ` of the cluster, bytes (`SHOW block_size`); known for backups taken from
    /// PostgreSQL 17 on, which an incremental backup may have for its parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// `RELSEG_SIZE` of the cluster, blocks per relation segment file (`SHOW
    /// segment_size` / `block_size`); known when [`Self::block_size`] is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_blocks: Option<u32>,
    /// Whether the cluster had data checksums on (`SHOW data_checksums`); an incremental
    /// backup is only taken against a parent with the same state. Known when
    /// [`Self::block_size`] is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_checksums: Option<bool>,
    /// `system_identifier` of the cluster, decimal.
    pub system_identifier: String,
    /// `server_version_num` of the server.
    pub pg_version_num: u32,
    /// Label given to `BASE_BACKUP`.
    pub label: String,
    /// Start (redo) LSN, `X/X`.
    pub start_lsn: String,
    /// Timeline at the start.
    pub start_timeline: u32,
    /// Stop LSN, `X/X`, once known.
    pub stop_lsn: Option<String>,
    /// Timeline at the stop, once known.
    pub stop_timeline: Option<u32>,
    /// When the backup started, RFC 3339 UTC.
    pub started_at: String,
    /// When the files were all stored, RFC 3339 UTC.
    pub finished_at: Option<String>,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Content of `backup_label` for the restored directory.
    pub backup_label: String,
    /// Content of `tablespace_map`, if the cluster has tablespaces.
    pub tablespace_map: Option<String>,
    /// PostgreSQL's `backup_manifest`, stored as chunks (path `backup_manifest`).
    pub pg_manifest: Option<FileEntry>,
    /// Tablespaces.
    pub tablespaces: Vec<TablespaceEntry>,
    /// Every entry, parents before children.
    pub files: Vec<FileEntry>,
    /// Sizes.
    pub stats: BackupStats,
    /// With `store.lock`: how long everything this backup depends on is locked at least.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<crate::lock::LockClaim>,
}

/// A manifest a restore must refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// A path that is empty, absolute, has `.`/`..`/empty components or control characters.
    #[error("manifest entry {0:?}: not a plain relative path inside the data directory")]
    HostilePath(String),
    /// A symlink other than `pg_tblspc/<oid>` to a listed tablespace.
    #[error("manifest entry {path:?}: symlink to {target:?} is not a tablespace link")]
    HostileSymlink {
        /// The entry.
        path: String,
        /// Where it points.
        target: String,
    },
    /// The same path twice.
    #[error("manifest entry {0:?} appears twice")]
    Duplicate(String),
    /// A chunk hash that is not 64 lowercase hex digits.
    #[error("manifest entry {path:?}: {hash:?} is not a chunk hash")]
    BadChunk {
        /// The entry.
        path: String,
        /// The offending value.
        hash: String,
    },
    /// Chunk count, size and chunk size disagree.
    #[error("manifest entry {0:?}: {1}")]
    Inconsistent(String, String),
    /// Unknown format version, or LSNs that do not parse.
    #[error("manifest: {0}")]
    Format(String),
}

impl BackupManifest {
    /// The manifest a backup announces itself with before it stores any file: `running`,
    /// the current format, its id, and nothing else yet. Callers fill in what they know with
    /// struct update syntax (`BackupManifest { start_lsn, ..BackupManifest::announced(id) }`).
    pub fn announced(id: &str) -> Self {
        BackupManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            id: id.to_string(),
            status: BackupStatus::Running,
            kind: BackupKind::Full,
            parent: None,
            root: None,
            depth: 0,
            block_size: None,
            segment_blocks: None,
            data_checksums: None,
            system_identifier: String::new(),
            pg_version_num: 0,
            label: String::new(),
            start_lsn: String::new(),
            start_timeline: 0,
            stop_lsn: None,
            stop_timeline: None,
            started_at: String::new(),
            finished_at: None,
            chunk_size: 0,
            backup_label: String::new(),
            tablespace_map: None,
            pg_manifest: None,
            tablespaces: Vec::new(),
            files: Vec::new(),
            stats: BackupStats::default(),
            lock: None,
        }
    }

    /// Start LSN and timeline.
    ///
    /// Errors: [`ManifestError::Format`] if `start_lsn` is not `X/X`.
    pub fn start(&self) -> Result<(Lsn, TimelineId), ManifestError> {
        let lsn = self
            .start_lsn
            .parse()
            .map_err(|e| ManifestError::Format(format!("start_lsn: {e}")))?;
        Ok((lsn, TimelineId(self.start_timeline)))
    }

    /// Stop LSN and timeline, once known.
    ///
    /// Errors: [`ManifestError::Format`] if `stop_lsn` is not `X/X`.
    pub fn stop(&self) -> Result<Option<(Lsn, TimelineId)>, ManifestError> {
        match (&self.stop_lsn, self.stop_timeline) {
            (Some(l), Some(t)) => {
                let lsn = l
                    .parse()
                    .map_err(|e| ManifestError::Format(format!("stop_lsn: {e}")))?;
                Ok(Some((lsn, TimelineId(t))))
            }
            _ => Ok(None),
        }
    }

    /// Every stored entry: the files, then PostgreSQL's `backup_manifest` when kept.
    pub fn entries(&self) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().chain(self.pg_manifest.iter())
    }

    /// The hash of every chunk the backup references, in entry order, repeats included:
    /// what must stay in the store for it to restore.
    pub fn chunk_hashes(&self) -> impl Iterator<Item = &str> {
        self.entries()
            .flat_map(|f| f.chunks.iter().map(String::as_str))
    }

    /// Checks everything a restore relies on before anything is written: the format
    /// version, the LSNs, every path (see [`check_path`]), symlinks (only `pg_tblspc/<oid>`
    /// to a listed tablespace location), no duplicates, chunk hashes and counts.
    ///
    /// Errors: the first problem found, naming the entry.
    pub fn check(&self) -> Result<(), ManifestError> {
        let expected = match self.kind {
            BackupKind::Full => MANIFEST_FORMAT_VERSION,
            BackupKind::Incremental => INCREMENTAL_FORMAT_VERSION,
        };
        if self.format_version != expected {
            return Err(ManifestError::Format(format!(
                "format version {} is not {expected} (a {} backup)",
                self.format_version,
                self.kind.as_str()
            )));
        }
        match (self.kind, &self.parent, &self.root) {
            (BackupKind::Full, None, None) if self.depth == 0 => {}
            (BackupKind::Incremental, Some(parent), Some(root))
                if self.depth >= 1 && !parent.is_empty() && !root.is_empty() => {}
            _ => {
                return Err(ManifestError::Format(format!(
                    "a {} backup with parent {:?}, root {:?} and depth {}",
                    self.kind.as_str(),
                    self.parent,
                    self.root,
                    self.depth
                )))
            }
        }
        if self.kind == BackupKind::Incremental
            && (self.block_size.is_none() || self.segment_blocks.is_none())
        {
            return Err(ManifestError::Format(
                "an incremental backup without its block size and segment size".into(),
            ));
        }
        self.start()?;
        self.stop()?;
        if self.chunk_size == 0 {
            return Err(ManifestError::Format("chunk_size is 0".into()));
        }
        let mut seen = HashSet::new();
        for entry in self.entries() {
            check_path(&entry.path)?;
            if !seen.insert(entry.path.as_str()) {
                return Err(ManifestError::Duplicate(entry.path.clone()));
            }
            self.check_entry(entry)?;
        }
        Ok(())
    }

    fn check_entry(&self, entry: &FileEntry) -> Result<(), ManifestError> {
        let inconsistent = |why: String| ManifestError::Inconsistent(entry.path.clone(), why);
        match entry.kind {
            EntryKind::File => {
                for hash in &entry.chunks {
                    if !is_chunk_hash(hash) {
                        return Err(ManifestError::BadChunk {
                            path: entry.path.clone(),
                            hash: hash.clone(),
                        });
                    }
                }
                let expected = entry.size.div_ceil(self.chunk_size);
                if entry.chunks.len() as u64 != expected {
                    return Err(inconsistent(format!(
                        "{} chunks for {} bytes of {}-byte chunks",
                        entry.chunks.len(),
                        entry.size,
                        self.chunk_size
                    )));
                }
                Ok(())
            }
            EntryKind::Dir if entry.chunks.is_empty() && entry.target.is_none() => Ok(()),
            EntryKind::Dir => Err(inconsistent("a directory with content".into())),
            EntryKind::Symlink => {
                let target = entry.target.clone().unwrap_or_default();
                let tablespace = entry
                    .path
                    .strip_prefix("pg_tblspc/")
                    .and_then(|oid| oid.parse::<u32>().ok())
                    .and_then(|oid| self.tablespaces.iter().find(|t| t.oid == oid));
                match tablespace {
                    Some(t) if t.location == target => Ok(()),
                    _ => Err(ManifestError::HostileSymlink {
                        path: entry.path.clone(),
                        target,
                    }),
                }
            }
        }
    }
}

impl BackupKind {
    /// `full` or `incremental`, as in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
        }
    }
}

impl BackupManifest {
    /// The format version a manifest of `kind` is written as.
    pub fn format_version_for(kind: BackupKind) -> u32 {
        match kind {
            BackupKind::Full => MANIFEST_FORMAT_VERSION,
            BackupKind::Incremental => INCREMENTAL_FORMAT_VERSION,
        }
    }
}

/// Whether `s` is a chunk hash: 64 lowercase hex digits (blake3, 32 bytes).
pub fn is_chunk_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks that `path` stays inside the directory it is joined to: relative, `/`-separated,
/// no empty, `.` or `..` component, no NUL or other control character.
///
/// Errors: [`ManifestError::HostilePath`].
pub fn check_path(path: &str) -> Result<(), ManifestError> {
    let bad = || ManifestError::HostilePath(path.to_string());
    if path.is_empty() || path.starts_with('/') || path.chars().any(char::is_control) {
        return Err(bad());
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
