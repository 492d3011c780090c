//! `pgagent fetch <file> <path>`: PostgreSQL's `restore_command` (DESIGN.md, "fetch").
//!
//! PostgreSQL runs `restore_command` once per file it needs during archive recovery and reads
//! the exit status (`RestoreArchivedFile` in `src/backend/access/transam/xlogarchive.c`):
//! 0 means the file is at `%p`; any other status below 126 means "not available", after which
//! recovery may end and the server promote; a status above 125 (or a signal) makes the startup
//! process stop with FATAL. So only a confirmed absence may give 1 ([`FetchError::NotFound`]);
//! everything that is not known to be absent gives 255 ([`FetchError::Abort`]): a store that
//! stays unreachable past `fetch.timeout`, an object failing its length or hash check, a store
//! without `cluster.json` (a wrong `store.url` must not look like the end of WAL).
//!
//! `pgagent fetch` asks a fetch server over a unix socket ([`client`], [`wire`]): the daemon's
//! (`pgagent run`), else a restore-mode server it starts ([`restore_mode`]); both serve from
//! a prefetch cache kept ahead of recovery ([`server`], [`cache`], [`plan`]). When no server
//! can answer, it fetches from the store itself ([`fetch_standalone`]). The store side is
//! shared: [`resolve`] (which keys answer a name, pure), [`newest`] (whether a `.partial` may
//! answer for its segment, pure), [`Fetcher`] (store access with retries up to a deadline),
//! [`deliver_verified`] (envelope check, padding, atomic write).

pub mod cache;
pub mod client;
pub mod deliver;
pub mod newest;
pub mod paths;
pub mod plan;
pub mod resolve;
pub mod restore_mode;
pub mod server;
pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgagent_protocol::{
    history_file_name, segment_file_name, Lsn, TimelineHistory, TimelineId, WalFileName,
    WalSegmentSize,
};
use pgagent_storage::layout::wal_file_name;
use pgagent_storage::{envelope, ObjectStore, StoreError};

use crate::config::Config;
use crate::fetch::resolve::{Fill, Resolved, Source};
use crate::retry::{GaveUp, Policy};

/// Default log filter of `pgagent fetch` when `PGAGENT_LOG` is unset: PostgreSQL copies the
/// command's stderr into its log for every file restored, so only warnings, errors and the
/// notice that a partial segment was served are shown.
pub const LOG_FILTER: &str = "warn,pgagent::fetch=info";

/// Why a fetch did not deliver; each variant has its own exit status
/// (decided with the other exit codes, in `exit.rs`).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The file is confirmed absent from the store (exit 1). Normal: PostgreSQL probes for
    /// history files of future timelines and for the segment after the last one.
    #[error("{file}: not found in {store}")]
    NotFound {
        /// The requested file name.
        file: String,
        /// The store location, without credentials.
        store: String,
    },
    /// The requested name is not a WAL file name (exit 2); no store key was built from it.
    #[error("{0:?} is not a WAL segment, .partial, .history or .backup file name")]
    InvalidName(String),
    /// Recovery must stop (exit 255): the file may exist but cannot be delivered verified.
    #[error("{0}; recovery must not continue without it")]
    Abort(String),
}

impl FetchError {
    /// The exit status of `pgagent fetch` for this error: 1 (confirmed not found), 2 (not a
    /// WAL file name) or 255 (recovery must stop).
    pub fn exit_code(&self) -> u8 {
        match self {
            FetchError::NotFound { .. } => crate::exit::FAILURE,
            FetchError::InvalidName(_) => crate::exit::USAGE,
            FetchError::Abort(_) => crate::exit::FETCH_ABORT,
        }
    }
}

impl From<FetchError> for crate::exit::Coded {
    fn from(e: FetchError) -> Self {
        crate::exit::Coded {
            code: e.exit_code(),
            error: Box::new(e),
        }
    }
}

fn abort(msg: impl Into<String>) -> FetchError {
    FetchError::Abort(msg.into())
}

/// What [`Fetcher::find`] returned: the verified-to-be-checked envelope and how to fill it.
#[derive(Debug)]
pub struct Found {
    /// The source that answered.
    pub source: Source,
    /// The stored body (an envelope, not yet verified).
    pub body: Bytes,
}

/// What [`deliver_verified`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Raw bytes taken from the object.
    pub raw_len: u64,
    /// Bytes of the delivered file (the segment size when a partial was padded).
    pub file_len: u64,
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
        let opts = cfg.store_options();
        let store = retry(url, "open the store", deadline, || {
            pgagent_storage::open(url, &opts)
        })
        .await?;
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

    async fn get(&self, source: &Source, deadline: Instant) -> Result<Option<Found>, FetchError> {
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

/// Verifies the envelope of `found` (length and blake3, DESIGN.md "Object envelope"), applies
/// its [`Fill`], and writes the result atomically at `path` (see [`deliver`]).
///
/// Blocking (decompression and file I/O): call it from a blocking thread in async code.
///
/// Errors: [`FetchError::Abort`] naming the key on a corrupt object or a partial segment
/// longer than the segment size, and on any local I/O error. Nothing is left at `path`.
pub fn deliver_verified(found: &Found, path: &Path) -> Result<Delivered, FetchError> {
    let key = &found.source.key;
    let r = deliver::write_atomically(path, |mut out| -> Result<Delivered, DeliverError> {
        let raw_len = envelope::open_into(&found.body, &mut out).map_err(|e| e.with_key(key))?;
        let file_len = match found.source.fill {
            Fill::AsIs => raw_len,
            Fill::PadToSegment { segment_size, .. } => {
                if raw_len > segment_size {
                    return Err(DeliverError::Store(StoreError::Corrupt {
                        key: key.clone(),
                        detail: format!(
                            "partial segment holds {raw_len} bytes, more than the segment size {segment_size}"
                        ),
                    }));
                }
                deliver::pad_with_zeros(out, raw_len, segment_size)?;
                segment_size
            }
        };
        Ok(Delivered { raw_len, file_len })
    });
    r.map_err(|e| match e {
        DeliverError::Store(e) if e.is_corrupt() => abort(format!(
            "{}: verification failed, not delivered: {e}",
            key.trim_start_matches(resolve::WAL_PREFIX)
        )),
        DeliverError::Store(e) => abort(format!("{} to {}: {e}", key, path.display())),
        DeliverError::Io(e) => abort(format!("write {}: {e}", path.display())),
    })
}

/// Errors inside [`deliver_verified`]'s writer.
#[derive(Debug)]
enum DeliverError {
    Store(StoreError),
    Io(std::io::Error),
}

impl From<std::io::Error> for DeliverError {
    fn from(e: std::io::Error) -> Self {
        DeliverError::Io(e)
    }
}

impl From<StoreError> for DeliverError {
    fn from(e: StoreError) -> Self {
        DeliverError::Store(e)
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

/// Fetches `file` into `path` with a store connection of its own (no daemon, no prefetch).
///
/// Errors: see [`FetchError`]; an unexpected failure is always [`FetchError::Abort`].
pub async fn fetch_standalone(cfg: &Config, file: &str, path: &Path) -> Result<(), FetchError> {
    if !resolve::is_wal_file_name(file) {
        return Err(FetchError::InvalidName(file.to_string()));
    }
    let deadline = Instant::now() + cfg.raw.fetch.timeout;
    let fetcher = Fetcher::connect(cfg, deadline).await?;
    let resolved = fetcher.resolve(file)?;
    let Some(found) = fetcher.find(&resolved, deadline).await? else {
        return Err(FetchError::NotFound {
            file: file.to_string(),
            store: fetcher.describe(),
        });
    };
    let target = path.to_path_buf();
    let (found, delivered) = tokio::task::spawn_blocking(move || {
        let r = deliver_verified(&found, &target);
        (found, r)
    })
    .await
    .map_err(|e| abort(format!("delivery task failed: {e}")))?;
    let delivered = delivered?;
    if let Fill::PadToSegment { start, .. } = found.source.fill {
        if !matches!(resolved.name, WalFileName::Partial { .. }) {
            tracing::info!(
                "{file}: served the partial segment {} (WAL up to {}, zero-padded to {} bytes)",
                found.source.key,
                start + delivered.raw_len,
                delivered.file_len
            );
        }
    }
    tracing::debug!(
        "{file}: delivered {} bytes from {}",
        delivered.file_len,
        found.source.key
    );
    Ok(())
}

/// Entry point of the command: through a fetch server if one answers or can be started,
/// else standalone. `cfg` is the result of loading the configuration, whose failure must
/// also stop recovery (exit 255, not 2).
pub fn run(
    cfg: anyhow::Result<Config>,
    file: &str,
    path: &Path,
    launch: &client::Launch,
) -> Result<(), FetchError> {
    if !resolve::is_wal_file_name(file) {
        return Err(FetchError::InvalidName(file.to_string()));
    }
    let cfg = cfg.map_err(|e| abort(format!("configuration: {e:#}")))?;
    if let Some(served) = through_server(&cfg, file, path, launch)? {
        tracing::debug!(
            "{file}: delivered {} bytes from {}",
            served.len,
            served.served_from
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| abort(format!("start runtime: {e}")))?;
    runtime.block_on(fetch_standalone(&cfg, file, path))
}

/// How long the client waits for the server beyond `fetch.timeout`, which bounds the
/// server's own retries.
const SERVER_GRACE: Duration = Duration::from_secs(30);

/// How long a restore-mode server may take to start listening.
const SERVER_START: Duration = Duration::from_secs(5);

/// Asks the daemon's server, then the restore-mode server (starting it if needed).
/// `Ok(None)`: no server could answer; the reasons are logged.
fn through_server(
    cfg: &Config,
    file: &str,
    path: &Path,
    launch: &client::Launch,
) -> Result<Option<client::Served>, FetchError> {
    let req = wire::Request {
        version: wire::VERSION,
        file: file.to_string(),
        store: cfg.raw.store.url.clone(),
        timeout_ms: u64::try_from(cfg.raw.fetch.timeout.as_millis()).unwrap_or(u64::MAX),
        path: std::path::absolute(path)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string)),
    };
    let wait = cfg.raw.fetch.timeout + SERVER_GRACE;
    let mut why = Vec::new();
    let daemon = paths::daemon_socket(cfg.staging_dir());
    let restore = paths::RestorePaths::for_config(cfg);
    let sockets = [
        Some(daemon.clone()).filter(|d| d.exists()),
        restore.as_ref().map(|r| r.socket.clone()),
    ];
    for socket in sockets.iter().flatten() {
        match client::ask(socket, &req, path, wait) {
            client::Answer::Done(r) => return r.map(Some),
            client::Answer::Unavailable(m) => why.push(m),
        }
    }
    match &restore {
        Some(rp) => match client::start_server(rp, launch) {
            Ok(mut child) => {
                if client::wait_for_socket(&rp.socket, &mut child, SERVER_START) {
                    match client::ask(&rp.socket, &req, path, wait) {
                        client::Answer::Done(r) => return r.map(Some),
                        client::Answer::Unavailable(m) => why.push(m),
                    }
                } else {
                    why.push(format!(
                        "the fetch server did not start, see {}",
                        rp.log.display()
                    ));
                }
            }
            Err(e) => why.push(e.to_string()),
        },
        None => why.push(format!(
            "{} is not writable and there is no private runtime directory",
            cfg.staging_dir().display()
        )),
    }
    tracing::info!(
        "{file}: fetching directly from the store, no fetch server: {}",
        why.join("; ")
    );
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{code_for, FAILURE, FETCH_ABORT, USAGE};

    #[test]
    fn fetch_errors_decide_their_own_code() {
        let coded = |e: FetchError| anyhow::Error::new(crate::exit::Coded::from(e));
        let abort = coded(FetchError::Abort("x".into())).context("outer");
        assert_eq!(code_for(&abort), FETCH_ABORT);
        let absent = FetchError::NotFound {
            file: "00000002.history".into(),
            store: "file:///s".into(),
        };
        assert_eq!(code_for(&coded(absent)), FAILURE);
        assert_eq!(
            code_for(&coded(FetchError::InvalidName("../x".into()))),
            USAGE
        );
    }
}
