//! Agreement on one value among writers that share nothing but a store: how the writers that
//! find a store without `cluster.json` choose the one `cluster.json` they all write.
//!
//! A conditional PUT (`If-None-Match: *`) would decide it, but not every store enforces one
//! (Garage overwrites: the last write wins), and no timeout helps there: a PUT can land
//! after its writer gave up on it, a minute after every other writer has moved on. So the
//! decision is made only from what every writer can read back, and holds whatever order
//! PUTs land in, late ones included.
//!
//! The protocol is rounds of adopt-commit (E. Gafni, "Round-by-round fault detectors",
//! PODC 1998; J. Aspnes, "Notes on theory of distributed systems", the adopt-commit
//! object) on immutable objects, each written once by one participant:
//!
//! ```text
//! claims/<round>/a/<participant>   {"format_version":1,"value":…}                 phase A
//! claims/<round>/b/<participant>   {"format_version":1,"commit":true|false,"value":…}  phase B
//! ```
//!
//! In each round a participant (1) writes its preference to phase A and lists phase A;
//! (2) writes to phase B `commit` if every phase-A entry it saw holds its value, else
//! `adopt`, and lists phase B; (3) decides the value if every phase-B entry it saw is a
//! commit; else takes the value of a commit it saw; else (nobody commits in this round)
//! the value of the entry with the smallest participant id, so that writers who saw the
//! same entries agree in the next round.
//!
//! Why it is safe, given only that a LIST started after a PUT was acknowledged includes
//! that object (read-after-write listings: AWS S3 since December 2020, R2, Garage's quorum
//! reads, the `fs` backend; a participant checks that it sees its own entries):
//! - Of two participants, each writes then lists, so at least one of them sees the other's
//!   entry. Two commit entries of one round therefore hold the same value: the later lister
//!   would have seen the other value and written `adopt`.
//! - If `p` decides `v` in round `r`, every participant that lists phase B of round `r`
//!   sees a `commit v`: one that wrote phase B before `p` listed it is among the entries `p`
//!   saw (all commits of `v`), one that wrote after lists after `p` wrote. So everyone
//!   leaves round `r` preferring `v`, and from round `r + 1` every phase-A entry holds `v`.
//! - A participant that saw no commit in round `r` knows nobody commits in round `r` (its
//!   own `adopt` is seen by anyone listing after it, or it sees theirs), so its choice of
//!   the next preference cannot contradict a decision.
//! - A PUT that lands late, even after its participant gave up, is a participant that
//!   crashed after writing: nothing above depends on time, and no entry is ever
//!   overwritten with another content (a retried PUT writes the same bytes again).
//!
//! Entries are never deleted: a participant that is still in an old round must find them.
//! They are a few hundred bytes per writer that ever claimed the store, written once.
//! A store whose `cluster.json` was lost agrees again on the value decided before.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Op, StoreError};
use crate::layout::CLAIM_PREFIX;
use crate::object_store::ObjectStore;

/// Format version of the entries this build writes and reads.
pub const ENTRY_FORMAT_VERSION: u32 = 1;

/// Rounds a participant runs before it gives up ([`StoreError::Transient`]). Writers that
/// see the same entries agree in the round after they first differ; more rounds are only
/// needed while new writers keep arriving.
pub const MAX_ROUNDS: u32 = 32;

/// Phase-A entry: a participant's preference in one round.
#[derive(Debug, Serialize, Deserialize)]
struct Proposal<T> {
    format_version: u32,
    value: T,
}

/// Phase-B entry: the preference and whether the participant saw only that value in
/// phase A.
#[derive(Debug, Serialize, Deserialize)]
struct Vote<T> {
    format_version: u32,
    commit: bool,
    value: T,
}

/// Runs the protocol under [`CLAIM_PREFIX`] for a participant preferring `proposal`, and
/// returns the value every participant decides (the same for all of them, whatever each
/// proposed). Costs two PUTs and two listings a round, plus one GET per entry listed; one
/// round when nobody else takes part.
///
/// Errors: [`StoreError::Corrupt`] for an entry that does not parse or a store that breaks
/// the protocol's assumption (two commits of different values, or a listing that misses
/// the participant's own entry: reads that lag writes, [`StoreError::Transient`] then);
/// [`StoreError::Transient`] after [`MAX_ROUNDS`]; store errors.
pub async fn agree<T>(store: &dyn ObjectStore, proposal: T) -> Result<T, StoreError>
where
    T: Serialize + DeserializeOwned + PartialEq + Clone + Send + Sync,
{
    let me = participant_id();
    let mut preferred = proposal;
    for round in 1..=MAX_ROUNDS {
        let proposed = Proposal {
            format_version: ENTRY_FORMAT_VERSION,
            value: preferred.clone(),
        };
        write(store, &entry_key(round, 'a', &me), &proposed).await?;
        let seen: Vec<(String, Proposal<T>)> = read_phase(store, round, 'a', &me).await?;
        let commit = seen.iter().all(|(_, p)| p.value == preferred);
        let vote = Vote {
            format_version: ENTRY_FORMAT_VERSION,
            commit,
            value: preferred.clone(),
        };
        write(store, &entry_key(round, 'b', &me), &vote).await?;
        let votes: Vec<(String, Vote<T>)> = read_phase(store, round, 'b', &me).await?;
        match next(votes, round)? {
            Next::Decided(v) => return Ok(v),
            Next::Prefer(v) => preferred = v,
        }
        // Writers that keep seeing each other's different entries get apart in time.
        let pause = rand::random::<u64>() % (20 * u64::from(round.min(10)));
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
    Err(StoreError::Transient {
        key: CLAIM_PREFIX.to_string(),
        op: Op::List,
        detail: format!(
            "no agreement on cluster.json after {MAX_ROUNDS} rounds: writers kept starting \
             at the same time; try again"
        ),
        source: None,
    })
}

/// What a participant does after phase B of a round.
#[derive(Debug, PartialEq)]
enum Next<T> {
    /// Every vote seen is a commit of this value: decided.
    Decided(T),
    /// Go on to the next round preferring this value.
    Prefer(T),
}

/// The rule of step (3), on the phase-B entries seen (participant id, vote), the
/// participant's own among them. Pure, so it is tested on its own.
fn next<T: PartialEq + Clone>(
    votes: Vec<(String, Vote<T>)>,
    round: u32,
) -> Result<Next<T>, StoreError> {
    let mut commits = votes
        .iter()
        .filter(|(_, v)| v.commit)
        .map(|(_, v)| &v.value);
    if let Some(first) = commits.next() {
        if commits.any(|v| v != first) {
            return Err(StoreError::corrupt(
                &phase_prefix(round, 'b'),
                "two commits of different values in one round: the store's listings do not \
                 show every object written before them",
            ));
        }
        let all = votes.iter().all(|(_, v)| v.commit);
        let v = first.clone();
        return Ok(if all {
            Next::Decided(v)
        } else {
            Next::Prefer(v)
        });
    }
    let smallest = votes
        .into_iter()
        .min_by(|a, b| a.0.cmp(&b.0))
        .expect("the participant's own vote is among those seen");
    Ok(Next::Prefer(smallest.1.value))
}

/// A random participant id: 16 bytes in hex, as key ids are.
fn participant_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// `claims/<round, 4 digits>/<phase>/<participant>`.
fn entry_key(round: u32, phase: char, participant: &str) -> String {
    format!("{}{participant}", phase_prefix(round, phase))
}

fn phase_prefix(round: u32, phase: char) -> String {
    format!("{CLAIM_PREFIX}{round:04}/{phase}/")
}

async fn write<E: Serialize>(
    store: &dyn ObjectStore,
    key: &str,
    entry: &E,
) -> Result<(), StoreError> {
    let body = serde_json::to_vec(entry).expect("claim entries serialize");
    // Written once by its participant (a retry writes the same bytes): a plain PUT is right
    // on every store, conditional or not.
    store.put(key, Bytes::from(body)).await
}

/// Lists and reads every entry of one phase: (participant id, entry), in id order.
async fn read_phase<E: DeserializeOwned>(
    store: &dyn ObjectStore,
    round: u32,
    phase: char,
    me: &str,
) -> Result<Vec<(String, E)>, StoreError> {
    let prefix = phase_prefix(round, phase);
    let mut out = Vec::new();
    for meta in store.list(&prefix).await? {
        let Some(id) = meta.key.strip_prefix(&prefix) else {
            continue;
        };
        let body = match store.get(&meta.key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let entry = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .filter(|v| v["format_version"] == ENTRY_FORMAT_VERSION)
            .and_then(|v| serde_json::from_value::<E>(v).ok())
            .ok_or_else(|| StoreError::corrupt(&meta.key, "not a claim entry of this format"))?;
        out.push((id.to_string(), entry));
    }
    if !out.iter().any(|(id, _)| id == me) {
        return Err(StoreError::Transient {
            key: entry_key(round, phase, me),
            op: Op::List,
            detail: "the listing does not show this writer's own claim entry yet (listings \
                     lag writes); try again"
                .to_string(),
            source: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(commit: bool, value: u32) -> Vote<u32> {
        Vote {
            format_version: ENTRY_FORMAT_VERSION,
            commit,
            value,
        }
    }

    #[test]
    fn the_rule_after_phase_b() {
        let v = |id: &str, c, x| (id.to_string(), vote(c, x));
        // Only commits: decided.
        assert_eq!(
            next(vec![v("1", true, 7), v("2", true, 7)], 1).unwrap(),
            Next::Decided(7)
        );
        // A commit among adopts: take it, not decided yet.
        assert_eq!(
            next(vec![v("1", false, 3), v("2", true, 7)], 1).unwrap(),
            Next::Prefer(7)
        );
        // No commit: the smallest participant id's value, whatever the order listed.
        assert_eq!(
            next(vec![v("b", false, 3), v("a", false, 9)], 1).unwrap(),
            Next::Prefer(9)
        );
        // Two commits of different values cannot happen on a store that lists what was
        // written before: refused as corrupt rather than trusted.
        let e = next(vec![v("1", true, 3), v("2", true, 7)], 2).unwrap_err();
        assert!(e.is_corrupt(), "{e}");
    }

    #[tokio::test]
    async fn alone_it_decides_its_own_value_in_one_round() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::fs::FsStore::open(dir.path().to_path_buf())
            .await
            .unwrap();
        assert_eq!(agree(&store, 5u32).await.unwrap(), 5);
        // One more participant later agrees with the first whatever it proposes.
        assert_eq!(agree(&store, 6u32).await.unwrap(), 5);
        let written = store.list(CLAIM_PREFIX).await.unwrap();
        assert!(
            written.iter().all(|m| m.key.starts_with("claims/000")),
            "{written:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn participants_starting_together_decide_one_value() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let store = std::sync::Arc::new(
                crate::fs::FsStore::open(dir.path().to_path_buf())
                    .await
                    .unwrap(),
            );
            let runs: Vec<_> = (0..4u32)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move { agree(store.as_ref(), i).await.unwrap() })
                })
                .collect();
            let mut decided = Vec::new();
            for r in runs {
                decided.push(r.await.unwrap());
            }
            decided.dedup();
            assert_eq!(
                decided.len(),
                1,
                "participants decided differently: {decided:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_foreign_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::fs::FsStore::open(dir.path().to_path_buf())
            .await
            .unwrap();
        store
            .put(
                "claims/0001/a/zz",
                Bytes::from_static(b"{\"format_version\":9}"),
            )
            .await
            .unwrap();
        let e = agree(&store, 1u32).await.unwrap_err();
        assert!(
            e.is_corrupt() && e.to_string().contains("claims/0001/a/zz"),
            "{e}"
        );
    }
}
