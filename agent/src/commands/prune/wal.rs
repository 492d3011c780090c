//! Which WAL prune deletes: everything before the oldest segment a kept backup, a snapshot
//! record or another store's catch-up still needs, and the pieces of segments stored
//! complete.

use pgagent_protocol::{segment_file_name, Lsn, SegNo, WalSegmentSize};
use pgagent_storage::layout::wal_key;
use pgagent_storage::manifest::{BackupManifest, BackupStatus};
use pgagent_storage::pin::WalPin;
use pgagent_storage::snapshot::SnapshotRecord;

use crate::store::wal::{SegmentId, WalIndex};

/// The oldest WAL segment that a restore of a kept complete backup (`kept`) or of a
/// snapshot with a record in the store (`records`) replays from: the segment of its start
/// LSN, whatever the timeline (WAL of any timeline before it is needed by none). Returned
/// with what needs it, e.g. `"snapshot 20261025T100000Z"`; `None` when nothing does.
///
/// The backups kept only because a kept incremental backup depends on them count too: a
/// restore of the incremental backup replays WAL from its own start only, but every backup
/// left in the store stays restorable by itself (and `verify` finds its WAL), at the cost
/// of the WAL since the oldest kept chain's full backup (`backup.max_chain` bounds it).
pub fn wal_floor(
    kept: &[&BackupManifest],
    records: &[SnapshotRecord],
    seg: WalSegmentSize,
) -> Option<(SegNo, String)> {
    let backups = kept
        .iter()
        .filter(|m| m.status == BackupStatus::Complete)
        .filter_map(|m| {
            let (lsn, _) = m.start().ok()?;
            Some((lsn.segment_number(seg), format!("backup {}", m.id)))
        });
    let snapshots = records.iter().filter_map(|r| {
        let (start, _, _) = r.positions().ok()?;
        Some((start.segment_number(seg), format!("snapshot {}", r.id)))
    });
    backups.chain(snapshots).min_by_key(|(segno, _)| *segno)
}

/// The WAL floor once the pins are counted: the segment of the lowest pin's `from_lsn`
/// when it is before `floor`, with what needs it (`"store r2's catch-up (pin written …)"`).
pub fn with_pin(
    floor: (SegNo, String),
    lowest_pin: Option<(Lsn, &WalPin)>,
    seg: WalSegmentSize,
) -> (SegNo, String) {
    match lowest_pin {
        Some((lsn, pin)) if lsn.segment_number(seg) < floor.0 => (
            lsn.segment_number(seg),
            format!(
                "store {}'s catch-up from {} (pin written {})",
                pin.store, pin.from_lsn, pin.written_at
            ),
        ),
        _ => floor,
    }
}

/// The WAL keys to delete given the index of `wal/`: those of segments before `floor`
/// (complete segments, their deltas and `.partial` objects, `.backup` files; history files
/// stay), then the deltas and `.partial` objects of the other segments stored complete,
/// which nothing reads any more.
pub fn wal_to_delete(
    index: &WalIndex,
    floor: SegNo,
    seg: WalSegmentSize,
) -> (Vec<String>, Vec<String>) {
    let before = |id: &SegmentId| id.1 < floor;
    let mut old: Vec<String> = index
        .complete
        .keys()
        .filter(|id| before(id))
        .map(|&(t, s)| wal_key(&segment_file_name(t, s, seg)))
        .collect();
    for (_, pieces) in index.pieces.iter().filter(|(id, _)| before(id)) {
        old.extend(pieces.keys(seg));
    }
    old.extend(
        index
            .backup_histories
            .iter()
            .filter(|(_, id)| before(id))
            .map(|(k, _)| k.clone()),
    );
    let superseded = index
        .pieces
        .iter()
        .filter(|(id, _)| !before(id) && index.complete.contains_key(id))
        .flat_map(|(_, p)| p.keys(seg))
        .collect();
    (old, superseded)
}

#[cfg(test)]
mod tests {
    use super::super::tests::m;
    use super::*;

    fn record(id: &str, start_lsn: &str) -> SnapshotRecord {
        SnapshotRecord {
            format: pgagent_storage::snapshot::SNAPSHOT_FORMAT_VERSION,
            id: id.into(),
            system_identifier: 1,
            pg_version: 150000,
            snapshots: vec![format!("tank/pg@pgagent-{id}")],
            mountpoints: vec!["/var/lib/postgresql".into()],
            pgdata: "/var/lib/postgresql/15/main".into(),
            timeline: 2,
            start_lsn: start_lsn.into(),
            stop_lsn: start_lsn.into(),
            started_at: "2026-11-01T00:00:00Z".into(),
            finished_at: "2026-11-01T00:00:01Z".into(),
            backup_label: "x".into(),
            tablespace_map: None,
            host: "db1".into(),
        }
    }

    #[test]
    fn the_wal_floor_is_the_oldest_start_of_a_kept_backup_or_a_snapshot() {
        use BackupStatus::*;
        let seg = WalSegmentSize::DEFAULT;
        let mut old = m("old", "2026-11-10T03:00:00Z", Complete);
        old.start_lsn = "0/8000028".into();
        let mut new = m("new", "2026-11-20T03:00:00Z", Complete);
        new.start_lsn = "0/C000028".into();
        let mut running = m("run", "2026-11-21T03:00:00Z", Running);
        running.start_lsn = "0/1000028".into();
        let kept = [&old, &new, &running];
        // Backups only: the oldest complete one (a running one restores nothing).
        assert_eq!(
            wal_floor(&kept, &[], seg),
            Some((SegNo(8), "backup old".into()))
        );
        // A weekly snapshot older than every kept backup holds the WAL back to its start.
        let weekly = record("20261101T000000Z", "0/5123456");
        let daily = record("20261119T000000Z", "0/B000000");
        assert_eq!(
            wal_floor(&kept, &[weekly.clone(), daily.clone()], seg),
            Some((SegNo(5), "snapshot 20261101T000000Z".into()))
        );
        // A snapshot newer than the oldest kept backup changes nothing.
        assert_eq!(
            wal_floor(&kept, &[daily], seg),
            Some((SegNo(8), "backup old".into()))
        );
        assert_eq!(wal_floor(&[&running], &[], seg), None);
        assert_eq!(
            wal_floor(&[], &[weekly], seg),
            Some((SegNo(5), "snapshot 20261101T000000Z".into()))
        );
    }

    #[test]
    fn wal_before_the_floor_goes_and_pieces_of_complete_segments_too() {
        let seg = WalSegmentSize::DEFAULT;
        let keys = [
            "wal/000000010000000000000003",
            "wal/000000010000000000000003.00000028.backup",
            "wal/000000010000000000000003.partial",
            "wal/000000010000000000000003.partial.d/00000000-00001000",
            "wal/000000010000000000000004.partial.d/00000000-00001000",
            "wal/000000010000000000000005",
            "wal/000000010000000000000005.partial.d/00000000-00001000",
            "wal/000000010000000000000005.partial.d/00001000-00002000",
            "wal/000000010000000000000006.partial",
            "wal/000000010000000000000006.partial.d/00000000-00001000",
            "wal/00000001.history",
            "wal/00000002.history",
        ];
        let listed = crate::store::wal::listing_of(keys, 1);
        let index = WalIndex::from_listing(&listed, seg);
        let (mut old, superseded) = wal_to_delete(&index, SegNo(5), seg);
        old.sort();
        assert_eq!(old, keys[..5]);
        assert_eq!(superseded, keys[6..8]);
        // Segment 6 is being filled: its pieces stay, and history files always do.
    }

    #[test]
    fn a_pin_below_the_floor_holds_the_wal_back_to_its_segment() {
        let seg = WalSegmentSize::DEFAULT;
        let floor = (SegNo(8), "backup old".to_string());
        let pin = WalPin {
            store: "r2".into(),
            from_lsn: "0/5123456".into(),
            timeline: 1,
            written_at: "2026-11-21T10:00:00Z".into(),
        };
        let at = pin.from().unwrap();
        assert_eq!(
            with_pin(floor.clone(), Some((at, &pin)), seg),
            (
                SegNo(5),
                "store r2's catch-up from 0/5123456 (pin written 2026-11-21T10:00:00Z)".into()
            )
        );
        // A pin past the floor, or none, changes nothing.
        let later = WalPin {
            from_lsn: "0/9000000".into(),
            ..pin
        };
        let at = later.from().unwrap();
        assert_eq!(with_pin(floor.clone(), Some((at, &later)), seg), floor);
        assert_eq!(with_pin(floor.clone(), None, seg), floor);
    }
}
