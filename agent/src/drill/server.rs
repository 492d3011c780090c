//! The throwaway PostgreSQL of a drill: started on the restored data directory with a
//! configuration of its own (the restored `postgresql.conf` may name files of the live
//! host), reachable only on a private unix socket, archiving off, small memory settings.
//!
//! Settings (PostgreSQL docs, chapter 20), given on the command line so that nothing in the
//! restored `postgresql.auto.conf` overrides them:
//! `listen_addresses = ''` (no TCP), `unix_socket_directories = <scratch>/sock` (mode
//! 0700), `archive_mode = off` (the copy must never archive into anything),
//! `hot_standby = off` (no connection before the end of recovery: the parameter checks of
//! a hot standby against the primary's settings do not apply), `hba_file` trusting local
//! connections on that socket only, `shared_buffers = 32MB`, `lc_messages = C` (the
//! server's messages are read: see [`LoginRefused`]).
//! `restore_command` and the recovery target come from `pgagent restore`.
//!
//! Clients connect as the role [`super::role`] chooses (`drill.user`, else the copy's
//! bootstrap superuser), never as whatever the OS user is called. Once the server accepts
//! connections, a login the server refuses (no such role, authentication) fails at once:
//! waiting cannot make a role appear.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::pgbin;
use super::report::Reached;
use super::role::{self, RoleSource};
use super::scratch::Scratch;
use crate::config::Config;

/// Port in the socket's name (`.s.PGSQL.<port>`); the directory is private, so any will do.
const PORT: &str = "5432";
/// How long one `psql` may take.
const SQL_TIMEOUT: Duration = Duration::from_secs(600);

/// Removes libpq's `PG*` variables from `cmd`'s environment: they name the live server,
/// not the copy. `PGAGENT_*` stay: the copy's `restore_command` reads them (the store's
/// credentials, the passphrase).
fn without_libpq_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n.starts_with("PG") && !n.starts_with("PGAGENT_"))
        {
            cmd.env_remove(name);
        }
    }
}

/// The throwaway server refused the drill's login: the role does not exist, cannot log
/// in, or failed authentication. Holds the server's message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoginRefused(pub String);

/// Whether `message` (a client's error on connecting) is the server refusing the login
/// rather than not accepting connections yet (starting up, in recovery).
pub fn is_login_refused(message: &str) -> bool {
    const REFUSALS: [&str; 5] = [
        "does not exist",
        "authentication failed",
        "no pg_hba.conf entry",
        "is not permitted to log in",
        "permission denied",
    ];
    message.contains("FATAL") && REFUSALS.iter().any(|r| message.contains(r))
}

/// A running throwaway server.
#[derive(Debug)]
pub struct Throwaway {
    child: std::sync::Mutex<Option<Child>>,
    bin: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    user: String,
    user_source: RoleSource,
    owner: Option<(u32, u32)>,
}

impl Throwaway {
    /// Starts PostgreSQL on the scratch data directory with the binaries of its major
    /// version ([`pgbin::find`]); as the PostgreSQL OS user when run as root.
    ///
    /// Errors: no binaries of that major; no role to connect as ([`role::drill_role`]);
    /// the files cannot be written; the process cannot be started.
    pub async fn start(cfg: &Config, scratch: &Scratch) -> anyhow::Result<Throwaway> {
        let pgdata = scratch.pgdata();
        let major = pgbin::data_dir_major(&pgdata)?;
        let bin = pgbin::find(&cfg.raw.drill.pg_bin_dir, major)?;
        let (user, user_source) = role::drill_role(&cfg.raw.drill.user, &pgdata)?;
        let dir = scratch.dir();
        let socket_dir = scratch.socket_dir();
        std::fs::create_dir_all(&socket_dir)?;
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700))?;
        let conf = dir.join("postgresql.conf");
        let hba = dir.join("pg_hba.conf");
        let ident = dir.join("pg_ident.conf");
        std::fs::write(&conf, "# pgagent drill: settings are on the command line\n")?;
        std::fs::write(&hba, "local all all trust\n")?;
        std::fs::write(&ident, "")?;
        let log = dir.join("postgres.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        for p in [&socket_dir, &conf, &hba, &ident, &log] {
            if let Some((uid, gid)) = scratch.owner() {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
            }
        }
        std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o700))?;
        let setting = |k: &str, v: &Path| format!("{k}={}", v.display());
        // Its `restore_command` is `pgagent fetch`, which opens the store: the one child
        // that keeps the passphrase (crate::child).
        let mut cmd = crate::child::keeping_passphrase(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&pgdata)
            .args(["-c", &setting("config_file", &conf)])
            .args(["-c", &setting("hba_file", &hba)])
            .args(["-c", &setting("ident_file", &ident)])
            .args(["-c", "listen_addresses="])
            .args(["-c", &format!("port={PORT}")])
            .args(["-c", &setting("unix_socket_directories", &socket_dir)])
            .args(["-c", "archive_mode=off"])
            .args(["-c", "hot_standby=off"])
            .args(["-c", "shared_buffers=32MB"])
            .args(["-c", "logging_collector=off"])
            .args(["-c", "cluster_name=pgagent-drill"])
            .args(["-c", "lc_messages=C"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        without_libpq_env(&mut cmd);
        if let Some((uid, gid)) = scratch.owner() {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", bin.join("postgres").display()))?;
        Ok(Throwaway {
            child: std::sync::Mutex::new(Some(child)),
            bin,
            socket_dir,
            log,
            user,
            user_source,
            owner: scratch.owner(),
        })
    }

    /// The role clients connect as, and where it came from, in words.
    pub fn role(&self) -> String {
        match self.user_source {
            RoleSource::Setting => format!("role {} (drill.user)", self.user),
            RoleSource::BootstrapSuperuser => format!(
                "role {} (the restored cluster's bootstrap superuser)",
                self.user
            ),
        }
    }

    /// The binaries' directory.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Waits until recovery has ended and the server promoted; returns where it ended.
    ///
    /// Errors: the server exited (a `pgagent fetch` that answered 255, a missing
    /// segment before consistency, a corrupt record: the end of its log says which), or
    /// `deadline` passed, or `stop` was cancelled; [`LoginRefused`] as soon as the server
    /// refuses the login.
    pub async fn wait_promoted(
        &self,
        deadline: Instant,
        stop: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Reached> {
        loop {
            if stop.is_cancelled() {
                bail!("stopped before the end of recovery: pgagent is stopping");
            }
            if let Some(status) = self.exited() {
                bail!(
                    "the server stopped during recovery ({status}); its log ends:\n{}",
                    self.log_tail(12)
                );
            }
            match self.sql("postgres", "SELECT pg_is_in_recovery()").await {
                Ok(v) if v == "f" => return self.reached().await,
                Err(e) if is_login_refused(&e.to_string()) => {
                    let message = e.to_string();
                    let said = message
                        .find("FATAL:")
                        .map_or(&message[..], |i| &message[i..]);
                    return Err(LoginRefused(format!(
                        "the recovered server refused the drill's login as {}: {}; set \
                         drill.user to a superuser role of the cluster",
                        self.role(),
                        said.split_whitespace().collect::<Vec<_>>().join(" ")
                    ))
                    .into());
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "recovery did not end within drill.timeout; the server log ends:\n{}",
                    self.log_tail(12)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Where recovery ended (the replay functions keep their values after promotion,
    /// PostgreSQL docs, "Recovery Control Functions"), and the timeline promoted to.
    async fn reached(&self) -> anyhow::Result<Reached> {
        let row = self
            .sql(
                "postgres",
                "SELECT pg_last_wal_replay_lsn() || '|' || \
                 coalesce(pg_last_xact_replay_timestamp()::text, '') || '|' || \
                 substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
            )
            .await?;
        let mut parts = row.split('|');
        let lsn = parts.next().unwrap_or_default().to_string();
        let last_commit = parts.next().filter(|t| !t.is_empty()).map(str::to_string);
        let timeline = parts.next().and_then(|t| u32::from_str_radix(t, 16).ok());
        Ok(Reached {
            lsn,
            last_commit,
            timeline,
        })
    }

    /// Runs `sql` in `database` with `psql` over the private socket; returns its output
    /// (unaligned, tuples only, trimmed).
    ///
    /// Errors: `psql` fails (the message is its stderr) or takes longer than 10 minutes.
    pub async fn sql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let out = self
            .client("psql", &["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-d", database, "-c", sql])
            .output();
        let out = tokio::time::timeout(SQL_TIMEOUT, out)
            .await
            .context("psql did not answer within 10 minutes")??;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A client program of the server's binaries (`psql`, `pg_amcheck`) set up to reach
    /// it: `-h <socket dir> -p <port> -U <role>`, as its OS user when run as root.
    pub fn client(&self, program: &str, args: &[&str]) -> tokio::process::Command {
        let mut cmd = crate::child::async_command(self.bin.join(program));
        cmd.args(args)
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", PORT, "-U", &self.user])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        without_libpq_env(cmd.as_std_mut());
        cmd.env("LC_MESSAGES", "C");
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Whether the binaries include `program`.
    pub fn has(&self, program: &str) -> bool {
        self.bin.join(program).is_file()
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let status = guard.as_mut()?.try_wait().ok()??;
        *guard = None;
        Some(status)
    }

    /// The last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Fast shutdown (SIGINT), then SIGKILL after 60 s; waits for the process.
    pub async fn stop(self) {
        let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGINT);
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_login_is_told_from_a_server_not_ready() {
        let refused = [
            r#"psql: error: connection to server on socket "/d/sock/.s.PGSQL.5432" failed: FATAL:  role "nobody" does not exist"#,
            r#"psql: error: connection to server on socket "/d/sock/.s.PGSQL.5432" failed: FATAL:  role "x" is not permitted to log in"#,
            r#"psql: error: connection to server on socket "/d/sock/.s.PGSQL.5432" failed: FATAL:  password authentication failed for user "x""#,
        ];
        for m in refused {
            assert!(is_login_refused(m), "{m}");
        }
        let not_ready = [
            r#"psql: error: connection to server on socket "/d/sock/.s.PGSQL.5432" failed: No such file or directory"#,
            r#"psql: error: connection to server on socket "/d/sock/.s.PGSQL.5432" failed: FATAL:  the database system is starting up"#,
            r#"psql: error: connection to server on socket "/d/sock/.s.PGSQL.5432" failed: FATAL:  the database system is not yet accepting connections"#,
        ];
        for m in not_ready {
            assert!(!is_login_refused(m), "{m}");
        }
    }
}
