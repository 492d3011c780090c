//! Chains of incremental backups (PostgreSQL 17+).
//!
//! An incremental backup names the backup it was taken against (its parent, full or
//! incremental) and the full backup its chain starts from (its root); a restore of it reads
//! every backup from it down to that root. So a backup is restorable only when each link
//! holds: the parent is in the store, complete, of the same cluster, major version and block
//! geometry, one step nearer the root, and stopped before the child started. Pure functions
//! over manifests: `prune` keeps a kept backup's ancestors and counts only restorable
//! backups, `verify` reports each broken link.

use std::collections::{HashMap, HashSet};
use std::fmt;

use pgagent_protocol::backup_label::BackupLabel;
use pgagent_storage::manifest::{BackupKind, BackupManifest, BackupStatus};

/// Why a backup cannot be restored from the store as it is: the first broken link found
/// walking from it towards its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    /// `child` names a parent the store does not hold.
    Missing {
        /// The backup whose parent is missing.
        child: String,
        /// The missing parent.
        parent: String,
    },
    /// `parent` is in the store but not complete (its WAL has not all reached the store,
    /// or it died).
    Incomplete {
        /// The backup taken against it.
        child: String,
        /// The parent.
        parent: String,
    },
    /// `parent` does not fit `child`: see [`link_problems`].
    Mismatch {
        /// The backup taken against it.
        child: String,
        /// The parent.
        parent: String,
        /// What does not fit.
        why: Vec<String>,
    },
    /// An incremental backup without a parent, or parents that lead back to themselves.
    Malformed {
        /// The backup.
        id: String,
        /// What is wrong.
        why: String,
    },
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broken::Missing { child, parent } => {
                write!(
                    f,
                    "{child} was taken against {parent}, which is not in the store"
                )
            }
            Broken::Incomplete { child, parent } => {
                write!(
                    f,
                    "{child} was taken against {parent}, which is not complete"
                )
            }
            Broken::Mismatch { child, parent, why } => {
                write!(
                    f,
                    "{child} does not fit its parent {parent}: {}",
                    why.join("; ")
                )
            }
            Broken::Malformed { id, why } => write!(f, "{id}: {why}"),
        }
    }
}

/// What a link between `child` and the backup it was taken against (`parent`) gets wrong,
/// if anything: another cluster, another major version, another block size, segment size
/// or data checksum state (each compared when both manifests know it), a root or depth
/// that does not follow from the parent's, or a child that started before its parent
/// stopped. Empty when the link holds; the parent's presence and status are the caller's.
pub fn link_problems(child: &BackupManifest, parent: &BackupManifest) -> Vec<String> {
    let mut why = Vec::new();
    if child.system_identifier != parent.system_identifier {
        why.push(format!(
            "system identifier {} is not the parent's {}",
            child.system_identifier, parent.system_identifier
        ));
    }
    let major = |m: &BackupManifest| m.pg_version_num / 10_000;
    if major(child) != major(parent) {
        why.push(format!(
            "PostgreSQL {} is not the parent's {}",
            major(child),
            major(parent)
        ));
    }
    let differ = |what: &str, a: Option<String>, b: Option<String>| match (a, b) {
        (Some(a), Some(b)) if a != b => Some(format!("{what} {a} is not the parent's {b}")),
        _ => None,
    };
    let show = |v: Option<u32>| v.map(|v| v.to_string());
    why.extend(differ(
        "block size",
        show(child.block_size),
        show(parent.block_size),
    ));
    why.extend(differ(
        "segment size (blocks)",
        show(child.segment_blocks),
        show(parent.segment_blocks),
    ));
    why.extend(differ(
        "data checksums",
        child.data_checksums.map(on_off),
        parent.data_checksums.map(on_off),
    ));
    let root = match parent.kind {
        BackupKind::Full => Some(parent.id.as_str()),
        BackupKind::Incremental => parent.root.as_deref(),
    };
    if child.root.as_deref() != root {
        why.push(format!(
            "root {} is not the parent's chain's {}",
            child.root.as_deref().unwrap_or("(none)"),
            root.unwrap_or("(none)")
        ));
    }
    if child.depth != parent.depth + 1 {
        why.push(format!(
            "depth {} does not follow the parent's {}",
            child.depth, parent.depth
        ));
    }
    match (child.start(), parent.stop()) {
        (Ok((start, _)), Ok(Some((stop, _)))) if start < stop => why.push(format!(
            "it starts at {start}, before the parent stops at {stop}"
        )),
        (_, Ok(None)) => why.push("the parent has no stop LSN".into()),
        _ => {}
    }
    why.extend(label_problem(child, parent));
    why
}

/// What the child's `backup_label` says against its parent's, as pg_combinebackup checks
/// them (`check_backup_label_files`, labels read as `backup_label.c` reads them): the
/// `INCREMENTAL FROM LSN`/`TLI` of an incremental backup are its parent's `START WAL
/// LOCATION` and `START TIMELINE`.
fn label_problem(child: &BackupManifest, parent: &BackupManifest) -> Option<String> {
    let (label, parent_label) = match (
        BackupLabel::parse(&child.backup_label),
        BackupLabel::parse(&parent.backup_label),
    ) {
        (Ok(l), Ok(p)) => (l, p),
        (Err(e), _) => return Some(format!("its backup_label: {e}")),
        (_, Err(e)) => return Some(format!("the parent's backup_label: {e}")),
    };
    let Some((lsn, tli)) = label.incremental_from else {
        return Some("its backup_label has no INCREMENTAL FROM lines".into());
    };
    let start = (parent_label.start_lsn, parent_label.start_timeline);
    (start != (lsn, tli)).then(|| {
        format!(
            "its backup_label is incremental from {lsn} on timeline {tli}, the parent starts at {} on timeline {}",
            start.0, start.1
        )
    })
}

fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.to_string()
}

/// The backups of one store by id, to follow their chains.
#[derive(Debug, Default)]
pub struct Chains<'a> {
    by_id: HashMap<&'a str, &'a BackupManifest>,
}

impl<'a> Chains<'a> {
    /// Indexes `manifests` (every manifest in the store).
    pub fn new(manifests: impl IntoIterator<Item = &'a BackupManifest>) -> Self {
        Chains {
            by_id: manifests.into_iter().map(|m| (m.id.as_str(), m)).collect(),
        }
    }

    /// The backup `id`, if the store holds it.
    pub fn get(&self, id: &str) -> Option<&'a BackupManifest> {
        self.by_id.get(id).copied()
    }

    /// The backup `m` was taken against, once its link holds: `None` for a full backup.
    ///
    /// Errors: the parent is missing or not complete, does not fit ([`link_problems`]), or
    /// `m` is an incremental backup naming no parent.
    pub fn link(&self, m: &BackupManifest) -> Result<Option<&'a BackupManifest>, Broken> {
        if m.kind == BackupKind::Full {
            return Ok(None);
        }
        let Some(parent_id) = m.parent.as_deref() else {
            return Err(Broken::Malformed {
                id: m.id.clone(),
                why: "an incremental backup that names no parent".into(),
            });
        };
        let Some(parent) = self.get(parent_id) else {
            return Err(Broken::Missing {
                child: m.id.clone(),
                parent: parent_id.to_string(),
            });
        };
        if parent.status != BackupStatus::Complete {
            return Err(Broken::Incomplete {
                child: m.id.clone(),
                parent: parent.id.clone(),
            });
        }
        let why = link_problems(m, parent);
        if !why.is_empty() {
            return Err(Broken::Mismatch {
                child: m.id.clone(),
                parent: parent.id.clone(),
                why,
            });
        }
        Ok(Some(parent))
    }

    /// The backups a restore of `m` reads: `m` first, then its parent, and so on to its
    /// full backup, last. A full backup's chain is itself.
    ///
    /// Errors: the first broken link from `m` down ([`Chains::link`]); `m`'s own status is
    /// not looked at.
    pub fn chain(&self, m: &'a BackupManifest) -> Result<Vec<&'a BackupManifest>, Broken> {
        let mut chain = vec![m];
        let mut seen = HashSet::from([m.id.as_str()]);
        let mut child = m;
        while let Some(parent) = self.link(child)? {
            if !seen.insert(parent.id.as_str()) {
                return Err(Broken::Malformed {
                    id: m.id.clone(),
                    why: format!("its chain leads back to {}", parent.id),
                });
            }
            chain.push(parent);
            child = parent;
        }
        Ok(chain)
    }

    /// Whether `m` can be restored from the store: complete, with an unbroken chain.
    pub fn restorable(&self, m: &'a BackupManifest) -> bool {
        m.status == BackupStatus::Complete && self.chain(m).is_ok()
    }

    /// The backups of the store that `m` depends on, whatever their state: its parent, the
    /// parent's parent and so on while the store holds them, and its root; each with the
    /// backup that names it (`(ancestor, child)`), nearest first. What must stay in the
    /// store as long as `m` does.
    pub fn ancestors(&self, m: &'a BackupManifest) -> Vec<(&'a BackupManifest, &'a str)> {
        let mut out = Vec::new();
        let mut seen = HashSet::from([m.id.as_str()]);
        let mut child = m;
        while let Some(parent) = child.parent.as_deref().and_then(|p| self.get(p)) {
            if !seen.insert(parent.id.as_str()) {
                break;
            }
            out.push((parent, child.id.as_str()));
            child = parent;
        }
        if let Some(root) = m.root.as_deref().and_then(|r| self.get(r)) {
            if seen.insert(root.id.as_str()) {
                out.push((root, m.id.as_str()));
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pgagent_storage::manifest::INCREMENTAL_FORMAT_VERSION;

    /// A complete full backup `id` starting at `start` (`X/X`), stopping 0x100 later.
    pub(crate) fn full(id: &str, start: &str) -> BackupManifest {
        let lsn: pgagent_protocol::Lsn = start.parse().unwrap();
        BackupManifest {
            status: BackupStatus::Complete,
            system_identifier: "7".into(),
            pg_version_num: 170002,
            start_lsn: start.into(),
            start_timeline: 1,
            stop_lsn: Some(pgagent_protocol::Lsn(lsn.0 + 0x100).to_string()),
            stop_timeline: Some(1),
            started_at: format!(
                "{}-{}-{}T{}:{}:{}Z",
                &id[..4],
                &id[4..6],
                &id[6..8],
                &id[9..11],
                &id[11..13],
                &id[13..15]
            ),
            chunk_size: 1 << 20,
            block_size: Some(8192),
            segment_blocks: Some(131_072),
            data_checksums: Some(true),
            backup_label: format!(
                "START WAL LOCATION: {start} (file 000000010000000000000001)\nSTART TIMELINE: 1\n"
            ),
            ..BackupManifest::announced(id)
        }
    }

    /// `b` with one more file, `base/1/1`, made of `chunks`.
    pub(crate) fn with_chunks(mut b: BackupManifest, chunks: &[&str]) -> BackupManifest {
        b.files.push(pgagent_storage::manifest::FileEntry {
            path: "base/1/1".into(),
            kind: pgagent_storage::manifest::EntryKind::File,
            mode: 0o600,
            size: 1,
            mtime: 0,
            chunks: chunks.iter().map(|c| c.to_string()).collect(),
            target: None,
        });
        b
    }

    /// A complete incremental backup `id` taken against `parent`.
    pub(crate) fn incremental(id: &str, start: &str, parent: &BackupManifest) -> BackupManifest {
        let base = full(id, start);
        BackupManifest {
            format_version: INCREMENTAL_FORMAT_VERSION,
            kind: BackupKind::Incremental,
            parent: Some(parent.id.clone()),
            root: Some(parent.root.clone().unwrap_or_else(|| parent.id.clone())),
            depth: parent.depth + 1,
            backup_label: format!(
                "{}INCREMENTAL FROM LSN: {}\nINCREMENTAL FROM TLI: {}\n",
                base.backup_label, parent.start_lsn, parent.start_timeline
            ),
            ..base
        }
    }

    #[test]
    fn a_chain_runs_from_the_backup_to_its_full_backup() {
        let f = full("20261101T030000Z", "0/1000028");
        let i1 = incremental("20261102T030000Z", "0/2000028", &f);
        let i2 = incremental("20261103T030000Z", "0/3000028", &i1);
        let i3 = incremental("20261104T030000Z", "0/4000028", &i2);
        let all = [f.clone(), i1.clone(), i2.clone(), i3.clone()];
        let chains = Chains::new(&all);
        let ids =
            |c: Vec<&BackupManifest>| c.iter().map(|m| m.id[4..8].to_string()).collect::<Vec<_>>();
        assert_eq!(
            ids(chains.chain(&all[3]).unwrap()),
            ["1104", "1103", "1102", "1101"]
        );
        assert_eq!(ids(chains.chain(&all[0]).unwrap()), ["1101"]);
        assert!(chains.restorable(&all[3]));
        let anc: Vec<(&str, &str)> = chains
            .ancestors(&all[3])
            .into_iter()
            .map(|(a, c)| (a.id.as_str(), c))
            .collect();
        assert_eq!(
            anc,
            [
                (i2.id.as_str(), i3.id.as_str()),
                (i1.id.as_str(), i2.id.as_str()),
                (f.id.as_str(), i1.id.as_str())
            ]
        );
    }

    #[test]
    fn broken_links_name_the_child_and_the_parent() {
        let f = full("20261101T030000Z", "0/1000028");
        let i1 = incremental("20261102T030000Z", "0/2000028", &f);
        let i2 = incremental("20261103T030000Z", "0/3000028", &i1);
        // The middle link is gone: i2 is broken, yet its root is still an ancestor.
        let all = [f.clone(), i2.clone()];
        let chains = Chains::new(&all);
        assert_eq!(
            chains.chain(&all[1]),
            Err(Broken::Missing {
                child: i2.id.clone(),
                parent: i1.id.clone()
            })
        );
        assert!(!chains.restorable(&all[1]));
        let anc: Vec<&str> = chains
            .ancestors(&all[1])
            .iter()
            .map(|(a, _)| a.id.as_str())
            .collect();
        assert_eq!(anc, [f.id.as_str()]);
        // A parent still waiting for its WAL.
        let waiting = BackupManifest {
            status: BackupStatus::Running,
            ..i1.clone()
        };
        let all = [f.clone(), waiting, i2.clone()];
        let chains = Chains::new(&all);
        assert!(matches!(
            chains.chain(&all[2]),
            Err(Broken::Incomplete { .. })
        ));
        assert_eq!(chains.ancestors(&all[2]).len(), 2);
    }

    #[test]
    fn a_link_must_fit_its_parent() {
        let f = full("20261101T030000Z", "0/1000028");
        let good = incremental("20261102T030000Z", "0/2000028", &f);
        assert!(link_problems(&good, &f).is_empty());
        let cases = [
            (
                BackupManifest {
                    system_identifier: "8".into(),
                    ..good.clone()
                },
                "system identifier 8",
            ),
            (
                BackupManifest {
                    pg_version_num: 180000,
                    ..good.clone()
                },
                "PostgreSQL 18 is not the parent's 17",
            ),
            (
                BackupManifest {
                    block_size: Some(16384),
                    ..good.clone()
                },
                "block size 16384",
            ),
            (
                BackupManifest {
                    data_checksums: Some(false),
                    ..good.clone()
                },
                "data checksums off is not the parent's on",
            ),
            (
                BackupManifest {
                    root: Some("20261001T030000Z".into()),
                    ..good.clone()
                },
                "root 20261001T030000Z",
            ),
            (
                BackupManifest {
                    depth: 2,
                    ..good.clone()
                },
                "depth 2 does not follow the parent's 0",
            ),
            (
                BackupManifest {
                    start_lsn: "0/1000080".into(),
                    ..good.clone()
                },
                "it starts at 0/1000080, before the parent stops at 0/1000128",
            ),
        ];
        for (bad, expected) in cases {
            let why = link_problems(&bad, &f);
            assert_eq!(why.len(), 1, "{why:?}");
            assert!(why[0].contains(expected), "{why:?}");
            let all = [f.clone(), bad];
            let chains = Chains::new(&all);
            let broken = chains.chain(&all[1]).unwrap_err();
            assert!(matches!(broken, Broken::Mismatch { .. }), "{broken}");
            assert!(broken.to_string().contains(expected), "{broken}");
        }
        // A parent of a server older than 17 knows no geometry: nothing to compare.
        let old = BackupManifest {
            block_size: None,
            segment_blocks: None,
            data_checksums: None,
            ..f.clone()
        };
        assert!(link_problems(&good, &old).is_empty());
    }

    #[test]
    fn a_chain_that_loops_is_malformed() {
        let f = full("20261101T030000Z", "0/1000028");
        let mut a = incremental("20261102T030000Z", "0/2000028", &f);
        let b = incremental("20261103T030000Z", "0/3000028", &a);
        a.parent = Some(b.id.clone());
        let all = [a, b];
        let chains = Chains::new(&all);
        assert!(chains.chain(&all[1]).is_err());
        assert_eq!(chains.ancestors(&all[1]).len(), 1);
    }
}
