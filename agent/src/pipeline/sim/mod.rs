//! A deterministic simulation of the WAL path, checking DESIGN.md's promise "confirmed ⇒
//! fetchable": everything ever confirmed to the server as `flush` is served by fetch, byte
//! for byte, whatever order uploads complete in, whatever listings miss, whatever cleanup
//! deletes, at any crash point. It holds the other promise made from the pipeline's
//! position to the same rule: every segment below
//! [`Progress::durable_end_on`](super::Progress::durable_end_on), which the CloudNativePG
//! sidecar answers `WAL.Archive` for without storing it again, is served whole by every
//! required store.
//!
//! The real code runs inside it: the `Receiver` writing real staging files, the real
//! `Sealer`, `Uploader` tasks and `FlushTracker`, the real resume decision at each restart
//! (`resume::decide`), and the real `Fetcher` and delivery over the same store. What is simulated is
//! what lies at the edges: the server (a WAL source whose bytes are a function of the LSN,
//! and a slot that keeps what was confirmed), the bucket ([`store::SimStore`]: latencies,
//! failures, PUTs that land after their caller died, listings that miss recent writes or
//! still show recent deletes) and the clock (tokio's, paused: a seed's minutes of simulated
//! time take milliseconds). Everything runs on one thread, and every choice (the next event,
//! every request's fate, the backoff jitter) is drawn from the seed, so a seed replays
//! exactly.
//!
//! A seed is a few hundred events: the server writes WAL; WAL reaches the receiver in
//! messages of any size, across segment boundaries; the `.partial` is sent on a tick (or at
//! once, in synchronous mode); time passes while uploads land in any order; the connection
//! drops and the session resumes; the agent is killed (`kill -9`: tasks gone mid-request,
//! staging kept) or its host is replaced (staging lost too) and it restarts from what the
//! slot, staging and the bucket hold; the bucket goes down for a while. After every event the
//! checker asks fetch for the segments around the confirmed position and compares what it
//! serves with the server's WAL ([`Checker`]).
//!
//! Run: `cargo test -p pgagent --lib pipeline::sim` runs `PGAGENT_SIM_SEEDS` seeds (default
//! 2000, spread over the cores) from `PGAGENT_SIM_FIRST_SEED` (default 0); a failure prints
//! its seed (the lowest, when several fail), and
//! `PGAGENT_SIM_SEED=<seed>` replays that one alone, with the agent's logs on
//! (`RUST_LOG=debug`).

mod check;
mod parts;
mod store;
mod world;

use std::time::Duration;

use check::Checker;
use world::World;

/// Events per seed.
const EVENTS: usize = 400;

/// Seeds a plain `cargo test` runs (CI): thousands, about four minutes on two cores.
const DEFAULT_SEEDS: u64 = 2000;

/// What one seed did, for the summary line.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    events: usize,
    crashes: usize,
    lost_staging: usize,
    reconnects: usize,
    outages: usize,
    checks: usize,
    confirmed: u64,
    simulated: Duration,
    stores: usize,
}

/// Runs one seed to its end; the first broken promise as an error.
fn run_seed(seed: u64) -> Result<Stats, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        // backon's jitter draws from fastrand's generator of this thread.
        fastrand::seed(seed);
        let mut world = World::new(seed).await?;
        world.run(EVENTS).await?;
        Ok(world.stats())
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn confirmed_wal_is_always_served_byte_for_byte() {
    let replay = env_u64("PGAGENT_SIM_SEED");
    if replay.is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let seeds: Vec<u64> = match replay {
        Some(s) => vec![s],
        None => {
            let first = env_u64("PGAGENT_SIM_FIRST_SEED").unwrap_or(0);
            let n = env_u64("PGAGENT_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
            (first..first + n).collect()
        }
    };
    // Seeds are independent (each its own runtime, store and staging): spread them over the
    // cores, each thread taking the next seed not yet run.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let results: Vec<Result<Stats, (u64, String)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(seeds.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&seed) = seeds.get(i) else { break };
                        let r = run_seed(seed).map_err(|e| (seed, e));
                        let failed = r.is_err();
                        mine.push(r);
                        if failed {
                            // Stop the others early: the first failure is what matters.
                            next.store(seeds.len(), std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("simulation thread panicked"))
            .collect()
    });
    let mut total = Stats::default();
    let mut failures: Vec<(u64, String)> = Vec::new();
    for r in results {
        match r {
            Ok(s) => {
                total.events += s.events;
                total.crashes += s.crashes;
                total.lost_staging += s.lost_staging;
                total.reconnects += s.reconnects;
                total.outages += s.outages;
                total.checks += s.checks;
                total.confirmed += s.confirmed;
                total.simulated += s.simulated;
                total.stores += s.stores;
            }
            Err(f) => failures.push(f),
        }
    }
    if let Some((seed, e)) = failures.into_iter().min_by_key(|f| f.0) {
        panic!(
            "seed {seed}: {e}\nreplay: PGAGENT_SIM_SEED={seed} RUST_LOG=debug \
             cargo test -p pgagent --lib pipeline::sim -- --nocapture"
        );
    }
    // The seeds did exercise what they are for.
    assert!(total.checks > 0 && total.confirmed > 0, "{total:?}");
    eprintln!("simulation: {total:?}");
}

/// The checker finds an order nobody wrote a scenario for: a store where segment 3's
/// deltas are confirmed, segment 4's first delta landed and segment 3's complete object
/// did not; fetch must serve segment 3's run.
#[test]
fn the_checker_fails_when_confirmed_wal_is_not_served() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut checker = Checker::new_for_tests().await;
        // Nothing in the store, yet 0x100 bytes of segment 1 "confirmed": a broken promise.
        let err = checker.check_confirmed_for_tests(0x100).await.unwrap_err();
        assert!(err.contains("not served"), "{err}");
    });
}
