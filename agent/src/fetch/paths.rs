//! Where fetch servers listen.
//!
//! - The daemon (`pgagent run`) listens on `<staging.dir>/fetch.sock` and keeps its cache in
//!   `<staging.dir>/fetch-cache/`.
//! - A restore-mode server, started by `pgagent fetch` when no daemon answers, is keyed by
//!   the store (`<id>` = the first 12 hex digits of the blake3 hash of `store.url`):
//!   `fetch-<id>.sock`, `.lock` (held while it runs: no double start), `.log` and
//!   `fetch-<id>.cache/`, in the staging directory if it exists and is writable, else in a
//!   private runtime directory (`$XDG_RUNTIME_DIR/pgagent`, else `<tmp>/pgagent-<uid>`,
//!   mode 0700 and owned by the user, or not used at all).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;

/// Socket of the daemon's fetch server, in the staging directory.
pub fn daemon_socket(staging_dir: &Path) -> PathBuf {
    staging_dir.join("fetch.sock")
}

/// Cache directory of the daemon's fetch server.
pub fn daemon_cache(staging_dir: &Path) -> PathBuf {
    staging_dir.join("fetch-cache")
}

/// Files of the restore-mode server of one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePaths {
    /// The directory holding them.
    pub dir: PathBuf,
    /// Unix socket.
    pub socket: PathBuf,
    /// Lock file, locked while a server runs.
    pub lock: PathBuf,
    /// The server's log (stderr).
    pub log: PathBuf,
    /// Prefetch cache directory.
    pub cache: PathBuf,
}

/// What a fetch reads, as a client and a server compare it: the store URL for one store;
/// `name=url` of each store, in read order, for stores read as one (a `--store NAME…`
/// selection is another set, so another restore-mode server).
///
/// A store read as of a past time is another store to a server: ` as-of=<time>` follows
/// (the daemon, which serves the stores as they are, refuses such a request).
pub fn store_identity(cfg: &Config) -> String {
    let stores = if !crate::store::read::reads_a_set(cfg) {
        cfg.store().url.clone()
    } else {
        cfg.stores
            .iter()
            .map(|s| format!("{}={}", s.name, s.url))
            .collect::<Vec<_>>()
            .join(" ")
    };
    match cfg.as_of() {
        Some(t) => format!("{stores} as-of={}", humantime::format_rfc3339_seconds(t)),
        None => stores,
    }
}

impl RestorePaths {
    /// The paths for `cfg`; `None` when neither the staging directory nor a private runtime
    /// directory is usable (then `pgagent fetch` works standalone).
    pub fn for_config(cfg: &Config) -> Option<RestorePaths> {
        let dir = if is_writable_dir(cfg.staging_dir()) {
            cfg.staging_dir().to_path_buf()
        } else {
            private_runtime_dir()?
        };
        Some(Self::in_dir(&dir, &store_identity(cfg)))
    }

    /// The paths for the store `store_url` in `dir`.
    pub fn in_dir(dir: &Path, store_url: &str) -> RestorePaths {
        let hash = blake3::hash(store_url.as_bytes()).to_hex();
        let id = &hash.as_str()[..12];
        RestorePaths {
            dir: dir.to_path_buf(),
            socket: dir.join(format!("fetch-{id}.sock")),
            lock: dir.join(format!("fetch-{id}.lock")),
            log: dir.join(format!("fetch-{id}.log")),
            cache: dir.join(format!("fetch-{id}.cache")),
        }
    }

    /// Creates the directory if it is the private runtime directory and missing.
    ///
    /// Errors: it cannot be created, or exists with another owner or with access for
    /// others (someone else could serve WAL through it).
    pub fn prepare(&self) -> io::Result<()> {
        if !self.is_private_candidate() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        check_private(&self.dir)
    }

    fn is_private_candidate(&self) -> bool {
        private_runtime_dir_path().is_some_and(|p| p == self.dir)
    }
}

/// Whether `dir` is a directory this process may create files in.
fn is_writable_dir(dir: &Path) -> bool {
    fs::metadata(dir).is_ok_and(|m| m.is_dir())
        && rustix::fs::access(
            dir,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .is_ok()
}

fn private_runtime_dir_path() -> Option<PathBuf> {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_absolute() && Path::new(&d).is_dir() => {
            Some(Path::new(&d).join("pgagent"))
        }
        _ => Some(
            std::env::temp_dir().join(format!("pgagent-{}", rustix::process::geteuid().as_raw())),
        ),
    }
}

/// The private runtime directory, if it is missing (it will be created 0700) or safe.
fn private_runtime_dir() -> Option<PathBuf> {
    let dir = private_runtime_dir_path()?;
    match fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(dir),
        Ok(_) => check_private(&dir).ok().map(|()| dir),
        Err(_) => None,
    }
}

/// A directory only this user can use: a real directory, owned by us, no group/other access.
fn check_private(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: not a private directory of uid {me} (owner {}, mode {:o})",
                dir.display(),
                meta.uid(),
                meta.permissions().mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_keyed_by_the_store() {
        let a = RestorePaths::in_dir(Path::new("/s"), "s3://b/one");
        let b = RestorePaths::in_dir(Path::new("/s"), "s3://b/two");
        assert_ne!(a.socket, b.socket);
        assert!(a.socket.to_str().unwrap().starts_with("/s/fetch-"));
        assert!(a.socket.to_str().unwrap().ends_with(".sock"));
        assert_eq!(a.socket.file_stem(), a.lock.file_stem());
        // The socket path must fit sockaddr_un (108 bytes) for usual staging paths.
        assert!(a.socket.as_os_str().len() < 40);
    }

    #[test]
    fn a_shared_directory_is_not_private() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("rt");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_private(&dir).is_err());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        check_private(&dir).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(check_private(&link).is_err());
    }
}
