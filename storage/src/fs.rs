//! The file system backend (`file:///path`): one file per object under a root directory.
//!
//! Writes are atomic and durable. A body is written to a temporary file in the destination
//! directory, fsynced, then renamed (or hard-linked, for `put_if_absent`) onto its name, and
//! the directory is fsynced:
//!
//! - the file fsync comes before the rename because file systems may persist the rename
//!   before the data (ext4 delayed allocation, XFS): after a crash the name would point to an
//!   empty or short file, and pgagent would already have confirmed that WAL to the server;
//! - the directory fsync comes after because the new name is directory metadata: without it a
//!   power loss can forget the rename, and the object the caller was told is stored vanishes;
//! - directories created on the way are fsynced into their parents for the same reason.
//!
//! `put_if_absent` uses `link(2)`, which fails with `EEXIST` when the name exists, so two
//! writers racing on one key cannot both succeed, and readers never see a partial file.
//!
//! Temporary files are named `.pgagent-tmp-*` (a prefix refused in keys) and skipped by
//! `list`; a crash can leave one behind, which is harmless.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Op, StoreError};
use crate::layout::{validate_key, validate_prefix, TEMP_MARKER};
use crate::lock::{LockPolicy, Retention};
use crate::object_store::{ObjectMeta, ObjectStore, PutOutcome};

/// Objects stored as files below `root`; key `a/b` is the file `root/a/b`.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: Arc<PathBuf>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FsStore {
    /// Opens the store rooted at `root` (absolute), creating the directory if missing.
    ///
    /// Errors: [`StoreError::Config`] for a relative path; the I/O error of creating it.
    pub async fn open(root: PathBuf) -> Result<FsStore, StoreError> {
        if !root.is_absolute() {
            return Err(StoreError::config(format!(
                "store directory {} must be absolute",
                root.display()
            )));
        }
        let r = root.clone();
        blocking("", Op::Open, &root, move || fs::create_dir_all(&r)).await?;
        Ok(FsStore {
            root: Arc::new(root),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn write(
        &self,
        key: &str,
        body: Bytes,
        no_replace: bool,
    ) -> Result<PutOutcome, StoreError> {
        validate_key(key)?;
        let root = self.root.clone();
        let k = key.to_string();
        blocking(key, Op::Put, &self.root, move || {
            write_atomic(&root, &k, &body, no_replace)
        })
        .await
    }
}

/// Runs blocking file I/O off the async workers and maps its error for `key`.
async fn blocking<T: Send + 'static>(
    key: &str,
    op: Op,
    root: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| map_io(key, op, root, e)),
        Err(join) => Err(StoreError::Other {
            key: key.to_string(),
            op,
            detail: format!("file I/O task failed: {join}"),
            source: None,
        }),
    }
}

fn map_io(key: &str, op: Op, root: &Path, e: io::Error) -> StoreError {
    use io::ErrorKind as K;
    match e.kind() {
        // A missing component, or a component that is a file/directory where the other is
        // expected: in object-store terms the key simply does not exist.
        K::NotFound | K::NotADirectory | K::IsADirectory => StoreError::not_found(key),
        K::PermissionDenied | K::ReadOnlyFilesystem => StoreError::PermissionDenied {
            key: key.to_string(),
            op,
            hint: format!(
                "the user running pgagent needs read/write access to {}",
                root.display()
            ),
            source: Some(Box::new(e)),
        },
        K::StorageFull | K::QuotaExceeded | K::TimedOut | K::Interrupted | K::WouldBlock => {
            StoreError::Transient {
                key: key.to_string(),
                op,
                detail: e.to_string(),
                source: Some(Box::new(e)),
            }
        }
        _ => StoreError::Other {
            key: key.to_string(),
            op,
            detail: e.to_string(),
            source: Some(Box::new(e)),
        },
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents below `root`; returns the directories whose
/// entries changed (the parents of those created), which must be fsynced for the new
/// directories to survive a crash.
fn create_dirs(root: &Path, dir: &Path, changed: &mut Vec<PathBuf>) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(root);
    if parent != root && parent.starts_with(root) {
        create_dirs(root, parent, changed)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            changed.push(parent.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes `dir` and its parents below `root` while they are empty, as an object store has
/// no directories: the deltas of a segment live under `<segment>.partial.d/`, which would
/// otherwise stay behind, empty, once they are deleted. Stops at the first directory that
/// is not empty (or any error). A writer that created one of these directories and finds it
/// gone retries ([`create_temp_file`]); once its temporary file exists the directory is not
/// empty, so it is never removed under a write.
fn remove_empty_dirs(root: &Path, mut dir: &Path) {
    while dir != root && dir.starts_with(root) {
        if fs::remove_dir(dir).is_err() {
            return;
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => return,
        }
    }
}

/// How often a write creates its directory again when a delete removed it, empty, before
/// the temporary file was created in it.
const DIR_RACE_ATTEMPTS: usize = 100;

/// Creates the directories of `tmp` and the file itself (new, write-only), then makes the
/// new directories durable. The file is created before the slow fsyncs, so the directory
/// is empty only for the moment between its creation and the file's.
fn create_temp_file(root: &Path, dir: &Path, tmp: &Path) -> io::Result<File> {
    let mut attempt = 0;
    let mut changed = Vec::new();
    loop {
        let created = create_dirs(root, dir, &mut changed).and_then(|()| {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(tmp)
        });
        match created {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt + 1 < DIR_RACE_ATTEMPTS => {
                attempt += 1;
            }
            Ok(file) => {
                changed.dedup();
                for d in &changed {
                    fsync_dir(d)?;
                }
                return Ok(file);
            }
            Err(e) => return Err(e),
        }
    }
}

fn write_atomic(root: &Path, key: &str, body: &[u8], no_replace: bool) -> io::Result<PutOutcome> {
    let path = root.join(key);
    let dir = path
        .parent()
        .expect("a key path has a parent")
        .to_path_buf();
    let name = path.file_name().expect("validated key").to_string_lossy();
    let tmp = dir.join(format!(
        "{TEMP_MARKER}{name}.{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = create_temp_file(root, &dir, &tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        drop(f);
        if no_replace {
            match fs::hard_link(&tmp, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    fs::remove_file(&tmp)?;
                    return Ok(PutOutcome::Exists);
                }
                Err(e) => return Err(e),
            }
            fs::remove_file(&tmp)?;
        } else {
            fs::rename(&tmp, &path)?;
        }
        fsync_dir(&dir)?;
        Ok(PutOutcome::Created)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn read_range(path: &Path, start: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    if f.metadata()?.is_dir() {
        return Err(io::Error::from(io::ErrorKind::IsADirectory));
    }
    f.seek(SeekFrom::Start(start))?;
    let mut out = Vec::new();
    f.take(len).read_to_end(&mut out)?;
    Ok(out)
}

fn meta_of(key: String, md: &fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        key,
        size: md.len(),
        last_modified: md.modified().ok(),
    }
}

/// Walks `dir` (whose key prefix is `dir_key`, empty or ending in `/`) and collects files
/// whose key starts with `prefix`.
fn walk(dir: &Path, dir_key: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(TEMP_MARKER) {
            continue;
        }
        let key = format!("{dir_key}{name}");
        // Follow symlinks, so a store may be assembled from linked directories.
        let md = match fs::metadata(entry.path()) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // deleted meanwhile
            Err(e) => return Err(e),
        };
        if md.is_dir() {
            let sub = format!("{key}/");
            // Descend only where keys can still match the prefix.
            if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                walk(&entry.path(), &sub, prefix, out)?;
            }
        } else if md.is_file() && key.starts_with(prefix) {
            out.push(meta_of(key, &md));
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for FsStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.write(key, body, false).await.map(|_| ())
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        self.write(key, body, true).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let path = self.root.join(key);
        blocking(key, Op::Get, &self.root, move || {
            read_range(&path, 0, u64::MAX)
        })
        .await
        .map(Bytes::from)
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let path = self.root.join(key);
        blocking(key, Op::Get, &self.root, move || {
            read_range(&path, start, len)
        })
        .await
        .map(Bytes::from)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        validate_key(key)?;
        let path = self.root.join(key);
        let k = key.to_string();
        let r = blocking(key, Op::Head, &self.root, move || {
            let md = fs::metadata(&path)?;
            Ok(md.is_file().then(|| meta_of(k, &md)))
        })
        .await;
        match r {
            Err(e) if e.is_not_found() => Ok(None),
            other => other,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(prefix)?;
        let root = self.root.clone();
        let p = prefix.to_string();
        let mut all = blocking(prefix, Op::List, &self.root, move || {
            // Start at the deepest directory the prefix names in full.
            let dir_key = match p.rfind('/') {
                Some(i) => &p[..=i],
                None => "",
            };
            let mut out = Vec::new();
            walk(&root.join(dir_key), dir_key, &p, &mut out)?;
            Ok(out)
        })
        .await?;
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }

    /// Filters [`ObjectStore::list`]: walking a local directory is as cheap as it gets.
    async fn list_after(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(after)?;
        Ok(crate::object_store::list_window(
            self.list(prefix).await?,
            after,
            limit,
        ))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        let path = self.root.join(key);
        let root = self.root.clone();
        let r = blocking(key, Op::Delete, &self.root, move || {
            if fs::metadata(&path)?.is_dir() {
                return Ok(());
            }
            fs::remove_file(&path)?;
            let dir = path.parent().expect("a key path has a parent");
            fsync_dir(dir)?;
            remove_empty_dirs(&root, dir);
            Ok(())
        })
        .await;
        match r {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// A directory carries no object lock: `None` for every object that exists.
    async fn retention(&self, key: &str) -> Result<Option<Retention>, StoreError> {
        match self.head(key).await? {
            Some(_) => Ok(None),
            None => Err(StoreError::not_found(key)),
        }
    }

    async fn extend_retention(&self, key: &str, _until: SystemTime) -> Result<(), StoreError> {
        validate_key(key)?;
        Err(StoreError::config(
            "file:// stores have no object lock; store.lock needs an S3 bucket with Object Lock",
        ))
    }

    fn lock_policy(&self) -> Option<LockPolicy> {
        None
    }

    fn enforces_conditional_put(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_delete_leaves_no_empty_directory_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().to_path_buf()).await.unwrap();
        store
            .put("wal/s.partial.d/a", Bytes::from_static(b"1"))
            .await
            .unwrap();
        store
            .put("wal/s.partial.d/b", Bytes::from_static(b"2"))
            .await
            .unwrap();
        store.put("wal/s", Bytes::from_static(b"3")).await.unwrap();
        store.delete("wal/s.partial.d/a").await.unwrap();
        assert!(
            dir.path().join("wal/s.partial.d").is_dir(),
            "b is still there"
        );
        store.delete("wal/s.partial.d/b").await.unwrap();
        assert!(!dir.path().join("wal/s.partial.d").exists());
        assert!(dir.path().join("wal").is_dir(), "wal/s is still there");
        store.delete("wal/s").await.unwrap();
        assert!(!dir.path().join("wal").exists());
        assert!(dir.path().is_dir(), "the store's root stays");
        // Writing into a directory a delete removed creates it again.
        store
            .put("wal/s.partial.d/c", Bytes::from_static(b"4"))
            .await
            .unwrap();
        assert_eq!(store.get("wal/s.partial.d/c").await.unwrap(), &b"4"[..]);
    }

    #[test]
    fn a_write_survives_its_directory_being_removed_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let sub = root.join("wal/x.partial.d");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let remover = {
            let (root, sub, stop) = (root.to_path_buf(), sub.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    remove_empty_dirs(&root, &sub);
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            })
        };
        for i in 0..200 {
            let key = format!("wal/x.partial.d/{i}");
            write_atomic(root, &key, b"v", true).unwrap();
            assert_eq!(fs::read(root.join(&key)).unwrap(), b"v");
            fs::remove_file(root.join(&key)).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        remover.join().unwrap();
    }

    #[tokio::test]
    async fn layout_on_disk_and_temp_files_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().to_path_buf()).await.unwrap();
        store.put("wal/a", Bytes::from_static(b"1")).await.unwrap();
        assert_eq!(fs::read(dir.path().join("wal/a")).unwrap(), b"1");
        // A leftover temporary file from a crash is invisible.
        fs::write(dir.path().join("wal/.pgagent-tmp-b.1.1"), b"x").unwrap();
        let keys: Vec<_> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["wal/a"]);
        // Directories are not objects.
        assert!(store.get("wal").await.unwrap_err().is_not_found());
        assert_eq!(store.head("wal").await.unwrap(), None);
        assert!(store.get("wal/a/b").await.unwrap_err().is_not_found());
        store.delete("wal").await.unwrap();
    }

    #[tokio::test]
    async fn racing_put_if_absent_has_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().to_path_buf()).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..16u8 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.put_if_absent("k", Bytes::from(vec![i; 1000]))
                    .await
                    .unwrap()
            }));
        }
        let mut created = 0;
        for t in tasks {
            if t.await.unwrap() == PutOutcome::Created {
                created += 1;
            }
        }
        assert_eq!(created, 1);
        let body = store.get("k").await.unwrap();
        assert!(body.iter().all(|b| *b == body[0]) && body.len() == 1000);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp files left"
        );
    }

    #[tokio::test]
    async fn relative_root_refused() {
        assert!(FsStore::open("rel".into()).await.is_err());
    }
}
