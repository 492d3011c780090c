//! The store layout (DESIGN.md, "Store layout") and key validation.
//!
//! ```text
//! cluster.json                          written once: system identifier, segment size, …
//! wal/000000010000000A000000FE          a complete segment
//! wal/000000010000000A000000FF.partial.d/00000000-0001A000
//!                                       the segment being filled: deltas of new WAL
//!                                       (byte offsets in the segment, see `crate::deltas`)
//! wal/000000010000000A000000FF.partial  the segment being filled, as stores written
//!                                       before deltas hold it (read, never written)
//! wal/00000002.history                  timeline history file
//! chunks/ab/ab34…e1                     content-addressed chunk (key = blake3 hex)
//! backups/<id>/manifest.json            base backup manifest
//! snapshots/<id>.json                   ZFS snapshot record
//! prune/<id>.json                       marker of a `pgagent prune` deleting chunks
//! keys/<id>                             encrypted stores only: the master key wrapped by one
//!                                       access key (plain JSON, see `crate::keyring::keys`)
//! pins/<store>.json                     WAL another store still needs copied from here (plain
//!                                       JSON, see `crate::pin`)
//! claims/<round>/<a|b>/<participant>    how the writers that found no `cluster.json` agreed
//!                                       on the one they write (see `crate::agreement`)
//! ```
//!
//! Keys are relative to the store URL's prefix and `/`-separated.

use pgagent_protocol::{history_file_name, segment_file_name, SegNo, TimelineId, WalSegmentSize};

use crate::error::StoreError;

/// Key of the cluster identity object (plain JSON, see [`crate::cluster`]).
pub const CLUSTER_KEY: &str = "cluster.json";
/// Prefix of every WAL object: segments, `.partial` segments and `.history` files.
pub const WAL_PREFIX: &str = "wal/";
/// Prefix of content-addressed base backup chunks.
pub const CHUNK_PREFIX: &str = "chunks/";
/// Prefix of base backup directories.
pub const BACKUP_PREFIX: &str = "backups/";
/// Prefix of ZFS snapshot records.
pub const SNAPSHOT_PREFIX: &str = "snapshots/";
/// Prefix of the markers a `pgagent prune` writes while it may delete chunks, so that a
/// starting base backup waits before it lists them.
pub const PRUNE_PREFIX: &str = "prune/";
/// Prefix of drill records (`pgagent drill`).
pub const DRILL_PREFIX: &str = "drills/";
/// Prefix of the access keys of an encrypted store (see [`crate::keyring::keys`]).
pub const KEY_PREFIX: &str = "keys/";
/// Prefix of the entries by which writers agree on a new store's `cluster.json` (see
/// [`crate::agreement`]); written once each, never deleted.
pub const CLAIM_PREFIX: &str = "claims/";
/// Prefix of the WAL pins: `pins/<store>.json`, written by the agent into a store holding
/// WAL that another store (`<store>`) has yet to copy (see [`crate::pin`]).
pub const PIN_PREFIX: &str = "pins/";
/// Suffix PostgreSQL gives a segment that is still being filled (`xlog_internal.h`,
/// `IsPartialXLogFileName`).
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Key of a WAL file by its PostgreSQL name: `wal_key("000000010000000A000000FE")` is
/// `"wal/000000010000000A000000FE"`; also used for `.partial` and `.history` names.
pub fn wal_key(file_name: &str) -> String {
    format!("{WAL_PREFIX}{file_name}")
}

/// Key of a complete segment: `wal/` and its `XLogFileName` (`src/include/access/
/// xlog_internal.h`), e.g. `wal/000000010000000A000000FE`.
pub fn segment_key(tli: TimelineId, segno: SegNo, seg: WalSegmentSize) -> String {
    wal_key(&segment_file_name(tli, segno, seg))
}

/// Key of a segment being filled as stores written before deltas hold it:
/// `wal/<segment>.partial` (read, never written).
pub fn legacy_partial_key(tli: TimelineId, segno: SegNo, seg: WalSegmentSize) -> String {
    format!("{}{PARTIAL_SUFFIX}", segment_key(tli, segno, seg))
}

/// Key of a timeline history file: `wal/` and its `TLHistoryFileName`, e.g.
/// `wal/00000002.history`.
pub fn history_key(tli: TimelineId) -> String {
    wal_key(&history_file_name(tli))
}

/// A key that sorts after every WAL object of timeline `tli` and before every object of a
/// later timeline: `after` for [`crate::object_store::ObjectStore::list_after`] when looking for the first
/// object of a later timeline. WAL names start with the timeline as 8 uppercase hex digits
/// (`XLogFileName` in `src/include/access/xlog_internal.h`; history files
/// `TLHistoryFileName`), followed only by hex digits, `.` and `/`, which all sort before `~`.
pub fn after_timeline(tli: u32) -> String {
    format!("{WAL_PREFIX}{tli:08X}~")
}

/// The file name of a key under [`WAL_PREFIX`], or `None` for other keys.
pub fn wal_file_name(key: &str) -> Option<&str> {
    key.strip_prefix(WAL_PREFIX).filter(|n| !n.contains('/'))
}

/// Key of a chunk by the lowercase hex of its blake3 hash, fanned out on the first two hex
/// digits so no single directory (fs backend) or listing grows unbounded:
/// `chunks/ab/ab34…e1`.
pub fn chunk_key(hash_hex: &str) -> String {
    let fan = hash_hex.get(..2).unwrap_or(hash_hex);
    format!("{CHUNK_PREFIX}{fan}/{hash_hex}")
}

/// Key of a base backup manifest: `backups/<id>/manifest.json`.
pub fn backup_manifest_key(id: &str) -> String {
    format!("{BACKUP_PREFIX}{id}/manifest.json")
}

/// Key of a ZFS snapshot record: `snapshots/<id>.json`.
pub fn snapshot_key(id: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{id}.json")
}

/// Key of a prune marker: `prune/<id>.json`.
pub fn prune_marker_key(id: &str) -> String {
    format!("{PRUNE_PREFIX}{id}.json")
}

/// Key of a drill record: `drills/<id>.json`.
pub fn drill_key(id: &str) -> String {
    format!("{DRILL_PREFIX}{id}.json")
}

/// Key of an access key file: `keys/<id>`.
pub fn key_file_key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// Key of the pin of store `store_name` (a configured store's name): `pins/<name>.json`.
pub fn pin_key(store_name: &str) -> String {
    format!("{PIN_PREFIX}{store_name}.json")
}

/// Name prefix of temporary files of the fs backend; reserved, refused in keys.
pub(crate) const TEMP_MARKER: &str = ".pgagent-tmp-";

/// Checks an object key: non-empty, at most 1024 bytes (the S3 limit), no leading `/`, no
/// empty, `.` or `..` segment, no NUL or other control character, and no segment starting
/// with the fs backend's reserved temporary-file marker.
///
/// Errors: [`StoreError::InvalidKey`].
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(invalid(key, "empty key"));
    }
    check_common(key)?;
    for seg in key.split('/') {
        check_segment(key, seg)?;
    }
    Ok(())
}

/// Checks a listing prefix: like [`validate_key`], except that it may be empty and its last
/// segment may be empty (`"wal/"`) or partial (`"wal/00000001"`).
///
/// Errors: [`StoreError::InvalidKey`].
pub fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_common(prefix)?;
    let segs: Vec<&str> = prefix.split('/').collect();
    let (last, rest) = segs.split_last().expect("split yields one item");
    for seg in rest {
        check_segment(prefix, seg)?;
    }
    if last.starts_with(TEMP_MARKER) {
        return Err(invalid(
            prefix,
            "segment uses the reserved temporary-file marker",
        ));
    }
    Ok(())
}

fn check_common(key: &str) -> Result<(), StoreError> {
    if key.len() > 1024 {
        return Err(invalid(key, "longer than 1024 bytes"));
    }
    if key.starts_with('/') {
        return Err(invalid(key, "leading '/'"));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid(key, "NUL or control character"));
    }
    Ok(())
}

fn check_segment(key: &str, seg: &str) -> Result<(), StoreError> {
    match seg {
        "" => Err(invalid(key, "empty path segment")),
        "." | ".." => Err(invalid(key, "'.' or '..' segment")),
        s if s.starts_with(TEMP_MARKER) => Err(invalid(
            key,
            "segment uses the reserved temporary-file marker",
        )),
        _ => Ok(()),
    }
}

fn invalid(key: &str, reason: &'static str) -> StoreError {
    StoreError::InvalidKey {
        key: key.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_timeline_sorts_between_timelines() {
        let after = after_timeline(0xA);
        validate_prefix(&after).unwrap();
        for own in [
            "wal/0000000A000000FF000000FF",
            "wal/0000000A000000FF000000FF.partial.d/00000000-00001000",
            "wal/0000000A0000000000000003.00000028.backup",
            "wal/0000000A.history",
        ] {
            assert!(own < after.as_str(), "{own}");
        }
        for later in ["wal/0000000B.history", "wal/0000000B0000000000000001"] {
            assert!(later > after.as_str(), "{later}");
        }
    }

    #[test]
    fn layout_keys() {
        assert_eq!(CLUSTER_KEY, "cluster.json");
        assert_eq!(
            wal_key("000000010000000A000000FE"),
            "wal/000000010000000A000000FE"
        );
        assert_eq!(wal_key("00000002.history"), "wal/00000002.history");
        assert_eq!(
            wal_file_name("wal/000000010000000A000000FF.partial"),
            Some("000000010000000A000000FF.partial")
        );
        assert_eq!(wal_file_name("chunks/ab/ab"), None);
        let h = blake3::hash(b"x").to_hex();
        assert_eq!(chunk_key(&h), format!("chunks/{}/{}", &h[..2], h));
        assert_eq!(
            backup_manifest_key("20240101T030000Z"),
            "backups/20240101T030000Z/manifest.json"
        );
        assert_eq!(snapshot_key("s1"), "snapshots/s1.json");
        assert_eq!(prune_marker_key("p1"), "prune/p1.json");
        assert_eq!(key_file_key("0a1b"), "keys/0a1b");
        assert_eq!(pin_key("r2"), "pins/r2.json");
        for k in [
            key_file_key("5f0c6a3e9b1d47a2c8e4f6b0a1d2c3e4"),
            wal_key("000000010000000A000000FE"),
            chunk_key(&h),
            backup_manifest_key("b"),
            snapshot_key("s"),
            prune_marker_key("p"),
            pin_key("nas-b"),
            CLUSTER_KEY.to_string(),
        ] {
            validate_key(&k).unwrap();
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        for k in [
            "",
            "/abs",
            "a//b",
            "a/",
            "../x",
            "a/../b",
            "a/./b",
            ".",
            "a\0b",
            "a\nb",
            "wal/.pgagent-tmp-1",
        ] {
            let e = validate_key(k).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::InvalidKey, "{k:?}");
        }
        assert!(validate_key(&"a".repeat(1025)).is_err());
        validate_key("a/b.c/..d").unwrap();
    }

    #[test]
    fn prefixes() {
        for p in ["", "wal/", "wal/0000", "chunks/ab/", "c"] {
            validate_prefix(p).unwrap();
        }
        for p in ["/", "a//", "../", "a/../b/", "a\0"] {
            assert!(validate_prefix(p).is_err(), "{p:?}");
        }
    }
}
