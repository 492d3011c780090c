//! Live tests of `BASE_BACKUP` against a real PostgreSQL started by `pg::Cluster`.

// The harness serves several test files; not all of them use every helper.
#[allow(dead_code)]
mod pg;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pgagent_protocol::{
    BaseBackupEvent, BaseBackupOptions, BaseBackupStream, ConnConfig, Error, ReplicationClient,
    Tablespace, TimelineId,
};

async fn connect(conninfo: &str) -> ReplicationClient {
    let cfg = ConnConfig::parse_with_env(conninfo, |name| {
        (name == "HOME").then(|| "/nonexistent".to_owned())
    })
    .unwrap();
    ReplicationClient::connect(&cfg)
        .await
        .unwrap_or_else(|e| panic!("connecting with {conninfo:?}: {e}"))
}

/// How a `backup_manifest` of a `major` server begins: version 2 (with the system identifier)
/// from PostgreSQL 17 (`src/backend/backup/backup_manifest.c`), version 1 before.
fn manifest_start(major: u32) -> &'static str {
    if major >= 17 {
        "{ \"PostgreSQL-Backup-Manifest-Version\": 2,"
    } else {
        "{ \"PostgreSQL-Backup-Manifest-Version\": 1,"
    }
}

/// One archive as received.
struct Archive {
    name: String,
    tablespace: Option<Tablespace>,
    bytes: Vec<u8>,
}

/// Everything a completed backup delivered.
#[derive(Default)]
struct Received {
    archives: Vec<Archive>,
    manifest: Vec<u8>,
    progress: Vec<u64>,
}

async fn receive_all(stream: &mut BaseBackupStream) -> Received {
    let mut r = Received::default();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("base backup stalled")
            .unwrap_or_else(|e| panic!("base backup failed: {e}"));
        match event {
            None => return r,
            Some(BaseBackupEvent::Archive { name, tablespace }) => r.archives.push(Archive {
                name,
                tablespace,
                bytes: Vec::new(),
            }),
            Some(BaseBackupEvent::ArchiveData(data)) => {
                assert!(r.manifest.is_empty(), "archive data after the manifest");
                r.archives
                    .last_mut()
                    .expect("data before the first archive")
                    .bytes
                    .extend_from_slice(&data)
            }
            Some(BaseBackupEvent::ManifestData(data)) => r.manifest.extend_from_slice(&data),
            Some(BaseBackupEvent::Progress(done)) => r.progress.push(done),
        }
    }
}

/// Reads events until the stream fails; a completed backup is a test failure.
async fn error_of(stream: &mut BaseBackupStream) -> Error {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("no error within 30 s")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the backup completed instead of failing"),
            Err(e) => return e,
        }
    }
}

/// Entries of a ustar archive as (name, content), checking the header magic
/// of each entry and the two zero blocks at the end.
fn tar_entries(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut pos = 0;
    loop {
        let header = &tar[pos..pos + 512];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        assert_eq!(
            &header[257..262],
            b"ustar",
            "no ustar magic at offset {pos}"
        );
        let field = |from: usize, to: usize| {
            let f = &header[from..to];
            let len = f.iter().position(|&b| b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..len]).into_owned()
        };
        let (name, prefix) = (field(0, 100), field(345, 500));
        let name = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let size = usize::from_str_radix(field(124, 136).trim(), 8).unwrap();
        pos += 512;
        entries.push((name, tar[pos..pos + size].to_vec()));
        pos += size.div_ceil(512) * 512;
    }
    assert!(tar.len() - pos >= 1024, "archive lacks its two end blocks");
    assert!(tar[pos..].iter().all(|&b| b == 0));
    entries
}

fn entry<'a>(entries: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    entries
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| c.as_slice())
        .unwrap_or_else(|| panic!("{name} is not in the archive"))
}

fn run(what: &str, command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown_postgres(dir: &Path) {
    if nix::unistd::geteuid().is_root() {
        run(
            "chown",
            Command::new("chown").arg("postgres:postgres").arg(dir),
        );
    }
}

#[tokio::test]
async fn base_backup_with_tablespace() {
    let pg = pg::Cluster::start();
    let ts_dir = pg.dir.path().join("ts1");
    std::fs::create_dir(&ts_dir).unwrap();
    chown_postgres(&ts_dir);
    let ts_location = ts_dir.to_str().unwrap();
    pg.psql(&format!("CREATE TABLESPACE ts1 LOCATION '{ts_location}'"));
    pg.psql("CREATE TABLE t TABLESPACE ts1 AS SELECT g FROM generate_series(1, 10000) g");
    let oid: u32 = pg
        .psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'")
        .parse()
        .unwrap();

    let client = connect(&pg.tcp("trustuser", "")).await;
    let opts = BaseBackupOptions {
        label: "pgagent's test".into(),
        fast_checkpoint: true,
        manifest: true,
        max_rate_kib: None,
        progress: true,
        incremental: false,
    };
    let mut stream = client.base_backup(&opts).await.unwrap();
    let start = stream.start_lsn();
    assert_eq!(stream.start_timeline(), TimelineId(1));
    assert_eq!(stream.end(), None);

    // The tablespace first, the data directory last; sizes because of PROGRESS.
    let spaces = stream.tablespaces().to_vec();
    assert_eq!(spaces.len(), 2, "{spaces:?}");
    assert_eq!(spaces[0].oid, Some(oid));
    assert_eq!(spaces[0].location.as_deref(), Some(ts_location));
    assert!(spaces[0].size_kib.unwrap() > 0);
    assert!(spaces[1].is_data_directory() && spaces[1].location.is_none());
    assert!(spaces[1].size_kib.unwrap() > 1000, "{spaces:?}");

    let received = receive_all(&mut stream).await;
    let (end, end_tli) = stream.end().expect("end position after the last event");
    assert!(start <= end, "start {start} after end {end}");
    assert_eq!(end_tli, TimelineId(1));

    // One archive per tablespace, named and labelled as the server lists them.
    let names: Vec<&str> = received.archives.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, [format!("{oid}.tar").as_str(), "base.tar"]);
    assert_eq!(received.archives[0].tablespace.as_ref(), Some(&spaces[0]));
    assert_eq!(received.archives[1].tablespace, None);

    // Progress (15+; 13 and 14 send none) counts all archive bytes and ends at their total.
    let major = pg.server_major();
    let total: usize = received.archives.iter().map(|a| a.bytes.len()).sum();
    assert!(received.progress.windows(2).all(|w| w[0] <= w[1]));
    let expected_progress = (major >= 15).then_some(total as u64);
    assert_eq!(received.progress.last().copied(), expected_progress);

    let base = tar_entries(&received.archives[1].bytes);
    let label = String::from_utf8(entry(&base, "backup_label").to_vec()).unwrap();
    assert!(
        label.contains(&format!("START WAL LOCATION: {start} (file ")),
        "{label}"
    );
    assert!(label.contains("START TIMELINE: 1\n"), "{label}");
    assert!(label.contains("LABEL: pgagent's test\n"), "{label}");
    let map = String::from_utf8(entry(&base, "tablespace_map").to_vec()).unwrap();
    assert_eq!(map, format!("{oid} {ts_location}\n"));
    assert_eq!(entry(&base, "PG_VERSION"), format!("{major}\n").as_bytes());
    assert_eq!(entry(&base, "global/pg_control").len(), 8192);
    let ts_entries = tar_entries(&received.archives[0].bytes);
    assert!(
        ts_entries
            .iter()
            .any(|(n, c)| n.starts_with(&format!("PG_{major}_")) && c.len() >= 8192),
        "no table file in the tablespace archive"
    );

    let manifest = String::from_utf8(received.manifest.clone()).unwrap();
    assert!(
        manifest.starts_with(manifest_start(major)),
        "{}",
        &manifest[..80.min(manifest.len())]
    );
    assert!(manifest.contains(&format!("\"Start-LSN\": \"{start}\"")));
    assert!(manifest.contains(&format!("\"End-LSN\": \"{end}\"")));

    // The archives and manifest, unpacked as pg_basebackup -Ft would be
    // restored, pass PostgreSQL's own checker byte for byte.
    let restored = pg.dir.path().join("restored");
    let ts_target = restored.join("pg_tblspc").join(oid.to_string());
    std::fs::create_dir_all(&ts_target).unwrap();
    for (archive, target) in [
        (&received.archives[0], &ts_target),
        (&received.archives[1], &restored),
    ] {
        let path = pg.dir.path().join(&archive.name);
        std::fs::write(&path, &archive.bytes).unwrap();
        run(
            "tar -x",
            Command::new("tar")
                .arg("-xf")
                .arg(&path)
                .arg("-C")
                .arg(target),
        );
    }
    std::fs::write(restored.join("backup_manifest"), &received.manifest).unwrap();
    if major >= 17 && pg.client_major() < 17 {
        // Manifest version 2: the packaged pg_verifybackup reads version 1 only.
        eprintln!(
            "pg_verifybackup {} cannot read a version 2 manifest: not run",
            pg.client_major()
        );
    } else {
        run(
            "pg_verifybackup",
            Command::new(pg.bin.join("pg_verifybackup"))
                .args(["--no-parse-wal", "--quiet"])
                .arg(&restored),
        );
    }

    // Back in command mode after the end.
    assert_eq!(stream.next().await.unwrap(), None);
    let mut client = stream.into_client();
    let id = client.identify_system().await.unwrap();
    assert!(id.xlogpos >= end);
}

#[tokio::test]
async fn concurrent_backups_cancel_and_terminate() {
    let pg = pg::Cluster::start();
    // 32 KiB/s: the two throttled backups are still running when they are interrupted.
    let slow = BaseBackupOptions {
        fast_checkpoint: true,
        manifest: false,
        max_rate_kib: Some(32),
        ..BaseBackupOptions::new("slow")
    };
    let mut cancelled = connect(&pg.tcp("trustuser", "application_name=bb_cancel"))
        .await
        .base_backup(&slow)
        .await
        .unwrap();
    let mut terminated = connect(&pg.tcp("trustuser", "application_name=bb_terminate"))
        .await
        .base_backup(&slow)
        .await
        .unwrap();
    for stream in [&mut cancelled, &mut terminated] {
        match stream.next().await.unwrap() {
            Some(BaseBackupEvent::Archive { name, .. }) => assert_eq!(name, "base.tar"),
            other => panic!("expected the first archive, got {other:?}"),
        }
    }

    // A third backup completes while both are in progress.
    let mut full = connect(&pg.tcp("trustuser", ""))
        .await
        .base_backup(&BaseBackupOptions {
            fast_checkpoint: true,
            ..BaseBackupOptions::new("concurrent")
        })
        .await
        .unwrap();
    assert_eq!(full.tablespaces().len(), 1);
    let received = receive_all(&mut full).await;
    assert_eq!(received.archives.len(), 1);
    tar_entries(&received.archives[0].bytes);
    assert!(received
        .manifest
        .starts_with(manifest_start(pg.server_major()).as_bytes()));
    assert!(full.end().unwrap().0 >= full.start_lsn());
    full.into_client().identify_system().await.unwrap();
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_stat_progress_basebackup"),
        "2"
    );

    // A cancel request is an ERROR mid-stream: typed, and the connection
    // takes commands again.
    pg.psql(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'bb_cancel'",
    );
    let e = error_of(&mut cancelled).await;
    assert_eq!(e.code(), Some("57014"), "{e}");
    assert_eq!(
        e.server_message(),
        Some("canceling statement due to user request")
    );
    assert!(!e.is_connection(), "{e}");
    assert!(
        cancelled.next().await.is_err(),
        "a failed stream stays failed"
    );
    assert_eq!(cancelled.end(), None);
    let mut client = cancelled.into_client();
    client.identify_system().await.unwrap();
    // The server ended that backup: the same session can take another one.
    let mut again = client
        .base_backup(&BaseBackupOptions {
            fast_checkpoint: true,
            manifest: false,
            ..BaseBackupOptions::new("after cancel")
        })
        .await
        .unwrap();
    let received = receive_all(&mut again).await;
    assert!(received.manifest.is_empty());
    tar_entries(&received.archives[0].bytes);
    assert!(again.end().is_some());

    // Terminating the walsender is FATAL (or, if it was blocked sending, a
    // closed connection): a connection error, and the client is unusable.
    pg.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bb_terminate'",
    );
    let e = error_of(&mut terminated).await;
    assert!(e.is_connection(), "{e}");
    assert!(matches!(e.code(), None | Some("57P01")), "{e}");
    let mut client = terminated.into_client();
    assert!(client.identify_system().await.is_err());

    // Neither interrupted backup is still reported (the terminated walsender
    // may take a moment to exit).
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql("SELECT count(*) FROM pg_stat_progress_basebackup") != "0" {
        assert!(
            Instant::now() < deadline,
            "a backup is still reported running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
