//! The units of work that flow from the receiver to the bucket.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::metrics::UploadKind;
use pgagent_protocol::{Lsn, SegNo, TimelineId, WalSegmentSize};
use pgagent_storage::deltas::Delta;
use pgagent_storage::envelope::Sealed;
use pgagent_storage::layout::{history_key, segment_key};

/// A WAL object in the store (`wal/…` in DESIGN.md's store layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WalObject {
    /// A complete segment: immutable.
    Segment {
        /// Timeline.
        tli: TimelineId,
        /// Segment number.
        segno: SegNo,
    },
    /// New WAL of the segment being filled, from `start` to `end` (both inside segment
    /// `segno`): an immutable delta (`storage::deltas`). The receiver posts views from the
    /// segment start; the partial uploader moves `start` up to what the bucket already
    /// holds, so each delta carries only new WAL.
    Partial {
        /// Timeline.
        tli: TimelineId,
        /// Segment number.
        segno: SegNo,
        /// Position of its first byte.
        start: Lsn,
        /// End of the WAL it holds.
        end: Lsn,
    },
    /// A timeline history file: immutable.
    History {
        /// The timeline it describes.
        tli: TimelineId,
    },
}

impl WalObject {
    /// The store key: `wal/` and the PostgreSQL file name (what `restore_command` is
    /// asked for), or for a delta `wal/<segment>.partial.d/<start>-<end>`.
    pub fn key(&self, seg: WalSegmentSize) -> String {
        match *self {
            WalObject::Segment { tli, segno } => segment_key(tli, segno, seg),
            WalObject::Partial {
                tli,
                segno,
                start,
                end,
            } => {
                let base = segno.start_lsn(seg).0;
                Delta {
                    tli,
                    segno,
                    start: start.0 - base,
                    end: end.0 - base,
                }
                .key(seg)
            }
            WalObject::History { tli } => history_key(tli),
        }
    }

    /// The `kind` label of the upload metrics.
    pub fn kind(&self) -> UploadKind {
        match self {
            WalObject::Segment { .. } => UploadKind::Segment,
            WalObject::Partial { .. } => UploadKind::Partial,
            WalObject::History { .. } => UploadKind::History,
        }
    }
}

/// Where the raw bytes of an object come from.
#[derive(Debug)]
pub enum RawSource {
    /// A whole staged file.
    Path(PathBuf),
    /// Bytes `[from, to)` of an open file (the `.partial` being filled).
    Range {
        /// The file.
        file: File,
        /// Offset of the first byte.
        from: u64,
        /// Offset just past the last byte.
        to: u64,
    },
    /// Bytes in memory (history files).
    Bytes(Vec<u8>),
}

/// Work for the compress+hash workers.
#[derive(Debug)]
pub struct CompressJob {
    /// What it becomes in the store.
    pub object: WalObject,
    /// Where its bytes are.
    pub source: RawSource,
}

/// Work for the uploader: a sealed object. Cloned once per store (the body is shared).
#[derive(Debug, Clone)]
pub struct UploadJob {
    /// What it is.
    pub object: WalObject,
    /// Envelope bytes, hash and raw length.
    pub sealed: Sealed,
    /// Staged file to remove once every store that takes it from here has the object.
    pub remove_after: Option<Arc<StagedRelease>>,
}

/// A staged file kept until each of its holders is done with it: every store's uploader
/// once the object is durable there, or a lagging store as soon as it is set to copy the
/// object from another store instead.
#[derive(Debug)]
pub struct StagedRelease {
    path: PathBuf,
    holders: AtomicUsize,
}

impl StagedRelease {
    /// `path`, held by one holder.
    pub fn new(path: PathBuf) -> Arc<StagedRelease> {
        Arc::new(StagedRelease {
            path,
            holders: AtomicUsize::new(1),
        })
    }

    /// Sets the number of holders, before any of them is done.
    pub fn hold_for(&self, holders: usize) {
        self.holders.store(holders, Ordering::SeqCst);
    }

    /// One holder is done; the last one removes the file (a failure is logged: the next
    /// start finds it and uploads it again, a no-op where it landed).
    pub fn done(&self) {
        if self.holders.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove uploaded segment from staging");
            }
        }
    }
}
