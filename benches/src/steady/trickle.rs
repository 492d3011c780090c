//! How long a lone commit waits to be durable in the bucket: the offsite RPO of a trickle of
//! small transactions.
//!
//! Durable means the standby `flush` position the daemon reports to the server, as
//! `pg_stat_replication.flush_lsn` shows it (PostgreSQL docs, section 28.2.4), has passed the
//! commit's WAL. With `wal.confirm = "bucket"` (the default) pgagent reports as flushed only
//! WAL the bucket holds, and sends a status update as soon as an upload moves that frontier,
//! so the server's view is read here rather than anything the daemon says about itself.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use pgagent_protocol::Lsn;
use pgagent_tests::sql::SqlClient;

/// `application_name` of `pgagent run`'s replication connection.
pub const AGENT_APPLICATION_NAME: &str = "pgagent";

/// How often the server's view of the daemon's flush position is polled.
const POLL: Duration = Duration::from_millis(10);

/// The table the trickle inserts into.
pub const TRICKLE_TABLE: &str = "steady_trickle";

/// `flush_lsn` of the daemon's walsender, `None` while it is not connected.
pub fn agent_flush_lsn(sql: &mut SqlClient) -> anyhow::Result<Option<Lsn>> {
    let text = sql.query_opt(&format!(
        "SELECT flush_lsn FROM pg_stat_replication \
         WHERE application_name = '{AGENT_APPLICATION_NAME}' ORDER BY flush_lsn DESC LIMIT 1"
    ))?;
    text.map(|t| t.parse().map_err(|e| anyhow!("flush_lsn {t:?}: {e}")))
        .transpose()
}

/// Polls until the daemon's flush position reaches `lsn`; returns when it did.
///
/// Errors after `timeout`.
pub fn wait_flushed(sql: &mut SqlClient, lsn: Lsn, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let flushed = agent_flush_lsn(sql)?;
        let now = Instant::now();
        if flushed.is_some_and(|f| f >= lsn) {
            return Ok(now);
        }
        if now > deadline {
            bail!(
                "the daemon's flush position ({}) did not reach {lsn} within {timeout:?}",
                flushed.map_or_else(|| "not connected".to_owned(), |f| f.to_string())
            );
        }
        std::thread::sleep(POLL);
    }
}

/// A value of `pg_current_wal_*_lsn()` (`function` names it).
pub fn server_lsn(sql: &mut SqlClient, function: &str) -> anyhow::Result<Lsn> {
    let text = sql
        .query_opt(&format!("SELECT {function}()"))?
        .ok_or_else(|| anyhow!("{function}() returned NULL"))?;
    text.parse()
        .map_err(|e| anyhow!("{function}() = {text:?}: {e}"))
}

/// One commit of the trickle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Commit {
    /// The server's WAL flush position right after the commit returned: the commit record
    /// ends at or before it.
    pub lsn: Lsn,
    /// From the commit returning to the daemon's flush position reaching `lsn`.
    pub rpo: Duration,
}

/// Creates the trickle's table.
pub fn create_table(sql: &mut SqlClient) -> anyhow::Result<()> {
    sql.query(&format!(
        "CREATE TABLE IF NOT EXISTS {TRICKLE_TABLE} \
         (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
    ))
    .map(drop)
}

/// `count` single-row INSERTs, each its own transaction, `gap` apart; for each, the time
/// until its WAL is durable in the bucket (each waited for before the next).
///
/// The commit's end is read with `pg_current_wal_flush_lsn()` in a second statement: with
/// `synchronous_commit = on` the commit record is flushed before the INSERT returns, and a
/// WAL sender only streams flushed WAL, so nothing later than what is waited for matters.
pub fn run(
    sql: &mut SqlClient,
    count: usize,
    gap: Duration,
    timeout: Duration,
) -> anyhow::Result<Vec<Commit>> {
    let mut commits = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let due = start + gap * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sql.query(&format!("INSERT INTO {TRICKLE_TABLE} DEFAULT VALUES"))
            .context("trickle INSERT")?;
        let committed = Instant::now();
        let lsn = server_lsn(sql, "pg_current_wal_flush_lsn")?;
        let durable = wait_flushed(sql, lsn, timeout)?;
        let commit = Commit {
            lsn,
            rpo: durable - committed,
        };
        eprintln!(
            "  commit {}/{count} at {lsn}: durable in the bucket after {:.3} s",
            i + 1,
            commit.rpo.as_secs_f64()
        );
        commits.push(commit);
    }
    Ok(commits)
}

/// Median and maximum of `values` (the median of an even count is the mean of the middle
/// two); `None` when empty.
pub fn median_max(values: &[Duration]) -> Option<(Duration, Duration)> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let n = sorted.len();
    let max = *sorted.last()?;
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    };
    Some((median, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_max() {
        let ms = Duration::from_millis;
        assert_eq!(median_max(&[]), None);
        assert_eq!(median_max(&[ms(5)]), Some((ms(5), ms(5))));
        assert_eq!(
            median_max(&[ms(900), ms(100), ms(500)]),
            Some((ms(500), ms(900)))
        );
        assert_eq!(
            median_max(&[ms(400), ms(100), ms(1200), ms(600)]),
            Some((ms(500), ms(1200)))
        );
    }
}
