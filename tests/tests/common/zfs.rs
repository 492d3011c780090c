//! ZFS set-ups of the tests on a zfs-fuse pool: PostgreSQL on a dataset, the rights a
//! snapshot needs, `[zfs]` in a configuration file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgagent_tests::{run_pgagent, PgOptions, PgServer, ZfsPool};

use super::{lsn, seg, Rig};

/// A dataset `<pool>/<name>` mounted at `<pool dir>/<name>`, owned by the PostgreSQL OS
/// user; returns (dataset, mount point).
pub fn dataset_for_postgres(pool: &ZfsPool, name: &str, pg_ids: (u32, u32)) -> (String, PathBuf) {
    let mnt = pool.dir().join(name);
    let ds = pool.create_dataset(name, Some(&mnt)).unwrap();
    std::os::unix::fs::chown(&mnt, Some(pg_ids.0), Some(pg_ids.1)).unwrap();
    std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
    (ds, mnt)
}

/// The ids of a PostgreSQL OS user, from a throwaway server directory.
pub fn postgres_ids() -> (u32, u32) {
    PgServer::without_cluster(PgOptions::default())
        .unwrap()
        .os_user_ids()
}

/// Appends a `[zfs]` section to the configuration file.
pub fn add_zfs_section(config: &Path, lines: &[String]) {
    let mut toml = std::fs::read_to_string(config).unwrap();
    toml.push_str("\n[zfs]\n");
    for l in lines {
        toml.push_str(l);
        toml.push('\n');
    }
    std::fs::write(config, toml).unwrap();
}

/// What `pg_backup_start`/`pg_backup_stop` (`pg_start_backup`/`pg_stop_backup` before 15)
/// and `SHOW data_directory` need for the replication role (what doctor tells an operator to
/// grant).
pub fn grant_snapshot_rights(pg: &PgServer) {
    let functions = if pg.server_version_num().unwrap() >= 150_000 {
        "pg_backup_start(text, boolean), pg_backup_stop(boolean)"
    } else {
        "pg_start_backup(text, boolean, boolean), pg_stop_backup(boolean, boolean)"
    };
    pg.psql(&format!(
        "GRANT EXECUTE ON FUNCTION {functions} TO pgagent; \
         GRANT pg_read_all_settings TO pgagent"
    ))
    .unwrap();
}

/// `pgagent --config <config> args…` with `env`.
pub fn pgagent(
    config: &Path,
    args: &[&str],
    env: &[(&'static str, String)],
) -> std::process::Output {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    run_pgagent(&all, env)
}

pub fn utc_now(pg: &PgServer) -> String {
    pg.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
        .unwrap()
        .trim()
        .to_string()
}

/// A cluster whose PGDATA is `data/` on a new dataset `<pool>/pg`, with the rights a
/// snapshot needs granted; returns (dataset, PGDATA, server).
pub fn primary_on_zfs(pool: &ZfsPool) -> (String, PathBuf, PgServer) {
    let (dataset, mnt) = dataset_for_postgres(pool, "pg", postgres_ids());
    let pgdata = mnt.join("data");
    let primary = PgServer::start(PgOptions {
        data_dir: Some(pgdata.clone()),
        ..Default::default()
    })
    .expect("PostgreSQL on ZFS");
    grant_snapshot_rights(&primary);
    (dataset, pgdata, primary)
}

/// A server, not started, for a data directory a restore fills.
pub fn server_for(pgdata: &Path) -> PgServer {
    PgServer::without_cluster(PgOptions {
        data_dir: Some(pgdata.to_path_buf()),
        ..Default::default()
    })
    .unwrap()
}

/// Waits until the WAL up to the current position is in the store.
pub fn flush_to_store(rig: &Rig, agent: &pgagent_tests::AgentProcess, pg: &PgServer) {
    let switch = lsn(&pg.switch_wal().unwrap());
    let boundary = switch.segment_number(seg()).end_lsn(seg());
    rig.wait_uploaded(agent, boundary, Duration::from_secs(120));
}
