//! What the benchmark reads back from files PostgreSQL and pgagent write: pure parsers.

use pgagent_protocol::Lsn;

/// Where the base backup's WAL starts: the `START WAL LOCATION` line of `backup_label`,
/// `START WAL LOCATION: 0/2000028 (file 000000010000000000000002)`
/// (`do_pg_backup_start` / `build_backup_content` in
/// `src/backend/access/transam/xlog.c`, `xlogbackup.c` from PostgreSQL 16). Returns the LSN
/// and the segment file name.
pub fn backup_start(label: &str) -> Option<(Lsn, String)> {
    let rest = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))?;
    let (lsn, file) = rest.split_once(" (file ")?;
    let file = file.strip_suffix(')')?;
    Some((lsn.trim().parse().ok()?, file.to_owned()))
}

/// File names PostgreSQL restored, in order: the `restored log file "%s" from archive` lines
/// of the server log (`RestoreArchivedFile` in `src/backend/access/transam/xlogarchive.c`).
pub fn restored_files(log: &str) -> Vec<String> {
    const MARK: &str = "restored log file \"";
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find(MARK)? + MARK.len()..];
            let (name, tail) = rest.split_once('"')?;
            tail.trim_start()
                .starts_with("from archive")
                .then(|| name.to_owned())
        })
        .collect()
}

/// The LSN at which redo ended: the `redo done at %X/%X` line of the server log
/// (`PerformWalRecovery` in `src/backend/access/transam/xlogrecovery.c`).
pub fn redo_done(log: &str) -> Option<Lsn> {
    const MARK: &str = "redo done at ";
    log.lines().find_map(|line| {
        let rest = &line[line.find(MARK)? + MARK.len()..];
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The time of a server log line with the default `log_line_prefix` (`'%m [%p] '`,
/// `2024-05-01 10:00:00.050 UTC [10] LOG: …`), as seconds since midnight; `None` for other
/// lines (such as a `restore_command`'s own stderr).
pub fn line_time(line: &str) -> Option<f64> {
    let time = line.get(11..23)?;
    let (h, rest) = time.split_once(':')?;
    let (m, s) = rest.split_once(':')?;
    if line.as_bytes().get(10) != Some(&b' ') || s.len() != 6 {
        return None;
    }
    let (h, m, s): (u32, u32, f64) = (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?);
    Some(f64::from(h * 3600 + m * 60) + s)
}

/// Where the time of a replay went, from the server log's timestamps (millisecond
/// resolution), in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phases {
    /// From the postmaster's first line to the first file restored: startup, and for a
    /// fetch server its start and the first download.
    pub to_first: f64,
    /// From the first file restored to the last: the other files, each restored and
    /// replayed.
    pub middle: f64,
    /// From the last file restored to `archive recovery complete`: replay of the last file,
    /// the probes for a next segment and a next timeline. (The end-of-recovery checkpoint
    /// follows, before the server accepts connections.)
    pub after_last: f64,
    /// Restorations from the first file to the last, both included.
    pub files: usize,
}

/// [`Phases`] of a server log; `None` when a line it needs is missing.
///
/// PostgreSQL may restore the last file again after reaching its end (it then looks for the
/// next segment and rereads the last one); the last file counts from its first restoration.
pub fn phases(log: &str) -> Option<Phases> {
    let start = log.lines().find_map(line_time)?;
    let restored: Vec<(String, f64)> = log
        .lines()
        .filter_map(|l| Some((restored_files(l).pop()?, line_time(l)?)))
        .collect();
    let done = log
        .lines()
        .filter(|l| l.contains("archive recovery complete"))
        .find_map(line_time)?;
    // A replay that runs across midnight: times after it are a day later.
    let since = |t: f64| {
        if t < start {
            t + 86_400.0 - start
        } else {
            t - start
        }
    };
    let (last_name, _) = restored.last()?;
    let last_at = restored.iter().position(|(n, _)| n == last_name)?;
    let (first, last) = (since(restored[0].1), since(restored[last_at].1));
    Some(Phases {
        to_first: first,
        middle: last - first,
        after_last: since(done) - last,
        files: last_at + 1,
    })
}

/// Whether the server log says archive recovery completed (`archive recovery complete`,
/// `CleanupAfterArchiveRecovery` in `src/backend/access/transam/xlog.c`).
pub fn recovery_completed(log: &str) -> bool {
    log.contains("archive recovery complete")
}

/// What the restore-mode fetch servers of one case reported when they stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchSummary {
    /// Servers that logged their stop (one, unless a server went idle mid-recovery).
    pub servers: u64,
    /// Requests answered.
    pub served: u64,
    /// Requests answered from the prefetch cache.
    pub prefetch_hits: u64,
    /// Segment requests that found nothing prefetched.
    pub prefetch_misses: u64,
}

/// Sums the `fetch server stopped served=N prefetch_hits=H prefetch_misses=M` lines of a
/// restore-mode server's log (pgagent's `fetch::restore_mode`); `None` when there is none.
pub fn fetch_summary(log: &str) -> Option<FetchSummary> {
    let mut sum = FetchSummary::default();
    for line in log.lines().filter(|l| l.contains("fetch server stopped")) {
        let field = |key: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        sum.servers += 1;
        sum.served += field("served");
        sum.prefetch_hits += field("prefetch_hits");
        sum.prefetch_misses += field("prefetch_misses");
    }
    (sum.servers > 0).then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_backup_start() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n";
        assert_eq!(
            backup_start(label),
            Some((Lsn(0x2000028), "000000010000000000000002".to_owned()))
        );
        assert_eq!(backup_start("CHECKPOINT LOCATION: 0/2000060\n"), None);
    }

    #[test]
    fn lists_restored_files_and_the_end_of_redo() {
        let log = "\
2024-05-01 10:00:00.001 UTC [10] LOG:  starting archive recovery
2024-05-01 10:00:00.050 UTC [10] LOG:  restored log file \"000000010000000000000002\" from archive
2024-05-01 10:00:00.090 UTC [10] LOG:  redo starts at 0/2000028
cp: cannot stat '/a/00000002.history': No such file or directory
2024-05-01 10:00:00.100 UTC [10] LOG:  restored log file \"000000010000000000000003\" from archive
2024-05-01 10:00:01.000 UTC [10] LOG:  redo done at 0/3FFFF80 system usage: CPU: user: 0.50 s
2024-05-01 10:00:01.100 UTC [10] LOG:  archive recovery complete
";
        assert_eq!(
            restored_files(log),
            ["000000010000000000000002", "000000010000000000000003"]
        );
        assert_eq!(redo_done(log), Some(Lsn(0x3FF_FF80)));
        assert!(recovery_completed(log));
        assert_eq!(redo_done("LOG:  redo starts at 0/2000028\n"), None);
        assert!(!recovery_completed("LOG:  redo starts at 0/2000028\n"));
    }

    #[test]
    fn splits_a_replay_into_phases() {
        let log = "\
2024-05-01 10:00:00.000 UTC [10] LOG:  starting PostgreSQL 15.8
cp: cannot stat '/a/00000002.history': No such file or directory
2024-05-01 10:00:00.250 UTC [10] LOG:  restored log file \"000000010000000000000002\" from archive
2024-05-01 10:00:01.250 UTC [10] LOG:  restored log file \"000000010000000000000003\" from archive
2024-05-01 10:00:03.750 UTC [10] LOG:  restored log file \"000000010000000000000004\" from archive
2024-05-01 10:00:03.900 UTC [10] LOG:  redo done at 0/4000100 system usage: CPU: user: 0.50 s
2024-05-01 10:00:03.950 UTC [10] LOG:  restored log file \"000000010000000000000004\" from archive
2024-05-01 10:00:04.000 UTC [10] LOG:  archive recovery complete
";
        assert_eq!(line_time(log), Some(36_000.0));
        assert_eq!(line_time("cp: cannot stat '/a/00000002.history'"), None);
        assert_eq!(
            phases(log),
            Some(Phases {
                to_first: 0.25,
                middle: 3.5,
                after_last: 0.25,
                files: 3,
            })
        );
        assert_eq!(phases("2024-05-01 10:00:00.000 UTC [10] LOG:  x\n"), None);
        let midnight = "2024-05-01 23:59:59.500 UTC [1] LOG: start\n\
                        2024-05-02 00:00:00.500 UTC [1] LOG: restored log file \"A\" from archive\n\
                        2024-05-02 00:00:01.000 UTC [1] LOG: archive recovery complete\n";
        let p = phases(midnight).unwrap();
        assert!((p.to_first - 1.0).abs() < 1e-9 && (p.after_last - 0.5).abs() < 1e-9);
    }

    #[test]
    fn sums_fetch_server_summaries() {
        let log = "\
2024-05-01T10:00:00.000000Z  INFO pgagent::fetch::restore_mode: fetch server (restore mode) for s3://b/p listening on /s/fetch-1.sock
2024-05-01T10:00:30.000000Z  INFO pgagent::fetch::restore_mode: fetch server stopped served=70 prefetch_hits=68 prefetch_misses=1
2024-05-01T10:01:30.000000Z  INFO pgagent::fetch::restore_mode: fetch server stopped served=2 prefetch_hits=0 prefetch_misses=1
";
        assert_eq!(
            fetch_summary(log),
            Some(FetchSummary {
                servers: 2,
                served: 72,
                prefetch_hits: 68,
                prefetch_misses: 2,
            })
        );
        assert_eq!(fetch_summary("listening on /s/fetch-1.sock\n"), None);
    }
}
