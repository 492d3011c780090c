//! Recovery through `restore_command = 'pgagent fetch %f %p'`: base backups, the fetch
//! configuration PostgreSQL's OS user can read, and a recovery that waits for promotion.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgagent_tests::{wait_until, OsUser, PgOptions, PgServer};
use tempfile::TempDir;

/// Row count and checksum of table `t(id, v)`, in one transaction.
pub const STATE_SQL: &str =
    "SELECT count(*), md5(coalesce(string_agg(id::text || v, ',' ORDER BY id), '')) FROM t";

/// The state of table `t` (see [`STATE_SQL`]).
pub fn state(pg: &PgServer) -> String {
    pg.psql(STATE_SQL).unwrap()
}

/// Creates table `t(id, v)` that [`load`] fills and [`state`] reads.
pub fn create_table_t(pg: &PgServer) {
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
}

/// A base backup of `primary` ([`base_backup`]) in the data directory of a new, not yet
/// started server.
pub fn base_backup_copy(primary: &PgServer) -> PgServer {
    let base = PgServer::without_cluster(PgOptions::default()).unwrap();
    base_backup(primary, &base.data_dir());
    base
}

/// Inserts `n` more rows into `t` after the highest id, tagged with `tag`.
pub fn load(pg: &PgServer, tag: &str, n: u32) {
    pg.psql(&format!(
        "INSERT INTO t SELECT m + g, '{tag}' || g FROM generate_series(1, {n}) g, \
         (SELECT coalesce(max(id), 0) m FROM t) s"
    ))
    .unwrap();
}

/// Takes `pg_basebackup -X none -c fast` of `primary` into `dest` as the PostgreSQL OS user;
/// the same through pgagent's `BASE_BACKUP` client when the server is newer than the packaged
/// `pg_basebackup`.
pub fn base_backup(primary: &PgServer, dest: &Path) {
    if !primary.pg_basebackup_works().unwrap() {
        primary.base_backup_over_protocol(dest, false).unwrap();
        return;
    }
    let mut cmd = Command::new(primary.bin_dir().join("pg_basebackup"));
    cmd.arg("-D").arg(dest).args([
        "-X",
        "none",
        "-c",
        "fast",
        "-d",
        &primary.conninfo("pgagent"),
    ]);
    if let Some(user) = OsUser::for_postgres().unwrap() {
        cmd.uid(user.uid).gid(user.gid);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `restore_command` line and the configuration file it names, in a directory the
/// PostgreSQL OS user can read (restore_command runs as that user, with the server's
/// environment, so settings and S3 credentials come from the file).
pub struct FetchConfig {
    _dir: TempDir,
    /// `restore_command = '<pgagent> --config <file> fetch %f %p'`
    pub restore_command: String,
    /// The configuration file.
    pub config: PathBuf,
    /// `staging.dir` of the configuration, owned by the PostgreSQL OS user: where the
    /// restore-mode fetch server keeps its socket, cache and log.
    pub server_dir: PathBuf,
}

/// What a restore-mode fetch server reported when it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSummary {
    /// Files delivered.
    pub served: u64,
    /// Segment requests answered from the prefetch cache.
    pub hits: u64,
    /// Segment requests fetched on demand.
    pub misses: u64,
}

impl FetchConfig {
    /// Configures the encryption passphrase: writes it to `passphrase` next to the
    /// configuration (mode 0600, owned by the PostgreSQL OS user, who runs
    /// `restore_command`) and names that file in `[encryption]`. Called again, it replaces
    /// the passphrase.
    pub fn set_passphrase(&self, passphrase: &str) {
        let file = self.config.with_file_name("passphrase");
        std::fs::write(&file, passphrase).unwrap();
        std::fs::set_permissions(&file, PermissionsExt::from_mode(0o600)).unwrap();
        if let Some(user) = OsUser::for_postgres().unwrap() {
            std::os::unix::fs::chown(&file, Some(user.uid), Some(user.gid)).unwrap();
        }
        let toml = std::fs::read_to_string(&self.config).unwrap();
        if !toml.contains("[encryption]") {
            let section = format!("\n[encryption]\npassphrase_file = \"{}\"\n", file.display());
            std::fs::write(&self.config, toml + &section).unwrap();
        }
    }

    /// The logs of the fetch servers started with this configuration, concatenated.
    pub fn server_log(&self) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.server_dir)
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        logs.iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }

    /// Waits (up to `limit`) until the restore-mode server has stopped after its idle
    /// timeout, and returns the counts of its last "fetch server stopped" line.
    pub fn wait_server_summary(&self, limit: Duration) -> ServerSummary {
        let mut found = None;
        wait_until(limit, Duration::from_millis(200), || {
            found = self
                .server_log()
                .lines()
                .rfind(|l| l.contains("fetch server stopped"))
                .map(|l| ServerSummary {
                    served: field(l, "served="),
                    hits: field(l, "prefetch_hits="),
                    misses: field(l, "prefetch_misses="),
                });
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("the fetch server did not stop\n{}", self.server_log()))
    }
}

fn field(line: &str, key: &str) -> u64 {
    let at = line
        .find(key)
        .unwrap_or_else(|| panic!("{key} missing in {line}"))
        + key.len();
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// Writes the fetch configuration for `store_url`; S3 credentials are taken from `env`
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`) when present. The fetch server exits
/// after 2 s idle, so that its summary can be read soon after a recovery.
pub fn fetch_config(store_url: &str, env: &[(&'static str, String)]) -> FetchConfig {
    fetch_config_with(store_url, env, &[])
}

/// [`fetch_config`] with `[fetch]` settings replaced or added, e.g. `("prefetch", "2")`
/// (values are TOML).
pub fn fetch_config_with(
    store_url: &str,
    env: &[(&'static str, String)],
    fetch: &[(&str, &str)],
) -> FetchConfig {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let server_dir = dir.path().join("fetch");
    std::fs::create_dir(&server_dir).unwrap();
    std::fs::set_permissions(&server_dir, PermissionsExt::from_mode(0o700)).unwrap();
    if let Some(user) = OsUser::for_postgres().unwrap() {
        std::os::unix::fs::chown(&server_dir, Some(user.uid), Some(user.gid)).unwrap();
    }
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let mut toml = format!(
        "[staging]\ndir = \"{}\"\n\n[store]\nurl = \"{store_url}\"\n",
        server_dir.display()
    );
    if let (Some(id), Some(secret)) = (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        toml.push_str(&format!(
            "access_key_id = \"{id}\"\nsecret_access_key = \"{secret}\"\n"
        ));
    }
    let mut settings = vec![("timeout", "\"30s\""), ("idle_timeout", "\"2s\"")];
    for (k, v) in fetch {
        settings.retain(|(key, _)| key != k);
        settings.push((k, v));
    }
    toml.push_str("\n[fetch]\n");
    for (k, v) in settings {
        toml.push_str(&format!("{k} = {v}\n"));
    }
    let config = dir.path().join("fetch.toml");
    std::fs::write(&config, toml).unwrap();
    std::fs::set_permissions(&config, PermissionsExt::from_mode(0o644)).unwrap();
    let bin = pgagent_tests::pgagent_bin().canonicalize().unwrap();
    FetchConfig {
        restore_command: format!(
            "restore_command = '{} --config {} fetch %f %p'",
            bin.display(),
            config.display()
        ),
        config,
        server_dir,
        _dir: dir,
    }
}

/// Copies the base backup into a fresh cluster directory, configures recovery with
/// `restore_command` and `extra` settings, starts it and waits until it has promoted.
/// Asserts that WAL came through restore_command. Returns the server and its log.
pub fn recover(base: &Path, restore_command: &str, extra: &[&str]) -> (PgServer, String) {
    let pg = start_recovery(base, restore_command, extra);
    let log = wait_promoted(&pg, Duration::from_secs(120));
    (pg, log)
}

/// Copies the base backup into a fresh cluster directory, configures recovery with
/// `restore_command` and `extra` settings, and starts it (recovery runs on).
pub fn start_recovery(base: &Path, restore_command: &str, extra: &[&str]) -> PgServer {
    let mut pg = PgServer::without_cluster(PgOptions::default()).unwrap();
    let cp = Command::new("cp")
        .arg("-a")
        .arg(base)
        .arg(pg.data_dir())
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::write(pg.data_dir().join("recovery.signal"), "").unwrap();
    let mut lines = vec![restore_command];
    lines.extend_from_slice(extra);
    pg.append_conf(&lines).unwrap();
    pg.start_server().unwrap();
    pg
}

/// Waits (up to `limit`) until `pg` has ended recovery and promoted; asserts that WAL came
/// through restore_command. Returns the server log.
pub fn wait_promoted(pg: &PgServer, limit: Duration) -> String {
    let promoted = wait_until(limit, Duration::from_millis(200), || {
        pg.psql("SELECT pg_is_in_recovery()")
            .is_ok_and(|s| s.trim() == "f")
    });
    assert!(promoted, "recovery did not finish\n{}", pg.log_tail());
    let log = std::fs::read_to_string(pg.log_file()).unwrap();
    assert!(
        log.contains("restored log file \"") && log.contains("from archive"),
        "no segment came through restore_command\n{log}"
    );
    log
}

/// How many files PostgreSQL has restored through restore_command so far.
pub fn restored_count(pg: &PgServer) -> usize {
    std::fs::read_to_string(pg.log_file())
        .unwrap_or_default()
        .matches("restored log file \"")
        .count()
}

/// `pgagent --config <config> restore --pgdata <pgdata> <extra…>`.
pub fn run_restore(config: &Path, pgdata: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    pgagent_tests::run_pgagent(&args, &[])
}

/// Waits (up to 60 s) until the postmaster of `restoring` (unless it never got `started`)
/// has exited, and asserts that it stopped the way a recovery must when `pgagent fetch`
/// answers 255: the log shows exit code 255, recovery did not end, no timeline 2 was
/// created. Returns the server log.
pub fn assert_recovery_aborted(restoring: &mut PgServer, started: bool) -> String {
    assert!(
        !started
            || wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
                restoring.exited().is_some()
            }),
        "PostgreSQL kept running\n{}",
        restoring.log_tail()
    );
    let log = std::fs::read_to_string(restoring.log_file()).unwrap();
    assert!(log.contains("exit code 255"), "{log}");
    assert!(
        !log.contains("selected new timeline ID") && !log.contains("archive recovery complete"),
        "recovery ended early\n{log}"
    );
    assert!(!restoring
        .data_dir()
        .join("pg_wal/00000002.history")
        .exists());
    log
}

/// The five points the PITR tests recover to, captured by [`pitr_points`]: the state of `t`
/// at each, and the target that reaches it.
pub struct PitrPoints {
    /// After restore point `rp1`.
    pub state_a: String,
    /// Transaction `xid` committed, nothing after it.
    pub xid: String,
    /// The state up to and including `xid`'s commit.
    pub state_b: String,
    /// `pg_current_wal_insert_lsn()` right after a commit.
    pub target_lsn: String,
    /// The state up to `target_lsn`.
    pub state_c: String,
    /// A `clock_timestamp()` with no commit to `t` in the 1.1 s before or after it.
    pub target_time: String,
    /// The state at `target_time`.
    pub state_d: String,
    /// The state at the end of the WAL.
    pub state_e: String,
}

/// Writes to `t` around five recovery targets (restore point `rp1`, a transaction, an LSN
/// right after a commit whose next record changes nothing visible, a time with no commit
/// within a second of it, the end of the WAL) and returns them with the state at each; the
/// five states all differ.
pub fn pitr_points(primary: &PgServer) -> PitrPoints {
    load(primary, "a", 1000);
    primary
        .psql("SELECT pg_create_restore_point('rp1')")
        .unwrap();
    let state_a = state(primary);
    load(primary, "b", 1000);
    let xid = primary
        .psql("INSERT INTO t SELECT max(id) + 1, 'x' FROM t RETURNING txid_current()")
        .unwrap()
        .trim()
        .to_string();
    let state_b = state(primary);
    load(primary, "b2", 500);
    primary
        .psql("UPDATE t SET v = v || 'u' WHERE id % 7 = 0")
        .unwrap();
    // Every record before the insert position right after a commit; the next write to `t`
    // starts with a heap record, so the record that ends the replay changes nothing visible.
    load(primary, "c", 1000);
    let target_lsn = primary.psql("SELECT pg_current_wal_insert_lsn()").unwrap();
    let state_c = state(primary);
    // Every commit up to T; the next change to `t` commits more than a second later.
    load(primary, "d", 1000);
    primary.psql("DELETE FROM t WHERE id % 5 = 0").unwrap();
    let state_d = state(primary);
    primary.psql("SELECT pg_sleep(1.1)").unwrap();
    let target_time = primary.psql("SELECT clock_timestamp()").unwrap();
    primary.psql("SELECT pg_sleep(1.1)").unwrap();
    load(primary, "e", 1000);
    primary
        .psql("UPDATE t SET v = v || 'e' WHERE id % 3 = 0")
        .unwrap();
    let state_e = state(primary);
    let states = [&state_a, &state_b, &state_c, &state_d, &state_e];
    for (i, a) in states.iter().enumerate() {
        for b in &states[i + 1..] {
            assert_ne!(a, b, "two capture points hold the same data: {states:?}");
        }
    }
    PitrPoints {
        state_a,
        xid,
        state_b,
        target_lsn,
        state_c,
        target_time,
        state_d,
        state_e,
    }
}

/// Promotes `pg` to the next timeline: stop, `standby.signal`, start, `pg_promote`, then
/// waits (up to 30 s) until it is out of recovery.
pub fn promote_to_next_timeline(pg: &mut PgServer) {
    pg.stop().unwrap();
    std::fs::write(pg.data_dir().join("standby.signal"), b"").unwrap();
    pg.start_server().unwrap();
    pg.psql("SELECT pg_promote(true, 60)").unwrap();
    assert!(wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || pg
            .psql("SELECT pg_is_in_recovery()")
            .is_ok_and(|r| r.trim() == "f")
    ));
}
