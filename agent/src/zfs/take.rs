//! Taking a consistent ZFS snapshot (`pgagent snapshot`, `zfs.snapshot_schedule`) of the cluster's datasets (DESIGN.md, "ZFS").
//!
//! `pg_backup_start` in a session kept open (non-exclusive), `zfs snapshot -r` of each
//! configured dataset, `pg_backup_stop` (PostgreSQL docs, "Making a Base Backup Using the
//! Low Level API", 26.3.3). Between start and stop every file may be caught mid-write:
//! the backup_label returned by `pg_backup_stop` makes recovery replay from the start
//! checkpoint over them, so the datasets need not be snapshotted at one instant. The label,
//! the LSNs and the data directory's place go onto the snapshots (ZFS user property) and
//! into the store (`snapshots/<id>.json`); then retention runs.

use std::time::SystemTime;

use anyhow::Context;
use pgagent_protocol::SqlSession;
use pgagent_storage::layout::snapshot_key;
use pgagent_storage::snapshot::{SnapshotRecord, SNAPSHOT_FORMAT_VERSION};

use super::snapshots::{apply_retention, snapshot_name};
use super::{Zfs, ID_PROPERTY, RECORD_PROPERTY};
use crate::config::{Config, ConfigError};
use crate::server;
use crate::store::catalog::new_id;
use crate::store::snapshots::put_record;

/// The ZFS command of `cfg`.
pub fn zfs_of(cfg: &Config) -> Zfs {
    Zfs::new(&cfg.raw.zfs.command)
}

/// Takes one snapshot: returns its record once it is on the snapshots and in the store.
///
/// Errors: `zfs.datasets` empty ([`ConfigError`]); connection or permission errors (the
/// role needs `pg_backup_start`/`pg_backup_stop` and `pg_read_all_settings`); `zfs`
/// failures (snapshots made so far are destroyed, backup mode is ended); the store
/// belongs to another cluster ([`crate::exit::Refused`]). The record goes to every
/// configured store; when it cannot be written to a required one, the snapshot stays
/// (usable locally) and the error says so (an async store that misses it is a warning).
pub async fn take_snapshot(cfg: &Config) -> anyhow::Result<SnapshotRecord> {
    let datasets = cfg.raw.zfs.datasets.clone();
    if datasets.is_empty() {
        return Err(ConfigError(
            "zfs.datasets is empty: name the dataset holding PGDATA (and the WAL dataset if separate)".into(),
        )
        .into());
    }
    let conn = server::conn_config(cfg, "pgagent snapshot")?;
    let (client, server) = server::connect(&conn).await?;
    let _ = client.close().await;
    let stores = crate::store::write::claim_every(cfg, &cfg.stores, &server).await?;

    let zfs = zfs_of(cfg);
    let mountpoints = datasets
        .iter()
        .map(|d| {
            let props = zfs.get(d, &["mountpoint"])?;
            Ok(props
                .get("mountpoint")
                .map(|v| v.0.clone())
                .unwrap_or_default())
        })
        .collect::<Result<Vec<_>, crate::zfs::ZfsError>>()?;

    let sql_err = |e: pgagent_protocol::Error| anyhow::anyhow!(server::explain(&conn, &e));
    let mut sql = SqlSession::connect(&conn).await.map_err(sql_err)?;
    let pgdata = sql.query_one("SHOW data_directory").await.map_err(|e| {
        anyhow::anyhow!(
            "{}; fix: GRANT pg_read_all_settings TO {} (pgagent reads data_directory)",
            server::explain(&conn, &e),
            conn.user
        )
    })?;
    let started = SystemTime::now();
    let id = new_id(started);
    let label = format!("pgagent snapshot {id}");
    let new_api = server.version_num >= 150_000;
    let start_sql = if new_api {
        format!("SELECT pg_backup_start('{label}', true)")
    } else {
        format!("SELECT pg_start_backup('{label}', true, false)")
    };
    let start_lsn = sql.query_one(&start_sql).await.map_err(|e| {
        anyhow::anyhow!(
            "{}; fix: run as a superuser or GRANT EXECUTE ON FUNCTION pg_backup_start, pg_backup_stop TO {}",
            server::explain(&conn, &e),
            conn.user
        )
    })?;
    tracing::info!(
        id,
        start_lsn,
        "backup mode started; snapshotting {}",
        datasets.join(", ")
    );

    let mut made = Vec::new();
    let mut failure = None;
    for d in &datasets {
        let name = snapshot_name(d, &id);
        match zfs.snapshot(&name, &[(ID_PROPERTY, &id)]) {
            Ok(()) => made.push(name),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let stop_sql = if new_api {
        "SELECT lsn, labelfile, spcmapfile FROM pg_backup_stop(false)"
    } else {
        "SELECT lsn, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
    };
    let stopped = sql.query(stop_sql).await;
    let finished = SystemTime::now();
    let _ = sql.close().await;
    if let Some(e) = failure {
        destroy_all(&zfs, &made);
        return Err(anyhow::Error::new(e).context(format!("snapshot {id}")));
    }
    let row = match stopped.map_err(sql_err) {
        Ok(rows) => rows.into_iter().next().unwrap_or_default(),
        Err(e) => {
            destroy_all(&zfs, &made);
            return Err(e.context(format!("snapshot {id}: pg_backup_stop")));
        }
    };
    let col = |i: usize| row.get(i).cloned().flatten();
    let (Some(stop_lsn), Some(backup_label)) = (col(0), col(1)) else {
        destroy_all(&zfs, &made);
        anyhow::bail!("snapshot {id}: pg_backup_stop returned no label");
    };
    let record = SnapshotRecord {
        format: SNAPSHOT_FORMAT_VERSION,
        id: id.clone(),
        system_identifier: server.system_id,
        pg_version: server.version_num,
        snapshots: made.clone(),
        mountpoints,
        pgdata,
        timeline: label_timeline(&backup_label).unwrap_or(server.timeline.0),
        start_lsn,
        stop_lsn,
        started_at: humantime::format_rfc3339_seconds(started).to_string(),
        finished_at: humantime::format_rfc3339_micros(finished).to_string(),
        backup_label,
        tablespace_map: col(2).filter(|m| !m.is_empty()),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
    };
    record
        .check()
        .with_context(|| {
            format!(
                "snapshot {id}: the data directory {} is not on dataset {}",
                record.pgdata, datasets[0]
            )
        })
        .inspect_err(|_| destroy_all(&zfs, &made))?;
    let json = serde_json::to_string(&record)?;
    for name in &made {
        zfs.set(name, RECORD_PROPERTY, &json)?;
    }
    let mut missing = Vec::new();
    for (spec, claimed) in stores {
        let put = match claimed {
            Ok(bucket) => put_record(bucket.store.as_ref(), bucket.cipher(), &record).await,
            Err(e) => Err(e),
        };
        match put {
            Ok(()) => {}
            Err(e) if spec.is_required() => missing.push(format!("store {}: {e:#}", spec.name)),
            Err(e) => tracing::warn!(
                id,
                store = spec.name,
                "the record of snapshot {id} is not in async store {}: {e:#}",
                spec.name
            ),
        }
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "snapshot {id} was taken and is usable on this machine, but its record is not in \
             every required store: {}",
            missing.join("; ")
        );
    }
    tracing::info!(id, stop_lsn = record.stop_lsn, "snapshot taken");
    Ok(record)
}

/// `START TIMELINE: n` of a backup_label (written since PostgreSQL 11, `do_pg_backup_stop`
/// in `src/backend/access/transam/xlog.c`).
fn label_timeline(label: &str) -> Option<u32> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE: "))
        .and_then(|t| t.trim().parse().ok())
}

fn destroy_all(zfs: &Zfs, names: &[String]) {
    for n in names {
        if let Err(e) = zfs.destroy_snapshot(n) {
            tracing::error!("cannot destroy the unfinished snapshot {n}: {e}");
        }
    }
}

/// Applies `zfs.keep_*` to pgagent's snapshots and deletes the records of the destroyed
/// ones from every store (best effort: a store that cannot be reached, or credentials
/// without delete rights, leave them).
///
/// Errors: `zfs` failures.
pub async fn retention(cfg: &Config) -> anyhow::Result<Vec<String>> {
    let z = &cfg.raw.zfs;
    let policy = super::retention::Policy {
        hourly: z.keep_hourly,
        daily: z.keep_daily,
        weekly: z.keep_weekly,
    };
    let destroyed = apply_retention(&zfs_of(cfg), &z.datasets, policy)?;
    if destroyed.is_empty() {
        return Ok(destroyed);
    }
    for spec in &cfg.stores {
        let store = match crate::store::open(&cfg.with_store(spec)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!("snapshot records stay in store {}: {e}", spec.name);
                continue;
            }
        };
        for id in &destroyed {
            if let Err(e) = store.delete(&snapshot_key(id)).await {
                tracing::info!("snapshot record {id} stays in store {}: {e}", spec.name);
            }
        }
    }
    Ok(destroyed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_from_label() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: primary\nSTART TIME: 2026-11-21 10:00:00 UTC\n\
                     LABEL: pgagent snapshot x\nSTART TIMELINE: 3\n";
        assert_eq!(label_timeline(label), Some(3));
        assert_eq!(label_timeline("LABEL: x\n"), None);
    }
}
