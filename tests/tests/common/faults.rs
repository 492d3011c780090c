//! The frame of the fault scenarios (`tests/tests/faults_*.rs`): PostgreSQL with pgbench
//! tables, Garage behind the fault proxy, `pgagent run`, a base backup taken before the
//! faults, the bucket watcher, and at the end a bucket-only recovery (`pgagent restore
//! --target latest` onto an empty directory) that must hold exactly the server's data.
//!
//! Checks after the faults are collected rather than asserted one by one, so a failing run
//! reports every broken promise (and the recovery's verdict) at once.

use std::path::Path;
use std::time::{Duration, Instant};

use pgagent_protocol::Lsn;
use pgagent_storage::crypto::Passphrase;
use pgagent_storage::StoreOptions;
use pgagent_tests::watcher::{WatchReport, WatchTarget, Watcher};
use pgagent_tests::{run_pgagent, AgentProcess, Garage, PgOptions, PgServer, Proxy};

use super::recovery::{fetch_config, wait_promoted};
use super::{lsn, text, Rig};

/// pgbench scale of every scenario (about 30 MB of tables).
pub const SCALE: u32 = 2;
/// How long the agent gets to bring the bucket up to the server once the faults are over.
pub const CATCH_UP: Duration = Duration::from_secs(180);
/// The line PostgreSQL logs when it drops a standby that stayed silent past
/// `wal_sender_timeout` (src/backend/replication/walsender.c, `WalSndCheckTimeOut`).
pub const WALSENDER_TIMEOUT_LINE: &str = "terminating walsender process due to replication timeout";
/// What the agent logs when the store holds other content under a WAL object's name.
const CONFLICT_LINE: &str = "WAL object conflict";

/// Row counts and checksums of the pgbench tables (rows in key order), one line.
pub const PGBENCH_STATE_SQL: &str = "SELECT concat_ws(' | ', \
    (SELECT count(*) || ' accounts ' || md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts), \
    (SELECT count(*) || ' tellers ' || md5(string_agg(tid || ':' || tbalance, ',' ORDER BY tid)) FROM pgbench_tellers), \
    (SELECT count(*) || ' branches ' || md5(string_agg(bid || ':' || bbalance, ',' ORDER BY bid)) FROM pgbench_branches), \
    (SELECT count(*) || ' history ' || md5(coalesce(string_agg(concat_ws(':', tid, bid, aid, delta, extract(epoch FROM mtime)), ',' \
        ORDER BY tid, bid, aid, delta, mtime), '')) FROM pgbench_history), \
    (SELECT count(*) || ' filler ' || coalesce(sum(length(pad)), 0) FROM filler))";

/// The pgbench tables' state (see [`PGBENCH_STATE_SQL`]).
pub fn pgbench_state(pg: &PgServer) -> String {
    pg.psql(PGBENCH_STATE_SQL).unwrap()
}

/// Minimum work the watcher must have done for its silence to mean something.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// Rounds that compared the slot with the bucket.
    pub min_rounds: u64,
    /// Objects (segments and partial versions) compared with `pg_wal`.
    pub min_compared: u64,
}

/// What a bucket-only recovery ([`Scenario::recover_from_bucket`]) ended with.
pub struct Recovered {
    /// What the state query read on the recovered server.
    pub state: String,
    /// The recovered server's log.
    pub server_log: String,
    /// The logs of the restore-mode fetch servers that answered `restore_command`.
    pub fetch_log: String,
    /// The recovered server, still running.
    pub server: PgServer,
}

/// One scenario's servers, agent settings and findings.
pub struct Scenario {
    pub name: &'static str,
    pub started: Instant,
    pub garage: Garage,
    /// In front of Garage's S3 port; the agent's store URL goes through it.
    pub proxy: Proxy,
    pub pg: PgServer,
    /// The agent's files and environment (store through the proxy).
    pub rig: Rig,
    prefix: String,
    /// The store's encryption passphrase, if any (see [`Scenario::encrypt`]).
    passphrase: Option<String>,
    /// The query whose answer the bucket-only recovery must give as the server does (default
    /// [`PGBENCH_STATE_SQL`]).
    pub state_sql: String,
    /// Output of agent processes that were killed or stopped.
    logs: Vec<String>,
    failures: Vec<String>,
}

impl Scenario {
    /// Garage, the proxy, PostgreSQL with `opts`, pgbench tables at [`SCALE`] and an empty
    /// `filler(id, pad)` table.
    pub fn start(name: &'static str, opts: PgOptions) -> Scenario {
        let started = Instant::now();
        let garage = Garage::start().expect("start Garage");
        let proxy = Proxy::start(garage.s3_addr());
        let pg = PgServer::start(opts).expect("start PostgreSQL");
        let version = pg.server_version_num().unwrap();
        println!("[{name}] PostgreSQL {version}");
        pg.pgbench_init(SCALE).unwrap();
        pg.psql("CREATE TABLE filler (id bigserial PRIMARY KEY, pad text)")
            .unwrap();
        let prefix = name.replace('_', "-");
        let rig = Rig::s3(
            garage.store_url_via(&prefix, &proxy.http_endpoint()),
            garage.s3_env(),
        );
        Scenario {
            name,
            started,
            garage,
            proxy,
            pg,
            rig,
            prefix,
            passphrase: None,
            state_sql: PGBENCH_STATE_SQL.to_owned(),
            logs: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// The path of object `key` of the store (`wal/…`) in the agent's S3 requests, which
    /// address objects path-style: `/<bucket>/<prefix>/<key>`.
    pub fn object_path(&self, key: &str) -> String {
        format!("/{}/{}/{key}", self.garage.bucket(), self.prefix)
    }

    /// Makes every agent and command of the scenario (and the watcher, and the recovery)
    /// use `passphrase` (`PGAGENT_ENCRYPTION_PASSPHRASE`): the store is encrypted. Call it
    /// before the first agent starts.
    pub fn encrypt(&mut self, passphrase: &str) {
        self.rig
            .extra_env
            .push(("PGAGENT_ENCRYPTION_PASSPHRASE", passphrase.to_owned()));
        self.passphrase = Some(passphrase.to_owned());
    }

    /// The store's cipher, unlocked by the test itself (`None` for a plaintext store).
    pub async fn cipher(
        &self,
        store: &dyn pgagent_storage::ObjectStore,
    ) -> Option<pgagent_storage::crypto::ObjectCipher> {
        let passphrase = Passphrase::new(self.passphrase.as_deref()?).unwrap();
        pgagent_storage::keyring::access::reader_cipher(
            store,
            Some(&passphrase),
            Default::default(),
        )
        .await
        .unwrap()
    }

    /// The store URL straight to Garage, bypassing the proxy.
    pub fn direct_store_url(&self) -> String {
        self.garage.store_url(&self.prefix)
    }

    /// `pgagent run` with the rig's environment plus `extra`.
    pub fn spawn_agent(&self, extra: &[(&'static str, String)]) -> AgentProcess {
        self.rig.spawn_with(&self.pg, extra)
    }

    /// [`Scenario::spawn_agent`], then waits until the server's current position is in the
    /// bucket, so the slot and the bucket start out in step.
    pub fn spawn_caught_up(&self, extra: &[(&'static str, String)]) -> AgentProcess {
        let agent = self.spawn_agent(extra);
        let now = lsn(&self.pg.current_wal_lsn().unwrap());
        self.rig.wait_uploaded(&agent, now, Duration::from_secs(60));
        agent
    }

    /// `pgagent backup --fast` while the agent streams: the base backup the final recovery
    /// starts from, so it replays all the WAL written during the faults.
    pub fn backup(&self) {
        let out = run_pgagent(&["backup", "--fast"], &self.rig.env(&self.pg));
        assert!(out.status.success(), "pgagent backup: {}", text(&out));
    }

    /// Starts the bucket watcher on this server and the bucket (read directly).
    pub fn watch(&self) -> Watcher {
        let env = self.garage.s3_env();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let opts = StoreOptions {
            access_key_id: get("AWS_ACCESS_KEY_ID"),
            secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
            ..StoreOptions::default()
        };
        let mut target = WatchTarget::new(&self.pg, &self.direct_store_url(), opts).unwrap();
        target.passphrase = self
            .passphrase
            .as_deref()
            .map(|p| Passphrase::new(p).unwrap());
        Watcher::start(target)
    }

    /// Bytes of every file under the agent's staging directory.
    pub fn staging_bytes(&self) -> u64 {
        dir_bytes(&self.rig.staging())
    }

    /// Kills an agent (SIGKILL) and keeps its output for the final checks.
    pub fn kill(&mut self, mut agent: AgentProcess) {
        if let Some(status) = agent.try_status() {
            self.fail(format!(
                "the agent exited by itself ({status}) before it was killed:\n{}",
                tail(&agent.output_text(), 4000)
            ));
        }
        agent.kill9();
        self.logs.push(agent.output_text());
    }

    /// Stops an agent cleanly (SIGTERM, waiting for its exit) and keeps its output; a
    /// failure unless it was still running and exited with success.
    pub fn stop_cleanly(&mut self, mut agent: AgentProcess) {
        if let Some(status) = agent.try_status() {
            self.fail(format!(
                "the agent exited by itself ({status}) before it was stopped:\n{}",
                tail(&agent.output_text(), 4000)
            ));
        }
        let status = agent.terminate();
        if !status.success() {
            self.fail(format!(
                "the agent did not stop cleanly on SIGTERM ({status}):\n{}",
                tail(&agent.output_text(), 4000)
            ));
        }
        self.logs.push(agent.output_text());
    }

    /// Records a failed check; the scenario fails at [`Scenario::conclude`].
    pub fn fail(&mut self, msg: String) {
        println!("[{}] FAILED CHECK: {msg}", self.name);
        self.failures.push(msg);
    }

    /// Records a failure unless `ok`.
    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(msg());
        }
    }

    /// The end of every scenario, once the load is stopped: waits until the bucket holds the
    /// server's flushed WAL, stops the agent cleanly, checks the watcher's findings (none,
    /// after enough work), that the bucket has no gap up to the end, that no agent ever
    /// logged a conflict and the server never timed a standby out; then recovers a fresh
    /// server from the bucket alone and compares its data with the server's. Returns the
    /// watcher's report and the server's end of WAL for scenario-specific checks.
    pub fn finish(
        &mut self,
        agent: AgentProcess,
        watcher: Watcher,
        expect: Expect,
    ) -> (WatchReport, Lsn) {
        self.finish_with(agent, watcher, expect, |_| Vec::new())
    }

    /// [`Scenario::finish`], and `check_restored` runs on the recovered server (while it
    /// is up) and returns what it found wrong, one line each.
    pub fn finish_with(
        &mut self,
        mut agent: AgentProcess,
        watcher: Watcher,
        expect: Expect,
        check_restored: impl FnOnce(&PgServer) -> Vec<String>,
    ) -> (WatchReport, Lsn) {
        let end = lsn(&self.pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
        let expected = self.pg.psql(&self.state_sql).unwrap();
        let catch_up = Instant::now();
        match watcher.wait_frontier(end, CATCH_UP) {
            Some(c) => println!(
                "[{}] bucket reached the server's flush position {end} after {:.1}s (frontier {})",
                self.name,
                catch_up.elapsed().as_secs_f64(),
                c.frontier
            ),
            None => self.fail(format!(
                "the bucket did not reach the server's flush position {end} within {CATCH_UP:?}: {}",
                watcher.snapshot()
            )),
        }
        let status = agent.terminate();
        let output = agent.output_text();
        self.check(status.success(), || {
            format!(
                "the agent did not stop cleanly ({status}):\n{}",
                tail(&output, 4000)
            )
        });
        self.logs.push(output);

        let report = watcher.stop();
        println!("[{}] watcher: {report}", self.name);
        for p in report.problems(expect.min_rounds, expect.min_compared) {
            self.fail(p);
        }
        if let Err(e) = report.check_no_gap_to(end) {
            self.fail(e);
        }
        let conflicts: Vec<String> = self
            .logs
            .iter()
            .flat_map(|l| l.lines())
            .filter(|l| l.contains(CONFLICT_LINE))
            .map(|l| tail(l, 300))
            .take(3)
            .collect();
        self.check(conflicts.is_empty(), || {
            format!("an agent logged a WAL object conflict: {conflicts:#?}")
        });
        let server_log = std::fs::read_to_string(self.pg.log_file()).unwrap_or_default();
        let timeouts = server_log.matches(WALSENDER_TIMEOUT_LINE).count();
        self.check(timeouts == 0, || {
            format!("the server logged {timeouts}× {WALSENDER_TIMEOUT_LINE:?}")
        });

        let recovery = Instant::now();
        match self.recover_from_bucket(&self.state_sql) {
            Ok(Recovered {
                state: got,
                server: restored,
                ..
            }) => {
                println!(
                    "[{}] bucket-only recovery in {:.1}s: {got}",
                    self.name,
                    recovery.elapsed().as_secs_f64()
                );
                self.check(got == expected, || {
                    format!("the bucket-only recovery holds other data:\n  recovered {got}\n  server    {expected}")
                });
                for p in check_restored(&restored) {
                    self.fail(p);
                }
            }
            Err(e) => self.fail(format!("bucket-only recovery failed: {e}")),
        }
        (report, end)
    }

    /// Restores the latest backup with `pgagent restore --target latest` into an empty
    /// directory (the bucket read directly), starts PostgreSQL on it and waits for the end
    /// of recovery; returns the server, what `state_sql` reads on it, and the server's and
    /// the fetch server's logs.
    pub fn recover_from_bucket(&self, state_sql: &str) -> Result<Recovered, String> {
        let fetch = fetch_config(&self.direct_store_url(), &self.garage.s3_env());
        if let Some(passphrase) = &self.passphrase {
            fetch.set_passphrase(passphrase);
        }
        let mut restored =
            PgServer::without_cluster(PgOptions::default()).map_err(|e| e.to_string())?;
        let pgdata = restored.data_dir();
        let out = run_pgagent(
            &[
                "--config",
                fetch.config.to_str().unwrap(),
                "restore",
                "--pgdata",
                pgdata.to_str().unwrap(),
                "--target",
                "latest",
            ],
            &[],
        );
        if !out.status.success() {
            return Err(format!("pgagent restore: {}", text(&out)));
        }
        restored
            .start_server()
            .map_err(|e| format!("start the restored server: {e:#}"))?;
        let server_log = wait_promoted(&restored, Duration::from_secs(300));
        let state = restored
            .psql(state_sql)
            .map_err(|e| format!("read the restored data: {e:#}"))?;
        Ok(Recovered {
            state,
            server_log,
            fetch_log: fetch.server_log(),
            server: restored,
        })
    }

    /// Prints the wall time and fails with every recorded failure.
    pub fn conclude(self) {
        println!(
            "[{}] wall time {:.1}s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
        assert!(
            self.failures.is_empty(),
            "[{}] {} failed check(s):\n- {}",
            self.name,
            self.failures.len(),
            self.failures.join("\n- ")
        );
    }
}

/// The last `max` bytes of `s` (on a character boundary).
pub fn tail(s: &str, max: usize) -> String {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

/// Bytes of every file under `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Minimum, median (the upper one of an even count) and maximum of `samples`.
pub fn min_median_max(samples: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    let mut s = samples.to_vec();
    s.sort();
    Some((*s.first()?, s[s.len() / 2], *s.last()?))
}
