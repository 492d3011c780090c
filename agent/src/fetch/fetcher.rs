//! Store access for fetches ([`Fetcher`]): open the store and check its cluster, resolve a
//! requested name to the objects that may answer it, read them with transient errors
//! retried up to the request's deadline, and decide whether a segment's partial content
//! ([`super::assemble`]) may answer for it ([`super::forks`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use pgagent_protocol::{
    history_file_name, Lsn, TimelineHistory, TimelineId, WalFileName, WalSegmentSize,
};
use pgagent_storage::crypto::{KeyError, ObjectCipher};
use pgagent_storage::deltas;
use pgagent_storage::keyring::access::reader_cipher;
use pgagent_storage::layout::{after_timeline, history_key, WAL_PREFIX};
use pgagent_storage::{envelope, ObjectMeta, ObjectStore, Op, StoreError};

use super::assemble::{self, Assembled};
use super::resolve::{self, Resolved};
use super::{abort, forks, FetchError};
use crate::config::Config;
use crate::retry::Policy;
use crate::retrying_store::read_until;

/// What [`Fetcher::find`] returned, not yet verified.
#[derive(Debug)]
pub enum Found {
    /// One object holding the whole file, delivered as stored.
    Whole {
        /// Its key.
        key: String,
        /// The stored body (an envelope).
        body: Bytes,
    },
    /// A segment's partial content, delivered assembled and zero-padded.
    Partial(Assembled),
}

impl Found {
    /// What answered, for logs: a key, or how many pieces.
    pub fn describe(&self) -> String {
        match self {
            Found::Whole { key, .. } => key.clone(),
            Found::Partial(a) => format!("{} partial pieces", a.parts.len()),
        }
    }
}

/// How many keys after a timeline's objects LIST returns when looking for a later timeline
/// (the first WAL object among them decides; more only skip strays).
const NEXT_KEYS: usize = 16;

/// How many times a request is looked up again when a piece it listed is gone when read.
const LOOKUPS: usize = 3;

/// Store access for fetches: the store, the cluster's segment size, the cipher of its
/// objects, retries to a deadline. Clones share what was learnt (the history files read), so
/// a fetch server reads each once (and derives the key from the passphrase once).
#[derive(Debug, Clone)]
pub struct Fetcher {
    store: Arc<dyn ObjectStore>,
    cipher: Option<ObjectCipher>,
    seg: WalSegmentSize,
    system_identifier: String,
    histories: Arc<Mutex<HashMap<TimelineId, Arc<TimelineHistory>>>>,
}

impl Fetcher {
    /// Opens the store of `cfg`, reads `cluster.json` and unlocks the store's key with the
    /// configured passphrase when it is encrypted, retrying transient errors until
    /// `deadline`.
    ///
    /// Errors: [`FetchError::Abort`] if the store cannot be opened, stays unreachable, has no
    /// `cluster.json` (wrong `store.url` or a store never written by `pgagent run`),
    /// declares an invalid segment size, or its encryption does not match the configuration
    /// (an encrypted store without a passphrase, a plaintext one with a passphrase, a
    /// passphrase that opens no key): recovery must stop, not end early.
    ///
    /// With several stores kept (or some left out by `--store NAME`), they are opened and
    /// checked to hold one cluster ([`crate::store::read::open_reading`], transient errors
    /// retried until `deadline`) and read as one: an object is absent only when every store
    /// says so, and a store failing otherwise is retried, never taken for an absence.
    pub async fn connect(cfg: &Config, deadline: Instant) -> Result<Fetcher, FetchError> {
        if crate::store::read::reads_a_set(cfg) {
            let patience = deadline.saturating_duration_since(Instant::now());
            let reading = crate::store::read::open_reading(cfg, Some(patience))
                .await
                .map_err(|e| abort(format!("{e:#}")))?;
            let opened = reading.opened;
            return Ok(Fetcher {
                store: opened.store,
                cipher: opened.cipher,
                seg: opened.seg,
                system_identifier: opened.cluster.system_identifier,
                histories: Arc::default(),
            });
        }
        let url = &cfg.store().url;
        let store = retry(url, "open the store", deadline, || crate::store::open(cfg)).await?;
        let info = retry(&store.describe(), "read cluster.json", deadline, || {
            pgagent_storage::cluster::read_cluster(store.as_ref())
        })
        .await?
        .ok_or_else(|| {
            abort(format!(
                "store {} has no cluster.json: check store.url (PGAGENT_STORE_URL); \
                 pgagent run writes it when it first streams into a store",
                store.describe()
            ))
        })?;
        let seg = WalSegmentSize::new(info.wal_segment_size)
            .map_err(|e| abort(format!("store {}: cluster.json: {e}", store.describe())))?;
        let cipher = retry(&store.describe(), "read keys/", deadline, || async {
            match reader_cipher(store.as_ref(), cfg.passphrase.as_ref(), cfg.unlock_limits()).await
            {
                Ok(cipher) => Ok(Ok(cipher)),
                Err(KeyError::Store(e)) if e.is_transient() => Err(e),
                Err(e) => Ok(Err(e)),
            }
        })
        .await?
        .map_err(|e| abort(format!("store {}: {e}", store.describe())))?;
        Ok(Fetcher {
            store,
            cipher,
            seg,
            system_identifier: info.system_identifier,
            histories: Arc::default(),
        })
    }

    /// A fetcher on `store` without reading `cluster.json` (for the tests and the pipeline's
    /// simulation).
    #[cfg(test)]
    pub(crate) fn on_store(store: Arc<dyn ObjectStore>, seg: WalSegmentSize) -> Fetcher {
        Fetcher {
            store,
            cipher: None,
            seg,
            system_identifier: String::new(),
            histories: Arc::default(),
        }
    }

    /// The same fetcher opening objects with `cipher` (for the pipeline's simulation).
    #[cfg(test)]
    pub(crate) fn with_cipher(mut self, cipher: Option<ObjectCipher>) -> Fetcher {
        self.cipher = cipher;
        self
    }

    /// `system_identifier` of the cluster in the store (decimal, from `cluster.json`).
    pub fn system_identifier(&self) -> &str {
        &self.system_identifier
    }

    /// The cipher the store's objects are opened with (`None`: a plaintext store).
    pub fn cipher(&self) -> Option<&ObjectCipher> {
        self.cipher.as_ref()
    }

    /// Segment size of the cluster in the store.
    pub fn segment_size(&self) -> WalSegmentSize {
        self.seg
    }

    /// The store location, without credentials.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Validates `file` against the cluster's segment size and lists the keys to try.
    ///
    /// Errors: [`FetchError::Abort`] if `file` is a WAL name only for another segment size
    /// (the store belongs to a cluster other than the one recovering).
    pub fn resolve(&self, file: &str) -> Result<Resolved, FetchError> {
        resolve::resolve(file, self.seg).ok_or_else(|| {
            abort(format!(
                "{file}: not a WAL file name for the {} MiB segments of store {}: \
                 the store belongs to another cluster",
                self.seg.bytes() >> 20,
                self.describe()
            ))
        })
    }

    /// Reads what answers `resolved`, retrying transient errors until `deadline`; `None`
    /// when it is confirmed absent.
    ///
    /// A segment's complete object, its `.partial` and the listing of its deltas are read
    /// at the same time (one round trip, not three), the complete object preferred. The
    /// partial content, assembled up to its first hole (the `assemble` module), answers
    /// when it holds WAL, unless a later timeline forked off before its end ([`forks`]; one
    /// more LIST, and history files the first time), and its pieces are then read in
    /// parallel. Before assembled pieces are served, the complete object is looked for once
    /// more: pieces are removed only once it is in the store, so a listing that raced with
    /// that cleanup (and saw only part of the run) never cuts the segment short. A piece
    /// listed but gone when read starts the lookup again.
    ///
    /// Errors: as `Fetcher::get`; a corrupt `.partial` header; a later timeline's history
    /// file that is not one; pieces that keep vanishing.
    pub async fn find(
        &self,
        resolved: &Resolved,
        deadline: Instant,
    ) -> Result<Option<Found>, FetchError> {
        let Some(src) = &resolved.partial else {
            return self.get_whole(resolved.whole.as_deref(), deadline).await;
        };
        let file = resolved.name.file_name(self.seg);
        let mut gone = String::new();
        for _ in 0..LOOKUPS {
            let (whole, listed) = tokio::join!(
                self.get_whole(resolved.whole.as_deref(), deadline),
                assemble::list(self, src, deadline)
            );
            if let Some(found) = whole? {
                return Ok(Some(found));
            }
            let listed = listed?;
            let assembly = deltas::assemble(&listed.pieces);
            if assembly.end == 0 {
                if assembly.beyond_hole {
                    tracing::warn!(
                        "{file}: the store holds deltas of it, but none from its start: \
                         they are not served"
                    );
                }
                return self.get_whole(resolved.whole.as_deref(), deadline).await;
            }
            let end = src.start + assembly.end;
            // Pieces covering the whole segment are the segment, as its complete object
            // would be (an agent stopped between its last delta and that upload).
            if assembly.end < src.segment_size {
                if let Some(why) = self.forked(&resolved.name, end, deadline).await? {
                    tracing::info!(
                        "{file}: not serving its partial content (WAL up to {end}): {why}"
                    );
                    return self.get_whole(resolved.whole.as_deref(), deadline).await;
                }
            }
            let legacy = listed.legacy.as_ref();
            match assemble::read(self, src, legacy, assembly, deadline).await? {
                assemble::Read::Done(a) => {
                    // The complete object first, if it landed meanwhile (see above).
                    let whole = self.get_whole(resolved.whole.as_deref(), deadline).await?;
                    return Ok(Some(whole.unwrap_or(Found::Partial(a))));
                }
                assemble::Read::Vanished(key) => {
                    tracing::info!("{file}: {key} was listed but is gone; looking again");
                    gone = key;
                }
            }
        }
        Err(abort(format!(
            "{file}: pieces of it vanished while it was read ({gone} the last), {LOOKUPS} \
             times, and its complete object is not in store {}",
            self.describe()
        )))
    }

    /// Why the partial content of segment `name`, holding WAL up to `partial_end`, must not
    /// stand in for it: a later timeline forked off before `partial_end` (see [`forks`]).
    /// `None` when no later timeline did.
    async fn forked(
        &self,
        name: &WalFileName,
        partial_end: Lsn,
        deadline: Instant,
    ) -> Result<Option<String>, FetchError> {
        let WalFileName::Segment { tli, .. } = *name else {
            return Ok(None);
        };
        let after = after_timeline(tli.0);
        let store = &self.store;
        let listed = retry(&store.describe(), "list wal/", deadline, || {
            store.list_after(WAL_PREFIX, &after, NEXT_KEYS)
        })
        .await?;
        let keys = listed.iter().map(|m| m.key.as_str());
        let mut child = forks::first_later_timeline(tli, keys, self.seg);
        while let Some(t) = child {
            let Some(history) = self.history(t, deadline).await? else {
                break;
            };
            if let Some(at) = forks::forks_before(&history, tli, partial_end) {
                return Ok(Some(format!(
                    "timeline {t} forked off timeline {tli} at {at} ({}), before the end of \
                     its WAL ({partial_end}): the rest is a branch the cluster left",
                    history_file_name(t)
                )));
            }
            child = t.0.checked_add(1).map(TimelineId);
        }
        Ok(None)
    }

    /// The history file of timeline `tli`, verified and parsed; `None` if the store has none.
    /// Kept once read: history files never change.
    ///
    /// Errors: as [`Fetcher::get`]; a corrupt object or a file that is not a history file
    /// for `tli` ([`FetchError::Abort`]).
    async fn history(
        &self,
        tli: TimelineId,
        deadline: Instant,
    ) -> Result<Option<Arc<TimelineHistory>>, FetchError> {
        let cached = self
            .histories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tli)
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let key = &history_key(tli);
        let Some(body) = self.get(key, deadline).await? else {
            return Ok(None);
        };
        let raw = envelope::open_for(&body, self.cipher(), key)
            .map_err(|e| abort(format!("verification failed: {e}")))?;
        let history = String::from_utf8(raw)
            .map_err(|e| e.to_string())
            .and_then(|text| TimelineHistory::parse(&text).map_err(|e| e.to_string()))
            .and_then(|h| h.check_child(tli).map(|()| h).map_err(|e| e.to_string()))
            .map_err(|e| abort(format!("{key}: not a valid history file: {e}")))?;
        let history = Arc::new(history);
        self.histories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tli, history.clone());
        Ok(Some(history))
    }

    /// The object `key` as a [`Found::Whole`] (`None` for no key, or a confirmed absence).
    pub(super) async fn get_whole(
        &self,
        key: Option<&str>,
        deadline: Instant,
    ) -> Result<Option<Found>, FetchError> {
        let Some(key) = key else { return Ok(None) };
        Ok(self.get(key, deadline).await?.map(|body| Found::Whole {
            key: key.to_string(),
            body,
        }))
    }

    /// The stored body of `key`, `None` when it is confirmed absent; transient errors are
    /// retried until `deadline`.
    pub(super) async fn get(
        &self,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<Bytes>, FetchError> {
        let store = &self.store;
        retry(&store.describe(), key, deadline, || async move {
            match store.get(key).await {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Every object under `prefix`, transient errors retried until `deadline`.
    pub(super) async fn list(
        &self,
        prefix: &str,
        deadline: Instant,
    ) -> Result<Vec<ObjectMeta>, FetchError> {
        let store = &self.store;
        retry(
            &store.describe(),
            &format!("list {prefix}"),
            deadline,
            || store.list(prefix),
        )
        .await
    }
}

/// Runs `op` (`what` on `store`) until it succeeds, fails with a non-transient error, or
/// `deadline` passes: the shared read retry ([`read_until`] with [`Policy::FETCH`]).
///
/// Errors: [`FetchError::Abort`] naming the store, what was done and why it gave up.
async fn retry<T, F, Fut>(
    store: &str,
    what: &str,
    deadline: Instant,
    op: F,
) -> Result<T, FetchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    read_until(
        Policy::FETCH,
        deadline.into(),
        "fetch.timeout",
        Op::Get,
        what,
        op,
    )
    .await
    .map_err(|e| abort(format!("store {store}: {what}: {e}")))
}
