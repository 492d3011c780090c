//! ZFS snapshot records: `snapshots/<id>.json` (DESIGN.md, "Store layout" and "ZFS").
//!
//! A snapshot taken between `pg_backup_start` and `pg_backup_stop` is a base backup only
//! together with the `backup_label` (and `tablespace_map`) that `pg_backup_stop` returned
//! (PostgreSQL docs, "Making a Base Backup Using the Low Level API", 26.3.3): a restore
//! writes them into the data directory before recovery starts. The record keeps them with
//! the snapshot names, the LSNs and the data directory's place in the dataset. The same
//! record is written into the store and onto the snapshots as a ZFS user property.

use pgagent_protocol::{Lsn, TimelineId};
use serde::{Deserialize, Serialize};

/// Version of the record format written by this code.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// One consistent snapshot of the datasets of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// [`SNAPSHOT_FORMAT_VERSION`] when written.
    pub format: u32,
    /// `YYYYMMDDTHHMMSSZ`, the time `pg_backup_start` was called; snapshot names are
    /// `<dataset>@pgagent-<id>`.
    pub id: String,
    /// The cluster's system identifier (IDENTIFY_SYSTEM).
    pub system_identifier: u64,
    /// `server_version_num` of the server.
    pub pg_version: u32,
    /// The snapshots, `pool/dataset@pgagent-<id>`, each taken with `zfs snapshot -r`; the
    /// first one holds the data directory.
    pub snapshots: Vec<String>,
    /// Mount point of each snapshotted dataset when the snapshot was taken (same order).
    pub mountpoints: Vec<String>,
    /// The server's `data_directory` when the snapshot was taken (absolute).
    pub pgdata: String,
    /// Timeline the backup started on (`START TIMELINE` of the label).
    pub timeline: u32,
    /// LSN returned by `pg_backup_start` (the checkpoint's redo point), as `X/X`.
    pub start_lsn: String,
    /// LSN returned by `pg_backup_stop`: recovery must replay at least up to here.
    pub stop_lsn: String,
    /// RFC 3339 UTC time `pg_backup_start` returned.
    pub started_at: String,
    /// RFC 3339 UTC time `pg_backup_stop` returned: the earliest recovery target time.
    pub finished_at: String,
    /// The `backup_label` contents from `pg_backup_stop`.
    pub backup_label: String,
    /// The `tablespace_map` contents, when the cluster has tablespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_map: Option<String>,
    /// Host name of the machine whose datasets these are.
    pub host: String,
}

/// A record that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("snapshot record {id}: {reason}")]
pub struct RecordError {
    /// The record's id.
    pub id: String,
    /// What is wrong.
    pub reason: String,
}

impl SnapshotRecord {
    /// The start and stop LSN and the timeline.
    ///
    /// Errors: an LSN or timeline that does not parse.
    pub fn positions(&self) -> Result<(Lsn, Lsn, TimelineId), RecordError> {
        let bad = |reason: String| RecordError {
            id: self.id.clone(),
            reason,
        };
        let start: Lsn = self
            .start_lsn
            .parse()
            .map_err(|e| bad(format!("start_lsn: {e}")))?;
        let stop: Lsn = self
            .stop_lsn
            .parse()
            .map_err(|e| bad(format!("stop_lsn: {e}")))?;
        if self.timeline == 0 {
            return Err(bad("timeline 0".into()));
        }
        Ok((start, stop, TimelineId(self.timeline)))
    }

    /// Checks what a restore relies on: a known format, snapshot names of the form
    /// `dataset@pgagent-<id>`, one mount point per snapshot, an absolute data directory
    /// below the first mount point, LSNs in order, and a label.
    ///
    /// Errors: [`RecordError`] naming the first problem.
    pub fn check(&self) -> Result<(), RecordError> {
        let bad = |reason: &str| RecordError {
            id: self.id.clone(),
            reason: reason.to_string(),
        };
        if self.format != SNAPSHOT_FORMAT_VERSION {
            return Err(bad("unknown format version"));
        }
        if self.snapshots.is_empty() || self.snapshots.len() != self.mountpoints.len() {
            return Err(bad("needs one mount point per snapshot"));
        }
        let suffix = format!("@pgagent-{}", self.id);
        if self
            .snapshots
            .iter()
            .any(|s| !s.ends_with(&suffix) || s.len() == suffix.len() || s.contains(' '))
        {
            return Err(bad("snapshot names must be dataset@pgagent-<id>"));
        }
        if !self.pgdata.starts_with('/') || self.pgdata.split('/').any(|c| c == "..") {
            return Err(bad("pgdata must be an absolute path without .."));
        }
        if self.pgdata_in_dataset().is_none() {
            return Err(bad("pgdata is not below the first dataset's mount point"));
        }
        let (start, stop, _) = self.positions()?;
        if stop < start {
            return Err(bad("stop_lsn is before start_lsn"));
        }
        if self.backup_label.is_empty() {
            return Err(bad("no backup_label"));
        }
        Ok(())
    }

    /// The data directory relative to the first dataset's mount point (`""` when it is the
    /// mount point itself, `"15/main"` for `/var/lib/postgresql` and
    /// `/var/lib/postgresql/15/main`); `None` when it is not below it.
    pub fn pgdata_in_dataset(&self) -> Option<&str> {
        let mount = self.mountpoints.first()?.trim_end_matches('/');
        let rest = self.pgdata.trim_end_matches('/').strip_prefix(mount)?;
        if rest.is_empty() {
            Some("")
        } else {
            rest.strip_prefix('/')
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record() -> SnapshotRecord {
        SnapshotRecord {
            format: SNAPSHOT_FORMAT_VERSION,
            id: "20261121T101500Z".into(),
            system_identifier: 7,
            pg_version: 150_000,
            snapshots: vec!["tank/pg@pgagent-20261121T101500Z".into()],
            mountpoints: vec!["/var/lib/postgresql".into()],
            pgdata: "/var/lib/postgresql/15/main".into(),
            timeline: 1,
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            started_at: "2026-11-21T10:15:00Z".into(),
            finished_at: "2026-11-21T10:15:01Z".into(),
            backup_label: "START WAL LOCATION: 0/2000028\n".into(),
            tablespace_map: None,
            host: "db1".into(),
        }
    }

    #[test]
    fn a_good_record_passes_and_round_trips() {
        let r = record();
        r.check().unwrap();
        assert_eq!(r.pgdata_in_dataset(), Some("15/main"));
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains('\n'), "one line, fit for a ZFS property");
        assert_eq!(serde_json::from_str::<SnapshotRecord>(&json).unwrap(), r);
    }

    #[test]
    fn bad_records_are_refused() {
        type Change = Box<dyn Fn(&mut SnapshotRecord)>;
        let cases: Vec<(&str, Change)> = vec![
            ("format", Box::new(|r| r.format = 9)),
            (
                "name",
                Box::new(|r| r.snapshots[0] = "tank/pg@other".into()),
            ),
            ("mounts", Box::new(|r| r.mountpoints.clear())),
            ("relative", Box::new(|r| r.pgdata = "data".into())),
            (
                "dotdot",
                Box::new(|r| r.pgdata = "/var/lib/postgresql/../x".into()),
            ),
            ("outside", Box::new(|r| r.pgdata = "/srv/pg".into())),
            (
                "sibling",
                Box::new(|r| r.pgdata = "/var/lib/postgresql2".into()),
            ),
            ("order", Box::new(|r| r.stop_lsn = "0/1".into())),
            ("lsn", Box::new(|r| r.start_lsn = "x".into())),
            ("label", Box::new(|r| r.backup_label.clear())),
        ];
        for (what, change) in cases {
            let mut r = record();
            change(&mut r);
            assert!(r.check().is_err(), "{what} accepted");
        }
        let mut r = record();
        r.pgdata = "/var/lib/postgresql/".into();
        assert_eq!(r.pgdata_in_dataset(), Some(""));
    }
}
