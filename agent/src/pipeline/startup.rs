//! Start-up of `pgagent run`: preflight checks that fail with a message naming the fix, and
//! the choice of where streaming resumes.

use std::path::Path;

use anyhow::Context;
use pgagent_protocol::{ConnConfig, Lsn, ReplicationClient, TimelineId, WalSegmentSize};
use pgagent_storage::cluster::{ensure_cluster, ClusterInfo};
use pgagent_storage::ObjectStore;

use crate::exit::Refused;
use crate::staging::StagingScan;

/// What the server told us about itself.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `IDENTIFY_SYSTEM` system identifier.
    pub system_id: u64,
    /// Current timeline.
    pub timeline: TimelineId,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// `wal_segment_size`.
    pub seg: WalSegmentSize,
    /// `server_version_num`, e.g. 150018.
    pub version_num: u32,
}

/// Turns a replication-client error into a one-line message that names the fix.
pub fn explain(conn: &ConnConfig, e: &pgagent_protocol::Error) -> String {
    let target = conn.redacted();
    let msg = e.to_string();
    // The client already explains the common SQLSTATEs (password, pg_hba, REPLICATION,
    // wal_level, missing slot); add what only the agent knows how to fix.
    let fix = match e.code() {
        Some("53300") if msg.contains("max_wal_senders") || msg.contains("wal_level") => {
            "the server accepts no replication connections: set wal_level = replica and max_wal_senders >= 2, then restart PostgreSQL".to_string()
        }
        _ if e.is_tls() => "TLS failed: check sslmode and sslrootcert".to_string(),
        _ if e.is_connection() => "cannot reach PostgreSQL: is it running and listening there (host, port, socket directory)?".to_string(),
        _ => String::new(),
    };
    if fix.is_empty() {
        format!("PostgreSQL ({target}): {msg}")
    } else {
        format!("PostgreSQL ({target}): {msg}; fix: {fix}")
    }
}

/// Connects and asks the server who it is.
pub async fn connect(conn: &ConnConfig) -> anyhow::Result<(ReplicationClient, ServerInfo)> {
    let wrap = |e: pgagent_protocol::Error| anyhow::anyhow!(explain(conn, &e));
    let mut client = ReplicationClient::connect(conn).await.map_err(wrap)?;
    let id = client.identify_system().await.map_err(wrap)?;
    let seg = client.wal_segment_size().await.map_err(wrap)?;
    let version_num = client.server_version_num().await.map_err(wrap)?;
    Ok((
        client,
        ServerInfo {
            system_id: id.system_id,
            timeline: id.timeline,
            xlogpos: id.xlogpos,
            seg,
            version_num,
        },
    ))
}

/// Checks that the staging directory exists (creating it) and takes a durable write.
pub fn check_staging(dir: &Path) -> anyhow::Result<()> {
    let fix = |what: &str, e: std::io::Error| {
        anyhow::anyhow!(
            "staging directory {}: cannot {what}: {e}; fix: create it and make it writable by this user (uid {})",
            dir.display(),
            current_uid()
        )
    };
    std::fs::create_dir_all(dir.join("wal")).map_err(|e| fix("create", e))?;
    let probe = dir.join(".pgagent-write-probe");
    std::fs::write(&probe, b"probe")
        .and_then(|()| std::fs::File::open(&probe)?.sync_all())
        .map_err(|e| fix("write", e))?;
    std::fs::remove_file(&probe).map_err(|e| fix("remove files in", e))?;
    Ok(())
}

fn current_uid() -> u32 {
    // The owner of /proc/self is the process's effective uid.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX)
}

/// Claims the store prefix for this cluster, or refuses (exit 3) when it holds another.
pub async fn claim_store(
    store: &dyn ObjectStore,
    server: &ServerInfo,
) -> anyhow::Result<ClusterInfo> {
    let info = ClusterInfo {
        format_version: 1,
        system_identifier: server.system_id.to_string(),
        pg_version_num: server.version_num,
        wal_segment_size: server.seg.bytes(),
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    match ensure_cluster(store, &info).await {
        Ok(found) => Ok(found),
        Err(e) if e.is_foreign_cluster() => Err(Refused(format!(
            "{}: {e}; fix: point store.url at an empty prefix for this cluster (two clusters never share one)",
            store.describe()
        ))
        .into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("store {}", store.describe()))),
    }
}

/// Where streaming starts and what was already confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePlan {
    /// Timeline to stream.
    pub tli: TimelineId,
    /// Start position (a segment start).
    pub start: Lsn,
    /// Position the server already holds as confirmed (reported until passed).
    pub floor: Lsn,
}

/// Chooses the start: staging first (what it holds is ours), else the slot's
/// `restart_lsn`, else the server's current position.
pub fn plan_resume(
    scan: &StagingScan,
    slot: Option<(Lsn, Option<TimelineId>)>,
    server: &ServerInfo,
) -> ResumePlan {
    let seg = server.seg;
    let seg_start = |l: Lsn| l.segment_number(seg).start_lsn(seg);
    if let Some((tli, start)) = scan.resume_point(seg) {
        let floor = slot.map(|s| s.0).filter(|l| *l <= start).unwrap_or(start);
        return ResumePlan { tli, start, floor };
    }
    if let Some((restart, tli)) = slot.filter(|s| s.0 != Lsn::INVALID) {
        return ResumePlan {
            tli: tli.unwrap_or(server.timeline),
            start: seg_start(restart),
            floor: restart,
        };
    }
    ResumePlan {
        tli: server.timeline,
        start: seg_start(server.xlogpos),
        floor: seg_start(server.xlogpos),
    }
}

/// Checks that the server can serve timeline `tli`'s history and returns its bytes.
pub async fn fetch_history(
    client: &mut ReplicationClient,
    tli: TimelineId,
) -> anyhow::Result<Vec<u8>> {
    let (_, content) = client
        .timeline_history(tli)
        .await
        .with_context(|| format!("TIMELINE_HISTORY {tli}"))?;
    Ok(content.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgagent_protocol::SegNo;

    fn server() -> ServerInfo {
        ServerInfo {
            system_id: 1,
            timeline: TimelineId(3),
            xlogpos: Lsn(0x5_123_456),
            seg: WalSegmentSize::new(16 << 20).unwrap(),
            version_num: 150000,
        }
    }

    #[test]
    fn fresh_start_uses_the_server_position() {
        let p = plan_resume(&StagingScan::default(), None, &server());
        assert_eq!(p.tli, TimelineId(3));
        assert_eq!(p.start, Lsn(0x5_000_000));
    }

    #[test]
    fn slot_wins_over_server_position() {
        let p = plan_resume(
            &StagingScan::default(),
            Some((Lsn(0x3_000_100), Some(TimelineId(2)))),
            &server(),
        );
        assert_eq!(
            (p.tli, p.start, p.floor),
            (TimelineId(2), Lsn(0x3_000_000), Lsn(0x3_000_100))
        );
    }

    #[test]
    fn staging_wins_over_slot() {
        let seg = server().seg;
        let scan = StagingScan {
            complete: vec![],
            partials: vec![(TimelineId(3), SegNo(4), "x".into())],
        };
        let p = plan_resume(
            &scan,
            Some((Lsn(0x3_000_100), Some(TimelineId(3)))),
            &server(),
        );
        assert_eq!(p.start, SegNo(4).start_lsn(seg));
        assert_eq!(p.floor, Lsn(0x3_000_100));
    }
}
