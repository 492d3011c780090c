//! Whether the next base backup is incremental, and against which backup.
//!
//! PostgreSQL 17 sends only the blocks changed since a previous backup when that backup's
//! `backup_manifest` is uploaded first (`UPLOAD_MANIFEST`, then `BASE_BACKUP ( INCREMENTAL
//! )`; PostgreSQL docs, "Making an Incremental Backup"). The server finds the changed blocks
//! in its WAL summaries (`summarize_wal`), which it keeps for `wal_summary_keep_time`. The
//! choice here is pure ([`choose`]): the facts about the server ([`ServerFacts`]) and the
//! newest complete backup every target store holds go in, a parent or the reason for a full
//! backup ([`FallbackReason`]) comes out. The caller reads the facts and sends the commands.
//!
//! Only the newest complete backup is considered: a chain never branches, so each backup
//! has at most one child and a restore walks one line down to its full backup.

use std::time::{Duration, SystemTime};

use pgagent_protocol::{Lsn, TimelineHistory, TimelineId};
use pgagent_storage::manifest::{BackupManifest, BackupStatus};

use crate::config::IncrementalMode;
pub use crate::metrics::FallbackReason;

/// What the server says about itself, as far as an incremental backup cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// `server_version_num`, e.g. 170010.
    pub version_num: u32,
    /// `SHOW summarize_wal` is `on` (`None` before 17, which has no such setting).
    pub summarize_wal: bool,
    /// `SHOW wal_summary_keep_time`; `None` when summaries are never removed (0).
    pub summary_keep: Option<Duration>,
    /// `SHOW data_checksums`.
    pub data_checksums: bool,
    /// `SHOW block_size`, bytes.
    pub block_size: u32,
    /// `SHOW segment_size` / `block_size`: blocks per relation segment file.
    pub segment_blocks: u32,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// That timeline's history (empty on timeline 1).
    pub history: TimelineHistory,
}

/// The decision for the next backup.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Incremental against this (complete) backup.
    Incremental(Box<BackupManifest>),
    /// Full: asked for (`backup.incremental = "off"`), or for the reason given, with a
    /// sentence that says what exactly.
    Full(Option<(FallbackReason, String)>),
}

/// First minor releases without the truncation-length bug (see
/// [`FallbackReason::KnownBug`]), by major.
const FIXED_MINORS: [(u32, u32); 2] = [(17, 170_008), (18, 180_002)];

/// Decides the next backup from the server's facts, the newest complete backup all
/// target stores hold (`newest`, if any), `backup.incremental`, `backup.max_chain` and the
/// time now. Pure.
pub fn choose(
    mode: IncrementalMode,
    max_chain: u32,
    server: &ServerFacts,
    newest: Option<&BackupManifest>,
    now: SystemTime,
) -> Choice {
    let full = |reason, why: String| Choice::Full(Some((reason, why)));
    if mode == IncrementalMode::Off {
        return Choice::Full(None);
    }
    if server.version_num < 170_000 {
        return full(
            FallbackReason::ServerTooOld,
            format!(
                "the server is PostgreSQL {}; incremental backups need 17 or later",
                server.version_num / 10_000
            ),
        );
    }
    let major = server.version_num / 10_000;
    if let Some((_, fixed)) = FIXED_MINORS.iter().find(|(m, _)| *m == major) {
        if server.version_num < *fixed {
            return full(
                FallbackReason::KnownBug,
                format!(
                    "server_version_num {} has the incremental backup bug fixed in {}.{} \
                     (a large table truncated by VACUUM makes the chain unrestorable); \
                     update PostgreSQL",
                    server.version_num,
                    fixed / 10_000,
                    fixed % 100
                ),
            );
        }
    }
    if !server.summarize_wal {
        return full(
            FallbackReason::SummarizeWalOff,
            "summarize_wal is off: set summarize_wal = on (no restart needed) for incremental backups"
                .into(),
        );
    }
    let Some(parent) = newest else {
        return full(FallbackReason::NoParent, "no complete backup yet".into());
    };
    if let Err(why) = qualifies(server, parent, now) {
        return full(
            FallbackReason::NoParent,
            format!("the newest complete backup {}: {why}", parent.id),
        );
    }
    if parent.depth >= max_chain {
        return full(
            FallbackReason::ChainCap,
            format!(
                "backup {} ends a chain of {} incremental backups (backup.max_chain = {max_chain})",
                parent.id, parent.depth
            ),
        );
    }
    Choice::Incremental(Box::new(parent.clone()))
}

/// Whether `parent` can be uploaded to `server` as the base of an incremental backup;
/// else why not.
fn qualifies(server: &ServerFacts, parent: &BackupManifest, now: SystemTime) -> Result<(), String> {
    if parent.status != BackupStatus::Complete {
        return Err("not complete".into());
    }
    if parent.pg_version_num / 10_000 != server.version_num / 10_000 {
        return Err(format!(
            "taken from PostgreSQL {}, the server is {}",
            parent.pg_version_num / 10_000,
            server.version_num / 10_000
        ));
    }
    if parent.pg_manifest.is_none() {
        return Err("holds no backup_manifest to upload".into());
    }
    let (Some(block_size), Some(segment_blocks), Some(checksums)) = (
        parent.block_size,
        parent.segment_blocks,
        parent.data_checksums,
    ) else {
        return Err("its manifest does not record the block size, segment size and checksum state (taken by an older pgagent)".into());
    };
    if (block_size, segment_blocks) != (server.block_size, server.segment_blocks) {
        return Err(format!(
            "block size {block_size} and segment of {segment_blocks} blocks, the server has {} and {}",
            server.block_size, server.segment_blocks
        ));
    }
    if checksums != server.data_checksums {
        return Err(format!(
            "data checksums were {}, now {}",
            on_off(checksums),
            on_off(server.data_checksums)
        ));
    }
    let stop = parent
        .stop()
        .map_err(|e| e.to_string())?
        .ok_or("no stop position")?;
    in_history(server, stop)?;
    if let Some(keep) = server.summary_keep {
        let margin = (keep / 10).max(Duration::from_secs(3600));
        let started = humantime::parse_rfc3339_weak(&parent.started_at)
            .map_err(|e| format!("started_at {:?}: {e}", parent.started_at))?;
        let age = now.duration_since(started).unwrap_or_default();
        if age + margin > keep {
            return Err(format!(
                "started {} ago; the server keeps WAL summaries for {} (wal_summary_keep_time), \
                 less a margin of {}",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(keep),
                humantime::format_duration(margin)
            ));
        }
    }
    Ok(())
}

/// Whether the parent's stop position lies on the server's line of history: its timeline
/// is the server's or an ancestor, and it stopped before that ancestor's switch point.
fn in_history(server: &ServerFacts, (stop, tli): (Lsn, TimelineId)) -> Result<(), String> {
    if tli == server.timeline {
        return Ok(());
    }
    match server.history.switch_point_of(tli) {
        Some(switch) if stop <= switch => Ok(()),
        Some(switch) => Err(format!(
            "stopped at {stop} on timeline {tli}, past where the server's history leaves it ({switch})"
        )),
        None => Err(format!(
            "taken on timeline {tli}, not in the history of the server's timeline {}",
            server.timeline
        )),
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// `wal_summary_keep_time` as `SHOW` prints it (`10d`, `90min`, `2h`, `0`): `None` for 0
/// (summaries are never removed).
///
/// Errors: a value that does not parse.
pub fn parse_keep_time(shown: &str) -> Result<Option<Duration>, String> {
    let s = shown.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("wal_summary_keep_time {shown:?}"))?;
    let unit = match s[digits..].trim() {
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "" | "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86_400),
        _ => return Err(format!("wal_summary_keep_time {shown:?}")),
    };
    Ok((n != 0).then(|| unit.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))))
}

#[cfg(test)]
#[path = "parent_tests.rs"]
mod tests;
