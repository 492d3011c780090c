//! A bucket watcher: while a scenario runs, reads the bucket directly (the `pgagent-storage`
//! crate, not the `pgagent` binary) and checks the promises of DESIGN.md "Store layout" and
//! "Invariants to test" every round (default 300 ms):
//!
//! - **content**: every WAL object (`wal/<24 hex>`, `wal/<24 hex>.partial.d/<start>-<end>`
//!   deltas and, in buckets written before deltas, `wal/<24 hex>.partial`) opens (length and
//!   blake3 hash verified) to exactly the bytes of the server's own `pg_wal/<name>`: a
//!   complete segment whole, a delta at `[start, end)` (and as many bytes as its name says),
//!   a `.partial` as the same-length prefix. Objects whose server file is gone (removed or
//!   recycled after the slot moved on) are counted and skipped. A complete object is
//!   compared once (they are immutable; a changed size is compared again), a delta once; a
//!   `.partial` whenever its header (raw length, hash) changes.
//! - **immutable deltas**: a delta listed with another size or modification time than when
//!   it was read is read again, and its content must not have changed.
//! - **never backwards**: a `.partial` never comes back shorter than it was, and the pieces
//!   of a segment not yet complete (deltas, with its `.partial`), assembled from its start
//!   up to the first hole, never reach less far than they did.
//! - **slot behind the bucket**: the slot's `restart_lsn` (what the server may recycle up to,
//!   moved by the agent's `flush` reports) never passes the end of the WAL the bucket holds
//!   contiguously from the segment holding it ([`contiguous_end`]: complete segments, then
//!   how far the next segment's pieces reach). The slot is read first
//!   and the bucket listed after, so a bucket that only grows never gives a false alarm.
//!
//! Objects of an encrypted store are opened with the key the watcher unlocks itself from
//! the store's `keys/` with [`WatchTarget::passphrase`].
//!
//! Only the timeline the server is on when the watcher starts is checked. Violations are
//! recorded with their time and names; [`Watcher::stop`] runs one last round and returns a
//! [`WatchReport`] whose assertions also demand that the watcher did check something.

mod check;
mod frontier;
mod report;

pub use frontier::{contiguous_end, parse_wal_key, WalListing};
pub use report::{SlotCheck, Violation, ViolationKind, WatchReport};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgagent_protocol::{Lsn, TimelineId, WalSegmentSize};
use pgagent_storage::crypto::Passphrase;
use pgagent_storage::StoreOptions;

use crate::PgServer;
use check::Checker;

/// Default time between the end of one round and the start of the next.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(300);

/// What to watch: a server (slot and `pg_wal`) and the store its agent writes to.
#[derive(Debug, Clone)]
pub struct WatchTarget {
    /// libpq-style connection string of a role that can read `pg_replication_slots`.
    pub conninfo: String,
    /// The agent's physical slot.
    pub slot: String,
    /// The server's `pg_wal` directory.
    pub pg_wal: PathBuf,
    /// Store URL, read directly (not through any fault proxy).
    pub store_url: String,
    /// Credentials and settings for the store.
    pub store_options: StoreOptions,
    /// `wal_segment_size` of the server.
    pub seg: WalSegmentSize,
    /// Timeline whose objects are checked.
    pub timeline: TimelineId,
    /// Time between rounds.
    pub interval: Duration,
    /// The passphrase of an encrypted store (`None`: plaintext). The watcher unlocks the
    /// store's key with it itself, from `keys/`, as a reader does.
    pub passphrase: Option<Passphrase>,
}

impl WatchTarget {
    /// A target for `pg` (slot `pgagent`, superuser over the unix socket; segment size and
    /// timeline asked from the server) and the store at `store_url`.
    pub fn new(
        pg: &PgServer,
        store_url: &str,
        store_options: StoreOptions,
    ) -> anyhow::Result<WatchTarget> {
        let seg_bytes: u64 = pg
            .psql("SELECT setting::bigint * CASE unit WHEN 'B' THEN 1 WHEN 'kB' THEN 1024 WHEN 'MB' THEN 1048576 END FROM pg_settings WHERE name = 'wal_segment_size'")?
            .parse()
            .context("wal_segment_size")?;
        let timeline: u32 = pg
            .psql("SELECT timeline_id FROM pg_control_checkpoint()")?
            .parse()
            .context("timeline_id")?;
        Ok(WatchTarget {
            conninfo: format!(
                "host={} port={} user={} dbname=postgres application_name=bucket-watcher",
                pg.socket_dir().display(),
                pg.port(),
                crate::pg::SUPERUSER
            ),
            slot: "pgagent".to_owned(),
            pg_wal: pg.data_dir().join("pg_wal"),
            store_url: store_url.to_owned(),
            store_options,
            seg: WalSegmentSize::new(seg_bytes).map_err(|e| anyhow::anyhow!("{e:?}"))?,
            timeline: TimelineId(timeline),
            interval: DEFAULT_INTERVAL,
            passphrase: None,
        })
    }
}

/// A running watcher (a thread with its own single-threaded tokio runtime).
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<WatchReport>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching `target`; the first round runs at once.
    ///
    /// # Panics
    /// If the thread cannot be spawned.
    pub fn start(target: WatchTarget) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(WatchReport {
            seg: Some(target.seg),
            ..WatchReport::default()
        }));
        let thread = {
            let (stop, state) = (stop.clone(), state.clone());
            std::thread::Builder::new()
                .name("bucket-watcher".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("watcher runtime");
                    rt.block_on(run(target, stop, state));
                })
                .expect("spawn the bucket watcher")
        };
        Watcher {
            stop,
            state,
            thread: Some(thread),
        }
    }

    /// The counts and findings so far.
    pub fn snapshot(&self) -> WatchReport {
        lock(&self.state).clone()
    }

    /// Waits (up to `timeout`) until a round finds the bucket's frontier (from the slot's
    /// segment) at or past `target`; returns that round's check, or `None` on timeout.
    pub fn wait_frontier(&self, target: Lsn, timeout: Duration) -> Option<SlotCheck> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = lock(&self.state).last_slot_check {
                if c.frontier >= target {
                    return Some(c);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops after one last round and returns the report.
    pub fn stop(mut self) -> WatchReport {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        lock(&self.state).clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run(target: WatchTarget, stop: Arc<AtomicBool>, state: Arc<Mutex<WatchReport>>) {
    let started = Instant::now();
    let mut checker = Checker::new(target, started, state.clone());
    loop {
        let last = stop.load(Ordering::SeqCst);
        checker.round_or_note().await;
        if last {
            break;
        }
        let next = Instant::now() + checker.interval();
        while Instant::now() < next && !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    lock(&state).elapsed = started.elapsed();
}
