//! Recovery through `restore_command = 'pgagent fetch %f %p'`: base backups, the fetch
//! configuration PostgreSQL's OS user can read, and a recovery that waits for promotion.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
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

/// Inserts `n` more rows into `t` after the highest id, tagged with `tag`.
pub fn load(pg: &PgServer, tag: &str, n: u32) {
    pg.psql(&format!(
        "INSERT INTO t SELECT m + g, '{tag}' || g FROM generate_series(1, {n}) g, \
         (SELECT coalesce(max(id), 0) m FROM t) s"
    ))
    .unwrap();
}

/// Takes `pg_basebackup -X none -c fast` of `primary` into `dest` as the PostgreSQL OS user.
pub fn base_backup(primary: &PgServer, dest: &Path) {
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
}

/// Writes the fetch configuration for `store_url`; S3 credentials are taken from `env`
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`) when present.
pub fn fetch_config(store_url: &str, env: &[(&'static str, String)]) -> FetchConfig {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let mut toml = format!("[store]\nurl = \"{store_url}\"\n");
    if let (Some(id), Some(secret)) = (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        toml.push_str(&format!(
            "access_key_id = \"{id}\"\nsecret_access_key = \"{secret}\"\n"
        ));
    }
    toml.push_str("\n[fetch]\ntimeout = \"30s\"\n");
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
        _dir: dir,
    }
}

/// Copies the base backup into a fresh cluster directory, configures recovery with
/// `restore_command` and `extra` settings, starts it and waits until it has promoted.
/// Asserts that WAL came through restore_command. Returns the server and its log.
pub fn recover(base: &Path, restore_command: &str, extra: &[&str]) -> (PgServer, String) {
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
    let promoted = wait_until(Duration::from_secs(120), Duration::from_millis(200), || {
        pg.psql("SELECT pg_is_in_recovery()")
            .is_ok_and(|s| s.trim() == "f")
    });
    assert!(
        promoted,
        "recovery with {extra:?} did not finish\n{}",
        pg.log_tail()
    );
    let log = std::fs::read_to_string(pg.log_file()).unwrap();
    assert!(
        log.contains("restored log file \"") && log.contains("from archive"),
        "{extra:?}: no segment came through restore_command\n{log}"
    );
    (pg, log)
}
