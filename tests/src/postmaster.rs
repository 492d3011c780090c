//! The postmaster as a child process of the test.
//!
//! The server is started directly rather than with `pg_ctl start`, which leaves it orphaned:
//! as a child it is reaped by the test after a crash (SIGKILL), so its pid cannot linger as a
//! zombie that a new postmaster would take for a running instance (PostgreSQL checks the pid
//! in `postmaster.pid` with `kill(pid, 0)`), even where pid 1 does not reap orphans.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::util::{child_pids, log_tail, process_alive, send_signal, wait_until};

/// How long a start (including crash recovery) or a shutdown may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(120);

/// Line of `postmaster.pid` holding the server status, counting from 1, and the statuses that
/// mean "accepting connections" (src/include/utils/pidfile.h: `LOCK_FILE_LINE_PM_STATUS`,
/// `PM_STATUS_READY`, `PM_STATUS_STANDBY`). `pg_ctl -w` waits for the same.
const PM_STATUS_LINE: usize = 8;
const READY_STATUSES: &[&str] = &["ready", "standby"];

/// Shutdown modes (PostgreSQL docs, section 19.5 "Shutting Down the Server").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    /// SIGINT: abort sessions, checkpoint, exit.
    Fast,
    /// SIGQUIT: exit without a checkpoint; the next start runs crash recovery.
    Immediate,
}

/// A running postmaster.
#[derive(Debug)]
pub(crate) struct Postmaster {
    child: Child,
    data_dir: PathBuf,
    log_file: PathBuf,
}

impl Postmaster {
    /// Spawns `postgres` (a command prepared by the caller, without `-D`) on `data_dir`,
    /// appending its output to `log_file`, and waits until it accepts connections.
    pub(crate) fn start(
        mut cmd: Command,
        data_dir: &Path,
        log_file: &Path,
    ) -> anyhow::Result<Postmaster> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .with_context(|| format!("open {}", log_file.display()))?;
        let child = cmd
            .arg("-D")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn postgres")?;
        let mut postmaster = Postmaster {
            child,
            data_dir: data_dir.to_path_buf(),
            log_file: log_file.to_path_buf(),
        };
        postmaster.wait_ready()?;
        Ok(postmaster)
    }

    /// Process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the postmaster has exited (it is reaped), else `None`.
    pub(crate) fn try_exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Sends a signal by name (`HUP` reloads the configuration).
    pub(crate) fn signal(&self, signal: &str) -> anyhow::Result<()> {
        send_signal(self.pid(), signal)
    }

    /// Requests a shutdown and waits for the postmaster to exit.
    pub(crate) fn stop(mut self, mode: StopMode) -> anyhow::Result<ExitStatus> {
        self.signal(match mode {
            StopMode::Fast => "INT",
            StopMode::Immediate => "QUIT",
        })?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "postmaster did not stop within {TIMEOUT:?}\nserver log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as in a power loss: reaps the postmaster, then waits (up to 10 s) for its
    /// children to notice and exit; stragglers get SIGKILL too. Returns once no process of
    /// the instance is left.
    pub(crate) fn crash(mut self) -> anyhow::Result<()> {
        let children = child_pids(self.pid());
        // kill() fails only if the child already exited; wait() reaps it either way.
        let _ = self.child.kill();
        self.child.wait().context("reap postmaster")?;
        let all_gone = || children.iter().all(|c| !process_alive(*c));
        if !wait_until(Duration::from_secs(10), Duration::from_millis(20), all_gone) {
            for child in children.iter().filter(|c| process_alive(**c)) {
                // The process may exit between the check and the signal; that is fine.
                let _ = send_signal(*child, "KILL");
            }
            if !wait_until(Duration::from_secs(10), Duration::from_millis(20), all_gone) {
                bail!("server processes {children:?} still alive after SIGKILL");
            }
        }
        Ok(())
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        let pid = self.pid().to_string();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "postgres exited during startup ({status})\nserver log:\n{}",
                    self.log_tail()
                );
            }
            // The file may be absent, stale (another pid) or half-written; all mean "not yet".
            if let Ok(text) = fs::read_to_string(self.data_dir.join("postmaster.pid")) {
                let lines: Vec<&str> = text.lines().collect();
                let status = lines.get(PM_STATUS_LINE - 1).map(|s| s.trim());
                if lines.first().map(|s| s.trim()) == Some(pid.as_str())
                    && status.is_some_and(|s| READY_STATUSES.contains(&s))
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "postgres not ready within {TIMEOUT:?}\nserver log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log_file, 8192)
    }
}
