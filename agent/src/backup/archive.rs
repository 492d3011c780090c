//! Cutting the tar archives of `BASE_BACKUP` into manifest entries and fixed-size chunks.
//!
//! The server streams one ustar archive for the data directory (`base.tar`) and one per
//! tablespace (`<oid>.tar`; PostgreSQL docs, "Streaming Replication Protocol", BASE_BACKUP;
//! written by `src/backend/backup/basebackup.c` with the header of `src/port/tar.c`).
//! [`walk_archive`] reads one such stream entry by entry: regular files are cut into
//! `chunk_size` pieces handed to a [`ChunkSink`] (which hashes, deduplicates and uploads
//! them), directories and symlinks become entries of their own. Names are checked as they
//! are read: an archive cannot smuggle a path out of the data directory into a manifest.

use std::io::{self, Read};

use bytes::Bytes;
use pgagent_storage::manifest::{check_path, EntryKind, FileEntry, ManifestError};

/// Where the chunks of a file go: returns the chunk's hash (lowercase blake3 hex) once it is
/// safely on its way to the store.
pub trait ChunkSink {
    /// Takes one chunk of at most the chunk size.
    ///
    /// Errors: the chunk cannot be stored; the walk stops.
    fn put(&mut self, data: Vec<u8>) -> anyhow::Result<String>;
}

/// Files of the data directory's archive that a restore needs verbatim, kept in the
/// manifest as text too.
const LABEL_FILES: [&str; 2] = ["backup_label", "tablespace_map"];

/// The largest `backup_label`/`tablespace_map` kept as text, in bytes.
const LABEL_MAX: u64 = 1 << 20;

/// What one archive held.
#[derive(Debug, Default)]
pub struct Walked {
    /// Entries in archive order (parents before children, as PostgreSQL writes them).
    pub entries: Vec<FileEntry>,
    /// Content of `backup_label`, if the archive held one.
    pub backup_label: Option<String>,
    /// Content of `tablespace_map`, if the archive held one.
    pub tablespace_map: Option<String>,
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The tar stream is malformed or ended early.
    #[error("reading the backup archive")]
    Io(#[from] io::Error),
    /// A name that would leave the data directory.
    #[error(transparent)]
    Hostile(#[from] ManifestError),
    /// An entry type a data directory does not hold (hard link, device, FIFO).
    #[error("backup archive entry {path:?}: unexpected entry type {kind:?}")]
    UnexpectedType {
        /// The entry's name.
        path: String,
        /// The tar type flag.
        kind: u8,
    },
    /// A name that is not UTF-8.
    #[error("backup archive entry with a name that is not UTF-8: {0:?}")]
    NotUtf8(String),
    /// The sink failed.
    #[error("storing a chunk of {path}: {source:#}")]
    Sink {
        /// The file being stored.
        path: String,
        /// The sink's error.
        source: anyhow::Error,
    },
}

/// Reads the tar stream `reader` to its end. Entry names get `prefix` in front
/// (`pg_tblspc/<oid>/` for a tablespace archive, empty for the data directory).
///
/// Errors: see [`ArchiveError`]; nothing after the failing entry is read.
pub fn walk_archive(
    reader: impl Read,
    prefix: &str,
    chunk_size: usize,
    sink: &mut dyn ChunkSink,
) -> Result<Walked, ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let mut walked = Walked::default();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|e| ArchiveError::NotUtf8(String::from_utf8_lossy(e.as_bytes()).into()))?;
        // PostgreSQL writes the entries under pg_wal as `./pg_wal/…` (`basebackup.c`).
        let name = raw.trim_start_matches("./").trim_end_matches('/');
        let path = format!("{prefix}{name}");
        check_path(&path)?;
        let header = entry.header();
        let mode = header.mode()? & 0o7777;
        let mtime = i64::try_from(header.mtime()?).unwrap_or(i64::MAX);
        let kind = header.entry_type();
        let mut fe = FileEntry {
            path: path.clone(),
            kind: EntryKind::File,
            mode,
            size: 0,
            mtime,
            chunks: Vec::new(),
            target: None,
        };
        if kind.is_dir() {
            fe.kind = EntryKind::Dir;
        } else if kind.is_symlink() {
            fe.kind = EntryKind::Symlink;
            let target = entry.link_name_bytes().unwrap_or_default().into_owned();
            fe.target = Some(String::from_utf8(target).map_err(|e| {
                ArchiveError::NotUtf8(String::from_utf8_lossy(e.as_bytes()).into())
            })?);
        } else if kind.is_file() {
            fe.size = entry.size();
            let keep_text =
                prefix.is_empty() && LABEL_FILES.contains(&path.as_str()) && fe.size <= LABEL_MAX;
            let mut text = Vec::new();
            let mut left = fe.size;
            while left > 0 {
                let n = left.min(chunk_size as u64) as usize;
                let mut chunk = vec![0u8; n];
                entry.read_exact(&mut chunk)?;
                if keep_text {
                    text.extend_from_slice(&chunk);
                }
                let hash = sink.put(chunk).map_err(|source| ArchiveError::Sink {
                    path: path.clone(),
                    source,
                })?;
                fe.chunks.push(hash);
                left -= n as u64;
            }
            if keep_text {
                let text = String::from_utf8_lossy(&text).into_owned();
                match path.as_str() {
                    "backup_label" => walked.backup_label = Some(text),
                    _ => walked.tablespace_map = Some(text),
                }
            }
        } else {
            return Err(ArchiveError::UnexpectedType {
                path,
                kind: kind.as_byte(),
            });
        }
        walked.entries.push(fe);
    }
    Ok(walked)
}

/// A blocking [`Read`] over byte chunks arriving on a channel: the async `BASE_BACKUP`
/// stream sends, a blocking thread walks the archive. The stream ends when the sender is
/// dropped.
#[derive(Debug)]
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    /// A reader over what `rx` delivers. Reading blocks the thread: use it off the async
    /// runtime (`spawn_blocking`).
    pub fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps chunks in memory, keyed by their blake3 hex.
    #[derive(Default)]
    struct MemSink(Vec<(String, Vec<u8>)>);

    impl ChunkSink for MemSink {
        fn put(&mut self, data: Vec<u8>) -> anyhow::Result<String> {
            let hash = blake3::hash(&data).to_hex().to_string();
            self.0.push((hash.clone(), data));
            Ok(hash)
        }
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h
    }

    fn sample() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Directory, 0, 0o700);
        b.append_data(&mut h, "base/", io::empty()).unwrap();
        let mut h = header(tar::EntryType::Directory, 0, 0o700);
        b.append_data(&mut h, "./pg_wal/archive_status/", io::empty())
            .unwrap();
        let big: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        let mut h = header(tar::EntryType::Regular, big.len() as u64, 0o600);
        b.append_data(&mut h, "base/1259", &big[..]).unwrap();
        let label = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n";
        let mut h = header(tar::EntryType::Regular, label.len() as u64, 0o600);
        b.append_data(&mut h, "backup_label", &label[..]).unwrap();
        let mut h = header(tar::EntryType::Regular, 0, 0o600);
        b.append_data(&mut h, "empty", io::empty()).unwrap();
        let mut h = header(tar::EntryType::Symlink, 0, 0o777);
        b.append_link(&mut h, "pg_tblspc/16390", "/srv/ts1")
            .unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn files_become_chunks_and_entries_keep_their_metadata() {
        let mut sink = MemSink::default();
        let walked = walk_archive(&sample()[..], "", 1000, &mut sink).unwrap();
        let paths: Vec<_> = walked.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "base",
                "pg_wal/archive_status",
                "base/1259",
                "backup_label",
                "empty",
                "pg_tblspc/16390"
            ]
        );
        let file = &walked.entries[2];
        assert_eq!(
            (file.kind, file.mode, file.size, file.mtime),
            (EntryKind::File, 0o600, 2500, 1_700_000_000)
        );
        assert_eq!(file.chunks.len(), 3);
        let joined: Vec<u8> = sink.0[..3].iter().flat_map(|(_, d)| d.clone()).collect();
        assert_eq!(joined.len(), 2500);
        assert_eq!(sink.0[2].1.len(), 500);
        assert_eq!(file.chunks[0], sink.0[0].0);
        assert_eq!(walked.entries[0].kind, EntryKind::Dir);
        assert!(walked.entries[4].chunks.is_empty());
        assert_eq!(walked.entries[5].target.as_deref(), Some("/srv/ts1"));
        assert!(walked
            .backup_label
            .unwrap()
            .starts_with("START WAL LOCATION"));
        assert!(walked.tablespace_map.is_none());
    }

    #[test]
    fn a_prefix_places_tablespace_files() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 3, 0o600);
        b.append_data(&mut h, "PG_15_202209061/5/16391", &b"abc"[..])
            .unwrap();
        let tar = b.into_inner().unwrap();
        let walked =
            walk_archive(&tar[..], "pg_tblspc/16390/", 1000, &mut MemSink::default()).unwrap();
        assert_eq!(
            walked.entries[0].path,
            "pg_tblspc/16390/PG_15_202209061/5/16391"
        );
    }

    fn raw_entry(name: &[u8], kind: tar::EntryType) -> Vec<u8> {
        let mut h = header(kind, 0, 0o600);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(&[0u8; 1024]);
        tar
    }

    #[test]
    fn hostile_names_and_odd_types_are_refused() {
        for name in [&b"../../etc/passwd"[..], b"/etc/passwd", b"base/../../x"] {
            let tar = raw_entry(name, tar::EntryType::Regular);
            let err = walk_archive(&tar[..], "", 1000, &mut MemSink::default()).unwrap_err();
            assert!(matches!(err, ArchiveError::Hostile(_)), "{err}");
        }
        let tar = raw_entry(b"base/x", tar::EntryType::Char);
        let err = walk_archive(&tar[..], "", 1000, &mut MemSink::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::UnexpectedType { .. }), "{err}");
    }

    #[test]
    fn a_truncated_archive_is_an_error() {
        let tar = sample();
        let err = walk_archive(&tar[..700], "", 1000, &mut MemSink::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::Io(_)), "{err}");
    }

    #[test]
    fn the_channel_reader_concatenates_and_ends() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Bytes::from_static(b"ab")).unwrap();
        tx.try_send(Bytes::new()).unwrap();
        tx.try_send(Bytes::from_static(b"cde")).unwrap();
        drop(tx);
        let mut s = String::new();
        ChannelReader::new(rx).read_to_string(&mut s).unwrap();
        assert_eq!(s, "abcde");
    }
}
