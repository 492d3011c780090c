//! Fault scenario: the replication connection terminated every 1–2 s for 40 s while the
//! bucket answers slowly (100–200 ms added each way by the proxy), under load.
//!
//! Measures each reconnect: from `pg_terminate_backend` of the agent's walsender to the
//! moment `pg_stat_replication` shows a new walsender of the agent `streaming` (polled every
//! 20 ms). The goal is a median of at most 1 s. The bucket watcher and the final bucket-only
//! recovery check that nothing was lost or confirmed early on the way.

mod common;

use std::time::{Duration, Instant};

use common::faults::*;
use pgagent_tests::load::Load;
use pgagent_tests::sql::SqlClient;
use pgagent_tests::{PgOptions, ProxyMode};
use rand::Rng;

/// How long connections are cut.
const PHASE: Duration = Duration::from_secs(40);
/// Longest wait for one reconnect before it is counted as this long.
const RECONNECT_CAP: Duration = Duration::from_secs(30);
/// The reconnect median the agent must meet.
const MEDIAN_GOAL: Duration = Duration::from_secs(1);
/// The agent's walsender, in `pg_stat_replication`.
const STREAMING_PID: &str = "SELECT pid FROM pg_stat_replication \
    WHERE application_name = 'pgagent' AND state = 'streaming' ORDER BY backend_start DESC LIMIT 1";

/// Polls every 20 ms until the agent streams on a walsender other than `old`; returns its pid.
fn wait_streaming(sql: &mut SqlClient, old: Option<&str>, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(pid)) = sql.query_opt(STREAMING_PID) {
            if Some(pid.as_str()) != old {
                return Some(pid);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn replication_connection_cut_every_second_or_two_reconnects_fast() {
    let mut s = Scenario::start("faults_reconnect", PgOptions::default());
    let agent = s.spawn_caught_up(&[]);
    s.backup();
    let watcher = s.watch();
    let load = Load::start(&s.pg, &["-c", "2", "-R", "150"]).unwrap();
    let mut sql = SqlClient::superuser(&s.pg).unwrap();
    let mut rng = rand::thread_rng();
    let mut times = Vec::new();
    let mut timeouts = 0;
    let mut pid = wait_streaming(&mut sql, None, RECONNECT_CAP).expect("the agent streams");
    let began = Instant::now();
    while began.elapsed() < PHASE {
        s.proxy.set_mode(ProxyMode::Delay(Duration::from_millis(
            rng.gen_range(100..=200),
        )));
        let cut = Instant::now();
        sql.query(&format!("SELECT pg_terminate_backend({pid})"))
            .unwrap();
        match wait_streaming(&mut sql, Some(&pid), RECONNECT_CAP) {
            Some(new) => {
                times.push(cut.elapsed());
                pid = new;
            }
            None => {
                times.push(RECONNECT_CAP);
                timeouts += 1;
                match wait_streaming(&mut sql, Some(&pid), RECONNECT_CAP) {
                    Some(new) => pid = new,
                    None => {
                        s.fail(format!(
                            "the agent did not stream again within {:?} of a terminate",
                            RECONNECT_CAP * 2
                        ));
                        break;
                    }
                }
            }
        }
        // The next cut 1–2 s after this one (at once if the reconnect took longer).
        let gap = Duration::from_millis(rng.gen_range(1000..=2000));
        if let Some(rest) = gap.checked_sub(cut.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    s.proxy.set_mode(ProxyMode::Pass);
    load.stop(&s.pg).unwrap();

    let list: Vec<String> = times
        .iter()
        .map(|t| format!("{:.0}", t.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "[{}] {} reconnects (ms): {}",
        s.name,
        times.len(),
        list.join(" ")
    );
    if let Some((min, median, max)) = min_median_max(&times) {
        println!(
            "[{}] reconnect min {:.0} ms, median {:.0} ms, max {:.0} ms; {timeouts} over {RECONNECT_CAP:?}",
            s.name,
            min.as_secs_f64() * 1000.0,
            median.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0
        );
        s.check(median <= MEDIAN_GOAL, || {
            format!("reconnect median {median:?} is over {MEDIAN_GOAL:?} (min {min:?}, max {max:?}, {} samples)", times.len())
        });
    }
    s.check(times.len() >= 5, || {
        format!("only {} reconnects measured in {PHASE:?}", times.len())
    });
    s.finish(
        agent,
        watcher,
        Expect {
            min_rounds: 50,
            min_compared: 10,
        },
    );
    s.conclude();
}
