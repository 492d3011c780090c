//! The change the deduplication figure measures: one contiguous range of
//! `pgbench_accounts` rewritten, so the heap pages holding it (and nothing else of the
//! table) differ from the first backup.

use anyhow::Context;
use pgagent_tests::PgServer;

/// Rows of `pgbench_accounts` per pgbench scale unit (pgbench docs, "Default Built-In
/// Scripts": `naccounts` = 100 000 × scale).
pub const ACCOUNTS_PER_SCALE: u64 = 100_000;

/// `UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= <pct % of rows>`, then
/// `CHECKPOINT` so the changed pages are on disk; returns the rows updated.
pub fn update_range(pg: &PgServer, scale: u32, pct: f64) -> anyhow::Result<u64> {
    let rows = accounts_to_update(scale, pct);
    pg.psql(&format!(
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {rows}"
    ))?;
    pg.psql("CHECKPOINT")?;
    let changed: u64 = pg
        .psql("SELECT count(*) FROM pgbench_accounts WHERE abalance <> 0")?
        .parse()
        .context("count of updated rows")?;
    Ok(changed)
}

/// The number of leading `aid`s making `pct` % of the accounts at `scale`.
pub fn accounts_to_update(scale: u32, pct: f64) -> u64 {
    ((u64::from(scale) * ACCOUNTS_PER_SCALE) as f64 * pct / 100.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_percent_of_the_accounts() {
        assert_eq!(accounts_to_update(137, 1.0), 137_000);
        assert_eq!(accounts_to_update(1, 0.5), 500);
    }
}
