//! Results of the catch-up benchmark as a markdown table.

use std::time::Duration;

use crate::measure::{mb_per_second, Usage};

/// One measured run of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    /// Case label, e.g. `pg_receivewal` or `pgagent → file://`.
    pub case: String,
    /// Run number, from 1.
    pub run: usize,
    /// Wall time from spawning the process until the whole backlog was durable.
    pub wall: Duration,
    /// Backlog size, bytes of WAL.
    pub bytes: u64,
    /// CPU time and peak RSS of the process over its whole life, shutdown included.
    pub usage: Usage,
}

impl CaseResult {
    /// Throughput, MB/s (10^6 bytes per second).
    pub fn mb_per_second(&self) -> f64 {
        mb_per_second(self.bytes, self.wall)
    }
}

/// The fastest run of each case, in the order the cases first appear.
pub fn best_runs(results: &[CaseResult]) -> Vec<&CaseResult> {
    let mut best: Vec<&CaseResult> = Vec::new();
    for r in results {
        match best.iter_mut().find(|b| b.case == r.case) {
            Some(b) if r.wall < b.wall => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    best
}

/// A markdown table of `rows`; the "vs baseline" column divides each row's MB/s by the MB/s of
/// the `baseline` case in the same run, else of its first row (empty when there is none).
pub fn markdown_table(rows: &[&CaseResult], baseline: &str) -> String {
    let base_of = |row: &CaseResult| {
        rows.iter()
            .find(|r| r.case == baseline && r.run == row.run)
            .or_else(|| rows.iter().find(|r| r.case == baseline))
            .map(|r| r.mb_per_second())
    };
    let mut out = String::from(
        "| case | run | backlog (MiB) | wall (s) | MB/s | vs pg_receivewal | CPU user+sys (s) | peak RSS (MiB) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let ratio = base_of(r).map_or(String::new(), |b| format!("{:.2}x", r.mb_per_second() / b));
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} | {:.0} | {} | {:.1} ({:.1} + {:.1}) | {:.1} |\n",
            r.case,
            r.run,
            r.bytes as f64 / f64::from(1 << 20),
            r.wall.as_secs_f64(),
            r.mb_per_second(),
            ratio,
            r.usage.cpu_seconds(),
            r.usage.user_seconds,
            r.usage.sys_seconds,
            r.usage.max_rss_kib as f64 / 1024.0,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(case: &str, run: usize, secs: u64) -> CaseResult {
        CaseResult {
            case: case.to_owned(),
            run,
            wall: Duration::from_secs(secs),
            bytes: 1 << 30,
            usage: Usage {
                user_seconds: 3.0,
                sys_seconds: 1.0,
                max_rss_kib: 10240,
                exit_status: 0,
                signal: None,
            },
        }
    }

    #[test]
    fn keeps_the_fastest_run_per_case_in_first_seen_order() {
        let all = [
            result("a", 1, 10),
            result("b", 1, 20),
            result("a", 2, 8),
            result("b", 2, 25),
        ];
        let best = best_runs(&all);
        assert_eq!(best.len(), 2);
        assert_eq!((best[0].case.as_str(), best[0].run), ("a", 2));
        assert_eq!((best[1].case.as_str(), best[1].run), ("b", 1));
    }

    #[test]
    fn table_relates_rows_to_the_baseline() {
        let a = result("pg_receivewal", 1, 10);
        let b = result("pgagent", 1, 20);
        let table = markdown_table(&[&a, &b], "pg_receivewal");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        // 1 GiB in 10 s = 107 MB/s; the second row takes twice as long.
        assert_eq!(
            lines[2],
            "| pg_receivewal | 1 | 1024 | 10.0 | 107 | 1.00x | 4.0 (3.0 + 1.0) | 10.0 |"
        );
        assert!(lines[3].contains("| 0.50x |"), "{}", lines[3]);
        // Rows of a later run relate to that run's baseline.
        let a2 = result("pg_receivewal", 2, 5);
        let b2 = result("pgagent", 2, 5);
        let table = markdown_table(&[&a, &b, &a2, &b2], "pg_receivewal");
        assert!(
            table.lines().nth(5).unwrap().contains("| 1.00x |"),
            "{table}"
        );
        let without_baseline = markdown_table(&[&b], "pg_receivewal");
        assert!(
            without_baseline.contains("| 54 |  | 4.0"),
            "{without_baseline}"
        );
    }
}
