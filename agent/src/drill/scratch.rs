//! The scratch directory of one drill: `<drill.dir>/<id>/` holding the restored data
//! directory (`mnt/`, or `mnt/<path>` when a snapshot's data directory is `<path>` inside
//! its dataset, so that a clone of it can be mounted at `mnt/`), the server's private
//! socket directory (`sock/`), its configuration and log, and a marker (`pgagent.drill`)
//! naming the process that made it, its data directory and the ZFS clone it restored
//! into, if any.
//!
//! Only directories holding the marker are ever removed. At the start of each drill, those
//! whose process is gone (a drill that crashed or was killed) are cleaned up: their server
//! is stopped (SIGQUIT to the pid in `postmaster.pid`), their clone destroyed, their files
//! removed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::exit::Refused;

/// Name of the marker file.
pub const MARKER: &str = "pgagent.drill";

/// What the marker holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    /// The drill's process.
    pid: u32,
    /// The restored data directory.
    pgdata: PathBuf,
    /// The ZFS dataset cloned for it, to destroy with it.
    clone: Option<String>,
}

/// One drill's scratch directory.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    pgdata: PathBuf,
    owner: Option<(u32, u32)>,
    marker: Mutex<Marker>,
    zfs: PathBuf,
}

/// `drill.dir`, or `<staging.dir>/drill` when empty.
pub fn base_dir(cfg: &Config) -> PathBuf {
    if cfg.raw.drill.dir.as_os_str().is_empty() {
        cfg.staging_dir().join("drill")
    } else {
        cfg.raw.drill.dir.clone()
    }
}

/// Whether `dir` is `pgdata` or inside it (both made absolute; symbolic links resolved
/// as far as the paths exist).
pub fn inside(dir: &Path, pgdata: &Path) -> bool {
    let resolve = |p: &Path| {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        // Resolve the longest existing prefix, keep the rest as written.
        let mut existing = abs.clone();
        let mut rest = Vec::new();
        while !existing.exists() {
            match (existing.file_name(), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name.to_os_string());
                    existing = parent.to_path_buf();
                }
                _ => break,
            }
        }
        let mut out = existing.canonicalize().unwrap_or(existing);
        for name in rest.iter().rev() {
            out.push(name);
        }
        out
    };
    resolve(dir).starts_with(resolve(pgdata))
}

impl Scratch {
    /// Makes `<drill.dir>/<id>` (mode 0700, given to the PostgreSQL OS user when run as
    /// root), after cleaning up what interrupted drills left in `drill.dir`. The data
    /// directory will be `mnt/<in_dataset>` in it (see the module documentation).
    ///
    /// Errors: [`Refused`] (exit 3) when `drill.dir` is the live server's data directory
    /// (`SHOW data_directory`, when it answers, and `$PGDATA`) or inside it; I/O errors.
    pub async fn create(
        cfg: &Config,
        id: &str,
        in_dataset: Option<&str>,
    ) -> anyhow::Result<Scratch> {
        let base = base_dir(cfg);
        for pgdata in live_data_directories(cfg).await {
            if inside(&base, &pgdata) {
                return Err(Refused(format!(
                    "drill.dir {} is the live data directory {} or inside it: a drill never \
                     touches PGDATA; set drill.dir to a directory of its own",
                    base.display(),
                    pgdata.display()
                ))
                .into());
            }
        }
        std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
        clean_up_interrupted(&base, &cfg.raw.zfs.command);
        let dir = base.join(id);
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let owner = postgres_owner()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", dir.display()))?;
            if let Some(closed) = unreachable_ancestor(&dir, uid, gid) {
                let _ = std::fs::remove_dir_all(&dir);
                bail!(
                    "drill.dir {}: the postgres user cannot reach it ({} is closed to it); \
                     set drill.dir to a directory it can reach, e.g. /var/lib/pgagent-drill",
                    base.display(),
                    closed.display()
                );
            }
        }
        let mut pgdata = dir.join("mnt");
        if let Some(rel) = in_dataset.filter(|r| !r.is_empty()) {
            pgdata.push(rel.trim_start_matches('/'));
        }
        let scratch = Scratch {
            dir,
            pgdata: pgdata.clone(),
            owner,
            marker: Mutex::new(Marker {
                pid: std::process::id(),
                pgdata,
                clone: None,
            }),
            zfs: cfg.raw.zfs.command.clone(),
        };
        scratch.write_marker()?;
        Ok(scratch)
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the backup is restored.
    pub fn pgdata(&self) -> PathBuf {
        self.pgdata.clone()
    }

    /// The server's unix socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// Owner (uid, gid) of the restored files and the server process when run as root.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.owner
    }

    /// Records the ZFS dataset the restore cloned, to destroy with the directory.
    pub fn note_clone(&self, dataset: Option<&str>) {
        let mut m = self.marker.lock().unwrap_or_else(|e| e.into_inner());
        m.clone = dataset.map(str::to_string);
        drop(m);
        if let Err(e) = self.write_marker() {
            tracing::warn!("drill marker: {e:#}");
        }
    }

    fn write_marker(&self) -> anyhow::Result<()> {
        let m = self
            .marker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let path = self.dir.join(MARKER);
        std::fs::write(&path, serde_json::to_vec(&m)?)
            .with_context(|| format!("write {}", path.display()))
    }

    /// Destroys the clone (if any) and removes the directory, trying again for a few
    /// seconds: a restore cut short may still be finishing a file in it.
    ///
    /// Errors: `zfs destroy` or the removal still failed.
    pub async fn remove(self) -> anyhow::Result<()> {
        let clone = self
            .marker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone
            .clone();
        if let Some(dataset) = clone.as_deref() {
            destroy_clone(dataset, &self.zfs)?;
        }
        let mut tries = 0;
        loop {
            match std::fs::remove_dir_all(&self.dir) {
                Err(_) if tries < 10 && self.dir.exists() => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                done => return done.with_context(|| format!("remove {}", self.dir.display())),
            }
        }
    }
}

/// The first directory above `dir` (from `/` down) that user `uid` (group `gid`) may not
/// search, so cannot reach `dir` through: the server runs as that user.
pub fn unreachable_ancestor(dir: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut ancestors: Vec<&Path> = dir.ancestors().skip(1).collect();
    ancestors.reverse();
    ancestors.into_iter().find_map(|a| {
        let m = std::fs::metadata(a).ok()?;
        let mode = m.mode();
        let searchable = if m.uid() == uid {
            mode & 0o100 != 0
        } else if m.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        (!searchable).then(|| a.to_path_buf())
    })
}

/// Destroys `clone` (when set) and removes `dir`.
fn remove_dir(dir: &Path, clone: Option<&str>, zfs: &Path) -> anyhow::Result<()> {
    if let Some(dataset) = clone {
        destroy_clone(dataset, zfs)?;
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))
}

/// `zfs destroy -r <dataset>`.
fn destroy_clone(dataset: &str, zfs: &Path) -> anyhow::Result<()> {
    let out = crate::child::command(zfs)
        .args(["destroy", "-r", dataset])
        .output()
        .with_context(|| format!("{} destroy {dataset}", zfs.display()))?;
    if !out.status.success() {
        bail!(
            "zfs destroy -r {dataset}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Cleans up every scratch directory in `base` whose drill process is gone.
fn clean_up_interrupted(base: &Path, zfs: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(text) = std::fs::read(dir.join(MARKER)) else {
            continue;
        };
        let marker: Marker = serde_json::from_slice(&text).unwrap_or_default();
        if marker.pid != 0 && alive(marker.pid) {
            continue; // a drill running now
        }
        stop_postmaster(&marker.pgdata);
        match remove_dir(&dir, marker.clone.as_deref(), zfs) {
            Ok(()) => tracing::info!("removed {}, left by an interrupted drill", dir.display()),
            Err(e) => tracing::warn!("an interrupted drill's {} stays: {e:#}", dir.display()),
        }
    }
}

fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok())
}

/// Stops the postmaster of `pgdata` (the pid on the first line of `postmaster.pid`) with
/// SIGQUIT (immediate shutdown), then SIGKILL after 10 s.
fn stop_postmaster(pgdata: &Path) {
    let Some(pid) = std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
    else {
        return;
    };
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGQUIT).is_err() {
        return;
    }
    let until = Instant::now() + Duration::from_secs(10);
    while kill(pid, None).is_ok() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// The PostgreSQL OS user's (uid, gid) when run as root (`postgres`); `None` otherwise.
///
/// Errors: run as root on a machine without a `postgres` user.
pub fn postgres_owner() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")?.context(
        "run as root, a drill starts PostgreSQL as the user postgres, and there is none",
    )?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

/// The live server's data directory, as far as it can be known without waiting: `SHOW
/// data_directory` over `postgres.conninfo` and `$PGDATA`.
async fn live_data_directories(cfg: &Config) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PGDATA")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.extend(
        super::live::ask_live(cfg, "SHOW data_directory")
            .await
            .map(PathBuf::from),
    );
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_inside_or_equal_to_pgdata_is_inside() {
        let root = tempfile::tempdir().unwrap();
        let pgdata = root.path().join("data");
        std::fs::create_dir(&pgdata).unwrap();
        assert!(inside(&pgdata, &pgdata));
        assert!(inside(&pgdata.join("drill/x"), &pgdata));
        assert!(inside(&root.path().join("data/../data/drill"), &pgdata));
        assert!(!inside(&root.path().join("drill"), &pgdata));
        assert!(!inside(&root.path().join("data2"), &pgdata));
        // Through a symbolic link to PGDATA.
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&pgdata, &link).unwrap();
        assert!(inside(&link.join("drill"), &pgdata));
    }

    #[test]
    fn a_directory_closed_to_the_server_user_is_found() {
        let root = tempfile::tempdir().unwrap();
        let closed = root.path().join("closed");
        let dir = closed.join("drill/x");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A user that owns neither: `closed` (0700, another owner) stops it.
        let (uid, gid) = (4_000_000, 4_000_000);
        assert_eq!(unreachable_ancestor(&dir, uid, gid), Some(closed.clone()));
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(unreachable_ancestor(&dir, uid, gid), None);
    }

    #[test]
    fn an_interrupted_drill_is_cleaned_up_and_a_running_one_left_alone() {
        let base = tempfile::tempdir().unwrap();
        let dead = base.path().join("20261130T000000Z");
        let running = base.path().join("20261130T000001Z");
        let foreign = base.path().join("not-a-drill");
        for d in [&dead, &running, &foreign] {
            std::fs::create_dir_all(d.join("pgdata")).unwrap();
        }
        // A pid that is not running: past the kernel's pid limit.
        let gone = Marker {
            pid: 4_194_305,
            pgdata: dead.join("pgdata"),
            clone: None,
        };
        std::fs::write(dead.join(MARKER), serde_json::to_vec(&gone).unwrap()).unwrap();
        let ours = Marker {
            pid: std::process::id(),
            pgdata: running.join("pgdata"),
            clone: None,
        };
        std::fs::write(running.join(MARKER), serde_json::to_vec(&ours).unwrap()).unwrap();
        clean_up_interrupted(base.path(), Path::new("zfs"));
        assert!(!dead.exists());
        assert!(running.exists() && foreign.exists());
    }
}
