//! The PostgreSQL server as every command meets it: connect over the replication protocol,
//! ask who it is (`IDENTIFY_SYSTEM`, `wal_segment_size`, `server_version_num`), and turn its
//! errors into one line that names the fix. Used by `pgagent run`, `backup`, `snapshot` and
//! `doctor` alike.

use anyhow::Context;
use pgagent_protocol::{ConnConfig, Lsn, ReplicationClient, TimelineId, WalSegmentSize};

use crate::config::Config;

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

/// The connection settings of `postgres.conninfo`, with `application_name` (the name
/// `synchronous_standby_names` and `pg_stat_replication` know the connection by) unless the
/// conninfo sets one.
///
/// Errors: a conninfo that does not parse, named.
pub fn conn_config(cfg: &Config, application_name: &str) -> anyhow::Result<ConnConfig> {
    let mut conn = ConnConfig::parse(&cfg.raw.postgres.conninfo)
        .map_err(|e| anyhow::anyhow!("postgres.conninfo: {e}"))?;
    conn.application_name
        .get_or_insert_with(|| application_name.to_string());
    Ok(conn)
}

/// Connects and asks the server who it is.
pub async fn connect(conn: &ConnConfig) -> anyhow::Result<(ReplicationClient, ServerInfo)> {
    let wrap = |e: pgagent_protocol::Error| anyhow::anyhow!(explain(conn, &e));
    let mut client = ReplicationClient::connect(conn).await.map_err(wrap)?;
    let id = client.identify_system().await.map_err(wrap)?;
    let seg = client.wal_segment_size().await.map_err(wrap)?;
    let version_num = client.server_version_num().await.map_err(wrap)?;
    check_supported(version_num)
        .map_err(|e| anyhow::anyhow!("PostgreSQL ({}): {e}", conn.redacted()))?;
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

/// The PostgreSQL majors pgagent supports, each proven by the test matrix.
pub const SUPPORTED_MAJORS: std::ops::RangeInclusive<u32> = 13..=18;

/// Refuses a server outside [`SUPPORTED_MAJORS`] (`server_version_num`, e.g. 150018): an
/// older one lacks what the agent relies on (physical slots with `RESERVE_WAL`, the backup
/// manifest), and a newer one may change the protocol or file formats under it.
pub fn check_supported(version_num: u32) -> Result<(), String> {
    let major = version_num / 10000;
    if SUPPORTED_MAJORS.contains(&major) {
        Ok(())
    } else {
        Err(format!(
            "server version {major} ({version_num}) is not supported: pgagent supports PostgreSQL {} to {}",
            SUPPORTED_MAJORS.start(),
            SUPPORTED_MAJORS.end()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_outside_13_to_18_are_refused_by_name() {
        for ok in [130000, 130023, 140012, 150018, 160004, 170000, 180004] {
            assert_eq!(check_supported(ok), Ok(()), "{ok}");
        }
        for bad in [120022, 110000, 190000, 200001] {
            let e = check_supported(bad).unwrap_err();
            assert!(e.contains("pgagent supports PostgreSQL 13 to 18"), "{e}");
            assert!(e.contains(&(bad / 10000).to_string()), "{e}");
        }
    }
}
