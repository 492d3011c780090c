//! The fault soak: under pgbench load and a ledger of rows committed one by one, a fault
//! drawn from a seeded RNG every 5–20 s (`kill -9` of the agent, a clean restart of it, the
//! replication connection cut, the bucket down for 10–60 s, the bucket slow, PostgreSQL
//! crashed and started; as root, a full staging disk unless `PGAGENT_SOAK_STAGING_FULL=0`), while the
//! bucket watcher checks the bucket against `pg_wal` and the slot every 300 ms.
//!
//! At the end the faults stop, the agent catches up, and: no watcher violation; every WAL
//! object in the bucket, read directly, equals the server's `pg_wal` and the complete
//! segments run with no gap to the server's end; a bucket-only recovery (a base backup taken
//! before the faults, WAL through `restore_command = 'pgagent fetch %f %p'`) holds exactly
//! the server's pgbench tables and ledger, and every row whose commit was acknowledged.
//!
//! Three variants share the time (`PGAGENT_SOAK_SECONDS`, default 360, a third each):
//! a plaintext bucket, an encrypted one, and synchronous mode. Each prints its seed; a
//! failure prints it again with the last faults, and `PGAGENT_SOAK_SEED` replays the fault
//! sequence (the timing is real, so the interleaving differs). See docs/fault-suite.md.

mod common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use common::faults::*;
use common::ledger::{missing_acked, Ledger, LEDGER_STATE_SQL};
use common::soak::*;
use common::{assert_identical_to_server, complete_segments, lsn, open_store, seg};
use pgagent_protocol::{Lsn, SegNo};
use pgagent_storage::envelope;
use pgagent_tests::load::Load;
use pgagent_tests::{wait_until, AgentProcess, PgOptions, ProxyMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The background pgbench load (besides the ledger).
const LOAD: &[&str] = &["-c", "2", "-R", "100"];
/// The passphrase of the encrypted variant.
const PASSPHRASE: &str = "soak passphrase: all the WAL, sealed";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plain = 0,
    Encrypted = 1,
    Synchronous = 2,
}

#[test]
fn plain_bucket_under_random_faults() {
    soak("plain_bucket_under_random_faults", Variant::Plain);
}

#[test]
fn encrypted_bucket_under_random_faults() {
    soak("encrypted_bucket_under_random_faults", Variant::Encrypted);
}

#[test]
fn synchronous_mode_under_random_faults() {
    soak("synchronous_mode_under_random_faults", Variant::Synchronous);
}

fn soak(name: &'static str, variant: Variant) {
    let seed = seed();
    let budget = variant_budget();
    let staging_full = staging_full_enabled();
    println!(
        "[{name}] seed {seed} ({SEED_ENV}={seed} replays it), {budget:?} of faults, staging-full fault {}",
        if staging_full { "on" } else { "off" }
    );
    let opts = PgOptions {
        // Every segment written during the run stays in pg_wal for the comparisons.
        wal_keep_size: "64GB".into(),
        ..PgOptions::default()
    };
    let mut s = Scenario::start(name, opts);
    Ledger::create_table(&s.pg);
    s.state_sql = format!("SELECT concat_ws(' | ', ({PGBENCH_STATE_SQL}), {LEDGER_STATE_SQL})");
    match variant {
        Variant::Plain => {}
        Variant::Encrypted => s.encrypt(PASSPHRASE),
        Variant::Synchronous => {
            // Set after the tables exist: with it in place every commit waits for the agent.
            s.pg.append_conf(&["synchronous_standby_names = 'pgagent'"])
                .unwrap();
            s.pg.reload().unwrap();
            s.rig
                .extra_env
                .push(("PGAGENT_WAL_SYNCHRONOUS", "true".into()));
        }
    }
    // The rig's directory holds the staging directory: on a tmpfs, a ballast file beside
    // it fills the staging disk.
    let tmpfs = staging_full
        .then(|| Tmpfs::mount(s.rig.dir.path(), STAGING_TMPFS_MIB))
        .flatten();

    let mut agent = s.spawn_caught_up(&[]);
    s.backup();
    let watcher = s.watch();
    let origin = Instant::now();
    let mut log = FaultLog::new(name, seed, origin);
    let mut load = Load::start(&s.pg, LOAD).unwrap();
    let ledger = Ledger::start(&s.pg, origin);
    // One seed replays all three variants, each with a sequence of its own.
    let mut rng = StdRng::seed_from_u64(seed ^ variant as u64);
    loop {
        let gap = Duration::from_millis(rng.gen_range(5_000..=20_000));
        let fault = Fault::draw(&mut rng, tmpfs.is_some());
        if log.now() + gap >= budget {
            std::thread::sleep(budget.saturating_sub(log.now()));
            break;
        }
        std::thread::sleep(gap);
        if !agent.is_running() {
            // Recorded as a failure (with its output); the soak goes on with a new one.
            println!(
                "[{name}] {:.1}s: before fault #{} the agent had exited by itself",
                log.now().as_secs_f64(),
                log.count() + 1
            );
            s.kill(agent);
            agent = s.spawn_agent(&[]);
        }
        let at = log.now();
        let (a, l, note) = inject(&mut s, agent, load, fault, tmpfs.as_ref());
        (agent, load) = (a, l);
        log.push(at, fault, note);
    }
    println!(
        "[{name}] {} in {:.1}s",
        log.summary(),
        log.now().as_secs_f64()
    );

    // Faults over: the agent catches up with the load still running, then everything stops.
    if !agent.is_running() {
        println!("[{name}] after the last fault the agent had exited by itself");
        s.kill(agent);
        agent = s.spawn_agent(&[]);
    }
    let now = lsn(&s.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    let t = Instant::now();
    match watcher.wait_frontier(now, CATCH_UP) {
        Some(_) => println!(
            "[{name}] after the faults the bucket reached {now} in {:.1}s",
            t.elapsed().as_secs_f64()
        ),
        None => s.fail(format!(
            "after the faults the bucket did not reach {now} within {CATCH_UP:?}: {}",
            watcher.snapshot()
        )),
    }
    let ledger = ledger.stop();
    println!(
        "[{name}] ledger: {} rows acknowledged, {} not ({} timed out after {:?})",
        ledger.acked.len(),
        ledger.unacked,
        ledger.timed_out,
        common::ledger::COMMIT_TIMEOUT
    );
    s.check(ledger.acked.len() >= 100, || {
        format!(
            "the ledger got only {} rows acknowledged",
            ledger.acked.len()
        )
    });
    if let Err(e) = load.stop(&s.pg) {
        s.fail(format!("the pgbench load: {e:#}"));
    }
    // In synchronous mode a commit the ledger gave up on may still wait for the agent; the
    // server's state is read once none does.
    let settled = wait_until(CATCH_UP, Duration::from_millis(200), || {
        s.pg.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
            .is_ok_and(|n| n.trim() == "0")
    });
    s.check(settled, || {
        format!("sessions still wait for synchronous replication {CATCH_UP:?} after the faults")
    });
    for p in missing_acked(&s.pg, &ledger, "the server") {
        s.fail(p);
    }

    let (report, end) = s.finish_with(
        agent,
        watcher,
        Expect {
            min_rounds: 50,
            min_compared: 10,
        },
        |restored| missing_acked(restored, &ledger, "the bucket-only recovery"),
    );
    println!(
        "[{name}] watcher: {} segments, {} deltas compared",
        report.segments_compared, report.deltas_compared
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for p in rt.block_on(bucket_equals_server(&s, end)) {
        s.fail(p);
    }
    drop(tmpfs);
    println!("[{name}] {}; {}", log.summary(), log.replay_hint());
    s.conclude();
}

/// Injects `fault`; returns the agent and load that run afterwards, and a note of what was
/// seen. A broken promise along the way is recorded on `s`.
fn inject(
    s: &mut Scenario,
    mut agent: AgentProcess,
    mut load: Load,
    fault: Fault,
    tmpfs: Option<&Tmpfs>,
) -> (AgentProcess, Load, String) {
    let mut note = String::new();
    match fault {
        Fault::KillAgent { pause } => {
            s.kill(agent);
            std::thread::sleep(pause);
            agent = s.spawn_agent(&[]);
        }
        Fault::RestartAgent => {
            let t = Instant::now();
            s.stop_cleanly(agent);
            note = format!("stopped in {:.1}s", t.elapsed().as_secs_f64());
            agent = s.spawn_agent(&[]);
        }
        Fault::CutReplication => {
            let n =
                s.pg.psql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication \
                     WHERE application_name = 'pgagent'",
                )
                .unwrap_or_else(|e| format!("? ({e:#})"));
            note = format!("{n} walsender terminated");
        }
        Fault::BucketDown { down } => {
            s.proxy.set_mode(ProxyMode::Refuse);
            std::thread::sleep(down);
            s.proxy.set_mode(ProxyMode::Pass);
            note = format!("staging {} MiB at the end", s.staging_bytes() >> 20);
        }
        Fault::BucketSlow { delay, slow } => {
            s.proxy.set_mode(ProxyMode::Delay(delay));
            std::thread::sleep(slow);
            s.proxy.set_mode(ProxyMode::Pass);
        }
        Fault::CrashServer { down } => {
            s.pg.stop_immediate()
                .expect("stop PostgreSQL in immediate mode");
            std::thread::sleep(down);
            s.pg.start_server().unwrap_or_else(|e| {
                panic!(
                    "start PostgreSQL after the crash: {e:#}\n{}",
                    s.pg.log_tail()
                )
            });
            // pgbench gave up when its sessions were cut: a new one takes over.
            drop(load);
            load = Load::start(&s.pg, LOAD).unwrap();
        }
        Fault::StagingFull { full } => {
            let fs = tmpfs.expect("the staging-full fault is drawn only with a tmpfs");
            let bytes = fs.fill();
            std::thread::sleep(full);
            fs.empty();
            note = format!("ballast {} MiB", bytes >> 20);
        }
    }
    (agent, load, note)
}

/// Reads every WAL object from the bucket directly (not through the proxy) and compares it
/// with the server's `pg_wal` ([`assert_identical_to_server`], one object at a time), then
/// checks that the complete segments run without a gap from the first one to the segment
/// before the one holding `end`. Returns what is wrong, one line each.
async fn bucket_equals_server(s: &Scenario, end: Lsn) -> Vec<String> {
    let store = open_store(&s.direct_store_url(), &s.garage.s3_env()).await;
    let cipher = s.cipher(store.as_ref()).await;
    let mut problems = Vec::new();
    let metas = match store.list("wal/").await {
        Ok(m) => m,
        Err(e) => return vec![format!("list the bucket's wal/: {e}")],
    };
    let mut segments: Vec<SegNo> = Vec::new();
    let mut compared = 0;
    for meta in &metas {
        let name = meta.key.trim_start_matches("wal/").to_owned();
        let body = match store.get(&meta.key).await {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("read {}: {e}", meta.key));
                continue;
            }
        };
        let raw = match envelope::open_for(&body, cipher.as_ref(), &meta.key) {
            Ok(raw) => raw,
            Err(e) => {
                problems.push(format!("open {}: {e}", meta.key));
                continue;
            }
        };
        let one = BTreeMap::from([(name, raw)]);
        segments.extend(complete_segments(&one));
        match catch_unwind(AssertUnwindSafe(|| assert_identical_to_server(&one, &s.pg))) {
            Ok(n) => compared += n,
            Err(panic) => problems.push(format!(
                "the bucket differs from pg_wal: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|m| (*m).to_owned()))
                    .unwrap_or_default()
            )),
        }
    }
    segments.sort();
    let last_needed = SegNo(end.segment_number(seg()).0.saturating_sub(1));
    match segments.first() {
        None => problems.push("no complete segment in the bucket".into()),
        Some(first) => {
            let mut next = *first;
            for segno in &segments {
                if *segno != next {
                    problems.push(format!("segment {:X} is missing from the bucket", next.0));
                    break;
                }
                next = next.next();
            }
            if next.0 <= last_needed.0 {
                problems.push(format!(
                    "the bucket's complete segments end at {:X}; the server's end {end} needs up to {:X}",
                    next.0.saturating_sub(1),
                    last_needed.0
                ));
            }
        }
    }
    println!(
        "[{}] bucket read directly: {} WAL objects, {compared} complete segments equal pg_wal",
        s.name,
        metas.len()
    );
    problems
}
