//! The unprivileged OS users of the tests: the one PostgreSQL runs as when the tests run as
//! root, and others a test runs `pgagent` as ([`OsUser::named`]).

use std::os::unix::fs::MetadataExt;

use anyhow::{anyhow, Context};

use crate::pg::PG_USER_ENV;

/// An OS account from `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Numeric primary group id.
    pub gid: u32,
}

impl OsUser {
    /// `None` when the current process is not root (PostgreSQL then runs as the current user);
    /// otherwise the account named by `PGAGENT_TEST_PG_USER` (default `postgres`).
    pub fn for_postgres() -> anyhow::Result<Option<OsUser>> {
        // /proc/self belongs to the effective uid of the process reading it.
        let euid = std::fs::metadata("/proc/self")
            .context("stat /proc/self")?
            .uid();
        if euid != 0 {
            return Ok(None);
        }
        let name = std::env::var(PG_USER_ENV).unwrap_or_else(|_| "postgres".to_owned());
        OsUser::named(&name).map(Some).map_err(|_| {
            anyhow!(
                "running as root, and OS user {name:?} for PostgreSQL does not exist; \
                 run scripts/install-deps or set {PG_USER_ENV}"
            )
        })
    }

    /// The account `name` from `/etc/passwd`.
    ///
    /// Errors: `/etc/passwd` cannot be read or has no such account.
    pub fn named(name: &str) -> anyhow::Result<OsUser> {
        let passwd = std::fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
        parse_passwd(&passwd, name).ok_or_else(|| anyhow!("no OS user {name:?} in /etc/passwd"))
    }

    /// Whether the current process runs as root.
    pub fn running_as_root() -> bool {
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }
}

/// Finds `name` in `/etc/passwd` text (`name:password:uid:gid:gecos:home:shell`, passwd(5)).
fn parse_passwd(passwd: &str, name: &str) -> Option<OsUser> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(OsUser {
            name: name.to_owned(),
            uid,
            gid,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(
            parse_passwd(passwd, "postgres"),
            Some(OsUser {
                name: "postgres".into(),
                uid: 101,
                gid: 104
            })
        );
        assert_eq!(parse_passwd(passwd, "post"), None);
        assert_eq!(
            parse_passwd("broken:x:notanumber:1::/:/bin/sh", "broken"),
            None
        );
    }
}
