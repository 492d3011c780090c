//! Fault scenario: the agent killed (`kill -9`) twenty times at random moments under load,
//! each time started again on the same staging directory.
//!
//! Invariants (DESIGN.md "Invariants to test"): while it runs, the bucket's WAL equals the
//! server's `pg_wal`, never goes backwards (no shorter `.partial` after a restart), and the
//! slot's `restart_lsn` never passes what the bucket holds; at the end the bucket holds every
//! segment with no gap, and a bucket-only recovery gives back the server's data.

mod common;

use std::time::{Duration, Instant};

use common::faults::*;
use pgagent_tests::load::Load;
use pgagent_tests::PgOptions;
use rand::Rng;

/// Kills of the agent.
const KILLS: usize = 20;

#[test]
fn twenty_kill9_of_the_agent_under_load_lose_nothing() {
    let mut s = Scenario::start("faults_kill", PgOptions::default());
    let mut agent = s.spawn_caught_up(&[]);
    s.backup();
    let watcher = s.watch();
    let load = Load::start(&s.pg, &["-c", "2", "-R", "150"]).unwrap();
    let mut rng = rand::thread_rng();
    let began = Instant::now();
    for _ in 0..KILLS {
        // From right after the start (connecting, resuming) to well into streaming.
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..2500)));
        s.kill(agent);
        agent = s.spawn_agent(&[]);
    }
    println!(
        "[{}] {KILLS} kills in {:.1}s",
        s.name,
        began.elapsed().as_secs_f64()
    );
    // Streaming a little after the last restart before the load stops.
    std::thread::sleep(Duration::from_secs(2));
    load.stop(&s.pg).unwrap();
    s.finish(
        agent,
        watcher,
        Expect {
            min_rounds: 20,
            min_compared: 20,
        },
    );
    s.conclude();
}
