//! The fetch server: answers `pgagent fetch` over a unix socket ([`super::wire`]) and keeps
//! the segments recovery will ask for next downloading in parallel.
//!
//! A segment is served from staging (the daemon's own WAL not yet in the bucket), else from
//! the prefetch cache (verified, [`super::cache`]), else from the store in the foreground.
//! Every request for a segment first schedules the next `fetch.prefetch` segments PostgreSQL
//! will ask for ([`super::plan`]), on the timelines of the newest history file served.
//!
//! One store connection serves every request, so a `restore_command` call costs a process
//! start, a socket round trip and a local copy instead of a TLS handshake and a round trip
//! to the store.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgagent_protocol::{
    segment_file_name, SegNo, TimelineHistory, TimelineId, WalFileName, XLogLongPageHeader,
};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::cache::{Cache, Outcome};
use super::plan::{self, TimelinePlan};
use super::resolve;
use super::wire::{self, Reply, Request};
use super::{abort, deliver_verified, FetchError, Fetcher, Found};
use crate::config::Config;
use crate::metrics::Metrics;

/// Where and how a server listens.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The unix socket to create (an old socket file there is replaced).
    pub socket: PathBuf,
    /// Permission bits of the socket file (connecting needs write permission).
    pub socket_mode: u32,
    /// The prefetch cache directory (emptied at start, removed at exit).
    pub cache_dir: PathBuf,
    /// `<staging>/wal` of the daemon, whose complete segments are served first.
    pub staging_wal: Option<PathBuf>,
    /// Exit after this long without a request (restore mode); `None`: until shutdown.
    pub idle_timeout: Option<Duration>,
}

/// What a server did, for its last log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files delivered.
    pub served: u64,
    /// Segment requests answered from the prefetch cache.
    pub prefetch_hits: u64,
    /// Segment requests fetched on demand.
    pub prefetch_misses: u64,
}

/// A bound listener; [`Server::run`] serves it.
pub struct Server {
    listener: UnixListener,
    shared: Arc<Shared>,
    settings: ServerSettings,
}

struct Shared {
    cfg: Config,
    cache: Cache,
    staging_wal: Option<PathBuf>,
    metrics: Arc<Metrics>,
    fetcher: tokio::sync::Mutex<Option<Fetcher>>,
    last_request: Mutex<Instant>,
    active: AtomicUsize,
    served: AtomicU64,
    foreground_seq: AtomicU64,
}

impl Server {
    /// Creates the cache directory and binds the socket.
    ///
    /// Errors: the cache directory or the socket cannot be created (a non-socket file in
    /// the way is not removed).
    pub fn bind(
        cfg: Config,
        settings: ServerSettings,
        metrics: Arc<Metrics>,
    ) -> io::Result<Server> {
        let cache = Cache::open(&settings.cache_dir, cfg.raw.fetch.cache_size.as_u64())?;
        remove_stale_socket(&settings.socket)?;
        let listener = UnixListener::bind(&settings.socket).map_err(|e| {
            io::Error::new(e.kind(), format!("bind {}: {e}", settings.socket.display()))
        })?;
        std::fs::set_permissions(
            &settings.socket,
            std::fs::Permissions::from_mode(settings.socket_mode),
        )?;
        let shared = Arc::new(Shared {
            cfg,
            cache,
            staging_wal: settings.staging_wal.clone(),
            metrics,
            fetcher: tokio::sync::Mutex::new(None),
            last_request: Mutex::new(Instant::now()),
            active: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            foreground_seq: AtomicU64::new(0),
        });
        Ok(Server {
            listener,
            shared,
            settings,
        })
    }

    /// Serves until `shutdown` is cancelled or, with an idle timeout, until no request came
    /// for that long and none is in progress. Removes the socket and the cache at the end.
    pub async fn run(self, shutdown: CancellationToken) -> Summary {
        let Server {
            listener,
            shared,
            settings,
        } = self;
        loop {
            let idle_check = async {
                match settings.idle_timeout {
                    Some(idle) => {
                        let since = *shared
                            .last_request
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        tokio::time::sleep_until((since + idle).into()).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        shared.touch();
                        let shared = shared.clone();
                        tokio::spawn(async move { shared.handle(stream).await });
                    }
                    Err(e) => {
                        tracing::warn!("fetch server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = idle_check => {
                    let idle = settings.idle_timeout.unwrap_or_default();
                    let since = *shared.last_request.lock().unwrap_or_else(|e| e.into_inner());
                    if shared.active.load(Ordering::SeqCst) == 0 && since.elapsed() >= idle {
                        tracing::info!("fetch server: no request for {}, exiting", humantime::format_duration(idle));
                        break;
                    }
                    shared.touch();
                }
                () = shutdown.cancelled() => break,
            }
        }
        let _ = std::fs::remove_file(&settings.socket);
        drop(listener);
        let _ = std::fs::remove_dir_all(shared.cache.dir());
        Summary {
            served: shared.served.load(Ordering::Relaxed),
            prefetch_hits: shared.metrics.prefetch_hits_total.get(),
            prefetch_misses: shared.metrics.prefetch_misses_total.get(),
        }
    }
}

/// Starts the daemon's fetch server on `<staging>/fetch.sock` (mode 0660: PostgreSQL's OS
/// user must be the daemon's user or in its group), serving staging first. A server that
/// cannot start is logged and skipped: `pgagent fetch` then starts its own.
pub fn spawn_daemon_server(
    cfg: &Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<Summary>> {
    let staging = cfg.staging_dir();
    let settings = ServerSettings {
        socket: super::paths::daemon_socket(staging),
        socket_mode: 0o660,
        cache_dir: super::paths::daemon_cache(staging),
        staging_wal: Some(staging.join("wal")),
        idle_timeout: None,
    };
    let socket = settings.socket.clone();
    match Server::bind(cfg.clone(), settings, metrics) {
        Ok(server) => {
            tracing::info!("fetch server listening on {}", socket.display());
            Some(tokio::spawn(server.run(shutdown)))
        }
        Err(e) => {
            tracing::warn!("fetch server not started: {e}; pgagent fetch will start its own");
            None
        }
    }
}

/// Removes a leftover socket file at `path` (a previous server that died); anything else
/// in the way is an error.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Shared {
    fn touch(&self) {
        *self.last_request.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    async fn handle(self: Arc<Self>, mut stream: UnixStream) {
        self.active.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        // A client of our own user may have the file moved into place instead of copied.
        let same_user = rustix::net::sockopt::socket_peercred(&stream)
            .is_ok_and(|c| c.uid == rustix::process::geteuid());
        let (reply, file) = match read_request(&mut stream).await {
            Ok(req) => self.answer(&req, same_user).await,
            // A connection closed without a request: `pgagent fetch` checking that a
            // server it started is listening.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.active.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            Err(e) => (
                Reply::Unavailable {
                    message: format!("bad request: {e}"),
                },
                None,
            ),
        };
        if matches!(reply, Reply::Ready { .. } | Reply::Placed { .. }) {
            self.served.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .fetch_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = send_reply(stream, &reply, file).await {
            tracing::debug!("fetch server: reply not delivered: {e}");
        }
        self.touch();
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    async fn answer(self: &Arc<Self>, req: &Request, same_user: bool) -> (Reply, Option<File>) {
        if req.version != wire::VERSION {
            return unavailable(format!("protocol version {} not served", req.version));
        }
        let ours = super::paths::store_identity(&self.cfg);
        if req.store != ours {
            return unavailable(format!("this server serves another store.url ({ours})"));
        }
        let timeout = Duration::from_millis(req.timeout_ms);
        let target = req
            .path
            .as_deref()
            .map(Path::new)
            .filter(|p| same_user && p.is_absolute());
        match self.deliver(&req.file, timeout).await {
            Ok((reply, handover)) => match handover.hand_over(target) {
                Ok(None) => (reply.placed(), None),
                Ok(Some(f)) => (reply, Some(f)),
                Err(e) => (
                    Reply::Abort {
                        message: format!("{}: {e}", req.file),
                    },
                    None,
                ),
            },
            Err(FetchError::NotFound { store, .. }) => (Reply::Absent { store }, None),
            Err(FetchError::Abort(message)) => (Reply::Abort { message }, None),
            Err(e) => (
                Reply::Abort {
                    message: e.to_string(),
                },
                None,
            ),
        }
    }

    /// The store connection, opened on first use (retrying until `deadline`).
    async fn fetcher(&self, deadline: Instant) -> Result<Fetcher, FetchError> {
        let mut slot = self.fetcher.lock().await;
        if let Some(f) = slot.as_ref() {
            return Ok(f.clone());
        }
        let f = Fetcher::connect(&self.cfg, deadline).await?;
        *slot = Some(f.clone());
        Ok(f)
    }

    async fn deliver(
        self: &Arc<Self>,
        file: &str,
        timeout: Duration,
    ) -> Result<(Reply, Handover), FetchError> {
        if !resolve::is_wal_file_name(file) {
            return Err(FetchError::InvalidName(file.to_string()));
        }
        let deadline = Instant::now() + timeout;
        let fetcher = self.fetcher(deadline).await?;
        let resolved = fetcher.resolve(file)?;
        if let WalFileName::Segment { tli, segno } = resolved.name {
            self.prefetch_after(&fetcher, tli, segno, file);
            if let Some((f, len)) = self.staged_segment(&fetcher, segno, file) {
                return Ok((ready(len, "staging", None), Handover::Open(f)));
            }
            if let Some((path, len)) = self.prefetched(file, deadline).await {
                self.metrics.prefetch_hits_total.inc();
                return Ok((ready(len, "prefetch", None), Handover::Owned(path)));
            }
            self.metrics.prefetch_misses_total.inc();
        }
        let found =
            fetcher
                .find(&resolved, deadline)
                .await?
                .ok_or_else(|| FetchError::NotFound {
                    file: file.to_string(),
                    store: fetcher.describe(),
                })?;
        let note = super::partial_note(file, &resolved.name, &found);
        let path = self.cache.dir().join(format!(
            ".fg-{}-{file}",
            self.foreground_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let written = path.clone();
        let cipher = fetcher.cipher().cloned();
        let len = tokio::task::spawn_blocking(move || {
            deliver_verified(&found, cipher.as_ref(), &written)
        })
        .await
        .map_err(|e| abort(format!("delivery task failed: {e}")))??;
        if let WalFileName::History(tli) = resolved.name {
            self.learn_history(tli, &path, fetcher.segment_size());
        }
        Ok((ready(len.file_len, "store", note), Handover::Owned(path)))
    }

    /// A complete segment in the daemon's staging directory (not yet in the bucket, or not
    /// yet removed after upload), if it is whole and its first page header names the
    /// store's cluster and this segment's address (`XLogLongPageHeaderData`,
    /// `src/include/access/xlog_internal.h`).
    fn staged_segment(&self, fetcher: &Fetcher, segno: SegNo, file: &str) -> Option<(File, u64)> {
        let seg = fetcher.segment_size();
        let mut f = File::open(self.staging_wal.as_ref()?.join(file)).ok()?;
        let len = f.metadata().ok()?.len();
        if len != seg.bytes() {
            return None;
        }
        let mut head = [0u8; pgagent_protocol::page::SIZE_OF_XLOG_LONG_PHD];
        f.read_exact(&mut head).ok()?;
        std::io::Seek::rewind(&mut f).ok()?;
        let page = XLogLongPageHeader::parse(&head).ok()?;
        let ours = page.system_identifier.to_string() == fetcher.system_identifier()
            && page.page_addr == segno.start_lsn(seg);
        ours.then_some((f, len))
    }

    /// The prefetched file of `file`: ready, or loading (waited for, up to `deadline`).
    /// `None` if it was not prefetched, or the prefetch failed or is still retrying at the
    /// deadline (the caller fetches it itself).
    async fn prefetched(&self, file: &str, deadline: Instant) -> Option<(PathBuf, u64)> {
        if let Some(mut done) = self.cache.loading(file) {
            let _ = tokio::time::timeout_at(deadline.into(), done.wait_for(|d| *d)).await;
        }
        self.cache.take_path(file)
    }

    /// Parses a history file just served and adopts it as the timeline plan if it is the
    /// newest one (recovery asks for the target timeline's history before any segment).
    fn learn_history(&self, tli: TimelineId, path: &Path, seg: pgagent_protocol::WalSegmentSize) {
        let parsed = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| TimelineHistory::parse(&text).ok());
        match parsed {
            Some(history) => self.cache.offer_plan(TimelinePlan::new(tli, &history, seg)),
            None => tracing::warn!(
                "{}: not a valid history file; prefetch stays on the timeline asked for",
                pgagent_protocol::history_file_name(tli)
            ),
        }
    }

    /// Starts downloading the segments expected after `(tli, segno)`.
    fn prefetch_after(
        self: &Arc<Self>,
        fetcher: &Fetcher,
        tli: TimelineId,
        segno: SegNo,
        file: &str,
    ) {
        let seg = fetcher.segment_size();
        let plan = self.cache.plan();
        let next: Vec<String> =
            plan::next_segments(tli, segno, plan.as_ref(), self.cfg.raw.fetch.prefetch)
                .into_iter()
                .map(|(t, s)| segment_file_name(t, s, seg))
                .collect();
        let mut keep: HashSet<String> = next.iter().cloned().collect();
        keep.insert(file.to_string());
        self.cache.retain(&keep);
        for name in next {
            if self
                .staging_wal
                .as_ref()
                .is_some_and(|d| d.join(&name).exists())
            {
                continue;
            }
            if !self.cache.begin(&name, seg.bytes(), Instant::now()) {
                continue;
            }
            let shared = self.clone();
            let fetcher = fetcher.clone();
            tokio::spawn(async move { shared.prefetch_one(fetcher, name).await });
        }
    }

    /// Loads the reserved entry `name`; whatever happens (even a panic), the entry is
    /// finished so that a request waiting for it goes on.
    async fn prefetch_one(self: Arc<Self>, fetcher: Fetcher, name: String) {
        struct Finish<'a>(&'a Cache, &'a str, Outcome);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                self.0.finish(self.1, self.2, Instant::now());
            }
        }
        let mut finish = Finish(&self.cache, &name, Outcome::Failed);
        finish.2 = self.load(&fetcher, &name).await;
    }

    async fn load(&self, fetcher: &Fetcher, name: &str) -> Outcome {
        let name = name.to_string();
        match fetch_complete(fetcher, &name, self.cfg.raw.fetch.timeout).await {
            Ok(Some(found)) => {
                let path = self.cache.path(&name);
                let cipher = fetcher.cipher().cloned();
                let r = tokio::task::spawn_blocking(move || {
                    deliver_verified(&found, cipher.as_ref(), &path)
                })
                .await;
                match r {
                    Ok(Ok(d)) => Outcome::Ready(d.file_len),
                    Ok(Err(e)) => {
                        tracing::warn!(
                            "prefetch of {name}: {e}; it will be fetched when asked for"
                        );
                        Outcome::Failed
                    }
                    Err(e) => {
                        tracing::warn!("prefetch of {name}: task failed: {e}");
                        Outcome::Failed
                    }
                }
            }
            Ok(None) => Outcome::Absent,
            Err(e) => {
                tracing::warn!("prefetch of {name}: {e}; it will be fetched when asked for");
                Outcome::Failed
            }
        }
    }
}

/// A verified file ready for the client.
#[derive(Debug)]
enum Handover {
    /// An open file that is not ours to move (a staged segment).
    Open(File),
    /// A file of ours in the cache directory.
    Owned(PathBuf),
}

impl Handover {
    /// Moves an owned file to `target` when given (same user, same filesystem): `Ok(None)`,
    /// the file is in place. Otherwise returns it open (an owned one unlinked), for the
    /// client to copy.
    fn hand_over(self, target: Option<&Path>) -> io::Result<Option<File>> {
        match self {
            Handover::Open(f) => Ok(Some(f)),
            Handover::Owned(path) => {
                if let Some(target) = target {
                    if std::fs::rename(&path, target).is_ok() {
                        return Ok(None);
                    }
                }
                let f = File::open(&path);
                let _ = std::fs::remove_file(&path);
                f.map(Some)
            }
        }
    }
}

/// The complete object of segment `name` (never its partial content: that grows while the
/// daemon streams, so it is always read fresh in the foreground).
async fn fetch_complete(
    fetcher: &Fetcher,
    name: &str,
    timeout: Duration,
) -> Result<Option<Found>, FetchError> {
    let resolved = fetcher.resolve(name)?;
    let deadline = Instant::now() + timeout;
    fetcher.get_whole(resolved.whole.as_deref(), deadline).await
}

fn ready(len: u64, from: &str, note: Option<String>) -> Reply {
    Reply::Ready {
        len,
        served_from: from.to_string(),
        note,
    }
}

fn unavailable(message: String) -> (Reply, Option<File>) {
    (Reply::Unavailable { message }, None)
}

async fn read_request(stream: &mut UnixStream) -> io::Result<Request> {
    let mut line = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a request",
            ));
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return serde_json::from_slice(&line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        }
        if line.len() > wire::MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request too long",
            ));
        }
    }
}

async fn send_reply(stream: UnixStream, reply: &Reply, file: Option<File>) -> io::Result<()> {
    let line = serde_json::to_string(reply).map_err(io::Error::other)?;
    let fd = file.map(OwnedFd::from);
    let stream = stream.into_std()?;
    tokio::task::spawn_blocking(move || {
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        wire::send_line(&stream, &line, fd.as_ref())
    })
    .await
    .map_err(io::Error::other)?
}
