//! Files and commands that set a test cluster up: the configuration block, `pg_hba.conf`,
//! the location of the PostgreSQL programs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{anyhow, bail, Context};

use super::{PgOptions, PG_BIN_ENV};

/// The block appended to `postgresql.conf` (PostgreSQL docs, chapter 20 "Server
/// Configuration").
pub(super) fn settings(port: u16, socket_dir: &Path, opts: &PgOptions) -> String {
    let mut s = String::from("\n# Settings of the pgagent test harness\n");
    let lines = [
        "listen_addresses = '127.0.0.1'".to_owned(),
        format!("port = {port}"),
        format!("unix_socket_directories = '{}'", socket_dir.display()),
        format!("wal_level = {}", opts.wal_level),
        format!("wal_keep_size = '{}'", opts.wal_keep_size),
        "max_wal_senders = 10".to_owned(),
        "max_replication_slots = 10".to_owned(),
        "fsync = on".to_owned(),
        "synchronous_commit = on".to_owned(),
        "shared_buffers = 64MB".to_owned(),
        "password_encryption = 'scram-sha-256'".to_owned(),
        "logging_collector = off".to_owned(),
        "log_min_messages = warning".to_owned(),
    ];
    for line in lines.iter().chain(&opts.extra_conf) {
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// `pg_hba.conf`: local connections are trusted; over TCP `trust_user` is trusted and every
/// other role needs SCRAM. The first matching line wins (PostgreSQL docs, section 21.1).
pub(super) const HBA_CONF: &str = "\
# TYPE  DATABASE          USER        ADDRESS        METHOD
local   all               all                        trust
local   replication       all                        trust
host    all,replication   trust_user  127.0.0.1/32   trust
host    all,replication   all         127.0.0.1/32   scram-sha-256
";

/// The PostgreSQL `bin` directory: `$PGAGENT_TEST_PG_BIN`, else the highest major version
/// under `/usr/lib/postgresql/*/bin` (the Debian layout).
pub fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let entries = fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install PostgreSQL (scripts/install-deps) or set PGAGENT_TEST_PG_BIN")?;
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
        .ok_or_else(|| anyhow!("no /usr/lib/postgresql/*/bin/initdb; set PGAGENT_TEST_PG_BIN"))
}

/// Runs `cmd`, returning stdout; on failure an error with the status, stdout and stderr.
pub(super) fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let output: Output = cmd
        .output()
        .with_context(|| format!("spawn {what} ({cmd:?})"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_conf_follows_the_defaults() {
        let opts = PgOptions {
            extra_conf: vec!["wal_level = logical".to_owned()],
            ..PgOptions::default()
        };
        let conf = settings(5433, Path::new("/tmp/x/run"), &opts);
        assert!(conf.contains("port = 5433\n"));
        assert!(conf.contains("unix_socket_directories = '/tmp/x/run'\n"));
        assert!(conf.contains("wal_keep_size = '1GB'\n"));
        let default_level = conf.find("wal_level = replica").unwrap();
        let extra_level = conf.find("wal_level = logical").unwrap();
        assert!(
            default_level < extra_level,
            "later lines win in postgresql.conf"
        );
        assert!(!conf.contains("fsync = off"));
    }
}
