//! Sealed objects to every store: each object is sealed once and put, as the same bytes, in
//! every store's lane.
//!
//! A required store's lane is waited on (the compress workers pause, staging holds the
//! WAL: as with one store). An async store's lane never holds the others back: when its
//! queue is full (the store is slow or down), the object goes to its **backlog** instead,
//! and the lane later copies it, byte for byte, from a required store that has it
//! ([`run_backlog`]). A backlog entry is a name, not bytes, so a long outage costs no
//! memory and no staging space; the copies are counted requests like any other.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::envelope::verify_stored;
use pgagent_storage::{ObjectStore, StoreError};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::blocking::off_thread;
use super::jobs::{UploadJob, WalObject};
use super::upload::Uploader;
use crate::retry::Policy;

/// Objects an async store lacks and will copy from a required store, lowest first.
#[derive(Debug, Default)]
pub struct Backlog {
    objects: Mutex<BTreeSet<WalObject>>,
    added: Notify,
}

impl Backlog {
    /// Adds `object` (a complete segment or a history file).
    pub fn add(&self, object: WalObject) {
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(object);
        self.added.notify_one();
    }

    /// The lowest waiting object, waiting for one; `None` at shutdown.
    async fn next(&self, shutdown: &CancellationToken) -> Option<WalObject> {
        loop {
            if let Some(o) = self
                .objects
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_first()
            {
                return Some(o);
            }
            tokio::select! {
                _ = self.added.notified() => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }
}

/// One store's lane as the fan-out sees it.
#[derive(Debug)]
pub struct LaneInlet {
    /// The lane's upload queue (small: a sealed segment is megabytes).
    pub tx: mpsc::Sender<UploadJob>,
    /// A required store is waited on; an async one gets a backlog entry when full.
    pub required: bool,
    /// Where an async store's overflow goes.
    pub backlog: Arc<Backlog>,
}

/// Hands each sealed object to every lane until `rx` closes; then the lanes' queues close
/// (dropped), and their uploaders drain and end.
pub async fn fan_out(mut rx: mpsc::Receiver<UploadJob>, lanes: Vec<LaneInlet>) {
    while let Some(job) = rx.recv().await {
        if let Some(r) = &job.remove_after {
            r.hold_for(lanes.len());
        }
        // Async lanes first: they never wait, so a required store that is down (and makes
        // this wait) does not keep objects from them.
        for lane in lanes
            .iter()
            .filter(|l| !l.required)
            .chain(lanes.iter().filter(|l| l.required))
        {
            let job = job.clone();
            let overflow = if lane.required {
                lane.tx.send(job).await.err().map(|e| e.0)
            } else {
                lane.tx.try_send(job).err().map(|e| match e {
                    mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
                })
            };
            if let Some(job) = overflow {
                // An async store copies it later; a required lane only refuses when it has
                // stopped (shutdown), and the next start uploads from staging again.
                if !lane.required {
                    lane.backlog.add(job.object);
                }
                if let Some(r) = &job.remove_after {
                    if !lane.required {
                        r.done();
                    }
                }
            }
        }
    }
}

/// How long a copy waits before it looks again for an object no source has yet (its
/// upload there is under way, or the source is down): no upload slot is held meanwhile.
const RECHECK: Duration = Duration::from_secs(10);

/// How long one read of an object to copy is retried on transient errors, holding an
/// upload slot, before the copy waits [`RECHECK`] and starts over.
const READ_DEADLINE: Duration = Duration::from_secs(60);

/// Copies each object of a store's backlog from the first of `sources` (the required
/// stores other than itself, in restore order) that has it, verified, into the lane's
/// store, as `uploader` would put it (retried, then recorded in the lane's tracker). An
/// object no source has yet (its upload to them is still under way) is looked for again
/// [`RECHECK`] later, without holding an upload slot meanwhile. Runs until `shutdown`; what
/// is left is found again at the next start (see `catch_up`).
pub async fn run_backlog(
    uploader: Uploader,
    backlog: Arc<Backlog>,
    sources: Vec<Arc<dyn ObjectStore>>,
    cipher: Option<ObjectCipher>,
    shutdown: CancellationToken,
) {
    let sources = Arc::new(sources);
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(object) = backlog.next(&shutdown).await {
        let permit = uploader.permit().await;
        let (uploader, sources, cipher) = (uploader.clone(), sources.clone(), cipher.clone());
        let (shutdown, backlog) = (shutdown.clone(), backlog.clone());
        tasks.spawn(async move {
            let key = object.key(uploader.seg());
            let deadline = tokio::time::Instant::now() + READ_DEADLINE;
            let read = || copy_source(&sources, &key, cipher.as_ref());
            let quiet = |e: &StoreError, d: Duration| {
                tracing::debug!(key, error = %e, retry_in = ?d, "object to copy not readable yet")
            };
            match crate::retry::until(Policy::FETCH, deadline, StoreError::is_transient, quiet, read)
                .await
            {
                Ok(sealed) => {
                    uploader
                        .upload(UploadJob {
                            object,
                            sealed,
                            remove_after: None,
                        })
                        .await;
                    uploader.count_copy();
                }
                Err(e) => {
                    if !matches!(&e, crate::retry::GaveUp::Permanent(e) if e.is_not_found()) {
                        tracing::warn!(key, error = ?e, "cannot read an object to copy into a lagging store; looking again in {RECHECK:?}");
                    }
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep(RECHECK) => backlog.add(object),
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    tasks.abort_all();
}

/// The object under `key` from the first source that has it, verified. NotFound when no
/// source has it; a source's other error when none has it and that one failed (it may
/// hold it).
async fn copy_source(
    sources: &[Arc<dyn ObjectStore>],
    key: &str,
    cipher: Option<&ObjectCipher>,
) -> Result<pgagent_storage::envelope::Sealed, StoreError> {
    let mut failed = None;
    for s in sources {
        match s.get(key).await {
            Ok(body) => {
                let (key, cipher) = (key.to_string(), cipher.cloned());
                return off_thread(move || verify_stored(body, cipher.as_ref(), &key)).await;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => failed = Some(e),
        }
    }
    Err(failed.unwrap_or_else(|| StoreError::NotFound {
        key: key.to_string(),
    }))
}
