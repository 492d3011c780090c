//! What `pgagent restore --delta` removes before it writes: what the backup does not hold.
//!
//! In the data directory, everything the manifest does not list goes (stale WAL, stray
//! files, planted symlinks). A tablespace directory is shared: PostgreSQL keeps each major
//! version's files in a directory of its own, `PG_<major>_<catalog version>`
//! (`TABLESPACE_VERSION_DIRECTORY`, `src/include/catalog/catalog.h`, created by
//! `create_tablespace_directories` in `src/backend/commands/tablespace.c`), so that
//! `pg_upgrade` can keep the old and the new cluster side by side in it. A backup owns only
//! its own version directory there: that one is cleaned, nothing else in the tablespace
//! directory is touched.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use pgagent_storage::manifest::BackupManifest;

use super::places::Places;

/// Removes what `manifest` does not hold from the data directory, and from the version
/// directory the backup owns in each tablespace directory; returns how many entries were
/// removed (a directory counts once).
///
/// Errors: an I/O error, naming the path.
pub(super) fn remove_unwanted(manifest: &BackupManifest, places: &Places) -> anyhow::Result<u64> {
    let wanted: HashSet<PathBuf> = manifest
        .entries()
        .map(|e| places.resolve(&e.path))
        .chain(
            places
                .tablespaces
                .iter()
                .map(|(oid, _)| places.pgdata.join(format!("pg_tblspc/{oid}"))),
        )
        .collect();
    let mut removed = remove_not_wanted(places.pgdata, &wanted)?;
    for (oid, dir) in &places.tablespaces {
        for name in owned_version_dirs(manifest, *oid) {
            let own = dir.join(&name);
            match fs::symlink_metadata(&own) {
                Ok(m) if m.is_dir() => removed += remove_not_wanted(&own, &wanted)?,
                // A file or a symlink where the backup has its directory: never followed.
                Ok(_) => {
                    fs::remove_file(&own).with_context(|| format!("remove {}", own.display()))?;
                    removed += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("read {}", own.display())),
            }
        }
    }
    Ok(removed)
}

/// The names of the version directories the backup holds in tablespace `oid`: the first
/// component of its paths under `pg_tblspc/<oid>/` that is `PG_<major>_<catalog version>`
/// for the backup's major version.
fn owned_version_dirs(manifest: &BackupManifest, oid: u32) -> BTreeSet<String> {
    let prefix = format!("pg_tblspc/{oid}/");
    let version = format!("PG_{}_", manifest.pg_version_num / 10000);
    manifest
        .files
        .iter()
        .filter_map(|e| e.path.strip_prefix(&prefix))
        .filter_map(|rest| rest.split('/').next())
        .filter(|name| {
            name.strip_prefix(&version)
                .is_some_and(|cat| !cat.is_empty() && cat.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
        .collect()
}

/// Removes what is under `dir` but not in `wanted` (not following symlinks: a symlink
/// not wanted is removed as a link). Returns how many entries were removed.
fn remove_not_wanted(dir: &Path, wanted: &HashSet<PathBuf>) -> anyhow::Result<u64> {
    let mut removed = 0;
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(0);
    };
    for e in entries {
        let path = e?.path();
        let meta = fs::symlink_metadata(&path)?;
        let keep = wanted.contains(&path)
            || (meta.is_dir() && wanted.iter().any(|w| w.starts_with(&path)));
        if !keep {
            if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            }
            .with_context(|| format!("remove {}", path.display()))?;
            removed += 1;
        } else if meta.is_dir() {
            removed += remove_not_wanted(&path, wanted)?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::places::Mode;
    use pgagent_storage::manifest::{BackupStatus, EntryKind, FileEntry, TablespaceEntry};

    fn entry(path: &str, kind: EntryKind) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind,
            mode: 0o700,
            size: 0,
            mtime: 0,
            chunks: vec![],
            target: None,
        }
    }

    /// A PostgreSQL 15 backup with tablespace 16390 at `location`.
    fn manifest(location: &Path) -> BackupManifest {
        use EntryKind::{Dir, File};
        BackupManifest {
            status: BackupStatus::Complete,
            pg_version_num: 150004,
            start_lsn: "0/2000028".into(),
            start_timeline: 1,
            chunk_size: 1000,
            tablespaces: vec![TablespaceEntry {
                oid: 16390,
                location: location.display().to_string(),
            }],
            files: vec![
                entry("PG_VERSION", File),
                entry("base", Dir),
                entry("pg_tblspc/16390/PG_15_202209061", Dir),
                entry("pg_tblspc/16390/PG_15_202209061/5", Dir),
                entry("pg_tblspc/16390/PG_15_202209061/5/16391", File),
            ],
            ..BackupManifest::announced("t")
        }
    }

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    #[test]
    fn only_the_backups_version_directory_is_cleaned_in_a_tablespace() {
        let d = tempfile::tempdir().unwrap();
        let (pgdata, ts) = (d.path().join("data"), d.path().join("ts"));
        let m = manifest(&ts);
        let own = ts.join("PG_15_202209061");
        // What the backup holds, in place.
        touch(&pgdata.join("PG_VERSION"));
        fs::create_dir_all(pgdata.join("base")).unwrap();
        touch(&own.join("5/16391"));
        // Another major version's directory (pg_upgrade), and a file at the tablespace root.
        touch(&ts.join("PG_16_202307071/5/16391"));
        touch(&ts.join("notes.txt"));
        // What the backup does not hold: in its version directory and in PGDATA.
        touch(&own.join("5/99999"));
        touch(&own.join("77/1"));
        touch(&pgdata.join("base/stray"));
        std::os::unix::fs::symlink(&ts, pgdata.join("planted")).unwrap();

        let original = |_oid: u32, location: &str| PathBuf::from(location);
        let places = Places::new(&m, &pgdata, &original, Mode::Delta).unwrap();
        assert_eq!(remove_unwanted(&m, &places).unwrap(), 4);

        assert!(ts.join("PG_16_202307071/5/16391").exists());
        assert!(ts.join("notes.txt").exists());
        assert!(own.join("5/16391").exists());
        assert!(!own.join("5/99999").exists());
        assert!(!own.join("77").exists());
        assert!(pgdata.join("PG_VERSION").exists());
        assert!(!pgdata.join("base/stray").exists());
        assert!(fs::symlink_metadata(pgdata.join("planted")).is_err());
    }

    #[test]
    fn a_symlink_in_place_of_the_version_directory_is_removed_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let (pgdata, ts, elsewhere) = (
            d.path().join("data"),
            d.path().join("ts"),
            d.path().join("elsewhere"),
        );
        fs::create_dir_all(&pgdata).unwrap();
        touch(&elsewhere.join("keep"));
        fs::create_dir_all(&ts).unwrap();
        std::os::unix::fs::symlink(&elsewhere, ts.join("PG_15_202209061")).unwrap();
        let m = manifest(&ts);
        let original = |_oid: u32, location: &str| PathBuf::from(location);
        let places = Places::new(&m, &pgdata, &original, Mode::Delta).unwrap();
        remove_unwanted(&m, &places).unwrap();
        assert!(fs::symlink_metadata(ts.join("PG_15_202209061")).is_err());
        assert!(elsewhere.join("keep").exists());
    }

    #[test]
    fn version_directories_are_those_of_the_backups_major() {
        let mut m = manifest(Path::new("/srv/ts"));
        m.files
            .push(entry("pg_tblspc/16390/PG_16_202307071", EntryKind::Dir));
        m.files
            .push(entry("pg_tblspc/16390/PG_15_", EntryKind::Dir));
        m.files.push(entry("pg_tblspc/16390/other", EntryKind::Dir));
        m.files
            .push(entry("pg_tblspc/99/PG_15_202209061", EntryKind::Dir));
        assert_eq!(
            owned_version_dirs(&m, 16390),
            BTreeSet::from(["PG_15_202209061".to_string()])
        );
        assert!(owned_version_dirs(&m, 1).is_empty());
    }
}
