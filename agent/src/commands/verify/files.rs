//! The stored files of a backup against PostgreSQL's own `backup_manifest` of it.
//!
//! The server lists in its manifest's `Files` every regular file it sent in the backup's
//! archives, tablespaces under `pg_tblspc/<oid>/`, with its size and, as pgagent asks for
//! it (`MANIFEST_CHECKSUMS 'CRC32C'`), the CRC-32C of its bytes: written as the 4 bytes of
//! the server's `uint32` in its own byte order (`pg_checksum_final`), hex; little-endian on
//! every platform backups are taken from in practice, as [`pgagent_protocol::incremental`]
//! assumes too. It lists `backup_label` and `tablespace_map`, which pgagent stores as files
//! like any other (and keeps as text in its manifest too, checked here against the same
//! checksum); it does not list itself (pgagent's manifest holds it as `pg_manifest`),
//! directories or symlinks. An incremental backup's `INCREMENTAL.<relfile>` files are listed
//! as sent, header included.
//!
//! Pure functions: the bytes come from the pass that checks each chunk's hash
//! (`super::check_objects`), which also takes each chunk's CRC-32C and length
//! ([`Digest`]); a file's CRC-32C is its chunks' combined in order, so no chunk is read
//! twice.

use std::collections::{BTreeMap, HashMap};

use pgagent_protocol::incremental::{
    bare_name, BlockGeometry, IncrementalHeader, FIXED_HEADER_BYTES,
};
use pgagent_storage::manifest::{BackupManifest, EntryKind};

use crate::pg_manifest::{crc32c_hex, Listed};

/// CRC-32C and length of some bytes: a chunk, or a file's chunks in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    /// Bytes.
    pub len: u64,
    /// Their CRC-32C.
    pub crc32c: u32,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest {
            len: bytes.len() as u64,
            crc32c: crc32c::crc32c(bytes),
        }
    }

    /// The digest of these bytes followed by `next`'s.
    pub fn then(self, next: Digest) -> Digest {
        Digest {
            len: self.len + next.len,
            crc32c: crc32c::crc32c_combine(self.crc32c, next.crc32c, next.len as usize),
        }
    }
}

/// Bytes at the start of an incremental file that its header's block numbers need, given
/// its first bytes `head` (at least the fixed part, or all the file has): the fixed part and
/// one number per block, the block count capped at the segment size.
pub fn header_need(head: &[u8], segment_blocks: u32) -> usize {
    match head.get(4..8) {
        Some(b) => {
            let count = u32::from_le_bytes(b.try_into().expect("4 bytes")).min(segment_blocks);
            FIXED_HEADER_BYTES + 4 * count as usize
        }
        None => FIXED_HEADER_BYTES,
    }
}

/// Whether `path` names an incremental file (`…/INCREMENTAL.<relfile>`).
pub fn is_incremental(path: &str) -> bool {
    bare_name(path.rsplit('/').next().unwrap_or(path)).is_some()
}

/// What the stores holds of one backup, for [`check_files`].
pub struct Stored<'a> {
    /// Its manifest.
    pub manifest: &'a BackupManifest,
    /// The digest of each chunk read (by hash); a chunk missing here was not readable, a
    /// problem already reported, and the files using it are checked by size only.
    pub chunks: &'a HashMap<String, Digest>,
    /// For each incremental file (by path), its first bytes: at least [`header_need`] of
    /// them, or the whole file.
    pub heads: &'a HashMap<String, Vec<u8>>,
}

/// Checks the stored regular files of a backup against `listed`, PostgreSQL's manifest of
/// it: the same paths, the same sizes, the CRC-32C of the stored bytes; an incremental
/// file's header and length; the `backup_label` and `tablespace_map` texts against the
/// server's checksums of those files. Returns one line per problem, naming backup and file.
pub fn check_files(stored: &Stored<'_>, listed: &BTreeMap<String, Listed>) -> Vec<String> {
    let m = stored.manifest;
    let mut problems = Vec::new();
    let mut say =
        |path: &str, why: String| problems.push(format!("backup {} file {path}: {why}", m.id));
    let files: BTreeMap<&str, _> = m
        .files
        .iter()
        .filter(|f| f.kind == EntryKind::File)
        .map(|f| (f.path.as_str(), f))
        .collect();
    for path in listed.keys().filter(|p| !files.contains_key(p.as_str())) {
        say(path, "in PostgreSQL's backup_manifest, not stored".into());
    }
    let geometry = match (m.block_size, m.segment_blocks) {
        (Some(block_size), Some(segment_blocks)) => BlockGeometry {
            block_size,
            segment_blocks,
        },
        _ => BlockGeometry::default(),
    };
    for (path, f) in &files {
        let Some(l) = listed.get(*path) else {
            say(path, "stored, not in PostgreSQL's backup_manifest".into());
            continue;
        };
        if f.size != l.size {
            say(
                path,
                format!(
                    "{} bytes, PostgreSQL's backup_manifest says {}",
                    f.size, l.size
                ),
            );
        }
        let digest = f.chunks.iter().try_fold(Digest::default(), |d, c| {
            stored.chunks.get(c).map(|next| d.then(*next))
        });
        match (digest, l.crc32c) {
            (Some(d), _) if d.len != f.size => say(
                path,
                format!("its chunks hold {} bytes, its entry says {}", d.len, f.size),
            ),
            (Some(d), Some(crc)) if d.crc32c != crc => say(
                path,
                format!(
                    "CRC-32C {} of the stored bytes, PostgreSQL's backup_manifest says {}",
                    crc32c_hex(d.crc32c),
                    crc32c_hex(crc)
                ),
            ),
            _ => {}
        }
        if is_incremental(path) {
            if let Some(head) = stored.heads.get(*path) {
                let checked = IncrementalHeader::parse(head, geometry)
                    .and_then(|h| h.check_len(f.size, geometry.block_size));
                if let Err(e) = checked {
                    say(path, e.to_string());
                }
            }
        }
    }
    for (path, text) in [
        ("backup_label", Some(m.backup_label.as_str())),
        ("tablespace_map", m.tablespace_map.as_deref()),
    ] {
        let (
            Some(text),
            Some(Listed {
                crc32c: Some(crc), ..
            }),
        ) = (text.filter(|t| !t.is_empty()), listed.get(path))
        else {
            continue;
        };
        if crc32c::crc32c(text.as_bytes()) != *crc {
            say(
                path,
                "the text kept in the manifest is not what the server sent".into(),
            );
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg_manifest::parse_pg_manifest;
    use crate::store::chain::tests::{full, incremental};
    use pgagent_protocol::incremental::INCREMENTAL_MAGIC;
    use pgagent_storage::manifest::FileEntry;

    /// A manifest of `files` (path, bytes) cut into `chunk`-byte chunks named `<path>#<i>`,
    /// with their digests, the server's `backup_manifest` of the same bytes, and the heads
    /// of the incremental files.
    struct Case {
        manifest: BackupManifest,
        chunks: HashMap<String, Digest>,
        heads: HashMap<String, Vec<u8>>,
        pg: String,
    }

    fn case(mut manifest: BackupManifest, files: &[(&str, Vec<u8>)], chunk: usize) -> Case {
        let mut chunks = HashMap::new();
        let mut heads = HashMap::new();
        let mut pg = Vec::new();
        for (path, bytes) in files {
            let names: Vec<String> = bytes
                .chunks(chunk)
                .enumerate()
                .map(|(i, c)| {
                    let name = format!("{path}#{i}");
                    chunks.insert(name.clone(), Digest::of(c));
                    name
                })
                .collect();
            manifest.files.push(FileEntry {
                path: path.to_string(),
                kind: EntryKind::File,
                mode: 0o600,
                size: bytes.len() as u64,
                mtime: 0,
                chunks: names,
                target: None,
            });
            if is_incremental(path) {
                heads.insert(path.to_string(), bytes[..bytes.len().min(64)].to_vec());
            }
            pg.push(format!(
                r#"{{ "Path": "{path}", "Size": {}, "Last-Modified": "2026-11-01 03:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "{}" }}"#,
                bytes.len(),
                crc32c_hex(crc32c::crc32c(bytes))
            ));
        }
        let pg = format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7,\n\"Files\": [\n{} ],\n\"WAL-Ranges\": [],\n\"Manifest-Checksum\": \"00\"}}\n",
            pg.join(",\n")
        );
        Case {
            manifest,
            chunks,
            heads,
            pg,
        }
    }

    impl Case {
        fn check(&self) -> Vec<String> {
            let listed = parse_pg_manifest(self.pg.as_bytes()).unwrap();
            check_files(
                &Stored {
                    manifest: &self.manifest,
                    chunks: &self.chunks,
                    heads: &self.heads,
                },
                &listed,
            )
        }
    }

    /// An incremental file holding `blocks` of 8192 bytes (numbers 0, 1…).
    fn incremental_file(blocks: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&INCREMENTAL_MAGIC.to_le_bytes());
        v.extend_from_slice(&blocks.to_le_bytes());
        v.extend_from_slice(&blocks.to_le_bytes());
        for b in 0..blocks {
            v.extend_from_slice(&b.to_le_bytes());
        }
        v.resize(8192 * (1 + blocks as usize), 7);
        v
    }

    #[test]
    fn a_crc_combined_from_chunks_is_the_crc_of_the_whole() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let combined = bytes
            .chunks(999)
            .fold(Digest::default(), |d, c| d.then(Digest::of(c)));
        assert_eq!(combined, Digest::of(&bytes));
        // "123456789" is the CRC-32C check value 0xe3069283, written little-endian.
    }

    #[test]
    fn stored_files_that_match_the_servers_manifest_pass() {
        let label = "START WAL LOCATION: 0/1000028 (file 000000010000000000000001)\n";
        let mut m = full("20261101T030000Z", "0/1000028");
        m.backup_label = label.into();
        let files = [
            ("PG_VERSION", b"17\n".to_vec()),
            ("backup_label", label.as_bytes().to_vec()),
            ("base/5/16384", vec![1u8; 20_000]),
            ("pg_tblspc/16390/PG_17_202406281/5/16391", vec![2u8; 5]),
            ("empty", Vec::new()),
        ];
        let c = case(m, &files, 4096);
        assert_eq!(c.check(), Vec::<String>::new());
    }

    #[test]
    fn missing_extra_resized_and_altered_files_are_named() {
        let files = [
            ("PG_VERSION", b"17\n".to_vec()),
            ("base/5/16384", vec![1u8; 9000]),
            ("global/pg_control", vec![3u8; 100]),
        ];
        let mut c = case(full("20261101T030000Z", "0/1000028"), &files, 4096);
        // Stored bytes differ from what the server sent: a chunk's content changed.
        c.chunks
            .insert("base/5/16384#1".into(), Digest::of(&[9u8; 4096]));
        // A file the server listed is not stored, one stored was not listed.
        c.manifest.files.retain(|f| f.path != "global/pg_control");
        c.manifest.files.push(FileEntry {
            path: "stray".into(),
            kind: EntryKind::File,
            mode: 0o600,
            size: 0,
            mtime: 0,
            chunks: vec![],
            target: None,
        });
        // A size that disagrees with the server's.
        c.pg = c.pg.replace("\"Size\": 3,", "\"Size\": 4,");
        let problems = c.check();
        let id = "backup 20261101T030000Z file";
        assert_eq!(
            problems,
            [
                format!("{id} global/pg_control: in PostgreSQL's backup_manifest, not stored"),
                format!("{id} PG_VERSION: 3 bytes, PostgreSQL's backup_manifest says 4"),
                format!(
                    "{id} base/5/16384: CRC-32C {} of the stored bytes, PostgreSQL's backup_manifest says {}",
                    crc32c_hex(
                        Digest::of(&[1u8; 4096])
                            .then(Digest::of(&[9u8; 4096]))
                            .then(Digest::of(&[1u8; 808]))
                            .crc32c
                    ),
                    crc32c_hex(crc32c::crc32c(&[1u8; 9000]))
                ),
                format!("{id} stray: stored, not in PostgreSQL's backup_manifest"),
            ]
        );
    }

    #[test]
    fn an_unreadable_chunk_leaves_the_size_check_only() {
        let files = [("base/5/16384", vec![1u8; 9000])];
        let mut c = case(full("20261101T030000Z", "0/1000028"), &files, 4096);
        c.chunks.remove("base/5/16384#0");
        assert_eq!(c.check(), Vec::<String>::new());
    }

    #[test]
    fn incremental_files_have_a_sound_header_and_length() {
        let f = full("20261101T030000Z", "0/1000028");
        let i = incremental("20261102T030000Z", "0/2000028", &f);
        let good = incremental_file(2);
        let mut short = incremental_file(3);
        short.truncate(8192 * 3);
        let files = [
            ("base/5/INCREMENTAL.16384", good),
            ("base/5/INCREMENTAL.16385", short),
            (
                "base/5/INCREMENTAL.16386",
                b"PGA1 not an incremental file".to_vec(),
            ),
        ];
        let c = case(i, &files, 1 << 20);
        let problems = c.check();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("backup 20261102T030000Z file base/5/INCREMENTAL.16385: ")
                && problems[0].contains("24576 bytes long; its header says 32768"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("INCREMENTAL.16386: bad incremental magic number"),
            "{problems:?}"
        );
        assert_eq!(header_need(&incremental_file(2), 131_072), 20);
        assert_eq!(header_need(b"short", 131_072), FIXED_HEADER_BYTES);
    }

    #[test]
    fn the_label_text_must_be_what_the_server_sent() {
        let mut m = full("20261101T030000Z", "0/1000028");
        m.backup_label = "START WAL LOCATION: 0/1000028\n".into();
        let c = case(
            m,
            &[("backup_label", b"START WAL LOCATION: 0/2000028\n".to_vec())],
            4096,
        );
        assert_eq!(
            c.check(),
            ["backup 20261101T030000Z file backup_label: the text kept in the manifest is not what the server sent"]
        );
    }
}
