//! The steady-load figures and their goals as a markdown table.

use std::time::Duration;

use super::metrics::Counters;
use super::trickle::median_max;

/// Goal: raw bytes compressed per byte of WAL written, at most.
pub const GOAL_RAW_PER_WAL: f64 = 2.5;
/// Goal: stored bytes uploaded per byte of WAL written, at most.
pub const GOAL_STORED_PER_WAL: f64 = 0.6;
/// Goal: RPO of a lone commit (median and maximum), at most.
pub const GOAL_TRICKLE_RPO: Duration = Duration::from_secs(2);

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// WAL written over the load window: `pg_current_wal_lsn()` after minus before, bytes.
    pub wal_bytes: u64,
    /// From the start of the load until the bucket held all of its WAL.
    pub window: Duration,
    /// The upload counters' growth over the window.
    pub uploaded: Counters,
    /// `wal.partial_interval` the daemon ran with.
    pub partial_interval: Duration,
    /// Time from each trickle commit to its WAL being durable in the bucket.
    pub trickle_rpo: Vec<Duration>,
}

impl Figures {
    /// Raw bytes compressed per WAL byte.
    pub fn raw_per_wal(&self) -> f64 {
        self.uploaded.raw_bytes / self.wal_bytes.max(1) as f64
    }

    /// Stored bytes uploaded per WAL byte.
    pub fn stored_per_wal(&self) -> f64 {
        self.uploaded.stored_bytes / self.wal_bytes.max(1) as f64
    }

    /// PUTs per minute of the window.
    pub fn puts_per_minute(&self) -> f64 {
        self.uploaded.puts * 60.0 / self.window.as_secs_f64().max(1e-9)
    }

    /// Goal for PUTs per minute: one per `partial_interval`.
    pub fn puts_goal(&self) -> f64 {
        60.0 / self.partial_interval.as_secs_f64().max(1e-9)
    }

    /// Whether the PUT goal was met: at most one PUT per `partial_interval` of the window,
    /// plus one (a window of n intervals holds n + 1 interval ticks).
    pub fn puts_met(&self) -> bool {
        let intervals = self.window.as_secs_f64() / self.partial_interval.as_secs_f64().max(1e-9);
        self.uploaded.puts <= intervals.floor() + 1.0
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}

/// The results table: each figure, its goal and whether it was met.
pub fn markdown_table(f: &Figures) -> String {
    let mut out = String::from("| figure | measured | goal | |\n| --- | ---: | ---: | --- |\n");
    out.push_str(&format!(
        "| WAL written during the load (bytes) | {} | | |\n",
        f.wal_bytes
    ));
    let ratio_row = |what: &str, value: f64, goal: f64| {
        format!(
            "| {what} | {value:.2} | ≤ {goal} | {} |\n",
            verdict(value <= goal)
        )
    };
    out.push_str(&ratio_row(
        "raw bytes compressed per WAL byte",
        f.raw_per_wal(),
        GOAL_RAW_PER_WAL,
    ));
    out.push_str(&ratio_row(
        "stored bytes uploaded per WAL byte",
        f.stored_per_wal(),
        GOAL_STORED_PER_WAL,
    ));
    out.push_str(&format!(
        "| PUT requests per minute | {:.1} | ≤ {:.0} | {} |\n",
        f.puts_per_minute(),
        f.puts_goal(),
        verdict(f.puts_met())
    ));
    match median_max(&f.trickle_rpo) {
        Some((median, max)) => {
            for (what, value) in [("median", median), ("max", max)] {
                out.push_str(&format!(
                    "| trickle RPO, {what} (s) | {:.2} | ≤ {} | {} |\n",
                    value.as_secs_f64(),
                    GOAL_TRICKLE_RPO.as_secs(),
                    verdict(value <= GOAL_TRICKLE_RPO)
                ));
            }
        }
        None => out.push_str("| trickle RPO (s) | not measured | | |\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steady::metrics::PutSource;

    fn figures() -> Figures {
        Figures {
            wal_bytes: 1_000_000,
            window: Duration::from_secs(62),
            uploaded: Counters {
                raw_bytes: 314_000_000.0,
                stored_bytes: 38_000_000.0,
                puts: 60.0,
                put_source: PutSource::Uploads,
                requests: Default::default(),
            },
            partial_interval: Duration::from_secs(1),
            trickle_rpo: vec![
                Duration::from_millis(700),
                Duration::from_millis(1100),
                Duration::from_millis(2500),
            ],
        }
    }

    #[test]
    fn ratios_and_rates() {
        let f = figures();
        assert!((f.raw_per_wal() - 314.0).abs() < 1e-9);
        assert!((f.stored_per_wal() - 38.0).abs() < 1e-9);
        assert!((f.puts_per_minute() - 58.06).abs() < 0.01);
        assert_eq!(f.puts_goal(), 60.0);
        let ten = Figures {
            partial_interval: Duration::from_secs(10),
            ..f
        };
        assert_eq!(ten.puts_goal(), 6.0);
        assert!(!ten.puts_met());
        let ticks = |puts: f64, window_ms: u64| Figures {
            uploaded: Counters {
                puts,
                ..figures().uploaded
            },
            window: Duration::from_millis(window_ms),
            ..figures()
        };
        assert!(ticks(61.0, 60_900).puts_met());
        assert!(!ticks(62.0, 60_900).puts_met());
        assert!(ticks(60.0, 59_500).puts_met());
    }

    #[test]
    fn table_judges_each_goal() {
        let table = markdown_table(&figures());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 8, "{table}");
        assert_eq!(
            lines[3],
            "| raw bytes compressed per WAL byte | 314.00 | ≤ 2.5 | missed |"
        );
        assert_eq!(lines[5], "| PUT requests per minute | 58.1 | ≤ 60 | met |");
        assert_eq!(lines[6], "| trickle RPO, median (s) | 1.10 | ≤ 2 | met |");
        assert_eq!(lines[7], "| trickle RPO, max (s) | 2.50 | ≤ 2 | missed |");
        let none = markdown_table(&Figures {
            trickle_rpo: vec![],
            ..figures()
        });
        assert!(
            none.ends_with("| trickle RPO (s) | not measured | | |\n"),
            "{none}"
        );
    }
}
