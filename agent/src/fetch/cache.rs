//! The prefetch cache: verified segments on local disk, waiting to be asked for.
//!
//! A segment enters as *loading* (its bytes reserved against the bound) and becomes *ready*
//! only once its envelope passed the length and hash check and the decompressed file was
//! renamed into the cache directory. A ready segment is handed out once: taking it releases
//! its bytes and hands the file to the server, which moves it into `%p` or opens and unlinks
//! it for the client to copy. Failed or absent
//! prefetches leave nothing behind: the request for that segment is then answered from the
//! store, so a prefetch can make recovery faster but never changes an answer.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::fetch::plan::TimelinePlan;

/// How long a segment found absent by a prefetch is not prefetched again, so that a standby
/// polling for the next segment does not make the store list the same missing names.
const ABSENT_BACKOFF: Duration = Duration::from_secs(5);

/// A bounded directory of prefetched segments.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    limit: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Bytes reserved by loading entries (a full segment each) and held by ready ones.
    bytes: u64,
    absent_until: HashMap<String, Instant>,
    plan: Option<TimelinePlan>,
}

#[derive(Debug)]
enum Entry {
    Loading {
        reserved: u64,
        done: watch::Sender<bool>,
    },
    Ready {
        len: u64,
    },
}

/// How a prefetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The verified file of this many bytes is at [`Cache::path`].
    Ready(u64),
    /// The store confirmed the object absent.
    Absent,
    /// The download or the check failed; the foreground will fetch it when asked.
    Failed,
}

impl Cache {
    /// A cache in `dir` holding at most `limit` bytes. The directory is emptied (files of a
    /// previous server are not trusted) and created.
    ///
    /// Errors: the directory cannot be emptied or created.
    pub fn open(dir: &Path, limit: u64) -> io::Result<Cache> {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("empty {}: {e}", dir.display()),
                ))
            }
        }
        fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
        Ok(Cache {
            dir: dir.to_path_buf(),
            limit,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the file of segment `name` is put once verified.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The timeline plan of the newest history file served, if any.
    pub fn plan(&self) -> Option<TimelinePlan> {
        self.lock().plan.clone()
    }

    /// Adopts `plan` if its target is newer than the current plan's.
    pub fn offer_plan(&self, plan: TimelinePlan) {
        let mut inner = self.lock();
        if inner
            .plan
            .as_ref()
            .is_none_or(|p| p.target() < plan.target())
        {
            inner.plan = Some(plan);
        }
    }

    /// Reserves `size` bytes to load `name`, unless it is already cached or loading, was
    /// found absent moments ago, or the cache is full; `true` if reserved. `now` is the
    /// current time. The loader must call [`Cache::finish`] for `name`.
    pub fn begin(&self, name: &str, size: u64, now: Instant) -> bool {
        let mut inner = self.lock();
        if inner.entries.contains_key(name) {
            return false;
        }
        if inner.absent_until.get(name).is_some_and(|t| *t > now) {
            return false;
        }
        if inner.bytes + size > self.limit {
            return false;
        }
        inner.absent_until.remove(name);
        inner.bytes += size;
        let (done, _) = watch::channel(false);
        inner.entries.insert(
            name.to_string(),
            Entry::Loading {
                reserved: size,
                done,
            },
        );
        true
    }

    /// Records how loading `name` ended and wakes whoever waits for it. A no-op if `name`
    /// is not loading.
    pub fn finish(&self, name: &str, outcome: Outcome, now: Instant) {
        let mut inner = self.lock();
        if !matches!(inner.entries.get(name), Some(Entry::Loading { .. })) {
            return;
        }
        let Some(Entry::Loading { reserved, done }) = inner.entries.remove(name) else {
            unreachable!("checked above");
        };
        inner.bytes -= reserved;
        match outcome {
            Outcome::Ready(len) => {
                inner.bytes += len;
                inner.entries.insert(name.to_string(), Entry::Ready { len });
            }
            Outcome::Absent => {
                inner
                    .absent_until
                    .insert(name.to_string(), now + ABSENT_BACKOFF);
            }
            Outcome::Failed => {}
        }
        drop(inner);
        let _ = done.send(true);
    }

    /// A receiver that turns `true` when the loading of `name` ends; `None` if it is not
    /// loading.
    pub fn loading(&self, name: &str) -> Option<watch::Receiver<bool>> {
        match self.lock().entries.get(name) {
            Some(Entry::Loading { done, .. }) => Some(done.subscribe()),
            _ => None,
        }
    }

    /// Takes the ready file of `name` out of the cache, leaving it on disk: the caller moves
    /// or removes it. `None` if it is not ready.
    pub fn take_path(&self, name: &str) -> Option<(PathBuf, u64)> {
        let mut inner = self.lock();
        let len = match inner.entries.get(name) {
            Some(Entry::Ready { len }) => *len,
            _ => return None,
        };
        inner.entries.remove(name);
        inner.bytes -= len;
        Some((self.path(name), len))
    }

    /// Drops ready segments not in `keep` (recovery moved past them or took another
    /// timeline). Loading ones finish and are dropped on a later call if still unwanted.
    pub fn retain(&self, keep: &HashSet<String>) {
        let mut inner = self.lock();
        let stale: Vec<(String, u64)> = inner
            .entries
            .iter()
            .filter_map(|(name, e)| match e {
                Entry::Ready { len } if !keep.contains(name) => Some((name.clone(), *len)),
                _ => None,
            })
            .collect();
        for (name, len) in stale {
            inner.entries.remove(&name);
            inner.bytes -= len;
            let _ = fs::remove_file(self.path(&name));
        }
    }

    /// Bytes reserved or held, and the number of loading entries (for the tests).
    #[cfg(test)]
    fn usage(&self) -> (u64, usize) {
        let inner = self.lock();
        let loading = inner
            .entries
            .values()
            .filter(|e| matches!(e, Entry::Loading { .. }))
            .count();
        (inner.bytes, loading)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 100;

    fn cache(limit: u64) -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(&dir.path().join("cache"), limit).unwrap();
        (dir, c)
    }

    fn load(c: &Cache, name: &str, body: &[u8]) {
        let now = Instant::now();
        assert!(c.begin(name, SEG, now), "room");
        fs::write(c.path(name), body).unwrap();
        c.finish(name, Outcome::Ready(body.len() as u64), now);
    }

    #[test]
    fn a_ready_segment_is_taken_once() {
        let (_d, c) = cache(1000);
        load(&c, "A", b"hello");
        assert_eq!(c.usage(), (5, 0));
        let (path, len) = c.take_path("A").unwrap();
        assert_eq!(len, 5);
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert!(c.take_path("A").is_none());
        assert_eq!(c.usage(), (0, 0));
    }

    #[test]
    fn the_bound_counts_loading_segments_in_full() {
        let (_d, c) = cache(250);
        let now = Instant::now();
        assert!(c.begin("A", SEG, now));
        assert!(c.begin("B", SEG, now));
        assert!(!c.begin("C", SEG, now), "would exceed 250 bytes");
        assert!(!c.begin("A", SEG, now), "already loading");
        assert_eq!(c.usage(), (200, 2));
        fs::write(c.path("A"), b"1234").unwrap();
        c.finish("A", Outcome::Ready(4), now);
        assert_eq!(c.usage(), (104, 1));
        assert!(c.begin("C", SEG, now));
    }

    #[test]
    fn failures_leave_nothing_and_absence_backs_off() {
        let (_d, c) = cache(1000);
        let now = Instant::now();
        assert!(c.begin("A", SEG, now));
        let mut rx = c.loading("A").unwrap();
        c.finish("A", Outcome::Failed, now);
        assert!(*rx.borrow_and_update());
        assert!(c.take_path("A").is_none());
        assert_eq!(c.usage(), (0, 0));
        assert!(c.begin("A", SEG, now));
        c.finish("A", Outcome::Absent, now);
        assert!(!c.begin("A", SEG, now + Duration::from_secs(1)));
        assert!(c.begin("A", SEG, now + ABSENT_BACKOFF * 2));
    }

    #[test]
    fn finishing_a_ready_segment_again_changes_nothing() {
        let (_d, c) = cache(1000);
        load(&c, "A", b"abc");
        c.finish("A", Outcome::Failed, Instant::now());
        assert_eq!(c.usage(), (3, 0));
        assert!(c.take_path("A").is_some());
    }

    #[test]
    fn retain_drops_segments_recovery_will_not_ask_for() {
        let (_d, c) = cache(1000);
        load(&c, "A", b"a");
        load(&c, "B", b"b");
        c.retain(&HashSet::from(["B".to_string()]));
        assert!(!c.path("A").exists());
        assert!(c.take_path("A").is_none());
        assert!(c.take_path("B").is_some());
    }

    #[test]
    fn open_empties_a_previous_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        fs::create_dir_all(&path).unwrap();
        fs::write(path.join("stale"), b"x").unwrap();
        let c = Cache::open(&path, 10).unwrap();
        assert_eq!(fs::read_dir(c.dir()).unwrap().count(), 0);
    }
}
