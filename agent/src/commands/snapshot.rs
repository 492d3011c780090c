//! `pgagent snapshot` and `pgagent list snapshots`: a consistent ZFS snapshot of the
//! cluster's datasets, taken by [`crate::zfs::take`] (DESIGN.md, "ZFS").

use pgagent_storage::snapshot::SnapshotRecord;

use crate::config::Config;
use crate::store::snapshots::store_records;
use crate::zfs::take::{retention, take_snapshot, zfs_of};

/// `pgagent snapshot`: the record goes to every configured store.
///
/// Errors: as [`take_snapshot`] and [`retention`].
pub async fn run(cfg: &Config) -> anyhow::Result<()> {
    let r = take_snapshot(cfg).await?;
    println!(
        "snapshot {}: {} (timeline {}, start {}, stop {})",
        r.id,
        r.snapshots.join(" "),
        r.timeline,
        r.start_lsn,
        r.stop_lsn
    );
    for id in retention(cfg).await? {
        println!("destroyed snapshot {id} (retention)");
    }
    Ok(())
}

/// One line of `pgagent list snapshots`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotListing {
    /// The id.
    pub id: String,
    /// Whether the snapshots are on this machine.
    pub local: bool,
    /// Whether the record is in the store.
    pub in_store: bool,
    /// The record (from the snapshot, else from the store); `None` when unusable.
    pub record: Option<SnapshotRecord>,
    /// Why a local snapshot cannot be used, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `pgagent list snapshots`: pgagent's snapshots on this machine and the records in the
/// store, oldest first.
///
/// Errors: the store cannot be listed; `zfs` fails while `zfs.datasets` is set.
pub async fn list(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let store = crate::store::open(cfg).await?;
    let cipher = crate::store::read_cipher(store.as_ref(), cfg).await?;
    let mut rows: std::collections::BTreeMap<String, SnapshotListing> = Default::default();
    for r in store_records(store.as_ref(), cipher.as_ref()).await? {
        rows.insert(
            r.id.clone(),
            SnapshotListing {
                id: r.id.clone(),
                local: false,
                in_store: true,
                record: Some(r),
                problem: None,
            },
        );
    }
    if !cfg.raw.zfs.datasets.is_empty() {
        let local = crate::zfs::snapshots::local_snapshots(&zfs_of(cfg), &cfg.raw.zfs.datasets)?;
        for s in local {
            let row = rows.entry(s.id.clone()).or_insert_with(|| SnapshotListing {
                id: s.id.clone(),
                local: true,
                in_store: false,
                record: None,
                problem: None,
            });
            row.local = true;
            match s.record {
                Ok(r) => row.record = Some(r),
                Err(e) => row.problem = Some(e),
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows.values().collect::<Vec<_>>())?
        );
        return Ok(());
    }
    if rows.is_empty() {
        println!("no snapshots (zfs.datasets: {:?})", cfg.raw.zfs.datasets);
    }
    for row in rows.values() {
        let place = match (row.local, row.in_store) {
            (true, true) => "local+store",
            (true, false) => "local",
            _ => "store only",
        };
        match (&row.record, &row.problem) {
            (Some(r), None) => println!(
                "{}  {place:<11}  timeline {}  start {}  stop {}  finished {}  {}",
                row.id,
                r.timeline,
                r.start_lsn,
                r.stop_lsn,
                r.finished_at,
                r.snapshots.join(" ")
            ),
            (_, Some(p)) => println!("{}  {place:<11}  unusable: {p}", row.id),
            (None, None) => println!("{}  {place:<11}", row.id),
        }
    }
    Ok(())
}
