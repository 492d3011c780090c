//! `pgagent backup [--wait] [--fast]` and `pgagent list backups`.

use pgagent_storage::manifest::{BackupKind, BackupManifest, BackupStatus};
use serde::Serialize;

use crate::backup::take::{take_backup, BackupRequest};
use crate::config::Config;
use crate::store::catalog;

/// Takes a base backup now, into every configured store (the server is read once).
/// Without `wait`, gives the WAL up to the stop LSN `backup.wal_timeout` to reach each
/// store; with it, waits as long as it takes. Prints one line per store.
///
/// Errors: see [`take_backup`]; a backup that is not complete in every required store (in
/// every store, when none is required) is an error too (exit 1), each store's outcome
/// printed first. An async store that did not get it is a warning: the next backup goes
/// there, and `pgagent prune` completes a backup whose WAL reaches it later.
pub async fn run(cfg: &Config, wait: bool, fast: bool) -> anyhow::Result<()> {
    let req = BackupRequest {
        fast,
        wal_wait: (!wait).then_some(cfg.raw.backup.wal_timeout),
        stores: Vec::new(),
    };
    let outcome = take_backup(cfg, &req).await?;
    let several = outcome.stores.len() > 1;
    for o in &outcome.stores {
        let line = match &o.result {
            Ok(m) => summary_line(m),
            Err(e) => format!("{}  failed    {e:#}", outcome.id),
        };
        if several {
            let role = if o.required { "required" } else { "async" };
            println!("store {} ({role}): {line}", o.name);
        } else {
            println!("{line}");
        }
    }
    if let Some((reason, why)) = &outcome.fallback {
        println!("full, not incremental ({}): {why}", reason.as_str());
    }
    if outcome.succeeded() {
        for o in outcome.stores.iter().filter(|o| !o.is_complete()) {
            tracing::warn!(
                "backup {}: not complete in async store {}; the next backup goes there, and                  pgagent prune completes this one there once its WAL arrives",
                outcome.id,
                o.name
            );
        }
        return Ok(());
    }
    let missing: Vec<String> = outcome
        .stores
        .iter()
        .filter(|o| !o.is_complete() && (o.required || !several))
        .map(|o| match &o.result {
            Ok(m) => format!(
                "store {}: stored but not complete: the WAL up to {} did not reach it within {}; \
                 is pgagent run streaming this server into it?",
                o.name,
                m.stop_lsn.as_deref().unwrap_or("?"),
                humantime::format_duration(cfg.raw.backup.wal_timeout)
            ),
            Err(e) => format!("store {}: {e:#}", o.name),
        })
        .collect();
    let complete: Vec<&str> = outcome
        .stores
        .iter()
        .filter(|o| o.is_complete())
        .map(|o| o.name.as_str())
        .collect();
    let held = if complete.is_empty() {
        String::new()
    } else {
        format!(" (complete in {})", complete.join(", "))
    };
    anyhow::bail!(
        "backup {} is not complete in every required store{held}: {}",
        outcome.id,
        missing.join("; ")
    )
}

/// One backup as `pgagent list backups --json` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    /// Backup id.
    pub id: String,
    /// `running` or `complete`.
    pub status: BackupStatus,
    /// Start LSN and timeline.
    pub start_lsn: String,
    /// Timeline at the start.
    pub timeline: u32,
    /// Stop LSN: the earliest point a recovery from this backup can stop at.
    pub stop_lsn: Option<String>,
    /// When the backup started and when its files were stored (RFC 3339).
    pub started_at: String,
    /// See `started_at`.
    pub finished_at: Option<String>,
    /// Bytes of the files backed up.
    pub size_bytes: u64,
    /// Stored bytes this backup added (new chunks only).
    pub stored_bytes: u64,
    /// Share of chunks that were already in the store (0..1).
    pub dedup_ratio: f64,
    /// Archive bytes the server sent for this backup (0 for backups whose manifest does not
    /// say): an incremental backup's are what it spared the server.
    pub server_bytes: u64,
    /// `full` or `incremental`.
    pub kind: BackupKind,
    /// Incremental backups: the backup it was taken against.
    pub parent: Option<String>,
    /// Backups between this one and its full backup, this one included (0: a full backup).
    pub depth: u32,
    /// A recovery from this backup can stop at any time from this one (its files stored,
    /// RFC 3339)…
    pub reachable_from: Option<String>,
    /// …to this one: when the newest WAL in the store was written there, and never before
    /// the backup's own end (RFC 3339).
    pub reachable_to: Option<String>,
}

impl From<&BackupManifest> for BackupSummary {
    fn from(m: &BackupManifest) -> Self {
        let s = &m.stats;
        BackupSummary {
            id: m.id.clone(),
            status: m.status,
            start_lsn: m.start_lsn.clone(),
            timeline: m.start_timeline,
            stop_lsn: m.stop_lsn.clone(),
            started_at: m.started_at.clone(),
            finished_at: m.finished_at.clone(),
            size_bytes: s.raw_bytes,
            stored_bytes: s.new_stored_bytes,
            dedup_ratio: if s.chunks == 0 {
                0.0
            } else {
                1.0 - s.new_chunks as f64 / s.chunks as f64
            },
            server_bytes: s.server_bytes,
            kind: m.kind,
            parent: m.parent.clone(),
            depth: m.depth,
            reachable_from: None,
            reachable_to: None,
        }
    }
}

fn summary_line(m: &BackupManifest) -> String {
    summary_text(m, &BackupSummary::from(m))
}

fn summary_text(m: &BackupManifest, s: &BackupSummary) -> String {
    let reach = match (&s.reachable_from, &s.reachable_to) {
        (Some(from), Some(to)) => format!("  reaches {from} .. {to}"),
        _ => String::new(),
    };
    let server = match s.server_bytes {
        0 => String::new(),
        n => format!("; {} from the server", bytesize::ByteSize(n)),
    };
    let kind = match (s.kind, &s.parent) {
        (BackupKind::Incremental, Some(parent)) => {
            format!("incremental on {parent}, depth {}", s.depth)
        }
        (kind, _) => kind.as_str().to_string(),
    };
    format!(
        "{}  {:<8}  {} .. {}  timeline {}  {} files, {} ({} stored new, {:.0}% deduplicated{server})  {kind}{reach}",
        s.id,
        format!("{:?}", s.status).to_lowercase(),
        s.start_lsn,
        s.stop_lsn.as_deref().unwrap_or("?"),
        s.timeline,
        m.stats.files,
        bytesize::ByteSize(s.size_bytes),
        bytesize::ByteSize(s.stored_bytes),
        s.dedup_ratio * 100.0
    )
}

/// `pgagent list backups`: every backup, oldest first, with the time range a recovery from
/// it can reach: from the end of the backup to the newest WAL in the store.
///
/// Errors: the store cannot be listed or a manifest is damaged.
pub async fn list(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let store = crate::store::open(cfg).await?;
    let cipher = crate::store::read_cipher(store.as_ref(), cfg).await?;
    let mut manifests = Vec::new();
    for id in catalog::backup_ids(store.as_ref()).await? {
        if let Some(m) = catalog::get_manifest(store.as_ref(), cipher.as_ref(), &id).await? {
            manifests.push(m);
        }
    }
    // The newest WAL object's upload time bounds how far any backup reaches.
    let newest_wal = store
        .list(pgagent_storage::layout::WAL_PREFIX)
        .await?
        .into_iter()
        .filter_map(|o| o.last_modified)
        .max();
    let summaries: Vec<BackupSummary> = manifests
        .iter()
        .map(|m| {
            let mut s = BackupSummary::from(m);
            if let (BackupStatus::Complete, Some(end)) = (m.status, &m.finished_at) {
                s.reachable_from = Some(end.clone());
                s.reachable_to = reachable_to(end, newest_wal);
            }
            s
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
        return Ok(());
    }
    if manifests.is_empty() {
        println!("no base backups in {}", store.describe());
    }
    for (m, s) in manifests.iter().zip(&summaries) {
        println!("{}", summary_text(m, s));
    }
    Ok(())
}

/// How far a recovery from a complete backup that ended at `end` (RFC 3339) reaches: when
/// the newest WAL in the store was written there (`newest_wal`, the store's clock, written
/// to the second), and never before `end` itself. A backup is complete only once its WAL to
/// the stop point is in the store, so it reaches its own end; the newest WAL object's time
/// reads earlier when no WAL landed after the manifest (the WAL to the stop point lands
/// first, the manifest after it). `None` when the store lists no WAL time.
fn reachable_to(end: &str, newest_wal: Option<std::time::SystemTime>) -> Option<String> {
    let newest = humantime::format_rfc3339_seconds(newest_wal?).to_string();
    let before_end = match (
        crate::times::unix_seconds(&newest),
        crate::times::unix_seconds(end),
    ) {
        (Some(n), Some(e)) => n < e,
        _ => false,
    };
    Some(if before_end { end.to_string() } else { newest })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chain::tests::{full, incremental};

    #[test]
    fn a_backup_reaches_at_least_its_own_end() {
        use std::time::{Duration, UNIX_EPOCH};
        let end = "2026-12-07T04:40:05.189383Z";
        let at = |ms: u64| Some(UNIX_EPOCH + Duration::from_millis(ms));
        // The WAL to the stop point landed a second before the manifest, none since.
        let earlier = at(1_796_618_404_900);
        assert_eq!(reachable_to(end, earlier).as_deref(), Some(end));
        // In the same second, written to the second: still not before the end.
        let same_second = at(1_796_618_405_900);
        assert_eq!(reachable_to(end, same_second).as_deref(), Some(end));
        // WAL landed after it: the range runs to that WAL.
        let later = at(1_796_618_407_250);
        assert_eq!(
            reachable_to(end, later).as_deref(),
            Some("2026-12-07T04:40:07Z")
        );
        assert_eq!(reachable_to(end, None), None);
    }

    #[test]
    fn a_line_names_the_kind_the_parent_and_what_the_server_sent() {
        let mut f = full("20261101T030000Z", "0/1000028");
        f.stats.files = 3;
        f.stats.raw_bytes = 3 << 20;
        let line = summary_line(&f);
        assert!(
            line.starts_with(
                "20261101T030000Z  complete  0/1000028 .. 0/1000128  timeline 1  3 files, "
            ),
            "{line}"
        );
        assert!(line.ends_with("0% deduplicated)  full"), "{line}");
        let mut i = incremental("20261102T030000Z", "0/2000028", &f);
        i.stats.server_bytes = 5 << 20;
        let line = summary_line(&i);
        assert!(
            line.contains(
                "deduplicated; 5.0 MiB from the server)  incremental on 20261101T030000Z, depth 1"
            ),
            "{line}"
        );
        let json = serde_json::to_value(BackupSummary::from(&i)).unwrap();
        assert_eq!(json["kind"], "incremental");
        assert_eq!(json["parent"], "20261101T030000Z");
        assert_eq!(json["depth"], 1);
        assert_eq!(json["server_bytes"], 5 << 20);
        for field in [
            "size_bytes",
            "stored_bytes",
            "dedup_ratio",
            "reachable_from",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        let json = serde_json::to_value(BackupSummary::from(&f)).unwrap();
        assert_eq!(
            (json["kind"].as_str(), json["parent"].is_null()),
            (Some("full"), true)
        );
    }
}
