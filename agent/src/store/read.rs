//! Several stores read as one cluster: what restore, drill, fetch, list and verify read
//! when `[[stores]]` names more than one (or `--store NAME…` chose some).
//!
//! [`open_reading`] opens each store the configuration keeps (in `restore_priority`
//! order) with its requests counted on their own, reads each one's `cluster.json`, and
//! refuses (exit 3) stores that name different clusters (system identifier or segment
//! size) or, for an encrypted cluster, open to different master keys: one cluster has one
//! master key, so every copy of an object opens the same. The stores are then read as one
//! [`ReadSet`]: an object comes from the first store that has it, and is absent only when
//! every store says so. A store without `cluster.json` (empty, or a wrong URL) is an error
//! naming it: a store known lost is left out with `--store NAME…`.
//!
//! At the end of a restore or a drill, [`served_text`] says how much each store served,
//! and, when `--store` left stores out, [`wal_end_text`] says where the WAL in the stores
//! used ends (their RPO) and how far the others reach.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use pgagent_protocol::{Lsn, TimelineId, WalSegmentSize};
use pgagent_storage::cluster::{check_same_cluster, read_cluster, ClusterInfo};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::layout::WAL_PREFIX;
use pgagent_storage::{ObjectStore, ReadSet, RequestCounts, RequestTotals};

use super::wal::{legacy_lengths, WalIndex};
use super::{open_spec, Opened};
use crate::config::{Config, StoreSpec};
use crate::exit::Refused;
use crate::retry::Policy;
use crate::retrying_store::RetryingReads;

/// Whether `cfg` reads through a set of named stores ([`open_reading`]) rather than its
/// one store: several are kept, or `--store NAME` left some out (the report then says
/// what the ones used hold).
pub fn reads_a_set(cfg: &Config) -> bool {
    cfg.stores.len() > 1 || !cfg.left_out.is_empty()
}

/// The request counters of every store [`open_reading`] opened in this process, by name
/// (a store opened twice is there twice).
static OPENED: LazyLock<Mutex<Vec<Counted>>> = LazyLock::new(Mutex::default);

/// A store's name and the counters of its requests.
type Counted = (String, Arc<RequestCounts>);

/// The requests this process sent to each store it read as one of a set, by name in the
/// order first opened (empty when it read none): what the restore-mode fetch server logs
/// when it exits.
pub fn requests_by_store() -> Vec<(String, RequestTotals)> {
    let opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    let mut out: Vec<(String, RequestTotals)> = Vec::new();
    for (name, counts) in opened.iter() {
        let now = counts.totals();
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, t)) => *t = RequestTotals::from_fn(|op| t.get(op) + now.get(op)),
            None => out.push((name.clone(), now)),
        }
    }
    out
}

/// One store of a [`Reading`].
#[derive(Debug, Clone)]
pub struct ReadMember {
    /// Its `[[stores]]` name.
    pub name: String,
    /// The store, requests counted in `requests` (no retries).
    pub store: Arc<dyn ObjectStore>,
    /// The requests sent to this store, by operation.
    pub requests: Arc<RequestCounts>,
}

/// The stores a command reads, opened and checked to hold one cluster.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The stores read as one ([`ReadSet`], no retries), the cluster they hold, its
    /// segment size and the cipher of its objects.
    pub opened: Opened,
    /// Each store, in the order they are read.
    pub members: Vec<ReadMember>,
    set: Arc<ReadSet>,
}

/// What one store served a command, for its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRead {
    /// The store's name.
    pub name: String,
    /// Objects (or ranges) read from it.
    pub objects: u64,
    /// Bytes read from it, as stored (envelopes).
    pub bytes: u64,
    /// Requests sent to it, found or not, by operation.
    pub requests: RequestTotals,
}

impl Reading {
    /// What each store served so far, in read order.
    pub fn served(&self) -> Vec<StoreRead> {
        self.set
            .served()
            .into_iter()
            .zip(&self.members)
            .map(|(s, m)| StoreRead {
                name: s.name,
                objects: s.objects,
                bytes: s.bytes,
                requests: m.requests.totals(),
            })
            .collect()
    }

    /// The names of the stores read, in order.
    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }
}

/// Opens the stores `cfg` keeps (`cfg.stores`, in restore order) and checks that they hold
/// one cluster. `cluster.json` and `keys/` are read with transient errors retried for up to
/// `patience` (`None`: one attempt).
///
/// Errors: a store that cannot be opened or read, or holds no `cluster.json` (each names
/// the store and how to leave it out); [`Refused`] (exit 3) for stores naming different
/// clusters or opening to different master keys; as [`super::read_cipher`] for a store
/// whose encryption does not match the configuration.
pub async fn open_reading(cfg: &Config, patience: Option<Duration>) -> anyhow::Result<Reading> {
    let opened = futures::future::join_all(
        cfg.stores
            .iter()
            .map(|spec| open_member(cfg, spec, patience)),
    )
    .await;
    let mut members = Vec::new();
    let mut checked = Vec::new();
    for one in opened {
        let (member, c) = one?;
        members.push(member);
        checked.push(c);
    }
    check_one_cluster(&checked).map_err(Refused)?;
    let Some(first) = checked.into_iter().next() else {
        anyhow::bail!("no store to read: the configuration keeps none");
    };
    let seg = WalSegmentSize::new(first.cluster.wal_segment_size)
        .map_err(|e| anyhow::anyhow!("store {}: cluster.json: {e}", first.name))?;
    let set = Arc::new(ReadSet::new(
        members
            .iter()
            .map(|m| (m.name.clone(), m.store.clone()))
            .collect(),
    )?);
    Ok(Reading {
        opened: Opened {
            store: set.clone(),
            cluster: first.cluster,
            seg,
            cipher: first.cipher,
        },
        members,
        set,
    })
}

/// What [`check_one_cluster`] compares of one store.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The store's name.
    pub name: String,
    /// Its `cluster.json`.
    pub cluster: ClusterInfo,
    /// The cipher its keys opened (`None`: plaintext).
    pub cipher: Option<ObjectCipher>,
}

/// Opens one store and reads its cluster and cipher.
async fn open_member(
    cfg: &Config,
    spec: &StoreSpec,
    patience: Option<Duration>,
) -> anyhow::Result<(ReadMember, Checked)> {
    let requests = Arc::new(RequestCounts::new());
    let name = &spec.name;
    OPENED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((name.clone(), requests.clone()));
    let store = open_spec(spec, requests.clone())
        .await
        .map_err(|e| anyhow::anyhow!("store {name}: {e}{}", leave_out_hint(cfg, name)))?;
    let reader = match patience {
        Some(t) => RetryingReads::wrap(store.clone(), Policy::CHUNK, t, "fetch.timeout"),
        None => store.clone(),
    };
    let cluster = read_cluster(reader.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("store {name}: {e}{}", leave_out_hint(cfg, name)))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "store {name} ({}) holds no cluster.json: nothing of this cluster is there \
                 (a store lost or never filled){}",
                store.describe(),
                leave_out_hint(cfg, name)
            )
        })?;
    let cipher = super::read_cipher(reader.as_ref(), cfg)
        .await
        .map_err(|e| e.context(format!("store {name}")))?;
    let member = ReadMember {
        name: name.clone(),
        store,
        requests,
    };
    let checked = Checked {
        name: name.clone(),
        cluster,
        cipher,
    };
    Ok((member, checked))
}

/// How to read without store `name`: `--store` naming the others (empty when there are
/// none).
fn leave_out_hint(cfg: &Config, name: &str) -> String {
    let others: Vec<&str> = cfg
        .stores
        .iter()
        .filter(|s| s.name != name)
        .map(|s| s.name.as_str())
        .collect();
    if others.is_empty() {
        return String::new();
    }
    format!("; to read without it: --store {}", others.join(" --store "))
}

/// Checks that the stores hold one cluster: the same system identifier and segment size
/// in each `cluster.json`, and, when encrypted, the same master key (compared by key
/// check).
///
/// Errors: what differs, naming the first store and the one that differs.
pub fn check_one_cluster(stores: &[Checked]) -> Result<(), String> {
    let Some((first, rest)) = stores.split_first() else {
        return Ok(());
    };
    for other in rest {
        if let Err(e) = check_same_cluster(&other.cluster, &first.cluster) {
            return Err(format!(
                "stores {} and {} hold different clusters ({e}): one configuration reads \
                 one cluster; fix the url of the wrong one, or leave it out with --store",
                first.name, other.name
            ));
        }
        let check = |c: &Checked| c.cipher.as_ref().map(ObjectCipher::key_check);
        if check(first) != check(other) {
            return Err(format!(
                "stores {} and {} do not open to the same master key (key check {} in {}, \
                 {} in {}): the copies of one cluster share one master key",
                first.name,
                other.name,
                check(first).unwrap_or_else(|| "none".into()),
                first.name,
                check(other).unwrap_or_else(|| "none".into()),
                other.name
            ));
        }
    }
    Ok(())
}

/// `read 1.2 GiB from nas (99.6 %, 1200 objects, 1210 requests), 4.1 MiB from r2 (0.4 %,
/// 5 objects, 40 requests)`: how much each store served, as stored, in read order.
pub fn served_text(reads: &[StoreRead]) -> String {
    let total: u64 = reads.iter().map(|r| r.bytes).sum();
    let parts: Vec<String> = reads
        .iter()
        .map(|r| {
            let share = if total == 0 {
                String::new()
            } else {
                format!("{:.1} %, ", r.bytes as f64 * 100.0 / total as f64)
            };
            format!(
                "{} from {} ({share}{} objects, {} requests)",
                bytesize::ByteSize(r.bytes),
                r.name,
                r.objects,
                r.requests.total()
            )
        })
        .collect();
    format!("read {}", parts.join(", "))
}

/// Where the newest WAL of a store ends: `Ok(None)` for a store without WAL, `Err` for one
/// that could not be read (why).
pub type WalEnd = Result<Option<(TimelineId, Lsn)>, String>;

/// The end of the newest WAL in `store` (complete segments, or a segment held only as
/// pieces; [`WalIndex::newest_end`]); `None` for a store without WAL.
///
/// Errors: the store's.
pub async fn wal_end(
    store: &dyn ObjectStore,
    seg: WalSegmentSize,
) -> anyhow::Result<Option<(TimelineId, Lsn)>> {
    let listed = store.list(WAL_PREFIX).await?;
    let index = WalIndex::from_listing(&listed, seg);
    let (legacy, _) = legacy_lengths(store, &index.legacy_to_read(), seg).await?;
    Ok(index.newest_end(&index.partial_segments(&legacy, seg), seg))
}

/// How long the end of a left-out store's WAL is waited for: such a store may be the lost
/// one.
pub const LEFT_OUT_WAIT: Duration = Duration::from_secs(10);

/// The end of the WAL in each store `cfg` left out (`cfg.left_out`), each read once
/// within [`LEFT_OUT_WAIT`].
pub async fn left_out_ends(cfg: &Config, seg: WalSegmentSize) -> Vec<(String, WalEnd)> {
    futures::future::join_all(cfg.left_out.iter().map(|spec| left_out_end(spec, seg))).await
}

/// The end of the WAL in one store left out, within [`LEFT_OUT_WAIT`].
async fn left_out_end(spec: &StoreSpec, seg: WalSegmentSize) -> (String, WalEnd) {
    let read = async {
        let store = open_spec(spec, Arc::new(RequestCounts::new())).await?;
        wal_end(store.as_ref(), seg).await
    };
    let end = match tokio::time::timeout(LEFT_OUT_WAIT, read).await {
        Ok(Ok(end)) => Ok(end),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!("no answer within {LEFT_OUT_WAIT:?}")),
    };
    (spec.name.clone(), end)
}

/// The RPO of the stores used, as the report states it: where their WAL ends, and how the
/// end in each store left out compares (`others`), e.g. `WAL in far ends at 0/5000100
/// (timeline 1); nas (not used): ends at 0/6000000 (timeline 1), 16.0 MiB further`.
pub fn wal_end_text(used: &[String], end: &WalEnd, others: &[(String, WalEnd)]) -> String {
    let used = used.join(", ");
    let mut out = match end {
        Ok(Some((tli, lsn))) => format!("WAL in {used} ends at {lsn} (timeline {})", tli.0),
        Ok(None) => format!("{used} hold no WAL"),
        Err(e) => format!("the end of the WAL in {used} is unknown: {e}"),
    };
    for (name, other) in others {
        let said = match (end, other) {
            (_, Err(e)) => format!("not reachable to compare ({e})"),
            (_, Ok(None)) => "holds no WAL".to_string(),
            (Ok(Some((tli, lsn))), Ok(Some((otli, olsn)))) if tli == otli => {
                let (a, b) = (lsn.0, olsn.0);
                let how = if b > a {
                    format!("{} further", bytesize::ByteSize(b - a))
                } else if b < a {
                    format!("{} behind", bytesize::ByteSize(a - b))
                } else {
                    "the same".to_string()
                };
                format!("ends at {olsn} (timeline {}), {how}", otli.0)
            }
            (_, Ok(Some((otli, olsn)))) => format!("ends at {olsn} (timeline {})", otli.0),
        };
        out.push_str(&format!("; {name} (not used): {said}"));
    }
    out
}

#[cfg(test)]
#[path = "read_tests.rs"]
mod tests;
