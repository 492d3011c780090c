//! A ledger: rows committed one at a time on their own session, each row whose commit the
//! server acknowledged recorded with when it was. A recovery must hold every acknowledged
//! row (DESIGN.md "Invariants to test": what the server acknowledged after the agent
//! confirmed it is never lost).
//!
//! A commit that fails (the server crashed) or does not answer within [`COMMIT_TIMEOUT`]
//! (synchronous mode while the agent is away) is not acknowledged: the session is dropped
//! and the next row goes on a new one. Such a row may still be committed later; it is
//! neither required nor forbidden in a recovery.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pgagent_protocol::{ConnConfig, SqlSession};
use pgagent_tests::sql::superuser_conninfo;
use pgagent_tests::PgServer;

/// How long a commit may take before the ledger gives up on it (not acknowledged).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two rows, so the ledger adds little load of its own.
const PACE: Duration = Duration::from_millis(20);
/// Pause after a failed connection attempt.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// Row count and checksum of the ledger (ids in order), for a state comparison.
pub const LEDGER_STATE_SQL: &str = "(SELECT count(*) || ' ledger ' || \
    md5(coalesce(string_agg(id::text || ':' || note, ',' ORDER BY id), '')) FROM ledger)";

/// What the ledger thread did.
#[derive(Debug, Default, Clone)]
pub struct LedgerReport {
    /// Acknowledged rows: id and when the commit returned (since the origin given to
    /// [`Ledger::start`]).
    pub acked: Vec<(i64, Duration)>,
    /// Commits that failed or timed out (not acknowledged).
    pub unacked: u64,
    /// Commits that timed out (a subset of `unacked`).
    pub timed_out: u64,
}

/// The ledger thread; stop it with [`Ledger::stop`].
pub struct Ledger {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LedgerReport>>,
    thread: Option<JoinHandle<()>>,
}

impl Ledger {
    /// Creates table `ledger(id bigint primary key, note text)` on `pg`.
    pub fn create_table(pg: &PgServer) {
        pg.psql("CREATE TABLE ledger (id bigint PRIMARY KEY, note text NOT NULL)")
            .unwrap();
    }

    /// Starts committing rows to `pg`'s ledger (superuser over the unix socket, which
    /// stays the same across a server restart); times count from `origin`.
    pub fn start(pg: &PgServer, origin: Instant) -> Ledger {
        let conn = ConnConfig::parse(&superuser_conninfo(pg, "ledger")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LedgerReport::default()));
        let thread = {
            let (stop, report) = (stop.clone(), report.clone());
            std::thread::Builder::new()
                .name("ledger".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("ledger runtime");
                    rt.block_on(run(conn, origin, stop, report));
                })
                .expect("spawn the ledger")
        };
        Ledger {
            stop,
            report,
            thread: Some(thread),
        }
    }

    /// Acknowledged rows so far.
    pub fn acked(&self) -> usize {
        self.report.lock().unwrap().acked.len()
    }

    /// Stops after the commit in flight (if any) and returns what was done.
    pub fn stop(mut self) -> LedgerReport {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("ledger thread");
        }
        self.report.lock().unwrap().clone()
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(
    conn: ConnConfig,
    origin: Instant,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LedgerReport>>,
) {
    let mut session: Option<SqlSession> = None;
    let mut id: i64 = 0;
    while !stop.load(Ordering::SeqCst) {
        if session.is_none() {
            match SqlSession::connect(&conn).await {
                Ok(s) => session = Some(s),
                Err(_) => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            }
        }
        let s = session.as_mut().expect("connected");
        id += 1;
        let sql = format!("INSERT INTO ledger VALUES ({id}, 'row {id}')");
        let outcome = tokio::time::timeout(COMMIT_TIMEOUT, s.query(&sql)).await;
        {
            let mut r = report.lock().unwrap();
            match outcome {
                Ok(Ok(_)) => r.acked.push((id, origin.elapsed())),
                Ok(Err(_)) => {
                    r.unacked += 1;
                    session = None;
                }
                Err(_) => {
                    r.unacked += 1;
                    r.timed_out += 1;
                    session = None;
                }
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

/// The acknowledged rows of `report` missing from `pg`'s ledger, one line each (at most a
/// few listed), empty when every one is there.
pub fn missing_acked(pg: &PgServer, report: &LedgerReport, what: &str) -> Vec<String> {
    let present = match pg.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger") {
        Ok(s) => s,
        Err(e) => return vec![format!("read the ledger of {what}: {e:#}")],
    };
    let present: std::collections::HashSet<i64> =
        present.split(',').filter_map(|s| s.parse().ok()).collect();
    let missing: Vec<&(i64, Duration)> = report
        .acked
        .iter()
        .filter(|(id, _)| !present.contains(id))
        .collect();
    if missing.is_empty() {
        return Vec::new();
    }
    let shown: Vec<String> = missing
        .iter()
        .take(10)
        .map(|(id, at)| format!("row {id} (acknowledged at {:.1}s)", at.as_secs_f64()))
        .collect();
    vec![format!(
        "{what} lacks {} of {} acknowledged ledger rows: {}",
        missing.len(),
        report.acked.len(),
        shown.join(", ")
    )]
}
