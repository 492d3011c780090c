//! The chain an incremental backup is restored from: its manifest, its parent's, and so on
//! down to the full backup, loaded and checked before anything is written.
//!
//! The links are checked as pg_combinebackup checks the directories it is given
//! (`check_control_files` and `check_backup_label_files` in
//! `src/bin/pg_combinebackup/pg_combinebackup.c`, labels read as `backup_label.c` reads
//! them), plus what the manifests say of each other:
//!
//! - every link exists and is `complete`, and passes [`BackupManifest::check`];
//! - the bottom backup is full and every other one incremental, each naming the one below
//!   as its parent and the bottom one as its root, with a depth one more than its
//!   parent's; no backup appears twice;
//! - one cluster: the same `system_identifier`, the same major version
//!   (`pg_version_num / 10000`), the same block size and segment size where known;
//! - each incremental backup's `backup_label` says `INCREMENTAL FROM LSN`/`TLI` equal to its
//!   parent's `START WAL LOCATION`/`START TIMELINE`, and the full backup's label has no such
//!   lines;
//! - each backup starts at or after the LSN its parent stopped at.

use std::collections::HashSet;

use anyhow::{bail, Context};
use pgagent_protocol::backup_label::BackupLabel;
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::manifest::{BackupKind, BackupManifest, BackupStatus};
use pgagent_storage::ObjectStore;

use crate::store::catalog;

/// Links followed at most, whatever a manifest's depth says: a bound on a hostile store.
const MAX_LINKS: usize = 10_000;

/// A checked chain of backups, oldest first: the full backup at index 0, the backup being
/// restored last.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The manifests, oldest first.
    pub members: Vec<BackupManifest>,
}

impl Chain {
    /// The backup being restored.
    pub fn newest(&self) -> &BackupManifest {
        self.members.last().expect("a chain is never empty")
    }

    /// `A ← B ← C`: the ids from the full backup to the newest.
    pub fn describe(&self) -> String {
        let ids: Vec<&str> = self.members.iter().map(|m| m.id.as_str()).collect();
        ids.join(" ← ")
    }
}

/// Loads the manifests of `newest`'s parents from `store` (opened with `cipher`) down to
/// the full backup, and checks the chain ([`check_links`]).
///
/// Errors: a parent's manifest is missing, unreadable or not complete, a backup appears
/// twice, the chain is longer than its depth says; as [`check_links`]. Each names the
/// backup.
pub async fn load_chain(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    newest: BackupManifest,
) -> anyhow::Result<Chain> {
    newest
        .check()
        .with_context(|| format!("backup {}", newest.id))?;
    let mut members = vec![newest];
    let mut seen: HashSet<String> = HashSet::from([members[0].id.clone()]);
    loop {
        let child = members.last().expect("not empty");
        let Some(parent_id) = child.parent.clone() else {
            break;
        };
        if members.len() > MAX_LINKS || members.len() > members[0].depth as usize {
            bail!(
                "backup {}: the chain below it is longer than its depth {} says (at {})",
                members[0].id,
                members[0].depth,
                child.id
            );
        }
        if !seen.insert(parent_id.clone()) {
            bail!(
                "backup {}: the chain of backup {} runs in a circle through {parent_id}",
                child.id,
                members[0].id
            );
        }
        let child_id = child.id.clone();
        let parent = catalog::get_manifest(store, cipher, &parent_id)
            .await
            .with_context(|| format!("read backup {parent_id}, parent of backup {child_id}"))?
            .with_context(|| {
                format!(
                    "backup {parent_id}, parent of backup {child_id}, has no manifest in {}: \
                     the chain of backup {} is broken",
                    store.describe(),
                    members[0].id
                )
            })?;
        if parent.status != BackupStatus::Complete {
            bail!("backup {parent_id}, parent of backup {child_id}, is not complete");
        }
        parent
            .check()
            .with_context(|| format!("backup {parent_id}, parent of backup {child_id}"))?;
        members.push(parent);
    }
    members.reverse();
    check_links(&members)?;
    Ok(Chain { members })
}

/// Checks that `members` (oldest first) make one chain; see the module docs for the rules.
///
/// Errors: the first broken rule, naming the backup (and its parent).
pub fn check_links(members: &[BackupManifest]) -> anyhow::Result<()> {
    let Some(full) = members.first() else {
        bail!("no backup to restore");
    };
    if full.kind != BackupKind::Full {
        bail!(
            "backup {} is at the bottom of the chain but is {}, not full",
            full.id,
            full.kind.as_str()
        );
    }
    let labels = members
        .iter()
        .map(|m| BackupLabel::parse(&m.backup_label).with_context(|| format!("backup {}", m.id)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if labels[0].incremental_from.is_some() {
        bail!(
            "backup {} is full but its backup_label has INCREMENTAL FROM lines",
            full.id
        );
    }
    let mut ids = HashSet::new();
    for (i, m) in members.iter().enumerate() {
        if !ids.insert(m.id.as_str()) {
            bail!("backup {} appears twice in its chain", m.id);
        }
        if m.system_identifier != full.system_identifier {
            bail!(
                "backup {} is of system {}, its full backup {} of system {}",
                m.id,
                m.system_identifier,
                full.id,
                full.system_identifier
            );
        }
        if m.pg_version_num / 10000 != full.pg_version_num / 10000 {
            bail!(
                "backup {} is of PostgreSQL {}, its full backup {} of PostgreSQL {}",
                m.id,
                m.pg_version_num / 10000,
                full.id,
                full.pg_version_num / 10000
            );
        }
        if i == 0 {
            continue;
        }
        let parent = &members[i - 1];
        check_link(parent, m, full, i, (&labels[i - 1], &labels[i]))?;
    }
    Ok(())
}

/// The rules between one incremental backup `m`, at position `depth`, and its `parent`.
fn check_link(
    parent: &BackupManifest,
    m: &BackupManifest,
    full: &BackupManifest,
    depth: usize,
    (parent_label, label): (&BackupLabel, &BackupLabel),
) -> anyhow::Result<()> {
    let id = &m.id;
    if m.kind != BackupKind::Incremental {
        bail!(
            "backup {id} is full but only the first backup of a chain may be (parent {})",
            parent.id
        );
    }
    if m.parent.as_deref() != Some(parent.id.as_str()) {
        bail!("backup {id} names parent {:?}, not {}", m.parent, parent.id);
    }
    if m.root.as_deref() != Some(full.id.as_str()) {
        bail!(
            "backup {id} names root {:?}, but its chain ends at full backup {}",
            m.root,
            full.id
        );
    }
    if m.depth as usize != depth {
        bail!(
            "backup {id} says depth {}, but it is {depth} backups above full backup {}",
            m.depth,
            full.id
        );
    }
    for (what, mine, theirs) in [
        ("block size", m.block_size, parent.block_size),
        ("segment size", m.segment_blocks, parent.segment_blocks),
    ] {
        if let (Some(a), Some(b)) = (mine, theirs) {
            if a != b {
                bail!(
                    "backup {id} has {what} {a}, its parent {} has {b}",
                    parent.id
                );
            }
        }
    }
    let Some((from_lsn, from_tli)) = label.incremental_from else {
        bail!("backup {id} is incremental but its backup_label has no INCREMENTAL FROM lines");
    };
    if from_tli != parent_label.start_timeline {
        bail!(
            "backup {id} is incremental from timeline {from_tli}, but its parent {} starts on timeline {}",
            parent.id,
            parent_label.start_timeline
        );
    }
    if from_lsn != parent_label.start_lsn {
        bail!(
            "backup {id} is incremental from LSN {from_lsn}, but its parent {} starts at LSN {}",
            parent.id,
            parent_label.start_lsn
        );
    }
    let Some((parent_stop, _)) = parent.stop()? else {
        bail!(
            "backup {}, parent of backup {id}, has no stop LSN",
            parent.id
        );
    };
    let (start, _) = m.start()?;
    if start < parent_stop {
        bail!(
            "backup {id} starts at LSN {start}, before its parent {} stopped at {parent_stop}",
            parent.id
        );
    }
    Ok(())
}

#[cfg(test)]
#[path = "chain_tests.rs"]
pub(super) mod tests;
