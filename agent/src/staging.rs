//! The local staging directory: raw WAL segments as they arrive.
//!
//! Layout (under `staging.dir`):
//!
//! ```text
//! wal/000000010000000A000000FF.partial   the segment being filled (full size, zero padded)
//! wal/000000010000000A000000FE           complete, fsynced, waiting for upload
//! status.json                            the daemon's last published state (see `statusfile`)
//! ```
//!
//! Durability follows pg_receivewal (`src/bin/pg_basebackup/walmethods.c`): a segment is
//! written as `<name>.partial`, preallocated to the segment size so a crash never leaves a
//! short file; once full it is fsynced, renamed to its final name, and the directory is
//! fsynced so the rename itself survives a crash. A reader that sees the final name therefore
//! sees a complete, durable segment.
//!
//! A full disk (`ENOSPC`, or `EDQUOT` on a quota) is a pause, not an end
//! ([`StagingError::is_no_space`]). A write that fails leaves the writer where the last
//! byte that was written is ([`StagingWriter::position`]), so the same write can be tried
//! again once there is room: no byte is skipped, and a segment is renamed complete only after
//! its fsync succeeded. A failed fsync is never tried again: the kernel may have dropped the
//! pages it could not write and report the next fsync clean, so the caller abandons the
//! segment ([`StagingWriter::abandon`]) and receives it again from its start.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pgagent_protocol::{segment_file_name, Lsn, SegNo, TimelineId, WalFileName, WalSegmentSize};

/// Suffix of the segment being filled, as PostgreSQL names it (`IsPartialXLogFileName`).
pub const PARTIAL_SUFFIX: &str = ".partial";

/// A segment that became complete and durable in staging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedSegment {
    /// Timeline the segment belongs to.
    pub tli: TimelineId,
    /// Segment number.
    pub segno: SegNo,
    /// Path of the complete file.
    pub path: PathBuf,
}

/// The segment being filled.
#[derive(Debug)]
struct OpenSegment {
    tli: TimelineId,
    segno: SegNo,
    file: File,
    /// The `.partial` file, or the final name once renamed.
    path: PathBuf,
    /// Bytes written from the segment start.
    written: u64,
    /// Bytes known fsynced from the segment start.
    synced: u64,
    /// Full, fsynced and renamed to its final name; only the directory fsync is missing.
    renamed: bool,
}

/// A view of the current `.partial` file for a partial upload: an independent handle, so a
/// rename of the file when the segment completes does not disturb a reader.
#[derive(Debug)]
pub struct PartialView {
    /// Timeline of the segment.
    pub tli: TimelineId,
    /// Segment number.
    pub segno: SegNo,
    /// Open handle on the staged file.
    pub file: File,
    /// Bytes from the segment start that are fsynced (and so may be uploaded).
    pub len: u64,
}

/// Errors of the staging writer.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The server sent WAL that does not continue where the last message ended.
    #[error("WAL gap in staging: expected data at {expected}, got {got}")]
    Gap {
        /// Where the next byte was expected.
        expected: Lsn,
        /// Where the received data starts.
        got: Lsn,
    },
    /// A filesystem operation failed.
    #[error("staging {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl StagingError {
    /// Whether staging has no room (`ENOSPC`, `EDQUOT`): the same operation may succeed once
    /// space is freed.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StagingError::Io { source, .. } if is_no_space(source))
    }

    /// Whether this is a failed fsync: what the file holds is no longer known (see the
    /// module documentation), so its segment must be written again from its start.
    pub fn is_failed_fsync(&self) -> bool {
        matches!(self, StagingError::Io { op: "fsync", .. })
    }
}

/// Whether an OS error says the disk (or the user's quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StagingError + 'a {
    move |source| StagingError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes received WAL into staging, one segment file at a time.
#[derive(Debug)]
pub struct StagingWriter {
    wal_dir: PathBuf,
    seg: WalSegmentSize,
    current: Option<OpenSegment>,
    /// Where the next byte is expected (`None` before the first write, after
    /// [`StagingWriter::close_partial`] and [`StagingWriter::abandon`]).
    end: Option<Lsn>,
    /// Segments completed by writes that then failed, not yet handed out.
    completed: Vec<StagedSegment>,
}

impl StagingWriter {
    /// Opens the writer on `<staging>/wal`, creating the directory.
    pub fn new(staging_dir: &Path, seg: WalSegmentSize) -> Result<Self, StagingError> {
        let wal_dir = staging_dir.join("wal");
        fs::create_dir_all(&wal_dir).map_err(io_err("create", &wal_dir))?;
        Ok(StagingWriter {
            wal_dir,
            seg,
            current: None,
            end: None,
            completed: Vec::new(),
        })
    }

    /// The directory holding staged segments (for the tests).
    #[cfg(test)]
    fn wal_dir(&self) -> &Path {
        &self.wal_dir
    }

    /// Writes `data`, which starts at `start` on timeline `tli`. Returns the segments this
    /// write (and any earlier one that failed) completed: fsynced, renamed, directory
    /// fsynced. Data must continue the previous write; the first write of a segment must
    /// start at the segment start.
    ///
    /// On an error, [`StagingWriter::position`] says how far the data was written, and
    /// [`StagingWriter::take_completed`] hands out the segments completed before it.
    pub fn write(
        &mut self,
        tli: TimelineId,
        start: Lsn,
        mut data: &[u8],
    ) -> Result<Vec<StagedSegment>, StagingError> {
        let mut pos = start;
        // A segment whose completion failed last time is completed first.
        self.complete_if_full()?;
        while !data.is_empty() {
            let segno = pos.segment_number(self.seg);
            let offset = pos.segment_offset(self.seg);
            let open = match &mut self.current {
                Some(cur) if cur.segno == segno && cur.tli == tli => cur,
                Some(cur) => {
                    return Err(StagingError::Gap {
                        expected: cur.segno.start_lsn(self.seg) + cur.written,
                        got: pos,
                    })
                }
                None => {
                    self.open_segment(tli, segno)?;
                    self.current.as_mut().expect("just opened")
                }
            };
            if offset != open.written {
                return Err(StagingError::Gap {
                    expected: open.segno.start_lsn(self.seg) + open.written,
                    got: pos,
                });
            }
            let room = self.seg.bytes() - offset;
            let n = room.min(data.len() as u64) as usize;
            open.file
                .write_all_at(&data[..n], offset)
                .map_err(io_err("write", &open.path))?;
            open.written += n as u64;
            pos = pos + n as u64;
            self.end = Some(pos);
            data = &data[n..];
            self.complete_if_full()?;
        }
        Ok(self.take_completed())
    }

    /// The segments completed by writes that failed afterwards (see
    /// [`StagingWriter::write`]).
    pub fn take_completed(&mut self) -> Vec<StagedSegment> {
        std::mem::take(&mut self.completed)
    }

    /// Where the next byte is expected: the end of the data written (a segment boundary
    /// once a segment completed). `None` before the first write and after the open segment
    /// was closed or abandoned.
    pub fn position(&self) -> Option<Lsn> {
        self.end
    }

    /// Fsyncs the open segment. Returns the end of the durable WAL in staging.
    pub fn sync(&mut self) -> Result<Option<Lsn>, StagingError> {
        let Some(cur) = &mut self.current else {
            return Ok(None);
        };
        if cur.synced < cur.written && !cur.renamed {
            cur.file.sync_data().map_err(io_err("fsync", &cur.path))?;
            cur.synced = cur.written;
        }
        Ok(Some(cur.segno.start_lsn(self.seg) + cur.synced))
    }

    /// An independent handle on the open segment's fsynced prefix, for a partial upload.
    pub fn partial_view(&self) -> Result<Option<PartialView>, StagingError> {
        let Some(cur) = &self.current else {
            return Ok(None);
        };
        let file = cur.file.try_clone().map_err(io_err("dup", &cur.path))?;
        Ok(Some(PartialView {
            tli: cur.tli,
            segno: cur.segno,
            file,
            len: cur.synced,
        }))
    }

    /// Ends the open segment without completing it (the timeline ended inside it, or the
    /// agent stops): fsyncs it and leaves it as `<name>.partial`. Returns its view. A full
    /// segment whose completion failed earlier is completed instead (and handed out by
    /// [`StagingWriter::take_completed`]).
    pub fn close_partial(&mut self) -> Result<Option<PartialView>, StagingError> {
        self.complete_if_full()?;
        self.sync()?;
        let view = self.partial_view()?;
        self.current = None;
        self.end = None;
        Ok(view)
    }

    /// Gives up the open segment without another fsync (one failed, or staging has no room
    /// to finish it): its file stays as it is, and the segment must be received again from
    /// its start, which writes a new file. Returns that start, if a segment was open.
    pub fn abandon(&mut self) -> Option<Lsn> {
        self.end = None;
        let cur = self.current.take()?;
        Some(cur.segno.start_lsn(self.seg))
    }

    fn open_segment(&mut self, tli: TimelineId, segno: SegNo) -> Result<(), StagingError> {
        let name = segment_file_name(tli, segno, self.seg);
        let path = self.wal_dir.join(format!("{name}{PARTIAL_SUFFIX}"));
        // A segment is always rewritten from its start, into a new file (a new inode): bytes
        // a previous session left past the new write position must not survive as if they
        // were WAL, and a `.partial` upload still reading the previous file through its own
        // handle (a `PartialView`) must keep reading the bytes it was promised, not zeros.
        // Truncating the old file in place would break both.
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        // Preallocate (zero-filled) like pg_receivewal, so the file always has the segment
        // size that PostgreSQL expects from restore_command.
        file.set_len(self.seg.bytes())
            .map_err(io_err("preallocate", &path))?;
        self.current = Some(OpenSegment {
            tli,
            segno,
            file,
            path,
            written: 0,
            synced: 0,
            renamed: false,
        });
        Ok(())
    }

    /// Completes the open segment if it is full: fsync, rename, directory fsync. Each step
    /// is done once; after a failure the segment stays open, so a later call goes on from
    /// the step that failed (a failed fsync is not tried again: see [`StagingWriter::abandon`]).
    fn complete_if_full(&mut self) -> Result<(), StagingError> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        if cur.written < self.seg.bytes() {
            return Ok(());
        }
        if !cur.renamed {
            cur.file.sync_all().map_err(io_err("fsync", &cur.path))?;
            cur.synced = cur.written;
            let name = segment_file_name(cur.tli, cur.segno, self.seg);
            let final_path = self.wal_dir.join(&name);
            fs::rename(&cur.path, &final_path).map_err(io_err("rename", &cur.path))?;
            cur.path = final_path;
            cur.renamed = true;
        }
        fsync_dir(&self.wal_dir)?;
        let cur = self.current.take().expect("a segment is open");
        self.completed.push(StagedSegment {
            tli: cur.tli,
            segno: cur.segno,
            path: cur.path,
        });
        Ok(())
    }
}

/// Fsyncs a directory so that renames and creations in it are durable (POSIX leaves the
/// directory entry in memory until the directory itself is synced).
pub fn fsync_dir(dir: &Path) -> Result<(), StagingError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// What a staging directory holds at start-up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StagingScan {
    /// Complete segments, oldest first.
    pub complete: Vec<StagedSegment>,
    /// `.partial` files, oldest first (timeline, segment number).
    pub partials: Vec<(TimelineId, SegNo, PathBuf)>,
}

impl StagingScan {
    /// Reads `<staging>/wal`. Files that are not WAL names are ignored.
    pub fn read(staging_dir: &Path, seg: WalSegmentSize) -> Result<Self, StagingError> {
        let wal_dir = staging_dir.join("wal");
        let mut scan = StagingScan::default();
        let entries = match fs::read_dir(&wal_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(scan),
            Err(e) => return Err(io_err("read", &wal_dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read", &wal_dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            match WalFileName::parse(name, seg) {
                Some(WalFileName::Segment { tli, segno }) => scan.complete.push(StagedSegment {
                    tli,
                    segno,
                    path: entry.path(),
                }),
                Some(WalFileName::Partial { tli, segno }) => {
                    scan.partials.push((tli, segno, entry.path()))
                }
                _ => {}
            }
        }
        scan.complete.sort_by_key(|s| (s.segno, s.tli));
        scan.partials.sort_by_key(|p| (p.1, p.0));
        Ok(scan)
    }

    /// Where streaming resumes from staging: the start of the newest `.partial` segment, or
    /// the segment after the newest complete one. `None` when staging holds no WAL.
    pub fn resume_point(&self, seg: WalSegmentSize) -> Option<(TimelineId, Lsn)> {
        let from_partial = self.partials.last().map(|p| (p.1, p.0, p.1.start_lsn(seg)));
        let from_complete = self
            .complete
            .last()
            .map(|s| (s.segno, s.tli, s.segno.end_lsn(seg)));
        let best = match (from_partial, from_complete) {
            (Some(p), Some(c)) => Some(if p.0 >= c.0 { p } else { c }),
            (p, c) => p.or(c),
        };
        best.map(|(_, tli, lsn)| (tli, lsn))
    }
}

/// Total size in bytes of the files in `<staging>/wal` (for `pgagent_staging_bytes`).
pub fn staging_bytes(staging_dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(staging_dir.join("wal")) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Checks that the staging directory exists (creating it) and takes a durable write.
///
/// Errors name the fix; a full disk is named as such, and [`is_disk_full`] tells it from the
/// others (the daemon starts anyway and waits for room).
pub fn check_staging(dir: &Path) -> anyhow::Result<()> {
    let fix = |what: &str, e: std::io::Error| {
        if is_no_space(&e) {
            return anyhow::Error::new(DiskFull(e)).context(format!(
                "staging directory {} is full: cannot {what} a file there; fix: free space on its disk or give it more (receiving pauses while it is full; the slot keeps the WAL on the server)",
                dir.display()
            ));
        }
        anyhow::anyhow!(
            "staging directory {}: cannot {what}: {e}; fix: create it and make it writable by this user (uid {})",
            dir.display(),
            current_uid()
        )
    };
    std::fs::create_dir_all(dir.join("wal")).map_err(|e| fix("create", e))?;
    let probe = dir.join(".pgagent-write-probe");
    std::fs::write(&probe, b"probe")
        .and_then(|()| std::fs::File::open(&probe)?.sync_all())
        .map_err(|e| fix("write", e))?;
    std::fs::remove_file(&probe).map_err(|e| fix("remove files in", e))?;
    Ok(())
}

/// The cause of a [`check_staging`] error when the disk is full.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DiskFull(io::Error);

/// Whether a [`check_staging`] error is a full disk (`ENOSPC`, `EDQUOT`).
pub fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<DiskFull>())
}

fn current_uid() -> u32 {
    // The owner of /proc/self is the process's effective uid.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX)
}

#[cfg(test)]
#[path = "staging_tests.rs"]
mod tests;
