//! Which store objects answer a `restore_command` request: pure, no I/O.
//!
//! PostgreSQL asks for a file by the name it would have in `pg_wal` (`%f` of
//! `restore_command`, PostgreSQL docs "Archive Recovery" and `RestoreArchivedFile` in
//! `src/backend/access/transam/xlogarchive.c`): a segment, a timeline history file, a backup
//! history file, or (rarely) a `.partial` segment. The store keeps them under `wal/`
//! (DESIGN.md, "Store layout"); the segment being filled as deltas or, in stores written
//! before deltas, as a `.partial` object ([`PartialSources`]).

use pgagent_protocol::{Lsn, SegNo, TimelineId, WalFileName, WalSegmentSize};
use pgagent_storage::deltas::deltas_prefix;
use pgagent_storage::layout::{legacy_partial_key, wal_key};

/// The smallest segment size PostgreSQL accepts (`--wal-segsize=1`): the loosest rule for the
/// low 8 hex digits of a segment name, so a name that fails with it fails with every size.
const LOOSEST_SEGMENT_SIZE: u64 = 1 << 20;

/// Where the partial content of a segment may be: the segment being filled, which the store
/// holds as deltas, or (stores written before deltas) as one `.partial` object
/// ([`pgagent_storage::deltas`]). Delivered assembled from offset 0 up to the first hole,
/// zero-padded to the segment size, because PostgreSQL rejects a restored segment of another
/// size (`RestoreArchivedFile`: "archive file has wrong size").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialSources {
    /// Timeline of the segment.
    pub tli: TimelineId,
    /// The segment.
    pub segno: SegNo,
    /// Key of its `.partial` object, e.g. `wal/000000010000000A000000FF.partial`.
    pub legacy: String,
    /// Prefix of its deltas, e.g. `wal/000000010000000A000000FF.partial.d/`.
    pub deltas_prefix: String,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// LSN of the first byte of the segment.
    pub start: Lsn,
}

/// A validated request and the objects that may answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// What was asked for.
    pub name: WalFileName,
    /// The object holding the whole file, delivered as stored: a complete segment, a
    /// history or a backup history file; `None` for a `.partial` request.
    pub whole: Option<String>,
    /// For a segment or a `.partial`: its partial content, which answers when `whole` is
    /// absent (a segment's unless a later timeline forked off before its end, [`super::forks`]).
    pub partial: Option<PartialSources>,
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

/// The objects that may answer `file` in a store whose segments are `seg` bytes.
///
/// - segment: the complete object, else its partial content;
/// - `.partial`: the partial content of its segment;
/// - `.history`, `.backup`: the object of the same name.
///
/// Returns `None` if `file` is not a WAL file name for this segment size (such a key is
/// never built).
pub fn resolve(file: &str, seg: WalSegmentSize) -> Option<Resolved> {
    let name = WalFileName::parse(file, seg)?;
    // Keys are built from the parsed name, never from the caller's string.
    let key = wal_key(&name.file_name(seg));
    let partial = |tli, segno: SegNo| PartialSources {
        tli,
        segno,
        legacy: legacy_partial_key(tli, segno, seg),
        deltas_prefix: deltas_prefix(tli, segno, seg),
        segment_size: seg.bytes(),
        start: segno.start_lsn(seg),
    };
    let (whole, partial) = match name {
        WalFileName::Segment { tli, segno } => (Some(key), Some(partial(tli, segno))),
        WalFileName::Partial { tli, segno } => (None, Some(partial(tli, segno))),
        WalFileName::History(_) | WalFileName::BackupHistory { .. } => (Some(key), None),
    };
    Some(Resolved {
        name,
        whole,
        partial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg16() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    #[test]
    fn segment_tries_complete_then_its_partial_content() {
        let r = resolve("000000010000000A000000FE", seg16()).unwrap();
        assert_eq!(r.whole.as_deref(), Some("wal/000000010000000A000000FE"));
        assert_eq!(
            r.partial,
            Some(PartialSources {
                tli: TimelineId(1),
                segno: SegNo(0xAFE),
                legacy: "wal/000000010000000A000000FE.partial".into(),
                deltas_prefix: "wal/000000010000000A000000FE.partial.d/".into(),
                segment_size: 16 << 20,
                start: Lsn(0xA_FE00_0000)
            })
        );
    }

    #[test]
    fn history_backup_and_partial_map_to_their_own_objects() {
        let h = resolve("00000002.history", seg16()).unwrap();
        assert_eq!(h.whole.as_deref(), Some("wal/00000002.history"));
        assert_eq!(h.partial, None);
        let b = resolve("000000010000000000000002.00000028.backup", seg16()).unwrap();
        assert_eq!(
            b.whole.as_deref(),
            Some("wal/000000010000000000000002.00000028.backup")
        );
        let p = resolve("000000010000000000000003.partial", seg16()).unwrap();
        assert_eq!(p.whole, None);
        let sources = p.partial.unwrap();
        assert_eq!(sources.legacy, "wal/000000010000000000000003.partial");
        assert_eq!(
            sources.deltas_prefix,
            "wal/000000010000000000000003.partial.d/"
        );
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
