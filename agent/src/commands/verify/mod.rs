//! `pgagent verify [--backup ID] [--wal]`: is what a restore needs in the store, and intact?
//!
//! - Backups (all, or `--backup ID` and the backups it was taken against, down to its full
//!   backup: what a restore of it reads): the manifest passes its checks, and every chunk
//!   it references exists and opens with the hash its name gives (the envelope's length and
//!   blake3 check, DESIGN.md "Object envelope").
//! - Chains: an incremental backup's link to its parent holds ([`crate::store::chain`]: the
//!   parent is in the store and complete, of the same cluster, major version and block
//!   geometry, its root and depth follow, and it stopped before the child started).
//! - Files: the stored files are those PostgreSQL's own `backup_manifest` of the backup
//!   lists, with its sizes and CRC-32C checksums, and an `INCREMENTAL.*` file's header
//!   agrees with its length ([`files`]). The CRC-32C is taken in the pass that checks the
//!   chunks' hashes: no chunk is downloaded twice.
//! - WAL: for each complete backup, every segment from its start to the newest segment in
//!   the store, on the timelines recovery follows (the newest history file, as
//!   [`crate::fetch::plan`] reads it), is present; the newest segment may be held only as
//!   partial pieces (deltas, or a `.partial` object in a store written before deltas), and
//!   the WAL reaches their assembled end ([`crate::store::wal`]). With `--wal`, every WAL
//!   object (deltas included) is also downloaded and checked, and the pieces of each
//!   segment must agree where they overlap ([`crate::store::overlaps`]).
//!
//! - Locks: in a store that locks what it writes (or whose objects carry locks), each
//!   restorable backup's horizon — "restorable at least until …" — from the retention of
//!   every object a restore of it reads (`verify/horizon.rs`); with `--as-of TIME` every check reads
//!   the versions current then, as a restore as of that time does.
//!
//! Prints one line per problem and a summary; any problem is exit 1.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use pgagent_protocol::{segment_file_name, TimelineHistory, WalSegmentSize};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::deltas::Delta;
use pgagent_storage::layout::{chunk_key, history_key, WAL_PREFIX};
use pgagent_storage::manifest::{BackupManifest, BackupStatus};
use pgagent_storage::{envelope, ObjectStore};

pub mod files;
mod horizon;
mod wal;

pub use wal::{hole_notes, wal_gaps, Gap, Walk};

use crate::pg_manifest::parse_pg_manifest;
use files::{check_files, header_need, is_incremental, Digest, Stored};

use crate::config::Config;
use crate::fetch::plan::TimelinePlan;
use crate::store::chain::Chains;
use crate::store::wal::{legacy_lengths, WalIndex};
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
    let concurrency = cfg.store().upload_concurrency;
    let mut problems = Vec::new();
    let manifests = match backup {
        Some(id) => chain_manifests(store.as_ref(), cipher.as_ref(), id, &mut problems).await,
        None => {
            let mut all = Vec::new();
            for id in catalog::backup_ids(store.as_ref()).await? {
                match catalog::get_manifest(store.as_ref(), cipher.as_ref(), &id).await {
                    Ok(Some(m)) => all.push(m),
                    Ok(None) => problems.push(format!("backup {id}: no manifest")),
                    Err(e) => problems.push(format!("backup {id}: {e:#}")),
                }
            }
            all
        }
    };
    let chains = Chains::new(&manifests);
    for m in &manifests {
        let mut found = check_backup(store.clone(), &cipher, m, concurrency, seg).await;
        if let Err(broken) = chains.link(m) {
            found
                .problems
                .push(format!("backup {}: chain: {broken}", m.id));
        }
        let against = match found.files {
            Some(n) => format!("{n} files checked against PostgreSQL's backup_manifest, "),
            None => String::new(),
        };
        println!(
            "backup {}: {} chunks checked, {against}{}",
            m.id,
            found.chunks,
            if found.problems.is_empty() {
                "all intact".to_string()
            } else {
                format!("{} problems", found.problems.len())
            }
        );
        problems.extend(found.problems);
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
    lock_horizons(
        store.as_ref(),
        &manifests,
        &chains,
        &index,
        seg,
        concurrency,
        &mut problems,
    )
    .await?;
    if wal {
        let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
        let (checked, bad, _) =
            check_objects(store.clone(), &cipher, keys, None, None, concurrency, seg).await;
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

/// Prints each restorable backup's lock horizon, in a store that locks what it writes or
/// whose objects carry locks (the first manifest's tells); an object without a lock is a
/// problem when `store.lock` is on, a note otherwise.
///
/// Errors: a lock that cannot be read.
async fn lock_horizons(
    store: &dyn ObjectStore,
    manifests: &[BackupManifest],
    chains: &Chains<'_>,
    index: &WalIndex,
    seg: WalSegmentSize,
    concurrency: usize,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let configured = store.lock_policy().is_some();
    let Some(first) = manifests.first() else {
        return Ok(());
    };
    let key = pgagent_storage::layout::backup_manifest_key(&first.id);
    let carries = matches!(store.retention(&key).await, Ok(Some(_)));
    if !configured && !carries {
        return Ok(());
    }
    let now = std::time::SystemTime::now();
    for m in manifests.iter().filter(|m| chains.restorable(m)) {
        let chain = chains.chain(m).unwrap_or_else(|_| vec![m]);
        let keys = horizon::needed_keys(m, &chain, index, seg);
        let locks = horizon::locks_of(store, keys, concurrency).await?;
        match horizon::Horizon::of(&locks, now) {
            Some(horizon::Horizon::Until(t)) => println!(
                "backup {}: restorable at least until {} (every one of its {} objects is \
                 locked until then)",
                m.id,
                humantime::format_rfc3339_seconds(t),
                locks.len()
            ),
            Some(horizon::Horizon::Unlocked { some, count }) => {
                let text = format!(
                    "backup {}: {count} of the {} objects a restore of it reads carry no lock \
                     or one that has ended, e.g. {}",
                    m.id,
                    locks.len(),
                    some.join(", ")
                );
                if configured {
                    problems.push(text);
                } else {
                    println!("NOTE {text}");
                }
            }
            None => {}
        }
    }
    Ok(())
}

/// The manifest of backup `id` and of each backup down its chain that the store holds,
/// `id` first; a manifest missing or unreadable is added to `problems` (a missing parent
/// is the chain check's to report).
async fn chain_manifests(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    id: &str,
    problems: &mut Vec<String>,
) -> Vec<BackupManifest> {
    let mut out: Vec<BackupManifest> = Vec::new();
    let mut next = Some(id.to_string());
    while let Some(id) = next.take() {
        if out.iter().any(|m| m.id == id) {
            break;
        }
        match catalog::get_manifest(store, cipher, &id).await {
            Ok(Some(m)) => {
                next = m.parent.clone();
                out.push(m);
            }
            Ok(None) if out.is_empty() => problems.push(format!("backup {id}: no manifest")),
            Ok(None) => {}
            Err(e) => problems.push(format!("backup {id}: {e:#}")),
        }
    }
    out
}

/// What [`check_backup`] found.
struct BackupCheck {
    /// Chunks checked.
    chunks: usize,
    /// Files checked against PostgreSQL's `backup_manifest`, when the backup has one that
    /// could be read.
    files: Option<usize>,
    /// Problems, one line each.
    problems: Vec<String>,
}

/// Checks every chunk of `m` once, and its files against PostgreSQL's `backup_manifest`
/// with the CRC-32C taken in the same pass.
async fn check_backup(
    store: Arc<dyn ObjectStore>,
    cipher: &Option<ObjectCipher>,
    m: &BackupManifest,
    concurrency: usize,
    seg: WalSegmentSize,
) -> BackupCheck {
    if let Err(e) = m.check() {
        return BackupCheck {
            chunks: 0,
            files: None,
            problems: vec![format!("backup {}: {e}", m.id)],
        };
    }
    let mut users: HashMap<&str, &str> = HashMap::new();
    for f in m.entries() {
        for c in &f.chunks {
            users.entry(c.as_str()).or_insert(f.path.as_str());
        }
    }
    let keys: Vec<String> = users.keys().map(|h| chunk_key(h)).collect();
    let by_key: HashMap<String, String> = users
        .iter()
        .map(|(h, p)| (chunk_key(h), format!("backup {} file {p}", m.id)))
        .collect();
    // Kept beside the digests: PostgreSQL's manifest whole, the start of incremental files.
    let segment_blocks = m.segment_blocks.unwrap_or(131_072);
    let mut keep: HashMap<String, Keep> = HashMap::new();
    for f in m.files.iter().filter(|f| is_incremental(&f.path)) {
        if let Some(first) = f.chunks.first() {
            keep.insert(chunk_key(first), Keep::Head(segment_blocks));
        }
    }
    for c in m.pg_manifest.iter().flat_map(|f| &f.chunks) {
        keep.insert(chunk_key(c), Keep::All);
    }
    let (chunks, mut problems, read) = check_objects(
        store.clone(),
        cipher,
        keys,
        Some(&by_key),
        Some(&keep),
        concurrency,
        seg,
    )
    .await;
    let files = match against_pg_manifest(store.as_ref(), cipher.as_ref(), m, read).await {
        Ok(Some(found)) => {
            problems.extend(found.1);
            Some(found.0)
        }
        Ok(None) => None,
        Err(e) => {
            problems.push(format!("backup {} file backup_manifest: {e:#}", m.id));
            None
        }
    };
    BackupCheck {
        chunks,
        files,
        problems,
    }
}

/// Checks the files of `m` against PostgreSQL's `backup_manifest` from what the chunk pass
/// `read`; returns the number of files the server listed and the problems. `None` when
/// the backup has no such manifest, or a chunk of it could not be read (a problem already
/// reported).
///
/// Errors: the manifest is not PostgreSQL's JSON, or the start of an incremental file whose
/// header runs past its first chunk cannot be read.
async fn against_pg_manifest(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    m: &BackupManifest,
    read: HashMap<String, Read>,
) -> anyhow::Result<Option<(usize, Vec<String>)>> {
    let Some(entry) = &m.pg_manifest else {
        println!(
            "NOTE backup {}: no backup_manifest from the server to check its files against",
            m.id
        );
        return Ok(None);
    };
    let mut text = Vec::with_capacity(entry.size as usize);
    for c in &entry.chunks {
        match read.get(&chunk_key(c)).and_then(|r| r.kept.as_ref()) {
            Some(bytes) => text.extend_from_slice(bytes),
            None => return Ok(None),
        }
    }
    let listed = parse_pg_manifest(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let segment_blocks = m.segment_blocks.unwrap_or(131_072);
    let mut heads = HashMap::new();
    for f in m.files.iter().filter(|f| is_incremental(&f.path)) {
        let Some(mut head) = f
            .chunks
            .first()
            .and_then(|c| read.get(&chunk_key(c)))
            .and_then(|r| r.kept.clone())
        else {
            continue;
        };
        // Block numbers past the first chunk (more than a chunk of them): rare, read on.
        for c in f.chunks.iter().skip(1) {
            let need = header_need(&head, segment_blocks);
            if head.len() >= need {
                break;
            }
            let key = chunk_key(c);
            let raw = envelope::open_for(&store.get(&key).await?, cipher, &key)?;
            head.extend_from_slice(&raw[..raw.len().min(need - head.len())]);
        }
        heads.insert(f.path.clone(), head);
    }
    let digests: HashMap<String, Digest> = read
        .into_iter()
        .filter_map(|(key, r)| Some((key.rsplit('/').next()?.to_string(), r.digest)))
        .collect();
    let stored = Stored {
        manifest: m,
        chunks: &digests,
        heads: &heads,
    };
    Ok(Some((listed.len(), check_files(&stored, &listed))))
}

/// What the chunk pass keeps of a chunk's raw bytes beside its digest.
#[derive(Debug, Clone, Copy)]
enum Keep {
    /// Every byte (PostgreSQL's `backup_manifest`).
    All,
    /// What the header of an incremental file starting with this chunk needs, with
    /// segments of this many blocks ([`header_need`]).
    Head(u32),
}

/// One object of the pass: its key and what was read of it, or its key and what is wrong.
type Outcome = Result<(String, Option<Read>), (String, String)>;

/// One object the pass read: its digest and the bytes kept of it.
#[derive(Debug)]
struct Read {
    digest: Digest,
    kept: Option<Vec<u8>>,
}

/// Downloads and opens each object (with `cipher`, `None` for a plaintext store, so an
/// encrypted object is authenticated under its own name); a chunk must also hold the hash
/// its key names, and a delta (of a cluster with `seg`-byte segments) as many bytes as its
/// key says. With `keep`, also returns each object read intact with its [`Digest`] and
/// what `keep` says to keep of its bytes.
async fn check_objects(
    store: Arc<dyn ObjectStore>,
    cipher: &Option<ObjectCipher>,
    keys: Vec<String>,
    context: Option<&HashMap<String, String>>,
    keep: Option<&HashMap<String, Keep>>,
    concurrency: usize,
    seg: WalSegmentSize,
) -> (usize, Vec<String>, HashMap<String, Read>) {
    let total = keys.len();
    let digests = keep.is_some();
    let results: Vec<Outcome> = futures::stream::iter(keys.into_iter().map(|key| {
        let store = store.clone();
        let cipher = cipher.clone();
        let keep = keep.and_then(|k| k.get(&key)).copied();
        async move {
            let body = match store.get(&key).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => return Err((key, "missing".to_string())),
                Err(e) => return Err((key, e.to_string())),
            };
            let k = key.clone();
            let verdict = tokio::task::spawn_blocking(move || {
                let header = envelope::Header::parse(&body).map_err(|e| e.to_string())?;
                let raw =
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
                if let Some(name) = k.rsplit('/').next() {
                    if k.starts_with("chunks/") && header.hash.to_hex().as_str() != name {
                        return Err(format!("holds content of hash {}", header.hash.to_hex()));
                    }
                }
                Ok(digests.then(|| Read {
                    digest: Digest::of(&raw),
                    kept: match keep {
                        Some(Keep::All) => Some(raw),
                        Some(Keep::Head(blocks)) => {
                            Some(raw[..raw.len().min(header_need(&raw, blocks))].to_vec())
                        }
                        None => None,
                    },
                }))
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            verdict.map(|r| (key.clone(), r)).map_err(|e| (key, e))
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .collect()
    .await;
    let mut problems = Vec::new();
    let mut read = HashMap::new();
    for r in results {
        match r {
            Ok((key, Some(r))) => {
                read.insert(key, r);
            }
            Ok((_, None)) => {}
            Err((key, why)) => problems.push(match context.and_then(|c| c.get(&key)) {
                Some(ctx) => format!("{ctx}: {key}: {why}"),
                None => format!("{key}: {why}"),
            }),
        }
    }
    (total, problems, read)
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
