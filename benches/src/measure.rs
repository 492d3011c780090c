//! Resource usage of a benchmarked process: GNU time's report and `/proc/<pid>/status`.
//!
//! Every command under test runs as `/usr/bin/time -q -f TIME_FORMAT -o FILE cmd…`, so its
//! user and system CPU time and peak resident set size come from `wait4(2)`'s `rusage`, the
//! same way for every case, including what happens during shutdown.

use std::time::Duration;

use anyhow::{anyhow, Context};

/// GNU time binary (Debian package `time`).
pub const TIME_BIN: &str = "/usr/bin/time";

/// `--format` for GNU time: user CPU seconds, system CPU seconds, maximum resident set size
/// in KiB, exit status (time(1), "FORMATTING THE OUTPUT").
pub const TIME_FORMAT: &str = "%U %S %M %x";

/// What GNU time reported about one process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User CPU time, seconds.
    pub user_seconds: f64,
    /// System CPU time, seconds.
    pub sys_seconds: f64,
    /// Peak resident set size (`ru_maxrss`), KiB.
    pub max_rss_kib: u64,
    /// Exit status; 0 on success (GNU time also prints 0 for a process killed by a signal).
    pub exit_status: i32,
    /// The signal that killed the process, if one did.
    pub signal: Option<i32>,
}

impl Usage {
    /// User plus system CPU time, seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.user_seconds + self.sys_seconds
    }

    /// Whether the process exited by itself with status 0.
    pub fn succeeded(&self) -> bool {
        self.exit_status == 0 && self.signal.is_none()
    }
}

/// Parses the file GNU time wrote with [`TIME_FORMAT`]: the last non-empty line holds the
/// four fields; an earlier "Command terminated by signal N" line names the signal.
///
/// Errors when the last line does not have four fields of the expected types.
pub fn parse_time_output(text: &str) -> anyhow::Result<Usage> {
    let signal = text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("Command terminated by signal ")?
            .parse()
            .ok()
    });
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| anyhow!("GNU time wrote nothing"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [user, sys, rss, status] = fields[..] else {
        return Err(anyhow!("unexpected GNU time output {line:?}"));
    };
    Ok(Usage {
        user_seconds: user
            .parse()
            .with_context(|| format!("user time {user:?}"))?,
        sys_seconds: sys
            .parse()
            .with_context(|| format!("system time {sys:?}"))?,
        max_rss_kib: rss.parse().with_context(|| format!("max RSS {rss:?}"))?,
        exit_status: status
            .parse()
            .with_context(|| format!("exit status {status:?}"))?,
        signal,
    })
}

/// `VmHWM` (peak resident set size) in KiB from the text of `/proc/<pid>/status`
/// (proc(5)), `None` when the line is missing (kernel threads, a process already reaped).
pub fn vm_hwm_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix("VmHWM:")?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// `VmHWM` of a running process, KiB.
pub fn process_vm_hwm_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(vm_hwm_kib)
}

/// Throughput in MB/s (10^6 bytes per second).
pub fn mb_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_time_output_with_a_note_line() {
        let text = "Command terminated by signal 15\n12.34 1.50 45678 0\n";
        let usage = parse_time_output(text).unwrap();
        assert_eq!(
            usage,
            Usage {
                user_seconds: 12.34,
                sys_seconds: 1.5,
                max_rss_kib: 45678,
                exit_status: 0,
                signal: Some(15),
            }
        );
        assert!((usage.cpu_seconds() - 13.84).abs() < 1e-9);
        assert!(!usage.succeeded());
        assert!(parse_time_output("0.01 0.00 1540 0\n").unwrap().succeeded());
        assert!(!parse_time_output("0.01 0.00 1540 3\n").unwrap().succeeded());
    }

    #[test]
    fn rejects_malformed_time_output() {
        assert!(parse_time_output("").is_err());
        assert!(parse_time_output("1.0 2.0 x 0\n").is_err());
        assert!(parse_time_output("1.0 2.0\n").is_err());
    }

    #[test]
    fn reads_vm_hwm() {
        let status =
            "Name:\tpgagent\nVmPeak:\t  200000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(51234));
        assert_eq!(vm_hwm_kib("Name:\tkthreadd\n"), None);
        assert!(process_vm_hwm_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }

    #[test]
    fn throughput_in_decimal_megabytes() {
        let mbps = mb_per_second(500_000_000, Duration::from_secs(2));
        assert!((mbps - 250.0).abs() < 1e-9);
    }
}
