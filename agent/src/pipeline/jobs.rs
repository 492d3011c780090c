//! The units of work that flow from the receiver to the bucket.

use std::fs::File;
use std::path::PathBuf;

use crate::metrics::UploadKind;
use pgagent_protocol::{
    history_file_name, segment_file_name, Lsn, SegNo, TimelineId, WalSegmentSize,
};
use pgagent_storage::envelope::Sealed;
use pgagent_storage::layout::wal_key;

/// A WAL object in the store (`wal/…` in DESIGN.md's store layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalObject {
    /// A complete segment: immutable.
    Segment {
        /// Timeline.
        tli: TimelineId,
        /// Segment number.
        segno: SegNo,
    },
    /// The segment being filled, holding WAL from the segment start up to `end`: re-uploaded
    /// (overwritten) as it grows.
    Partial {
        /// Timeline.
        tli: TimelineId,
        /// Segment number.
        segno: SegNo,
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
    /// The PostgreSQL file name (what `restore_command` is asked for, plus `.partial`).
    pub fn file_name(&self, seg: WalSegmentSize) -> String {
        match *self {
            WalObject::Segment { tli, segno } => segment_file_name(tli, segno, seg),
            WalObject::Partial { tli, segno, .. } => {
                format!("{}.partial", segment_file_name(tli, segno, seg))
            }
            WalObject::History { tli } => history_file_name(tli),
        }
    }

    /// The store key.
    pub fn key(&self, seg: WalSegmentSize) -> String {
        wal_key(&self.file_name(seg))
    }

    /// The `kind` label of the upload metrics.
    pub fn kind(&self) -> UploadKind {
        match self {
            WalObject::Segment { .. } => UploadKind::Segment,
            WalObject::Partial { .. } => UploadKind::Partial,
            WalObject::History { .. } => UploadKind::History,
        }
    }

    /// Whether an existing object must never be replaced by different content.
    pub fn is_immutable(&self) -> bool {
        !matches!(self, WalObject::Partial { .. })
    }
}

/// Where the raw bytes of an object come from.
#[derive(Debug)]
pub enum RawSource {
    /// A whole staged file.
    Path(PathBuf),
    /// The first `len` bytes of an open file (a `.partial` being filled).
    Prefix {
        /// The file.
        file: File,
        /// Bytes from its start.
        len: u64,
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

/// Work for the uploader: a sealed object.
#[derive(Debug)]
pub struct UploadJob {
    /// What it is.
    pub object: WalObject,
    /// Envelope bytes, hash and raw length.
    pub sealed: Sealed,
    /// Staged file to remove once the object is durable in the bucket.
    pub remove_after: Option<PathBuf>,
}
