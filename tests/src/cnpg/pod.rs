//! A pod as CloudNativePG makes it, for the plugin's tests and benchmarks: its directory
//! (plugins socket, staging, the Cluster definition CNPG would send), the sidecar running as
//! PostgreSQL's OS user (as in a pod, where both containers run as uid 26), and
//! `cnpg-standin` as the instance manager PostgreSQL's `archive_command` and
//! `restore_command` run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::unix_channel;
use crate::{wait_until, AgentProcess, OsUser, PgServer};

/// A pod: its directory, readable by PostgreSQL's OS user.
pub struct Pod {
    /// The pod's name (`POD_NAME`).
    pub name: String,
    /// Its directory: `plugins/`, `staging/`, `cluster.json`, `standin.log`.
    pub dir: TempDir,
    standin: PathBuf,
}

impl Pod {
    /// A pod named `name`: `plugins/` and `staging/` owned by PostgreSQL's OS user, and a
    /// Cluster definition naming `primary` as current and target primary; `standin` is the
    /// `cnpg-standin` program its PostgreSQL runs.
    pub fn new(name: &str, primary: &str, standin: &Path) -> Pod {
        let dir = tempfile::Builder::new().prefix("pod-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
        for sub in ["plugins", "staging"] {
            let p = dir.path().join(sub);
            std::fs::create_dir(&p).unwrap();
            if let Some(u) = OsUser::for_postgres().unwrap() {
                std::os::unix::fs::chown(&p, Some(u.uid), Some(u.gid)).unwrap();
            }
        }
        let pod = Pod {
            name: name.to_string(),
            dir,
            standin: standin.to_path_buf(),
        };
        pod.set_primary(primary);
        pod.clear_calls();
        pod
    }

    /// Its `socket` path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("plugins/pgagent.io")
    }

    /// Its `staging` path.
    pub fn staging(&self) -> PathBuf {
        self.dir.path().join("staging")
    }

    /// Its `cluster_file` path.
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.path().join("cluster.json")
    }

    /// Its `standin_log` path.
    pub fn standin_log(&self) -> PathBuf {
        self.dir.path().join("standin.log")
    }

    /// The Cluster definition the pod's requests carry: `primary` is current and target.
    pub fn cluster(&self) -> Vec<u8> {
        std::fs::read(self.cluster_file()).unwrap()
    }

    /// Rewrites the Cluster definition so that `primary` is current and target primary.
    pub fn set_primary(&self, primary: &str) {
        let json = super::cluster_json("pg", primary, &[]);
        let tmp = self.dir.path().join("cluster.json.tmp");
        std::fs::write(&tmp, json).unwrap();
        std::fs::set_permissions(&tmp, PermissionsExt::from_mode(0o644)).unwrap();
        std::fs::rename(&tmp, self.cluster_file()).unwrap();
    }

    /// `archive_command = '…'` through the stand-in, timing each call into the pod's log.
    pub fn archive_command(&self) -> String {
        format!(
            "archive_command = 'CNPG_STANDIN_LOG={} {} {} {} wal-archive %p'",
            self.standin_log().display(),
            self.standin.display(),
            self.socket().display(),
            self.cluster_file().display()
        )
    }

    /// The stand-in's `restore_command` (without the setting's name), in recovery or rewind
    /// mode.
    pub fn restore_command(&self, rewind: bool) -> String {
        format!(
            "CNPG_STANDIN_LOG={} {} {} {} wal-restore %f %p{}",
            self.standin_log().display(),
            self.standin.display(),
            self.socket().display(),
            self.cluster_file().display(),
            if rewind { " rewind" } else { "" }
        )
    }

    /// Empties the stand-in's log (writable by PostgreSQL's OS user, which runs it).
    pub fn clear_calls(&self) {
        std::fs::write(self.standin_log(), "").unwrap();
        std::fs::set_permissions(self.standin_log(), PermissionsExt::from_mode(0o666)).unwrap();
    }

    /// The stand-in's calls so far: (operation, file, microseconds, gRPC code).
    pub fn calls(&self) -> Vec<(String, String, u64, String)> {
        std::fs::read_to_string(self.standin_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                Some((
                    f.first()?.to_string(),
                    f.get(1)?.to_string(),
                    f.get(2)?.parse().ok()?,
                    f.get(3)?.to_string(),
                ))
            })
            .collect()
    }

    /// The sidecar's environment for `pg`'s data directory, storing into `store_url`.
    pub fn env(
        &self,
        pg: &PgServer,
        store_url: &str,
        s3: &[(&'static str, String)],
    ) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGAGENT_STORE_URL", store_url.to_string()),
            ("PGAGENT_STAGING_DIR", self.staging().display().to_string()),
            ("PGAGENT_POSTGRES_CONNINFO", pg.conninfo("pgagent")),
            ("PGAGENT_METRICS_LISTEN", String::new()),
            ("PGAGENT_BACKUP_SCHEDULE", String::new()),
            ("PGAGENT_WAL_STATUS_INTERVAL", "1s".into()),
            (
                "PGAGENT_CNPG_PLUGINS_DIR",
                self.dir.path().join("plugins").display().to_string(),
            ),
            ("POD_NAME", self.name.clone()),
            ("PGDATA", pg.data_dir().display().to_string()),
            ("PGAGENT_LOG", "info,pgagent=debug".into()),
        ];
        env.extend(s3.iter().cloned());
        env
    }

    /// Starts `pgagent cnpg <role>` as PostgreSQL's OS user and waits for its socket.
    pub fn start(&self, role: &str, env: &[(&'static str, String)]) -> AgentProcess {
        let _ = std::fs::remove_file(self.socket());
        let user = OsUser::for_postgres().unwrap();
        let mut agent = AgentProcess::spawn_as(&["cnpg", role], env, user.as_ref());
        let socket = self.socket();
        let up = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            socket.exists() || !agent.is_running()
        });
        assert!(
            up && agent.is_running(),
            "sidecar did not start: {}",
            agent.output_text()
        );
        agent
    }

    /// What CNPG's instance manager does on each metrics scrape: `Metrics.Collect` with the
    /// Cluster definition (which tells the sidecar whether its pod is the primary).
    pub async fn scrape(&self) -> Vec<(String, f64)> {
        use pgagent_cnpgi::metrics::metrics_client::MetricsClient;
        use pgagent_cnpgi::metrics::CollectMetricsRequest;
        let got = MetricsClient::new(unix_channel(&self.socket()))
            .collect(CollectMetricsRequest {
                cluster_definition: self.cluster(),
            })
            .await
            .expect("Metrics.Collect");
        got.into_inner()
            .metrics
            .into_iter()
            .map(|m| (m.fq_name, m.value))
            .collect()
    }
}

/// Whether the server has a walsender streaming to pgagent (its slot is active).
pub fn slot_active(pg: &PgServer) -> bool {
    pg.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'pgagent'")
        .map(|o| o.trim() == "t")
        .unwrap_or(false)
}

/// `pg_stat_archiver`: (archived_count, failed_count, last_archived_wal).
pub fn archiver(pg: &PgServer) -> (u64, u64, String) {
    let out = pg
        .psql("SELECT archived_count, failed_count, coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        .unwrap();
    let f: Vec<&str> = out.trim().split('|').collect();
    (
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
        f[2].to_string(),
    )
}
