//! Running the `pgagent` binary from tests: a long-lived daemon ([`AgentProcess`]) or a
//! one-shot command ([`run_pgagent`]).
//!
//! Children start in their own temporary working directory (so a stray `./pgagent.toml` is
//! never picked up) with the caller's environment minus `PGAGENT_*` settings and libpq
//! connection variables, plus the variables the test passes. Their stdout and stderr go to
//! files in that directory, readable at any time with [`AgentProcess::output_text`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::osuser::OsUser;
use crate::util::{keep_temp_dirs, send_signal, LIBPQ_ENV};

/// Environment variable naming the `pgagent` binary to test.
pub const PGAGENT_BIN_ENV: &str = "PGAGENT_BIN";
/// How long [`run_pgagent`] lets a command run before killing it.
pub const ONE_SHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long [`AgentProcess::terminate`] waits after SIGTERM.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);

/// The `pgagent` binary: `$PGAGENT_BIN`, else `debug/pgagent` under `$CARGO_TARGET_DIR` or the
/// workspace's `target/`.
///
/// # Panics
/// If the binary does not exist; build it first with `cargo build -p pgagent`.
pub fn pgagent_bin() -> PathBuf {
    if let Some(path) = std::env::var_os(PGAGENT_BIN_ENV) {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug").join("pgagent");
    assert!(
        bin.is_file(),
        "{} not found: build it first with `cargo build -p pgagent` (or set {PGAGENT_BIN_ENV})",
        bin.display()
    );
    bin
}

/// A `pgagent` process started by a test. Dropping it sends SIGKILL and waits; its directory
/// is removed unless `PGAGENT_TEST_KEEP=1`.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    dir: Option<TempDir>,
    root: PathBuf,
    status: Option<ExitStatus>,
}

impl AgentProcess {
    /// Starts `pgagent <args>` with `env` added to the scrubbed environment.
    ///
    /// # Panics
    /// If the binary is missing or cannot be spawned.
    pub fn spawn(args: &[&str], env: &[(&str, String)]) -> AgentProcess {
        AgentProcess::spawn_as(args, env, None)
    }

    /// [`AgentProcess::spawn`] as OS user `user` (the test runs as root) when given: the
    /// working directory is given to it too.
    ///
    /// # Panics
    /// As [`AgentProcess::spawn`]; the working directory cannot be given to `user`.
    pub fn spawn_as(args: &[&str], env: &[(&str, String)], user: Option<&OsUser>) -> AgentProcess {
        let dir = tempfile::Builder::new()
            .prefix("pgagent-run-")
            .tempdir()
            .expect("create temporary directory for pgagent");
        let root = dir.path().to_path_buf();
        let stdout = fs::File::create(root.join("stdout.log")).expect("create stdout.log");
        let stderr = fs::File::create(root.join("stderr.log")).expect("create stderr.log");
        let mut cmd = Command::new(pgagent_bin());
        cmd.args(args)
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env("RUST_BACKTRACE", "1");
        for (name, _) in std::env::vars_os() {
            let scrub = name.to_str().is_some_and(|n| {
                LIBPQ_ENV.contains(&n)
                    || n == "PGDATA"
                    || (n.starts_with("PGAGENT_")
                        && !n.starts_with("PGAGENT_TEST_")
                        && n != PGAGENT_BIN_ENV)
            });
            if scrub {
                cmd.env_remove(name);
            }
        }
        for (name, value) in env {
            cmd.env(name, value);
        }
        if let Some(user) = user {
            use std::os::unix::process::CommandExt;
            std::os::unix::fs::chown(&root, Some(user.uid), Some(user.gid))
                .expect("give the working directory to the OS user");
            cmd.uid(user.uid).gid(user.gid).env_remove("HOME");
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|err| panic!("spawn pgagent {}: {err}", args.join(" ")));
        AgentProcess {
            child,
            dir: Some(dir),
            root,
            status: None,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The working directory of the process, which also holds `stdout.log` and `stderr.log`;
    /// a convenient place for the test's config file.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Exit status if the process has exited, without blocking.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("wait for pgagent");
        }
        self.status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (a crash) and wait for the process.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        // Fails only if the process already exited; wait() then reaps it.
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for pgagent");
        self.status = Some(status);
        status
    }

    /// SIGTERM (a clean shutdown request) and wait for the exit, up to 30 s.
    ///
    /// # Panics
    /// If the process does not exit in time (it is then killed, and the panic message holds
    /// its output).
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        send_signal(self.pid(), "TERM").expect("send SIGTERM to pgagent");
        match self.wait_timeout(TERMINATE_TIMEOUT) {
            Some(status) => status,
            None => {
                self.kill9();
                panic!(
                    "pgagent did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM\n{}",
                    self.output_text()
                );
            }
        }
    }

    /// Everything written to stdout so far.
    pub fn stdout_text(&self) -> String {
        read_lossy(&self.root.join("stdout.log"))
    }

    /// Everything written to stderr so far.
    pub fn stderr_text(&self) -> String {
        read_lossy(&self.root.join("stderr.log"))
    }

    /// stdout and stderr so far, under headings, for assertions and failure messages.
    pub fn output_text(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout_text(),
            self.stderr_text()
        )
    }

    /// Status and captured output of a process that has exited (its status is recorded, so
    /// dropping `self` sends no signal).
    fn into_output(self, status: ExitStatus) -> Output {
        Output {
            status,
            stdout: fs::read(self.root.join("stdout.log")).unwrap_or_default(),
            stderr: fs::read(self.root.join("stderr.log")).unwrap_or_default(),
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill9();
        }
        if let Some(dir) = self.dir.take() {
            if keep_temp_dirs() {
                eprintln!("keeping pgagent directory {}", dir.keep().display());
            }
        }
    }
}

/// Runs `pgagent <args>` to completion (as [`AgentProcess::spawn`] does) and returns its
/// status and output.
///
/// # Panics
/// If it runs longer than [`ONE_SHOT_TIMEOUT`] (it is killed; the message holds its output).
pub fn run_pgagent(args: &[&str], env: &[(&str, String)]) -> Output {
    run_pgagent_as(args, env, None)
}

/// [`run_pgagent`] as OS user `user` when given (see [`AgentProcess::spawn_as`]).
///
/// # Panics
/// As [`run_pgagent`].
pub fn run_pgagent_as(args: &[&str], env: &[(&str, String)], user: Option<&OsUser>) -> Output {
    let mut process = AgentProcess::spawn_as(args, env, user);
    match process.wait_timeout(ONE_SHOT_TIMEOUT) {
        Some(status) => process.into_output(status),
        None => {
            process.kill9();
            panic!(
                "pgagent {} still running after {ONE_SHOT_TIMEOUT:?}\n{}",
                args.join(" "),
                process.output_text()
            );
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
