//! Store access for fetches ([`Fetcher`]): open the store and check its cluster, resolve a
//! requested name to the objects that may answer it, read them with transient errors
//! retried up to the request's deadline, and decide whether a `.partial` may answer for its
//! segment ([`super::newest`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use pgagent_protocol::{
    history_file_name, segment_file_name, Lsn, TimelineHistory, TimelineId, WalFileName,
    WalSegmentSize,
};
use pgagent_storage::layout::wal_file_name;
use pgagent_storage::{envelope, ObjectStore, StoreError};

use super::resolve::{self, Fill, Resolved, Source};
use super::{abort, newest, FetchError};
use crate::config::Config;
use crate::retry::{GaveUp, Policy};

/// What [`Fetcher::find`] returned: the verified-to-be-checked envelope and how to fill it.
#[derive(Debug)]
pub struct Found {
    /// The source that answered.
    pub source: Source,
    /// The stored body (an envelope, not yet verified).
    pub body: Bytes,
}

/// How many keys after a `.partial` one LIST returns when deciding whether it is the newest
/// WAL of its timeline (the first WAL file name among them decides; more only skip strays).
const NEXT_KEYS: usize = 16;

/// Store access for fetches: the store, the cluster's segment size, retries to a deadline.
/// Clones share what was learnt (the history files read), so a fetch server reads each once.
#[derive(Debug, Clone)]
pub struct Fetcher {
    store: Arc<dyn ObjectStore>,
    seg: WalSegmentSize,
    system_identifier: String,
    histories: Arc<Mutex<HashMap<TimelineId, Arc<TimelineHistory>>>>,
}

impl Fetcher {
    /// Opens the store of `cfg` and reads `cluster.json`, retrying transient errors until
    /// `deadline`.
    ///
    /// Errors: [`FetchError::Abort`] if the store cannot be opened, stays unreachable, has no
    /// `cluster.json` (wrong `store.url` or a store never written by `pgagent run`), or
    /// declares an invalid segment size.
    pub async fn connect(cfg: &Config, deadline: Instant) -> Result<Fetcher, FetchError> {
        let url = &cfg.raw.store.url;
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
        Ok(Fetcher {
            store,
            seg,
            system_identifier: info.system_identifier,
            histories: Arc::default(),
        })
    }

    /// `system_identifier` of the cluster in the store (decimal, from `cluster.json`).
    pub fn system_identifier(&self) -> &str {
        &self.system_identifier
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

    /// Reads the first source of `resolved` that exists, retrying transient errors until
    /// `deadline`; `None` when every source is confirmed absent.
    ///
    /// A segment's complete and `.partial` objects are read at the same time (one round
    /// trip, not two), the complete one preferred. The `.partial` answers only if it is the
    /// newest WAL of its timeline ([`newest`]; one more LIST, and history files the first
    /// time). Otherwise, or when both are absent, the complete object is read once more: a
    /// running agent may have uploaded the completed segment and removed its `.partial`
    /// between the two reads.
    ///
    /// Errors: as `Fetcher::get`; a later timeline's history file that is not one.
    pub async fn find(
        &self,
        resolved: &Resolved,
        deadline: Instant,
    ) -> Result<Option<Found>, FetchError> {
        match resolved.sources.as_slice() {
            [] => Ok(None),
            [only] => self.get(only, deadline).await,
            [complete, partial, ..] => {
                let (c, p) =
                    tokio::join!(self.get(complete, deadline), self.get(partial, deadline));
                if let Some(found) = c? {
                    return Ok(Some(found));
                }
                if let Some(found) = p? {
                    match self.superseded(&resolved.name, &found, deadline).await? {
                        None => return Ok(Some(found)),
                        Some(why) => tracing::info!(
                            "{}: not serving {}: {why}; it is not the newest WAL of its timeline",
                            resolved.name.file_name(self.seg),
                            partial.key
                        ),
                    }
                }
                self.get(complete, deadline).await
            }
        }
    }

    /// Why `partial`, the `.partial` of segment `name`, must not stand in for it (see
    /// [`newest`]), or `None` when it is the newest WAL of its timeline.
    async fn superseded(
        &self,
        name: &WalFileName,
        partial: &Found,
        deadline: Instant,
    ) -> Result<Option<String>, FetchError> {
        let WalFileName::Segment { tli, segno } = *name else {
            return Ok(None);
        };
        // The length its header declares; a header that lies fails verification on delivery.
        let Ok(header) = envelope::Header::parse(&partial.body) else {
            return Ok(None);
        };
        let partial_end = Lsn(segno.start_lsn(self.seg).0.saturating_add(header.raw_len));
        let seg = self.seg;
        let key = format!(
            "{}{}.partial",
            resolve::WAL_PREFIX,
            segment_file_name(tli, segno, seg)
        );
        let store = &self.store;
        let listed = retry(&store.describe(), "list wal/", deadline, || {
            store.list_after(resolve::WAL_PREFIX, &key, NEXT_KEYS)
        })
        .await?;
        let next = listed
            .iter()
            .filter_map(|m| wal_file_name(&m.key))
            .find(|n| WalFileName::parse(n, seg).is_some());
        match newest::next_key(tli, segno, next, seg) {
            newest::NextKey::Nothing => Ok(None),
            newest::NextKey::LaterOnTimeline(_) => Ok(Some(format!(
                "the store holds later WAL of timeline {tli} ({})",
                next.unwrap_or_default()
            ))),
            newest::NextKey::LaterTimeline(first) => {
                let mut child = Some(first);
                while let Some(t) = child {
                    let Some(history) = self.history(t, deadline).await? else {
                        break;
                    };
                    if let Some(at) = newest::forks_before(&history, tli, partial_end) {
                        return Ok(Some(format!(
                            "timeline {t} forked off timeline {tli} at {at} ({}), before the \
                             end of its WAL ({partial_end})",
                            history_file_name(t)
                        )));
                    }
                    child = t.0.checked_add(1).map(TimelineId);
                }
                Ok(None)
            }
        }
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
        let source = Source {
            key: format!("{}{}", resolve::WAL_PREFIX, history_file_name(tli)),
            fill: Fill::AsIs,
        };
        let Some(found) = self.get(&source, deadline).await? else {
            return Ok(None);
        };
        let key = &found.source.key;
        let raw = envelope::open(&found.body)
            .map_err(|e| abort(format!("verification failed: {}", e.with_key(key))))?;
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

    pub(super) async fn get(
        &self,
        source: &Source,
        deadline: Instant,
    ) -> Result<Option<Found>, FetchError> {
        let store = &self.store;
        let key = source.key.as_str();
        let body = retry(&store.describe(), key, deadline, || async move {
            match store.get(key).await {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await?;
        Ok(body.map(|body| Found {
            source: source.clone(),
            body,
        }))
    }
}

/// Runs `op` until it succeeds, fails with a non-transient error, or `deadline` passes
/// ([`crate::retry::until`] with [`Policy::FETCH`]).
///
/// The first transient error is logged once as a warning.
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
    let mut warned = false;
    let notify = |e: &StoreError, _| {
        if !std::mem::replace(&mut warned, true) {
            tracing::warn!("store {store}: {what}: {e}; retrying until fetch.timeout");
        }
    };
    crate::retry::until(
        Policy::FETCH,
        deadline.into(),
        StoreError::is_transient,
        notify,
        op,
    )
    .await
    .map_err(|gave_up| match gave_up {
        GaveUp::Permanent(e) => abort(format!("store {store}: {what}: {e}")),
        GaveUp::Deadline(last) => abort(format!(
            "store {store}: {what}: still failing when fetch.timeout ran out: {}",
            last.map_or_else(|| "no answer from the store".to_string(), |e| e.to_string())
        )),
    })
}
