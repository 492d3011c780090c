//! pgagent's side: the one-shot `pgagent backup`, `pgagent restore` and `pgagent list backups` against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use pgagent_tests::util::LIBPQ_ENV;
use pgagent_tests::PgServer;

use crate::replay::sys::run_checked;

/// A store and the environment its commands need (S3 credentials; nothing for `file://`).
#[derive(Debug, Clone)]
pub struct Store {
    /// `store.url`: `file:///path` or `s3://bucket/prefix?endpoint=…`.
    pub url: String,
    /// Extra environment (`AWS_ACCESS_KEY_ID`, …).
    pub env: Vec<(&'static str, String)>,
    /// The store's root directory for a `file://` store, `None` for S3.
    pub root: Option<PathBuf>,
}

impl Store {
    /// A `file://` store rooted at `root`.
    pub fn file(root: &Path) -> Store {
        Store {
            url: format!("file://{}", root.display()),
            env: Vec::new(),
            root: Some(root.to_path_buf()),
        }
    }

    /// Bytes of the base backups on disk (`chunks/` and `backups/`, DESIGN.md "Store
    /// layout"); `None` for S3.
    pub fn backup_bytes(&self) -> Option<u64> {
        let root = self.root.as_ref()?;
        Some(
            crate::replay::pgbackrest::dir_bytes(&root.join("chunks"))
                + crate::replay::pgbackrest::dir_bytes(&root.join("backups")),
        )
    }

    /// `pgagent <args>` with the store, the primary's replication conninfo, `staging` and
    /// the metrics listener off, libpq's variables removed.
    fn command(&self, bin: &Path, pg: &PgServer, staging: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .env(
                "PGAGENT_POSTGRES_CONNINFO",
                pg.conninfo(pgagent_tests::pg::REPL_USER),
            )
            .env("PGAGENT_STAGING_DIR", staging)
            .env("PGAGENT_STORE_URL", &self.url)
            .env("PGAGENT_METRICS_LISTEN", "")
            .env("PGAGENT_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (*k, v)));
        for var in LIBPQ_ENV {
            cmd.env_remove(var);
        }
        cmd
    }
}

/// One backup as `pgagent list backups --json` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// Backup id.
    pub id: String,
    /// Bytes of the files the backup holds, uncompressed.
    pub size_bytes: u64,
    /// Stored bytes of the chunks this backup added (compressed).
    pub stored_bytes: u64,
}

/// The backups in the output of `pgagent list backups --json` (an array of objects with
/// `id`, `size_bytes`, `stored_bytes`), in the order listed.
pub fn parse_backups(json: &str) -> anyhow::Result<Vec<BackupInfo>> {
    let value: serde_json::Value = serde_json::from_str(json).context("list backups output")?;
    let items = value
        .as_array()
        .or_else(|| value.get("backups").and_then(|b| b.as_array()))
        .context("list backups: not an array")?;
    items
        .iter()
        .map(|b| {
            let num = |k: &str| b.get(k).and_then(|v| v.as_u64()).context(k.to_owned());
            Ok(BackupInfo {
                id: b
                    .get("id")
                    .and_then(|v| v.as_str())
                    .context("id")?
                    .to_owned(),
                size_bytes: num("size_bytes")?,
                stored_bytes: num("stored_bytes")?,
            })
        })
        .collect()
}

/// `pgagent` one-shot commands against one store, with a staging directory of their own.
#[derive(Debug)]
pub struct Client<'a> {
    /// The `pgagent` binary.
    pub bin: &'a Path,
    /// The primary (for `postgres.conninfo`).
    pub pg: &'a PgServer,
    /// The store.
    pub store: &'a Store,
    /// Staging directory of the one-shot commands.
    pub staging: PathBuf,
}

impl Client<'_> {
    /// `pgagent backup --fast`; returns the backup it added to the list.
    ///
    /// Errors carry pgagent's output, or say that no new backup is listed.
    pub fn backup(&self) -> anyhow::Result<BackupInfo> {
        self.backup_printed().map(|(info, _)| info)
    }

    /// [`Client::backup`], also returning what `pgagent backup` printed (e.g. why it is
    /// full and not incremental).
    pub fn backup_printed(&self) -> anyhow::Result<(BackupInfo, String)> {
        let before = self.list()?;
        let mut cmd = self
            .store
            .command(self.bin, self.pg, &self.staging, &["backup", "--fast"]);
        let printed = run_checked(&mut cmd, "pgagent backup")?;
        let info = self
            .list()?
            .into_iter()
            .find(|b| !before.iter().any(|o| o.id == b.id))
            .context("pgagent backup succeeded but lists no new backup")?;
        Ok((info, printed))
    }

    /// `pgagent restore --help`.
    pub fn restore_help(&self) -> anyhow::Result<String> {
        let mut cmd = self
            .store
            .command(self.bin, self.pg, &self.staging, &["restore", "--help"]);
        run_checked(&mut cmd, "pgagent restore --help")
    }

    /// `pgagent restore --pgdata <pgdata> --backup <id>` into a missing or empty directory.
    pub fn restore(&self, id: &str, pgdata: &Path) -> anyhow::Result<()> {
        let pgdata = pgdata.to_str().context("non-UTF-8 path")?;
        let mut cmd = self.store.command(
            self.bin,
            self.pg,
            &self.staging,
            &["restore", "--pgdata", pgdata, "--backup", id],
        );
        run_checked(&mut cmd, "pgagent restore").map(drop)
    }

    /// `pgagent list backups --json`.
    pub fn list(&self) -> anyhow::Result<Vec<BackupInfo>> {
        let mut cmd = self.store.command(
            self.bin,
            self.pg,
            &self.staging,
            &["list", "backups", "--json"],
        );
        parse_backups(&run_checked(&mut cmd, "pgagent list backups")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_backup_list() {
        let list = parse_backups(
            r#"[{"id":"20261121T120000Z","size_bytes":100,"stored_bytes":40,"dedup_ratio":2.5},
                {"id":"b2","size_bytes":100,"stored_bytes":2}]"#,
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].id, "b2");
        assert_eq!((list[0].size_bytes, list[0].stored_bytes), (100, 40));
        assert!(parse_backups(r#"[{"id":"x"}]"#).is_err());
        assert!(parse_backups("{").is_err());
    }
}
