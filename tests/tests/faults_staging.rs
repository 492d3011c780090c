//! Fault scenario: the agent comes back without its staging directory after WAL was written
//! while it was away. Before it goes, the bucket is cut off for a moment, so staging holds
//! segments the bucket does not have; then the agent is killed, its staging directory
//! deleted (a lost disk), several segments written and switched, and the agent started again.
//!
//! DESIGN.md "The streaming pipeline" (4): with no staging, the agent resumes from the
//! slot's `restart_lsn`: no gap. Every segment from the slot's position at the kill to the
//! end must reach the bucket; the watcher checks content and slot throughout, and a
//! bucket-only recovery gives back the server's data.

mod common;

use std::time::Duration;

use common::faults::*;
use common::lsn;
use pgagent_protocol::SegNo;
use pgagent_tests::load::Load;
use pgagent_tests::{PgOptions, ProxyMode};

/// Segments written while the agent is away.
const AWAY_SEGMENTS: usize = 4;

#[test]
fn back_without_its_staging_directory_the_agent_leaves_no_gap() {
    let mut s = Scenario::start("faults_staging", PgOptions::default());
    let agent = s.spawn_caught_up(&[]);
    s.backup();
    let watcher = s.watch();
    let load = Load::start(&s.pg, &["-c", "2", "-R", "150"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));

    // Staging gets ahead of the bucket: WAL only the agent's disk (and the server) holds.
    s.proxy.set_mode(ProxyMode::Refuse);
    for _ in 0..2 {
        s.pg.pgbench(&["-n", "-t", "300", "-c", "2"]).unwrap();
        s.pg.switch_wal().unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    // Away: killed, its staging directory lost, and WAL written meanwhile.
    s.kill(agent);
    let left = common::slot_restart_lsn(&s.pg).expect("the slot");
    let staged = s.staging_bytes();
    std::fs::remove_dir_all(s.rig.staging()).unwrap();
    for _ in 0..AWAY_SEGMENTS {
        s.pg.pgbench(&["-n", "-t", "300", "-c", "2"]).unwrap();
        s.pg.switch_wal().unwrap();
    }
    let back = lsn(&s.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    s.proxy.set_mode(ProxyMode::Pass);
    let seg = common::seg();
    println!(
        "[{}] staging held {staged} bytes when lost; slot at {left}, server at {back} on return ({} segments)",
        s.name,
        back.segment_number(seg).0 - left.segment_number(seg).0
    );

    let agent = s.spawn_agent(&[]);
    std::thread::sleep(Duration::from_secs(3));
    load.stop(&s.pg).unwrap();
    let (report, _) = s.finish(
        agent,
        watcher,
        Expect {
            min_rounds: 10,
            min_compared: 5,
        },
    );
    let missing: Vec<String> = (left.segment_number(seg).0..back.segment_number(seg).0)
        .map(SegNo)
        .filter(|n| !report.listing.complete.contains(n))
        .map(|n| format!("{:X}", n.0))
        .collect();
    s.check(missing.is_empty(), || {
        format!(
            "segments written while the agent was away are missing from the bucket: {missing:?}"
        )
    });
    s.conclude();
}
