//! Streaming to two stores at once (`[[stores]]`): a `file://` store as the required one
//! (a NAS near the database) and the S3 server behind a fault-injecting proxy as the async
//! one (R2 far away). Every store is read directly, not through pgagent, and compared with
//! the server's `pg_wal` and its slot.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pgagent_protocol::{Lsn, SegNo};
use pgagent_storage::ObjectStore;
use pgagent_tests::{run_pgagent, wait_until, AgentProcess, Garage, PgServer, Proxy, ProxyMode};

/// Two stores: `nas` (required, `file://`) and `r2` (async, S3 through `proxy`).
struct TwoStores {
    dir: tempfile::TempDir,
    garage: Garage,
    proxy: Proxy,
    metrics: SocketAddr,
    config: PathBuf,
}

impl TwoStores {
    /// `r2_extra` is added to the `r2` entry (e.g. its lag policy).
    fn new(prefix: &str, r2_extra: &str) -> TwoStores {
        Self::with_roles(prefix, "", &format!("role = \"async\"\n{r2_extra}"))
    }

    /// `nas_role` goes into the `nas` entry; `r2` is `required` (the default) unless
    /// `r2_extra` says otherwise.
    fn with_roles(prefix: &str, nas_role: &str, r2_extra: &str) -> TwoStores {
        let dir = tempfile::tempdir().unwrap();
        let garage = Garage::start().expect("start Garage");
        let proxy = Proxy::start(garage.s3_addr());
        let metrics: SocketAddr = format!("127.0.0.1:{}", pgagent_tests::free_port().unwrap())
            .parse()
            .unwrap();
        let config = dir.path().join("pgagent.toml");
        std::fs::write(
            &config,
            format!(
                "[[stores]]\nname = \"nas\"\nurl = \"file://{}\"\n{nas_role}\n\
                 [[stores]]\nname = \"r2\"\nurl = \"{}\"\npartial_interval = \"2s\"\n{r2_extra}\n",
                dir.path().join("nas").display(),
                garage.store_url_via(prefix, &proxy.http_endpoint()),
            ),
        )
        .unwrap();
        TwoStores {
            dir,
            garage,
            proxy,
            metrics,
            config,
        }
    }

    fn staging(&self) -> PathBuf {
        self.dir.path().join("staging")
    }

    fn spawn(&self, pg: &PgServer) -> AgentProcess {
        self.spawn_with(pg, &[])
    }

    fn spawn_with(&self, pg: &PgServer, extra: &[(&'static str, String)]) -> AgentProcess {
        let mut env = vec![
            ("PGAGENT_POSTGRES_CONNINFO", pg.conninfo("pgagent")),
            ("PGAGENT_STAGING_DIR", self.staging().display().to_string()),
            ("PGAGENT_METRICS_LISTEN", self.metrics.to_string()),
            ("PGAGENT_WAL_PARTIAL_INTERVAL", "500ms".into()),
            ("PGAGENT_WAL_STATUS_INTERVAL", "1s".into()),
            ("PGAGENT_STORE_REQUEST_TIMEOUT", "3s".into()),
            ("PGAGENT_LOG", "info,pgagent=debug".into()),
            ("PGAGENT_BACKUP_SCHEDULE", String::new()),
        ];
        env.extend(self.garage.s3_env());
        env.extend(extra.iter().cloned());
        let config = self.config.display().to_string();
        AgentProcess::spawn(&["--config", &config, "run"], &env)
    }

    async fn nas(&self) -> Arc<dyn ObjectStore> {
        open_store(
            &format!("file://{}", self.dir.path().join("nas").display()),
            &[],
        )
        .await
    }

    /// The `r2` store read directly, past the proxy.
    async fn r2(&self, prefix: &str) -> Arc<dyn ObjectStore> {
        open_store(&self.garage.store_url(prefix), &self.garage.s3_env()).await
    }

    /// `store`'s line of `status.json`.
    fn store_status(&self, name: &str) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.staging().join("status.json")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        v["stores"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    }

    /// Writes two segments and waits until both stores hold them; returns the first
    /// segment streamed (where the stores' WAL is compared from).
    fn both_hold_some_segments(&self, pg: &PgServer, agent: &AgentProcess) -> SegNo {
        let first = lsn(&pg.switch_wal().unwrap()).segment_number(seg());
        let before = switch_segments(pg, 2);
        let both = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            ["nas", "r2"]
                .iter()
                .all(|s| self.store_uploaded(s).is_some_and(|l| l >= before))
        });
        assert!(
            both,
            "{:?}\n{}",
            self.store_status("r2"),
            agent.output_text()
        );
        first
    }

    fn store_uploaded(&self, name: &str) -> Option<Lsn> {
        self.store_status(name)?["uploaded_lsn"]
            .as_str()
            .map(|s| s.parse().unwrap())
    }
}

/// Every object under `wal/` as stored (envelopes, not opened): key → body.
async fn stored_bodies(store: &dyn ObjectStore) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for meta in store.list("wal/").await.unwrap() {
        out.insert(
            meta.key.clone(),
            store.get(&meta.key).await.unwrap().to_vec(),
        );
    }
    out
}

/// [`wal_objects`] of a store being written, as one consistent view: when an object
/// listed is gone by the time it is read (the deltas of a segment whose complete object
/// landed meanwhile), the whole store is read again, so that a view never lacks both.
async fn live_objects(store: &dyn ObjectStore) -> BTreeMap<String, Vec<u8>> {
    'again: loop {
        let mut out = BTreeMap::new();
        for meta in store.list("wal/").await.unwrap() {
            match store.get(&meta.key).await {
                Ok(body) => {
                    let raw = pgagent_storage::envelope::open(&body).unwrap();
                    out.insert(meta.key.trim_start_matches("wal/").to_string(), raw);
                }
                Err(e) if e.is_not_found() => continue 'again,
                Err(e) => panic!("{}: {e}", meta.key),
            }
        }
        return out;
    }
}

/// Writes some WAL and switches segments `n` times; returns the end of the last switch.
fn switch_segments(pg: &PgServer, n: usize) -> Lsn {
    let mut end = Lsn::INVALID;
    for i in 0..n {
        pg.psql(&format!(
            "CREATE TABLE IF NOT EXISTS churn (i int, pad text); \
             INSERT INTO churn SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g; \
             SELECT {i}"
        ))
        .unwrap();
        end = lsn(&pg.switch_wal().unwrap());
    }
    end
}

/// The end of the segment holding `l`: what a switch there makes complete.
fn segment_end(l: Lsn) -> Lsn {
    l.segment_number(seg()).end_lsn(seg())
}

/// Complete segments of `r2` are byte for byte those of `nas` (the same sealed objects,
/// copied or uploaded), `r2` has every complete segment `nas` has from `first` on, and
/// what it holds is the server's WAL.
async fn assert_r2_mirrors_nas(t: &TwoStores, prefix: &str, pg: &PgServer, first: SegNo) {
    let nas = stored_bodies(t.nas().await.as_ref()).await;
    let r2 = stored_bodies(t.r2(prefix).await.as_ref()).await;
    let mut compared = 0;
    for (key, body) in &nas {
        let name = key.trim_start_matches("wal/");
        let complete = pgagent_protocol::WalFileName::parse(name, seg()).is_some_and(
            |f| matches!(f, pgagent_protocol::WalFileName::Segment { segno, .. } if segno >= first),
        );
        if complete {
            let theirs = r2.get(key).unwrap_or_else(|| panic!("r2 lacks {key}"));
            assert!(theirs == body, "{key}: r2's object differs from nas's");
            compared += 1;
        }
    }
    assert!(compared >= 3, "only {compared} segments compared");
    let opened = wal_objects(t.r2(prefix).await.as_ref()).await;
    assert!(assert_identical_to_server(&opened, pg) >= 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_store_down_never_holds_flush_and_catches_up_byte_for_byte() {
    let t = TwoStores::new("down", "max_lag = { time = \"20s\" }\n");
    let pg = PgServer::start(Default::default()).unwrap();
    // Staging far smaller than the outage's WAL: the async store does not keep it there,
    // it copies from nas.
    let quota = ("PGAGENT_STAGING_QUOTA", "48MiB".to_string());
    let mut agent = t.spawn_with(&pg, &[quota]);
    let first = t.both_hold_some_segments(&pg, &agent);

    // R2 goes away. More segments than its queue and uploads in flight can hold.
    t.proxy.set_mode(ProxyMode::Refuse);
    let cut_at = Instant::now();
    let target = segment_end(switch_segments(&pg, 14));
    let nas = t.nas().await;
    let mut samples = 0;
    let moved = loop {
        // The slot never passes what the required store holds...
        let restart = slot_restart_lsn(&pg).expect("slot");
        let frontier = bucket_frontier(&live_objects(nas.as_ref()).await, first);
        assert!(
            restart <= frontier,
            "restart_lsn {restart} passed the nas store's end {frontier}"
        );
        samples += 1;
        // The required store's RPO stays at about two partial intervals (0.5 s each; 5 s
        // leaves room for a loaded machine).
        let rpo = scrape(t.metrics, "pgagent_store_rpo_seconds{store=\"nas\"}");
        assert!(rpo <= 5.0, "nas RPO {rpo} s while r2 was down");
        // ...and follows it, whatever R2 does (sampled for 3 s at least).
        if restart >= target && cut_at.elapsed() > Duration::from_secs(3) {
            break true;
        }
        if cut_at.elapsed() > Duration::from_secs(90) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        moved,
        "flush did not follow the required store while r2 was down\n{}",
        agent.output_text()
    );
    assert!(samples >= 2, "{samples} samples");
    let r2_end = t.store_uploaded("r2").unwrap();
    assert!(r2_end < target, "r2 was down, yet reports {r2_end}");
    let down = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        http_get(t.metrics, "/readyz").contains("store_down:r2")
    });
    assert!(down, "{}", http_get(t.metrics, "/readyz"));
    assert!(http_get(t.metrics, "/readyz").contains(" 503 "));
    assert_eq!(scrape(t.metrics, "pgagent_store_up{store=\"nas\"}"), 1.0);
    let outage = cut_at.elapsed();

    // R2 returns: it catches up, copying what it skipped from nas.
    t.proxy.set_mode(ProxyMode::Pass);
    let back = Instant::now();
    let caught_up = wait_until(Duration::from_secs(120), Duration::from_millis(200), || {
        t.store_uploaded("r2").is_some_and(|l| l >= target)
    });
    assert!(
        caught_up,
        "{:?}\n{}",
        t.store_status("r2"),
        agent.output_text()
    );
    let catch_up = back.elapsed();
    eprintln!("r2 down {outage:?}, caught up {catch_up:?} after it returned");
    assert!(
        catch_up <= outage,
        "r2 took {catch_up:?} to catch up after an outage of {outage:?}"
    );
    assert_eq!(
        scrape(t.metrics, "pgagent_staging_full"),
        0.0,
        "receiving paused"
    );
    assert!(
        scrape(t.metrics, "pgagent_store_copies_total{store=\"r2\"}") > 0.0,
        "the backlog path did not run"
    );
    let ready = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        http_get(t.metrics, "/readyz").contains(" 200 ")
    });
    assert!(ready, "{}", http_get(t.metrics, "/readyz"));
    assert_r2_mirrors_nas(&t, "down", &pg, first).await;
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

/// A required store down: sampled every 100 ms, the slot never passes what it holds
/// (read directly); when it returns it catches up, and no object it held was rewritten
/// with other bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_required_store_down_holds_the_slot_at_its_end() {
    let t = TwoStores::with_roles("req", "role = \"async\"\n", "");
    let pg = PgServer::start(Default::default()).unwrap();
    let mut agent = t.spawn(&pg);
    let first = t.both_hold_some_segments(&pg, &agent);
    let r2 = t.r2("req").await;
    let held_before = stored_bodies(r2.as_ref()).await;

    t.proxy.set_mode(ProxyMode::Refuse);
    let target = segment_end(switch_segments(&pg, 6));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut samples = 0;
    while Instant::now() < deadline {
        let restart = slot_restart_lsn(&pg).expect("slot");
        let end = bucket_frontier(&live_objects(r2.as_ref()).await, first);
        assert!(
            restart <= end,
            "restart_lsn {restart} passed the required store's end {end}"
        );
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(samples >= 20, "{samples} samples");
    assert!(
        slot_restart_lsn(&pg).unwrap() < target,
        "flush passed a required store that is down"
    );
    // The async nas store took the WAL meanwhile.
    let nas_ahead = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        t.store_uploaded("nas").is_some_and(|l| l >= target)
    });
    assert!(nas_ahead, "{:?}", t.store_status("nas"));

    t.proxy.set_mode(ProxyMode::Pass);
    let released = wait_until(Duration::from_secs(120), Duration::from_millis(200), || {
        slot_restart_lsn(&pg).is_some_and(|l| l >= target)
    });
    assert!(released, "{}", agent.output_text());
    let after = stored_bodies(r2.as_ref()).await;
    for (key, body) in &held_before {
        if let Some(now) = after.get(key) {
            assert!(now == body, "{key} was rewritten with other bytes");
        }
    }
    let opened = wal_objects(r2.as_ref()).await;
    assert!(assert_identical_to_server(&opened, &pg) >= 3);
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn hold_keeps_flush_within_max_lag_of_the_async_store() {
    let max_lag = 2 * seg().bytes();
    let t = TwoStores::new(
        "hold",
        "max_lag = { bytes = \"32MiB\" }\non_lag_exceeded = \"hold\"\n",
    );
    let pg = PgServer::start(Default::default()).unwrap();
    let mut agent = t.spawn(&pg);
    let first = t.both_hold_some_segments(&pg, &agent);

    t.proxy.set_mode(ProxyMode::Refuse);
    let target = segment_end(switch_segments(&pg, 8));
    let r2 = t.r2("hold").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut samples = 0;
    while Instant::now() < deadline {
        let restart = slot_restart_lsn(&pg).expect("slot");
        let r2_end = bucket_frontier(&live_objects(r2.as_ref()).await, first);
        assert!(
            restart.0 <= r2_end.0 + max_lag,
            "restart_lsn {restart} is more than max_lag past r2's end {r2_end}"
        );
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(samples >= 10);
    assert!(slot_restart_lsn(&pg).unwrap() < target, "hold did not hold");
    let body = http_get(t.metrics, "/readyz");
    assert!(body.contains(" 503 "), "{body}");
    assert!(
        body.contains("store_down:r2") || body.contains("store_lag:r2"),
        "{body}"
    );

    t.proxy.set_mode(ProxyMode::Pass);
    let released = wait_until(Duration::from_secs(120), Duration::from_millis(200), || {
        slot_restart_lsn(&pg).is_some_and(|l| l >= target)
    });
    assert!(released, "{}", agent.output_text());
    let caught_up = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        t.store_uploaded("r2").is_some_and(|l| l >= target)
    });
    assert!(caught_up, "{:?}", t.store_status("r2"));
    assert_r2_mirrors_nas(&t, "hold", &pg, first).await;
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_the_async_store_lags_loses_nothing_in_it() {
    let t = TwoStores::new("kill", "");
    let pg = PgServer::start(Default::default()).unwrap();
    let mut agent = t.spawn(&pg);
    let first = t.both_hold_some_segments(&pg, &agent);

    // R2 away, segments skipped for it (copied later), then the agent is killed: what R2
    // lacks is known only from its listing and its pin in nas.
    t.proxy.set_mode(ProxyMode::Refuse);
    let target = segment_end(switch_segments(&pg, 14));
    let confirmed = wait_until(Duration::from_secs(90), Duration::from_millis(200), || {
        slot_restart_lsn(&pg).is_some_and(|l| l >= target)
    });
    assert!(confirmed, "{}", agent.output_text());
    // The pin says where r2's WAL ends, at most that far.
    let pinned = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        t.dir.path().join("nas/pins/r2.json").exists()
    });
    assert!(pinned, "no pin for r2 in nas");
    agent.kill9();
    t.proxy.set_mode(ProxyMode::Pass);

    let mut agent = t.spawn(&pg);
    let caught_up = wait_until(Duration::from_secs(180), Duration::from_millis(500), || {
        t.store_uploaded("r2").is_some_and(|l| l >= target)
    });
    assert!(
        caught_up,
        "{:?}\n{}",
        t.store_status("r2"),
        agent.output_text()
    );
    assert_r2_mirrors_nas(&t, "kill", &pg, first).await;
    assert_no_gap(&wal_objects(t.r2("kill").await.as_ref()).await);
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

/// An encrypted cluster's stores share one master key. `pgagent store add` gives a new
/// store the cluster's key files and `cluster.json`; `pgagent run` does the same by itself
/// for a new store it finds; a store holding stray objects is refused by both, untouched;
/// the new stores are then filled, byte for byte the first store's objects.
#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_cluster_gives_new_stores_its_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| dir.path().join(n));
    let pg = PgServer::start(Default::default()).unwrap();
    let env = |stores: &[&std::path::Path]| {
        let config = dir.path().join("pgagent.toml");
        let toml: String = stores
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let name = p.file_name().unwrap().to_str().unwrap();
                let role = if i == 0 { "required" } else { "async" };
                format!(
                    "[[stores]]\nname = \"{name}\"\nurl = \"file://{}\"\nrole = \"{role}\"\n\n",
                    p.display()
                )
            })
            .collect();
        std::fs::write(&config, toml).unwrap();
        let env = vec![
            ("PGAGENT_POSTGRES_CONNINFO", pg.conninfo("pgagent")),
            (
                "PGAGENT_STAGING_DIR",
                dir.path().join("staging").display().to_string(),
            ),
            ("PGAGENT_METRICS_LISTEN", String::new()),
            ("PGAGENT_WAL_PARTIAL_INTERVAL", "500ms".into()),
            ("PGAGENT_BACKUP_SCHEDULE", String::new()),
            (
                "PGAGENT_ENCRYPTION_PASSPHRASE",
                "a passphrase for every store".into(),
            ),
        ];
        (config.display().to_string(), env)
    };

    // One store: it gets the cluster's master key.
    let (config, vars) = env(&[&a]);
    let mut agent = AgentProcess::spawn(&["--config", &config, "run"], &vars);
    let target = segment_end(switch_segments(&pg, 2));
    let landed = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        slot_restart_lsn(&pg).is_some_and(|l| l >= target)
    });
    assert!(landed, "{}", agent.output_text());
    assert!(agent.terminate().success(), "{}", agent.output_text());

    // `store add b`: b gets a's key file and cluster.json; a second time finds it done.
    std::fs::create_dir(&b).unwrap();
    let (config, vars) = env(&[&a, &b]);
    let out = run_pgagent(&["--config", &config, "store", "add", "b"], &vars);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("copied cluster.json and 1 key file(s) from store a"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(a.join("cluster.json")).unwrap(),
        std::fs::read(b.join("cluster.json")).unwrap()
    );
    let out = run_pgagent(&["--config", &config, "store", "add", "b"], &vars);
    assert!(
        text(&out).contains("already holds cluster"),
        "{}",
        text(&out)
    );

    // A store holding something else is not new: refused by `store add` and by `run`.
    std::fs::create_dir_all(c.join("wal")).unwrap();
    std::fs::write(c.join("wal/stray"), b"x").unwrap();
    let (config, vars) = env(&[&a, &b, &c]);
    let out = run_pgagent(&["--config", &config, "store", "add", "c"], &vars);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("is not empty (wal/stray"),
        "{}",
        text(&out)
    );
    let mut refused = AgentProcess::spawn(&["--config", &config, "run"], &vars);
    let status = refused
        .wait_timeout(Duration::from_secs(60))
        .expect("a refused start exits");
    assert_eq!(status.code(), Some(3), "{}", refused.output_text());
    assert!(!c.join("cluster.json").exists(), "c was claimed");

    // `run` with a new store d beside a and b: d is given the cluster by itself, and both
    // are filled with a's objects.
    let (config, vars) = env(&[&a, &b, &d]);
    let mut agent = AgentProcess::spawn(&["--config", &config, "run"], &vars);
    let more = segment_end(switch_segments(&pg, 1));
    let a_store = open_store(&format!("file://{}", a.display()), &[]).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let filled = loop {
        let a_keys = stored_bodies(a_store.as_ref()).await;
        let mut all = slot_restart_lsn(&pg).is_some_and(|l| l >= more);
        for other in [&b, &d] {
            let store = open_store(&format!("file://{}", other.display()), &[]).await;
            let theirs = stored_bodies(store.as_ref()).await;
            all &= a_keys
                .iter()
                .filter(|(k, _)| !k.contains(".partial"))
                .all(|(k, v)| theirs.get(k) == Some(v));
        }
        if all {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        filled,
        "b and d did not get a's segments\n{}",
        agent.output_text()
    );
    assert_eq!(
        std::fs::read(a.join("cluster.json")).unwrap(),
        std::fs::read(d.join("cluster.json")).unwrap()
    );
    assert!(
        agent
            .output_text()
            .contains("a new store of this encrypted cluster"),
        "{}",
        agent.output_text()
    );
    assert!(agent.terminate().success(), "{}", agent.output_text());
}

/// What a trickle of commits costs each store: `partial_interval` 1 s to nas and 10 s to
/// r2. Each delta is one PUT; over 30 s of a commit every 200 ms, nas gets about 30 and
/// r2 about 3 (per hour: 3,600 and 360, plus one PUT per complete segment each).
#[tokio::test(flavor = "multi_thread")]
async fn each_store_gets_deltas_at_its_own_partial_interval() {
    let t = TwoStores::new("cost", "");
    let pg = PgServer::start(Default::default()).unwrap();
    let mut agent = t.spawn_with(
        &pg,
        &[
            ("PGAGENT_WAL_PARTIAL_INTERVAL", "1s".into()),
            ("PGAGENT_STORES_R2_PARTIAL_INTERVAL", "10s".into()),
        ],
    );
    pg.psql("CREATE TABLE trickle (i int)").unwrap();
    lsn(&pg.switch_wal().unwrap());
    let (nas, r2) = (t.nas().await, t.r2("cost").await);
    let deltas = |keys: Vec<String>| -> Vec<String> {
        keys.into_iter()
            .filter(|k| k.contains(".partial.d/"))
            .collect()
    };
    let mut seen: [std::collections::BTreeSet<String>; 2] = Default::default();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(30) {
        pg.psql(&format!("INSERT INTO trickle VALUES ({i})"))
            .unwrap();
        i += 1;
        if i % 10 == 0 {
            for (set, store) in seen.iter_mut().zip([&nas, &r2]) {
                let keys = store.list("wal/").await.unwrap();
                set.extend(deltas(keys.into_iter().map(|m| m.key).collect()));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    for (set, store) in seen.iter_mut().zip([&nas, &r2]) {
        let keys = store.list("wal/").await.unwrap();
        set.extend(deltas(keys.into_iter().map(|m| m.key).collect()));
    }
    let (near, far) = (seen[0].len(), seen[1].len());
    eprintln!("30 s of trickle: {near} deltas to nas (1 s), {far} to r2 (10 s)");
    assert!((20..=40).contains(&near), "nas got {near} deltas");
    assert!((2..=6).contains(&far), "r2 got {far} deltas");
    assert!(agent.terminate().success(), "{}", agent.output_text());
}
