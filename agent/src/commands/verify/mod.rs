//! `pgagent verify [--backup ID] [--wal]`: is what a restore needs in the store, and intact?
//!
//! - Backups (all, or `--backup ID`): the manifest passes its checks, and every chunk it
//!   references exists and opens with the hash its name gives (the envelope's length and
//!   blake3 check, DESIGN.md "Object envelope").
//! - WAL: for each complete backup, every segment from its start to the newest segment in
//!   the store, on the timelines recovery follows (the newest history file, as
//!   [`crate::fetch::plan`] reads it), is present; the newest segment may be held only as
//!   partial pieces (deltas, or a `.partial` object in a store written before deltas), and
//!   the WAL reaches their assembled end ([`crate::store::wal`]). With `--wal`, every WAL
//!   object (deltas included) is also downloaded and checked, and the pieces of each
//!   segment must agree where they overlap ([`crate::store::overlaps`]).
//!
//! Prints one line per problem and a summary; any problem is exit 1.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use pgagent_protocol::{
    segment_file_name, Lsn, SegNo, TimelineHistory, TimelineId, WalSegmentSize,
};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::deltas::Delta;
use pgagent_storage::layout::{chunk_key, history_key, WAL_PREFIX};
use pgagent_storage::manifest::{BackupManifest, BackupStatus};
use pgagent_storage::{envelope, ObjectStore};

use crate::config::Config;
use crate::fetch::plan::TimelinePlan;
use crate::store::wal::{legacy_lengths, PartialSegment, SegmentId, WalIndex};
use crate::store::{catalog, overlaps};

/// Runs the checks and prints the report; with several stores, each store on its own (a
/// copy must restore by itself), after checking that they name one cluster.
///
/// Errors: a problem was found (after the report), or the store cannot be read; with
/// several stores, the stores with problems; [`crate::exit::Refused`] (exit 3) for stores
/// naming different clusters.
pub async fn run(cfg: &Config, backup: Option<&str>, wal: bool) -> anyhow::Result<()> {
    let [one] = cfg.stores.as_slice() else {
        return run_each(cfg, backup, wal).await;
    };
    run_one(&cfg.for_store(one), backup, wal).await
}

/// `verify` of several stores: one report per store, then which ones failed.
async fn run_each(cfg: &Config, backup: Option<&str>, wal: bool) -> anyhow::Result<()> {
    same_cluster(cfg).await?;
    let mut failed = Vec::new();
    for spec in &cfg.stores {
        println!("store {}:", spec.name);
        if let Err(e) = run_one(&cfg.for_store(spec), backup, wal).await {
            println!("store {}: {e:#}", spec.name);
            failed.push(spec.name.as_str());
        }
    }
    if failed.is_empty() {
        let names: Vec<&str> = cfg.stores.iter().map(|s| s.name.as_str()).collect();
        println!("every store verified: {}", names.join(", "));
        Ok(())
    } else {
        anyhow::bail!("stores with problems: {}", failed.join(", "))
    }
}

/// Refuses (exit 3) stores whose `cluster.json` name different clusters; a store that
/// cannot be read, or holds none, is left to its own report.
async fn same_cluster(cfg: &Config) -> anyhow::Result<()> {
    let mut read = Vec::new();
    for spec in &cfg.stores {
        let one = cfg.for_store(spec);
        let Ok(store) = crate::store::open(&one).await else {
            continue;
        };
        if let Ok(Some(cluster)) = pgagent_storage::cluster::read_cluster(store.as_ref()).await {
            read.push(crate::store::read::Checked {
                name: spec.name.clone(),
                cluster,
                cipher: None,
            });
        }
    }
    crate::store::read::check_one_cluster(&read).map_err(|e| crate::exit::Refused(e).into())
}

/// Verifies the one store of `cfg`.
async fn run_one(cfg: &Config, backup: Option<&str>, wal: bool) -> anyhow::Result<()> {
    let crate::store::Opened {
        store, seg, cipher, ..
    } = crate::store::open_cluster(cfg).await?;
    let ids = match backup {
        Some(id) => vec![id.to_string()],
        None => catalog::backup_ids(store.as_ref()).await?,
    };
    let concurrency = cfg.store().upload_concurrency;
    let mut problems = Vec::new();
    let mut manifests = Vec::new();
    for id in &ids {
        match catalog::get_manifest(store.as_ref(), cipher.as_ref(), id).await {
            Ok(Some(m)) => manifests.push(m),
            Ok(None) => problems.push(format!("backup {id}: no manifest")),
            Err(e) => problems.push(format!("backup {id}: {e:#}")),
        }
    }
    for m in &manifests {
        let found = check_backup(store.clone(), &cipher, m, concurrency, seg).await;
        println!(
            "backup {}: {} chunks checked, {}",
            m.id,
            found.0,
            if found.1.is_empty() {
                "all intact".to_string()
            } else {
                format!("{} problems", found.1.len())
            }
        );
        problems.extend(found.1);
    }
    let objects = store.list(WAL_PREFIX).await?;
    let index = WalIndex::from_listing(&objects, seg);
    let (legacy, unreadable) = legacy_lengths(store.as_ref(), &index.legacy_to_read(), seg).await?;
    problems.extend(
        unreadable
            .into_iter()
            .map(|(key, why)| format!("{key}: {why}")),
    );
    let partials = index.partial_segments(&legacy, seg);
    for note in hole_notes(&index, &partials, seg) {
        println!("NOTE {note}");
    }
    let plan = latest_plan(store.as_ref(), cipher.as_ref(), &index, seg).await?;
    for m in manifests
        .iter()
        .filter(|m| m.status == BackupStatus::Complete)
    {
        let (start, tli) = m.start()?;
        let walk = wal_gaps(
            &index,
            &partials,
            &plan,
            tli,
            start.segment_number(seg),
            seg,
        );
        if walk.gaps.is_empty() {
            println!(
                "backup {}: WAL continuous from {} to {} (WAL up to {})",
                m.id,
                segment_file_name(tli, start.segment_number(seg), seg),
                walk.last,
                walk.end
            );
        }
        for g in walk.gaps {
            problems.push(format!("backup {}: WAL gap: {g}", m.id));
        }
    }
    if wal {
        let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
        let (checked, bad) =
            check_objects(store.clone(), &cipher, keys, None, concurrency, seg).await;
        println!("WAL: {checked} objects checked (complete segments, deltas, history files)");
        problems.extend(bad);
        problems
            .extend(overlaps::disagreements(store.as_ref(), cipher.as_ref(), &index, seg).await);
    }
    for p in &problems {
        println!("PROBLEM {p}");
    }
    if problems.is_empty() {
        println!("verify: no problem found");
        Ok(())
    } else {
        anyhow::bail!("verify found {} problems", problems.len())
    }
}

/// Checks every chunk of `m` once; returns the number checked and the problems.
async fn check_backup(
    store: Arc<dyn ObjectStore>,
    cipher: &Option<ObjectCipher>,
    m: &BackupManifest,
    concurrency: usize,
    seg: WalSegmentSize,
) -> (usize, Vec<String>) {
    if let Err(e) = m.check() {
        return (0, vec![format!("backup {}: {e}", m.id)]);
    }
    let mut users: HashMap<&str, &str> = HashMap::new();
    for f in m.files.iter().chain(m.pg_manifest.iter()) {
        for c in &f.chunks {
            users.entry(c.as_str()).or_insert(f.path.as_str());
        }
    }
    let keys: Vec<String> = users.keys().map(|h| chunk_key(h)).collect();
    let by_key: HashMap<String, String> = users
        .iter()
        .map(|(h, p)| (chunk_key(h), format!("backup {} file {p}", m.id)))
        .collect();
    check_objects(store, cipher, keys, Some(&by_key), concurrency, seg).await
}

/// Downloads and opens each object (with `cipher`, `None` for a plaintext store, so an
/// encrypted object is authenticated under its own name); a chunk must also hold the hash
/// its key names, and a delta (of a cluster with `seg`-byte segments) as many bytes as its
/// key says.
async fn check_objects(
    store: Arc<dyn ObjectStore>,
    cipher: &Option<ObjectCipher>,
    keys: Vec<String>,
    context: Option<&HashMap<String, String>>,
    concurrency: usize,
    seg: WalSegmentSize,
) -> (usize, Vec<String>) {
    let total = keys.len();
    let results: Vec<Option<String>> = futures::stream::iter(keys.into_iter().map(|key| {
        let store = store.clone();
        let cipher = cipher.clone();
        async move {
            let body = match store.get(&key).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => return Some((key, "missing".to_string())),
                Err(e) => return Some((key, e.to_string())),
            };
            let k = key.clone();
            let verdict = tokio::task::spawn_blocking(move || {
                let header = envelope::Header::parse(&body).map_err(|e| e.to_string())?;
                envelope::open_for(&body, cipher.as_ref(), &k).map_err(|e| e.to_string())?;
                if let Some(d) = Delta::parse_key(&k, seg) {
                    if header.raw_len != d.len() {
                        return Err(format!(
                            "holds {} bytes, its name says {}",
                            header.raw_len,
                            d.len()
                        ));
                    }
                }
                match k.rsplit('/').next() {
                    Some(name)
                        if k.starts_with("chunks/") && header.hash.to_hex().as_str() != name =>
                    {
                        Err(format!("holds content of hash {}", header.hash.to_hex()))
                    }
                    _ => Ok(()),
                }
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            verdict.err().map(|e| (key, e))
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .map(|r| {
        r.map(|(key, why)| match context.and_then(|c| c.get(&key)) {
            Some(ctx) => format!("{ctx}: {key}: {why}"),
            None => format!("{key}: {why}"),
        })
    })
    .collect()
    .await;
    (total, results.into_iter().flatten().collect())
}

/// The plan of the newest timeline that has a history file in the store.
async fn latest_plan(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    index: &WalIndex,
    seg: WalSegmentSize,
) -> anyhow::Result<Option<TimelinePlan>> {
    let Some(&tli) = index.histories.last() else {
        return Ok(None);
    };
    let key = history_key(tli);
    let body = store.get(&key).await?;
    let text = envelope::open_for(&body, cipher, &key)?;
    let history = TimelineHistory::parse(&String::from_utf8_lossy(&text))
        .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    Ok(Some(TimelinePlan::new(tli, &history, seg)))
}

/// A segment missing on the walk of [`wal_gaps`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Its file name.
    pub segment: String,
    /// When the store holds it only as partial pieces: where their WAL from its start ends.
    pub partial_end: Option<Lsn>,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is missing", self.segment)?;
        if let Some(end) = self.partial_end {
            write!(
                f,
                " (the store holds it only as partial pieces, WAL up to {end}, and later WAL follows)"
            )?;
        }
        Ok(())
    }
}

/// Where the walk of [`wal_gaps`] ended and what it missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// The last segment reached.
    pub last: String,
    /// End of the WAL reached: the end of `last`, or of its WAL from its start when it is
    /// held only as partial pieces.
    pub end: Lsn,
    /// Segments missing on the way.
    pub gaps: Vec<Gap>,
}

/// Walks from segment `first` on `tli` to the newest segment in `index`, on the timelines
/// of `plan`. A segment held only as partial pieces (`partials`) counts for the newest
/// segment only, up to its assembled end; anywhere else it is a gap (later WAL exists, so
/// the segment should be complete).
pub fn wal_gaps(
    index: &WalIndex,
    partials: &BTreeMap<SegmentId, PartialSegment>,
    plan: &Option<TimelinePlan>,
    tli: TimelineId,
    first: SegNo,
    seg: WalSegmentSize,
) -> Walk {
    let mut newest: BTreeMap<TimelineId, SegNo> = BTreeMap::new();
    for &(t, s) in index.complete.keys().chain(partials.keys()) {
        let e = newest.entry(t).or_insert(s);
        *e = (*e).max(s);
    }
    let timeline_for = |s: SegNo| match plan {
        Some(p) if p.contains(tli) => p.timeline_for(s, tli),
        _ => tli,
    };
    let end = newest.values().copied().max().unwrap_or(first);
    let mut walk = Walk {
        last: segment_file_name(tli, first, seg),
        end: first.start_lsn(seg),
        gaps: Vec::new(),
    };
    let mut s = first;
    while s <= end {
        let t = timeline_for(s);
        let name = segment_file_name(t, s, seg);
        let is_last = newest.get(&t).is_some_and(|n| *n == s) && s == end;
        let partial = partials.get(&(t, s));
        if index.complete.contains_key(&(t, s)) {
            walk.last = name;
            walk.end = s.end_lsn(seg);
        } else if let Some(p) = partial.filter(|_| is_last) {
            walk.last = name;
            walk.end = p.end_lsn(s, seg);
        } else if newest.get(&t).is_some_and(|n| *n >= s) {
            walk.gaps.push(Gap {
                segment: name,
                partial_end: partial.map(|p| p.end_lsn(s, seg)),
            });
        } else {
            break;
        }
        s = s.next();
    }
    walk
}

/// Notes on segments held only as partial pieces with deltas past a hole, when no later
/// WAL of their timeline is in the store: the newest WAL, still being uploaded. Such a hole
/// is an upload in flight (deltas may land out of order), or WAL an agent that stopped
/// sends again when it starts (it resumes from the end of the run without a hole, and its
/// slot holds that WAL on the server); a recovery from the store alone stops at the hole
/// meanwhile. Not a problem by itself: a hole in a segment behind later WAL shows as a gap
/// of the backups whose WAL passes it ([`wal_gaps`]).
pub fn hole_notes(
    index: &WalIndex,
    partials: &BTreeMap<SegmentId, PartialSegment>,
    seg: WalSegmentSize,
) -> Vec<String> {
    partials
        .iter()
        .filter(|(_, p)| p.beyond_hole)
        .filter(|((t, s), _)| {
            let later = (*t, s.next())..=(*t, SegNo(u64::MAX));
            index.complete.range(later.clone()).next().is_none()
                && partials.range(later).next().is_none()
        })
        .map(|(&(t, s), p)| {
            format!(
                "{}: the newest WAL of timeline {t} is held as deltas with a hole at {}: an \
                 upload in flight, or WAL the agent sends again when it restarts; a recovery \
                 from the store alone stops there until it is filled",
                segment_file_name(t, s, seg),
                p.end_lsn(s, seg)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    /// The index of `keys` and its partial segments (`.partial` objects hold 0x1000 bytes).
    fn index(keys: &[&str]) -> (WalIndex, BTreeMap<SegmentId, PartialSegment>) {
        let objects = crate::store::wal::listing_of(keys.iter().map(|k| format!("wal/{k}")), 1);
        let index = WalIndex::from_listing(&objects, seg());
        let legacy = index
            .legacy_to_read()
            .into_iter()
            .map(|(id, _)| (id, 0x1000))
            .collect();
        let partials = index.partial_segments(&legacy, seg());
        (index, partials)
    }

    fn walk(keys: &[&str], plan: &Option<TimelinePlan>, first: u64) -> Walk {
        let (index, partials) = index(keys);
        wal_gaps(&index, &partials, plan, TimelineId(1), SegNo(first), seg())
    }

    fn names(gaps: &[Gap]) -> Vec<&str> {
        gaps.iter().map(|g| g.segment.as_str()).collect()
    }

    #[test]
    fn continuous_wal_and_a_gap() {
        let keys = [
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000005",
            "000000010000000000000006.partial",
        ];
        let w = walk(&keys, &None, 2);
        assert_eq!(names(&w.gaps), ["000000010000000000000004"]);
        assert_eq!(w.gaps[0].partial_end, None);
        assert_eq!(w.last, "000000010000000000000006");
        assert_eq!(w.end, Lsn(0x600_1000));
        assert!(walk(&keys, &None, 5).gaps.is_empty());
    }

    #[test]
    fn the_newest_segment_held_as_deltas_reaches_their_assembled_end() {
        let keys = [
            "000000010000000000000002",
            "000000010000000000000002.partial.d/00000000-00001000",
            "000000010000000000000003.partial",
            "000000010000000000000003.partial.d/00000800-00002000",
            "000000010000000000000003.partial.d/00003000-00004000",
        ];
        let w = walk(&keys, &None, 2);
        assert!(w.gaps.is_empty(), "{:?}", w.gaps);
        assert_eq!(w.last, "000000010000000000000003");
        assert_eq!(w.end, Lsn(0x300_2000), "legacy .partial, then a delta");
        let (index, partials) = index(&keys);
        let notes = hole_notes(&index, &partials, seg());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("000000010000000000000003: the newest WAL of timeline 1")
                && notes[0].contains("a hole at 0/3002000"),
            "{notes:?}"
        );
    }

    #[test]
    fn a_segment_held_as_deltas_behind_later_wal_is_a_gap() {
        // Segment 3 never completed in the store, yet segment 4 did: 3's deltas reach
        // 0/3002000 and the rest of it is missing.
        let keys = [
            "000000010000000000000002",
            "000000010000000000000003.partial.d/00000000-00002000",
            "000000010000000000000003.partial.d/00003000-00004000",
            "000000010000000000000004",
        ];
        let w = walk(&keys, &None, 2);
        assert_eq!(
            w.gaps,
            [Gap {
                segment: "000000010000000000000003".into(),
                partial_end: Some(Lsn(0x300_2000)),
            }]
        );
        assert!(w.gaps[0].to_string().contains("WAL up to 0/3002000"));
        assert_eq!(w.last, "000000010000000000000004");
        // Its hole is part of that gap, not a note about the newest WAL.
        let (index, partials) = index(&keys);
        assert!(hole_notes(&index, &partials, seg()).is_empty());
    }

    #[test]
    fn wal_follows_the_timeline_switch() {
        let plan = TimelinePlan::new(
            TimelineId(2),
            &TimelineHistory::parse("1\t0/4800000\tpromoted\n").unwrap(),
            seg(),
        );
        let mut keys = vec![
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004.partial",
            "000000010000000000000004.partial.d/00001000-00002000",
            "000000020000000000000004",
            "000000020000000000000005",
            "00000002.history",
        ];
        let w = walk(&keys, &Some(plan.clone()), 2);
        assert!(w.gaps.is_empty(), "{:?}", w.gaps);
        assert_eq!(w.last, "000000020000000000000005");
        keys.retain(|k| *k != "000000020000000000000004");
        let w = walk(&keys, &Some(plan), 2);
        assert_eq!(names(&w.gaps), ["000000020000000000000004"]);
    }
}
