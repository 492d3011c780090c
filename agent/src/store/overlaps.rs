//! Whether the pieces of each segment agree where they overlap: every piece of a segment
//! (a delta, a `.partial` of a store written before deltas, the complete object) is WAL the
//! server wrote, so two of them covering the same bytes must hold the same bytes there
//! ([`pgagent_storage::deltas::overlap_mismatch`]). `pgagent verify --wal` reports each
//! disagreement; `pgagent fetch` refuses to serve across one.

use pgagent_protocol::{segment_file_name, WalSegmentSize};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::deltas::{overlap_mismatch, Piece};
use pgagent_storage::layout::wal_key;
use pgagent_storage::{envelope, ObjectStore};

use super::wal::WalIndex;

/// The disagreements among the pieces of every segment of `index` that has two or more
/// (its pieces and its complete object), one line each naming both objects and the first
/// segment offset that differs. Reads every such piece (segment by segment, so memory stays
/// within about two segments); a piece that is gone or does not open is skipped here (the
/// per-object check reports it).
///
/// Errors: none; a store error on a piece skips it.
pub async fn disagreements(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    index: &WalIndex,
    seg: WalSegmentSize,
) -> Vec<String> {
    let mut out = Vec::new();
    for (&(tli, segno), pieces) in &index.pieces {
        let mut keys = pieces.keys(seg);
        let mut ranges: Vec<Option<(u64, u64)>> = keys
            .iter()
            .map(|k| pgagent_storage::deltas::Delta::parse_key(k, seg).map(|d| (d.start, d.end)))
            .collect();
        if index.complete.contains_key(&(tli, segno)) {
            keys.push(wal_key(&segment_file_name(tli, segno, seg)));
            ranges.push(Some((0, seg.bytes())));
        }
        if keys.len() < 2 {
            continue;
        }
        let mut opened: Vec<(Piece, Vec<u8>)> = Vec::new();
        for (key, range) in keys.into_iter().zip(ranges) {
            let Ok(body) = store.get(&key).await else {
                continue;
            };
            let Ok(raw) = envelope::open_for(&body, cipher, &key) else {
                continue;
            };
            // A `.partial` holds WAL from offset 0, as long as its content.
            let (start, end) = range.unwrap_or((0, raw.len() as u64));
            opened.push((Piece { key, start, end }, raw));
        }
        for (i, (a, a_raw)) in opened.iter().enumerate() {
            for (b, b_raw) in &opened[i + 1..] {
                if let Some(at) = overlap_mismatch(a, a_raw, b, b_raw) {
                    out.push(format!(
                        "{} and {} hold different WAL where both cover segment {} (first at \
                         offset {at:#X})",
                        a.key,
                        b.key,
                        segment_file_name(tli, segno, seg)
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::wal::listing_of;
    use pgagent_protocol::{SegNo, TimelineId};
    use pgagent_storage::deltas::Delta;

    #[tokio::test]
    async fn a_delta_that_disagrees_with_another_or_with_the_segment_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = pgagent_storage::fs::FsStore::open(dir.path().into())
            .await
            .unwrap();
        let seg = WalSegmentSize::new(1 << 20).unwrap();
        let wal: Vec<u8> = (0..seg.bytes()).map(|i| (i % 253) as u8).collect();
        let delta = |segno, start, end| Delta {
            tli: TimelineId(1),
            segno: SegNo(segno),
            start,
            end,
        };
        let put = |key: String, raw: Vec<u8>| {
            let store = &store;
            async move { store.put(&key, envelope::seal(&raw, 1).body).await.unwrap() }
        };
        // Segment 2: three agreeing deltas. Segment 3: two deltas that disagree at 0x180.
        // Segment 4: complete, and a leftover delta that disagrees with it at 0x10.
        for d in [
            delta(2, 0, 0x200),
            delta(2, 0x100, 0x300),
            delta(2, 0x300, 0x400),
        ] {
            put(d.key(seg), wal[d.start as usize..d.end as usize].to_vec()).await;
        }
        put(delta(3, 0, 0x200).key(seg), wal[..0x200].to_vec()).await;
        let mut other = wal[0x100..0x300].to_vec();
        other[0x80] ^= 1;
        put(delta(3, 0x100, 0x300).key(seg), other).await;
        put(
            wal_key(&segment_file_name(TimelineId(1), SegNo(4), seg)),
            wal.clone(),
        )
        .await;
        let mut leftover = wal[..0x100].to_vec();
        leftover[0x10] ^= 1;
        put(delta(4, 0, 0x100).key(seg), leftover).await;

        let keys: Vec<String> = store
            .list("wal/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        let index = WalIndex::from_listing(&listing_of(keys, 1), seg);
        let found = disagreements(&store, None, &index, seg).await;
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains(&delta(3, 0, 0x200).key(seg)), "{found:?}");
        assert!(
            found[0].contains(&delta(3, 0x100, 0x300).key(seg)),
            "{found:?}"
        );
        assert!(found[0].contains("0x180"), "{found:?}");
        assert!(found[1].contains(&delta(4, 0, 0x100).key(seg)), "{found:?}");
        assert!(found[1].contains("0x10)"), "{found:?}");
    }
}
