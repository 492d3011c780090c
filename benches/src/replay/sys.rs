//! Commands run as the PostgreSQL OS user, and directories it can use.
//!
//! PostgreSQL runs `restore_command` as its own OS user, so everything a case hands to it (the
//! archive, configuration files, staging and spool directories) must be readable or writable
//! by that user. When the benchmark runs as root that user is [`OsUser::for_postgres`]
//! (`postgres` by default); otherwise it is the current user and nothing changes hands.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use pgagent_tests::OsUser;
use tempfile::TempDir;

/// Prefixes of the environment variables that configure `pgagent` (one per configuration
/// section, DESIGN.md "Configuration"), removed from every command the benchmark starts.
const PGAGENT_CONFIG_ENV: &[&str] = &[
    "PGAGENT_POSTGRES_",
    "PGAGENT_STAGING_",
    "PGAGENT_STORE_",
    "PGAGENT_WAL_",
    "PGAGENT_FETCH_",
    "PGAGENT_BACKUP_",
    "PGAGENT_METRICS_",
];

/// The OS user PostgreSQL runs as, `None` when that is the current user.
pub fn pg_user() -> anyhow::Result<Option<OsUser>> {
    OsUser::for_postgres()
}

/// Removes the `pgagent` configuration variables from this process's environment, so that
/// neither the commands it starts nor the PostgreSQL servers (whose `restore_command`
/// inherits their environment) take settings from anywhere but the files the cases write.
///
/// Call it before any thread is started.
pub fn scrub_pgagent_env() {
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| PGAGENT_CONFIG_ENV.iter().any(|p| n.starts_with(p)))
        {
            std::env::remove_var(name);
        }
    }
}

/// `program args…` run as `user` (when given), with `XDG_RUNTIME_DIR` removed so a
/// restore-mode fetch server never picks root's runtime directory.
pub fn command_as(user: Option<&OsUser>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_remove("XDG_RUNTIME_DIR");
    if let Some(user) = user {
        cmd.uid(user.uid)
            .gid(user.gid)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    cmd
}

/// Runs `cmd` and returns its stdout; errors carry the status, stdout and stderr.
pub fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("spawn {what} ({cmd:?})"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// A temporary directory others may traverse (mode 0755), for trees handed to `user`.
pub fn shared_tempdir(prefix: &str) -> anyhow::Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("create temporary directory")?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// Creates `dir` (and its parents) and gives it to `user`.
pub fn user_dir(dir: &Path, user: Option<&OsUser>) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    chown_tree(dir, user)
}

/// `chown -R` of `path` to `user` (nothing when `None`).
pub fn chown_tree(path: &Path, user: Option<&OsUser>) -> anyhow::Result<()> {
    let Some(user) = user else {
        return Ok(());
    };
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", user.uid, user.gid))
        .arg(path)
        .status()
        .context("run chown")?;
    if !status.success() {
        bail!("chown -R {} failed: {status}", path.display());
    }
    Ok(())
}

/// Writes a file holding secrets (mode 0600) and gives it to `user`.
pub fn write_private(path: &Path, text: &str, user: Option<&OsUser>) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    chown_tree(path, user)
}

/// A path as UTF-8, for configuration files and command lines.
pub fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", p.display()))
}

/// Shell-quotes `s` for a `restore_command` (`sh -c`): single quotes, with `'` as `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn private_files_are_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.toml");
        write_private(&path, "x = 1\n", None).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), "x = 1\n");
    }
}
