//! The checks of a recovered drill server, each recorded in the report:
//!
//! - `end of WAL`: with the target "latest", the point reached must be within
//!   [`MAX_BEHIND_STORE`] bytes of the end of the newest WAL in the store. A
//!   segment missing in the middle makes PostgreSQL take "not found" for the end of the
//!   archive and promote early, with a database that looks fine: this is the check that
//!   catches it. The live server's position, when it answers, is reported beside it.
//! - `connect` (as which role, see [`super::role`]), `databases` (those that allow
//!   connections), `tables` (user tables per database).
//! - `amcheck`: `pg_amcheck --all --install-missing` (PostgreSQL 14 and later ship it)
//!   when `drill.amcheck` is on and the binary exists.
//! - `check_sql`: `drill.check_sql` in `drill.check_database`; its first value must be a
//!   number above 0 or `true`.

use pgagent_protocol::Lsn;

use super::live::ask_live;
use super::report::DrillReport;
use super::request::DrillRequest;
use super::server::Throwaway;
use crate::config::Config;
use crate::restore::RecoveryTarget;
use crate::store::wal::{legacy_lengths, WalIndex};

/// A recovery that ends more than this many bytes before the end of the WAL in the store
/// (to the end of the WAL) fails the drill: one record can end past the last byte
/// stored, but not a megabyte.
pub const MAX_BEHIND_STORE: u64 = 1 << 20;

/// Runs every check on `server`, recording each in `report`.
pub async fn run_all(
    cfg: &Config,
    req: &DrillRequest,
    server: &Throwaway,
    report: &mut DrillReport,
) {
    let reached: Option<Lsn> = report.reached.as_ref().and_then(|r| r.lsn.parse().ok());
    if let Some(reached) = reached {
        end_of_wal(cfg, req, reached, report).await;
        live_position(cfg, reached, report).await;
    }
    match server.sql("postgres", "SELECT 1").await {
        Ok(_) => report.pass(
            "connect",
            format!("connected over the private socket as {}", server.role()),
        ),
        Err(e) => {
            report.fail("connect", format!("{e:#}"));
            return;
        }
    }
    let databases = match server
        .sql(
            "postgres",
            "SELECT string_agg(datname, ' ' ORDER BY datname) FROM pg_database WHERE datallowconn",
        )
        .await
    {
        Ok(list) if !list.is_empty() => {
            report.pass("databases", list.clone());
            list.split(' ').map(str::to_string).collect::<Vec<_>>()
        }
        Ok(_) => {
            report.fail("databases", "no database allows connections");
            Vec::new()
        }
        Err(e) => {
            report.fail("databases", format!("{e:#}"));
            Vec::new()
        }
    };
    tables(server, &databases, report).await;
    amcheck(cfg, server, report).await;
    check_sql(cfg, server, report).await;
}

/// `end of WAL`: the point reached against the newest WAL in the store.
async fn end_of_wal(cfg: &Config, req: &DrillRequest, reached: Lsn, report: &mut DrillReport) {
    if !matches!(req.target, RecoveryTarget::Latest) {
        report.pass(
            "end of WAL",
            format!(
                "target {}: not compared with the end of the WAL",
                report.target
            ),
        );
        return;
    }
    let end = async {
        let opened = crate::store::open_cluster(cfg).await?;
        let listed = opened
            .store
            .list(pgagent_storage::layout::WAL_PREFIX)
            .await?;
        let index = WalIndex::from_listing(&listed, opened.seg);
        let (legacy, _) =
            legacy_lengths(opened.store.as_ref(), &index.legacy_to_read(), opened.seg).await?;
        anyhow::Ok(index.newest_end(&index.partial_segments(&legacy, opened.seg), opened.seg))
    };
    match end.await {
        Ok(Some((tli, end))) => {
            let gap = behind(reached, end);
            report.store_end = Some(format!("{end} (timeline {})", tli.0));
            report.behind_store_bytes = Some(gap);
            if gap <= MAX_BEHIND_STORE {
                report.pass(
                    "end of WAL",
                    format!("reached {reached}, {gap} bytes before the store's end {end}"),
                );
            } else {
                report.fail(
                    "end of WAL",
                    format!(
                        "recovery ended at {reached}, {gap} bytes before the end of the WAL in \
                         the store ({end}, timeline {}): a segment missing or unreadable in \
                         between ends recovery early (pgagent verify names it)",
                        tli.0
                    ),
                );
            }
        }
        Ok(None) => report.fail("end of WAL", "the store holds no WAL"),
        Err(e) => report.fail("end of WAL", format!("reading the store's WAL: {e:#}")),
    }
}

/// The live server's current position and how far the point reached is behind it (not a
/// check: the server may be down, which is why one restores).
async fn live_position(cfg: &Config, reached: Lsn, report: &mut DrillReport) {
    let sql = "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
               ELSE pg_current_wal_lsn() END";
    if let Some(live) = ask_live(cfg, sql).await.and_then(|t| t.parse::<Lsn>().ok()) {
        report.live_lsn = Some(live.to_string());
        report.behind_live_bytes = Some(behind(reached, live));
    }
}

/// `tables`: user tables in each database.
async fn tables(server: &Throwaway, databases: &[String], report: &mut DrillReport) {
    const SQL: &str =
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg_toast%'";
    let mut counts = Vec::new();
    for db in databases {
        match server.sql(db, SQL).await {
            Ok(n) => counts.push(format!("{db}: {n}")),
            Err(e) => {
                report.fail("tables", format!("{db}: {e:#}"));
                return;
            }
        }
    }
    if !counts.is_empty() {
        report.pass("tables", counts.join(", "));
    }
}

/// `amcheck`: `pg_amcheck --all --install-missing`.
async fn amcheck(cfg: &Config, server: &Throwaway, report: &mut DrillReport) {
    if !cfg.raw.drill.amcheck {
        report.pass("amcheck", "off (drill.amcheck = false)");
        return;
    }
    if !server.has("pg_amcheck") {
        report.pass(
            "amcheck",
            "skipped: pg_amcheck is not installed with these binaries",
        );
        return;
    }
    let out = server
        .client("pg_amcheck", &["--all", "--install-missing"])
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => report.pass("amcheck", "pg_amcheck --all: no corruption"),
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let lines: Vec<&str> = text.lines().take(10).collect();
            report.fail(
                "amcheck",
                format!(
                    "pg_amcheck --all exited {}: {}",
                    o.status,
                    lines.join(" | ")
                ),
            );
        }
        Err(e) => report.fail("amcheck", format!("run pg_amcheck: {e}")),
    }
}

/// `check_sql`, when configured.
async fn check_sql(cfg: &Config, server: &Throwaway, report: &mut DrillReport) {
    let d = &cfg.raw.drill;
    if d.check_sql.trim().is_empty() {
        return;
    }
    match server.sql(&d.check_database, &d.check_sql).await {
        Ok(out) => {
            let first = out
                .lines()
                .next()
                .unwrap_or("")
                .split('|')
                .next()
                .unwrap_or("");
            if value_passes(first) {
                report.pass("check_sql", format!("returned {first}"));
            } else if out.is_empty() {
                report.fail("check_sql", "returned no row");
            } else {
                report.fail("check_sql", format!("returned {first}: not above 0"));
            }
        }
        Err(e) => report.fail("check_sql", format!("{e:#}")),
    }
}

/// Whether a `check_sql` value passes: a number above 0, or `t`/`true`.
pub fn value_passes(value: &str) -> bool {
    let v = value.trim();
    v.eq_ignore_ascii_case("t")
        || v.eq_ignore_ascii_case("true")
        || v.parse::<f64>().is_ok_and(|n| n > 0.0)
}

/// How far `reached` is behind `end`, in bytes (0 when at or past it).
pub fn behind(reached: Lsn, end: Lsn) -> u64 {
    end.0.saturating_sub(reached.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_sql_values() {
        for ok in ["1", "42", "0.5", "t", "true", " 3 "] {
            assert!(value_passes(ok), "{ok}");
        }
        for bad in ["0", "-1", "", "f", "false", "abc", "0.0"] {
            assert!(!value_passes(bad), "{bad}");
        }
    }
}
