//! The peers: `pg_basebackup` in tar format (PostgreSQL docs, "pg_basebackup") restored with
//! `tar`, and pgBackRest (user guide, "Backup" and "Restore"; command reference of
//! `backup`, `restore`) with a posix repository.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use pgagent_tests::{OsUser, PgServer};

use crate::replay::pgbackrest::{dir_bytes, STANZA};
use crate::replay::sys::{command_as, path_str, run_checked, user_dir};

/// Compression of a `pg_basebackup -Ft` archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarCompression {
    /// `-z`: gzip (default level), on the client; `base.tar.gz`.
    Gzip,
    /// `--compress=client-zstd` (default level 3); `base.tar.zst`.
    Zstd,
}

impl TarCompression {
    /// `pg_basebackup` arguments selecting the compression.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            TarCompression::Gzip => &["-z"],
            TarCompression::Zstd => &["--compress=client-zstd"],
        }
    }

    /// The main archive's file name.
    pub fn archive(self) -> &'static str {
        match self {
            TarCompression::Gzip => "base.tar.gz",
            TarCompression::Zstd => "base.tar.zst",
        }
    }

    /// `tar` arguments that extract the archive.
    pub fn tar_args(self) -> &'static [&'static str] {
        match self {
            TarCompression::Gzip => &["-xzf"],
            TarCompression::Zstd => &["--zstd", "-xf"],
        }
    }
}

/// `pg_basebackup -D <dest> -Ft -X none -c fast <compression>` as `user`; `dest` must not
/// exist. Returns the bytes written (all archives plus `backup_manifest`).
pub fn pg_basebackup(
    pg: &PgServer,
    dest: &Path,
    compression: TarCompression,
    user: Option<&OsUser>,
) -> anyhow::Result<u64> {
    user_dir(dest, user)?;
    let mut cmd = command_as(user, pg.bin_dir().join("pg_basebackup"));
    cmd.arg("-D")
        .arg(dest)
        .args(["-Ft", "-X", "none", "-c", "fast"])
        .args(compression.args())
        .arg("-d")
        .arg(pg.conninfo(pgagent_tests::pg::REPL_USER));
    run_checked(&mut cmd, "pg_basebackup")?;
    Ok(dir_bytes(dest))
}

/// Extracts `<backup>/<archive>` into the new directory `pgdata` with `tar` as `user`.
pub fn untar(
    backup: &Path,
    compression: TarCompression,
    pgdata: &Path,
    user: Option<&OsUser>,
) -> anyhow::Result<()> {
    user_dir(pgdata, user)?;
    let mut cmd = command_as(user, "tar");
    cmd.args(compression.tar_args())
        .arg(backup.join(compression.archive()))
        .arg("-C")
        .arg(pgdata);
    run_checked(&mut cmd, "tar").map(drop)
}

/// A pgBackRest stanza in a posix repository for the primary, used as the PostgreSQL OS
/// user: zstd level 3, `process-max=2`, `start-fast=y`, `archive-check=n` (the WAL is not
/// archived with pgBackRest here, so its backups are restored without it).
#[derive(Debug)]
pub struct BackRest {
    bin: PathBuf,
    config: PathBuf,
    /// The repository.
    pub repo: PathBuf,
    user: Option<OsUser>,
}

impl BackRest {
    /// Writes the configuration under `dir` and runs `stanza-create`.
    ///
    /// Errors carry pgBackRest's output.
    pub fn create(
        bin: PathBuf,
        dir: &Path,
        pg: &PgServer,
        user: Option<&OsUser>,
    ) -> anyhow::Result<BackRest> {
        let repo = dir.join("repo");
        for sub in ["repo", "log", "lock", "spool"] {
            user_dir(&dir.join(sub), user)?;
        }
        let work = path_str(dir)?;
        let text = format!(
            "[global]\nrepo1-path={}\nlog-path={work}/log\nlock-path={work}/lock\n\
             spool-path={work}/spool\nlog-level-console=warn\nlog-level-file=info\n\
             compress-type=zst\ncompress-level=3\nprocess-max=2\nstart-fast=y\n\
             archive-check=n\nrepo1-retention-full=9\n\n\
             [{STANZA}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user={}\n",
            path_str(&repo)?,
            path_str(&pg.data_dir())?,
            pg.port(),
            path_str(&pg.socket_dir())?,
            pgagent_tests::pg::SUPERUSER
        );
        let config = dir.join("pgbackrest.conf");
        fs::write(&config, text).with_context(|| format!("write {}", config.display()))?;
        let this = BackRest {
            bin,
            config,
            repo,
            user: user.cloned(),
        };
        run_checked(
            &mut this.command(&["stanza-create"]),
            "pgbackrest stanza-create",
        )?;
        Ok(this)
    }

    /// `pgbackrest backup --type=<kind>` (`full`, `diff`, `incr`); returns the bytes the
    /// repository grew by.
    pub fn backup(&self, kind: &str) -> anyhow::Result<u64> {
        let before = dir_bytes(&self.repo);
        run_checked(
            &mut self.command(&["backup", &format!("--type={kind}")]),
            "pgbackrest backup",
        )?;
        Ok(dir_bytes(&self.repo).saturating_sub(before))
    }

    /// `pgbackrest restore` of the latest backup into the new, empty directory `pgdata`.
    pub fn restore(&self, pgdata: &Path) -> anyhow::Result<()> {
        user_dir(pgdata, self.user.as_ref())?;
        let path = format!("--pg1-path={}", path_str(pgdata)?);
        run_checked(&mut self.command(&["restore", &path]), "pgbackrest restore").map(drop)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = command_as(self.user.as_ref(), &self.bin);
        cmd.arg(format!("--config={}", self.config.display()))
            .arg(format!("--stanza={STANZA}"))
            .args(args);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_match_the_compression() {
        assert_eq!(TarCompression::Gzip.archive(), "base.tar.gz");
        assert_eq!(TarCompression::Zstd.args(), ["--compress=client-zstd"]);
        assert_eq!(TarCompression::Zstd.tar_args(), ["--zstd", "-xf"]);
    }
}
