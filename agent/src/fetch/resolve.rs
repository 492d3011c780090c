//! Which store objects answer a `restore_command` request: pure, no I/O.
//!
//! PostgreSQL asks for a file by the name it would have in `pg_wal` (`%f` of
//! `restore_command`, PostgreSQL docs "Archive Recovery" and `RestoreArchivedFile` in
//! `src/backend/access/transam/xlogarchive.c`): a segment, a timeline history file, a backup
//! history file, or (rarely) a `.partial` segment. The store keeps them under `wal/`
//! (DESIGN.md, "Store layout").

use pgagent_protocol::{Lsn, WalFileName, WalSegmentSize};

/// Prefix of WAL objects in the store.
pub const WAL_PREFIX: &str = "wal/";

/// The smallest segment size PostgreSQL accepts (`--wal-segsize=1`): the loosest rule for the
/// low 8 hex digits of a segment name, so a name that fails with it fails with every size.
const LOOSEST_SEGMENT_SIZE: u64 = 1 << 20;

/// How the raw content of an object becomes the file PostgreSQL reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Delivered as stored.
    AsIs,
    /// WAL from the start of the segment up to the last upload: zero-padded to the segment
    /// size in bytes, because PostgreSQL rejects a restored segment of another size
    /// (`RestoreArchivedFile`: "archive file has wrong size").
    PadToSegment {
        /// Segment size in bytes.
        segment_size: u64,
        /// LSN of the first byte of the segment; plus the raw length, where the WAL served ends.
        start: Lsn,
    },
}

/// One object to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Store key, e.g. `wal/000000010000000A000000FE`.
    pub key: String,
    /// How to turn its raw content into the delivered file.
    pub fill: Fill,
}

/// A validated request and the objects that may answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// What was asked for.
    pub name: WalFileName,
    /// Objects to try in order; the first one found answers. All absent: the file is absent.
    pub sources: Vec<Source>,
}

/// Whether `file` can be a WAL file name for some segment size (syntax only).
///
/// Used before the store is contacted, so a hostile name (`../x`) is rejected without any
/// I/O; [`resolve`] checks it again against the cluster's segment size.
pub fn is_wal_file_name(file: &str) -> bool {
    WalSegmentSize::new(LOOSEST_SEGMENT_SIZE)
        .ok()
        .and_then(|seg| WalFileName::parse(file, seg))
        .is_some()
}

/// The objects to try for `file` in a store whose segments are `seg` bytes.
///
/// - segment: the complete object, then the `.partial` of the same segment, zero-padded;
/// - `.partial`: that object, zero-padded;
/// - `.history`, `.backup`: the object of the same name.
///
/// Returns `None` if `file` is not a WAL file name for this segment size (such a key is
/// never built).
pub fn resolve(file: &str, seg: WalSegmentSize) -> Option<Resolved> {
    let name = WalFileName::parse(file, seg)?;
    // Keys are built from the parsed name, never from the caller's string.
    let canonical = name.file_name(seg);
    let key = format!("{WAL_PREFIX}{canonical}");
    let sources = match name {
        WalFileName::Segment { segno, .. } => {
            let pad = Fill::PadToSegment {
                segment_size: seg.bytes(),
                start: segno.start_lsn(seg),
            };
            vec![
                Source {
                    key: key.clone(),
                    fill: Fill::AsIs,
                },
                Source {
                    key: format!("{key}.partial"),
                    fill: pad,
                },
            ]
        }
        WalFileName::Partial { segno, .. } => vec![Source {
            key,
            fill: Fill::PadToSegment {
                segment_size: seg.bytes(),
                start: segno.start_lsn(seg),
            },
        }],
        WalFileName::History(_) | WalFileName::BackupHistory { .. } => vec![Source {
            key,
            fill: Fill::AsIs,
        }],
    };
    Some(Resolved { name, sources })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg16() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    fn keys(r: &Resolved) -> Vec<&str> {
        r.sources.iter().map(|s| s.key.as_str()).collect()
    }

    #[test]
    fn segment_tries_complete_then_partial() {
        let r = resolve("000000010000000A000000FE", seg16()).unwrap();
        assert_eq!(
            keys(&r),
            [
                "wal/000000010000000A000000FE",
                "wal/000000010000000A000000FE.partial"
            ]
        );
        assert_eq!(r.sources[0].fill, Fill::AsIs);
        assert_eq!(
            r.sources[1].fill,
            Fill::PadToSegment {
                segment_size: 16 << 20,
                start: Lsn(0xA_FE00_0000)
            }
        );
    }

    #[test]
    fn history_backup_and_partial_map_to_their_own_key() {
        let h = resolve("00000002.history", seg16()).unwrap();
        assert_eq!(keys(&h), ["wal/00000002.history"]);
        assert_eq!(h.sources[0].fill, Fill::AsIs);
        let b = resolve("000000010000000000000002.00000028.backup", seg16()).unwrap();
        assert_eq!(keys(&b), ["wal/000000010000000000000002.00000028.backup"]);
        let p = resolve("000000010000000000000003.partial", seg16()).unwrap();
        assert_eq!(keys(&p), ["wal/000000010000000000000003.partial"]);
        assert!(matches!(p.sources[0].fill, Fill::PadToSegment { .. }));
    }

    #[test]
    fn hostile_and_malformed_names_are_rejected() {
        for bad in [
            "../../etc/passwd",
            "",
            "000000010000000000000001/../x",
            "000000010000000a000000fe", // lowercase: PostgreSQL never writes it
            "00000001000000000000001",
            "0000000100000000000000010",
            "00000002.history/..",
            "x.history",
            "000000010000000000000001.backup",
            "cluster.json",
            "wal/000000010000000000000001",
        ] {
            assert!(!is_wal_file_name(bad), "{bad:?}");
            assert!(resolve(bad, seg16()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn names_impossible_for_the_segment_size_are_rejected() {
        // Low part 0x100 exists with 1 MiB segments (4096 per xlogid), not with 16 MiB (256).
        let name = "000000010000000000000100";
        assert!(is_wal_file_name(name));
        assert!(resolve(name, seg16()).is_none());
        let one_mib = WalSegmentSize::new(1 << 20).unwrap();
        assert!(resolve(name, one_mib).is_some());
    }
}
