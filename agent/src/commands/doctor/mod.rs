//! `pgagent doctor`: preflight checks, each printed as `ok`, `warn` or `FAIL` with the fix.
//!
//! Configuration (loaded before this runs), the PostgreSQL connection and REPLICATION
//! right, `wal_level`, the slot, the store's cluster, bucket rights (put, get, list;
//! delete, which only `pgagent prune` needs), the clock against the bucket's, the staging
//! directory and dataset, the ZFS datasets, snapshot rights, and the data directory's mount
//! layout. Exit 1 when any check fails.
//!
//! For each store, [`protection`] then says what keeps its history from this host's
//! credentials: the bucket's versioning and Object Lock, what the credentials can destroy,
//! and which of the cases (per-object lock, versioned, no versioning, a local directory) the
//! store is.

pub mod protection;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pgagent_protocol::{ConnConfig, SqlSession};
use pgagent_storage::cluster::read_cluster;
use pgagent_storage::ObjectStore;

use crate::config::Config;
use crate::server;
use crate::zfs::staging::{findings, staging_place, StagingPlace};
use crate::zfs::Zfs;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but should be fixed.
    Warn,
    /// Will not work.
    Fail,
}

/// The checks made so far.
#[derive(Debug, Default)]
pub struct Report {
    /// (level, subject, message) in order.
    pub lines: Vec<(Level, String, String)>,
}

impl Report {
    fn add(&mut self, level: Level, subject: &str, msg: impl Into<String>) {
        let msg = msg.into();
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("{tag}  {subject}: {msg}");
        self.lines.push((level, subject.to_string(), msg));
    }

    fn count(&self, level: Level) -> usize {
        self.lines.iter().filter(|l| l.0 == level).count()
    }
}

/// How far apart two clocks may be: S3 request signatures (SigV4) fail past 15 minutes;
/// recovery targets in local time need far less.
pub fn clock_skew_level(skew: Duration) -> Level {
    if skew > Duration::from_secs(300) {
        Level::Fail
    } else if skew > Duration::from_secs(30) {
        Level::Warn
    } else {
        Level::Ok
    }
}

/// `pgagent doctor`.
///
/// Errors: one naming the number of failed checks.
pub async fn run(cfg: &Config, pgdata: Option<&Path>) -> anyhow::Result<()> {
    let mut r = Report::default();
    r.add(Level::Ok, "config", "loaded and valid");
    let server_pgdata = postgres_checks(cfg, &mut r).await;
    if cfg.stores.len() > 1 {
        // Each store on its own: a store lost or denied is named.
        for spec in &cfg.stores {
            println!("store {}:", spec.name);
            store_checks(&cfg.for_store(spec), &mut r).await;
        }
    } else {
        store_checks(cfg, &mut r).await;
    }
    staging_checks(cfg, &mut r);
    let pgdata = pgdata.map(Path::to_path_buf).or(server_pgdata);
    zfs_checks(cfg, pgdata.as_deref(), &mut r);
    let (fail, warn) = (r.count(Level::Fail), r.count(Level::Warn));
    println!(
        "doctor: {} checks, {fail} failed, {warn} warnings",
        r.lines.len()
    );
    if fail > 0 {
        anyhow::bail!("{fail} checks failed");
    }
    Ok(())
}

/// Connection, wal_level, slot and (with snapshots configured) backup rights; returns the
/// server's data directory when the role may read it.
async fn postgres_checks(cfg: &Config, r: &mut Report) -> Option<PathBuf> {
    let conn = match ConnConfig::parse(&cfg.raw.postgres.conninfo) {
        Ok(c) => c,
        Err(e) => {
            r.add(Level::Fail, "postgres", format!("postgres.conninfo: {e}"));
            return None;
        }
    };
    let (mut client, server) = match server::connect(&conn).await {
        Ok(x) => x,
        Err(e) => {
            r.add(Level::Fail, "postgres", format!("{e:#}"));
            return None;
        }
    };
    r.add(
        Level::Ok,
        "postgres",
        format!(
            "replication connection to {} (server_version_num {}, system {}, timeline {})",
            conn.redacted(),
            server.version_num,
            server.system_id,
            server.timeline
        ),
    );
    match client.show("wal_level").await {
        Ok(l) if l == "replica" || l == "logical" => r.add(Level::Ok, "wal_level", l),
        Ok(l) => r.add(
            Level::Fail,
            "wal_level",
            format!("{l}; fix: wal_level = replica, then restart PostgreSQL"),
        ),
        Err(e) => r.add(Level::Warn, "wal_level", format!("cannot read: {e}")),
    }
    let slot = &cfg.raw.postgres.slot;
    if server.version_num >= 150_000 {
        match client.read_replication_slot(slot).await {
            Ok(Some(p)) => r.add(
                Level::Ok,
                "slot",
                format!(
                    "{slot} exists (restart_lsn {})",
                    p.restart_lsn.map_or("none".into(), |l| l.to_string())
                ),
            ),
            Ok(None) => r.add(
                Level::Warn,
                "slot",
                format!("{slot} does not exist yet; pgagent run creates it"),
            ),
            Err(e) => r.add(Level::Fail, "slot", format!("{slot}: {e}")),
        }
    } else {
        r.add(
            Level::Ok,
            "slot",
            "not checked before PostgreSQL 15 (no READ_REPLICATION_SLOT)",
        );
    }
    let _ = client.close().await;
    let mut sql = match SqlSession::connect(&conn).await {
        Ok(s) => s,
        Err(e) => {
            let level = if cfg.raw.zfs.datasets.is_empty() {
                Level::Warn
            } else {
                Level::Fail
            };
            r.add(
                level,
                "sql session",
                format!(
                    "{}; snapshots need one (pg_backup_start)",
                    server::explain(&conn, &e)
                ),
            );
            return None;
        }
    };
    if !cfg.raw.zfs.datasets.is_empty() {
        let function = if server.version_num >= 150_000 {
            "pg_backup_start(text, boolean)"
        } else {
            "pg_start_backup(text, boolean, boolean)"
        };
        match sql.query_one(&format!("SELECT has_function_privilege('{function}', 'execute')")).await.as_deref() {
            Ok("t") => r.add(Level::Ok, "snapshot rights", format!("{} may run {function}", conn.user)),
            Ok(_) => r.add(Level::Fail, "snapshot rights", format!("{} may not run {function}; fix: GRANT EXECUTE ON FUNCTION pg_backup_start, pg_backup_stop TO {}", conn.user, conn.user)),
            Err(e) => r.add(Level::Fail, "snapshot rights", e.to_string()),
        }
    }
    let pgdata = match sql.query_one("SHOW data_directory").await {
        Ok(d) => Some(PathBuf::from(d)),
        Err(e) => {
            r.add(
                Level::Warn,
                "data directory",
                format!(
                    "cannot read data_directory ({e}); pass --pgdata or GRANT pg_read_all_settings"
                ),
            );
            None
        }
    };
    let _ = sql.close().await;
    pgdata
}

/// The store's cluster, bucket rights and the clock against the bucket's.
async fn store_checks(cfg: &Config, r: &mut Report) {
    let store = match crate::store::open(cfg).await {
        Ok(s) => s,
        Err(e) => {
            r.add(Level::Fail, "store", format!("{e}"));
            return;
        }
    };
    let cluster = read_cluster(store.as_ref()).await;
    let empty = matches!(cluster, Ok(None));
    match cluster {
        Ok(Some(c)) => r.add(
            Level::Ok,
            "store",
            format!("{} holds cluster {}", store.describe(), c.system_identifier),
        ),
        Ok(None) => r.add(
            Level::Ok,
            "store",
            format!("{} is empty; pgagent run claims it", store.describe()),
        ),
        Err(e) => r.add(Level::Fail, "store", format!("{}: {e}", store.describe())),
    }
    match crate::store::read_cipher(store.as_ref(), cfg).await {
        Ok(Some(_)) => r.add(
            Level::Ok,
            "encryption",
            "the store is encrypted and the configured passphrase opens its key",
        ),
        Ok(None) => r.add(Level::Ok, "encryption", "none (no passphrase configured)"),
        Err(e) if empty && is_without_keys(&e) => r.add(
            Level::Ok,
            "encryption",
            "the store is empty; pgagent run makes its key from the configured passphrase",
        ),
        Err(e) => r.add(Level::Fail, "encryption", format!("{e:#}")),
    }
    bucket_rights(store.as_ref(), r).await;
    protection::check(cfg, store.as_ref(), r).await;
}

/// Whether a reader's key error says the store has no keys (in an empty store: not yet).
fn is_without_keys(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<pgagent_storage::crypto::KeyError>(),
            Some(pgagent_storage::crypto::KeyError::NoKeys)
        )
    })
}

async fn bucket_rights(store: &dyn ObjectStore, r: &mut Report) {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let key = format!("doctor/probe-{}-{nanos}", std::process::id());
    let body = Bytes::from(format!("pgagent doctor probe {nanos}"));
    let before = SystemTime::now();
    if let Err(e) = store.put(&key, body.clone()).await {
        // A refusal for another reason (Object Lock headers, a missing checksum) is not a
        // missing right: the protection checks below say what the bucket wants.
        let hint = if e.is_permission() {
            "; the credentials need PutObject"
        } else {
            ""
        };
        r.add(Level::Fail, "bucket put", format!("{e}{hint}"));
        return;
    }
    let after = SystemTime::now();
    r.add(Level::Ok, "bucket put", key.clone());
    match store.get(&key).await {
        Ok(b) if b == body => r.add(Level::Ok, "bucket get", "read back what was written"),
        Ok(_) => r.add(Level::Fail, "bucket get", "read back different bytes"),
        Err(e) => r.add(
            Level::Fail,
            "bucket get",
            format!("{e}; the credentials need GetObject"),
        ),
    }
    match store.list("doctor/").await {
        Ok(l) => match l.iter().find(|m| m.key == key) {
            Some(m) => {
                r.add(Level::Ok, "bucket list", "lists what was written");
                if let Some(t) = m.last_modified {
                    // The store stamps the object with its clock, in whole seconds.
                    let mid = before + after.duration_since(before).unwrap_or_default() / 2;
                    let skew = t.duration_since(mid).unwrap_or_else(|e| e.duration());
                    let skew = skew.saturating_sub(Duration::from_secs(1));
                    let level = clock_skew_level(skew);
                    r.add(
                        level,
                        "clock",
                        format!(
                            "{} s from the store's clock{}",
                            skew.as_secs(),
                            if level == Level::Ok {
                                ""
                            } else {
                                "; fix: run NTP (chrony, systemd-timesyncd)"
                            }
                        ),
                    );
                }
            }
            None => r.add(
                Level::Fail,
                "bucket list",
                "the object written is not listed",
            ),
        },
        Err(e) => r.add(
            Level::Fail,
            "bucket list",
            format!("{e}; the credentials need ListBucket"),
        ),
    }
    match store.delete(&key).await {
        Ok(()) => r.add(
            Level::Ok,
            "bucket delete",
            "allowed (pgagent prune needs it)",
        ),
        Err(e) => r.add(
            Level::Warn,
            "bucket delete",
            format!("{e}; fine unless you run pgagent prune (the probe {key} stays)"),
        ),
    }
}

fn staging_checks(cfg: &Config, r: &mut Report) {
    let dir = cfg.staging_dir();
    match crate::staging::check_staging(dir) {
        Ok(()) => r.add(
            Level::Ok,
            "staging",
            format!("{} is writable", dir.display()),
        ),
        Err(e) => r.add(Level::Fail, "staging", format!("{e:#}")),
    }
    let zfs = Zfs::new(&cfg.raw.zfs.command);
    let mounts = crate::zfs::mounts::read_mounts().unwrap_or_default();
    match staging_place(&cfg.raw.zfs.staging_dataset, dir, &mounts) {
        StagingPlace::NotZfs(fs) => r.add(
            Level::Ok,
            "staging dataset",
            format!("staging is on {fs}, not ZFS; no dataset to check"),
        ),
        StagingPlace::Dataset(ds) => match findings(&zfs, &ds) {
            Ok(f) if f.is_empty() => r.add(
                Level::Ok,
                "staging dataset",
                format!("{ds}: recordsize, atime, logbias and compression as staging wants"),
            ),
            Ok(f) => {
                for f in f {
                    r.add(
                        Level::Warn,
                        "staging dataset",
                        format!(
                            "{ds}: {}={} (want {}); fix: {}",
                            f.property, f.have, f.want, f.fix
                        ),
                    );
                }
            }
            Err(e) => r.add(Level::Fail, "staging dataset", e.to_string()),
        },
    }
}

fn zfs_checks(cfg: &Config, pgdata: Option<&Path>, r: &mut Report) {
    let zfs = Zfs::new(&cfg.raw.zfs.command);
    let mut first_mount = None;
    for (i, d) in cfg.raw.zfs.datasets.iter().enumerate() {
        match zfs.get(d, &["mountpoint"]) {
            Ok(p) => {
                let mp = p.get("mountpoint").map(|v| v.0.clone()).unwrap_or_default();
                if i == 0 {
                    first_mount = Some(PathBuf::from(&mp));
                }
                r.add(Level::Ok, "zfs dataset", format!("{d} (mountpoint {mp})"));
            }
            Err(e) => r.add(Level::Fail, "zfs dataset", format!("{d}: {e}")),
        }
    }
    let Some(pgdata) = pgdata else {
        return;
    };
    if !pgdata.exists() {
        r.add(
            Level::Ok,
            "data directory",
            format!(
                "{} is not on this machine; layout not checked",
                pgdata.display()
            ),
        );
        return;
    }
    match super::preseed::layout_message(cfg, pgdata) {
        Ok(None) => r.add(
            Level::Ok,
            "data directory",
            format!(
                "{}: no layered mounts, no shared mountpoints",
                pgdata.display()
            ),
        ),
        Ok(Some(p)) => r.add(Level::Fail, "data directory", p),
        Err(e) => r.add(Level::Warn, "data directory", format!("{e:#}")),
    }
    if let Some(m) = first_mount.filter(|m| !pgdata.starts_with(m)) {
        r.add(
            Level::Fail,
            "zfs dataset",
            format!(
                "{} is not below {} (mountpoint of zfs.datasets[0]); snapshots would miss it",
                pgdata.display(),
                m.display()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_levels() {
        assert_eq!(clock_skew_level(Duration::from_secs(2)), Level::Ok);
        assert_eq!(clock_skew_level(Duration::from_secs(90)), Level::Warn);
        assert_eq!(clock_skew_level(Duration::from_secs(16 * 60)), Level::Fail);
    }

    #[test]
    fn the_report_counts_levels() {
        let mut r = Report::default();
        r.add(Level::Ok, "a", "x");
        r.add(Level::Fail, "b", "y");
        r.add(Level::Fail, "c", "z");
        assert_eq!(
            (
                r.count(Level::Ok),
                r.count(Level::Warn),
                r.count(Level::Fail)
            ),
            (1, 0, 2)
        );
    }
}
