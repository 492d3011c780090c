//! Fault scenarios of the staging disk.
//!
//! Lost: the agent comes back without its staging directory after WAL was written
//! while it was away. Before it goes, the bucket is cut off for a moment, so staging holds
//! segments the bucket does not have; then the agent is killed, its staging directory
//! deleted (a lost disk), several segments written and switched, and the agent started again.
//!
//! DESIGN.md "The streaming pipeline" (4): with no staging, the agent resumes from the
//! slot's `restart_lsn`: no gap. Every segment from the slot's position at the kill to the
//! end must reach the bucket; the watcher checks content and slot throughout, and a
//! bucket-only recovery gives back the server's data.
//!
//! Full: staging is a small tmpfs that a ballast file fills under load, for 30 s. DESIGN.md
//! "Invariants to test": a full staging disk pauses receiving (the slot keeps the WAL); the
//! agent stays up and says so (`status`, `/readyz`, the alert hook, `doctor`), and carries
//! on by itself once the ballast is gone, with nothing lost.

mod common;

use std::time::{Duration, Instant};

use common::faults::*;
use common::{http_get, lsn};
use pgagent_protocol::SegNo;
use pgagent_tests::load::Load;
use pgagent_tests::{free_addr, run_pgagent, wait_until, PgOptions, ProxyMode, Tmpfs};

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

/// Size of the staging disk: a few segments, so the ballast fills it at once.
const STAGING_MIB: u64 = 96;
/// How long the staging disk stays full.
const FULL_FOR: Duration = Duration::from_secs(30);

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_full_staging_disk_pauses_receiving_and_the_agent_carries_on_by_itself() {
    let mut s = Scenario::start("faults_staging_full", PgOptions::default());
    let disk = Tmpfs::mount(&s.rig.staging(), STAGING_MIB).expect("staging on a tmpfs");
    let hooks = s.rig.dir.path().join("hooks.log");
    let hook = |kind: &str| {
        format!(
            "echo \"{kind} $PGAGENT_EVENT_REASON\" >> {}",
            hooks.display()
        )
    };
    let addr = free_addr().unwrap();
    let mut agent = s.spawn_caught_up(&[
        ("PGAGENT_METRICS_LISTEN", addr.to_string()),
        ("PGAGENT_ALERTS_ON_FAILURE", hook("failure")),
        ("PGAGENT_ALERTS_ON_RECOVERY", hook("recovery")),
        ("PGAGENT_ALERTS_GRACE", "2s".into()),
    ]);
    s.backup();
    let watcher = s.watch();
    let load = Load::start(&s.pg, &["-c", "2", "-R", "150"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));

    let (ballast, size) = disk.fill("ballast").unwrap();
    let filled = Instant::now();
    println!("[{}] staging disk filled by a {size}-byte ballast", s.name);
    let reported = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        s.rig.status().is_some_and(|st| {
            st["pid"].as_u64() == Some(u64::from(agent.pid())) && st["staging_full"] == true
        })
    });
    let status = s.rig.status();
    s.check(reported, || {
        format!("status.json never said staging_full with the disk full: {status:?}")
    });
    let env = s.rig.env(&s.pg);
    if reported {
        let ready = http_get(addr, "/readyz");
        s.check(
            ready.starts_with("HTTP/1.0 503") && ready.contains("staging"),
            || format!("/readyz with staging full: {ready}"),
        );
        let out = run_pgagent(&["status"], &env);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        s.check(text.contains("disk full"), || {
            format!("`pgagent status` does not say the staging disk is full:\n{text}")
        });
    }
    let out = run_pgagent(&["doctor"], &env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.check(text.contains("full") && !text.contains("create it"), || {
        format!("`pgagent doctor` does not name the full disk:\n{text}")
    });
    while filled.elapsed() < FULL_FOR {
        if let Some(status) = agent.try_status() {
            s.fail(format!(
                "the agent exited ({status}) with its staging disk full:\n{}",
                tail(&agent.output_text(), 4000)
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::fs::remove_file(&ballast).unwrap();
    if agent.try_status().is_some() {
        drop(load);
        drop(watcher);
        drop(disk);
        s.conclude();
        return;
    }
    // Space is back: the agent takes WAL again by itself.
    let now = lsn(&s.pg.current_wal_lsn().unwrap());
    let resumed = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        s.rig.status().is_some_and(|st| st["staging_full"] == false)
            && s.rig.status_lsn("received_lsn").is_some_and(|l| l >= now)
    });
    let status = s.rig.status();
    s.check(resumed, || {
        format!("receiving did not resume within 60 s of the ballast's removal: {status:?}")
    });
    load.stop(&s.pg).unwrap();
    s.finish(
        agent,
        watcher,
        Expect {
            min_rounds: 10,
            min_compared: 5,
        },
    );
    let fired = lines(&hooks);
    let failures: Vec<&String> = fired.iter().filter(|l| l.starts_with("failure")).collect();
    s.check(
        failures.len() == 1 && failures[0].contains("staging_full"),
        || format!("expected one failure alert naming staging_full, got {fired:?}"),
    );
    s.check(
        fired.iter().filter(|l| l.starts_with("recovery")).count() == 1,
        || format!("expected one recovery alert, got {fired:?}"),
    );
    drop(disk);
    s.conclude();
}
