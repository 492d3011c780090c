//! Two stores for the streaming tests of `[[stores]]`: `nas` (required, a `file://` store)
//! and `r2` (async, the S3 server behind a fault-injecting proxy), with the agent's
//! configuration and metrics; and the helpers that read both stores directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pgagent_protocol::{Lsn, SegNo};
use pgagent_storage::ObjectStore;
use pgagent_tests::{wait_until, AgentProcess, Garage, PgServer, Proxy};

use super::*;

/// Two stores: `nas` (required, `file://`) and `r2` (async, S3 through `proxy`).
pub struct TwoStores {
    pub dir: tempfile::TempDir,
    pub garage: Garage,
    pub proxy: Proxy,
    pub metrics: SocketAddr,
    pub config: PathBuf,
}

impl TwoStores {
    /// `r2_extra` is added to the `r2` entry (e.g. its lag policy).
    pub fn new(prefix: &str, r2_extra: &str) -> TwoStores {
        Self::with_roles(prefix, "", &format!("role = \"async\"\n{r2_extra}"))
    }

    /// `nas_role` goes into the `nas` entry; `r2` is `required` (the default) unless
    /// `r2_extra` says otherwise.
    pub fn with_roles(prefix: &str, nas_role: &str, r2_extra: &str) -> TwoStores {
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

    pub fn staging(&self) -> PathBuf {
        self.dir.path().join("staging")
    }

    pub fn spawn(&self, pg: &PgServer) -> AgentProcess {
        self.spawn_with(pg, &[])
    }

    pub fn spawn_with(&self, pg: &PgServer, extra: &[(&'static str, String)]) -> AgentProcess {
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

    pub async fn nas(&self) -> Arc<dyn ObjectStore> {
        open_store(
            &format!("file://{}", self.dir.path().join("nas").display()),
            &[],
        )
        .await
    }

    /// The `r2` store read directly, past the proxy.
    pub async fn r2(&self, prefix: &str) -> Arc<dyn ObjectStore> {
        open_store(&self.garage.store_url(prefix), &self.garage.s3_env()).await
    }

    /// `store`'s line of `status.json`.
    pub fn store_status(&self, name: &str) -> Option<serde_json::Value> {
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
    pub fn both_hold_some_segments(&self, pg: &PgServer, agent: &AgentProcess) -> SegNo {
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

    pub fn store_uploaded(&self, name: &str) -> Option<Lsn> {
        self.store_status(name)?["uploaded_lsn"]
            .as_str()
            .map(|s| s.parse().unwrap())
    }
}

/// Every object under `wal/` as stored (envelopes, not opened): key → body.
pub async fn stored_bodies(store: &dyn ObjectStore) -> BTreeMap<String, Vec<u8>> {
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
pub async fn live_objects(store: &dyn ObjectStore) -> BTreeMap<String, Vec<u8>> {
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
pub fn switch_segments(pg: &PgServer, n: usize) -> Lsn {
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
pub fn segment_end(l: Lsn) -> Lsn {
    l.segment_number(seg()).end_lsn(seg())
}

/// Complete segments of `r2` are byte for byte those of `nas` (the same sealed objects,
/// copied or uploaded), `r2` has every complete segment `nas` has from `first` on, and
/// what it holds is the server's WAL.
pub async fn assert_r2_mirrors_nas(t: &TwoStores, prefix: &str, pg: &PgServer, first: SegNo) {
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
