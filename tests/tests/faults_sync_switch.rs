//! In synchronous mode a commit returns only once its WAL is in the bucket. When the WAL
//! crosses from segment N into N+1, N goes up as one complete object while N+1's first delta
//! may land first (uploads are not ordered); if the host dies in between, the bucket holds N
//! only as deltas, followed by later WAL. Whatever was confirmed is served (DESIGN.md,
//! "fetch"): a bucket-only recovery replays N's deltas and holds every commit that returned.
//!
//! Here the fault proxy in front of Garage cuts every upload of N's complete object, the
//! agent is killed once N+1's delta is in the bucket, and the server is recovered from the
//! bucket alone.

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::faults::*;
use common::*;
use pgagent_protocol::{segment_file_name, Lsn, TimelineId};
use pgagent_storage::deltas::deltas_prefix;
use pgagent_tests::sql::{superuser_conninfo, SqlClient};
use pgagent_tests::{wait_until, PgOptions, PgServer};

/// `application_name` of the session that writes the acknowledged rows.
const WRITER: &str = "sync-writer";
/// Each row's payload: this many md5 hashes, 512 KiB of hex stored uncompressed, so a
/// segment fills in a few dozen commits.
const HASHES_PER_ROW: u32 = 16 * 1024;
/// How long the writes may take to bring the bucket into the state under test.
const WRITE_LIMIT: Duration = Duration::from_secs(60);

/// What the writer reports, in order.
enum Event {
    /// Commit `id` returned (acknowledged); the server's insert position right after it.
    Returned { id: u32, after: Lsn },
    /// The session failed (it is terminated once the agent is killed).
    Failed { id: u32, error: String },
}

/// One row per commit into `acked` until its session fails or `rx`'s side hangs up; commits
/// past what the bucket holds wait (the agent does not confirm them), so the writer stops
/// there by itself.
fn start_writer(pg: &PgServer) -> (JoinHandle<()>, Receiver<Event>) {
    let conninfo = superuser_conninfo(pg, WRITER);
    let (tx, rx) = mpsc::channel();
    let writer = thread::spawn(move || {
        let mut sql = SqlClient::connect(&conninfo).expect("connect the writer");
        for id in 1.. {
            let commit = sql
                .query(&format!(
                    "INSERT INTO acked (id, pad) SELECT {id}, string_agg(md5(random()::text), '') \
                     FROM generate_series(1, {HASHES_PER_ROW})"
                ))
                .and_then(|_| sql.query_opt("SELECT pg_current_wal_insert_lsn()"));
            let event = match commit {
                Ok(after) => Event::Returned {
                    id,
                    after: lsn(&after.expect("an LSN")),
                },
                Err(e) => Event::Failed {
                    id,
                    error: format!("{e:#}"),
                },
            };
            let failed = matches!(event, Event::Failed { .. });
            if tx.send(event).is_err() || failed {
                return;
            }
        }
    });
    (writer, rx)
}

/// N's complete object is held back at the proxy while N's deltas, N+1's first delta and
/// every commit up to N's last delta go through; the agent dies; the bucket-only recovery
/// must hold every acknowledged row, the ones committed in N included.
#[test]
fn acknowledged_commits_survive_a_switch_whose_complete_segment_never_landed() {
    let mut s = Scenario::start("faults_sync_switch", PgOptions::default());
    s.pg.psql(
        "CREATE TABLE acked (id int PRIMARY KEY, pad text); \
         ALTER TABLE acked ALTER COLUMN pad SET STORAGE EXTERNAL",
    )
    .unwrap();
    let agent = s.spawn_caught_up(&[("PGAGENT_WAL_SYNCHRONOUS", "true".into())]);
    s.backup();
    // Set after start-up and backup: with it in place, their own commits would wait too.
    s.pg.append_conf(&["synchronous_standby_names = 'pgagent'"])
        .unwrap();
    s.pg.reload().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            s.pg.psql(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pgagent'",
            )
            .is_ok_and(|st| st.trim() == "sync")
        }),
        "the agent is not a synchronous standby\n{}",
        agent.output_text()
    );

    // N: the segment being filled. Its complete object (one PUT, or the parts of a
    // multipart upload) is cut at the proxy; its deltas (`<N>.partial.d/…`) are not.
    let start = lsn(&s.pg.current_wal_lsn().unwrap());
    let n = start.segment_number(seg());
    let next = n.next();
    // Not pg_walfile_name(): at a segment boundary it names the segment before.
    let name = segment_file_name(TimelineId(1), n, seg());
    let path = s.object_path(&format!("wal/{name}"));
    s.proxy.cut_requests_containing(vec![
        format!("PUT {path}?").into_bytes(),
        format!("PUT {path} ").into_bytes(),
    ]);
    println!("[{}] holding back {path}, writing from {start}", s.name);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(open_store(&s.direct_store_url(), &s.garage.s3_env()));
    let bucket_state = || -> (bool, bool) {
        rt.block_on(async {
            let next_deltas = store
                .list(&deltas_prefix(TimelineId(1), next, seg()))
                .await
                .unwrap();
            let whole = store.head(&format!("wal/{name}")).await.unwrap();
            (!next_deltas.is_empty(), whole.is_some())
        })
    };

    let (writer, events) = start_writer(&s.pg);
    let mut acked: Vec<(u32, Lsn)> = Vec::new();
    let mut failure = None;
    let deadline = Instant::now() + WRITE_LIMIT;
    let mut reached = false;
    while Instant::now() < deadline && !reached && failure.is_none() {
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Returned { id, after }) => acked.push((id, after)),
            Ok(Event::Failed { id, error }) => failure = Some(format!("commit {id}: {error}")),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        let server = lsn(&s.pg.current_wal_lsn().unwrap());
        // The complete object is compressed before its upload is tried, so N+1's delta may
        // land first anyway: wait until an upload of N was tried and held back as well.
        if server.segment_number(seg()) > n && s.proxy.requests_cut() > 0 {
            let (next_delta, whole) = bucket_state();
            assert!(!whole, "{name} landed complete: the proxy rule missed it");
            reached = next_delta;
        }
    }
    assert!(
        reached,
        "within {WRITE_LIMIT:?}, the WAL did not reach {next:?} with a delta of it in the \
         bucket and an upload of {name} cut ({} cuts); {} commits returned, writer: \
         {failure:?}\n{}",
        s.proxy.requests_cut(),
        acked.len(),
        agent.output_text()
    );
    // The host dies: nothing N's complete upload or later can land any more.
    s.kill(agent);
    let (_, whole) = bucket_state();
    s.check(!whole, || format!("{name} is complete in the bucket"));
    // The writer's last commit waits for a confirmation that never comes: end its session
    // (it is not acknowledged), then collect every commit that returned.
    s.pg.psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{WRITER}'"
    ))
    .unwrap();
    writer.join().unwrap();
    while let Ok(event) = events.try_recv() {
        match event {
            Event::Returned { id, after } => acked.push((id, after)),
            Event::Failed { id, error } => failure = Some(format!("commit {id}: {error}")),
        }
    }
    let n_start = n.start_lsn(seg());
    let in_n: Vec<&(u32, Lsn)> = acked
        .iter()
        .filter(|(_, after)| *after > n_start && after.segment_number(seg()) == n)
        .collect();
    let show = |c: Option<&(u32, Lsn)>| c.map_or("none".into(), |(id, at)| format!("{id} ({at})"));
    println!(
        "[{}] {} commits returned, {} of them in {name}, the last {}; {} uploads of {name} \
         cut; the writer's end: {}",
        s.name,
        acked.len(),
        in_n.len(),
        show(acked.last()),
        s.proxy.requests_cut(),
        failure.as_deref().unwrap_or("none")
    );
    assert!(
        !in_n.is_empty(),
        "no acknowledged commit in {name}: the scenario tests nothing"
    );

    let recovered =
        s.recover_from_bucket("SELECT coalesce(string_agg(id::text, ','), '') FROM acked");
    match recovered {
        Ok(r) => {
            let ids: BTreeSet<u32> = r
                .state
                .split(',')
                .filter(|id| !id.is_empty())
                .map(|id| id.parse().unwrap())
                .collect();
            let missing: Vec<&(u32, Lsn)> =
                acked.iter().filter(|(id, _)| !ids.contains(id)).collect();
            println!(
                "[{}] the bucket-only recovery holds {} rows; {} acknowledged ones missing",
                s.name,
                ids.len(),
                missing.len()
            );
            let ended = |log: &str, pat: &[&str]| -> String {
                log.lines()
                    .filter(|l| pat.iter().any(|p| l.contains(p)))
                    .map(|l| format!("\n    {}", tail(l, 300)))
                    .collect()
            };
            s.check(missing.is_empty(), || {
                format!(
                    "{} acknowledged commits are missing from the bucket-only recovery \
                     (segment {name} starts at {n_start}), from commit {} to {}; \
                     recovery:{}\n  fetch server:{}",
                    missing.len(),
                    show(missing.first().copied()),
                    show(missing.last().copied()),
                    ended(
                        &r.server_log,
                        &[
                            "redo done",
                            "last completed transaction",
                            "selected new timeline"
                        ]
                    ),
                    ended(&r.fetch_log, &[&name]),
                )
            });
        }
        Err(e) => s.fail(format!("bucket-only recovery failed: {e}")),
    }
    s.conclude();
}
