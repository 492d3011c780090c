//! `pgagent list wal|timelines`: what the store holds.

use std::collections::BTreeMap;

use pgagent_protocol::{segment_file_name, SegNo, TimelineId, WalFileName, WalSegmentSize};
use pgagent_storage::layout::WAL_PREFIX;
use pgagent_storage::ObjectMeta;
use serde::Serialize;

use crate::cli::ListWhat;
use crate::config::Config;

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

/// What the store holds for one timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TimelineWal {
    /// The timeline.
    pub timeline: u32,
    /// Consecutive runs; more than one means gaps between them.
    pub ranges: Vec<SegmentRange>,
    /// `.partial` objects (file names).
    pub partials: Vec<String>,
    /// Whether `XXXXXXXX.history` is stored (always false for timeline 1, which has none).
    pub history: bool,
}

/// Groups store keys under `wal/` by timeline into ranges.
pub fn summarize(objects: &[ObjectMeta], seg: WalSegmentSize) -> Vec<TimelineWal> {
    let mut segs: BTreeMap<u32, Vec<(SegNo, u64)>> = BTreeMap::new();
    let mut tls: BTreeMap<u32, TimelineWal> = BTreeMap::new();
    let entry = |tls: &mut BTreeMap<u32, TimelineWal>, t: TimelineId| {
        tls.entry(t.0)
            .or_insert_with(|| TimelineWal {
                timeline: t.0,
                ..Default::default()
            })
            .timeline
    };
    for o in objects {
        let Some(name) = o.key.strip_prefix(WAL_PREFIX) else {
            continue;
        };
        match WalFileName::parse(name, seg) {
            Some(WalFileName::Segment { tli, segno }) => {
                entry(&mut tls, tli);
                segs.entry(tli.0).or_default().push((segno, o.size));
            }
            Some(WalFileName::Partial { tli, .. }) => {
                let t = entry(&mut tls, tli);
                tls.get_mut(&t)
                    .expect("inserted")
                    .partials
                    .push(name.to_string());
            }
            Some(WalFileName::History(tli)) => {
                let t = entry(&mut tls, tli);
                tls.get_mut(&t).expect("inserted").history = true;
            }
            _ => {}
        }
    }
    for (t, mut list) in segs {
        list.sort();
        let tli = TimelineId(t);
        let ranges = &mut tls.get_mut(&t).expect("inserted").ranges;
        let mut run: Option<(SegNo, SegNo, u64, u64)> = None;
        let close = |r: (SegNo, SegNo, u64, u64), ranges: &mut Vec<SegmentRange>| {
            ranges.push(SegmentRange {
                first: segment_file_name(tli, r.0, seg),
                last: segment_file_name(tli, r.1, seg),
                segments: r.2,
                stored_bytes: r.3,
            })
        };
        for (segno, size) in list {
            run = match run {
                Some((a, b, n, bytes)) if segno.0 == b.0 + 1 => {
                    Some((a, segno, n + 1, bytes + size))
                }
                Some(r) => {
                    close(r, ranges);
                    Some((segno, segno, 1, size))
                }
                None => Some((segno, segno, 1, size)),
            };
        }
        if let Some(r) = run {
            close(r, ranges);
        }
    }
    tls.into_values().collect()
}

/// Prints the listing.
pub async fn run(cfg: &Config, what: ListWhat, json: bool) -> anyhow::Result<()> {
    match what {
        ListWhat::Backups => return crate::commands::backup::list(cfg, json).await,
        ListWhat::Snapshots => return crate::commands::snapshot::list(cfg, json).await,
        ListWhat::Wal | ListWhat::Timelines => {}
    }
    let (store, cluster, seg) = crate::store::open_cluster(cfg).await?;
    let objects = store.list(WAL_PREFIX).await?;
    let wal = summarize(&objects, seg);
    if json {
        let v = match what {
            ListWhat::Wal | ListWhat::Backups | ListWhat::Snapshots => serde_json::to_value(&wal)?,
            ListWhat::Timelines => serde_json::to_value(
                wal.iter()
                    .map(|t| serde_json::json!({"timeline": t.timeline, "history": t.history}))
                    .collect::<Vec<_>>(),
            )?,
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "store {} (system identifier {})",
        store.describe(),
        cluster.system_identifier
    );
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
            ListWhat::Wal | ListWhat::Backups | ListWhat::Snapshots => {
                println!("timeline {}", t.timeline);
                for (i, r) in t.ranges.iter().enumerate() {
                    if i > 0 {
                        println!("  GAP before {}", r.first);
                    }
                    println!(
                        "  {} .. {}  {} segments, {} stored",
                        r.first,
                        r.last,
                        r.segments,
                        bytesize::ByteSize(r.stored_bytes)
                    );
                }
                for p in &t.partials {
                    println!("  {p}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            last_modified: None,
        }
    }

    #[test]
    fn ranges_and_gaps_per_timeline() {
        let seg = WalSegmentSize::new(16 << 20).unwrap();
        let objs = vec![
            meta("wal/000000010000000000000001", 10),
            meta("wal/000000010000000000000002", 10),
            meta("wal/000000010000000000000004", 10),
            meta("wal/000000010000000000000005.partial", 3),
            meta("wal/00000002.history", 1),
            meta("wal/000000020000000000000005", 7),
            meta("cluster.json", 1),
        ];
        let s = summarize(&objs, seg);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].ranges.len(), 2, "a gap at segment 3");
        assert_eq!(s[0].ranges[0].segments, 2);
        assert_eq!(s[0].ranges[0].stored_bytes, 20);
        assert_eq!(s[0].ranges[1].first, "000000010000000000000004");
        assert_eq!(s[0].partials, vec!["000000010000000000000005.partial"]);
        assert!(s[1].history);
        assert_eq!(s[1].ranges[0].last, "000000020000000000000005");
    }
}
