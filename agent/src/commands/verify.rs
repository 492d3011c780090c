//! `pgagent verify [--backup ID] [--wal]`: is what a restore needs in the store, and intact?
//!
//! - Backups (all, or `--backup ID`): the manifest passes its checks, and every chunk it
//!   references exists and opens with the hash its name gives (the envelope's length and
//!   blake3 check, DESIGN.md "Object envelope").
//! - WAL: for each complete backup, every segment from its start to the newest segment in
//!   the store, on the timelines recovery follows (the newest history file, as
//!   [`crate::fetch::plan`] reads it), is present; with `--wal`, every WAL object is also
//!   downloaded and checked.
//!
//! Prints one line per problem and a summary; any problem is exit 1.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use pgagent_protocol::{
    history_file_name, segment_file_name, SegNo, TimelineHistory, TimelineId, WalFileName,
    WalSegmentSize,
};
use pgagent_storage::layout::{chunk_key, WAL_PREFIX};
use pgagent_storage::manifest::{BackupManifest, BackupStatus};
use pgagent_storage::{envelope, ObjectStore};

use crate::config::Config;
use crate::fetch::plan::TimelinePlan;
use crate::store::catalog;

/// Runs the checks and prints the report.
///
/// Errors: a problem was found (after the report), or the store cannot be read.
pub async fn run(cfg: &Config, backup: Option<&str>, wal: bool) -> anyhow::Result<()> {
    let (store, _cluster, seg) = crate::store::open_cluster(cfg).await?;
    let ids = match backup {
        Some(id) => vec![id.to_string()],
        None => catalog::backup_ids(store.as_ref()).await?,
    };
    let concurrency = cfg.raw.store.upload_concurrency;
    let mut problems = Vec::new();
    let mut manifests = Vec::new();
    for id in &ids {
        match catalog::get_manifest(store.as_ref(), id).await {
            Ok(Some(m)) => manifests.push(m),
            Ok(None) => problems.push(format!("backup {id}: no manifest")),
            Err(e) => problems.push(format!("backup {id}: {e:#}")),
        }
    }
    for m in &manifests {
        let found = check_backup(store.clone(), m, concurrency).await;
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
    let names: BTreeSet<String> = objects
        .iter()
        .filter_map(|o| o.key.strip_prefix(WAL_PREFIX).map(str::to_string))
        .collect();
    let plan = latest_plan(store.as_ref(), &names, seg).await?;
    for m in manifests
        .iter()
        .filter(|m| m.status == BackupStatus::Complete)
    {
        let (start, tli) = m.start()?;
        match wal_gaps(&names, &plan, tli, start.segment_number(seg), seg) {
            (last, gaps) if gaps.is_empty() => println!(
                "backup {}: WAL continuous from {} to {last}",
                m.id,
                segment_file_name(tli, start.segment_number(seg), seg)
            ),
            (_, gaps) => {
                for g in gaps {
                    problems.push(format!("backup {}: WAL gap: {g} is missing", m.id));
                }
            }
        }
    }
    if wal {
        let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
        let (checked, bad) = check_objects(store.clone(), keys, None, concurrency).await;
        println!("WAL: {checked} objects checked");
        problems.extend(bad);
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
    m: &BackupManifest,
    concurrency: usize,
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
    check_objects(store, keys, Some(&by_key), concurrency).await
}

/// Downloads and opens each object; a chunk must also hold the hash its key names.
async fn check_objects(
    store: Arc<dyn ObjectStore>,
    keys: Vec<String>,
    context: Option<&HashMap<String, String>>,
    concurrency: usize,
) -> (usize, Vec<String>) {
    let total = keys.len();
    let results: Vec<Option<String>> = futures::stream::iter(keys.into_iter().map(|key| {
        let store = store.clone();
        async move {
            let body = match store.get(&key).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => return Some((key, "missing".to_string())),
                Err(e) => return Some((key, e.to_string())),
            };
            let k = key.clone();
            let verdict = tokio::task::spawn_blocking(move || {
                let header = envelope::Header::parse(&body).map_err(|e| e.to_string())?;
                envelope::open(&body).map_err(|e| e.with_key(&k).to_string())?;
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
    names: &BTreeSet<String>,
    seg: WalSegmentSize,
) -> anyhow::Result<Option<TimelinePlan>> {
    let newest = names
        .iter()
        .filter_map(|n| match WalFileName::parse(n, seg) {
            Some(WalFileName::History(t)) => Some(t),
            _ => None,
        })
        .max();
    let Some(tli) = newest else { return Ok(None) };
    let key = format!("{WAL_PREFIX}{}", history_file_name(tli));
    let body = store.get(&key).await?;
    let text = envelope::open(&body).map_err(|e| e.with_key(&key))?;
    let history = TimelineHistory::parse(&String::from_utf8_lossy(&text))
        .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    Ok(Some(TimelinePlan::new(tli, &history, seg)))
}

/// Walks from segment `first` on `tli` to the newest segment in `names`, on the timelines
/// of `plan`; returns the last segment reached and the names missing on the way. A
/// `.partial` counts for the newest segment only.
pub fn wal_gaps(
    names: &BTreeSet<String>,
    plan: &Option<TimelinePlan>,
    tli: TimelineId,
    first: SegNo,
    seg: WalSegmentSize,
) -> (String, Vec<String>) {
    let mut newest: BTreeMap<TimelineId, SegNo> = BTreeMap::new();
    for n in names {
        if let Some(WalFileName::Segment { tli, segno } | WalFileName::Partial { tli, segno }) =
            WalFileName::parse(n, seg)
        {
            let e = newest.entry(tli).or_insert(segno);
            *e = (*e).max(segno);
        }
    }
    let timeline_for = |s: SegNo| match plan {
        Some(p) if p.contains(tli) => p.timeline_for(s, tli),
        _ => tli,
    };
    let end = newest.values().copied().max().unwrap_or(first);
    let mut gaps = Vec::new();
    let mut last = segment_file_name(tli, first, seg);
    let mut s = first;
    while s <= end {
        let t = timeline_for(s);
        let name = segment_file_name(t, s, seg);
        let is_last = newest.get(&t).is_some_and(|n| *n == s) && s == end;
        if names.contains(&name) || (is_last && names.contains(&format!("{name}.partial"))) {
            last = name;
        } else if newest.get(&t).is_some_and(|n| *n >= s) {
            gaps.push(name);
        } else {
            break;
        }
        s = SegNo(s.0 + 1);
    }
    (last, gaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn continuous_wal_and_a_gap() {
        let n = names(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000005",
            "000000010000000000000006.partial",
        ]);
        let (last, gaps) = wal_gaps(&n, &None, TimelineId(1), SegNo(2), seg());
        assert_eq!(gaps, ["000000010000000000000004"]);
        assert_eq!(last, "000000010000000000000006");
        let (_, gaps) = wal_gaps(&n, &None, TimelineId(1), SegNo(5), seg());
        assert!(gaps.is_empty());
    }

    #[test]
    fn wal_follows_the_timeline_switch() {
        let plan = TimelinePlan::new(
            TimelineId(2),
            &TimelineHistory::parse("1\t0/4800000\tpromoted\n").unwrap(),
            seg(),
        );
        let n = names(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004.partial",
            "000000020000000000000004",
            "000000020000000000000005",
            "00000002.history",
        ]);
        let (last, gaps) = wal_gaps(&n, &Some(plan.clone()), TimelineId(1), SegNo(2), seg());
        assert!(gaps.is_empty(), "{gaps:?}");
        assert_eq!(last, "000000020000000000000005");
        let mut broken = n.clone();
        broken.remove("000000020000000000000004");
        let (_, gaps) = wal_gaps(&broken, &Some(plan), TimelineId(1), SegNo(2), seg());
        assert_eq!(gaps, ["000000020000000000000004"]);
    }
}
