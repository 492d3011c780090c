//! The stores one base backup goes to, and what became of it in each.
//!
//! The server is read once; every store gets the chunks it lacks and a manifest of its own,
//! `complete` once that store holds the chunks and the WAL from the start to the stop LSN.
//! A store that cannot be reached, or fails on the way, drops out of this backup and the
//! others go on ([`StoreOutcome`]). Only a store of another cluster (exit 3) or one the
//! configuration cannot open (exit 2) stops the backup for all of them, before the server
//! is read: that is a configuration to fix, not an outage to ride out.
//!
//! The backup [`succeeded`](BackupOutcome::succeeded) when every required store holds it
//! complete (when no required store was asked for, every async store); an async store that
//! failed is reported, and gets the next backup: the chunks it lacks go to it then.

use std::collections::HashSet;

use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::manifest::{BackupManifest, BackupStatus};

use crate::config::{Config, StoreSpec};
use crate::server::ServerInfo;
use crate::store::write::claim_every;
use crate::store::Bucket;

/// One store the backup is going to.
#[derive(Debug)]
pub struct Target {
    /// The store's configuration.
    pub spec: StoreSpec,
    /// The store, claimed for the server's cluster, and its cipher.
    pub bucket: Bucket,
    /// The chunks it holds (filled in once the backup is announced there).
    pub known: HashSet<String>,
}

/// What became of the backup in one store.
#[derive(Debug)]
pub struct StoreOutcome {
    /// The store's name.
    pub name: String,
    /// Whether the store is required (else async).
    pub required: bool,
    /// The manifest written there (`complete`, or `running` when the WAL did not arrive in
    /// time), or why the backup did not reach that store.
    pub result: anyhow::Result<BackupManifest>,
}

impl StoreOutcome {
    /// Whether the store holds the backup complete.
    pub fn is_complete(&self) -> bool {
        matches!(&self.result, Ok(m) if m.status == BackupStatus::Complete)
    }

    /// A failed outcome for `spec`.
    pub fn failed(spec: &StoreSpec, e: anyhow::Error) -> StoreOutcome {
        StoreOutcome {
            name: spec.name.clone(),
            required: spec.is_required(),
            result: Err(e),
        }
    }
}

/// One base backup across its stores.
#[derive(Debug)]
pub struct BackupOutcome {
    /// The backup's id (the same in every store).
    pub id: String,
    /// One entry per store asked for, in restore order.
    pub stores: Vec<StoreOutcome>,
    /// Why the backup is full although `backup.incremental` is on, and what exactly.
    pub fallback: Option<(super::parent::FallbackReason, String)>,
}

impl BackupOutcome {
    /// Whether the backup is complete where it must be: in every required store asked for,
    /// or, when none was, in every store asked for.
    pub fn succeeded(&self) -> bool {
        let required: Vec<&StoreOutcome> = self.stores.iter().filter(|s| s.required).collect();
        let judged = if required.is_empty() {
            self.stores.iter().collect()
        } else {
            required
        };
        !judged.is_empty() && judged.iter().all(|s| s.is_complete())
    }

    /// The manifest of the first store (in restore order) holding the backup complete.
    pub fn complete_manifest(&self) -> Option<&BackupManifest> {
        self.stores
            .iter()
            .filter(|s| s.is_complete())
            .find_map(|s| s.result.as_ref().ok())
    }
}

/// What identifies a store's cipher: its key check (`None`: plaintext). Stores that agree
/// on it name chunks alike and open each other's sealed bytes.
fn cipher_id(cipher: Option<&ObjectCipher>) -> Option<String> {
    cipher.map(ObjectCipher::key_check)
}

/// Opens and claims each of `specs` for the server's cluster, all at once. Returns the
/// stores that can take the backup and the outcomes of those that cannot: unreachable
/// (after [`crate::store::CLAIM_RETRY`]), or sealed with another master key than the
/// first claimed store (in the order of `specs`) — a backup's chunk names and sealed bytes
/// are the same in every store.
///
/// Errors: a store of another cluster ([`crate::exit::Refused`], exit 3), or one whose
/// encryption does not match the configuration (exit 2), before anything is written.
pub async fn claim_all(
    cfg: &Config,
    specs: &[StoreSpec],
    server: &ServerInfo,
) -> anyhow::Result<(Vec<Target>, Vec<StoreOutcome>)> {
    let mut targets: Vec<Target> = Vec::new();
    let mut failed = Vec::new();
    for (spec, claimed) in claim_every(cfg, specs, server).await? {
        let bucket = match claimed {
            Ok(b) => b,
            Err(e) => {
                failed.push(StoreOutcome::failed(&spec, e));
                continue;
            }
        };
        if let Some(first) = targets.first() {
            if cipher_id(first.bucket.cipher()) != cipher_id(bucket.cipher()) {
                let e = anyhow::anyhow!(
                    "store {} is not sealed with the master key of store {}: the stores of a \
                     cluster share one master key (an encrypted cluster's stores open with the \
                     same key, a plaintext cluster's stores are all plaintext)",
                    spec.name,
                    first.spec.name
                );
                failed.push(StoreOutcome::failed(&spec, e));
                continue;
            }
        }
        targets.push(Target {
            spec,
            bucket,
            known: HashSet::new(),
        });
    }
    Ok((targets, failed))
}

/// The chunks every one of `targets` holds: those need not be sent to any store.
pub fn held_by_all(targets: &[Target]) -> HashSet<String> {
    let mut it = targets.iter();
    let Some(first) = it.next() else {
        return HashSet::new();
    };
    let mut all = first.known.clone();
    for t in it {
        all.retain(|h| t.known.contains(h));
    }
    all
}

/// `outcomes` in the order of `specs` (restore order).
pub fn in_order(specs: &[StoreSpec], mut outcomes: Vec<StoreOutcome>) -> Vec<StoreOutcome> {
    outcomes.sort_by_key(|o| specs.iter().position(|s| s.name == o.name));
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &str, required: bool, status: Option<BackupStatus>) -> StoreOutcome {
        StoreOutcome {
            name: name.into(),
            required,
            result: match status {
                Some(status) => Ok(BackupManifest {
                    status,
                    ..BackupManifest::announced("b")
                }),
                None => Err(anyhow::anyhow!("down")),
            },
        }
    }

    #[test]
    fn success_is_complete_in_every_required_store() {
        use BackupStatus::*;
        let o = |stores| BackupOutcome {
            id: "b".into(),
            stores,
            fallback: None,
        };
        // The async store failing does not fail the backup.
        assert!(o(vec![
            outcome("nas", true, Some(Complete)),
            outcome("r2", false, None)
        ])
        .succeeded());
        // A required store failing, or left running, does.
        assert!(!o(vec![
            outcome("nas", true, None),
            outcome("r2", false, Some(Complete))
        ])
        .succeeded());
        assert!(!o(vec![
            outcome("nas", true, Some(Running)),
            outcome("b", true, Some(Complete))
        ])
        .succeeded());
        // Only async stores asked for (a schedule of their own): each must be complete.
        assert!(o(vec![outcome("r2", false, Some(Complete))]).succeeded());
        assert!(!o(vec![outcome("r2", false, None)]).succeeded());
        assert!(!o(vec![]).succeeded());
        let two = o(vec![
            outcome("nas", true, None),
            outcome("r2", false, Some(Complete)),
        ]);
        assert_eq!(two.complete_manifest().map(|m| m.id.as_str()), Some("b"));
    }
}
