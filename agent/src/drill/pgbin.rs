//! Which PostgreSQL server binaries a drill runs: those of the restored cluster's major
//! version (`PG_VERSION` in its data directory), from `drill.pg_bin_dir`, Debian's
//! `/usr/lib/postgresql/<major>/bin`, or `pg_config --bindir`.

use std::path::{Path, PathBuf};

use crate::child::command;

use anyhow::{bail, Context};

/// The major version in `PG_VERSION` of a data directory (`15`, `16`…).
///
/// Errors: the file is missing or does not hold a version.
pub fn data_dir_major(pgdata: &Path) -> anyhow::Result<u32> {
    let path = pgdata.join("PG_VERSION");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("{}: {:?} is not a version", path.display(), text.trim()))
}

/// The major version in the output of `postgres --version`, e.g. `postgres (PostgreSQL)
/// 15.4 (Debian 15.4-1)` → 15.
pub fn major_of_version_output(text: &str) -> Option<u32> {
    let rest = text.split("(PostgreSQL)").nth(1)?.trim();
    let number: String = rest.chars().take_while(char::is_ascii_digit).collect();
    number.parse().ok()
}

/// The major version of the `postgres` binary in `dir`, `None` when there is none there.
fn server_major(dir: &Path) -> Option<u32> {
    let out = command(dir.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    major_of_version_output(&String::from_utf8_lossy(&out.stdout))
}

/// The directory of the `postgres` (and `psql`, `pg_amcheck`) binaries of `major`:
/// `configured` when set, else `/usr/lib/postgresql/<major>/bin`, else `pg_config
/// --bindir` when its server is that major.
///
/// Errors: `configured` holds no `postgres` of that major; none is found.
pub fn find(configured: &Path, major: u32) -> anyhow::Result<PathBuf> {
    if !configured.as_os_str().is_empty() {
        return match server_major(configured) {
            Some(m) if m == major => Ok(configured.to_path_buf()),
            Some(m) => bail!(
                "drill.pg_bin_dir = {} holds PostgreSQL {m}; the backup is PostgreSQL {major}",
                configured.display()
            ),
            None => bail!(
                "drill.pg_bin_dir = {}: no runnable postgres there",
                configured.display()
            ),
        };
    }
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if server_major(&debian) == Some(major) {
        return Ok(debian);
    }
    let from_pg_config = command("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| server_major(d) == Some(major)) {
        return Ok(dir);
    }
    bail!(
        "no PostgreSQL {major} server binaries found (tried {} and pg_config --bindir): \
         install PostgreSQL {major}'s server package, or set drill.pg_bin_dir",
        debian.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_major_is_read_from_version_output_and_pg_version() {
        assert_eq!(
            major_of_version_output("postgres (PostgreSQL) 15.4 (Debian 15.4-1.pgdg120+1)\n"),
            Some(15)
        );
        assert_eq!(
            major_of_version_output("postgres (PostgreSQL) 18beta1"),
            Some(18)
        );
        assert_eq!(major_of_version_output("postgres 9.6"), None);
        let dir = tempfile::tempdir().unwrap();
        assert!(data_dir_major(dir.path()).is_err());
        std::fs::write(dir.path().join("PG_VERSION"), "16\n").unwrap();
        assert_eq!(data_dir_major(dir.path()).unwrap(), 16);
        std::fs::write(dir.path().join("PG_VERSION"), "x\n").unwrap();
        assert!(data_dir_major(dir.path()).is_err());
    }

    #[test]
    fn a_configured_directory_without_postgres_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = find(dir.path(), 15).unwrap_err();
        assert!(e.to_string().contains("no runnable postgres"), "{e}");
    }
}
