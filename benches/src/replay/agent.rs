//! pgagent's two roles in the benchmark: `pgagent run` filling the bucket while the WAL is
//! written ([`Streamer`]), and the configuration file `pgagent fetch` reads as
//! `restore_command` ([`FetchConfig`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgagent_protocol::Lsn;
use pgagent_tests::util::{log_tail, send_signal, LIBPQ_ENV};
use pgagent_tests::{Garage, OsUser, PgServer};

use super::sys::{path_str, write_private};

/// How long `pgagent run` may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// How often `status.json` and the slot are polled.
const POLL: Duration = Duration::from_millis(100);

/// `pgagent run` streaming a cluster's WAL into a store (slot `pgagent`, created by the
/// daemon with its defaults: zstd level 3, upload concurrency 8), metrics listener off unless
/// the caller's environment turns it on. Dropping it kills the process.
#[derive(Debug)]
pub struct Streamer {
    child: Option<Child>,
    staging: PathBuf,
    log: PathBuf,
}

impl Streamer {
    /// Starts the daemon for `store_url` (with `env` added last, so it may override the
    /// defaults here: S3 credentials, `PGAGENT_METRICS_LISTEN`, other settings), its
    /// staging directory and log under `dir`, and waits (up to
    /// 60 s) until its slot is active, so that any base backup taken afterwards starts at
    /// WAL the daemon streams.
    ///
    /// Errors: the process cannot start, exits, or its slot does not become active.
    pub fn start(
        bin: &Path,
        pg: &PgServer,
        store_url: &str,
        env: &[(&'static str, String)],
        dir: &Path,
    ) -> anyhow::Result<Streamer> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let staging = dir.join("staging");
        let log = dir.join("pgagent-run.log");
        let out = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .env(
                "PGAGENT_POSTGRES_CONNINFO",
                pg.conninfo(pgagent_tests::pg::REPL_USER),
            )
            .env("PGAGENT_STAGING_DIR", &staging)
            .env("PGAGENT_STORE_URL", store_url)
            .env("PGAGENT_METRICS_LISTEN", "")
            .env("PGAGENT_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v)));
        for var in LIBPQ_ENV {
            cmd.env_remove(var);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {} run", bin.display()))?;
        let mut streamer = Streamer {
            child: Some(child),
            staging,
            log,
        };
        streamer.wait_for(
            "its replication slot to be active",
            Duration::from_secs(60),
            || {
                pg.psql("SELECT count(*) FROM pg_replication_slots WHERE active")
                    .is_ok_and(|n| n != "0")
            },
        )?;
        Ok(streamer)
    }

    /// Waits until `status.json` shows `uploaded_lsn >= end`: every segment before `end` is
    /// durable in the bucket.
    pub fn wait_uploaded(&mut self, end: Lsn, timeout: Duration) -> anyhow::Result<()> {
        let status = self.staging.join("status.json");
        self.wait_for(&format!("uploaded_lsn >= {end}"), timeout, || {
            uploaded_lsn(&fs::read_to_string(&status).unwrap_or_default()).is_some_and(|l| l >= end)
        })
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub fn stop(mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("not running")?;
        send_signal(child.id(), "TERM")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("pgagent run exited with {status}\n{}", self.log_tail());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "pgagent run did not stop within {STOP_TIMEOUT:?}\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done() {
            let exited = match self.child.as_mut() {
                Some(c) => c.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() > deadline {
                bail!(
                    "pgagent run {} before {what}\n{}",
                    if exited { "exited" } else { "timed out" },
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log, 8192)
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `uploaded_lsn` from the text of the daemon's `status.json`.
pub fn uploaded_lsn(status_json: &str) -> Option<Lsn> {
    let status: serde_json::Value = serde_json::from_str(status_json).ok()?;
    status.get("uploaded_lsn")?.as_str()?.parse().ok()
}

/// The `[fetch]` settings a case writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchTuning {
    /// `fetch.idle_timeout`: the restore-mode server exits, logging its summary, after this
    /// long without a request (whole seconds, at least 1).
    pub idle_timeout: Duration,
    /// `fetch.prefetch`, `None` for pgagent's default.
    pub prefetch: Option<usize>,
    /// `fetch.cache_size` in bytes, `None` for pgagent's default.
    pub cache_bytes: Option<u64>,
}

impl FetchTuning {
    /// pgagent's defaults but for the idle timeout.
    pub fn idle(idle_timeout: Duration) -> FetchTuning {
        FetchTuning {
            idle_timeout,
            prefetch: None,
            cache_bytes: None,
        }
    }
}

/// A `pgagent` configuration file for `restore_command` (DESIGN.md "Configuration"): the
/// store and its credentials, a staging directory of its own (where the restore-mode fetch
/// server puts its socket, lock, log and prefetch cache), and the [`FetchTuning`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchConfig {
    /// The configuration file.
    pub path: PathBuf,
    /// Its staging directory.
    pub staging: PathBuf,
}

impl FetchConfig {
    /// Writes `<dir>/pgagent.toml` for `store_url` with `garage`'s key and
    /// `<dir>/staging`, both given to `user`; with `BENCH_PASSPHRASE`, also
    /// `<dir>/passphrase` (mode 0600), named by `[encryption] passphrase_file`.
    pub fn write(
        dir: &Path,
        garage: &Garage,
        store_url: &str,
        tuning: FetchTuning,
        user: Option<&OsUser>,
    ) -> anyhow::Result<FetchConfig> {
        let staging = dir.join("staging");
        super::sys::user_dir(&staging, user)?;
        let path = dir.join("pgagent.toml");
        let mut text = fetch_config_toml(
            store_url,
            garage.access_key_id(),
            garage.secret_access_key(),
            path_str(&staging)?,
            tuning,
        );
        if let Some(p) = crate::bench_passphrase() {
            let file = dir.join("passphrase");
            write_private(&file, &p, user)?;
            text.push_str(&format!(
                "\n[encryption]\npassphrase_file = {}\n",
                toml_string(path_str(&file)?)
            ));
        }
        write_private(&path, &text, user)?;
        Ok(FetchConfig { path, staging })
    }

    /// `<pgagent> --config <file> fetch` (append `%f %p` or a name and a path).
    pub fn command(&self, pgagent: &Path) -> anyhow::Result<String> {
        Ok(format!(
            "{} --config {} fetch",
            super::sys::shell_quote(path_str(pgagent)?),
            super::sys::shell_quote(path_str(&self.path)?)
        ))
    }

    /// The logs of the restore-mode servers started with this configuration
    /// (`fetch-<id>.log` in the staging directory), concatenated.
    pub fn server_logs(&self) -> String {
        let Ok(entries) = fs::read_dir(&self.staging) else {
            return String::new();
        };
        entries
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                (name.starts_with("fetch-") && name.ends_with(".log"))
                    .then(|| fs::read_to_string(e.path()).unwrap_or_default())
            })
            .collect()
    }

    /// The prefetch cache directories of those servers (`fetch-<id>.cache`).
    pub fn cache_dirs(&self) -> Vec<PathBuf> {
        fs::read_dir(&self.staging)
            .map(|entries| {
                entries
                    .filter_map(|e| Some(e.ok()?.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "cache"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The text of a fetch configuration file.
pub fn fetch_config_toml(
    store_url: &str,
    access_key_id: &str,
    secret_access_key: &str,
    staging: &str,
    tuning: FetchTuning,
) -> String {
    let mut s = format!(
        "[store]\nurl = {}\naccess_key_id = {}\nsecret_access_key = {}\n\n\
         [staging]\ndir = {}\n\n[fetch]\nidle_timeout = \"{}s\"\n",
        toml_string(store_url),
        toml_string(access_key_id),
        toml_string(secret_access_key),
        toml_string(staging),
        tuning.idle_timeout.as_secs().max(1)
    );
    if let Some(n) = tuning.prefetch {
        s.push_str(&format!("prefetch = {n}\n"));
    }
    if let Some(bytes) = tuning.cache_bytes {
        s.push_str(&format!("cache_size = {bytes}\n"));
    }
    s
}

/// A TOML basic string (quotes and backslashes escaped).
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_uploaded_lsn() {
        assert_eq!(
            uploaded_lsn(r#"{"received_lsn":"0/5000000","uploaded_lsn":"0/4000000"}"#),
            Some(Lsn(0x400_0000))
        );
        assert_eq!(uploaded_lsn(r#"{"uploaded_lsn":null}"#), None);
        assert_eq!(uploaded_lsn("{"), None);
    }

    #[test]
    fn writes_fetch_configuration() {
        let text = fetch_config_toml(
            "s3://b/p?endpoint=http://127.0.0.1:1&region=garage&path_style=true",
            "GK1",
            "se\"cret",
            "/tmp/s",
            FetchTuning::idle(Duration::from_secs(5)),
        );
        assert_eq!(
            text,
            "[store]\nurl = \"s3://b/p?endpoint=http://127.0.0.1:1&region=garage&path_style=true\"\n\
             access_key_id = \"GK1\"\nsecret_access_key = \"se\\\"cret\"\n\n\
             [staging]\ndir = \"/tmp/s\"\n\n[fetch]\nidle_timeout = \"5s\"\n"
        );
        let wide = fetch_config_toml(
            "file:///s",
            "k",
            "s",
            "/tmp/s",
            FetchTuning {
                idle_timeout: Duration::from_millis(2500),
                prefetch: Some(48),
                cache_bytes: Some(1 << 30),
            },
        );
        assert!(
            wide.ends_with("idle_timeout = \"2s\"\nprefetch = 48\ncache_size = 1073741824\n"),
            "{wide}"
        );
    }
}
