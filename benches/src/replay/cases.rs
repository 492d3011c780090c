//! Running one case: its `restore_command`, what it needs around it (a proxy, a fetch
//! configuration, a pgBackRest spool), one timed replay and the checks.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};
use pgagent_protocol::Lsn;
use pgagent_tests::{Garage, Proxy, ProxyMode};

use super::agent::{FetchConfig, FetchTuning};
use super::logscan::FetchSummary;
use super::percall::wait_summary;
use super::prepare::PREFIX;
use super::recovery::{check_replay, replay, Replay};
use super::sys::{path_str, shell_quote, user_dir};
use super::{Case, Prepared, Settings};

/// `fetch.idle_timeout` of the restore-mode servers the cases start: short, so the server
/// logs its summary soon after recovery (PostgreSQL asks for a file every few hundred
/// milliseconds during a replay, so it never idles that long before the end).
const FETCH_IDLE: Duration = Duration::from_secs(5);

/// One measured run of one case.
#[derive(Debug, Clone)]
pub struct CaseRun {
    /// The case.
    pub case: Case,
    /// Run number, from 1.
    pub run: usize,
    /// The replay.
    pub replay: Replay,
    /// For pgagent, the fetch server's summary.
    pub fetch: Option<FetchSummary>,
}

/// Runs `case` once: builds its `restore_command`, replays, and checks that every file of
/// the archive was restored and that redo ended at `redo_end` (the first case's end).
///
/// Errors: the case cannot be set up, the replay fails, or the checks fail.
pub fn run_case(
    case: Case,
    run: usize,
    p: &Prepared,
    settings: &Settings,
    garage: &Garage,
    redo_end: Option<Lsn>,
) -> anyhow::Result<CaseRun> {
    let dir = p.work.path().join(format!("case-{}-{run}", case.letter()));
    user_dir(&dir, p.user.as_ref())?;
    let (replayed, fetch) = match case {
        Case::Cp => {
            let archive = shell_quote(path_str(&p.archive)?);
            let r = replay(&p.base, |_| Ok(format!("cp {archive}/%f \"%p\"")))?;
            (r, None)
        }
        Case::Pgagent | Case::Pgagent20 | Case::Pgagent100 | Case::Pgagent100Wide => {
            let (r, summary) = replay_pgagent(case, &dir, p, settings, garage)?;
            (r, Some(summary))
        }
        Case::PgBackRest => {
            let pgbr = p
                .pgbackrest
                .as_ref()
                .map_err(|why| anyhow!("no pgBackRest repository: {why}"))?;
            let r = replay(&p.base, |pgdata| {
                let conf = pgbr.case_config(&dir, pgdata, true)?;
                Ok(format!("{} %f \"%p\"", pgbr.archive_get_command(&conf)?))
            })?;
            (r, None)
        }
    };
    check_replay(&replayed, &p.files, redo_end).with_context(|| case.label())?;
    Ok(CaseRun {
        case,
        run,
        replay: replayed,
        fetch,
    })
}

/// A pgagent case: a proxy in front of Garage when the case adds latency, a fetch
/// configuration with its own staging directory (so a fresh restore-mode server starts),
/// the replay, then the server's summary once it has gone idle.
fn replay_pgagent(
    case: Case,
    dir: &Path,
    p: &Prepared,
    settings: &Settings,
    garage: &Garage,
) -> anyhow::Result<(Replay, FetchSummary)> {
    let proxy = case.proxy_delay().map(|delay| {
        let proxy = Proxy::start(garage.s3_addr());
        proxy.set_mode(ProxyMode::Delay(delay));
        proxy
    });
    let url = match &proxy {
        Some(proxy) => garage.store_url_via(PREFIX, &proxy.http_endpoint()),
        None => garage.store_url(PREFIX),
    };
    let tuning = FetchTuning {
        idle_timeout: FETCH_IDLE,
        prefetch: case.prefetch(),
        // Room for the window plus as many segments again (a loading segment reserves a
        // whole segment's size).
        cache_bytes: case.prefetch().map(|n| 2 * n as u64 * p.seg_bytes),
    };
    let config = FetchConfig::write(dir, garage, &url, tuning, p.user.as_ref())?;
    let fetch = config.command(&settings.pgagent_bin)?;
    let r = replay(&p.base, |_| Ok(format!("{fetch} %f %p")))?;
    let summary =
        wait_summary(&config, FETCH_IDLE + Duration::from_secs(30)).with_context(|| {
            format!(
                "the fetch server logged no summary\n{}",
                config.server_logs()
            )
        })?;
    Ok((r, summary))
}
