//! A store that lags at start: what it lacks below the resume point, found in another store.
//!
//! Streaming resumes where the first required store (and staging, and the slot) say. A
//! store whose WAL ends below that point (an async store that was down when the agent was
//! killed) cannot get the WAL in between from the server, which may have recycled it; its
//! lane copies the objects it lacks from the first required store instead (see
//! `fanout::run_backlog`), from the lower of its tail and its pin (`pins`): a hole the
//! previous run left below its tail (an object skipped while it was down, the process
//! killed before the copy) is below its pin too.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use pgagent_protocol::{segment_file_name, Lsn, SegNo, TimelineId, WalSegmentSize};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::layout::{wal_key, WAL_PREFIX};
use pgagent_storage::{ObjectStore, StoreError};
use tokio_util::sync::CancellationToken;

use super::continuity;
use super::jobs::WalObject;
use super::pins::{keep_pin, read_pin};
use super::resume::ResumePlan;
use super::shared::Shared;
use super::workers::LaneTasks;
use crate::retry::Policy;
use crate::retrying_store::RetryingReads;
use crate::store::wal::WalKey;

/// Keys listed per request.
const PAGE: usize = 1000;

/// How long one read of the catch-up is retried before the whole step starts over.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The WAL objects of `tli` in segments `[from, to)` that `source` holds, in key order:
/// each complete segment, and for a segment it holds only as deltas, those deltas. One
/// listing from the first of them on (a page of 1000 keys per request).
///
/// Errors: the listing's.
pub async fn held_objects(
    source: &dyn ObjectStore,
    tli: TimelineId,
    from: SegNo,
    to: SegNo,
    seg: WalSegmentSize,
) -> Result<Vec<WalObject>, StoreError> {
    let mut out: Vec<WalObject> = Vec::new();
    if from >= to {
        return Ok(out);
    }
    // Strictly after this key: the name of `from` with its last digit cut sorts right
    // before it (names are fixed-width hex).
    let first = wal_key(&segment_file_name(tli, from, seg));
    let mut after = first[..first.len() - 1].to_string();
    'pages: loop {
        let page = source.list_after(WAL_PREFIX, &after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.key.clone();
        for meta in &page {
            let object = match WalKey::parse(&meta.key, seg) {
                Some(WalKey::Segment((t, segno))) if t == tli => WalObject::Segment { tli, segno },
                Some(WalKey::Delta(d)) if d.tli == tli => {
                    let base = d.segno.start_lsn(seg);
                    WalObject::Partial {
                        tli,
                        segno: d.segno,
                        start: base + d.start,
                        end: base + d.end,
                    }
                }
                Some(WalKey::Segment((t, _))) if t > tli => break 'pages,
                _ => continue,
            };
            match segno_of(&object) {
                s if s >= to => break 'pages,
                s if s >= from => out.push(object),
                _ => {}
            }
        }
        if page.len() < PAGE {
            break;
        }
    }
    // A complete segment makes its deltas needless (its key sorts before theirs).
    let complete: std::collections::BTreeSet<SegNo> = out
        .iter()
        .filter_map(|o| match o {
            WalObject::Segment { segno, .. } => Some(*segno),
            _ => None,
        })
        .collect();
    out.retain(|o| matches!(o, WalObject::Segment { .. }) || !complete.contains(&segno_of(o)));
    Ok(out)
}

fn segno_of(o: &WalObject) -> SegNo {
    match *o {
        WalObject::Segment { segno, .. } | WalObject::Partial { segno, .. } => segno,
        WalObject::History { .. } => SegNo(0),
    }
}

/// One store of several, as its catch-up sees it.
#[derive(Debug, Clone)]
pub struct LaneStores {
    /// Its lane.
    pub lane: usize,
    /// Its name (its pin's name).
    pub name: String,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Where it copies from: the first required store.
    pub source: Arc<dyn ObjectStore>,
    /// Where its pin is kept (an async store: every other required store; else none).
    pub pin_targets: Vec<Arc<dyn ObjectStore>>,
}

/// Starts, in the background, lane `s.lane`'s catch-up at the resume point of `plan`:
/// where its store's WAL ends below the resume point is read (from the store's tail and
/// from its pin in `s.source`, the lower of the two; retried until it answers, since a
/// store that is down now may be the one that lags), then the WAL objects `s.source` holds
/// from there up to the resume point are listed (retried too) and queued for copying, and
/// the lane's end is held at the first complete segment still to copy. A store with no WAL
/// below the resume point and no pin (a new store) gets every segment `s.source` holds of
/// the timeline. Then, for an async store, its pin is kept.
pub fn spawn(
    lanes: &mut LaneTasks,
    shared: &Arc<Shared>,
    s: LaneStores,
    plan: &ResumePlan,
    cipher: Option<ObjectCipher>,
    shutdown: &CancellationToken,
) {
    let seg = shared.seg;
    let (tli, start) = (plan.tli, plan.start);
    let backlog = lanes.backlogs[s.lane].clone();
    let shared = shared.clone();
    let shutdown = shutdown.clone();
    // Each read rides out a failing store on its own: the tail is read from many objects,
    // and starting over at every glitch could keep the answer away for good.
    let retrying_reads = |store: &Arc<dyn ObjectStore>| {
        RetryingReads::wrap(
            store.clone(),
            Policy::FETCH,
            READ_TIMEOUT,
            "the catch-up read timeout",
        )
    };
    let (store, source) = (retrying_reads(&s.store), retrying_reads(&s.source));
    lanes.copiers.push(tokio::spawn(async move {
        let lane = s.lane;
        // Where the store's WAL ends (the lower of its tail and its pin), then what the
        // source holds from there to the resume point: one step, retried until it answers.
        let lacking = || async {
            let tail = continuity::read_tail(store.as_ref(), cipher.as_ref(), tli, start, seg).await?;
            let pin = read_pin(source.as_ref(), &s.name).await?;
            let end = copies_from(tail, pin);
            let objects = match gap(end, start, seg) {
                Some((from, to)) => held_objects(source.as_ref(), tli, from, to, seg).await?,
                None => Vec::new(),
            };
            Ok::<_, StoreError>((end, objects))
        };
        let Ok((end, objects)) = lacking
            .retry(Policy::UPLOAD.backoff())
            .when(|_| !shutdown.is_cancelled())
            .notify(|e, d| tracing::warn!(lane, error = %e, retry_in = ?d, "cannot read what a store lacks below the resume point; trying again"))
            .await
        else {
            return;
        };
        if !objects.is_empty() {
            tracing::info!(store = %s.name, store_end = %end, resume_point = %start, objects = objects.len(), "the store lags behind the resume point: copying what it lacks from the primary store");
        }
        let copies = objects.iter().filter_map(|o| match o {
            WalObject::Segment { segno, .. } => Some(*segno),
            _ => None,
        });
        shared.lanes().tracker(lane).caught_up_to(copies);
        for o in objects {
            backlog.add(o);
        }
        if !s.pin_targets.is_empty() {
            keep_pin(shared, lane, s.name, s.pin_targets, tli, shutdown).await;
        }
    }));
}

/// Where a store's copies start: the lower of the end of its tail below the resume point
/// and its pin (a hole below the tail is below the pin); with neither, from the beginning.
pub fn copies_from(tail: Option<Lsn>, pin: Option<Lsn>) -> Lsn {
    match (tail, pin) {
        (Some(t), Some(p)) => t.min(p),
        (t, p) => t.or(p).unwrap_or(Lsn::INVALID),
    }
}

/// The segments a store whose WAL ends at `end` lacks below `start` (from the one holding
/// `end`).
pub fn gap(end: Lsn, start: Lsn, seg: WalSegmentSize) -> Option<(SegNo, SegNo)> {
    (end < start).then(|| (end.segment_number(seg), start.segment_number(seg)))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use pgagent_storage::deltas::Delta;
    use pgagent_storage::layout::segment_key;

    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(1 << 20).unwrap()
    }

    const TLI: TimelineId = TimelineId(2);

    #[test]
    fn copies_start_at_the_lower_of_tail_and_pin() {
        // The tail says segment 5 is there; the pin says the store lacks WAL from segment 3
        // on (an object skipped while it was down, the copy lost with the process).
        assert_eq!(
            copies_from(Some(Lsn(5 << 20)), Some(Lsn(3 << 20))),
            Lsn(3 << 20)
        );
        assert_eq!(
            copies_from(Some(Lsn(2 << 20)), Some(Lsn(3 << 20))),
            Lsn(2 << 20)
        );
        assert_eq!(copies_from(None, Some(Lsn(3 << 20))), Lsn(3 << 20));
        assert_eq!(
            copies_from(None, None),
            Lsn::INVALID,
            "a new store gets everything"
        );
        assert_eq!(
            gap(Lsn(3 << 20), Lsn(6 << 20), seg()),
            Some((SegNo(3), SegNo(6)))
        );
        assert_eq!(gap(Lsn(6 << 20), Lsn(6 << 20), seg()), None);
    }

    #[tokio::test]
    async fn the_source_lists_complete_segments_and_deltas_of_the_others_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = pgagent_storage::fs::FsStore::open(dir.path().to_path_buf())
            .await
            .unwrap();
        let put = |k: String| {
            let store = &store;
            async move { store.put(&k, Bytes::from_static(b"x")).await.unwrap() }
        };
        for s in [2, 3, 5, 9] {
            put(segment_key(TLI, SegNo(s), seg())).await;
        }
        // Another timeline's segment in range, and segment 6 only as deltas (one of them
        // also for complete segment 5, which makes it needless).
        put(segment_key(TimelineId(1), SegNo(4), seg())).await;
        let delta = |segno, start, end| Delta {
            tli: TLI,
            segno: SegNo(segno),
            start,
            end,
        };
        put(delta(5, 0, 100).key(seg())).await;
        put(delta(6, 0, 100).key(seg())).await;
        put(delta(6, 100, 300).key(seg())).await;
        let got = held_objects(&store, TLI, SegNo(3), SegNo(9), seg())
            .await
            .unwrap();
        let base = SegNo(6).start_lsn(seg());
        assert_eq!(
            got,
            vec![
                WalObject::Segment {
                    tli: TLI,
                    segno: SegNo(3)
                },
                WalObject::Segment {
                    tli: TLI,
                    segno: SegNo(5)
                },
                WalObject::Partial {
                    tli: TLI,
                    segno: SegNo(6),
                    start: base,
                    end: base + 100
                },
                WalObject::Partial {
                    tli: TLI,
                    segno: SegNo(6),
                    start: base + 100,
                    end: base + 300
                },
            ]
        );
        assert!(held_objects(&store, TLI, SegNo(7), SegNo(7), seg())
            .await
            .unwrap()
            .is_empty());
    }
}
