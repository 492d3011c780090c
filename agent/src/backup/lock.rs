//! Keeping what a base backup depends on locked for as long as retention may keep it
//! (`store.lock`).
//!
//! Every object a store writes carries a lock of `lock_days` from its write
//! ([`LockPolicy`]). The chunks a backup uploads are therefore locked long enough; the
//! chunks it reuses were written by older backups and may be locked for less. Before a
//! backup's manifest is written with its files, each reused chunk (and, for an incremental
//! backup, every chunk and manifest of its ancestors) must be locked at least until
//! [`LockPolicy::guaranteed`] of the backup's start; one that is not is extended to a full
//! `lock_days` from now (`PutObjectRetention`).
//!
//! Which chunks need it is decided without a request for most of them: each manifest records
//! its [`LockClaim`], the date until which everything it depends on is locked, and a chunk
//! referenced by a manifest whose claim reaches far enough needs nothing. The others are
//! read (`HeadObject`) and extended when short. Extending to a full period while the need is
//! 7/8 of it means a chunk shared by daily backups is extended about every `lock_days / 8`
//! days, together with its neighbours, not by every backup.
//!
//! The claim this backup records is the earliest lock among everything it depends on, as
//! found or made here: never later than what the bucket holds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use anyhow::Context as _;
use pgagent_storage::layout::{backup_manifest_key, chunk_key};
use pgagent_storage::manifest::BackupManifest;
use pgagent_storage::{LockClaim, LockMode, LockPolicy, ObjectStore, Retention, StoreError};

use crate::retry::{self, Policy};
use crate::store::chain::Chains;
use crate::store::{catalog, Bucket};

/// For each chunk, the latest date until which some manifest's claim says it is locked in
/// a mode that holds `policy`'s.
pub fn claims<'a>(
    manifests: impl IntoIterator<Item = &'a BackupManifest>,
    policy: &LockPolicy,
) -> HashMap<&'a str, SystemTime> {
    let mut out: HashMap<&str, SystemTime> = HashMap::new();
    for m in manifests {
        let Some(until) = m
            .lock
            .as_ref()
            .filter(|c| c.covers_mode(policy.mode))
            .and_then(LockClaim::until)
        else {
            continue;
        };
        for c in m.chunk_hashes() {
            let e = out.entry(c).or_insert(until);
            *e = (*e).max(until);
        }
    }
    out
}

/// What a backup must do about the locks of the chunks it reuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Chunks no claim covers: their locks are read, and extended if short.
    pub check: Vec<String>,
    /// The earliest lock among the chunks a claim covers and the ones uploaded now; `None`
    /// when there are none.
    pub covered_until: Option<SystemTime>,
}

/// The plan for chunks `referenced`, of which `uploaded` were written by this backup
/// (locked until at least `uploaded_until`), given `claims`, for a backup that needs every
/// lock to last until `need`.
pub fn plan(
    referenced: &BTreeSet<&str>,
    uploaded: &HashSet<&str>,
    uploaded_until: SystemTime,
    claims: &HashMap<&str, SystemTime>,
    need: SystemTime,
) -> Plan {
    let mut check = Vec::new();
    let mut covered_until: Option<SystemTime> = None;
    let mut covered = |t: SystemTime| {
        covered_until = Some(covered_until.map_or(t, |c| c.min(t)));
    };
    for &c in referenced {
        if uploaded.contains(c) {
            covered(uploaded_until);
            continue;
        }
        match claims.get(c) {
            Some(&t) if t >= need => covered(t),
            _ => check.push(c.to_string()),
        }
    }
    Plan {
        check,
        covered_until,
    }
}

/// What [`secure`] did, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Secured {
    /// Objects read because no claim covered them.
    pub checked: usize,
    /// Objects whose lock was extended.
    pub extended: usize,
}

/// Makes every object `manifest` depends on in `bucket` locked at least until
/// [`LockPolicy::guaranteed`] of `started`, and records the claim in `manifest.lock`.
/// `before` is the set of chunks the store held when the backup was announced (the others
/// were uploaded by it, locked from their write). Does nothing on a store without a lock
/// policy.
///
/// Errors: a manifest of the store or an ancestor that cannot be read, or an object whose
/// lock cannot be read or extended (retried while transient): the backup must not be
/// recorded with a dependency that may be unlocked first.
pub async fn secure(
    bucket: &Bucket,
    manifest: &mut BackupManifest,
    before: &HashSet<String>,
    started: SystemTime,
    concurrency: usize,
) -> anyhow::Result<Secured> {
    let store = bucket.store.as_ref();
    let Some(policy) = store.lock_policy() else {
        return Ok(Secured::default());
    };
    let need = policy.guaranteed(started);
    let mut all = Vec::new();
    for id in catalog::backup_ids(store).await? {
        if id == manifest.id {
            continue;
        }
        if let Some(m) = catalog::get_manifest(store, bucket.cipher(), &id).await? {
            all.push(m);
        }
    }
    // The borrowed views end here, before the requests.
    let (p, mut keys) = {
        // The parent was read again after the announcement (`take::parent_still_there`).
        let chains = Chains::new(&all);
        let ancestors: Vec<&BackupManifest> = chains
            .ancestors(manifest)
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        let mut referenced: BTreeSet<&str> = manifest.chunk_hashes().collect();
        referenced.extend(ancestors.iter().flat_map(|a| a.chunk_hashes()));
        let uploaded: HashSet<&str> = manifest
            .chunk_hashes()
            .filter(|c| !before.contains(*c))
            .collect();
        let claims = claims(&all, &policy);
        let p = plan(
            &referenced,
            &uploaded,
            policy.retain_until(started),
            &claims,
            need,
        );
        let ancestor_keys: Vec<String> = ancestors
            .iter()
            .map(|a| backup_manifest_key(&a.id))
            .collect();
        (p, ancestor_keys)
    };
    keys.extend(p.check.iter().map(|c| chunk_key(c)));
    let mut results: Vec<(SystemTime, bool)> = Vec::with_capacity(keys.len());
    for batch in keys.chunks(concurrency.max(1)) {
        let held = futures::future::try_join_all(
            batch.iter().map(|k| hold_until(store, k, need, &policy)),
        )
        .await?;
        results.extend(held);
    }
    let done = Secured {
        checked: keys.len(),
        extended: results.iter().filter(|(_, e)| *e).count(),
    };
    let until = results
        .iter()
        .map(|(t, _)| *t)
        .chain(p.covered_until)
        .min()
        .unwrap_or(need);
    manifest.lock = Some(LockClaim {
        mode: policy.mode,
        until: humantime::format_rfc3339_seconds(until).to_string(),
    });
    Ok(done)
}

/// Makes `key` locked at least until `need`: reads its lock and, when it ends earlier,
/// extends it to a full period from now. Returns the lock it has then, and whether it was
/// extended. Transient errors are retried.
async fn hold_until(
    store: &dyn ObjectStore,
    key: &str,
    need: SystemTime,
    policy: &LockPolicy,
) -> anyhow::Result<(SystemTime, bool)> {
    let current = retried(|| store.retention(key))
        .await
        .with_context(|| format!("read the lock of {key}"))?;
    let holds = |r: &Retention| {
        r.until >= need && (r.mode == policy.mode || r.mode == LockMode::Compliance)
    };
    if let Some(r) = current.filter(holds) {
        return Ok((r.until, false));
    }
    let until = policy.retain_until(SystemTime::now());
    retried(|| store.extend_retention(key, until))
        .await
        .with_context(|| format!("extend the lock of {key}"))?;
    Ok((until, true))
}

/// `op` retried on transient store errors for at most [`LOCK_DEADLINE`].
async fn retried<T, F, Fut>(op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + LOCK_DEADLINE;
    retry::until(
        Policy::CHUNK,
        deadline,
        StoreError::is_transient,
        |_, _| {},
        op,
    )
    .await
    .map_err(|e| match e {
        retry::GaveUp::Permanent(e) | retry::GaveUp::Deadline(Some(e)) => anyhow::Error::new(e),
        retry::GaveUp::Deadline(None) => anyhow::anyhow!("no answer within {LOCK_DEADLINE:?}"),
    })
}

/// How long one object's lock requests are retried.
const LOCK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chain::tests::with_chunks;
    use std::time::Duration;

    fn day(n: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + n * 86_400)
    }

    fn backup(id: &str, chunks: &[&str], claim: Option<(LockMode, u64)>) -> BackupManifest {
        let mut m = with_chunks(BackupManifest::announced(id), chunks);
        m.lock = claim.map(|(mode, d)| LockClaim {
            mode,
            until: humantime::format_rfc3339_seconds(day(d)).to_string(),
        });
        m
    }

    const POLICY: LockPolicy = LockPolicy {
        mode: LockMode::Governance,
        days: 16,
    };

    #[test]
    fn a_chunk_is_covered_by_the_latest_claim_of_a_mode_that_holds() {
        let all = [
            backup("a", &["x", "y"], Some((LockMode::Governance, 20))),
            backup("b", &["y"], Some((LockMode::Compliance, 25))),
            backup("c", &["z"], None),
        ];
        let c = claims(&all, &POLICY);
        assert_eq!(c.get("x"), Some(&day(20)));
        assert_eq!(c.get("y"), Some(&day(25)));
        assert_eq!(
            c.get("z"),
            None,
            "a manifest without a claim covers nothing"
        );
        // A governance claim does not hold a compliance need.
        let strict = LockPolicy {
            mode: LockMode::Compliance,
            ..POLICY
        };
        let c = claims(&all, &strict);
        assert_eq!(c.get("x"), None);
        assert_eq!(c.get("y"), Some(&day(25)));
    }

    #[test]
    fn only_chunks_no_claim_covers_far_enough_are_checked() {
        let referenced: BTreeSet<&str> = ["new", "old", "shared", "stray"].into();
        let uploaded: HashSet<&str> = ["new"].into();
        let claims: HashMap<&str, SystemTime> = [("old", day(14)), ("shared", day(30))].into();
        let p = plan(&referenced, &uploaded, day(26), &claims, day(24));
        assert_eq!(
            p.check,
            ["old", "stray"],
            "old's claim ends before the need"
        );
        assert_eq!(
            p.covered_until,
            Some(day(26)),
            "the earliest of new (26) and shared (30)"
        );
        // Nothing reused, nothing checked.
        let p = plan(&["new"].into(), &uploaded, day(26), &claims, day(24));
        assert!(p.check.is_empty());
    }

    #[test]
    fn daily_backups_extend_a_shared_chunk_about_every_eighth_of_the_period() {
        // One chunk shared by a backup a day for 40 days: only claims decide, as the
        // store would answer the reads with what was extended.
        let mut lock_of_chunk = POLICY.retain_until(day(0));
        let mut extensions = 0;
        let mut manifests = vec![backup("d0", &["c"], Some((LockMode::Governance, 16)))];
        for d in 1..40u64 {
            let need = POLICY.guaranteed(day(d));
            let claims = claims(&manifests, &POLICY);
            let p = plan(&["c"].into(), &HashSet::new(), day(d), &claims, need);
            let until = if p.check.is_empty() {
                p.covered_until.unwrap()
            } else {
                if lock_of_chunk < need {
                    lock_of_chunk = POLICY.retain_until(day(d));
                    extensions += 1;
                }
                lock_of_chunk
            };
            assert!(
                until >= need,
                "day {d}: the backup's chunk is locked long enough"
            );
            let mut m = backup(&format!("d{d}"), &["c"], None);
            m.lock = Some(LockClaim {
                mode: POLICY.mode,
                until: humantime::format_rfc3339_seconds(until).to_string(),
            });
            manifests.push(m);
        }
        // 16 days, renewed when less than 14 remain: every 3rd day (39 days → 13).
        assert!((12..=14).contains(&extensions), "{extensions} extensions");
    }
}
