//! `pgagent fetch` as `restore_command`, standalone (no daemon): what reaches `%p`, and the
//! exit status PostgreSQL acts on (DESIGN.md, "fetch" and "Exit codes"): 0 delivered, 1 only
//! when the store confirms absence, 2 for a name that is not a WAL file name, 255 whenever
//! recovery must stop.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::recovery::base_backup;
use common::*;
use pgagent_protocol::{segment_file_name, SegNo, TimelineId};
use pgagent_storage::envelope;
use pgagent_tests::{
    run_pgagent, wait_until, AgentProcess, Garage, PgOptions, PgServer, Proxy, ProxyMode,
};

fn pg() -> PgServer {
    PgServer::start(PgOptions::default()).expect("start PostgreSQL")
}

fn fetch(env: &[(&str, String)], file: &str, dest: &Path) -> Output {
    run_pgagent(&["fetch", file, dest.to_str().unwrap()], env)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn name(segno: SegNo) -> String {
    segment_file_name(TimelineId(1), segno, seg())
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_from_a_store_written_by_run() {
    let pg = pg();
    let rig = Rig::fs();
    let mut agent = rig.spawn(&pg);
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g")
        .unwrap();
    let switch = lsn(&pg.switch_wal().unwrap());
    pg.psql("CREATE TABLE u AS SELECT g FROM generate_series(1, 1000) g")
        .unwrap();
    let end = lsn(&pg.current_wal_lsn().unwrap());
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());

    let objects = wal_objects(rig.store().await.as_ref()).await;
    let complete = name(switch.segment_number(seg()));
    let partial_only = name(end.segment_number(seg()));
    assert!(objects.contains_key(&complete), "{:?}", objects.keys());
    assert!(!objects.contains_key(&partial_only));
    // Held as deltas (or, by an agent from before deltas, as a .partial object).
    let raw = partial_content(&objects, end.segment_number(seg()));

    let out_dir = tempfile::tempdir().unwrap();
    let dest = out_dir.path().join("RECOVERYXLOG");
    let env = vec![
        ("PGAGENT_STORE_URL", rig.store_url.clone()),
        ("PGAGENT_FETCH_TIMEOUT", "10s".to_string()),
    ];

    // A complete segment: identical to the server's, and nothing on stderr.
    let out = fetch(&env, &complete, &dest);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "a successful fetch is quiet");
    let server = pg.wal_file(&complete).expect("segment still in pg_wal");
    assert!(
        std::fs::read(&dest).unwrap() == server,
        "{complete} differs"
    );

    // A segment stored only as partial pieces: their content, zero-padded to the segment
    // size.
    let out = fetch(&env, &partial_only, &dest);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("partial"), "{}", stderr(&out));
    let got = std::fs::read(&dest).unwrap();
    assert_eq!(got.len() as u64, SEG);
    assert!(raw.len() as u64 > 0 && (raw.len() as u64) < SEG);
    assert!(&got[..raw.len()] == raw.as_slice());
    assert!(got[raw.len()..].iter().all(|&b| b == 0));
    let server = pg.wal_file(&partial_only).unwrap();
    assert!(got[..raw.len()] == server[..raw.len()]);
    std::fs::remove_file(&dest).unwrap();

    // Confirmed absence: exit 1, nothing written.
    let missing = name(SegNo(end.segment_number(seg()).0 + 50));
    for file in [missing.as_str(), "00000002.history"] {
        let out = fetch(&env, file, &dest);
        assert_eq!(out.status.code(), Some(1), "{file}: {}", stderr(&out));
        assert!(!dest.exists());
    }

    // A hostile name never becomes a key or a path: exit 2.
    let out = fetch(&env, "../../etc/passwd", &dest);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!dest.exists());

    // A store without cluster.json is a wrong store.url, not the end of WAL: exit 255.
    let empty = tempfile::tempdir().unwrap();
    let wrong_url = format!("file://{}", empty.path().display());
    let wrong = vec![("PGAGENT_STORE_URL", wrong_url)];
    for file in [complete.as_str(), "00000002.history"] {
        let out = fetch(&wrong, file, &dest);
        assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&empty.path().display().to_string()),
            "{}",
            stderr(&out)
        );
        assert!(!dest.exists());
    }

    // A corrupted object: exit 255 naming the segment, nothing at %p, no temporary file.
    let stored = rig.dir.path().join("store/wal").join(&complete);
    let mut body = std::fs::read(&stored).unwrap();
    let at = body.len() - 100;
    body[at] ^= 0x55;
    std::fs::write(&stored, body).unwrap();
    let out = fetch(&env, &complete, &dest);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(stderr(&out).contains(&complete), "{}", stderr(&out));
    assert!(
        entries(out_dir.path()).is_empty(),
        "{:?}",
        entries(out_dir.path())
    );
}

/// A store reached through a proxy: unreachable past `fetch.timeout` gives 255; back in
/// time, the fetch completes.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_store_aborts_after_the_timeout_or_recovers() {
    let garage = Garage::start().expect("start Garage");
    let store = open_store(&garage.store_url("fetch"), &garage.s3_env()).await;
    store
        .put(
            "cluster.json",
            Bytes::from(cluster_json("7000000000000000001")),
        )
        .await
        .unwrap();
    let raw: Vec<u8> = (0..SEG).map(|i| (i % 251) as u8).collect();
    let segment = name(SegNo(1));
    store
        .put(&format!("wal/{segment}"), envelope::seal(&raw, 3).body)
        .await
        .unwrap();

    let proxy = Proxy::start(garage.s3_addr());
    let mut env = garage.s3_env();
    env.push((
        "PGAGENT_STORE_URL",
        garage.store_url_via("fetch", &proxy.http_endpoint()),
    ));
    let out_dir = tempfile::tempdir().unwrap();
    let dest = out_dir.path().join("RECOVERYXLOG");

    // Reachable: delivered.
    let out = fetch(&env, &segment, &dest);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == raw);
    std::fs::remove_file(&dest).unwrap();

    // Unreachable for longer than fetch.timeout: 255, never 1, nothing written.
    proxy.set_mode(ProxyMode::Refuse);
    let mut short = env.clone();
    short.push(("PGAGENT_FETCH_TIMEOUT", "3s".into()));
    let started = Instant::now();
    let out = fetch(&short, &segment, &dest);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(30),
        "gave up after {took:?}"
    );
    assert!(stderr(&out).contains("fetch.timeout"), "{}", stderr(&out));
    assert!(entries(out_dir.path()).is_empty());

    // A store that accepts connections and never answers (a hang, not a refusal) is bounded
    // by fetch.timeout too.
    proxy.set_mode(ProxyMode::Blackhole);
    let started = Instant::now();
    let out = fetch(&short, &segment, &dest);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(
        took < Duration::from_secs(30),
        "a hung store held fetch for {took:?}"
    );
    assert!(entries(out_dir.path()).is_empty());
    proxy.set_mode(ProxyMode::Refuse);

    // Back before the timeout: the fetch waits, then delivers.
    let mut long = env.clone();
    long.push(("PGAGENT_FETCH_TIMEOUT", "60s".into()));
    let mut waiting = AgentProcess::spawn(&["fetch", &segment, dest.to_str().unwrap()], &long);
    std::thread::sleep(Duration::from_secs(2));
    assert!(waiting.is_running(), "{}", waiting.output_text());
    proxy.set_mode(ProxyMode::Pass);
    let status = waiting
        .wait_timeout(Duration::from_secs(60))
        .expect("fetch finished");
    assert!(status.success(), "{status:?}\n{}", waiting.output_text());
    assert!(std::fs::read(&dest).unwrap() == raw);
}

/// A `pg_basebackup -X none` copy recovers to the end of the WAL in the store, every segment
/// delivered by `restore_command = 'pgagent fetch %f %p'`.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_to_the_end_through_restore_command() {
    let mut primary = pg();
    let rig = Rig::fs();
    let mut agent = rig.spawn(&primary);
    let start = lsn(&primary.current_wal_lsn().unwrap());
    rig.wait_uploaded(&agent, start, Duration::from_secs(60));

    let mut restore = PgServer::without_cluster(PgOptions::default()).unwrap();
    base_backup(&primary, &restore.data_dir());

    primary
        .psql(
            "CREATE TABLE t (id int, v bigint); \
             INSERT INTO t SELECT g, g * 7 FROM generate_series(1, 200000) g",
        )
        .unwrap();
    let expected = primary.psql("SELECT count(*), sum(v) FROM t").unwrap();
    let end = lsn(&primary.current_wal_lsn().unwrap());
    primary.switch_wal().unwrap();
    rig.wait_uploaded(&agent, end, Duration::from_secs(60));
    assert!(agent.terminate().success(), "{}", agent.output_text());
    primary.stop().unwrap();

    // PostgreSQL runs restore_command as its own OS user with the server's environment:
    // the store must be readable by it, and the settings come from a file.
    let chmod = Command::new("chmod")
        .arg("-R")
        .arg("a+rX")
        .arg(rig.dir.path())
        .status()
        .unwrap();
    assert!(chmod.success());
    let config = rig.dir.path().join("fetch.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"{}\"\n\n[fetch]\ntimeout = \"30s\"\n",
            rig.store_url
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let bin: PathBuf = pgagent_tests::pgagent_bin().canonicalize().unwrap();
    std::fs::write(restore.data_dir().join("recovery.signal"), "").unwrap();
    restore
        .append_conf(&[&format!(
            "restore_command = '{} --config {} fetch %f %p'",
            bin.display(),
            config.display()
        )])
        .unwrap();
    restore.start_server().unwrap();

    let promoted = wait_until(Duration::from_secs(120), Duration::from_millis(300), || {
        restore
            .psql("SELECT pg_is_in_recovery()")
            .is_ok_and(|s| s.trim() == "f")
    });
    assert!(promoted, "recovery did not finish\n{}", restore.log_tail());
    assert_eq!(
        restore.psql("SELECT count(*), sum(v) FROM t").unwrap(),
        expected
    );
    let log = std::fs::read_to_string(restore.log_file()).unwrap();
    assert!(
        log.contains("restored log file \"") && log.contains("from archive"),
        "{}",
        restore.log_tail()
    );
}

/// PostgreSQL's stderr may be a pipe whose reader is gone (a logging collector that died):
/// writing the error message then fails. The exit status must still say what happened, and
/// never be Rust's 101 for a panic, which PostgreSQL reads as "not found" and so ends
/// recovery early.
#[test]
fn the_exit_status_survives_a_broken_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let dest = dir.path().join("RECOVERYXLOG");
    let fetch_into_broken_pipe = |store: &Path, file: &str| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        Command::new(pgagent_tests::pgagent_bin())
            .args(["fetch", file, dest.to_str().unwrap()])
            .env_clear()
            .env("PGAGENT_STORE_URL", format!("file://{}", store.display()))
            .env("PGAGENT_STAGING_DIR", &staging)
            .env("PGAGENT_FETCH_TIMEOUT", "5s")
            .env("PGAGENT_FETCH_IDLE_TIMEOUT", "1s")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(writer)
            .status()
            .unwrap()
    };

    // A store without cluster.json is a wrong store.url: recovery must stop.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let status = fetch_into_broken_pipe(&empty, &name(SegNo(1)));
    assert_eq!(status.code(), Some(255), "{status:?}");

    // This cluster's store without the segment: confirmed absent.
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    write_cluster_json(&store, "7000000000000000003");
    let status = fetch_into_broken_pipe(&store, &name(SegNo(1)));
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(!dest.exists());
}
