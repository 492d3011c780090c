//! `WAL.Archive`: PostgreSQL's `archive_command` through CNPG's instance manager, answered
//! once the file is in the store.
//!
//! A segment the stream already put in the store (on its timeline, below the end of the WAL
//! durable in every required store,
//! [`durable_end_on`](crate::pipeline::Progress::durable_end_on): the position `flush`
//! follows, which the pipeline's simulation holds fetch to serve byte for byte) is answered
//! without a request. A segment the stream is about to finish is waited for, up to
//! [`STREAM_WAIT`]. Anything else (streaming is not running, the slot was lost, a history or
//! backup history file, a segment of a timeline the stream never saw) is uploaded from
//! `pg_wal` as a complete object with [`put_immutable`]: the same bytes already there are a
//! no-op, different bytes are a conflict (an alarm, never an
//! overwrite). So PostgreSQL recycles a segment only once it is offsite, whatever happened
//! to the stream.
//!
//! A `.partial` file (the last, incomplete segment of the old timeline, archived once at
//! promotion) is answered without storing it: its bytes up to the switch point are the
//! first segment of the new timeline, which is archived in full, and a shorter copy of WAL
//! the old primary may have streamed further must not go into the store (the bucket never
//! goes backwards).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgagent_protocol::{SegNo, TimelineId, WalFileName};
use pgagent_storage::envelope;
use pgagent_storage::immutable::{put_immutable, ImmutablePut};
use pgagent_storage::layout::wal_key;
use pgagent_storage::StoreError;

use super::store_once::StoreOnce;
use super::streaming::Streaming;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::retry::{GaveUp, Policy};
use crate::store::Opened;

/// How long a segment the stream has not yet put in the store is waited for before it is
/// uploaded from `pg_wal`.
pub const STREAM_WAIT: Duration = Duration::from_secs(3);

/// How long an upload from `pg_wal` retries a store that fails transiently.
const UPLOAD_DEADLINE: Duration = Duration::from_secs(60);

/// How an archived file reached the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archived {
    /// The stream had put it there (no request sent).
    Streamed,
    /// Uploaded from `pg_wal` now.
    Uploaded,
    /// Identical content was already in the store.
    AlreadyStored,
    /// A `.partial` of an old timeline: not stored (see the module documentation).
    PartialSkipped,
}

/// Why a file was not archived (PostgreSQL tries again later and keeps the file).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Not a WAL file name.
    #[error("{0:?} is not a WAL segment, .partial, .history or .backup file name")]
    InvalidName(String),
    /// The store holds another cluster, or none yet.
    #[error("{0}")]
    WrongStore(String),
    /// The store holds different bytes under this name.
    #[error("{0}")]
    Conflict(String),
    /// The file or the store failed.
    #[error("{0}")]
    Failed(String),
}

/// Archives files of one PostgreSQL data directory into the configured store.
pub struct Archiver {
    cfg: Config,
    pgdata: PathBuf,
    streaming: Arc<Streaming>,
    metrics: Arc<Metrics>,
    store: Arc<StoreOnce>,
}

impl Archiver {
    /// An archiver for the server of `pgdata`, writing into `store` (sealed at `cfg`'s
    /// compression level).
    pub fn new(
        cfg: Config,
        pgdata: PathBuf,
        store: Arc<StoreOnce>,
        streaming: Arc<Streaming>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Archiver {
            cfg,
            pgdata,
            streaming,
            metrics,
            store,
        }
    }

    /// Puts `path` (`%p` inside PGDATA, checked by the caller) in the store.
    ///
    /// Errors: see [`ArchiveError`].
    pub async fn archive(&self, path: &Path) -> Result<Archived, ArchiveError> {
        let source = path.display().to_string();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| crate::fetch::resolve::is_wal_file_name(n))
            .ok_or_else(|| ArchiveError::InvalidName(source.to_string()))?
            .to_string();
        let opened = self.opened().await?;
        let parsed = WalFileName::parse(&name, opened.seg)
            .ok_or_else(|| ArchiveError::InvalidName(name.clone()))?;
        match parsed {
            WalFileName::Partial { .. } => {
                tracing::info!("{name}: the old timeline's last segment is not stored (its WAL up to the switch is in the new timeline's first segment)");
                return Ok(Archived::PartialSkipped);
            }
            WalFileName::Segment { tli, segno } => {
                if self.wait_for_stream(tli, segno, opened).await {
                    return Ok(Archived::Streamed);
                }
            }
            WalFileName::History(_) | WalFileName::BackupHistory { .. } => {}
        }
        self.upload(&name, path, opened).await
    }

    /// Whether the stream has (or gets within [`STREAM_WAIT`]) the whole segment durable
    /// in every required store.
    async fn wait_for_stream(&self, tli: TimelineId, segno: SegNo, opened: &Opened) -> bool {
        let end = SegNo(segno.0 + 1).start_lsn(opened.seg);
        let deadline = tokio::time::Instant::now() + STREAM_WAIT;
        loop {
            let Some(progress) = self.streaming.progress() else {
                return false;
            };
            let durable = progress.durable_end_on(tli);
            if durable.is_some_and(|d| d >= end) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::info!(
                    ?durable, timeline = ?progress.live().timeline,
                    "segment {tli}/{segno:?} not yet streamed into the store: uploading it from pg_wal"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn upload(
        &self,
        name: &str,
        path: &Path,
        opened: &Opened,
    ) -> Result<Archived, ArchiveError> {
        let key = wal_key(name);
        let cipher = opened.cipher.clone();
        let level = self.cfg.raw.wal.compression_level;
        let (file_path, seal_key) = (path.to_path_buf(), key.clone());
        let sealed = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&file_path)?;
            let len = file.metadata()?.len();
            envelope::seal_reader_for(file, Some(len), level, cipher.as_ref(), &seal_key)
        })
        .await
        .map_err(|e| ArchiveError::Failed(format!("seal task: {e}")))?
        .map_err(|e| ArchiveError::Failed(format!("read {}: {e}", path.display())))?;
        let store = opened.store.clone();
        let deadline = tokio::time::Instant::now() + UPLOAD_DEADLINE;
        let put = crate::retry::until(
            Policy::UPLOAD,
            deadline,
            StoreError::is_transient,
            |e, wait| tracing::warn!("{key}: {e}; again in {wait:?}"),
            || put_immutable(store.as_ref(), &key, &sealed),
        )
        .await;
        match put {
            Ok(ImmutablePut::Created) => Ok(Archived::Uploaded),
            Ok(ImmutablePut::AlreadyPresent) => Ok(Archived::AlreadyStored),
            Err(GaveUp::Permanent(e @ StoreError::Conflict { .. })) => {
                self.metrics.conflicts_total.inc();
                tracing::error!("{e}");
                Err(ArchiveError::Conflict(format!(
                    "{e}: the store holds other bytes under this name; nothing was overwritten"
                )))
            }
            Err(GaveUp::Permanent(e) | GaveUp::Deadline(Some(e))) => {
                Err(ArchiveError::Failed(format!("{key}: {e}")))
            }
            Err(GaveUp::Deadline(None)) => Err(ArchiveError::Failed(format!(
                "{key}: no answer from the store within {UPLOAD_DEADLINE:?}"
            ))),
        }
    }

    /// The store, whose `cluster.json` must name this server's system (checked at each
    /// call: reading `pg_control`'s first bytes costs less than the archive itself).
    async fn opened(&self) -> Result<&Opened, ArchiveError> {
        let opened = self.store.get().await.map_err(|e| {
            ArchiveError::WrongStore(format!(
                "{e:#} (the primary's sidecar claims the store when it starts streaming)"
            ))
        })?;
        let ours =
            system_identifier(&self.pgdata).map_err(|e| ArchiveError::Failed(format!("{e}")))?;
        if opened.cluster.system_identifier != ours.to_string() {
            return Err(ArchiveError::WrongStore(format!(
                "{} holds the WAL of system {}, this server is system {ours}: refusing to mix \
                 two clusters in one store; point store.url at an empty prefix",
                opened.store.describe(),
                opened.cluster.system_identifier
            )));
        }
        Ok(opened)
    }
}

/// The database system identifier of the data directory `pgdata`: the first field of
/// `global/pg_control` (`ControlFileData.system_identifier`, a `uint64` in the server's
/// byte order; `src/include/catalog/pg_control.h`).
///
/// Errors: the file cannot be read or is shorter than 8 bytes.
pub fn system_identifier(pgdata: &Path) -> std::io::Result<u64> {
    let path = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let first: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| std::io::Error::other(format!("{}: too short", path.display())))?;
    Ok(u64::from_ne_bytes(first))
}
