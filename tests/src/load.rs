//! A background pgbench load: started, left running while a test injects faults, and
//! stopped when the test wants the data to hold still.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::util::wait_until;
use crate::PgServer;

/// How long [`Load::stop`] waits for the server's pgbench sessions to end.
const SESSIONS_END_TIMEOUT: Duration = Duration::from_secs(30);

/// `pgbench` running in the background against database `postgres` as the superuser.
#[derive(Debug)]
pub struct Load {
    child: Child,
    started: Instant,
    log: PathBuf,
    _dir: TempDir,
}

impl Load {
    /// Starts `pgbench -n -T 86400 <args> postgres` (`-n`: no vacuum first); it runs until
    /// [`Load::stop`]. `args` give clients, rate, scripts, e.g. `["-c", "2", "-R", "150"]`.
    pub fn start(pg: &PgServer, args: &[&str]) -> anyhow::Result<Load> {
        let dir = tempfile::Builder::new()
            .prefix("pgagent-load-")
            .tempdir()
            .context("create temporary directory for pgbench")?;
        let log = dir.path().join("pgbench.log");
        let out = fs::File::create(&log).context("create pgbench.log")?;
        let mut cmd = pg.client_command("pgbench");
        cmd.args(["-n", "-T", "86400"])
            .args(args)
            .arg("postgres")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().context("spawn pgbench")?;
        Ok(Load {
            child,
            started: Instant::now(),
            log,
            _dir: dir,
        })
    }

    /// What pgbench printed so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops pgbench (SIGKILL; transactions in flight commit or roll back on the server)
    /// and waits until the server has no pgbench session left, so the data holds still.
    /// Returns how long the load ran.
    ///
    /// Errors: pgbench ended before it was stopped (its output is in the message), or its
    /// sessions did not end in time.
    pub fn stop(mut self, pg: &PgServer) -> anyhow::Result<Duration> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "pgbench ended by itself ({status}) after {:?}:\n{}",
                self.started.elapsed(),
                self.output()
            );
        }
        let ran = self.started.elapsed();
        let _ = self.child.kill();
        self.child.wait()?;
        let ended = wait_until(SESSIONS_END_TIMEOUT, Duration::from_millis(50), || {
            pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")
                .is_ok_and(|n| n == "0")
        });
        if !ended {
            bail!("pgbench sessions still open {SESSIONS_END_TIMEOUT:?} after pgbench was killed");
        }
        Ok(ran)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
