//! Child processes: every program pgagent starts (alert hooks through `sh -c`, `zfs`,
//! `psql`, `pg_config`, `postgres`, its own fetch server) is built here, so that none gets
//! the store's passphrase by accident.
//!
//! The passphrase may come in the environment ([`PASSPHRASE_ENV`]); a child inherits the
//! whole environment unless told otherwise, and an alert hook or a `zfs` wrapper has no use
//! for it (and may log its environment). [`command`] and [`async_command`] remove it. Only
//! the processes that open the store themselves keep it ([`keeping_passphrase`]): the
//! fetch server `pgagent fetch` starts, and a drill's throwaway server, whose
//! `restore_command` is `pgagent fetch`. `clippy.toml` forbids `Command::new` elsewhere.

use std::ffi::OsStr;

/// The environment variable that may hold the store's passphrase.
pub const PASSPHRASE_ENV: &str = "PGAGENT_ENCRYPTION_PASSPHRASE";

/// A command for `program` whose environment is this process's without [`PASSPHRASE_ENV`].
pub fn command(program: impl AsRef<OsStr>) -> std::process::Command {
    #[allow(clippy::disallowed_methods)] // the one place that may
    let mut cmd = std::process::Command::new(program);
    cmd.env_remove(PASSPHRASE_ENV);
    cmd
}

/// [`command`] for tokio.
pub fn async_command(program: impl AsRef<OsStr>) -> tokio::process::Command {
    tokio::process::Command::from(command(program))
}

/// A command for `program` with this process's whole environment, passphrase included:
/// only for a child that opens the store itself (`pgagent`'s fetch server, a drill's
/// server whose `restore_command` is `pgagent fetch`).
pub fn keeping_passphrase(program: impl AsRef<OsStr>) -> std::process::Command {
    #[allow(clippy::disallowed_methods)] // the one place that may
    std::process::Command::new(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removes_passphrase(cmd: &std::process::Command) -> bool {
        cmd.get_envs()
            .any(|(k, v)| k == PASSPHRASE_ENV && v.is_none())
    }

    #[test]
    fn only_the_children_that_open_the_store_keep_the_passphrase() {
        assert!(removes_passphrase(&command("zfs")));
        assert!(removes_passphrase(async_command("psql").as_std()));
        assert!(!removes_passphrase(&keeping_passphrase("postgres")));
    }
}
