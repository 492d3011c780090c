//! A throwaway PostgreSQL cluster for integration tests.
//!
//! [`PgServer::start`] runs `initdb` in a fresh temporary directory and starts the postmaster
//! (as a child process of the test, not through `pg_ctl`) on a random loopback port, its unix socket inside that directory. PostgreSQL
//! refuses to run as root, so when the tests run as root every PostgreSQL program is executed
//! as an unprivileged OS user (`PGAGENT_TEST_PG_USER`, default `postgres`) that owns the
//! directory. Durability settings stay at their defaults (`fsync = on`,
//! `synchronous_commit = on`) because the tests check what survives a crash.
//!
//! Roles created in every cluster (authentication per `pg_hba.conf`, PostgreSQL docs
//! "Client Authentication", section 21.1):
//!
//! | role | attributes | TCP authentication |
//! | --- | --- | --- |
//! | `postgres` | superuser | SCRAM (no password set: unix socket only) |
//! | `pgagent` | `LOGIN REPLICATION`, password `secret`, `pg_monitor`, backup functions | `scram-sha-256` |
//! | `trust_user` | `LOGIN REPLICATION` | `trust` |
//! | `norepl` | `LOGIN`, password `secret` | `scram-sha-256` |

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context};
use tempfile::TempDir;

use crate::osuser::OsUser;
mod copy;
mod install;
mod setup;

pub use install::{
    pg_tools_dir, PgInstall, DEFAULT_PG_ROOT, DEFAULT_PG_TOOLS, PG_MAJOR_ENV, PG_ROOT_ENV,
    PG_TOOLS_ENV,
};
pub use setup::pg_bin_dir;
use setup::{run_checked, settings, HBA_CONF};

use crate::postmaster::{Postmaster, StopMode};
use crate::util::{free_port, keep_temp_dirs, log_tail, LIBPQ_ENV};

/// Environment variable naming the OS user PostgreSQL runs as when the tests run as root.
pub const PG_USER_ENV: &str = "PGAGENT_TEST_PG_USER";
/// Environment variable naming the PostgreSQL `bin` directory (`initdb`, `pg_ctl`, `psql`…).
pub const PG_BIN_ENV: &str = "PGAGENT_TEST_PG_BIN";
/// Superuser created by `initdb`; reachable over the unix socket only.
pub const SUPERUSER: &str = "postgres";
/// Replication role the agent connects as (SCRAM over TCP).
pub const REPL_USER: &str = "pgagent";
/// Replication role trusted without a password over TCP.
pub const TRUST_USER: &str = "trust_user";
/// Login role without the `REPLICATION` attribute.
pub const NOREPL_USER: &str = "norepl";
/// Password of [`REPL_USER`] and [`NOREPL_USER`].
pub const PASSWORD: &str = "secret";

/// Attempts at finding a free port before giving up on starting the cluster.
const PORT_ATTEMPTS: usize = 5;

/// Settings of a test cluster.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `wal_level` (default `replica`).
    pub wal_level: String,
    /// `wal_keep_size` (default `1GB`), so the segments a test compares stay in `pg_wal`.
    pub wal_keep_size: String,
    /// Lines appended to `postgresql.conf` after the harness's own settings (later lines win).
    pub extra_conf: Vec<String>,
    /// Extra `initdb` arguments, after the harness's `--locale=C --encoding=UTF8 --no-sync`
    /// (e.g. `--wal-segsize=1`, `--data-checksums`).
    pub initdb_args: Vec<String>,
    /// PGDATA somewhere else than `<root>/data` (on a ZFS dataset, say); its parent must
    /// exist and be writable by the PostgreSQL OS user.
    pub data_dir: Option<PathBuf>,
    /// The server's major version, whatever `PGAGENT_TEST_PG` says (`None`: as it says).
    pub major: Option<u32>,
    /// The installation to run, whatever `major` and `PGAGENT_TEST_PG` say (e.g.
    /// [`PgInstall::tools`]).
    pub install: Option<PgInstall>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            wal_level: "replica".to_owned(),
            wal_keep_size: "1GB".to_owned(),
            extra_conf: Vec::new(),
            initdb_args: Vec::new(),
            data_dir: None,
            major: None,
            install: None,
        }
    }
}

/// A running (or stopped) PostgreSQL cluster in a temporary directory.
///
/// Layout of [`PgServer::root_dir`]: `data/` (PGDATA), `run/` (unix socket), `postgres.log`
/// (server log). Dropping the value stops the server in immediate mode (SIGQUIT) and removes
/// the directory unless `PGAGENT_TEST_KEEP=1`.
#[derive(Debug)]
pub struct PgServer {
    dir: Option<TempDir>,
    root: PathBuf,
    install: PgInstall,
    os_user: Option<OsUser>,
    opts: PgOptions,
    port: u16,
    postmaster: Option<Postmaster>,
    /// `postgresql.conf` before the harness appended its block; kept to rewrite the block
    /// when a start is retried on another port.
    base_conf: Option<String>,
}

impl PgServer {
    /// Creates a cluster with `initdb`, starts it and creates the test roles.
    ///
    /// Errors carry the failing command's output or the tail of the server log.
    pub fn start(opts: PgOptions) -> anyhow::Result<PgServer> {
        let mut server = PgServer::without_cluster(opts)?;
        let mut initdb = server.server_command("initdb");
        initdb
            .arg("-D")
            .arg(server.data_dir())
            .args([
                "-U",
                SUPERUSER,
                "--locale=C",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .args(&server.opts.initdb_args);
        run_checked(&mut initdb, "initdb")?;
        server.start_first_time()?;
        server.create_roles()?;
        Ok(server)
    }

    /// Prepares the temporary directory of a cluster without creating one: `data_dir()` does
    /// not exist yet. A test fills it (e.g. `pgagent restore --pgdata <data_dir>`) and then
    /// calls [`PgServer::start_server`]; the first start hands the directory to the PostgreSQL OS
    /// user, sets its mode to 0700 and appends the harness settings (port, socket directory)
    /// to the restored `postgresql.conf`. No roles are created.
    pub fn without_cluster(opts: PgOptions) -> anyhow::Result<PgServer> {
        let install = match (&opts.install, opts.major) {
            (Some(install), _) => install.clone(),
            (None, Some(major)) => PgInstall::for_major(major)?,
            (None, None) => PgInstall::from_env()?,
        };
        let os_user = OsUser::for_postgres()?;
        let dir = tempfile::Builder::new()
            .prefix("pgagent-pg-")
            .tempdir()
            .context("create temporary directory for PostgreSQL")?;
        let root = dir.path().to_path_buf();
        fs::create_dir(root.join("run"))?;
        if let Some(user) = &os_user {
            for path in [root.clone(), root.join("run")] {
                chown(&path, Some(user.uid), Some(user.gid))
                    .with_context(|| format!("chown {} to {}", path.display(), user.name))?;
            }
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;
        Ok(PgServer {
            dir: Some(dir),
            root,
            install,
            os_user,
            opts,
            port: 0,
            postmaster: None,
            base_conf: None,
        })
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host for TCP connections: always `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Directory holding the server's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// PGDATA.
    pub fn data_dir(&self) -> PathBuf {
        self.opts
            .data_dir
            .clone()
            .unwrap_or_else(|| self.root.join("data"))
    }

    /// The PostgreSQL OS user's uid and gid (this process's when it is not root).
    pub fn os_user_ids(&self) -> (u32, u32) {
        match &self.os_user {
            Some(u) => (u.uid, u.gid),
            None => fs::metadata("/proc/self")
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.uid(), m.gid())
                })
                .unwrap_or((0, 0)),
        }
    }

    /// Temporary directory holding PGDATA, the socket directory and the log.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// `bin` directory of the client programs (`psql`, `pgbench`, `pg_basebackup`,
    /// `pg_verifybackup`): the packaged installation, whatever the server's version.
    pub fn bin_dir(&self) -> &Path {
        &self.install.client_bin
    }

    /// The server programs in use (`PGAGENT_TEST_PG`, see [`PgInstall::from_env`]).
    pub fn install(&self) -> &PgInstall {
        &self.install
    }

    /// Server log file (stderr of the postmaster), for failure messages.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// The last 8 KiB of the server log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_file(), 8192)
    }

    /// Whether the postmaster started by the harness is running.
    pub fn is_running(&self) -> bool {
        self.postmaster.is_some()
    }

    /// If the postmaster has exited on its own (e.g. after the startup process failed),
    /// reaps it and returns its exit status; the server then counts as stopped.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.postmaster.as_mut()?.try_exit_status().ok()??;
        self.postmaster = None;
        Some(status)
    }

    /// libpq-style connection string over TCP for `user`, e.g.
    /// `host=127.0.0.1 port=5433 user=pgagent password=secret dbname=postgres sslmode=disable`.
    /// The password is included for the roles that have one ([`REPL_USER`], [`NOREPL_USER`]).
    pub fn conninfo(&self, user: &str) -> String {
        let mut s = format!("host=127.0.0.1 port={} user={user}", self.port);
        if user == REPL_USER || user == NOREPL_USER {
            s.push_str(&format!(" password={PASSWORD}"));
        }
        s.push_str(" dbname=postgres sslmode=disable");
        s
    }

    /// Runs `sql` with `psql -X -A -t -q -v ON_ERROR_STOP=1` as the superuser over the unix
    /// socket and returns stdout, trimmed. Several statements may be given, separated by `;`;
    /// the output is the last one's result, one row per line, columns separated by `|`.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let mut cmd = self.client_command("psql");
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
            "-c",
            sql,
        ]);
        run_checked(&mut cmd, "psql").map(|out| out.trim().to_owned())
    }

    /// Like [`PgServer::psql`], but connects with `conninfo` (e.g. [`PgServer::conninfo`]),
    /// which exercises the TCP listener and `pg_hba.conf`.
    pub fn psql_with(&self, conninfo: &str, sql: &str) -> anyhow::Result<String> {
        let mut cmd = self.pg_command("psql");
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ]);
        run_checked(&mut cmd, "psql").map(|out| out.trim().to_owned())
    }

    /// `pgbench -i -q -s <scale>` into database `postgres`.
    pub fn pgbench_init(&self, scale: u32) -> anyhow::Result<String> {
        self.pgbench(&["-i", "-q", "-s", &scale.to_string()])
    }

    /// Runs pgbench with `args` (e.g. `["-T", "5", "-c", "2"]`) against database `postgres`
    /// as the superuser; returns its stdout.
    pub fn pgbench(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.client_command("pgbench");
        cmd.args(args).arg("postgres");
        run_checked(&mut cmd, "pgbench")
    }

    /// `SHOW server_version_num`, e.g. `150010`.
    pub fn server_version_num(&self) -> anyhow::Result<u32> {
        let out = self.psql("SHOW server_version_num")?;
        out.parse()
            .with_context(|| format!("server_version_num {out:?}"))
    }

    /// The cluster's system identifier (`pg_control_system()`).
    pub fn system_identifier(&self) -> anyhow::Result<u64> {
        let out = self.psql("SELECT system_identifier FROM pg_control_system()")?;
        out.parse()
            .with_context(|| format!("system_identifier {out:?}"))
    }

    /// `pg_current_wal_lsn()` as PostgreSQL prints it (`X/X`, hexadecimal).
    pub fn current_wal_lsn(&self) -> anyhow::Result<String> {
        self.psql("SELECT pg_current_wal_lsn()")
    }

    /// `pg_switch_wal()`: closes the current segment; returns the end LSN of the switch
    /// record (`X/X`).
    pub fn switch_wal(&self) -> anyhow::Result<String> {
        self.psql("SELECT pg_switch_wal()")
    }

    /// Bytes of `pg_wal/<name>` (a segment or `.history` file), `None` if it does not exist.
    pub fn wal_file(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.data_dir().join("pg_wal").join(name)).ok()
    }

    /// Appends lines to `postgresql.conf`; they take effect on [`PgServer::reload`] or restart.
    pub fn append_conf(&self, lines: &[&str]) -> anyhow::Result<()> {
        let path = self.data_dir().join("postgresql.conf");
        let mut conf =
            fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        for line in lines {
            conf.push_str(line);
            conf.push('\n');
        }
        fs::write(&path, conf).with_context(|| format!("write {}", path.display()))
    }

    /// SIGHUP to the postmaster: rereads the configuration files.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.running()?.signal("HUP")
    }

    /// Starts the postmaster again after [`PgServer::stop`] or [`PgServer::kill9`] (crash
    /// recovery runs then), on the same port, or for the first time on a directory prepared
    /// with [`PgServer::without_cluster`]; waits until it accepts connections.
    ///
    /// (Named apart from the constructor [`PgServer::start`], which creates the cluster.)
    pub fn start_server(&mut self) -> anyhow::Result<()> {
        if self.base_conf.is_none() {
            return self.start_first_time();
        }
        self.spawn_postmaster()
    }

    /// Clean shutdown in fast mode (SIGINT: sessions aborted, shutdown checkpoint), waiting
    /// for the postmaster to exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let postmaster = self
            .postmaster
            .take()
            .ok_or_else(|| anyhow!("server is not running"))?;
        postmaster.stop(StopMode::Fast).map(drop)
    }

    /// Stops the server in immediate mode (SIGQUIT to the postmaster, what `pg_ctl stop -m
    /// immediate` sends): sessions end at once, no shutdown checkpoint, and the next
    /// [`PgServer::start_server`] runs crash recovery. Waits for the postmaster to exit.
    pub fn stop_immediate(&mut self) -> anyhow::Result<()> {
        let postmaster = self
            .postmaster
            .take()
            .ok_or_else(|| anyhow!("server is not running"))?;
        postmaster.stop(StopMode::Immediate).map(drop)
    }

    /// [`PgServer::stop`] then [`PgServer::start_server`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.start_server()
    }

    /// Crashes the server: SIGKILL to the postmaster, then waits (up to 10 s) for its
    /// children to notice and exit; stragglers get SIGKILL too, as after a power loss.
    /// Returns once no process of the old instance is left, so [`PgServer::start_server`] can
    /// run crash recovery.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let postmaster = self
            .postmaster
            .take()
            .ok_or_else(|| anyhow!("server is not running"))?;
        postmaster.crash()
    }

    /// Pid of the running postmaster.
    pub fn postmaster_pid(&self) -> anyhow::Result<u32> {
        self.running().map(Postmaster::pid)
    }

    fn start_first_time(&mut self) -> anyhow::Result<()> {
        let data = self.data_dir();
        if let Some(user) = &self.os_user {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{}:{}", user.uid, user.gid))
                .arg(&data)
                .status()
                .context("run chown")?;
            if !status.success() {
                bail!("chown -R {} failed: {status}", data.display());
            }
        }
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", data.display()))?;
        let conf_path = data.join("postgresql.conf");
        let base = fs::read_to_string(&conf_path)
            .with_context(|| format!("read {}", conf_path.display()))?;
        fs::write(data.join("pg_hba.conf"), HBA_CONF).context("write pg_hba.conf")?;
        self.base_conf = Some(base.clone());
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port()?;
            fs::write(
                &conf_path,
                format!(
                    "{base}\n{}",
                    settings(self.port, &self.socket_dir(), &self.opts)
                ),
            )
            .with_context(|| format!("write {}", conf_path.display()))?;
            match self.spawn_postmaster() {
                Ok(()) => return Ok(()),
                Err(err) => {
                    let log = self.log_tail();
                    if !(log.contains("could not bind")
                        || log.contains("could not create any TCP/IP sockets"))
                    {
                        return Err(err);
                    }
                    last_err = Some(err);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no start attempt was made")))
    }

    fn spawn_postmaster(&mut self) -> anyhow::Result<()> {
        if self.postmaster.is_some() {
            bail!("server is already running");
        }
        let cmd = self.server_command("postgres");
        self.postmaster = Some(Postmaster::start(cmd, &self.data_dir(), &self.log_file())?);
        Ok(())
    }

    fn running(&self) -> anyhow::Result<&Postmaster> {
        self.postmaster
            .as_ref()
            .ok_or_else(|| anyhow!("server is not running"))
    }

    fn create_roles(&self) -> anyhow::Result<()> {
        self.psql(&format!(
            "CREATE ROLE {REPL_USER} LOGIN REPLICATION PASSWORD '{PASSWORD}';
             CREATE ROLE {TRUST_USER} LOGIN REPLICATION;
             CREATE ROLE {NOREPL_USER} LOGIN PASSWORD '{PASSWORD}';
             GRANT pg_monitor TO {REPL_USER};"
        ))?;
        // Needed for consistent snapshots (non-exclusive backup API); renamed in PostgreSQL 15.
        let grant = if self.server_version_num()? >= 150000 {
            "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean)"
        } else {
            "GRANT EXECUTE ON FUNCTION pg_start_backup(text, boolean, boolean), pg_stop_backup(boolean, boolean)"
        };
        self.psql(&format!("{grant} TO {REPL_USER}")).map(drop)
    }

    /// A PostgreSQL client program connecting as the superuser over the unix socket
    /// (`-h <socket dir> -p <port> -U <superuser>` given), as [`PgServer::pg_command`].
    pub fn client_command(&self, program: &str) -> Command {
        let mut cmd = self.pg_command(program);
        cmd.arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER]);
        cmd
    }

    /// Server `program` (`initdb`, `postgres`) of the chosen major, like
    /// [`PgServer::pg_command`], with `LD_LIBRARY_PATH` set to the installation's `lib`
    /// directory when it is not a packaged one.
    fn server_command(&self, program: &str) -> Command {
        let mut cmd = self.command(&self.install.server_bin, program);
        if let Some(lib) = &self.install.server_lib {
            cmd.env("LD_LIBRARY_PATH", lib);
        }
        cmd
    }

    /// Client `program` from the installation's client bin directory, run as the PostgreSQL
    /// OS user inside the temporary directory, with no libpq connection variables inherited
    /// from the caller.
    pub fn pg_command(&self, program: &str) -> Command {
        self.command(&self.install.client_bin, program)
    }

    fn command(&self, bin: &Path, program: &str) -> Command {
        let mut cmd = Command::new(bin.join(program));
        cmd.env_remove("LD_LIBRARY_PATH")
            .current_dir(&self.root)
            .env("HOME", &self.root)
            .env("LC_ALL", "C");
        for var in LIBPQ_ENV {
            cmd.env_remove(var);
        }
        if let Some(user) = &self.os_user {
            cmd.uid(user.uid)
                .gid(user.gid)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
        }
        cmd
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(postmaster) = self.postmaster.take() {
            if let Err(err) = postmaster.stop(StopMode::Immediate) {
                eprintln!("stopping PostgreSQL failed: {err:#}");
            }
        }
        if let Some(dir) = self.dir.take() {
            if keep_temp_dirs() {
                eprintln!("keeping PostgreSQL directory {}", dir.keep().display());
            }
        }
    }
}
