//! The partial content of a segment, read from its pieces: the deltas listed under its
//! prefix and, in stores written before deltas, its `.partial` object
//! ([`pgagent_storage::deltas`]; the rule that puts them together is
//! [`pgagent_storage::deltas::assemble`], shared with the agent that writes them).
//!
//! A fetch reads the segment's complete object, its `.partial` and one listing of its
//! deltas at the same time ([`list`], run beside the complete object's GET), assembles the
//! run of WAL from offset 0 up to the first hole, and reads only the pieces that run takes,
//! in parallel ([`read`]). Nothing is verified here: [`super::deliver_verified`] opens every
//! piece (length and hash) while it writes the segment, so nothing unverified reaches `%p`.

use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use pgagent_protocol::Lsn;
use pgagent_storage::deltas::{Assembly, Delta, Piece, Take};
use pgagent_storage::envelope::Header;
use pgagent_storage::layout::wal_file_name;
use pgagent_storage::StoreError;

use super::resolve::PartialSources;
use super::{abort, FetchError, Fetcher};

/// Pieces read at the same time.
const CONCURRENCY: usize = 16;

/// A segment put together from its pieces, ready to be verified and written.
#[derive(Debug)]
pub struct Assembled {
    /// Segment size in bytes: the delivered file is zero-padded to it.
    pub segment_size: u64,
    /// LSN of the first byte of the segment.
    pub start: Lsn,
    /// Bytes of WAL from the segment start that the parts hold ([`Assembly::end`]).
    pub end: u64,
    /// Each take of the assembly with the stored body of its piece, in segment order.
    pub parts: Vec<Part>,
    /// Whether the store holds deltas beyond a hole at `end` (not served).
    pub beyond_hole: bool,
}

/// One range of an [`Assembled`] segment and the envelope it comes from.
#[derive(Debug)]
pub struct Part {
    /// The piece and the range taken from it.
    pub take: Take,
    /// The piece's stored body (an envelope, not yet verified).
    pub body: Bytes,
}

impl Assembled {
    /// The info line of a segment served from its partial content.
    pub fn note(&self, file: &str) -> String {
        let mut note = format!(
            "{file}: served the partial segment (WAL up to {}, {} from {} {}, zero-padded to {} bytes)",
            self.start + self.end,
            bytesize::ByteSize(self.end),
            self.parts.len(),
            if self.parts.len() == 1 { "piece" } else { "pieces" },
            self.segment_size
        );
        if self.beyond_hole {
            note.push_str(&format!(
                "; the store holds deltas past a hole at {}, not served until it is filled",
                self.start + self.end
            ));
        }
        note
    }
}

/// What one look at a segment's pieces found.
#[derive(Debug, Default)]
pub(super) struct Listed {
    /// Its `.partial` object, if any, read whole.
    pub legacy: Option<Bytes>,
    /// Every piece: the `.partial` (as far as its header says) and the listed deltas.
    pub pieces: Vec<Piece>,
}

/// Reads the `.partial` object of `src` and lists its deltas, both at once, retrying
/// transient errors until `deadline`.
///
/// Errors: the store's ([`FetchError::Abort`]); a `.partial` whose header does not parse or
/// declares more than a segment (corrupt, named).
pub(super) async fn list(
    fetcher: &Fetcher,
    src: &PartialSources,
    deadline: Instant,
) -> Result<Listed, FetchError> {
    let (legacy, listed) = tokio::join!(
        fetcher.get(&src.legacy, deadline),
        fetcher.list(&src.deltas_prefix, deadline)
    );
    let seg = fetcher.segment_size();
    let mut out = Listed::default();
    if let Some(body) = legacy? {
        let end = Header::parse(&body)
            .map_err(|e| e.with_key(&src.legacy))
            .and_then(|h| legacy_len(&src.legacy, h.raw_len, src.segment_size))
            .map_err(|e| corrupt(&src.legacy, e))?;
        out.pieces.push(Piece {
            key: src.legacy.clone(),
            start: 0,
            end,
        });
        out.legacy = Some(body);
    }
    for m in listed? {
        match Delta::parse_key(&m.key, seg) {
            Some(d) if (d.tli, d.segno) == (src.tli, src.segno) => {
                out.pieces.push(Piece::delta(&d, seg))
            }
            _ => tracing::warn!(
                "{}: not a delta of this segment, ignored; only pgagent should write under {}",
                m.key,
                src.deltas_prefix
            ),
        }
    }
    Ok(out)
}

/// The raw length a `.partial` object's header declares, checked against the segment size.
fn legacy_len(key: &str, raw_len: u64, segment_size: u64) -> Result<u64, StoreError> {
    if raw_len > segment_size {
        return Err(StoreError::Corrupt {
            key: key.to_string(),
            detail: format!(
                "partial segment holds {raw_len} bytes, more than the segment size {segment_size}"
            ),
        });
    }
    Ok(raw_len)
}

fn corrupt(key: &str, e: StoreError) -> FetchError {
    abort(format!(
        "{}: verification failed, not delivered: {e}",
        wal_file_name(key).unwrap_or(key)
    ))
}

/// The body of piece `key`, or `Err(key)` if it is gone; the `.partial` body already read
/// is reused.
async fn piece(
    fetcher: &Fetcher,
    src: &PartialSources,
    legacy: Option<&Bytes>,
    key: String,
    deadline: Instant,
) -> Result<Result<Bytes, String>, FetchError> {
    if let Some(body) = legacy.filter(|_| key == src.legacy) {
        return Ok(Ok(body.clone()));
    }
    Ok(fetcher.get(&key, deadline).await?.ok_or(key))
}

/// How reading the pieces of an assembly ended.
#[derive(Debug)]
pub(super) enum Read {
    /// Every piece the assembly takes was read.
    Done(Assembled),
    /// This piece was listed but is gone: the segment was completed and its pieces removed
    /// meanwhile (or the store changed under the fetch); look again.
    Vanished(String),
}

/// Reads the pieces `assembly` takes, [`CONCURRENCY`] at a time, each retried until
/// `deadline`; the `.partial` body already read is reused.
///
/// Errors: the store's ([`FetchError::Abort`]).
pub(super) async fn read(
    fetcher: &Fetcher,
    src: &PartialSources,
    legacy: Option<&Bytes>,
    assembly: Assembly,
    deadline: Instant,
) -> Result<Read, FetchError> {
    let gets: Vec<_> = assembly
        .takes
        .iter()
        .map(|take| piece(fetcher, src, legacy, take.piece.key.clone(), deadline))
        .collect();
    let bodies: Vec<Result<Bytes, String>> = futures::stream::iter(gets)
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut parts = Vec::with_capacity(bodies.len());
    for (take, body) in assembly.takes.into_iter().zip(bodies) {
        match body {
            Ok(body) => parts.push(Part { take, body }),
            Err(gone) => return Ok(Read::Vanished(gone)),
        }
    }
    Ok(Read::Done(Assembled {
        segment_size: src.segment_size,
        start: src.start,
        end: assembly.end,
        parts,
        beyond_hole: assembly.beyond_hole,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use pgagent_protocol::{SegNo, TimelineId, WalSegmentSize};
    use pgagent_storage::deltas::assemble;
    use pgagent_storage::StoreError;
    use pgagent_storage::{envelope, Call, Layer, Layered, ObjectStore, Reply};

    use super::*;
    use crate::fetch::resolve::resolve;
    use crate::fetch::Found;

    /// A store where, while a fetch lists the deltas of segment 3, the agent uploads the
    /// segment's complete object and its cleanup removes the second delta (the delete of
    /// the first failed): the listing sees only the first. The fetch's first look for the
    /// complete object comes before that upload.
    #[derive(Debug)]
    struct RacedCleanup {
        complete: String,
        second: String,
        missed: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl Layer for RacedCleanup {
        async fn around(
            &self,
            below: &dyn ObjectStore,
            call: Call<'_>,
        ) -> Result<Reply, StoreError> {
            match call {
                Call::Get { key } if key == self.complete => {
                    let r = call.run(below).await;
                    self.missed.notify_one();
                    r
                }
                Call::List { prefix } if prefix.ends_with(".partial.d/") => {
                    self.missed.notified().await;
                    let whole = envelope::seal(&vec![3u8; 16 << 20], 1).body;
                    below.put(&self.complete, whole).await?;
                    below.delete(&self.second).await?;
                    call.run(below).await
                }
                _ => call.run(below).await,
            }
        }
    }

    #[tokio::test]
    async fn a_listing_that_raced_with_cleanup_does_not_cut_the_segment_short() {
        let dir = tempfile::tempdir().unwrap();
        let seg = WalSegmentSize::DEFAULT;
        let delta = |start, end| Delta {
            tli: TimelineId(1),
            segno: SegNo(3),
            start,
            end,
        };
        let fs: Arc<dyn ObjectStore> = Arc::new(
            pgagent_storage::fs::FsStore::open(dir.path().to_path_buf())
                .await
                .unwrap(),
        );
        let layer = RacedCleanup {
            complete: "wal/000000010000000000000003".into(),
            second: delta(0x1000, 0x2000).key(seg),
            missed: tokio::sync::Notify::new(),
        };
        for d in [delta(0, 0x1000), delta(0x1000, 0x2000)] {
            let body = envelope::seal(&vec![3u8; d.len() as usize], 1).body;
            fs.put(&d.key(seg), body).await.unwrap();
        }
        let fetcher = Fetcher::on_store(Arc::new(Layered::new(fs, layer)), seg);
        let resolved = resolve("000000010000000000000003", seg).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = fetcher.find(&resolved, deadline).await.unwrap();
        // Not the first 0x1000 bytes, zero-padded: the complete segment.
        assert!(
            matches!(found, Some(Found::Whole { ref key, .. }) if key == "wal/000000010000000000000003"),
            "{found:?}"
        );
    }

    #[tokio::test]
    async fn a_piece_pruned_after_the_listing_is_vanished_not_absent() {
        let dir = tempfile::tempdir().unwrap();
        let fs = pgagent_storage::fs::FsStore::open(dir.path().to_path_buf())
            .await
            .unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(fs);
        let seg = WalSegmentSize::DEFAULT;
        let fetcher = Fetcher::on_store(store.clone(), seg);
        let deadline = Instant::now() + Duration::from_secs(5);
        let delta = |start, end| Delta {
            tli: TimelineId(1),
            segno: SegNo(3),
            start,
            end,
        };
        for d in [delta(0, 0x100), delta(0x100, 0x200)] {
            let body = envelope::seal(&vec![3u8; d.len() as usize], 1).body;
            store.put(&d.key(seg), body).await.unwrap();
        }
        let resolved = resolve("000000010000000000000003", seg).unwrap();
        let src = resolved.partial.clone().unwrap();
        let listed = list(&fetcher, &src, deadline).await.unwrap();
        assert_eq!(listed.pieces.len(), 2);
        // Pruned between the listing and the read (the segment was completed meanwhile).
        let gone = delta(0x100, 0x200).key(seg);
        store.delete(&gone).await.unwrap();
        let assembly = assemble(&listed.pieces);
        match read(&fetcher, &src, None, assembly, deadline)
            .await
            .unwrap()
        {
            Read::Vanished(key) => assert_eq!(key, gone),
            Read::Done(a) => panic!("read a piece that is gone: {a:?}"),
        }
        // Looked up again, the complete segment the agent uploaded answers.
        let complete = envelope::seal(&vec![3u8; seg.bytes() as usize], 1).body;
        store
            .put("wal/000000010000000000000003", complete)
            .await
            .unwrap();
        let found = fetcher.find(&resolved, deadline).await.unwrap();
        assert!(
            matches!(found, Some(Found::Whole { ref key, .. }) if key == "wal/000000010000000000000003"),
            "{found:?}"
        );
    }
}
