//! Shared set-up of the streaming tests: a PostgreSQL server, a staging directory, a store,
//! and a `pgagent run` wired to them.

#![allow(dead_code)]

pub mod cnpg;
pub mod drill;
pub mod faults;
pub mod ledger;
pub mod recovery;
pub mod soak;
pub mod two_stores;
pub mod zfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use pgagent_protocol::{Lsn, SegNo, WalFileName, WalSegmentSize};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::deltas::{assemble, Delta, Piece};
use pgagent_storage::{envelope, ObjectStore, StoreOptions};
use pgagent_tests::{wait_until, AgentProcess, PgServer};
use tempfile::TempDir;

/// Segment size of the test clusters (initdb's default).
pub const SEG: u64 = 16 << 20;

pub fn seg() -> WalSegmentSize {
    WalSegmentSize::new(SEG).unwrap()
}

/// Where an agent keeps its files, and how it reaches the store.
pub struct Rig {
    pub dir: TempDir,
    pub store_url: String,
    pub extra_env: Vec<(&'static str, String)>,
}

impl Rig {
    /// A rig storing into a `file://` store under its own directory.
    pub fn fs() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store_url = format!("file://{}", dir.path().join("store").display());
        Rig {
            dir,
            store_url,
            extra_env: Vec::new(),
        }
    }

    /// A rig storing into an S3 URL with the given credentials.
    pub fn s3(store_url: String, env: Vec<(&'static str, String)>) -> Rig {
        Rig {
            dir: tempfile::tempdir().unwrap(),
            store_url,
            extra_env: env,
        }
    }

    pub fn staging(&self) -> PathBuf {
        self.dir.path().join("staging")
    }

    /// The environment of an agent streaming from `pg` as the SCRAM replication user.
    pub fn env(&self, pg: &PgServer) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGAGENT_POSTGRES_CONNINFO", pg.conninfo("pgagent")),
            ("PGAGENT_STAGING_DIR", self.staging().display().to_string()),
            ("PGAGENT_STORE_URL", self.store_url.clone()),
            ("PGAGENT_METRICS_LISTEN", String::new()),
            ("PGAGENT_WAL_PARTIAL_INTERVAL", "500ms".into()),
            ("PGAGENT_WAL_STATUS_INTERVAL", "1s".into()),
            ("PGAGENT_LOG", "info,pgagent=debug".into()),
            // No scheduled base backup in the middle of a test (tests set their own).
            ("PGAGENT_BACKUP_SCHEDULE", String::new()),
        ];
        env.extend(self.extra_env.iter().cloned());
        env
    }

    pub fn spawn(&self, pg: &PgServer) -> AgentProcess {
        self.spawn_with(pg, &[])
    }

    /// [`Rig::spawn`], then waits (up to 60 s) until the server's current WAL position is
    /// in the store.
    pub fn spawn_caught_up(&self, pg: &PgServer) -> AgentProcess {
        let agent = self.spawn(pg);
        let now = lsn(&pg.current_wal_lsn().unwrap());
        self.wait_uploaded(&agent, now, Duration::from_secs(60));
        agent
    }

    pub fn spawn_with(&self, pg: &PgServer, extra: &[(&'static str, String)]) -> AgentProcess {
        let mut env = self.env(pg);
        env.extend(extra.iter().cloned());
        AgentProcess::spawn(&["run"], &env)
    }

    /// The daemon's published state.
    pub fn status(&self) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.staging().join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn status_lsn(&self, field: &str) -> Option<Lsn> {
        self.status()?[field]
            .as_str()
            .and_then(|s| Lsn::from_str(s).ok())
    }

    /// Waits until the agent reports WAL up to `target` durable in the bucket. Only `agent`'s
    /// own status counts: after a restart the file holds the previous process's last word
    /// until the new one writes.
    pub fn wait_uploaded(&self, agent: &AgentProcess, target: Lsn, timeout: Duration) {
        self.wait_status(agent, "uploaded_lsn", target, timeout);
    }

    /// Waits until the agent reports WAL up to `target` received from the server (sent to
    /// it, whether or not it is in the bucket yet); `agent`'s own status only, as
    /// [`Rig::wait_uploaded`].
    pub fn wait_received(&self, agent: &AgentProcess, target: Lsn, timeout: Duration) {
        self.wait_status(agent, "received_lsn", target, timeout);
    }

    fn wait_status(&self, agent: &AgentProcess, field: &str, target: Lsn, timeout: Duration) {
        let ok = wait_until(timeout, Duration::from_millis(200), || {
            let mine = self
                .status()
                .is_some_and(|s| s["pid"].as_u64() == Some(u64::from(agent.pid())));
            mine && self.status_lsn(field).is_some_and(|l| l >= target)
        });
        assert!(
            ok,
            "agent's {field} did not reach {target} within {timeout:?}; status {:?}\n{}",
            self.status(),
            agent.output_text()
        );
    }

    pub async fn store(&self) -> Arc<dyn ObjectStore> {
        open_store(&self.store_url, &self.extra_env).await
    }
}

/// Opens a store the way the agent does; S3 credentials come from `env`.
pub async fn open_store(url: &str, env: &[(&'static str, String)]) -> Arc<dyn ObjectStore> {
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let opts = StoreOptions {
        access_key_id: get("AWS_ACCESS_KEY_ID"),
        secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
        ..Default::default()
    };
    pgagent_storage::open(url, &opts).await.unwrap()
}

pub fn lsn(s: &str) -> Lsn {
    Lsn::from_str(s.trim()).unwrap()
}

/// Every WAL object of the store, opened and verified: file name → raw bytes.
pub async fn wal_objects(store: &dyn ObjectStore) -> BTreeMap<String, Vec<u8>> {
    wal_objects_with(store, None).await
}

/// [`wal_objects`] of a store whose objects are sealed with `cipher` (`None`: plaintext).
pub async fn wal_objects_with(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for meta in store.list("wal/").await.unwrap() {
        let body = store.get(&meta.key).await.unwrap();
        let raw = envelope::open_for(&body, cipher, &meta.key)
            .unwrap_or_else(|e| panic!("{}: {e}", meta.key));
        out.insert(meta.key.trim_start_matches("wal/").to_string(), raw);
    }
    out
}

/// End of the WAL in the store that is contiguous from `first` (complete segments, then the
/// run of deltas, or the older `.partial`, of the next one), computed from the objects
/// themselves.
pub fn bucket_frontier(objects: &BTreeMap<String, Vec<u8>>, first: SegNo) -> Lsn {
    let complete: std::collections::BTreeSet<SegNo> =
        complete_segments(objects).into_iter().collect();
    let mut next = first;
    while complete.contains(&next) {
        next = next.next();
    }
    let pieces: Vec<Piece> = objects
        .iter()
        .filter_map(|(name, raw)| match stored_piece(name, raw)? {
            (segno, piece) if segno == next => Some(piece),
            _ => None,
        })
        .collect();
    next.start_lsn(seg()) + assemble(&pieces).end
}

/// Key of the delta holding bytes `[start, end)` of segment `segno` of timeline 1.
pub fn delta_key(segno: u64, start: u64, end: u64) -> String {
    Delta {
        tli: pgagent_protocol::TimelineId(1),
        segno: SegNo(segno),
        start,
        end,
    }
    .key(seg())
}

/// A delta, or an older whole-prefix `.partial`, as the segment it belongs to and the piece
/// of it that it holds (`name` is the key without `wal/`).
pub fn stored_piece(name: &str, raw: &[u8]) -> Option<(SegNo, Piece)> {
    if let Some(d) = Delta::parse_key(&format!("wal/{name}"), seg()) {
        return Some((d.segno, Piece::delta(&d, seg())));
    }
    match WalFileName::parse(name, seg()) {
        Some(WalFileName::Partial { segno, .. }) => Some((
            segno,
            Piece {
                key: format!("wal/{name}"),
                start: 0,
                end: raw.len() as u64,
            },
        )),
        _ => None,
    }
}

/// Asserts that every segment in the store is byte-identical to the server's own copy in
/// `pg_wal`, and every delta (or older `.partial`) to the same bytes of it. Returns the
/// number of complete segments compared.
pub fn assert_identical_to_server(objects: &BTreeMap<String, Vec<u8>>, pg: &PgServer) -> usize {
    let mut compared = 0;
    for (name, raw) in objects {
        if let Some((segno, piece)) = stored_piece(name, raw) {
            let stem = pgagent_protocol::segment_file_name(
                pgagent_protocol::TimelineId(u32::from_str_radix(&name[..8], 16).unwrap()),
                segno,
                seg(),
            );
            if let Some(server) = pg.wal_file(&stem) {
                let (from, to) = (piece.start as usize, piece.end as usize);
                assert!(
                    raw.len() == to - from && to <= server.len() && raw[..] == server[from..to],
                    "{name}: differs from the server's {stem}"
                );
            }
            continue;
        }
        if let Some(WalFileName::Segment { .. }) = WalFileName::parse(name, seg()) {
            let server = pg
                .wal_file(name)
                .unwrap_or_else(|| panic!("{name} is no longer in the server's pg_wal"));
            assert_eq!(raw.len(), server.len(), "{name}: size differs");
            assert!(
                raw == &server,
                "{name}: content differs from the server's pg_wal"
            );
            compared += 1;
        }
    }
    compared
}

/// The segments of `objects` (complete ones) in order, and the first missing one after the
/// run that starts at the lowest.
pub fn complete_segments(objects: &BTreeMap<String, Vec<u8>>) -> Vec<SegNo> {
    objects
        .keys()
        .filter_map(|n| match WalFileName::parse(n, seg()) {
            Some(WalFileName::Segment { segno, .. }) => Some(segno),
            _ => None,
        })
        .collect()
}

/// Asserts the complete segments form one run with no gap.
pub fn assert_no_gap(objects: &BTreeMap<String, Vec<u8>>) {
    let segs = complete_segments(objects);
    assert!(!segs.is_empty(), "no complete segment in the store");
    for w in segs.windows(2) {
        assert_eq!(
            w[1].0,
            w[0].0 + 1,
            "gap between segments {:?} and {:?}",
            w[0],
            w[1]
        );
    }
}

/// The slot's `restart_lsn`.
pub fn slot_restart_lsn(pg: &PgServer) -> Option<Lsn> {
    let out = pg
        .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pgagent'")
        .unwrap();
    let out = out.trim();
    (!out.is_empty()).then(|| lsn(out))
}

pub fn staging_path(rig: &Rig, name: &str) -> PathBuf {
    rig.staging().join("wal").join(name)
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// The body of `GET path` over plain HTTP/1.0 (with the status line and headers).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Reads one sample from `/metrics`.
pub fn scrape(addr: std::net::SocketAddr, name: &str) -> f64 {
    let body = http_get(addr, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} not in\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

/// Standard output then standard error of a finished command, for assertions.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `cluster.json` of a made-up cluster with `system_identifier`, 16 MiB segments.
pub fn cluster_json(system_identifier: &str) -> Vec<u8> {
    let info = pgagent_storage::cluster::ClusterInfo {
        format_version: pgagent_storage::cluster::STORE_FORMAT_VERSION,
        system_identifier: system_identifier.into(),
        pg_version_num: 150000,
        wal_segment_size: SEG,
        created_at: "2024-01-01T00:00:00Z".into(),
        encryption: None,
    };
    serde_json::to_vec(&info).unwrap()
}

/// Writes that `cluster.json` into the `file://` store directory `store`.
pub fn write_cluster_json(store: &Path, system_identifier: &str) {
    std::fs::write(store.join("cluster.json"), cluster_json(system_identifier)).unwrap();
}

/// The WAL the store holds of segment `segno` without a complete object: its pieces
/// (deltas, or an older `.partial`, see [`stored_piece`]) put together from its start up
/// to the first hole (`pgagent_storage::deltas::assemble`, the rule fetch serves by).
/// Empty when it has none.
pub fn partial_content(objects: &BTreeMap<String, Vec<u8>>, segno: SegNo) -> Vec<u8> {
    let pieces: Vec<(Piece, &[u8])> = objects
        .iter()
        .filter_map(|(name, raw)| match stored_piece(name, raw)? {
            (s, piece) if s == segno => Some((piece, &raw[..])),
            _ => None,
        })
        .collect();
    let listed: Vec<Piece> = pieces.iter().map(|(p, _)| p.clone()).collect();
    let mut out = Vec::new();
    for t in assemble(&listed).takes {
        let (p, raw) = pieces
            .iter()
            .find(|(p, _)| *p == t.piece)
            .expect("a take is one of the pieces");
        out.extend_from_slice(&raw[(t.from - p.start) as usize..(t.to - p.start) as usize]);
    }
    out
}

/// The manifest of a complete backup `id` of cluster `system_identifier` on timeline 1,
/// starting (and stopping) at `start_lsn`, with no files: enough for the commands that read
/// manifests for their WAL positions (prune, verify).
pub fn complete_manifest(
    id: &str,
    start_lsn: &str,
    system_identifier: &str,
) -> pgagent_storage::manifest::BackupManifest {
    use pgagent_storage::manifest::{BackupManifest, BackupStatus};
    BackupManifest {
        status: BackupStatus::Complete,
        system_identifier: system_identifier.into(),
        pg_version_num: 150000,
        label: format!("pgagent {id}"),
        start_lsn: start_lsn.into(),
        start_timeline: 1,
        stop_lsn: Some(start_lsn.into()),
        stop_timeline: Some(1),
        started_at: "2026-11-01T03:00:00Z".into(),
        finished_at: Some("2026-11-01T03:01:00Z".into()),
        chunk_size: 1 << 20,
        backup_label: "START WAL LOCATION: x\n".into(),
        ..BackupManifest::announced(id)
    }
}
