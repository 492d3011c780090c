//! Where a backup's files go on disk: the data directory and each tablespace's directory
//! (checked and made before anything is written).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use pgagent_storage::manifest::BackupManifest;

/// How to treat what is already in the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The directory is empty: create everything.
    Fresh,
    /// Keep files whose chunks already match, rewrite the others, remove what the backup
    /// does not hold: anything in the data directory, and in a tablespace directory only
    /// what is inside the backup's `PG_<major>_<catalog>` directory
    /// (`pgagent restore --delta`).
    Delta,
}

/// Where the files of tablespace `oid` go; by default its original location.
pub type TablespaceDir = dyn Fn(u32, &str) -> PathBuf + Send + Sync;

/// Maps manifest paths to places on disk.
pub(super) struct Places<'a> {
    /// The data directory.
    pub(super) pgdata: &'a Path,
    /// Each tablespace's OID and the directory its files go to.
    pub(super) tablespaces: Vec<(u32, PathBuf)>,
}

impl<'a> Places<'a> {
    /// The places of `manifest`'s tablespaces (see [`TablespaceDir`]), each made if missing.
    ///
    /// Errors: a tablespace directory that is relative, inside the data directory, or (with
    /// [`Mode::Fresh`]) not empty.
    pub(super) fn new(
        manifest: &BackupManifest,
        pgdata: &'a Path,
        tablespace_dir: &TablespaceDir,
        mode: Mode,
    ) -> anyhow::Result<Self> {
        let mut tablespaces = Vec::new();
        for t in &manifest.tablespaces {
            let dir = tablespace_dir(t.oid, &t.location);
            if !dir.is_absolute() {
                bail!(
                    "tablespace {}: {} is not an absolute path",
                    t.oid,
                    dir.display()
                );
            }
            if dir.starts_with(pgdata) && !dir.starts_with(pgdata.join("pg_tblspc")) {
                bail!(
                    "tablespace {}: {} is inside the data directory",
                    t.oid,
                    dir.display()
                );
            }
            match fs::read_dir(&dir).map(|mut d| d.next().is_none()) {
                Ok(false) if mode == Mode::Fresh => bail!(
                    "tablespace {}: {} is not empty; restore it elsewhere or empty it",
                    t.oid,
                    dir.display()
                ),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => make_dir(&dir, 0o700)?,
                Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
            }
            tablespaces.push((t.oid, dir));
        }
        Ok(Places {
            pgdata,
            tablespaces,
        })
    }

    fn tablespace(&self, oid: u32) -> Option<&Path> {
        self.tablespaces
            .iter()
            .find(|(o, _)| *o == oid)
            .map(|(_, d)| d.as_path())
    }

    /// Where a (checked) manifest path goes.
    pub(super) fn resolve(&self, path: &str) -> PathBuf {
        if let Some(rest) = path.strip_prefix("pg_tblspc/") {
            if let Some((oid, inner)) = rest.split_once('/') {
                if let Some(dir) = oid.parse().ok().and_then(|o| self.tablespace(o)) {
                    return dir.join(inner);
                }
            }
        }
        self.pgdata.join(path)
    }

    /// Makes `pg_tblspc/<oid>` a link to each tablespace's directory, unless the backup's
    /// files made it already. A backup taken with `TABLESPACE_MAP` has none; PostgreSQL
    /// recreates them from `tablespace_map` at recovery, but pg_verifybackup needs them
    /// before.
    ///
    /// Errors: I/O errors, naming the link.
    pub(super) fn link_tablespaces(&self) -> anyhow::Result<()> {
        for (oid, dir) in &self.tablespaces {
            let link = self.pgdata.join(format!("pg_tblspc/{oid}"));
            if fs::symlink_metadata(&link).is_ok() {
                continue;
            }
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("create {}", parent.display()))?;
            }
            std::os::unix::fs::symlink(dir, &link)
                .with_context(|| format!("create symlink {}", link.display()))?;
        }
        Ok(())
    }
}

pub(super) fn make_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    match fs::DirBuilder::new().mode(mode & 0o7777).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(e) => return Err(e).with_context(|| format!("create directory {}", path.display())),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
        .with_context(|| format!("chmod {}", path.display()))
}
