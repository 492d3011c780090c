//! Results of the incremental backup benchmark as markdown tables.

use std::time::Duration;

use super::Measured;
use crate::backupbench::report::percent;

const MIB: f64 = (1u64 << 20) as f64;

/// The goal for an incremental backup after a 1 % change: at most this share of the full
/// backup's server bytes, percent.
pub const GOAL_PCT: f64 = 10.0;

/// One change and the backups taken after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `SHOW server_version`.
    pub server: String,
    /// What changed before the backups.
    pub after: String,
    /// The backup with `backup.incremental = auto`.
    pub auto: Measured,
    /// The backup with `backup.incremental = off`; `None` where it is the same backup (the
    /// first, full either way).
    pub off: Option<Measured>,
    /// Server bytes of the first full backup of the same cluster.
    pub full_server_bytes: u64,
}

/// One timed restore into an empty directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    /// `SHOW server_version`.
    pub server: String,
    /// What was restored.
    pub what: String,
    /// Wall time of `pgagent restore`.
    pub wall: Duration,
    /// Bytes of the regular files written.
    pub restored: u64,
}

/// One pgBackRest backup and the bytes its repository grew by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackRestRow {
    /// `SHOW server_version`.
    pub server: String,
    /// What changed before it.
    pub after: String,
    /// `--type`.
    pub kind: &'static str,
    /// Wall time of `pgbackrest backup`.
    pub wall: Duration,
    /// Repository growth.
    pub grew: u64,
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB)
}

/// Stored bytes are small after a small change: two decimals.
fn mib2(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / MIB)
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

/// `x.y %`, with `(goal met)` or `(goal missed)` against [`GOAL_PCT`] for an incremental
/// backup; a full backup's share needs no verdict.
fn share(m: &Measured, full: u64) -> String {
    let pct = percent(m.server_bytes, full);
    match m.kind {
        pgagent_storage::manifest::BackupKind::Full => format!("{pct:.1} %"),
        pgagent_storage::manifest::BackupKind::Incremental if pct <= GOAL_PCT => {
            format!("{pct:.1} % (≤ {GOAL_PCT:.0} %)")
        }
        pgagent_storage::manifest::BackupKind::Incremental => {
            format!("{pct:.1} % (> {GOAL_PCT:.0} %)")
        }
    }
}

/// Incremental against chunk deduplication only: per change, the backup with
/// `backup.incremental = auto` (kind, wall, server MiB, share of the full's server bytes,
/// stored MiB) and the one with `off` (wall, server MiB, stored MiB).
pub fn steps_table(steps: &[Step]) -> String {
    let mut out = String::from(
        "| PostgreSQL | backup after | kind | wall (s) | read from server (MiB) | % of the full's | \
         stored new (MiB) | off: wall (s) | off: read from server (MiB) | off: stored new (MiB) |\n\
         | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for s in steps {
        let a = &s.auto;
        let (ow, os, on) = match &s.off {
            Some(o) => (secs(o.wall), mib(o.server_bytes), mib2(o.stored_bytes)),
            None => ("same".to_owned(), "same".to_owned(), "same".to_owned()),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {ow} | {os} | {on} |\n",
            s.server,
            s.after,
            a.kind_label(),
            secs(a.wall),
            mib(a.server_bytes),
            share(a, s.full_server_bytes),
            mib2(a.stored_bytes),
        ));
    }
    out
}

/// The chain's backups: kind, wall, server MiB, stored MiB.
pub fn chain_table(server: &str, chain: &[Measured], full_server_bytes: u64) -> String {
    let mut out = String::from(
        "| PostgreSQL | backup | kind | wall (s) | read from server (MiB) | % of the full's | stored new (MiB) |\n\
         | --- | --- | --- | ---: | ---: | ---: | ---: |\n",
    );
    for m in chain {
        out.push_str(&format!(
            "| {server} | {} | {} | {} | {} | {} | {} |\n",
            m.id,
            m.kind_label(),
            secs(m.wall),
            mib(m.server_bytes),
            share(m, full_server_bytes),
            mib2(m.stored_bytes),
        ));
    }
    out
}

/// Restores: what, wall, restored MiB.
pub fn restore_table(rows: &[Restore]) -> String {
    let mut out = String::from(
        "| PostgreSQL | `pgagent restore` of | wall (s) | restored (MiB) |\n\
         | --- | --- | ---: | ---: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.server,
            r.what,
            secs(r.wall),
            mib(r.restored)
        ));
    }
    out
}

/// pgBackRest's backups: after what, type, wall, repository growth.
pub fn backrest_table(rows: &[BackRestRow]) -> String {
    let mut out = String::from(
        "| PostgreSQL | backup after | `pgbackrest backup --type` | wall (s) | repository grew (MiB) |\n\
         | --- | --- | --- | ---: | ---: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.server,
            r.after,
            r.kind,
            secs(r.wall),
            mib(r.grew)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgagent_storage::manifest::BackupKind;

    fn measured(kind: BackupKind, depth: u32, server: u64, stored: u64) -> Measured {
        Measured {
            id: "b".to_owned(),
            wall: Duration::from_millis(2500),
            kind,
            depth,
            server_bytes: server,
            raw_bytes: server,
            stored_bytes: stored,
            fallback: None,
        }
    }

    #[test]
    fn formats_steps() {
        let full = measured(BackupKind::Full, 0, 1000 << 20, 100 << 20);
        let t = steps_table(&[
            Step {
                server: "17.10".to_owned(),
                after: "init".to_owned(),
                auto: full.clone(),
                off: None,
                full_server_bytes: 1000 << 20,
            },
            Step {
                server: "17.10".to_owned(),
                after: "range".to_owned(),
                auto: measured(BackupKind::Incremental, 1, 50 << 20, 3 << 20),
                off: Some(full),
                full_server_bytes: 1000 << 20,
            },
            Step {
                server: "17.10".to_owned(),
                after: "scattered".to_owned(),
                auto: measured(BackupKind::Incremental, 1, 600 << 20, 30 << 20),
                off: None,
                full_server_bytes: 1000 << 20,
            },
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[2],
            "| 17.10 | init | full | 2.5 | 1000.0 | 100.0 % | 100.00 | same | same | same |"
        );
        assert_eq!(
            lines[3],
            "| 17.10 | range | incremental (depth 1) | 2.5 | 50.0 | 5.0 % (≤ 10 %) | 3.00 | 2.5 | 1000.0 | 100.00 |"
        );
        assert!(lines[4].contains("| 60.0 % (> 10 %) |"), "{}", lines[4]);
    }

    #[test]
    fn formats_restores_and_peers() {
        let t = restore_table(&[Restore {
            server: "18.4".to_owned(),
            what: "full".to_owned(),
            wall: Duration::from_secs(3),
            restored: 1 << 30,
        }]);
        assert!(t.ends_with("| 18.4 | full | 3.0 | 1024.0 |\n"), "{t}");
        let t = backrest_table(&[BackRestRow {
            server: "18.4".to_owned(),
            after: "x".to_owned(),
            kind: "incr",
            wall: Duration::from_secs(1),
            grew: 1 << 20,
        }]);
        assert!(t.ends_with("| 18.4 | x | incr | 1.0 | 1.0 |\n"), "{t}");
        let t = chain_table(
            "17.10",
            &[measured(BackupKind::Incremental, 6, 10 << 20, 1 << 20)],
            1000 << 20,
        );
        assert!(
            t.ends_with(
                "| 17.10 | b | incremental (depth 6) | 2.5 | 10.0 | 1.0 % (≤ 10 %) | 1.00 |\n"
            ),
            "{t}"
        );
    }
}
