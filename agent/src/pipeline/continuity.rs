//! Continuity at start: what the bucket already holds around the resume point.
//!
//! Streaming resumes where staging, the slot or the server say (`resume::plan_resume`).
//! Two facts about the bucket change what happens next:
//!
//! - the deltas of the resume segment (`storage::deltas`; or the `.partial` object an older
//!   version wrote): the new session receives that segment again from its start, and goes
//!   on uploading deltas from the end of the run the bucket holds, so that WAL is neither
//!   uploaded twice nor counted before it is there; that end seeds the flush tracker;
//! - the end of the WAL the bucket holds below the resume point: when it stops short of the
//!   resume point (the agent was away without its staging directory, the slot was dropped
//!   and created anew, or PostgreSQL 13/14 gave no slot position), the WAL in between is in
//!   neither place. Streaming then starts at the bucket's end if the server still has that
//!   WAL, and otherwise the gap is reported loudly (metric, `status`, `/readyz`), never
//!   jumped in silence.
//!
//! The decision is pure ([`tail_of`], [`judge`]); [`read_tail`] does the store I/O: one LIST
//! per WAL "log" (the first 16 hex digits of a segment name) of the two before the resume
//! point, and for a segment held as deltas one LIST of them and a GET of each piece its run
//! takes (each verified before it counts, [`stored_partial_end`]).

use pgagent_protocol::{segment_file_name, Lsn, SegNo, TimelineId, WalSegmentSize};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::deltas::{assemble, deltas_prefix, Delta, Piece};
use pgagent_storage::envelope;
use pgagent_storage::layout::{wal_key, PARTIAL_SUFFIX};
use pgagent_storage::{ObjectStore, StoreError};

use crate::store::wal::WalKey;

/// The WAL objects of one timeline near the resume point, from a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listed {
    /// Complete segments.
    pub complete: Vec<SegNo>,
    /// Segments held as deltas or `.partial` (each once).
    pub partial: Vec<SegNo>,
}

impl Listed {
    /// Sorts the names under `wal/` of a listing that belong to timeline `tli`.
    pub fn from_keys<'a>(
        keys: impl IntoIterator<Item = &'a str>,
        tli: TimelineId,
        seg: WalSegmentSize,
    ) -> Self {
        let mut out = Listed::default();
        for key in keys {
            match WalKey::parse(key, seg) {
                Some(WalKey::Segment((t, segno))) if t == tli => out.complete.push(segno),
                Some(WalKey::LegacyPartial((t, segno))) if t == tli => out.partial.push(segno),
                Some(WalKey::Delta(d)) if d.tli == tli => out.partial.push(d.segno),
                _ => {}
            }
        }
        out.partial.sort();
        out.partial.dedup();
        out
    }
}

/// What has to be read next to know where the bucket's WAL ends below `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The bucket's WAL ends exactly here (a complete segment ends there).
    EndsAt(Lsn),
    /// The newest object below the resume segment is this segment's `.partial`: its length
    /// says where the WAL ends.
    Partial(SegNo),
    /// Nothing below the resume point in the listing.
    Nothing,
}

/// Where the WAL the bucket holds below `start_seg` ends, from a listing of its timeline:
/// the newest object below the resume segment decides.
pub fn tail_of(listed: &Listed, start_seg: SegNo, seg: WalSegmentSize) -> Tail {
    let complete = listed.complete.iter().filter(|s| **s < start_seg).max();
    let partial = listed.partial.iter().filter(|s| **s < start_seg).max();
    match (complete, partial) {
        (Some(c), Some(p)) if p > c => Tail::Partial(*p),
        (Some(c), _) => Tail::EndsAt(c.end_lsn(seg)),
        (None, Some(p)) => Tail::Partial(*p),
        (None, None) => Tail::Nothing,
    }
}

/// How the bucket meets the resume point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// The bucket's WAL reaches the resume point (or staging holds what is in between).
    Contiguous,
    /// The bucket holds no WAL of this timeline near the resume point (a new store, or an
    /// agent away for more than two WAL logs): nothing to compare with.
    Unknown,
    /// WAL from `from` to `to` is neither in the bucket nor in staging.
    Gap {
        /// End of the WAL the bucket holds.
        from: Lsn,
        /// The resume point.
        to: Lsn,
    },
}

/// Judges continuity: `bucket_end` is where the bucket's WAL below `start` ends (`None`:
/// nothing found), `staged_from` the lowest complete segment staging still holds below
/// `start`, which will be uploaded before anything is confirmed.
pub fn judge(start: Lsn, bucket_end: Option<Lsn>, staged_from: Option<Lsn>) -> Continuity {
    let Some(end) = bucket_end else {
        return Continuity::Unknown;
    };
    // Staging leftovers run from their lowest segment up to `start` (older ones were
    // uploaded and removed in order of completion).
    let reach = match staged_from {
        Some(s) if s <= end => start,
        _ => end,
    };
    if reach >= start {
        Continuity::Contiguous
    } else {
        Continuity::Gap {
            from: end,
            to: start,
        }
    }
}

/// The end of the run of WAL the bucket holds of segment `segno` of `tli` as deltas (and a
/// `.partial` object an older version wrote), or `None` when that run is empty.
///
/// Nothing counts before it is verified: the run seeds the flush tracker (the next delta
/// starts at its end, and WAL up to it may be confirmed), so a name or a header planted by
/// a writer of the bucket, or a corrupt object, must not make it reach further than the
/// WAL the bucket really holds. Each piece the run takes is read and opened with `cipher`
/// (authenticated under its name in an encrypted store; length and blake3 checked), and
/// must hold as many bytes as its name (a delta) says, or at most a segment (a `.partial`,
/// whose length only its header gives); a piece that fails is left out, with a warning
/// naming it, and the run assembled again without it. Costs one LIST of the segment's deltas, a GET of the
/// `.partial` object (at the same time) and a GET of each piece taken: at most about a
/// segment of WAL, once per start.
///
/// Errors: the store's (other than not found).
pub async fn stored_partial_end(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    tli: TimelineId,
    segno: SegNo,
    seg: WalSegmentSize,
) -> Result<Option<Lsn>, StoreError> {
    let legacy = wal_key(&format!(
        "{}{PARTIAL_SUFFIX}",
        segment_file_name(tli, segno, seg)
    ));
    let prefix = deltas_prefix(tli, segno, seg);
    let (listed, legacy_body) = tokio::join!(store.list(&prefix), store.get(&legacy));
    let deltas: Vec<Piece> = listed?
        .iter()
        .filter_map(|m| Delta::parse_key(&m.key, seg))
        .filter(|d| (d.tli, d.segno) == (tli, segno))
        .map(|d| Piece::delta(&d, seg))
        .collect();
    let mut pieces = deltas;
    match legacy_body {
        Ok(body) => match envelope::open_for(&body, cipher, &legacy) {
            Ok(raw) if raw.len() as u64 <= seg.bytes() => pieces.push(Piece {
                key: legacy.clone(),
                start: 0,
                end: raw.len() as u64,
            }),
            Ok(raw) => tracing::warn!(
                key = legacy,
                "holds {} bytes, more than a segment: it counts for nothing",
                raw.len()
            ),
            Err(e) => tracing::warn!(error = %e, "an unreadable .partial counts for nothing"),
        },
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    // Assemble, verify what the run takes, drop a piece that fails and assemble again: a
    // planted piece reaching far cannot hide the real run behind it.
    let mut verified: Vec<String> = Vec::new();
    let end = 'assemble: loop {
        let assembly = assemble(&pieces);
        for take in &assembly.takes {
            let key = &take.piece.key;
            if *key == legacy || verified.contains(key) {
                continue;
            }
            if piece_holds_its_range(store, cipher, &take.piece).await? {
                verified.push(key.clone());
            } else {
                pieces.retain(|p| p.key != *key);
                continue 'assemble;
            }
        }
        break assembly.end;
    };
    Ok((end > 0).then(|| segno.start_lsn(seg) + end))
}

/// Whether the delta `piece` is in the store, opens with `cipher`, and holds as many bytes
/// as its name says (warns naming it when not).
async fn piece_holds_its_range(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    piece: &Piece,
) -> Result<bool, StoreError> {
    let body = match store.get(&piece.key).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e),
    };
    let why = match envelope::open_for(&body, cipher, &piece.key) {
        Ok(raw) if raw.len() as u64 == piece.end - piece.start => return Ok(true),
        Ok(raw) => format!(
            "holds {} bytes, its name says {}",
            raw.len(),
            piece.end - piece.start
        ),
        Err(e) => e.to_string(),
    };
    tracing::warn!(
        key = piece.key,
        "{why}: the run of WAL the store holds of its segment ends before it"
    );
    Ok(false)
}

/// Where the WAL of timeline `tli` that the bucket holds below `start` ends, looking in the
/// WAL log of the segment before `start` and the log before that. `None`: nothing there.
pub async fn read_tail(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    tli: TimelineId,
    start: Lsn,
    seg: WalSegmentSize,
) -> Result<Option<Lsn>, StoreError> {
    let start_seg = start.segment_number(seg);
    let Some(prev) = start_seg.0.checked_sub(1).map(SegNo) else {
        return Ok(None);
    };
    let per_log = seg.segments_per_xlogid();
    let log = prev.0 / per_log;
    let mut keys = Vec::new();
    for l in [Some(log), log.checked_sub(1)].into_iter().flatten() {
        // `TTTTTTTTLLLLLLLL`: the first 16 hex digits of every segment of that log.
        let name = segment_file_name(tli, SegNo(l * per_log), seg);
        let listed = store.list(&wal_key(&name[..16])).await?;
        let found = !listed.is_empty();
        keys.extend(listed.into_iter().map(|m| m.key));
        if found {
            break;
        }
    }
    let mut listed = Listed::from_keys(keys.iter().map(String::as_str), tli, seg);
    loop {
        match tail_of(&listed, start_seg, seg) {
            Tail::EndsAt(l) => return Ok(Some(l)),
            Tail::Nothing => return Ok(None),
            Tail::Partial(p) => {
                if let Some(end) = stored_partial_end(store, cipher, tli, p, seg).await? {
                    return Ok(Some(end));
                }
                let complete = wal_key(&segment_file_name(tli, p, seg));
                if store.head(&complete).await?.is_some() {
                    // Completed (and its deltas removed) between the two listings.
                    return Ok(Some(p.end_lsn(seg)));
                }
                // Only deltas past a hole: that segment adds nothing; look below it.
                listed.partial.retain(|s| *s != p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(16 << 20).unwrap()
    }

    fn name(tli: u32, segno: u64) -> String {
        format!(
            "wal/{}",
            segment_file_name(TimelineId(tli), SegNo(segno), seg())
        )
    }

    #[test]
    fn a_listing_keeps_its_timeline_only() {
        let keys = [
            name(1, 5),
            name(2, 6),
            format!("{}.partial", name(1, 7)),
            format!("{}.partial.d/00000000-00001000", name(1, 7)),
            format!("{}.partial.d/00000000-00001000", name(1, 8)),
            format!("{}.partial.d/00001000-00002000", name(1, 8)),
            format!("{}.partial.d/00000000-00001000", name(2, 9)),
            "wal/00000002.history".to_string(),
            "wal/junk".to_string(),
        ];
        let l = Listed::from_keys(keys.iter().map(String::as_str), TimelineId(1), seg());
        assert_eq!(l.complete, vec![SegNo(5)]);
        assert_eq!(l.partial, vec![SegNo(7), SegNo(8)]);
    }

    async fn put(store: &dyn ObjectStore, key: &str, raw: &[u8]) {
        let sealed = pgagent_storage::envelope::seal(raw, 1);
        store.put(key, sealed.body).await.unwrap();
    }

    fn delta(segno: u64, start: u64, end: u64) -> String {
        format!("{}.partial.d/{start:08X}-{end:08X}", name(1, segno))
    }

    #[tokio::test]
    async fn the_stored_run_of_deltas_ends_at_the_first_hole() {
        let dir = tempfile::tempdir().unwrap();
        let store = pgagent_storage::fs::FsStore::open(dir.path().into())
            .await
            .unwrap();
        let (tli, s) = (TimelineId(1), seg());
        let at = |n: u64, off: u64| SegNo(n).start_lsn(s) + off;
        assert_eq!(
            stored_partial_end(&store, None, tli, SegNo(7), s)
                .await
                .unwrap(),
            None
        );
        put(&store, &delta(7, 0x100, 0x200), &[1; 0x100]).await;
        assert_eq!(
            stored_partial_end(&store, None, tli, SegNo(7), s)
                .await
                .unwrap(),
            None,
            "only WAL past a hole"
        );
        put(&store, &delta(7, 0, 0x80), &[1; 0x80]).await;
        assert_eq!(
            stored_partial_end(&store, None, tli, SegNo(7), s)
                .await
                .unwrap(),
            Some(at(7, 0x80))
        );
        // An older version's whole-prefix .partial fills the hole.
        put(&store, &format!("{}.partial", name(1, 7)), &[1; 0x120]).await;
        assert_eq!(
            stored_partial_end(&store, None, tli, SegNo(7), s)
                .await
                .unwrap(),
            Some(at(7, 0x200))
        );
    }

    #[tokio::test]
    async fn planted_or_corrupt_pieces_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = pgagent_storage::fs::FsStore::open(dir.path().into())
            .await
            .unwrap();
        let (tli, s) = (TimelineId(1), seg());
        let at = |off: u64| SegNo(7).start_lsn(s) + off;
        let end = |store| async move {
            stored_partial_end(store, None, tli, SegNo(7), s)
                .await
                .unwrap()
        };
        // A .partial whose header claims a whole segment, over a body of 0x100 bytes: its
        // header alone once seeded the tracker with 16 MiB the bucket does not hold.
        let legacy = format!("{}.partial", name(1, 7));
        let mut planted = pgagent_storage::envelope::seal(&[1; 0x100], 1)
            .body
            .to_vec();
        let mut header = pgagent_storage::envelope::seal(&vec![1; 16 << 20], 1)
            .body
            .to_vec();
        header.truncate(pgagent_storage::envelope::MAX_HEADER_LEN.min(header.len()));
        planted.splice(..header.len().min(planted.len()), header);
        store.put(&legacy, planted.into()).await.unwrap();
        assert_eq!(end(&store).await, None, "a header that does not verify");
        // A delta whose name claims more than its body holds, then a real one before it.
        put(&store, &delta(7, 0x100, 0x1000), &[1; 0x10]).await;
        put(&store, &delta(7, 0, 0x100), &[1; 0x100]).await;
        assert_eq!(end(&store).await, Some(at(0x100)));
        // A delta whose bytes were changed after sealing.
        let key = delta(7, 0x100, 0x200);
        put(&store, &key, &[1; 0x100]).await;
        let mut body = store.get(&key).await.unwrap().to_vec();
        let last = body.len() - 1;
        body[last] ^= 0x55;
        store.put(&key, body.into()).await.unwrap();
        assert_eq!(end(&store).await, Some(at(0x100)));
        // A verified one counts.
        put(&store, &delta(7, 0x100, 0x180), &[1; 0x80]).await;
        assert_eq!(end(&store).await, Some(at(0x180)));
    }

    #[tokio::test]
    async fn the_tail_skips_a_segment_with_only_deltas_past_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let store = pgagent_storage::fs::FsStore::open(dir.path().into())
            .await
            .unwrap();
        let (tli, s) = (TimelineId(1), seg());
        put(&store, &name(1, 5), &[0; 16]).await;
        put(&store, &delta(6, 0x100, 0x200), &[1; 0x100]).await;
        let end = read_tail(&store, None, tli, SegNo(8).start_lsn(s), s)
            .await
            .unwrap();
        assert_eq!(end, Some(SegNo(6).start_lsn(s)));
        put(&store, &delta(6, 0, 0x100), &[1; 0x100]).await;
        let end = read_tail(&store, None, tli, SegNo(8).start_lsn(s), s)
            .await
            .unwrap();
        assert_eq!(end, Some(SegNo(6).start_lsn(s) + 0x200));
    }

    #[test]
    fn the_newest_object_below_the_resume_segment_decides_the_tail() {
        let s = seg();
        let l = Listed {
            complete: vec![SegNo(3), SegNo(4), SegNo(9)],
            partial: vec![SegNo(5), SegNo(9)],
        };
        assert_eq!(
            tail_of(&l, SegNo(5), s),
            Tail::EndsAt(SegNo(5).start_lsn(s))
        );
        assert_eq!(tail_of(&l, SegNo(7), s), Tail::Partial(SegNo(5)));
        assert_eq!(tail_of(&l, SegNo(3), s), Tail::Nothing);
        assert_eq!(
            tail_of(&l, SegNo(10), s),
            Tail::EndsAt(SegNo(10).start_lsn(s))
        );
    }

    #[test]
    fn a_gap_is_named_unless_staging_fills_it() {
        let s = seg();
        let at = |n: u64, off: u64| SegNo(n).start_lsn(s) + off;
        assert_eq!(
            judge(at(8, 0), Some(at(8, 0)), None),
            Continuity::Contiguous
        );
        assert_eq!(judge(at(8, 0), None, None), Continuity::Unknown);
        assert_eq!(
            judge(at(8, 0), Some(at(5, 100)), None),
            Continuity::Gap {
                from: at(5, 100),
                to: at(8, 0)
            }
        );
        // Staging still holds 5, 6 and 7 from a previous run: they go up first.
        assert_eq!(
            judge(at(8, 0), Some(at(5, 100)), Some(at(5, 0))),
            Continuity::Contiguous
        );
        // Staging holds only 7: 5's tail and 6 are missing.
        assert!(matches!(
            judge(at(8, 0), Some(at(5, 100)), Some(at(7, 0))),
            Continuity::Gap { .. }
        ));
    }
}
