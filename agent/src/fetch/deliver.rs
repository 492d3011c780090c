//! Atomic delivery of a restored file to the path PostgreSQL gave (`%p`), and of a WAL file
//! from its verified envelope ([`deliver_verified`]).
//!
//! The content is written to a temporary file in the directory of `%p` and renamed over `%p`
//! only once the writer has finished without error (for WAL: after the envelope's length and
//! hash were verified), so PostgreSQL never sees a partial or unverified file. On any error,
//! or a panic, the temporary file is removed and nothing appears at `%p`.
//!
//! No fsync: PostgreSQL makes a restored file durable itself when it keeps it
//! (`KeepFileRestoredFromArchive` in `src/backend/access/transam/xlogarchive.c` calls
//! `durable_rename`, which fsyncs the file and the directory), and a file it does not keep
//! (`RECOVERYXLOG`) is discarded after a crash anyway.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::deltas::overlap_mismatch;
use pgagent_storage::{envelope, StoreError};

use super::assemble::{Assembled, Part};
use super::{abort, FetchError, Found};

/// Distinguishes temporary files of concurrent deliveries within one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Zeros written per call when padding, in bytes.
const ZERO_CHUNK: usize = 1 << 20;

/// Writes `path` atomically: `fill` writes the content into a temporary file next to `path`,
/// which is renamed over `path` only if `fill` returns `Ok`.
///
/// `path` may be relative (to the current directory, which PostgreSQL sets to PGDATA). An
/// existing file at `path` is replaced. Returns `fill`'s value.
///
/// Errors: `fill`'s error, or an I/O error creating, writing or renaming the temporary file
/// (converted with `From<io::Error>`); in every error case nothing is left at `path` by this
/// call and the temporary file is removed.
pub fn write_atomically<T, E>(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<io::Error>,
{
    let tmp = TempFile::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, tmp.file()?);
    let value = fill(&mut out)?;
    out.into_inner().map_err(|e| e.into_error())?;
    tmp.persist(path)?;
    Ok(value)
}

/// Copies the first `len` bytes of `src` (from its current offset) to `path` atomically, the
/// same way as [`write_atomically`]; on Linux the copy stays in the kernel
/// (`copy_file_range`).
///
/// Errors: an I/O error, or `UnexpectedEof` if `src` holds fewer than `len` bytes; nothing
/// is left at `path` then.
pub fn copy_atomically(path: &Path, src: &mut File, len: u64) -> io::Result<()> {
    let tmp = TempFile::create(path)?;
    let mut out = tmp.file()?;
    let copied = io::copy(&mut src.take(len), &mut out)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("got {copied} of {len} bytes"),
        ));
    }
    drop(out);
    tmp.persist(path)
}

/// Writes zeros from byte `written` up to `size` (no-op if `written >= size`).
///
/// Zeros are written, not left as a hole with `set_len`, so the file occupies its space as
/// PostgreSQL's own segments do (`XLogFileInitInternal` zero-fills for the same reason).
pub fn pad_with_zeros(out: &mut dyn Write, written: u64, size: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut left = size.saturating_sub(written);
    while left > 0 {
        let n = left.min(ZERO_CHUNK as u64) as usize;
        out.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// A temporary file next to the destination, removed on drop unless persisted.
struct TempFile {
    path: Option<PathBuf>,
    file: Option<File>,
}

impl TempFile {
    fn create(dest: &Path) -> io::Result<TempFile> {
        let name = dest.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a file path", dest.display()),
            )
        })?;
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = dir.join(format!(
            ".{}.pgagent-{}-{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", tmp.display())))?;
        Ok(TempFile {
            path: Some(tmp),
            file: Some(file),
        })
    }

    fn file(&self) -> io::Result<File> {
        match &self.file {
            Some(f) => f.try_clone(),
            None => Err(io::Error::other("temporary file already closed")),
        }
    }

    fn persist(mut self, dest: &Path) -> io::Result<()> {
        self.file = None;
        let tmp = self.path.as_ref().expect("set until persisted or dropped");
        fs::rename(tmp, dest).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("rename {} to {}: {e}", tmp.display(), dest.display()),
            )
        })?;
        self.path = None;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// What [`deliver_verified`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Raw bytes taken from the store.
    pub raw_len: u64,
    /// Bytes of the delivered file (the segment size when a partial segment was padded).
    pub file_len: u64,
}

/// Verifies what `found` holds (each envelope opened with `cipher`, `None` for a plaintext
/// store: its authentication under its own key, length and blake3, DESIGN.md "Object
/// envelope"; for a partial segment also that each piece holds as many bytes as its name
/// says), and writes it atomically at `path` (see [`write_atomically`]): a whole object as
/// stored, a partial segment as the ranges its assembly takes, in order, zero-padded to the
/// segment size.
///
/// Blocking (decompression and file I/O): call it from a blocking thread in async code.
///
/// Errors: [`FetchError::Abort`] naming the key of a corrupt object or piece, and on any
/// local I/O error. Nothing is left at `path`.
pub fn deliver_verified(
    found: &Found,
    cipher: Option<&ObjectCipher>,
    path: &Path,
) -> Result<Delivered, FetchError> {
    let r = write_atomically(path, |mut out| -> Result<Delivered, DeliverError> {
        match found {
            Found::Whole { key, body } => {
                let raw_len = envelope::open_into_for(body, cipher, key, &mut out)?;
                Ok(Delivered {
                    raw_len,
                    file_len: raw_len,
                })
            }
            Found::Partial(a) => write_assembled(a, cipher, out),
        }
    });
    r.map_err(|e| match e {
        DeliverError::Store(e) if e.is_corrupt() => {
            let key = e.key().unwrap_or_default();
            abort(format!(
                "{}: verification failed, not delivered: {e}",
                key.trim_start_matches(pgagent_storage::layout::WAL_PREFIX)
            ))
        }
        DeliverError::Store(e) => abort(format!("{} to {}: {e}", found.describe(), path.display())),
        DeliverError::Io(e) => abort(format!("write {}: {e}", path.display())),
    })
}

/// Opens each part of `a`, checks it holds its piece's length and, where it overlaps the
/// previous part's piece, the same bytes there ([`overlap_mismatch`]: a difference is
/// corruption naming both pieces, never a silent mix), and writes the range taken from it;
/// then the zeros up to the segment size.
///
/// Only consecutive parts can overlap: a greedy assembly takes, at each position, the piece
/// reaching furthest, so a part's piece starts after the previous part's first offset.
fn write_assembled(
    a: &Assembled,
    cipher: Option<&ObjectCipher>,
    out: &mut dyn Write,
) -> Result<Delivered, DeliverError> {
    let mut prev: Option<(&Part, Vec<u8>)> = None;
    for part in &a.parts {
        let Part { take, body } = part;
        let key = &take.piece.key;
        let raw = envelope::open_for(body, cipher, key)?;
        let want = take.piece.end - take.piece.start;
        if raw.len() as u64 != want {
            return Err(DeliverError::Store(StoreError::Corrupt {
                key: key.clone(),
                detail: format!("holds {} bytes, its name says {want}", raw.len()),
            }));
        }
        if let Some((p, p_raw)) = &prev {
            if let Some(at) = overlap_mismatch(&p.take.piece, p_raw, &take.piece, &raw) {
                return Err(DeliverError::Store(StoreError::Corrupt {
                    key: key.clone(),
                    detail: format!(
                        "holds other bytes than {} where both cover the segment (first at \
                         offset {at:#X}): two pieces of one segment disagree",
                        p.take.piece.key
                    ),
                }));
            }
        }
        let from = (take.from - take.piece.start) as usize;
        let to = (take.to - take.piece.start) as usize;
        out.write_all(&raw[from..to])?;
        prev = Some((part, raw));
    }
    pad_with_zeros(out, a.end, a.segment_size)?;
    Ok(Delivered {
        raw_len: a.end,
        file_len: a.segment_size.max(a.end),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn content_appears_whole_and_replaces_an_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        fs::write(&dest, b"old").unwrap();
        let n: Result<usize, io::Error> = write_atomically(&dest, |w| {
            w.write_all(b"abc")?;
            pad_with_zeros(w, 3, 8)?;
            Ok(8)
        });
        assert_eq!(n.unwrap(), 8);
        assert_eq!(fs::read(&dest).unwrap(), b"abc\0\0\0\0\0");
        assert_eq!(entries(dir.path()), ["RECOVERYXLOG"]);
    }

    #[test]
    fn an_error_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let r: Result<(), io::Error> = write_atomically(&dest, |w| {
            w.write_all(&[7u8; 3 << 20])?;
            Err(io::Error::other("hash mismatch"))
        });
        assert_eq!(r.unwrap_err().to_string(), "hash mismatch");
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn a_panic_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        let d = dest.clone();
        let r = std::panic::catch_unwind(move || {
            let _: Result<(), io::Error> = write_atomically(&d, |w| {
                w.write_all(b"partial")?;
                panic!("writer failed");
            });
        });
        assert!(r.is_err());
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("no/such/dir/file");
        let r: Result<(), io::Error> = write_atomically(&dest, |_| Ok(()));
        assert!(r.is_err());
        assert!(!dest.exists());
    }

    #[test]
    fn copies_exactly_the_length_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        fs::write(&src_path, b"0123456789").unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        copy_atomically(&dest, &mut File::open(&src_path).unwrap(), 4).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"0123");
        let short = dir.path().join("short");
        let err = copy_atomically(&short, &mut File::open(&src_path).unwrap(), 11).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(entries(dir.path()), ["RECOVERYXLOG", "src"]);
    }

    /// Raw WAL of a made-up 8 KiB segment, and a partial segment assembled from pieces of it
    /// (`(key, start, end)`), each sealed from those bytes.
    fn assembled(wal: &[u8], pieces: &[(&str, u64, u64)]) -> Assembled {
        use pgagent_storage::deltas::{assemble, Piece};
        let pieces: Vec<Piece> = pieces
            .iter()
            .map(|&(key, start, end)| Piece {
                key: key.into(),
                start,
                end,
            })
            .collect();
        let a = assemble(&pieces);
        let parts = a
            .takes
            .iter()
            .map(|t| Part {
                take: t.clone(),
                body: envelope::seal(&wal[t.piece.start as usize..t.piece.end as usize], 1).body,
            })
            .collect();
        Assembled {
            segment_size: 8192,
            start: pgagent_protocol::Lsn(0x300_0000),
            end: a.end,
            parts,
            beyond_hole: a.beyond_hole,
        }
    }

    fn wal() -> Vec<u8> {
        (0..8192u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_partial_segment_is_its_takes_in_order_then_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let wal = wal();
        // A legacy .partial, deltas continuing it with an overlap (a restart), and a delta
        // past a hole, which is not served.
        let a = assembled(
            &wal,
            &[
                ("wal/S.partial", 0, 1000),
                ("wal/S.partial.d/00000320-00000BB8", 800, 3000),
                ("wal/S.partial.d/00000BB8-00001388", 3000, 5000),
                ("wal/S.partial.d/00001400-00001500", 5120, 5376),
            ],
        );
        assert_eq!((a.end, a.parts.len(), a.beyond_hole), (5000, 3, true));
        let d = deliver_verified(&Found::Partial(a), None, &dest).unwrap();
        assert_eq!(
            d,
            Delivered {
                raw_len: 5000,
                file_len: 8192
            }
        );
        let got = fs::read(&dest).unwrap();
        assert_eq!(got.len(), 8192);
        assert!(got[..5000] == wal[..5000]);
        assert!(got[5000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn overlapping_pieces_that_disagree_are_corruption_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let wal = wal();
        let pieces = [
            ("wal/S.partial.d/00000000-00000800", 0, 2048),
            ("wal/S.partial.d/00000700-00001000", 1792, 4096),
        ];
        // Agreeing overlap: served.
        let a = assembled(&wal, &pieces);
        deliver_verified(&Found::Partial(a), None, &dest).unwrap();
        fs::remove_file(&dest).unwrap();
        // The second piece holds other bytes where both cover [0x700, 0x800), each piece
        // intact on its own: a mix must not be served.
        let mut a = assembled(&wal, &pieces);
        let mut other = wal[1792..4096].to_vec();
        other[0x10] ^= 0xFF;
        a.parts[1].body = envelope::seal(&other, 1).body;
        let err = deliver_verified(&Found::Partial(a), None, &dest).unwrap_err();
        assert!(matches!(err, FetchError::Abort(_)), "{err}");
        let msg = err.to_string();
        for key in [
            "S.partial.d/00000700-00001000",
            "S.partial.d/00000000-00000800",
        ] {
            assert!(msg.contains(key), "{msg}");
        }
        assert!(msg.contains("0x710"), "{msg}");
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn a_corrupt_or_short_piece_is_named_and_nothing_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let wal = wal();
        let pieces = [
            ("wal/S.partial.d/00000000-00000800", 0, 2048),
            ("wal/S.partial.d/00000800-00001000", 2048, 4096),
        ];
        let mut a = assembled(&wal, &pieces);
        let mut body = a.parts[1].body.to_vec();
        let last = body.len() - 1;
        body[last] ^= 0x55;
        a.parts[1].body = body.into();
        let err = deliver_verified(&Found::Partial(a), None, &dest).unwrap_err();
        assert!(matches!(err, FetchError::Abort(_)), "{err}");
        assert!(
            err.to_string().contains("S.partial.d/00000800-00001000"),
            "{err}"
        );
        assert!(entries(dir.path()).is_empty());

        // A delta holding fewer bytes than its name says.
        let mut a = assembled(&wal, &pieces);
        a.parts[1].body = envelope::seal(&wal[2048..4000], 1).body;
        let err = deliver_verified(&Found::Partial(a), None, &dest).unwrap_err();
        assert!(err.to_string().contains("00000800-00001000"), "{err}");
        assert!(err.to_string().contains("1952 bytes"), "{err}");
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn padding_never_truncates() {
        let mut v = Vec::new();
        pad_with_zeros(&mut v, 10, 4).unwrap();
        assert!(v.is_empty());
        pad_with_zeros(&mut v, 0, (ZERO_CHUNK as u64) * 2 + 5).unwrap();
        assert_eq!(v.len(), ZERO_CHUNK * 2 + 5);
        assert!(v.iter().all(|&b| b == 0));
    }
}
