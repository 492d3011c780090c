//! pgBackRest as the peer: a posix repository holding the same WAL, read back with
//! `pgbackrest archive-get` (pgBackRest user guide, "Asynchronous Archiving" and the
//! command reference of `archive-get`, `archive-push`, `stanza-create`).
//!
//! The repository is compressed with zstd level 3, as pgagent's objects are (pgBackRest's
//! default would be gzip level 6, slower to decompress). For replay, `archive-async=y`
//! with `archive-get-queue-max` = 256 MiB (16 segments, pgagent's `fetch.prefetch`) and
//! `process-max=2` (this machine's cores) lets a background process fill a spool directory
//! ahead of recovery.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use pgagent_tests::{OsUser, PgServer};

use super::sys::{command_as, path_str, run_checked, shell_quote, user_dir};

/// Stanza name.
pub const STANZA: &str = "bench";
/// Where Debian's package installs the program.
const DEBIAN_BIN: &str = "/usr/bin/pgbackrest";
/// `archive-get-queue-max`: 16 segments of 16 MiB, pgagent's default prefetch window.
pub const QUEUE_MAX: &str = "256MiB";
/// `process-max` of the asynchronous archive-get.
pub const PROCESS_MAX: u32 = 2;

/// The settings of one pgBackRest configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    /// `repo1-path`: the posix repository.
    pub repo: PathBuf,
    /// Directory holding `log/`, `lock/` and `spool/` of this configuration.
    pub work: PathBuf,
    /// `pg1-path`: the cluster whose `pg_control` pgBackRest checks against the stanza.
    pub pg_path: PathBuf,
    /// `pg1-port` and `pg1-socket-path`, for commands that connect (`stanza-create`).
    pub pg_conn: Option<(u16, PathBuf)>,
    /// `archive-async`: whether `archive-get` uses the spool queue.
    pub asynchronous: bool,
}

/// The text of a configuration file for `c` (pgBackRest configuration reference).
pub fn config_text(c: &RepoConfig) -> anyhow::Result<String> {
    let work = path_str(&c.work)?;
    let mut s = format!(
        "[global]\nrepo1-path={}\nlog-path={work}/log\nlock-path={work}/lock\n\
         spool-path={work}/spool\nlog-level-console=warn\nlog-level-file=info\n\
         compress-type=zst\ncompress-level=3\narchive-async={}\n\
         archive-get-queue-max={QUEUE_MAX}\nprocess-max={PROCESS_MAX}\n\n\
         [{STANZA}]\npg1-path={}\n",
        path_str(&c.repo)?,
        if c.asynchronous { "y" } else { "n" },
        path_str(&c.pg_path)?,
    );
    if let Some((port, socket)) = &c.pg_conn {
        s.push_str(&format!(
            "pg1-port={port}\npg1-socket-path={}\npg1-user={}\n",
            path_str(socket)?,
            pgagent_tests::pg::SUPERUSER
        ));
    }
    Ok(s)
}

/// The pgBackRest program: on `PATH` or where Debian puts it; when missing and running as
/// root, installs Debian's package `pgbackrest` with apt-get. `Err` says why the pgBackRest
/// rows are skipped.
pub fn locate_or_install() -> Result<PathBuf, String> {
    if let Some(bin) = find_bin() {
        return Ok(bin);
    }
    let root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        return Err("pgbackrest is not installed and this is not root: \
                    install Debian's package `pgbackrest` to run the pgBackRest rows"
            .to_owned());
    }
    eprintln!("installing Debian's package pgbackrest");
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "pgbackrest",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        install();
    }
    find_bin().ok_or_else(|| "apt-get install pgbackrest failed".to_owned())
}

fn find_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("pgbackrest"))
        .chain([PathBuf::from(DEBIAN_BIN)])
        .find(|p| p.is_file())
}

/// A stanza in a posix repository, used as the PostgreSQL OS user.
#[derive(Debug, Clone)]
pub struct PgBackRest {
    bin: PathBuf,
    repo: PathBuf,
    /// Configuration for `stanza-create` and `archive-push` against the primary.
    push_config: PathBuf,
    user: Option<OsUser>,
}

impl PgBackRest {
    /// Creates the repository under `dir` and the stanza for `primary`.
    ///
    /// Errors carry pgBackRest's output.
    pub fn create(
        bin: PathBuf,
        dir: &Path,
        primary: &PgServer,
        user: Option<&OsUser>,
    ) -> anyhow::Result<PgBackRest> {
        let repo = dir.join("repo");
        user_dir(&repo, user)?;
        let mut this = PgBackRest {
            bin,
            repo,
            push_config: PathBuf::new(),
            user: user.cloned(),
        };
        this.push_config = this.write_config(
            &dir.join("push"),
            &primary.data_dir(),
            Some((primary.port(), primary.socket_dir())),
            false,
        )?;
        run_checked(
            &mut this.command(&this.push_config, &["stanza-create"]),
            "pgbackrest stanza-create",
        )?;
        Ok(this)
    }

    /// `archive-push` of one WAL file into the repository.
    pub fn push(&self, file: &Path) -> anyhow::Result<()> {
        run_checked(
            &mut self.command(&self.push_config, &["archive-push", path_str(file)?]),
            "pgbackrest archive-push",
        )
        .map(drop)
    }

    /// Writes `<dir>/pgbackrest.conf` for reading the repository into the cluster at
    /// `pgdata`, with the log, lock and spool directories under `dir`; returns its path.
    pub fn case_config(
        &self,
        dir: &Path,
        pgdata: &Path,
        asynchronous: bool,
    ) -> anyhow::Result<PathBuf> {
        self.write_config(dir, pgdata, None, asynchronous)
    }

    /// `pgbackrest --config=<config> --stanza=bench archive-get` as a shell command
    /// (append `%f "%p"` or a name and a path).
    pub fn archive_get_command(&self, config: &Path) -> anyhow::Result<String> {
        Ok(format!(
            "{} --config={} --stanza={STANZA} archive-get",
            shell_quote(path_str(&self.bin)?),
            shell_quote(path_str(config)?)
        ))
    }

    /// The asynchronous archive-get's log for `config` (`<stanza>-archive-get-async.log`).
    pub fn async_log(config: &Path) -> String {
        let dir = config.parent().unwrap_or(Path::new("."));
        fs::read_to_string(
            dir.join("log")
                .join(format!("{STANZA}-archive-get-async.log")),
        )
        .unwrap_or_default()
    }

    fn write_config(
        &self,
        dir: &Path,
        pg_path: &Path,
        pg_conn: Option<(u16, PathBuf)>,
        asynchronous: bool,
    ) -> anyhow::Result<PathBuf> {
        for sub in ["log", "lock", "spool"] {
            user_dir(&dir.join(sub), self.user.as_ref())?;
        }
        let text = config_text(&RepoConfig {
            repo: self.repo.clone(),
            work: dir.to_path_buf(),
            pg_path: pg_path.to_path_buf(),
            pg_conn,
            asynchronous,
        })?;
        let path = dir.join("pgbackrest.conf");
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    fn command(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = command_as(self.user.as_ref(), &self.bin);
        cmd.arg(format!("--config={}", config.display()))
            .arg(format!("--stanza={STANZA}"))
            .args(args);
        cmd
    }

    /// Bytes the repository holds (its WAL, compressed).
    pub fn repo_bytes(&self) -> u64 {
        dir_bytes(&self.repo)
    }
}

/// Total size of the regular files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_asynchronous_reader_configuration() {
        let text = config_text(&RepoConfig {
            repo: "/b/repo".into(),
            work: "/b/case".into(),
            pg_path: "/b/data".into(),
            pg_conn: None,
            asynchronous: true,
        })
        .unwrap();
        assert_eq!(
            text,
            "[global]\nrepo1-path=/b/repo\nlog-path=/b/case/log\nlock-path=/b/case/lock\n\
             spool-path=/b/case/spool\nlog-level-console=warn\nlog-level-file=info\n\
             compress-type=zst\ncompress-level=3\narchive-async=y\n\
             archive-get-queue-max=256MiB\nprocess-max=2\n\n[bench]\npg1-path=/b/data\n"
        );
    }

    #[test]
    fn a_connecting_configuration_names_the_server() {
        let text = config_text(&RepoConfig {
            repo: "/b/repo".into(),
            work: "/b/push".into(),
            pg_path: "/p/data".into(),
            pg_conn: Some((5433, "/p/run".into())),
            asynchronous: false,
        })
        .unwrap();
        assert!(text.contains("archive-async=n\n"));
        assert!(text.ends_with(
            "pg1-path=/p/data\npg1-port=5433\npg1-socket-path=/p/run\npg1-user=postgres\n"
        ));
    }

    #[test]
    fn sums_file_sizes_recursively() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("a"), [0u8; 10]).unwrap();
        fs::write(d.path().join("sub/b"), [0u8; 5]).unwrap();
        assert_eq!(dir_bytes(d.path()), 15);
        assert_eq!(dir_bytes(&d.path().join("missing")), 0);
    }
}
