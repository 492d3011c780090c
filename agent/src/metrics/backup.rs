//! The series of incremental base backups (PostgreSQL 17+):
//!
//! - `pgagent_backup_chain_depth`: depth of the last scheduled backup's chain (0: a full
//!   backup, 1: an incremental backup taken against a full one…);
//! - `pgagent_backup_server_bytes`: archive bytes the server sent for that backup;
//! - `pgagent_backup_incremental_fallbacks_total{reason}`: backups taken full although
//!   `backup.incremental = auto` asked for an incremental one, by [`FallbackReason`]; every
//!   reason present from 0.
//!
//! The backup code counts a fallback with [`incremental_fallback`], which needs no handle:
//! like the store's request counters, the counts are process-wide atomics that the registry
//! reads at each scrape, so the backup service does not carry the daemon's [`super::Metrics`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use pgagent_storage::manifest::BackupManifest;
use prometheus::{IntGauge, Registry};

use super::scraped::ScrapedCounters;

/// Why a backup was taken full when an incremental one was asked for: the `reason` label of
/// `pgagent_backup_incremental_fallbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// The server is older than PostgreSQL 17.
    ServerTooOld,
    /// `summarize_wal` is off on the server: it has no WAL summaries to send blocks from.
    SummarizeWalOff,
    /// No backup qualifies as parent: none complete yet, or the newest is of another major,
    /// block geometry or checksum state, on a timeline outside the server's history, older
    /// than the server keeps WAL summaries for, or without what its manifest must record.
    NoParent,
    /// The chain reached `backup.max_chain`.
    ChainCap,
    /// The server refused the incremental backup (`UPLOAD_MANIFEST` or `BASE_BACKUP
    /// INCREMENTAL` failed, e.g. WAL summaries missing for the parent's range).
    ServerRefused,
    /// A minor release with a known incremental-backup bug: before 17.8 and 18.2 the
    /// `truncation_block_length` of a relation over one segment truncated by VACUUM could
    /// exceed the segment size, and the chain cannot be restored (release notes 17.8 and
    /// 18.2, "Fix incorrect handling of incremental backups of large tables").
    KnownBug,
}

impl FallbackReason {
    /// Every reason: each series exists, at 0, from the start.
    pub const ALL: [FallbackReason; 6] = [
        FallbackReason::ServerTooOld,
        FallbackReason::SummarizeWalOff,
        FallbackReason::NoParent,
        FallbackReason::ChainCap,
        FallbackReason::ServerRefused,
        FallbackReason::KnownBug,
    ];

    /// The label value (`server_too_old`, `summarize_wal_off`, `no_parent`, `chain_cap`,
    /// `server_refused`, `known_bug`).
    pub const fn as_str(self) -> &'static str {
        match self {
            FallbackReason::ServerTooOld => "server_too_old",
            FallbackReason::SummarizeWalOff => "summarize_wal_off",
            FallbackReason::NoParent => "no_parent",
            FallbackReason::ChainCap => "chain_cap",
            FallbackReason::ServerRefused => "server_refused",
            FallbackReason::KnownBug => "known_bug",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fallbacks counted so far, by reason.
#[derive(Debug, Default)]
pub struct FallbackCounts([AtomicU64; FallbackReason::ALL.len()]);

impl FallbackCounts {
    /// Counts one fallback for `reason`.
    pub fn add(&self, reason: FallbackReason) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Fallbacks counted for `reason`.
    pub fn get(&self, reason: FallbackReason) -> u64 {
        self.0[reason.index()].load(Ordering::Relaxed)
    }
}

/// The fallbacks this process counted: what `pgagent_backup_incremental_fallbacks_total`
/// reports.
pub fn fallbacks() -> &'static Arc<FallbackCounts> {
    static COUNTS: LazyLock<Arc<FallbackCounts>> = LazyLock::new(Arc::default);
    &COUNTS
}

/// Counts a backup taken full instead of incremental, for `reason`
/// (`pgagent_backup_incremental_fallbacks_total{reason}`).
pub fn incremental_fallback(reason: FallbackReason) {
    fallbacks().add(reason);
}

/// The gauges of the last backup.
#[derive(Debug, Clone)]
pub struct BackupMetrics {
    /// `pgagent_backup_chain_depth`: depth of the last complete scheduled backup.
    pub chain_depth: IntGauge,
    /// `pgagent_backup_server_bytes`: bytes the server sent for it.
    pub server_bytes: IntGauge,
}

impl BackupMetrics {
    /// Registers the gauges and `pgagent_backup_incremental_fallbacks_total`, read from
    /// `counts` at each scrape.
    pub(super) fn register(registry: &Registry, counts: Arc<FallbackCounts>) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        registry
            .register(Box::new(fallbacks_family(counts)))
            .expect("unique");
        BackupMetrics {
            chain_depth: gauge(
                "pgagent_backup_chain_depth",
                "Depth of the last complete scheduled base backup: 0 full, 1 the first incremental after it.",
            ),
            server_bytes: gauge(
                "pgagent_backup_server_bytes",
                "Bytes the server sent for the last complete scheduled base backup.",
            ),
        }
    }

    /// Sets the gauges from the manifest of the last complete backup.
    pub fn record_last(&self, m: &BackupManifest) {
        self.chain_depth.set(i64::from(m.depth));
        self.server_bytes
            .set(i64::try_from(m.stats.server_bytes).unwrap_or(i64::MAX));
    }
}

/// `pgagent_backup_incremental_fallbacks_total{reason}`, read from [`FallbackCounts`] at
/// each scrape (as `pgagent_store_requests_total` is).
fn fallbacks_family(counts: Arc<FallbackCounts>) -> ScrapedCounters {
    ScrapedCounters::new(
        "pgagent_backup_incremental_fallbacks_total",
        "Base backups taken full although an incremental one was asked for, by reason.",
        "reason",
        Box::new(move || {
            FallbackReason::ALL
                .iter()
                .map(|r| (r.as_str(), counts.get(*r)))
                .collect()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::super::scraped::render;
    use super::*;

    #[test]
    fn every_reason_starts_at_zero_and_counts() {
        let registry = Registry::new();
        let counts = Arc::new(FallbackCounts::default());
        let m = BackupMetrics::register(&registry, counts.clone());
        let text = render(&registry);
        for reason in [
            "server_too_old",
            "summarize_wal_off",
            "no_parent",
            "chain_cap",
            "server_refused",
            "known_bug",
        ] {
            let series =
                format!("pgagent_backup_incremental_fallbacks_total{{reason=\"{reason}\"}} 0");
            assert!(
                text.lines().any(|l| l == series),
                "{series} missing from\n{text}"
            );
        }
        counts.add(FallbackReason::ChainCap);
        counts.add(FallbackReason::ChainCap);
        let mut last = BackupManifest::announced("20261101T030000Z");
        last.depth = 3;
        last.stats.server_bytes = 12345;
        m.record_last(&last);
        let text = render(&registry);
        for series in [
            "pgagent_backup_incremental_fallbacks_total{reason=\"chain_cap\"} 2",
            "pgagent_backup_chain_depth 3",
            "pgagent_backup_server_bytes 12345",
        ] {
            assert!(
                text.lines().any(|l| l == series),
                "{series} missing from\n{text}"
            );
        }
    }

    #[test]
    fn the_process_wide_counts_are_what_the_backup_code_adds_to() {
        let before = fallbacks().get(FallbackReason::KnownBug);
        incremental_fallback(FallbackReason::KnownBug);
        assert!(fallbacks().get(FallbackReason::KnownBug) > before);
        assert_eq!(
            FallbackReason::SummarizeWalOff.to_string(),
            "summarize_wal_off"
        );
    }
}
