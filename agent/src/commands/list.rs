//! `pgagent list [backups|wal|timelines|snapshots|drills]`: what the store holds. Backups,
//! snapshots and drills are listed by their commands' modules, WAL and timelines here. A
//! segment held only as partial pieces (deltas, or a `.partial` object in a store written
//! before deltas) is listed with the end of the WAL its pieces hold from its start
//! ([`crate::store::wal`]).

use std::collections::BTreeMap;

use pgagent_protocol::{segment_file_name, Lsn, SegNo, TimelineId, WalFileName, WalSegmentSize};
use pgagent_storage::layout::WAL_PREFIX;
use serde::Serialize;

use crate::config::Config;
use crate::store::wal::{legacy_lengths, PartialSegment, SegmentId, WalIndex};

/// Things `pgagent list` shows; also the values of its argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListWhat {
    /// Base backups: status, LSNs, sizes, deduplication.
    Backups,
    /// WAL segments per timeline, as ranges, with gaps.
    Wal,
    /// Timelines and their history files.
    Timelines,
    /// ZFS snapshots: pgagent's on this machine and the records in the store.
    Snapshots,
    /// Drills: when, which backup, the point reached, their checks.
    Drills,
}

/// A run of consecutive complete segments on one timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentRange {
    /// First segment's file name.
    pub first: String,
    /// Last segment's file name.
    pub last: String,
    /// Number of segments.
    pub segments: u64,
    /// Bytes stored (compressed envelopes).
    pub stored_bytes: u64,
}

/// A segment held only as partial pieces: the one being filled (deltas, or a `.partial`
/// object in a store written before deltas), or a leftover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartialEntry {
    /// The segment's file name.
    pub segment: String,
    /// LSN where the WAL its pieces hold from the segment start, without a hole, ends.
    pub end_lsn: String,
    /// Bytes of that WAL.
    pub bytes: u64,
    /// Delta objects it has.
    pub deltas: usize,
    /// Whether a `.partial` object is one of its pieces.
    pub legacy_partial: bool,
    /// Whether deltas exist beyond a hole at `end_lsn` (not usable until it is filled).
    pub beyond_hole: bool,
}

/// WAL missing between what a timeline holds: from the end of one segment's WAL to the
/// start of the next segment held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalGap {
    /// LSN where the WAL held stops.
    pub from: String,
    /// LSN where WAL held starts again.
    pub to: String,
}

/// What the store holds for one timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TimelineWal {
    /// The timeline.
    pub timeline: u32,
    /// Consecutive runs of complete segments.
    pub ranges: Vec<SegmentRange>,
    /// Segments held only as partial pieces.
    pub partials: Vec<PartialEntry>,
    /// Holes in the WAL of the timeline, in LSN order: between two runs, before a partial
    /// segment, or after one that does not reach its end.
    pub gaps: Vec<WalGap>,
    /// Deltas and `.partial` objects of segments stored complete: read by nothing,
    /// deleted by `pgagent prune`.
    pub superseded_pieces: usize,
    /// Whether `XXXXXXXX.history` is stored (always false for timeline 1, which has none).
    pub history: bool,
}

/// One segment a timeline holds, in the walk of [`summarize`].
enum Held {
    Complete(u64),
    Partial(PartialSegment),
}

/// Groups the WAL of `index` by timeline into runs of complete segments, partial segments
/// (`partials`: assembled, see [`WalIndex::partial_segments`]) and the gaps between them.
/// Each segment reaches its end when complete, its assembled end when partial.
pub fn summarize(
    index: &WalIndex,
    partials: &BTreeMap<SegmentId, PartialSegment>,
    seg: WalSegmentSize,
) -> Vec<TimelineWal> {
    let mut held: BTreeMap<TimelineId, BTreeMap<SegNo, Held>> = BTreeMap::new();
    for (&(t, s), &size) in &index.complete {
        held.entry(t).or_default().insert(s, Held::Complete(size));
    }
    for (&(t, s), &p) in partials {
        held.entry(t).or_default().insert(s, Held::Partial(p));
    }
    let mut tls: BTreeMap<TimelineId, TimelineWal> = BTreeMap::new();
    for t in index.histories.iter().chain(held.keys()) {
        tls.entry(*t).or_insert_with(|| TimelineWal {
            timeline: t.0,
            history: index.histories.contains(t),
            ..TimelineWal::default()
        });
    }
    for id in index
        .pieces
        .keys()
        .filter(|id| index.complete.contains_key(id))
    {
        let n = index.pieces[id].count();
        if let Some(tl) = tls.get_mut(&id.0) {
            tl.superseded_pieces += n;
        }
    }
    for (t, segments) in held {
        let tl = tls.get_mut(&t).expect("inserted");
        let mut run: Option<SegmentRange> = None;
        let mut reach: Option<Lsn> = None;
        for (s, h) in segments {
            let start = s.start_lsn(seg);
            if let Some(r) = reach.filter(|r| *r < start) {
                tl.gaps.push(WalGap {
                    from: r.to_string(),
                    to: start.to_string(),
                });
            }
            match h {
                Held::Complete(size) => {
                    let name = segment_file_name(t, s, seg);
                    match run.as_mut() {
                        Some(r) if reach == Some(start) => {
                            r.last = name;
                            r.segments += 1;
                            r.stored_bytes += size;
                        }
                        _ => {
                            tl.ranges.extend(run.take());
                            run = Some(SegmentRange {
                                first: name.clone(),
                                last: name,
                                segments: 1,
                                stored_bytes: size,
                            });
                        }
                    }
                    reach = Some(s.end_lsn(seg));
                }
                Held::Partial(p) => {
                    tl.ranges.extend(run.take());
                    tl.partials.push(PartialEntry {
                        segment: segment_file_name(t, s, seg),
                        end_lsn: p.end_lsn(s, seg).to_string(),
                        bytes: p.end,
                        deltas: p.deltas,
                        legacy_partial: p.legacy,
                        beyond_hole: p.beyond_hole,
                    });
                    reach = Some(p.end_lsn(s, seg));
                }
            }
        }
        tl.ranges.extend(run);
    }
    tls.into_values().collect()
}

/// The text lines of one timeline's WAL, in LSN order.
fn wal_lines(t: &TimelineWal, seg: WalSegmentSize) -> Vec<String> {
    let lsn = |s: &str| s.parse::<Lsn>().unwrap_or_default();
    let lsn_of_name = |n: &str| match WalFileName::parse(n, seg) {
        Some(WalFileName::Segment { segno, .. }) => segno.start_lsn(seg),
        _ => Lsn::default(),
    };
    let mut lines: Vec<(Lsn, u8, String)> = Vec::new();
    for r in &t.ranges {
        lines.push((
            lsn_of_name(&r.first),
            0,
            format!(
                "  {} .. {}  {} segments, {} stored",
                r.first,
                r.last,
                r.segments,
                bytesize::ByteSize(r.stored_bytes)
            ),
        ));
    }
    for p in &t.partials {
        let mut pieces = format!("{} deltas", p.deltas);
        if p.legacy_partial {
            pieces.push_str(" and a .partial object");
        }
        let mut line = format!(
            "  {}  partial: WAL up to {} ({}) in {pieces}",
            p.segment,
            p.end_lsn,
            bytesize::ByteSize(p.bytes)
        );
        if p.beyond_hole {
            line.push_str(&format!(
                "; deltas past a hole at {} are not used until it is filled",
                p.end_lsn
            ));
        }
        lines.push((lsn_of_name(&p.segment), 0, line));
    }
    for g in &t.gaps {
        lines.push((
            lsn(&g.from),
            1,
            format!("  GAP: no WAL from {} to {}", g.from, g.to),
        ));
    }
    lines.sort();
    let mut out: Vec<String> = lines.into_iter().map(|(_, _, l)| l).collect();
    if t.superseded_pieces > 0 {
        out.push(format!(
            "  {} deltas and .partial objects of segments stored complete (pgagent prune deletes them)",
            t.superseded_pieces
        ));
    }
    out
}

/// Prints the listing.
pub async fn run(cfg: &Config, what: ListWhat, json: bool) -> anyhow::Result<()> {
    if matches!(what, ListWhat::Wal | ListWhat::Timelines) {
        return list_wal(cfg, what, json).await;
    }
    let [one] = cfg.stores.as_slice() else {
        // Backups, snapshot and drill records are kept per store: each store on its own.
        if json {
            return Err(crate::config::ConfigError(format!(
                "list {} --json lists one store: add --store NAME (the stores are {})",
                format!("{what:?}").to_lowercase(),
                cfg.stores
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
        for spec in &cfg.stores {
            println!("store {}:", spec.name);
            list_one(&cfg.for_store(spec), what, json).await?;
        }
        return Ok(());
    };
    list_one(&cfg.for_store(one), what, json).await
}

/// Backups, snapshots or drills in the one store of `cfg`.
async fn list_one(cfg: &Config, what: ListWhat, json: bool) -> anyhow::Result<()> {
    match what {
        ListWhat::Backups => crate::commands::backup::list(cfg, json).await,
        ListWhat::Snapshots => crate::commands::snapshot::list(cfg, json).await,
        ListWhat::Drills => crate::commands::drill::list(cfg, json).await,
        ListWhat::Wal | ListWhat::Timelines => unreachable!("listed above"),
    }
}

/// `list wal` and `list timelines`: the WAL of the stores read as one (what recovery
/// sees).
async fn list_wal(cfg: &Config, what: ListWhat, json: bool) -> anyhow::Result<()> {
    let crate::store::Opened {
        store,
        cluster,
        seg,
        ..
    } = crate::store::open_cluster(cfg).await?;
    let objects = store.list(WAL_PREFIX).await?;
    let index = WalIndex::from_listing(&objects, seg);
    let (legacy, unreadable) = legacy_lengths(store.as_ref(), &index.legacy_to_read(), seg).await?;
    for (key, why) in &unreadable {
        tracing::warn!("{key}: its header does not open ({why}); it counts for nothing");
    }
    let wal = summarize(&index, &index.partial_segments(&legacy, seg), seg);
    if json {
        let v = match what {
            ListWhat::Wal | ListWhat::Backups | ListWhat::Snapshots | ListWhat::Drills => {
                serde_json::to_value(&wal)?
            }
            ListWhat::Timelines => serde_json::to_value(
                wal.iter()
                    .map(|t| serde_json::json!({"timeline": t.timeline, "history": t.history}))
                    .collect::<Vec<_>>(),
            )?,
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    // Several stores describe themselves as `stores a (…), b (…)`.
    let described = store.describe();
    let label = if described.starts_with("stores ") {
        described
    } else {
        format!("store {described}")
    };
    println!("{label} (system identifier {})", cluster.system_identifier);
    for t in &wal {
        match what {
            ListWhat::Timelines => println!(
                "timeline {:<4} history file: {}",
                t.timeline,
                if t.history {
                    "yes"
                } else if t.timeline == 1 {
                    "none (first timeline)"
                } else {
                    "MISSING"
                }
            ),
            ListWhat::Wal | ListWhat::Backups | ListWhat::Snapshots | ListWhat::Drills => {
                println!("timeline {}", t.timeline);
                for line in wal_lines(t, seg) {
                    println!("{line}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgagent_storage::ObjectMeta;

    fn meta(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            last_modified: None,
        }
    }

    fn seg() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    /// The summary of `keys`; `legacy` gives the raw length of `.partial` objects.
    fn summary(keys: &[(&str, u64)], legacy: &[((u32, u64), u64)]) -> Vec<TimelineWal> {
        let objects: Vec<ObjectMeta> = keys.iter().map(|&(k, n)| meta(k, n)).collect();
        let index = WalIndex::from_listing(&objects, seg());
        let lens = legacy
            .iter()
            .map(|&((t, s), n)| ((TimelineId(t), SegNo(s)), n))
            .collect();
        summarize(&index, &index.partial_segments(&lens, seg()), seg())
    }

    fn gap(from: &str, to: &str) -> WalGap {
        WalGap {
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn ranges_and_gaps_per_timeline() {
        let s = summary(
            &[
                ("wal/000000010000000000000001", 10),
                ("wal/000000010000000000000002", 10),
                ("wal/000000010000000000000004", 10),
                ("wal/000000010000000000000005.partial", 3),
                ("wal/00000002.history", 1),
                ("wal/000000020000000000000005", 7),
                ("cluster.json", 1),
            ],
            &[((1, 5), 0x1000)],
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].ranges.len(), 2, "a gap at segment 3");
        assert_eq!(s[0].ranges[0].segments, 2);
        assert_eq!(s[0].ranges[0].stored_bytes, 20);
        assert_eq!(s[0].ranges[1].first, "000000010000000000000004");
        assert_eq!(s[0].gaps, [gap("0/3000000", "0/4000000")]);
        assert_eq!(s[0].partials.len(), 1);
        assert_eq!(s[0].partials[0].segment, "000000010000000000000005");
        assert_eq!(s[0].partials[0].end_lsn, "0/5001000");
        assert!(s[0].partials[0].legacy_partial);
        assert!(s[1].history);
        assert_eq!(s[1].ranges[0].last, "000000020000000000000005");
        assert!(s[1].gaps.is_empty());
    }

    #[test]
    fn a_segment_held_only_as_deltas_is_partial_to_its_assembled_end() {
        let s = summary(
            &[
                ("wal/000000010000000000000001", 10),
                (
                    "wal/000000010000000000000001.partial.d/00000000-00800000",
                    4,
                ),
                (
                    "wal/000000010000000000000001.partial.d/00800000-01000000",
                    4,
                ),
                ("wal/000000010000000000000002", 10),
                (
                    "wal/000000010000000000000003.partial.d/00000000-00001000",
                    1,
                ),
                (
                    "wal/000000010000000000000003.partial.d/00001000-00002000",
                    1,
                ),
                (
                    "wal/000000010000000000000003.partial.d/00003000-00004000",
                    1,
                ),
            ],
            &[],
        );
        assert_eq!(s.len(), 1, "{s:?}");
        let t = &s[0];
        assert_eq!(t.ranges.len(), 1, "deltas are not segments: {t:?}");
        assert_eq!(t.ranges[0].segments, 2);
        assert_eq!(t.superseded_pieces, 2);
        assert_eq!(
            t.partials,
            [PartialEntry {
                segment: "000000010000000000000003".into(),
                end_lsn: "0/3002000".into(),
                bytes: 0x2000,
                deltas: 3,
                legacy_partial: false,
                beyond_hole: true,
            }]
        );
        assert!(t.gaps.is_empty(), "{:?}", t.gaps);
        let lines = wal_lines(t, seg());
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[1].contains("partial: WAL up to 0/3002000"),
            "{lines:?}"
        );
        assert!(lines[1].contains("past a hole at 0/3002000"), "{lines:?}");
        assert!(lines[2].starts_with("  2 deltas"), "{lines:?}");
    }

    #[test]
    fn a_partial_segment_reaches_its_end_and_no_further() {
        // Segment 3 holds WAL to 0/3002000 only, yet segment 4 is complete: the rest of 3
        // is missing. Segment 6 holds no WAL from its start.
        let s = summary(
            &[
                ("wal/000000010000000000000002", 10),
                (
                    "wal/000000010000000000000003.partial.d/00000000-00002000",
                    1,
                ),
                ("wal/000000010000000000000004", 10),
                (
                    "wal/000000010000000000000005.partial.d/00000000-01000000",
                    1,
                ),
                (
                    "wal/000000010000000000000006.partial.d/00001000-00002000",
                    1,
                ),
            ],
            &[],
        );
        let t = &s[0];
        assert_eq!(t.gaps, [gap("0/3002000", "0/4000000")]);
        assert_eq!(t.partials.len(), 3);
        assert_eq!(
            t.partials[1].end_lsn, "0/6000000",
            "a whole segment of deltas"
        );
        assert_eq!(t.partials[2].bytes, 0);
        let lines = wal_lines(t, seg());
        let order: Vec<&str> = lines
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(
            order,
            [
                "000000010000000000000002",
                "000000010000000000000003",
                "GAP:",
                "000000010000000000000004",
                "000000010000000000000005",
                "000000010000000000000006",
            ]
        );
    }
}
