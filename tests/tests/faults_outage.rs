//! Fault scenario: the bucket unreachable for 90 s (the proxy refuses every connection)
//! under load, with the default staging quota and `wal_sender_timeout = 30s`.
//!
//! DESIGN.md "The streaming pipeline" (5): while the bucket is away, staging grows up to its
//! quota and the agent keeps streaming; only at the quota does it stop confirming. So the
//! agent must stay `streaming` in `pg_stat_replication` (sampled every second) and the server
//! must never drop it for silence; the slot must not pass the bucket (watcher); once the
//! bucket is back everything lands, and a bucket-only recovery gives back the server's data.

mod common;

use std::time::{Duration, Instant};

use common::faults::*;
use pgagent_tests::load::Load;
use pgagent_tests::sql::SqlClient;
use pgagent_tests::{PgOptions, ProxyMode};

/// How long the bucket is away.
const OUTAGE: Duration = Duration::from_secs(90);
/// Samples this early in the outage may miss the agent (allowance of the scenario).
const GRACE: Duration = Duration::from_secs(2);
/// Rows of about 1 KiB per filler transaction: about 50 KiB of WAL each.
const FILLER_SQL: &str =
    "INSERT INTO filler (pad) SELECT repeat(md5(random()::text), 32) FROM generate_series(1, 50);\n";

#[test]
fn a_90s_bucket_outage_under_load_keeps_streaming_and_loses_nothing() {
    let opts = PgOptions {
        extra_conf: vec!["wal_sender_timeout = '30s'".to_owned()],
        ..PgOptions::default()
    };
    let mut s = Scenario::start("faults_outage", opts);
    let agent = s.spawn_caught_up(&[]);
    s.backup();
    let watcher = s.watch();
    // A steady ~5 MB/s of WAL: pgbench transactions plus filler inserts, about 450 MB over
    // the outage, more than the agent's in-memory queues hold, far below the 20 GiB quota.
    let script = s.pg.root_dir().join("filler.sql");
    std::fs::write(&script, FILLER_SQL).unwrap();
    let filler = format!("{}@1", script.display());
    let load = Load::start(
        &s.pg,
        &["-c", "4", "-R", "200", "-b", "tpcb-like@1", "-f", &filler],
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));

    let mut sql = SqlClient::superuser(&s.pg).unwrap();
    let before = s.staging_bytes();
    s.proxy.set_mode(ProxyMode::Refuse);
    let cut = Instant::now();
    let mut peak = before;
    let mut samples = 0;
    let mut missing = Vec::new();
    let mut next = cut;
    while cut.elapsed() < OUTAGE {
        next += Duration::from_secs(1);
        if let Some(rest) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
        let state = sql
            .query_opt("SELECT state FROM pg_stat_replication WHERE application_name = 'pgagent'")
            .unwrap_or_else(|e| Some(format!("query failed: {e:#}")));
        peak = peak.max(s.staging_bytes());
        samples += 1;
        let at = cut.elapsed();
        if at > GRACE && state.as_deref() != Some("streaming") {
            missing.push(format!(
                "{:.0}s: {}",
                at.as_secs_f64(),
                state.unwrap_or("no walsender".into())
            ));
        }
    }
    s.proxy.set_mode(ProxyMode::Pass);
    let wal_during = s.pg.psql("SELECT pg_size_pretty(pg_current_wal_lsn() - restart_lsn) FROM pg_replication_slots WHERE slot_name = 'pgagent'").unwrap_or_default();
    load.stop(&s.pg).unwrap();
    println!(
        "[{}] outage {OUTAGE:?}: staging peak {:.1} MiB (before {:.1} MiB), slot held back {wal_during} at the end, {samples} samples",
        s.name,
        peak as f64 / (1 << 20) as f64,
        before as f64 / (1 << 20) as f64
    );
    s.check(missing.is_empty(), || {
        format!(
            "the agent was not streaming in {} of {samples} samples during the outage: {}",
            missing.len(),
            missing.join(", ")
        )
    });
    s.check(peak > before + (64 << 20), || {
        format!("staging grew only from {before} to {peak} bytes: the outage did not hold WAL back")
    });
    s.finish(
        agent,
        watcher,
        Expect {
            min_rounds: 100,
            min_compared: 10,
        },
    );
    s.conclude();
}
