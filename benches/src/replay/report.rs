//! Results of the replay benchmark as markdown tables.

use std::time::Duration;

use super::cases::CaseRun;
use super::percall::CallTimes;
use super::Case;

/// The fastest run of each case, in the order the cases first appear.
pub fn fastest(runs: &[CaseRun]) -> Vec<&CaseRun> {
    let mut best: Vec<&CaseRun> = Vec::new();
    for r in runs {
        match best.iter_mut().find(|b| b.case == r.case) {
            Some(b) if r.replay.wall < b.replay.wall => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    best
}

/// A markdown table of replays. "vs cp" divides each wall time by the `cp` case's in the same
/// run, else by the first `cp` row (empty when there is none); MiB/s is restored WAL
/// (`seg_bytes` per file) per wall second. The phase columns come from the server log
/// ([`crate::replay::logscan::Phases`]): seconds until the first file was restored, MiB/s
/// from the first file restored to the last, seconds from the last to the end of recovery.
pub fn replay_table(rows: &[&CaseRun], seg_bytes: u64) -> String {
    let floor = |row: &CaseRun| {
        rows.iter()
            .find(|r| r.case == Case::Cp && r.run == row.run)
            .or_else(|| rows.iter().find(|r| r.case == Case::Cp))
            .map(|r| r.replay.wall)
    };
    let mut out = String::from(
        "| case | run | wall (s) | vs cp | files restored | MiB/s | first file (s) | \
         first→last MiB/s | after last (s) | prefetch hits / misses |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let files = r.replay.segments().len();
        let mib = (files as u64 * seg_bytes) as f64 / f64::from(1u32 << 20);
        let ratio = floor(r).map_or(String::new(), |f| {
            format!("{:.2}x", ratio(r.replay.wall, f))
        });
        let fetch = r.fetch.map_or(String::new(), |f| {
            format!("{} / {}", f.prefetch_hits, f.prefetch_misses)
        });
        let phases = r.replay.phases.map_or(" |  | ".to_owned(), |p| {
            let middle_mib =
                (p.files.saturating_sub(1) as u64 * seg_bytes) as f64 / f64::from(1u32 << 20);
            format!(
                "{:.2} | {:.0} | {:.2}",
                p.to_first,
                middle_mib / p.middle.max(1e-9),
                p.after_last
            )
        });
        out.push_str(&format!(
            "| {} | {} | {:.2} | {ratio} | {files} | {:.0} | {phases} | {fetch} |\n",
            r.case.label(),
            r.run,
            r.replay.wall.as_secs_f64(),
            mib / r.replay.wall.as_secs_f64().max(1e-9),
        ));
    }
    out
}

/// Each case's wall time over the `cp` case's of the same run, for every run that has both,
/// and the median of those ratios: less sensitive to a machine whose load changes between
/// runs than the ratio of the fastest runs. Cases in first-seen order, `cp` left out.
pub fn ratio_table(runs: &[CaseRun]) -> String {
    let mut out = String::from("| case | vs cp, run by run | median |\n| --- | --- | ---: |\n");
    let mut cases: Vec<Case> = Vec::new();
    for r in runs.iter().filter(|r| r.case != Case::Cp) {
        if !cases.contains(&r.case) {
            cases.push(r.case);
        }
    }
    for case in cases {
        let ratios: Vec<f64> = runs
            .iter()
            .filter(|r| r.case == case)
            .filter_map(|r| {
                let cp = runs.iter().find(|c| c.case == Case::Cp && c.run == r.run)?;
                Some(ratio(r.replay.wall, cp.replay.wall))
            })
            .collect();
        let Some(median) = median(&ratios) else {
            continue;
        };
        let each: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
        out.push_str(&format!(
            "| {} | {} | {median:.2}x |\n",
            case.label(),
            each.join(", ")
        ));
    }
    out
}

/// The median of `values` (the mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// A markdown table of per-call timings, milliseconds.
pub fn percall_table(rows: &[CallTimes]) -> String {
    let mut out = String::from(
        "| restore_command | calls | median (ms) | p95 (ms) | min (ms) |\n\
         | --- | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
            r.label,
            r.samples.len(),
            ms(r.median()),
            ms(r.p95()),
            ms(r.min()),
        ));
    }
    out
}

/// `a / b` of two durations.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// Milliseconds, fractional.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::logscan::{FetchSummary, Phases};
    use crate::replay::recovery::Replay;
    use pgagent_protocol::Lsn;

    fn run(case: Case, run: usize, secs: u64) -> CaseRun {
        CaseRun {
            case,
            run,
            replay: Replay {
                wall: Duration::from_secs(secs),
                restored: (2..6)
                    .map(|n| format!("0000000100000000000000{n:02X}"))
                    .collect(),
                redo_done: Lsn(0x6000000),
                phases: Some(Phases {
                    to_first: 0.5,
                    middle: 3.0,
                    after_last: 0.5,
                    files: 4,
                }),
            },
            fetch: case.is_pgagent().then_some(FetchSummary {
                servers: 1,
                served: 6,
                prefetch_hits: 3,
                prefetch_misses: 1,
            }),
        }
    }

    #[test]
    fn keeps_the_fastest_run_per_case() {
        let all = [
            run(Case::Cp, 1, 10),
            run(Case::Pgagent, 1, 12),
            run(Case::Cp, 2, 9),
            run(Case::Pgagent, 2, 13),
        ];
        let best = fastest(&all);
        assert_eq!(best.len(), 2);
        assert_eq!((best[0].case, best[0].run), (Case::Cp, 2));
        assert_eq!((best[1].case, best[1].run), (Case::Pgagent, 1));
    }

    #[test]
    fn replay_rows_relate_to_the_cp_floor() {
        let cp = run(Case::Cp, 1, 4);
        let agent = run(Case::Pgagent, 1, 5);
        let table = replay_table(&[&cp, &agent], 16 << 20);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        // 4 segments of 16 MiB in 4 s; 3 from the first restored to the last in 3 s.
        assert_eq!(
            lines[2],
            "| cp (local directory) | 1 | 4.00 | 1.00x | 4 | 16 | 0.50 | 16 | 0.50 |  |"
        );
        assert_eq!(
            lines[3],
            "| pgagent fetch (Garage, +0 ms) | 1 | 5.00 | 1.25x | 4 | 13 | 0.50 | 16 | 0.50 | 3 / 1 |"
        );
        let mut unknown = run(Case::Cp, 1, 4);
        unknown.replay.phases = None;
        let row = replay_table(&[&unknown], 16 << 20);
        assert!(row.contains("| 16 |  |  |  |  |"), "{row}");
        let alone = replay_table(&[&agent], 16 << 20);
        assert!(alone.contains("| 5.00 |  | 4 |"), "{alone}");
    }

    #[test]
    fn ratios_run_by_run_and_their_median() {
        let all = [
            run(Case::Cp, 1, 10),
            run(Case::Pgagent, 1, 12),
            run(Case::Cp, 2, 20),
            run(Case::Pgagent, 2, 22),
            run(Case::Cp, 3, 10),
            run(Case::Pgagent, 3, 15),
            run(Case::PgBackRest, 3, 30),
        ];
        let table = ratio_table(&all);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert_eq!(
            lines[2],
            "| pgagent fetch (Garage, +0 ms) | 1.20, 1.10, 1.50 | 1.20x |"
        );
        assert!(lines[3].ends_with("| 3.00 | 3.00x |"), "{}", lines[3]);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn per_call_rows_in_milliseconds() {
        let rows = [CallTimes {
            label: "cp".into(),
            samples: [3, 2, 4].map(Duration::from_millis).to_vec(),
        }];
        assert_eq!(
            percall_table(&rows).lines().nth(2).unwrap(),
            "| cp | 3 | 3.0 | 4.0 | 2.0 |"
        );
    }
}
