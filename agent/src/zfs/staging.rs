//! The staging dataset: found behind `staging.dir`, created when `zfs.create_staging` asks,
//! and checked against [`super::props::STAGING_PROPERTIES`].

use std::collections::BTreeMap;
use std::path::Path;

use super::command::{Zfs, ZfsError};
use super::mounts::{mount_of, Mount};
use super::props::{check_staging, PropertyFinding, STAGING_PROPERTIES};
use crate::config::Config;

/// Where staging lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagingPlace {
    /// On this ZFS dataset.
    Dataset(String),
    /// Not on ZFS (the file system type the mount table shows).
    NotZfs(String),
}

/// The dataset of `dir`: `configured` when set, else the ZFS mount holding `dir` (or its
/// nearest existing ancestor).
pub fn staging_place(configured: &str, dir: &Path, mounts: &[Mount]) -> StagingPlace {
    if !configured.is_empty() {
        return StagingPlace::Dataset(configured.to_string());
    }
    let existing = dir
        .ancestors()
        .find_map(|a| a.canonicalize().ok())
        .unwrap_or_else(|| dir.to_path_buf());
    match mount_of(&existing, mounts) {
        Some(m) if m.is_zfs() => StagingPlace::Dataset(m.source.clone()),
        Some(m) => StagingPlace::NotZfs(m.fs_type.clone()),
        None => StagingPlace::NotZfs("unknown".into()),
    }
}

/// Creates `dataset` mounted at `dir` with the staging properties when it does not exist;
/// returns whether it did.
///
/// Errors: `zfs` failures (the parent dataset is missing, no permission).
pub fn ensure_created(zfs: &Zfs, dataset: &str, dir: &Path) -> Result<bool, ZfsError> {
    match zfs.get(dataset, &["mountpoint"]) {
        Ok(_) => return Ok(false),
        Err(e) if e.is_missing() => {}
        Err(e) => return Err(e),
    }
    let mountpoint = dir.display().to_string();
    let mut props: Vec<(&str, &str)> = STAGING_PROPERTIES.to_vec();
    props.push(("mountpoint", &mountpoint));
    zfs.create(dataset, &props)?;
    Ok(true)
}

/// The staging properties of `dataset` that are off, with the commands that fix them.
///
/// Errors: `zfs get` fails.
pub fn findings(zfs: &Zfs, dataset: &str) -> Result<Vec<PropertyFinding>, ZfsError> {
    let names: Vec<&str> = STAGING_PROPERTIES.iter().map(|(n, _)| *n).collect();
    let props: BTreeMap<String, String> = zfs
        .get(dataset, &names)?
        .into_iter()
        .map(|(k, (v, _))| (k, v))
        .collect();
    Ok(check_staging(dataset, &props))
}

/// What `pgagent run` does at start: creates the staging dataset if configured to, then
/// returns one warning per staging property that is off (none when staging is not on ZFS
/// and no dataset is configured: ZFS is optional).
///
/// Errors: creating the dataset fails.
pub fn startup_check(cfg: &Config) -> anyhow::Result<Vec<String>> {
    let z = &cfg.raw.zfs;
    let zfs = Zfs::new(&z.command);
    if z.create_staging && ensure_created(&zfs, &z.staging_dataset, cfg.staging_dir())? {
        tracing::info!(
            dataset = z.staging_dataset,
            "created the staging dataset at {}",
            cfg.staging_dir().display()
        );
    }
    let mounts = super::mounts::read_mounts().unwrap_or_default();
    let StagingPlace::Dataset(ds) = staging_place(&z.staging_dataset, cfg.staging_dir(), &mounts)
    else {
        return Ok(Vec::new());
    };
    Ok(match findings(&zfs, &ds) {
        Ok(f) => f
            .into_iter()
            .map(|f| {
                format!(
                    "staging dataset {ds}: {}={} (want {}); fix: {}",
                    f.property, f.have, f.want, f.fix
                )
            })
            .collect(),
        Err(e) => vec![format!("staging dataset {ds}: {e}")],
    })
}
